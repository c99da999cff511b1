"""The SSE parser of translated streams, and the framing of their events for the client."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_proxy_mw.apis import Api
from llm_proxy_mw.errors import UpstreamProtocolError
from llm_proxy_mw.translate._sse import DONE_FRAME, SseParser, frame_events

EVENTS = [
    {"type": "message_start", "message": {"id": "m", "usage": {"input_tokens": 3}}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "héllo\n"}},
    {"type": "message_stop"},
]


#: The second event's JSON in two data lines, cut between two tokens.
SPLIT = json.dumps(EVENTS[1]).split(', "index"')
SPLIT[1] = ', "index"' + SPLIT[1]


def stream(newline: bytes = b"\n") -> bytes:
    """A stream with every kind of line a parser meets: names, comments, ids, multi-line data."""
    lines = [
        b": a comment, then a ping",
        b"event: ping",
        b'data: {"type": "ping"}',
        b"",
        b"event: message_start",
        b"id: 1",
        b"data: " + json.dumps(EVENTS[0]).encode(),
        b"",
        b"retry: 100",
        b"data:" + SPLIT[0].encode(),
        b"data: " + SPLIT[1].encode(),
        b"",
        b"data: not json",
        b"",
        b"data: [1, 2]",
        b"",
        b"data: " + json.dumps(EVENTS[2]).encode(),
        b"",
        b"data: [DONE]",
        b"",
        b'data: {"type": "after done"}',
        b"",
    ]
    return newline.join(lines)


def parse(chunks: list[bytes]) -> tuple[list[dict[str, object]], bool]:
    parser = SseParser()
    events = []
    for chunk in chunks:
        events += parser.feed(chunk)
    events += parser.close()
    return events, parser.done


EXPECTED = [{"type": "ping"}, *EVENTS]


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"], ids=["lf", "crlf", "cr"])
def test_a_whole_stream_parses_to_its_json_events(newline: bytes) -> None:
    assert parse([stream(newline)]) == (EXPECTED, True)


@settings(max_examples=300, deadline=None)
@given(st.data(), st.sampled_from([b"\n", b"\r\n"]))
def test_any_split_of_a_stream_parses_to_the_same_events(
    data: st.DataObject, newline: bytes
) -> None:
    whole = stream(newline)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(whole)), max_size=12)))
    chunks = [whole[a:b] for a, b in zip([0, *cuts], [*cuts, len(whole)], strict=True)]
    assert parse(chunks) == (EXPECTED, True)


def test_byte_by_byte_works_too() -> None:
    whole = stream(b"\r\n")
    assert parse([whole[i : i + 1] for i in range(len(whole))]) == (EXPECTED, True)


def test_a_last_event_without_its_blank_line_is_still_read() -> None:
    assert parse([b'data: {"a": 1}\n\ndata: [DONE]\n']) == ([{"a": 1}], True)
    assert parse([b'data: {"a": 1}']) == ([{"a": 1}], False)


def test_events_after_done_are_ignored_within_one_read() -> None:
    parser = SseParser()
    assert parser.feed(b'data: [DONE]\n\ndata: {"a": 1}\n\n') == []
    assert parser.done


def test_an_event_past_the_bound_is_a_protocol_error() -> None:
    parser = SseParser(max_event_bytes=64)
    assert parser.feed(b"data: " + b"x" * 50) == []
    with pytest.raises(UpstreamProtocolError):
        parser.feed(b"x" * 20)


def test_complete_events_are_not_bounded_only_the_unfinished_one() -> None:
    parser = SseParser(max_event_bytes=64)
    big = {"text": "y" * 200}
    assert parser.feed(b"data: " + json.dumps(big).encode() + b"\n\n") == [big]


def test_chat_events_are_bare_data_lines() -> None:
    framed = frame_events(Api.CHAT, [{"a": 1}, {"b": "é"}])
    assert framed == b'data: {"a":1}\n\ndata: {"b":"\\u00e9"}\n\n'
    assert DONE_FRAME == b"data: [DONE]\n\n"


@pytest.mark.parametrize("api", [Api.MESSAGES, Api.RESPONSES])
def test_messages_and_responses_events_are_named_by_their_type(api: Api) -> None:
    framed = frame_events(api, [{"type": "message_stop"}, {"type": "response.completed"}])
    assert framed == (
        b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
        b'event: response.completed\ndata: {"type":"response.completed"}\n\n'
    )


def test_a_type_that_would_break_the_framing_is_not_used_as_the_name() -> None:
    framed = frame_events(Api.MESSAGES, [{"type": "x\ndata: forged"}, {"type": 3}])
    assert framed.count(b"event: message\n") == 2
    assert parse([framed])[0] == [{"type": "x\ndata: forged"}, {"type": 3}]


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        (b'event: message_stop\ndata: {"type": "message_stop"}\n\n', [{"type": "message_stop"}]),
        (b'event: message_stop\ndata:{"type": "message_stop"}\n\n', [{"type": "message_stop"}]),
        (b"event: message_stop\ndata:\n\n", []),
        (b"event: message_stop\nid: 7\n\n", []),
        (b'event: a\ndata: {"n": 1}\ndata: \n\n', [{"n": 1}]),
    ],
)
def test_named_events_read_as_any_other(block: bytes, expected: list[object]) -> None:
    """The one-name-one-data shortcut reads what the general path reads."""
    assert SseParser().feed(block) == expected
