"""Chat Completions <-> Messages streams, by their golden cases and by properties.

A stream case (``tests/goldens/<direction>/stream_*.json``) has the ``client_request``, the
``provider_events``, the ``client_events`` they translate to, then either the end of the
stream (``finish``) or ``provider_failure`` (``{"error": <class in errors.py>, "message"}``:
``fail`` is called instead), and ``client_final``: what the client's own SDK accumulates from
``client_events`` (``null`` when the stream ends in an error, which the SDKs raise).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from anthropic.lib.streaming._messages import accumulate_event
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletionChunk

from llm_proxy_mw import errors
from llm_proxy_mw.apis import Api
from llm_proxy_mw.translate._chat_messages_stream import ChatChunksToMessages, MessagesEventsToChat
from llm_proxy_mw.translate._codec import Json
from llm_proxy_mw.translate._mappings import (
    FINISH_TO_STOP,
    STOP_TO_FINISH,
    anthropic_usage,
    chat_usage,
)
from tests.goldens import cases, validate_event, validate_request

CHAT_CLIENT = "chat_to_messages"  # a Chat client, a Messages provider
MESSAGES_CLIENT = "messages_to_chat"  # a Messages client, a Chat provider


def translate(translator: Any, case: Json) -> list[Json]:
    out: list[Json] = []
    for event in case["provider_events"]:
        out += translator.feed(event)
    failure = case.get("provider_failure")
    if failure is None:
        out += translator.finish()
    else:
        out += translator.fail(getattr(errors, failure["error"])(failure["message"]))
    return out


def validate_chat_chunk(chunk: Json) -> None:
    """A chunk, or OpenAI's error data (which the SDK raises), which no chunk type covers."""
    if "error" in chunk:
        assert set(chunk) == {"error"}, chunk
        assert isinstance(chunk["error"]["message"], str), chunk
        assert {"type", "param", "code"} <= chunk["error"].keys(), chunk
    else:
        validate_event(Api.CHAT, chunk)


def check_chat_grammar(chunks: list[Json], include_usage: bool) -> None:
    """One id, model and created throughout; the role first; tool calls started with their
    id and name, indexes 0, 1, ... in order; one finish_reason; the usage chunk last and only
    when asked; an error chunk only last."""
    body, error = (chunks[:-1], chunks[-1]) if chunks and "error" in chunks[-1] else (chunks, None)
    assert all("error" not in c for c in body)
    if body:
        assert {(c["id"], c["model"], c["created"]) for c in body} == {
            (body[0]["id"], body[0]["model"], body[0]["created"])
        }
        assert body[0]["choices"][0]["delta"]["role"] == "assistant"
    finishes = [c for c in body if c["choices"] and c["choices"][0]["finish_reason"]]
    usage = [c for c in body if not c["choices"]]
    if error is None:
        assert len(finishes) == 1
        assert len(usage) == int(include_usage)
    if usage:
        assert body[-1] is usage[0] and body[-2] is finishes[0]
    started: list[int] = []
    for c in body:
        for call in c["choices"][0]["delta"].get("tool_calls", []) if c["choices"] else []:
            if call["index"] not in started:
                assert call["index"] == len(started)
                assert call["id"] and call["type"] == "function" and call["function"]["name"]
                started.append(call["index"])
            else:
                assert set(call) == {"index", "function"}


def check_messages_grammar(events: list[Json]) -> None:
    """message_start first; each block started, filled with deltas of its kind and stopped,
    at indexes 0, 1, ... in order; message_delta after the blocks; message_stop last; an
    error event only last."""
    kinds = [e["type"] for e in events]
    assert "error" not in kinds[:-1]
    if kinds[-1] == "error" and len(kinds) == 1:
        return
    assert kinds[0] == "message_start" and kinds.count("message_start") == 1
    open_block: tuple[int, str] | None = None
    next_index = 0
    for event in events[1:]:
        if event["type"] == "content_block_start":
            assert open_block is None and event["index"] == next_index
            open_block = (next_index, event["content_block"]["type"])
            next_index += 1
        elif event["type"] == "content_block_delta":
            assert open_block is not None and event["index"] == open_block[0]
            allowed = {
                "text": {"text_delta"},
                "thinking": {"thinking_delta", "signature_delta"},
                "tool_use": {"input_json_delta"},
            }[open_block[1]]
            assert event["delta"]["type"] in allowed
        elif event["type"] == "content_block_stop":
            assert open_block is not None and event["index"] == open_block[0]
            open_block = None
        elif event["type"] == "message_delta":
            assert open_block is None
    if kinds[-1] != "error":
        assert kinds[-2:] == ["message_delta", "message_stop"]
        assert kinds.count("message_delta") == 1


