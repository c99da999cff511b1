"""A ``Turn`` as OpenAI's Chat Completions sends it: a ``chat.completion`` or its chunks.

Thinking goes out as ``reasoning_content``, as vLLM and DeepSeek send it (OpenAI itself
sends none). Tool calls stream as the real API does: the first delta of a call carries its
id, name and empty arguments, the next ones argument fragments.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from benchmarks._wire_turn import Reply, ToolCall, Turn, TurnUsage, dumps, pieces, sse

__all__ = ["chat", "chat_error_event"]


def chat_error_event(message: str = "Overloaded") -> bytes:
    """What OpenAI sends when a stream fails after it started."""
    error = {"message": message, "type": "server_error", "param": None, "code": None}
    return sse({"error": error})


def _usage(usage: TurnUsage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.prompt,
        "completion_tokens": usage.output,
        "total_tokens": usage.prompt + usage.output,
        "prompt_tokens_details": {
            "cached_tokens": usage.cache_read,
            "cache_write_tokens": usage.cache_write,
        },
    }


def _completion(
    base: dict[str, Any], turn: Turn, calls: list[tuple[ToolCall, str]]
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": turn.text, "refusal": turn.refusal}
    if turn.thinking is not None:
        message["reasoning_content"] = turn.thinking
    if calls:
        message["tool_calls"] = [
            {"id": i, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c, i in calls
        ]
    choice = dict(index=0, message=message, logprobs=None, finish_reason=turn.finish_reason())
    return {**base, "object": "chat.completion", "choices": [choice]}


def _chunks(
    base: dict[str, Any], turn: Turn, calls: list[tuple[ToolCall, str]], chunks: int
) -> list[bytes]:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = dict(index=0, delta=delta, logprobs=None, finish_reason=finish)
        return sse({**base, "choices": [choice]})

    first = "" if turn.text is not None else None
    events = [chunk({"role": "assistant", "content": first, "refusal": None})]
    said_by_key = ("reasoning_content", turn.thinking), ("content", turn.text)
    for key, said in (*said_by_key, ("refusal", turn.refusal)):
        if said is not None:
            events += [chunk({key: p}) for p in pieces(said, chunks)]
    for n, (call, call_id) in enumerate(calls):
        named = {"name": call.name, "arguments": ""}
        started = dict(index=n, id=call_id, type="function", function=named)
        events.append(chunk({"tool_calls": [started]}))
        events += [
            chunk({"tool_calls": [{"index": n, "function": {"arguments": p}}]})
            for p in pieces(call.arguments, chunks)
        ]
    return [*events, chunk({}, turn.finish_reason())]


def chat(
    req: dict[str, Any], turn: Turn, usage: TurnUsage, chunks: int, error_after: int | None
) -> Reply:
    """The answer to a Chat Completions request: JSON, or SSE when it asked to stream."""
    base: dict[str, Any] = {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "created": int(time.time()),
    }
    base |= {"model": req.get("model", "fake-model"), "system_fingerprint": "fp_fake"}
    calls = [(c, c.call_id("call_")) for c in turn.tool_calls]
    if not req.get("stream"):
        return dumps(_completion(base, turn, calls) | {"usage": _usage(usage)})
    base["object"] = "chat.completion.chunk"
    with_usage = bool((req.get("stream_options") or {}).get("include_usage"))
    if with_usage:
        base["usage"] = None  # like the real API: null on every chunk but the last one
    events = _chunks(base, turn, calls, chunks)
    if with_usage:
        events.append(sse({**base, "choices": [], "usage": _usage(usage)}))
    if error_after is not None:
        return [*events[:error_after], chat_error_event()]
    return [*events, b"data: [DONE]\n\n"]
