"""A Responses client served by a Chat Completions stream (``ChatChunksToResponses``).

The goldens are checked three ways: every event by the SDK's own event types, the event
grammar by ``check_grammar`` (written from the API reference, not from the translator), and
the final Response the SDK's own ``ResponseStreamState`` accumulates against what a plain
reading of the Chat chunks says (text, refusal, tool calls, usage).
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai import omit
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from llm_proxy_mw.apis import Api
from llm_proxy_mw.errors import ProxyError, UpstreamProtocolError
from llm_proxy_mw.translate._codec import TokenUsage
from llm_proxy_mw.translate._responses_stream import ChatChunksToResponses
from tests.goldens import cases, validate_event, validate_request

Json = dict[str, Any]
EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
TERMINAL = {"response.completed", "response.incomplete", "response.failed"}
PROPERTIES = settings(
    max_examples=150,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def translate(request: Json, events: list[Json]) -> list[Json]:
    translator = ChatChunksToResponses(request)
    out = [e for event in events for e in translator.feed(event)]
    return out + translator.finish()


def _joined(events: list[Json], kind: str, key: str = "delta") -> str:
    return "".join(e[key] for e in events if e["type"] == kind)


def check_grammar(events: list[Json]) -> None:
    """Raise unless ``events`` follow the Responses stream grammar: sequence numbers 0..n-1;
    created, in_progress, then items, one terminal event last; each item added at the next
    output index with a fresh id, its parts and summary parts opened, grown and closed in
    order, its done texts the sum of its deltas; every item closed before a completed or
    incomplete Response, whose output is the closed items in order."""
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert [e["type"] for e in events[:2]] == ["response.created", "response.in_progress"]
    assert events[-1]["type"] in TERMINAL
    assert not any(e["type"] in TERMINAL for e in events[:-1])
    response_id = events[0]["response"]["id"]
    assert all(e["response"]["id"] == response_id for e in events if "response" in e)
    items: list[Json] = []  # added items, by output index
    done: dict[int, Json] = {}
    mine: dict[int, list[Json]] = {}  # each item's events
    for e in events[2:-1]:
        index = e["output_index"]
        if e["type"] == "response.output_item.added":
            assert index == len(items)
            assert e["item"]["id"] not in {i["id"] for i in items}
            items.append(e["item"])
            mine[index] = []
            continue
        assert index < len(items) and index not in done, e
        if e["type"] == "response.output_item.done":
            assert e["item"]["id"] == items[index]["id"]
            done[index] = e["item"]
        else:
            assert e["item_id"] == items[index]["id"]
        mine[index].append(e)
    for index, item in enumerate(items):
        _check_item(item, done.get(index), mine[index])
    final = events[-1]["response"]
    if events[-1]["type"] != "response.failed":
        assert sorted(done) == list(range(len(items)))
        assert final["output"] == [done[i] for i in range(len(items))]
    else:
        assert final["error"]["message"]


def _check_item(item: Json, done: Json | None, events: list[Json]) -> None:
    if item["type"] == "function_call":
        arguments = _joined(events, "response.function_call_arguments.delta")
        if done is not None:
            assert events[-2] == {**events[-2], "type": "response.function_call_arguments.done"}
            assert events[-2]["arguments"] == done["arguments"] == arguments
            assert done["call_id"] == item["call_id"]
        return
    kind = "content" if item["type"] == "message" else "summary"
    position = f"{kind}_index" if kind == "content" else "summary_index"
    parts: list[Json] = []
    open_part = None
    for e in events:
        if e["type"].endswith("part.added"):
            assert open_part is None and e[position] == len(parts)
            open_part = e[position]
        elif e["type"].endswith("part.done"):
            assert open_part == e[position]
            deltas = [d for d in events if d.get(position) == open_part]
            texts = [d for d in deltas if d["type"].endswith(("text.done", "refusal.done"))]
            assert len(texts) == 1
            key = "refusal" if e["part"]["type"] == "refusal" else "text"
            whole = "".join(d["delta"] for d in deltas if d["type"].endswith(".delta"))
            assert texts[0][key] == e["part"][key] == whole
            parts.append(e["part"])
            open_part = None
        elif e["type"] != "response.output_item.done":
            assert open_part is not None and e[position] == open_part, e
    if done is not None:
        assert open_part is None
        assert done[kind] == parts


def accumulate(request: Json, events: list[Json]) -> Response:
    """The Response the openai SDK's own stream state ends with."""
    state: ResponseStreamState[Any] = ResponseStreamState(input_tools=omit, text_format=omit)
    final = None
    for event in events:
        for seen in state.handle_event(EVENTS.validate_python(event)):
            if seen.type in TERMINAL:
                final = seen.response
    assert final is not None
    return final


def read_chunks(events: list[Json]) -> Json:
    """What a plain reading of Chat chunks says the answer is."""
    text, refusal, usage = "", "", None
    calls: dict[int, Json] = {}
    for event in events:
        usage = event.get("usage") or usage
        for choice in event.get("choices", []):
            if choice["index"] != 0:  # n > 1 is refused: another choice is junk
                continue
            delta = choice["delta"]
            text += delta.get("content") or ""
            refusal += delta.get("refusal") or ""
            for call in delta.get("tool_calls") or []:
                seen = calls.setdefault(call["index"], {"id": call.get("id"), "arguments": ""})
                seen.setdefault("name", call["function"].get("name"))
                seen["arguments"] += call["function"].get("arguments") or ""
    tools = [(c["id"], c["name"], c["arguments"]) for _, c in sorted(calls.items())]
    return {"text": text, "refusal": refusal, "calls": tools, "usage": usage}


@pytest.mark.parametrize("case", cases("responses_to_chat", "provider_events", "client_events"))
def test_golden_stream(case: Json) -> None:
    request = case["client_request"]
    validate_request(Api.RESPONSES, request)
    for event in case["provider_events"]:
        if "error" not in event:  # an OpenAI mid-stream error is no chunk
            validate_event(Api.CHAT, event)
    events = translate(request, case["provider_events"])
    for event in events:
        validate_event(Api.RESPONSES, event)
    assert events == case["client_events"]
    check_grammar(events)
    final = accumulate(request, events)
    if final.status == "failed":
        return
    expected = read_chunks(case["provider_events"])
    assert final.output_text == expected["text"]
    refusals = [
        part.refusal
        for item in final.output
        if item.type == "message"
        for part in item.content
        if part.type == "refusal"
    ]
    assert "".join(refusals) == expected["refusal"]
    calls = [(i.call_id, i.name, i.arguments) for i in final.output if i.type == "function_call"]
    assert calls == expected["calls"]
    usage = expected["usage"]
    if usage is None:
        assert final.usage is None
    else:
        assert final.usage is not None
        assert final.usage.input_tokens == usage["prompt_tokens"]
        assert final.usage.output_tokens == usage["completion_tokens"]
        assert final.usage.total_tokens == usage["total_tokens"]
    assert final.model == case["provider_events"][0]["model"]


def test_there_are_enough_stream_goldens() -> None:
    assert len(cases("responses_to_chat", "provider_events", "client_events")) >= 16