def chat_final(chunks: list[Json]) -> Json:
    """What the OpenAI SDK accumulates from ``chunks`` (``client.chat.completions.stream``)."""
    state: ChatCompletionStreamState[Any] = ChatCompletionStreamState()
    for chunk in chunks:
        state.handle_chunk(ChatCompletionChunk.model_validate(chunk))
    completion = state.current_completion_snapshot  # the final parse raises on "length"
    choice = completion.choices[0]
    message = choice.message
    extra = message.model_extra or {}
    calls = [
        {"id": c.id, "name": c.function.name, "arguments": c.function.arguments}
        for c in message.tool_calls or []
    ]
    return {
        "id": completion.id,
        "model": completion.model,
        "content": message.content,
        "reasoning_content": extra.get("reasoning_content"),
        "thinking_blocks": extra.get("thinking_blocks"),
        "tool_calls": calls or None,
        "finish_reason": choice.finish_reason,
        "usage": completion.usage.model_dump(exclude_none=True) if completion.usage else None,
    }


def messages_final(events: list[Json]) -> Json:
    """What the Anthropic SDK accumulates from ``events`` (``client.messages.stream``)."""
    snapshot = None
    buffers: dict[int, bytes] = {}
    for event in events:
        snapshot = accumulate_event(event=event, current_snapshot=snapshot, json_bufs=buffers)
    assert snapshot is not None
    usage = snapshot.usage.model_dump(exclude_none=True)
    counts = (
        "input_tokens",
        "output_tokens",
        "cache_read_input_tokens",
        "cache_creation_input_tokens",
    )
    return {
        "id": snapshot.id,
        "model": snapshot.model,
        "content": [block.model_dump(exclude_none=True) for block in snapshot.content],
        "stop_reason": snapshot.stop_reason,
        "usage": {key: usage[key] for key in counts if key in usage},
    }


@pytest.mark.parametrize("case", cases(CHAT_CLIENT, "provider_events", "client_events"))
def test_messages_stream_to_chat_client(case: Json) -> None:
    validate_request(Api.CHAT, case["client_request"])
    for event in case["provider_events"]:
        validate_event(Api.MESSAGES, event)
    translator = MessagesEventsToChat(case["client_request"])
    chunks = translate(translator, case)
    for chunk in chunks:
        validate_chat_chunk(chunk)
    created = {c["created"] for c in chunks if "created" in c}
    assert len(created) <= 1 and all(isinstance(t, int) for t in created)
    expected = [
        {**c, "created": chunks[0]["created"]} if "created" in c else c
        for c in case["client_events"]
    ]
    assert chunks == expected
    include_usage = case["client_request"].get("stream_options", {}).get("include_usage", False)
    check_chat_grammar(chunks, include_usage)
    final = case["client_final"]
    if final is None:
        assert "error" in chunks[-1]
        return
    assert chat_final(chunks) == final
    if final["usage"] is not None:
        assert translator.usage is not None and chat_usage(translator.usage) == final["usage"]


@pytest.mark.parametrize("case", cases(MESSAGES_CLIENT, "provider_events", "client_events"))
def test_chat_stream_to_messages_client(case: Json) -> None:
    validate_request(Api.MESSAGES, case["client_request"])
    for event in case["provider_events"]:
        validate_chat_chunk(event)
    translator = ChatChunksToMessages(case["client_request"])
    events = translate(translator, case)
    for event in events:
        validate_event(Api.MESSAGES, event)
    assert events == case["client_events"]
    check_messages_grammar(events)
    final = case["client_final"]
    if final is None:
        assert events[-1]["type"] == "error"
        return
    assert messages_final(events) == final
    if "cache_read_input_tokens" in final["usage"]:
        assert translator.usage is not None and anthropic_usage(translator.usage) == final["usage"]


def test_each_direction_has_its_stream_cases() -> None:
    assert len(cases(CHAT_CLIENT, "provider_events")) >= 16
    assert len(cases(MESSAGES_CLIENT, "provider_events")) >= 16


def anthropic_stream(stop_reason: str) -> list[Json]:
    return [
        {
            "type": "message_start",
            "message": {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "model": "claude",
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": 3, "output_tokens": 1},
            },
        },
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "x"}},
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason},
            "usage": {"output_tokens": 2},
        },
        {"type": "message_stop"},
    ]


def chat_stream(finish_reason: str) -> list[Json]:
    def chunk(delta: Json, finish: str | None = None) -> Json:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return {
            "id": "c1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "m",
            "choices": [choice],
        }

    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    return [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "x"}),
        chunk({}, finish_reason),
        {
            "id": "c1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "m",
            "choices": [],
            "usage": usage,
        },
    ]


