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
    max_examples=100,
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


REQUEST = {"model": "gpt-4o-mini", "input": "hi", "stream": True}


def chunk(delta: Json, finish: str | None = None, **extra: Any) -> Json:
    base = {"id": "chatcmpl-u", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}


def call(index: int, arguments: str, id: str | None = None, name: str | None = None) -> Json:
    function = {"arguments": arguments} if name is None else {"name": name, "arguments": arguments}
    first = {} if id is None else {"id": id, "type": "function"}
    return {"tool_calls": [{"index": index, **first, "function": function}]}


def checked(events: list[Json]) -> list[Json]:
    for event in events:
        validate_event(Api.RESPONSES, event)
    check_grammar(events)
    return events


class _RateLimited(ProxyError):
    status_code = 429
    code = "rate_limited"


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (UpstreamProtocolError("The connection was reset."), "server_error"),
        (_RateLimited("Slow down."), "rate_limit_exceeded"),
    ],
)
def test_fail_mid_stream_ends_failed_with_the_items_so_far(error: ProxyError, code: str) -> None:
    translator = ChatChunksToResponses(REQUEST)
    events = translator.feed(chunk({"role": "assistant", "content": "Hel"}))
    events += translator.feed(chunk(call(0, '{"a', id="call_1", name="f")))
    events += translator.fail(error)
    failed = checked(events)[-1]["response"]
    assert failed["status"] == "failed"
    assert failed["error"] == {"code": code, "message": error.message}
    assert [item["status"] for item in failed["output"]] == ["completed", "incomplete"]
    assert failed["output"][1]["arguments"] == '{"a'
    assert accumulate(REQUEST, events).status == "failed"
    # Nothing follows a terminal event.
    assert translator.feed(chunk({"content": "lo"})) == []
    assert translator.finish() == []
    assert translator.fail(error) == []


@pytest.mark.parametrize("end", ["finish", "fail"])
def test_a_stream_without_any_chunk_still_opens_before_it_fails(end: str) -> None:
    translator = ChatChunksToResponses(REQUEST)
    if end == "finish":
        events = translator.finish()
    else:
        events = translator.fail(UpstreamProtocolError("No answer."))
    types = [e["type"] for e in checked(events)]
    assert types == ["response.created", "response.in_progress", "response.failed"]
    assert events[0]["response"]["id"].startswith("resp_")
    assert events[0]["response"]["model"] == "gpt-4o-mini"
    assert accumulate(REQUEST, events).status == "failed"


def test_a_chunk_without_an_id_gets_a_fresh_response_id() -> None:
    first, second = (ChatChunksToResponses(REQUEST).feed({"choices": []}) for _ in range(2))
    assert first[0]["response"]["id"] != second[0]["response"]["id"]


def test_usage_is_the_providers_so_far() -> None:
    translator = ChatChunksToResponses(REQUEST)
    events = translator.feed(chunk({"content": "Hi"}, "stop"))
    assert translator.usage is None
    details = {"prompt_tokens_details": {"cached_tokens": 6}}
    usage = {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12, **details}
    events += translator.feed({**chunk({}), "choices": [], "usage": usage})
    assert translator.usage == TokenUsage(prompt_tokens=10, completion_tokens=2, cached_tokens=6)
    completed = checked(events + translator.finish())[-1]["response"]
    assert completed["usage"]["input_tokens_details"]["cached_tokens"] == 6


def test_deltas_after_the_finish_reason_add_nothing() -> None:
    translator = ChatChunksToResponses(REQUEST)
    events = translator.feed(chunk({"content": "Done."}, "stop"))
    assert translator.feed(chunk({"content": " More?"})) == []
    assert translator.feed(chunk(call(0, "{}", id="call_late", name="f"))) == []
    events += translator.finish()
    assert accumulate(REQUEST, checked(events)).output_text == "Done."


