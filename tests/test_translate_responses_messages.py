"""A Responses client served by a Messages provider (``ResponsesToMessages``: Responses to
Chat, then Chat to Messages, each way).

The goldens are checked as the other directions' are: every object by the SDKs' own types,
then compared exactly; the Responses events also by the event grammar and by what the openai
SDK's ``ResponseStreamState`` accumulates, against what the Anthropic SDK accumulates from
the provider's events. Then what composition must keep: errors name the Responses field the
client sent, a stream ends with exactly one terminal event, usage is Anthropic's own.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from jiter import from_json

from llm_proxy_mw import errors
from llm_proxy_mw.apis import Api
from llm_proxy_mw.errors import InvalidRequestError, UntranslatableError, UpstreamProtocolError
from llm_proxy_mw.translate._codec import Json, Target, TokenUsage
from llm_proxy_mw.translate._codecs import ResponsesToMessages, _in_responses_terms
from llm_proxy_mw.translate._mappings import usage_from_anthropic
from llm_proxy_mw.translate._responses_envelope import REDACTED
from tests.goldens import cases, validate_event, validate_request, validate_response
from tests.test_translate_chat_messages_stream import junk_dict, messages_final
from tests.test_translate_responses_stream import (
    PROPERTIES,
    TERMINAL,
    accumulate,
    check_grammar,
)

DIRECTION = "responses_to_messages"
CODEC = ResponsesToMessages()


def _target(case: Json) -> Target:
    return Target(**case.get("target", {"model": case["client_request"]["model"]}))


def _same_time(translated: list[Json], expected: list[Json]) -> list[Json]:
    """``expected`` with the translation's ``created_at`` (the hub stamps the clock's)."""
    stamps = {e["response"]["created_at"] for e in translated if "response" in e}
    assert len(stamps) == 1 and all(isinstance(t, int) for t in stamps)
    (stamp,) = stamps
    return [
        {**e, "response": {**e["response"], "created_at": stamp}} if "response" in e else e
        for e in expected
    ]


def validate_client_request(body: Json) -> None:
    """Codex sends ``client_metadata``, which the SDK's params do not declare."""
    validate_request(Api.RESPONSES, {k: v for k, v in body.items() if k != "client_metadata"})


def test_enough_cases() -> None:
    assert len(cases(DIRECTION, "client_request")) >= 50
    assert len(cases(DIRECTION, "provider_events")) >= 16


@pytest.mark.parametrize("case", cases(DIRECTION, "client_request", "provider_request"))
def test_golden_request(case: Json) -> None:
    validate_client_request(case["client_request"])
    validate_request(Api.MESSAGES, case["provider_request"])
    assert CODEC.request(case["client_request"], _target(case)) == case["provider_request"]


@pytest.mark.parametrize("case", cases(DIRECTION, "provider_response", "client_response"))
def test_golden_response(case: Json) -> None:
    validate_request(Api.RESPONSES, case["client_request"])
    validate_response(Api.MESSAGES, case["provider_response"])
    validate_response(Api.RESPONSES, case["client_response"])
    response, usage = CODEC.response(case["provider_response"], case["client_request"])
    assert response == {**case["client_response"], "created_at": response["created_at"]}
    assert usage == usage_from_anthropic(case["provider_response"]["usage"])


@pytest.mark.parametrize("case", cases(DIRECTION, "error"))
def test_golden_refusal(case: Json) -> None:
    validate_request(Api.RESPONSES, case["client_request"])
    with pytest.raises(UntranslatableError) as raised:
        CODEC.request(case["client_request"], _target(case))
    assert raised.value.param == case["error"]["param"]
    assert f"`{case['error']['param'].split('[')[0]}" in raised.value.message
    assert (raised.value.status_code, raised.value.code) == (400, "unsupported_parameter")


def translate(case: Json) -> tuple[list[Json], TokenUsage | None]:
    translator = CODEC.stream(case["client_request"])
    out = [e for event in case["provider_events"] for e in translator.feed(event)]
    failure = case.get("provider_failure")
    if failure is None:
        out += translator.finish()
    else:
        out += translator.fail(getattr(errors, failure["error"])(failure["message"]))
    return out, translator.usage