def feed_all(translator: Any, events: list[Json]) -> list[Json]:
    out: list[Json] = []
    for event in events:
        out += translator.feed(event)
    return out + translator.finish()


@pytest.mark.parametrize(("stop_reason", "finish_reason"), sorted(STOP_TO_FINISH.items()))
def test_every_stop_reason(stop_reason: str, finish_reason: str) -> None:
    chunks = feed_all(MessagesEventsToChat({"model": "claude"}), anthropic_stream(stop_reason))
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, finish_reason]


@pytest.mark.parametrize(("finish_reason", "stop_reason"), sorted(FINISH_TO_STOP.items()))
def test_every_finish_reason(finish_reason: str, stop_reason: str) -> None:
    events = feed_all(ChatChunksToMessages({"model": "gpt"}), chat_stream(finish_reason))
    assert events[-2]["delta"]["stop_reason"] == stop_reason


UNKNOWN_ANTHROPIC = [
    {"type": "future_event", "data": 1},
    {"type": "content_block_start", "index": 7, "content_block": {"type": "server_tool_use"}},
    {"type": "content_block_delta", "index": 7, "delta": {"type": "text_delta", "text": "?"}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "citations_delta"}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "brand_new_delta"}},
    {"type": "content_block_stop", "index": 7},
    {"type": "ping"},
]


def test_unknown_anthropic_events_are_dropped() -> None:
    events = anthropic_stream("end_turn")
    mixed = [*events[:3], *UNKNOWN_ANTHROPIC, *events[3:]]
    plain = feed_all(MessagesEventsToChat({"model": "claude"}), events)
    assert feed_all(MessagesEventsToChat({"model": "claude"}), mixed) == plain


def test_unknown_chat_chunk_fields_and_junk_are_dropped() -> None:
    chunks = chat_stream("stop")
    extra = {**chunks[1], "choices": [{**chunks[1]["choices"][0], "future": {"x": 1}}], "extra": 2}
    junk = [{"object": "chat.completion.chunk"}, {"choices": "no"}, {"error": None, "choices": []}]
    mixed = [chunks[0], extra, *junk, *chunks[2:]]
    assert feed_all(ChatChunksToMessages({"model": "gpt"}), mixed) == feed_all(
        ChatChunksToMessages({"model": "gpt"}), chunks
    )


def test_events_before_message_start_and_after_the_end_are_dropped() -> None:
    translator = MessagesEventsToChat({"model": "claude"})
    events = anthropic_stream("end_turn")
    assert translator.feed(events[1]) == []
    feed_all(translator, events)
    assert translator.feed(events[2]) == []
    assert translator.fail(errors.UpstreamReadTimeout("late")) == []
    assert translator.finish() == []


def test_fail_after_an_error_event_sends_nothing_more() -> None:
    translator = ChatChunksToMessages({"model": "gpt"})
    translator.feed(chat_stream("stop")[0])
    assert (
        translator.feed({"error": {"message": "boom", "type": "server_error"}})[0]["type"]
        == "error"
    )
    assert translator.fail(errors.UpstreamReadTimeout("late")) == []
    assert translator.finish() == []


def test_include_usage_false_still_counts_usage() -> None:
    translator = MessagesEventsToChat(
        {"model": "claude", "stream_options": {"include_usage": False}}
    )
    chunks = feed_all(translator, anthropic_stream("end_turn"))
    assert all(c["choices"] for c in chunks)
    assert translator.usage is not None
    assert (translator.usage.prompt_tokens, translator.usage.completion_tokens) == (3, 2)


ARGUMENTS = st.dictionaries(
    st.text(max_size=8),
    st.one_of(
        st.text(max_size=12),
        st.integers(),
        st.booleans(),
        st.lists(st.text(max_size=4), max_size=3),
    ),
    max_size=4,
)


