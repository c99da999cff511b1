"""The fake provider's answers and the load's request body, byte for byte.

Copied from the shared benchmark harness (its ``fixtures.py``) so that figures from here and
from there describe the same payloads: a 678-byte chat completion with ``usage`` and a
100-event ``chat.completion.chunk`` stream ending in ``data: [DONE]``; and the paced stream
whose chunks carry the time they were written.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = [
    "CHAT",
    "CHAT_SSE_EVENTS",
    "CLIENT_KEY",
    "N_STREAM_CHUNKS",
    "PACED_EVENTS",
    "PACE_MS",
    "UPSTREAM_KEY",
    "paced_templates",
    "request_body",
]

_TEXT = (
    "This is a fixed benchmark completion from the fake upstream. It is long enough "
    "to make the JSON body about six hundred bytes, like a short real answer would be. "
    "Nothing here depends on the request."
)


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


CHAT: bytes = _dumps(
    {
        "id": "chatcmpl-bench0000000000000000000001",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "gpt-4o-mini-2024-07-18",
        "system_fingerprint": "fp_bench00",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": _TEXT, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 25,
            "completion_tokens": 48,
            "total_tokens": 73,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        },
    }
)

N_STREAM_CHUNKS = 100


def _choice(i: int, n: int) -> dict[str, Any]:
    """Chunk ``i`` of ``n``'s choice: the role first, content tokens, then the finish."""
    fin: str | None
    if i == 0:
        delta, fin = {"role": "assistant", "content": ""}, None
    elif i == n - 1:
        delta, fin = {}, "stop"
    else:
        delta, fin = {"content": f" tok{i:03d}"}, None
    return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": fin}


def _chat_sse_events(n: int = N_STREAM_CHUNKS) -> list[bytes]:
    """Role chunk, n-2 content chunks, a finish chunk carrying usage, then ``[DONE]``."""
    base = {
        "id": "chatcmpl-bench0000000000000000000001",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "gpt-4o-mini-2024-07-18",
        "system_fingerprint": "fp_bench00",
    }
    events = []
    for i in range(n):
        chunk: dict[str, Any] = dict(base, choices=[_choice(i, n)])
        if i == n - 1:
            chunk["usage"] = {
                "prompt_tokens": 25,
                "completion_tokens": n - 2,
                "total_tokens": 25 + n - 2,
            }
        events.append(b"data: " + _dumps(chunk) + b"\n\n")
    events.append(b"data: [DONE]\n\n")
    return events


#: 101 events: 100 chunks and the terminating ``data: [DONE]`` (26,580 bytes in all).
CHAT_SSE_EVENTS: list[bytes] = _chat_sse_events()


#: The paced stream: how many stamped chunks, how far apart.
PACED_EVENTS = 50
PACE_MS = 5.0


def paced_templates(n: int = PACED_EVENTS) -> list[tuple[bytes, bytes]]:
    """Per chunk, the bytes before and after its ``sent_ns`` digits (an OpenAI chunk as in
    ``fixtures``: role first, content tokens, a finish chunk with usage)."""
    templates = []
    for seq in range(n):
        event: dict[str, Any] = {
            "sent_ns": 0,
            "seq": seq,
            "id": "chatcmpl-bench-paced",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [_choice(seq, n)],
        }
        if seq == n - 1:
            event["usage"] = {"prompt_tokens": 25, "completion_tokens": n, "total_tokens": 25 + n}
        before, after = json.dumps(event, separators=(",", ":")).encode().split(b"0", 1)
        templates.append((b"data: " + before, after + b"\n\n"))
    return templates


def request_body(model: str = "gpt-4o-mini", *, stream: bool = False) -> bytes:
    """The chat request the shared harness's wrk script sends."""
    flag = "true" if stream else "false"
    return (
        f'{{"model":"{model}","messages":[{{"role":"system","content":"You are a terse '
        'assistant used in a benchmark."},{"role":"user","content":"Say one short sentence '
        'about proxy latency."}],"max_tokens":64,"temperature":0,'
        f'"stream":{flag}}}'
    ).encode()


#: The client key the benchmarks configure and send, ready for the auth layer.
CLIENT_KEY = "sk-bench-client-0123456789abcdef"
#: The provider key the proxy adds upstream.
UPSTREAM_KEY = "sk-bench-upstream-0123456789abcdef"