def _stream_ended(events: list[Json]) -> bool:
    kinds = [e["type"] for e in events]
    return "message_stop" in kinds and "message_delta" in kinds and "error" not in kinds


@pytest.mark.parametrize("case", cases(DIRECTION, "provider_events", "client_events"))
def test_golden_stream(case: Json) -> None:
    request = case["client_request"]
    validate_client_request(request)
    for event in case["provider_events"]:
        validate_event(Api.MESSAGES, event)
    events, usage = translate(case)
    for event in events:
        validate_event(Api.RESPONSES, event)
    assert events == _same_time(events, case["client_events"])
    check_grammar(events)
    final = accumulate(request, events)
    if not _stream_ended(case["provider_events"]) or "provider_failure" in case:
        assert final.status == "failed" and final.error is not None
        return
    anthropic = messages_final(case["provider_events"])
    check_same_answer(final.model_dump(), anthropic)
    assert usage == usage_from_anthropic(anthropic["usage"])


#: How each stop_reason leaves the Response.
STATUS = {
    "end_turn": ("completed", None),
    "stop_sequence": ("completed", None),
    "pause_turn": ("completed", None),
    "tool_use": ("completed", None),
    "max_tokens": ("incomplete", "max_output_tokens"),
    "model_context_window_exceeded": ("incomplete", "max_output_tokens"),
    "refusal": ("incomplete", "content_filter"),
}


def check_same_answer(final: Json, anthropic: Json) -> None:
    """The accumulated Response says what the Anthropic message says: its text, thinking
    (signatures, and marked redacted data, as encrypted_content), tool calls with their ids,
    stop reason and usage."""
    said: list[Any] = []
    for item in final["output"]:
        if item["type"] == "reasoning":
            text = "".join(part["text"] for part in item["summary"])
            said.append(("thinking", text, item["encrypted_content"]))
        elif item["type"] == "message":
            said.append(("text", "".join(part["text"] for part in item["content"])))
        else:
            # A call cut by max_tokens is read as the Anthropic SDK reads its partial JSON.
            arguments = from_json(item["arguments"].encode(), partial_mode=True)
            said.append(("tool", item["call_id"], item["name"], arguments))
    told: list[Any] = []
    for block in anthropic["content"]:
        if block["type"] == "thinking":
            told.append(("thinking", block["thinking"], block["signature"]))
        elif block["type"] == "redacted_thinking":
            told.append(("thinking", "", REDACTED + block["data"]))
        elif block["type"] == "text" and not block["text"]:
            continue  # no text, no message
        elif block["type"] == "text" and told and told[-1][0] == "text":
            told[-1] = ("text", told[-1][1] + block["text"])  # the hub joins adjacent texts
        elif block["type"] == "text":
            told.append(("text", block["text"]))
        elif block["type"] == "tool_use":
            told.append(("tool", block["id"], block["name"], block["input"]))
    assert said == told
    status, reason = STATUS[anthropic["stop_reason"]]
    assert final["status"] == status
    assert (final["incomplete_details"] or {}).get("reason") == reason
    assert final["model"] == anthropic["model"] and final["id"] == f"resp_{anthropic['id']}"
    u = anthropic["usage"]
    read, written = u.get("cache_read_input_tokens", 0), u.get("cache_creation_input_tokens", 0)
    assert final["usage"]["input_tokens"] == u["input_tokens"] + read + written
    assert final["usage"]["input_tokens_details"]["cached_tokens"] == read
    assert final["usage"]["input_tokens_details"]["cache_write_tokens"] == written
    assert final["usage"]["output_tokens"] == u["output_tokens"]
    assert final["usage"]["total_tokens"] == u["input_tokens"] + read + written + u["output_tokens"]


