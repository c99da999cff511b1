"""The load benchmark's answers: both wire formats, each carrying the request's marker.

Every request of the load benchmark carries a marker (``mk`` and 12 hex digits), which the
fake provider echoes in its answer and in every event (OpenAI: each chunk's ``id`` and text;
Anthropic: the message id, the texts, and a ``marker`` field on the events that carry no
text), so that a client can tell its answer from anyone else's. ``[DONE]`` alone carries
none. The answers here hold ``PLACEHOLDER`` where the marker goes: it has the marker's
length, so framing stays valid when it is replaced.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = [
    "BIG_EVENT",
    "DELTAS",
    "MARKER",
    "NO_MARKER",
    "PLACEHOLDER",
    "anthropic_events",
    "anthropic_json",
    "big_event",
    "openai_events",
    "openai_json",
]

MARKER = re.compile(rb"mk[0-9a-f]{12}")
PLACEHOLDER = b"mk############"
#: What a request without a marker gets in its place.
NO_MARKER = b"mk000000000000"
#: Text deltas per stream.
DELTAS = 20
#: Bytes per event of a huge stream.
BIG_EVENT = 64 * 1024


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


_M = PLACEHOLDER.decode()
_USAGE_OPENAI = {"prompt_tokens": 12, "completion_tokens": DELTAS, "total_tokens": 12 + DELTAS}


def openai_json() -> bytes:
    return _dumps(
        {
            "id": f"chatcmpl-{_M}",
            "object": "chat.completion",
            "created": 1700000000,
            "model": "bench-model",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": f"Echo: {_M}.", "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": _USAGE_OPENAI,
        }
    )


def openai_events() -> list[bytes]:
    def event(delta: dict[str, Any], finish: str | None, **extra: Any) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        chunk = {
            "id": f"chatcmpl-{_M}",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": "bench-model",
            "choices": [choice],
            **extra,
        }
        return b"data: " + _dumps(chunk) + b"\n\n"

    events = [event({"role": "assistant", "content": ""}, None)]
    events += [event({"content": f" {_M} tok{i:02d}"}, None) for i in range(DELTAS)]
    events.append(event({}, "stop", usage=_USAGE_OPENAI))
    return [*events, b"data: [DONE]\n\n"]


def anthropic_json() -> bytes:
    return _dumps(
        {
            "id": f"msg_{_M}",
            "type": "message",
            "role": "assistant",
            "model": "bench-model",
            "content": [{"type": "text", "text": f"Echo: {_M}."}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": 12, "output_tokens": DELTAS},
        }
    )


def anthropic_events() -> list[bytes]:
    def event(data: dict[str, Any]) -> bytes:
        return b"event: %s\ndata: %s\n\n" % (data["type"].encode(), _dumps(data))

    message: dict[str, Any] = {
        "id": f"msg_{_M}",
        "type": "message",
        "role": "assistant",
        "model": "bench-model",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 1},
    }
    events = [
        event({"type": "message_start", "message": message}),
        event(
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
                "marker": _M,
            }
        ),
    ]
    events += [
        event(
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": f" {_M} tok{i:02d}"},
            }
        )
        for i in range(DELTAS)
    ]
    events += [
        event({"type": "content_block_stop", "index": 0, "marker": _M}),
        event(
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": DELTAS},
                "marker": _M,
            }
        ),
        event({"type": "message_stop", "marker": _M}),
    ]
    return events


def big_event() -> bytes:
    """One 64 KiB OpenAI chunk, padded with text."""
    shell = b'data: {"id":"chatcmpl-%s","choices":[{"index":0,"delta":{"content":"%s"}}]}\n\n'
    padding = BIG_EVENT - len(shell % (PLACEHOLDER, b""))
    return shell % (PLACEHOLDER, b"x" * padding)