def split(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts} | {0, len(text)})
    return [text[a:b] for a, b in zip(points, points[1:], strict=False) if a < b]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    arguments=ARGUMENTS, ascii_only=st.booleans(), cuts=st.lists(st.integers(0, 400), max_size=12)
)
def test_any_split_of_tool_arguments_accumulates_to_the_same(
    arguments: Json, ascii_only: bool, cuts: list[int]
) -> None:
    text = json.dumps(arguments, ensure_ascii=ascii_only)
    fragments = split(text, cuts)
    start = anthropic_stream("tool_use")
    tool = {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}
    anthropic = [
        start[0],
        {"type": "content_block_start", "index": 0, "content_block": tool},
        *(
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "input_json_delta", "partial_json": f},
            }
            for f in fragments
        ),
        {"type": "content_block_stop", "index": 0},
        *start[4:],
    ]
    chunks = feed_all(MessagesEventsToChat({"model": "claude"}), anthropic)
    calls = chat_final(chunks)["tool_calls"]
    assert calls == [{"id": "toolu_1", "name": "f", "arguments": text}]

    openai = chat_stream("tool_calls")
    first = {
        "index": 0,
        "id": "call_1",
        "type": "function",
        "function": {"name": "f", "arguments": ""},
    }
    with_call = [
        openai[0],
        {
            **openai[1],
            "choices": [{"index": 0, "delta": {"tool_calls": [first]}, "finish_reason": None}],
        },
        *(
            {
                **openai[1],
                "choices": [
                    {
                        "index": 0,
                        "delta": {"tool_calls": [{"index": 0, "function": {"arguments": f}}]},
                        "finish_reason": None,
                    }
                ],
            }
            for f in fragments
        ),
        *openai[2:],
    ]
    events = feed_all(ChatChunksToMessages({"model": "gpt"}), with_call)
    check_messages_grammar(events)
    sent = "".join(e["delta"]["partial_json"] for e in events if e["type"] == "content_block_delta")
    assert sent == text
    assert messages_final(events)["content"][0]["input"] == arguments


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
FIELDS = st.sampled_from(
    [
        "type", "index", "delta", "content_block", "message", "usage", "error", "choices",
        "finish_reason", "tool_calls", "id", "model", "text", "partial_json", "thinking",
    ]
)  # fmt: skip
TYPES = st.sampled_from(
    [
        "message_start", "message_delta", "message_stop", "content_block_start",
        "content_block_delta", "content_block_stop", "error", "ping", "text", "tool_use",
        "thinking", "redacted_thinking", "text_delta", "input_json_delta", "thinking_delta",
        "signature_delta",
    ]
)  # fmt: skip


def junk_dict(depth: int = 2) -> st.SearchStrategy[Json]:
    value = TYPES | st.integers(-1, 3) | JSON_VALUES
    if depth:
        value = value | junk_dict(depth - 1) | st.lists(junk_dict(depth - 1), max_size=2)
    return st.dictionaries(FIELDS, value, max_size=5)


REAL_EVENTS = st.sampled_from([*anthropic_stream("end_turn"), *chat_stream("tool_calls")])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    events=st.lists(REAL_EVENTS | junk_dict(), max_size=12),
    fail=st.booleans(),
    request=st.sampled_from(
        [{}, {"model": 3, "stream_options": "x"}, {"stream_options": {"include_usage": True}}]
    ),
)
def test_any_events_never_raise(events: list[Json], fail: bool, request: Json) -> None:
    for translator in (MessagesEventsToChat(request), ChatChunksToMessages(request)):
        out = [e for event in events for e in translator.feed(event)]
        out += translator.fail(errors.UpstreamProtocolError("x")) if fail else translator.finish()
        assert all(isinstance(e, dict) for e in out)
        json.dumps(out)


def test_a_block_opened_after_the_finish_reason_is_stopped_before_message_delta() -> None:
    chunks = chat_stream("stop")
    late = {**chunks[1], "choices": [{"index": 0, "delta": {"content": "late"}}]}
    events = feed_all(ChatChunksToMessages({"model": "gpt"}), [*chunks[:3], late, chunks[3]])
    check_messages_grammar(events)
    assert messages_final(events)["content"] == [
        {"type": "text", "text": "x"},
        {"type": "text", "text": "late"},
    ]


def test_a_fragment_of_a_stopped_tool_call_is_dropped() -> None:
    def call(index: int, delta: Json) -> Json:
        choice = {"index": 0, "delta": {"tool_calls": [{"index": index, **delta}]}}
        return {**chat_stream("stop")[1], "choices": [choice]}

    start = {"type": "function", "function": {"name": "f", "arguments": "{"}}
    interleaved = [
        call(0, {"id": "a", **start}),
        call(1, {"id": "b", **start}),
        call(0, {"function": {"arguments": "}"}}),  # block 0 was stopped when 1 started
        call(1, {"function": {"arguments": "}"}}),
    ]
    stream = chat_stream("tool_calls")
    events = feed_all(
        ChatChunksToMessages({"model": "gpt"}), [stream[0], *interleaved, *stream[2:]]
    )
    check_messages_grammar(events)
    deltas = [e for e in events if e["type"] == "content_block_delta"]
    fragments = [(e["index"], e["delta"]["partial_json"]) for e in deltas]
    assert fragments == [(0, "{"), (1, "{"), (1, "}")]