# Errors that Chat to Messages raises for what came from the Responses body name the
# Responses field, in the parameter and in the message.
HUB_ERRORS = [
    ({"max_output_tokens": -1}, "max_output_tokens"),
    ({"reasoning": {"effort": "extreme"}}, "reasoning.effort"),
    ({"max_output_tokens": 1000, "reasoning": {"effort": "low"}}, "reasoning.effort"),
    ({"text": {"format": {"type": "json_schema", "name": "x", "schema": 1}}}, "text.format.schema"),
    ({"tools": [{"type": "function", "name": "f", "parameters": "any"}]}, "tools[0].parameters"),
    (
        {"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{no"}]},
        "input",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("fields", "param"), HUB_ERRORS)
def test_a_hub_error_names_the_responses_field(fields: Json, param: str) -> None:
    with pytest.raises(InvalidRequestError) as raised:
        CODEC.request({"model": "m", "input": "x", **fields}, Target("m"))
    assert raised.value.param == param
    assert raised.value.message.startswith(f"`{param}`")
    for hub_name in ("max_completion_tokens", "reasoning_effort", "response_format", "messages"):
        assert hub_name not in raised.value.message


def test_a_hub_error_keeps_its_class() -> None:
    with pytest.raises(InvalidRequestError) as raised:
        CODEC.request({"model": "m", "input": "x", "max_output_tokens": "9"}, Target("m"))
    assert type(raised.value) is InvalidRequestError and raised.value.status_code == 400


# A stream ends with exactly one terminal event, whatever the first stage emits at its end.
REQUEST = {"model": "claude-sonnet-4-5", "input": "Hi", "stream": True}
START = {
    "type": "message_start",
    "message": {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 5, "output_tokens": 1, "cache_creation_input_tokens": 7},
    },
}
TEXT = [
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
    {"type": "content_block_stop", "index": 0},
]
DELTA = {
    "type": "message_delta",
    "delta": {"stop_reason": "end_turn"},
    "usage": {"output_tokens": 3},
}
STOP = {"type": "message_stop"}
ERROR = {"type": "error", "error": {"type": "api_error", "message": "Internal error"}}
CUT = UpstreamProtocolError("The connection was reset.")


def _ends(events: list[Json], *ends: str) -> list[Json]:
    translator = CODEC.stream(REQUEST)
    out = [e for event in events for e in translator.feed(event)]
    for end in ends:
        out += translator.finish() if end == "finish" else translator.fail(CUT)
    out += [e for e in translator.feed(STOP)]
    return out


@pytest.mark.parametrize(
    ("events", "ends", "terminal"),
    [
        ([START, *TEXT, DELTA, STOP], ["finish", "fail", "finish"], "response.completed"),
        ([START, *TEXT, DELTA], ["finish", "finish"], "response.failed"),
        ([START, *TEXT, DELTA], ["fail", "finish"], "response.failed"),
        ([START, *TEXT, ERROR], ["finish", "fail"], "response.failed"),
        ([START, ERROR, ERROR], ["fail"], "response.failed"),
        ([START, *TEXT, DELTA, STOP], ["fail"], "response.failed"),
        ([], ["finish"], "response.failed"),
        ([], ["fail", "fail"], "response.failed"),
    ],
)
def test_exactly_one_terminal_event(events: list[Json], ends: list[str], terminal: str) -> None:
    out = _ends(events, *ends)
    for event in out:
        validate_event(Api.RESPONSES, event)
    check_grammar(out)
    assert [e["type"] for e in out if e["type"] in TERMINAL] == [terminal]


def test_usage_is_anthropics_also_when_the_stream_fails() -> None:
    translator = CODEC.stream(REQUEST)
    events = [e for event in (START, *TEXT) for e in translator.feed(event)]
    events += translator.fail(CUT)
    check_grammar(events)
    usage = events[-1]["response"]["usage"]
    assert translator.usage == TokenUsage(5 + 7, 1, cache_creation_tokens=7)
    assert usage["input_tokens"] == 12 and usage["output_tokens"] == 1
    assert usage["input_tokens_details"] == {"cached_tokens": 0, "cache_write_tokens": 7}