def test_a_tool_call_without_an_index_or_with_its_name_late_is_kept() -> None:
    translator = ChatChunksToResponses(REQUEST)
    events = translator.feed(
        chunk({"tool_calls": [{"id": "call_x", "function": {"arguments": ""}}]})
    )
    events += translator.feed(
        chunk({"tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]})
    )
    events += translator.feed(chunk({"tool_calls": [{"id": "call_y", "function": {"name": "g"}}]}))
    events += translator.feed(chunk({}, "tool_calls")) + translator.finish()
    final = accumulate(REQUEST, checked(events))
    calls = [(i.call_id, i.name, i.arguments) for i in final.output if i.type == "function_call"]
    assert calls == [("call_x", "f", "{}"), ("call_y", "g", "")]


def _split(data: st.DataObject, text: str) -> list[str]:
    cuts = sorted(data.draw(st.sets(st.integers(1, max(len(text) - 1, 1)), max_size=6)))
    bounds = [0, *(c for c in cuts if c < len(text)), len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if a < b]


@PROPERTIES
@given(
    thinking=st.text(max_size=30),
    text=st.text(max_size=30),
    arguments=st.lists(st.text(max_size=30), max_size=3),
    data=st.data(),
)
def test_any_fragmentation_accumulates_to_the_same_response(
    thinking: str, text: str, arguments: list[str], data: st.DataObject
) -> None:
    tools = [(f"call_{i}", f"tool_{i}") for i in range(len(arguments))]
    whole = [chunk({"role": "assistant", "reasoning_content": thinking, "content": text})]
    whole += [chunk(call(i, a, *tools[i])) for i, a in enumerate(arguments)]
    pieces = [chunk({"role": "assistant"})]
    pieces += [chunk({"reasoning_content": p}) for p in _split(data, thinking)]
    pieces += [chunk({"content": p}) for p in _split(data, text)]
    for i, a in enumerate(arguments):
        pieces += [chunk(call(i, "", *tools[i]))]
        pieces += [chunk(call(i, p)) for p in _split(data, a)]
    ending = [chunk({}, "tool_calls" if arguments else "stop")]
    results = [
        accumulate(REQUEST, checked(translate(REQUEST, s + ending))) for s in (whole, pieces)
    ]
    assert results[0].model_dump() == results[1].model_dump()
    assert results[1].output_text == text
    calls = [
        (i.call_id, i.name, i.arguments) for i in results[1].output if i.type == "function_call"
    ]
    assert calls == [(*tool, a) for tool, a in zip(tools, arguments, strict=True)]


_KEYS = st.sampled_from(
    "id model created choices index delta content refusal reasoning_content reasoning "
    "thinking_blocks type thinking signature data tool_calls function name arguments "
    "finish_reason usage prompt_tokens completion_tokens error message code".split()
)
_LEAF = (
    st.none()
    | st.booleans()
    | st.integers(-2, 3)
    | st.text(max_size=4)
    | st.sampled_from(["thinking", "redacted_thinking", "stop", "length", "tool_calls"])
)
_JUNK = st.recursive(
    _LEAF, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEYS, inner, max_size=4)
)


def _or_junk(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return valid | valid | _JUNK


_TEXT = _or_junk(st.text(max_size=4))
_BLOCK = st.fixed_dictionaries(
    {"type": _or_junk(st.sampled_from(["thinking", "redacted_thinking"]))},
    optional={"thinking": _TEXT, "signature": _TEXT, "data": _TEXT},
)
_CALL = st.fixed_dictionaries(
    {"index": _or_junk(st.integers(0, 2))},
    optional={
        "id": _TEXT,
        "function": _or_junk(
            st.fixed_dictionaries({}, optional={"name": _TEXT, "arguments": _TEXT})
        ),
    },
)
_DELTA = st.fixed_dictionaries(
    {},
    optional={
        "content": _TEXT,
        "refusal": _TEXT,
        "reasoning_content": _TEXT,
        "reasoning": _TEXT,
        "thinking_blocks": _or_junk(st.lists(_BLOCK, max_size=2)),
        "tool_calls": _or_junk(st.lists(_CALL, max_size=2)),
    },
)
_CHOICE = st.fixed_dictionaries(
    {"index": st.sampled_from([0, 0, 1, None]), "delta": _or_junk(_DELTA)},
    optional={"finish_reason": _or_junk(st.sampled_from(["stop", "length", "tool_calls"]))},
)
_USAGE = st.fixed_dictionaries({"prompt_tokens": _JUNK, "completion_tokens": _JUNK})
_EVENT = (
    st.dictionaries(_KEYS, _JUNK, max_size=4)
    | st.fixed_dictionaries(
        {"choices": st.lists(_CHOICE, max_size=2)},
        optional={"usage": _or_junk(_USAGE), "id": _TEXT, "error": _JUNK},
    )
    | st.fixed_dictionaries({"choices": st.lists(_CHOICE, max_size=2)})
)


@PROPERTIES
@given(events=st.lists(_EVENT, max_size=12), failed=st.booleans())
def test_any_event_sequence_gives_a_well_formed_stream(events: list[Json], failed: bool) -> None:
    translator = ChatChunksToResponses(REQUEST)
    out = [e for event in events for e in translator.feed(event)]
    out += translator.fail(UpstreamProtocolError("cut")) if failed else translator.finish()
    checked(out)
