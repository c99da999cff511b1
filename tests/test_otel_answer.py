"""``AnswerReader``: the id, model and finish reasons of an answer, read as it goes by."""

from __future__ import annotations

import itertools
import json

from hypothesis import example, given, settings
from hypothesis import strategies as st

from llm_proxy_mw._otel_answer import _RECENT, AnswerReader


def finished(reader: AnswerReader) -> dict[str, object]:
    """The attributes ``reader`` gives the span once the answer ended."""
    attributes: dict[str, object] = {}
    reader.finish(attributes)
    return attributes


def chunk(delta: str, reason: str | None = None) -> bytes:
    event = {
        "id": "chatcmpl-1",
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "delta": {"content": delta}, "finish_reason": reason}],
    }
    return b"data: " + json.dumps(event).encode() + b"\n\n"


def test_a_long_stream_keeps_only_its_last_reads_and_finds_its_reason() -> None:
    reader = AnswerReader(sse=True)
    for n in range(200):
        reader.feed_stream(chunk(str(n)))
        assert len(reader.recent) <= _RECENT
    reader.feed_stream(chunk("", "length"))
    reader.feed_stream(b'data: {"choices":[],"usage":{"prompt_tokens":1}}\n\ndata: [DONE]\n\n')
    attributes = finished(reader)
    assert attributes == {
        "gen_ai.response.id": "chatcmpl-1",
        "gen_ai.response.model": "gpt-4o-mini",
        "gen_ai.response.finish_reasons": ("length",),
    }
    assert not reader.recent


def test_the_model_is_looked_for_until_a_read_names_it() -> None:
    reader = AnswerReader(sse=True)
    reader.feed_stream(b": keep-alive\n\n")
    reader.feed_stream(b"event: message_start\n")
    reader.feed_stream(
        b'data: {"type":"message_start","message":{"id":"msg_1","model":"claude-x"}}\n\n'
    )
    reader.feed_stream(b'data: {"type":"message_delta","delta":{"stop_reason":"end_turn"}}\n\n')
    attributes = finished(reader)
    assert attributes == {
        "gen_ai.response.id": "msg_1",
        "gen_ai.response.model": "claude-x",
        "gen_ai.response.finish_reasons": ("end_turn",),
    }


def test_a_json_answer_is_read_from_its_head_and_tail() -> None:
    body = json.dumps(
        {
            "id": "chatcmpl-2",
            "model": "gpt-4o",
            "choices": [{"message": {"content": "x" * 10_000}, "finish_reason": "stop"}],
        }
    ).encode()
    reader = AnswerReader(sse=False)
    for start in range(0, len(body), 1000):
        reader.feed(body[start : start + 1000])
    attributes = finished(reader)
    assert attributes == {
        "gen_ai.response.id": "chatcmpl-2",
        "gen_ai.response.model": "gpt-4o",
        "gen_ai.response.finish_reasons": ("stop",),
    }


def test_content_is_kept_up_to_its_bound_from_a_stream_too() -> None:
    reader = AnswerReader(sse=True, capture=10)
    reader.feed(chunk("hello"))
    reader.feed(chunk("", "stop"))
    attributes = finished(reader)
    assert reader.content == chunk("hello")[:10]
    assert attributes["gen_ai.response.finish_reasons"] == ("stop",)


def test_each_reason_of_several_choices_counts_once_in_order() -> None:
    reasons = ["length", "stop", "length"]
    body = json.dumps(
        {
            "id": "chatcmpl-3",
            "model": "gpt-4o",
            "choices": [{"index": n, "finish_reason": r} for n, r in enumerate(reasons)],
        }
    ).encode()
    reader = AnswerReader(sse=False)
    reader.feed(body)
    attributes = finished(reader)
    assert attributes["gen_ai.response.finish_reasons"] == ("length", "stop")


def test_an_escaped_id_or_model_is_left_out_rather_than_cut() -> None:
    body = b'{"id": "chat\\"cmpl", "model": "gpt-4o\\u00e9", "choices": []}'
    reader = AnswerReader(sse=False)
    reader.feed(body)
    attributes = finished(reader)
    assert attributes == {}


@settings(deadline=None)  # no clock in a behaviour test: a loaded machine may be slow
@given(cuts=st.lists(st.integers(min_value=1, max_value=10_100), max_size=12))
@example(cuts=[])  # the body whole, in one read
def test_a_json_answer_taken_in_any_reads_gives_what_it_gives_whole(cuts: list[int]) -> None:
    body = json.dumps(
        {
            "id": "chatcmpl-4",
            "model": "gpt-4o",
            "choices": [{"message": {"content": "y" * 10_000}, "finish_reason": "length"}],
        }
    ).encode()
    expected = {
        "gen_ai.response.id": "chatcmpl-4",
        "gen_ai.response.model": "gpt-4o",
        "gen_ai.response.finish_reasons": ("length",),
    }
    reader = AnswerReader(sse=False)
    edges = sorted({0, len(body), *(min(cut, len(body)) for cut in cuts)})
    for start, end in itertools.pairwise(edges):
        reader.take(body[start:end])
    assert finished(reader) == expected