# Any Anthropic event sequence never raises and ends with exactly one terminal event.
def _pieces(data: st.DataObject, text: str) -> list[str]:
    cuts = sorted(data.draw(st.sets(st.integers(1, max(len(text) - 1, 1)), max_size=5)))
    bounds = [0, *(c for c in cuts if c < len(text)), len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if a < b]


def _block(data: st.DataObject, index: int, kind: str) -> list[Json]:
    def delta(delta: Json) -> Json:
        return {"type": "content_block_delta", "index": index, "delta": delta}

    text = data.draw(st.text(max_size=20))
    if kind == "tool_use":
        arguments = json.dumps({"q": text, "n": [index]})
        block: Json = {"type": "tool_use", "id": f"toolu_{index}", "name": "f", "input": {}}
        deltas = [
            delta({"type": "input_json_delta", "partial_json": p}) for p in _pieces(data, arguments)
        ]
    elif kind == "thinking":
        block = {"type": "thinking", "thinking": "", "signature": ""}
        deltas = [delta({"type": "thinking_delta", "thinking": p}) for p in _pieces(data, text)]
        deltas.append(delta({"type": "signature_delta", "signature": f"sig{index}"}))
    elif kind == "redacted_thinking":
        block, deltas = {"type": "redacted_thinking", "data": f"data{index}"}, []
    else:
        block = {"type": "text", "text": ""}
        deltas = [delta({"type": "text_delta", "text": p}) for p in _pieces(data, text)]
    start = {"type": "content_block_start", "index": index, "content_block": block}
    return [start, *deltas, {"type": "content_block_stop", "index": index}]


KINDS = st.sampled_from(["text", "thinking", "redacted_thinking", "tool_use"])
COUNTS = st.integers(0, 50)


@PROPERTIES
@given(data=st.data(), kinds=st.lists(KINDS, max_size=5), stop=st.sampled_from(sorted(STATUS)))
def test_any_valid_stream_gives_the_same_answer(
    data: st.DataObject, kinds: list[str], stop: str
) -> None:
    usage = {"input_tokens": data.draw(COUNTS), "output_tokens": 1}
    usage |= data.draw(st.fixed_dictionaries({}, optional={
        "cache_read_input_tokens": COUNTS, "cache_creation_input_tokens": COUNTS
    }))  # fmt: skip
    events = [{**START, "message": {**START["message"], "usage": usage}}]
    for index, kind in enumerate(kinds):
        events += _block(data, index, kind)
    events += [{**DELTA, "delta": {"stop_reason": stop}}, STOP]
    for i in sorted(data.draw(st.sets(st.integers(1, len(events)), max_size=3)), reverse=True):
        events.insert(i, {"type": "ping"})
    for event in events:
        validate_event(Api.MESSAGES, event)
    cut = data.draw(st.none() | st.integers(0, len(events) - 1))
    failed = data.draw(st.booleans())
    out = _ends(events[:cut], "fail" if failed else "finish")
    for event in out:
        validate_event(Api.RESPONSES, event)
    check_grammar(out)
    final = accumulate(REQUEST, out)
    if STOP in events[:cut] and not failed:
        anthropic = messages_final(events)
        check_same_answer(final.model_dump(), anthropic)
    else:
        assert final.status == "failed"


JUNK_EVENTS = st.lists(
    st.sampled_from([START, *TEXT, DELTA, STOP, ERROR, {"type": "ping"}]) | junk_dict(),
    max_size=12,
)


@PROPERTIES
@given(events=JUNK_EVENTS, ends=st.lists(st.sampled_from(["finish", "fail"]), min_size=1))
def test_any_event_sequence_ends_with_one_terminal_event(
    events: list[Json], ends: list[str]
) -> None:
    out = _ends(events, *ends)
    for event in out:
        validate_event(Api.RESPONSES, event)
    check_grammar(out)
    assert sum(e["type"] in TERMINAL for e in out) == 1


def test_a_hub_error_without_a_parameter_is_kept() -> None:
    error = InvalidRequestError("The body is odd.")
    assert _in_responses_terms(error) is error
