"""A ``Turn`` as Anthropic's Messages API sends it: a ``message`` or its stream events.

Blocks come in the real order (thinking, text, tool_use). In a stream: ``message_start``
with the real input usage, each block's start, deltas (``thinking_delta`` then one
``signature_delta``; ``input_json_delta`` starting with an empty fragment, as the API does)
and stop, a ``ping`` after the first block's start, ``message_delta`` with the stop reason
and the output usage, ``message_stop``. A refusal is a text block.
"""

from __future__ import annotations

import uuid
from typing import Any

from benchmarks._wire_turn import Reply, Turn, TurnUsage, dumps, pieces, sse

__all__ = ["messages", "messages_error_event"]


def _event(kind: str, **fields: Any) -> bytes:
    return sse({"type": kind, **fields}, kind)


def messages_error_event() -> bytes:
    """What Anthropic sends when a stream fails after it started."""
    return _event("error", error={"type": "overloaded_error", "message": "Overloaded"})


def _blocks(turn: Turn) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    if turn.thinking is not None:
        blocks.append({"type": "thinking", "thinking": turn.thinking, "signature": turn.signature})
    blocks += [{"type": "text", "text": t} for t in (turn.text, turn.refusal) if t is not None]
    for call in turn.tool_calls:
        tool_id = call.call_id("toolu_")
        blocks.append({"type": "tool_use", "id": tool_id, "name": call.name, "input": call.input})
    return blocks


def _block_events(i: int, block: dict[str, Any], arguments: str, chunks: int) -> list[bytes]:
    """One block's start, deltas and stop (``arguments``: a tool call's JSON string)."""
    kind = block["type"]
    if kind == "thinking":
        start = {**block, "thinking": "", "signature": ""}
        deltas = [{"type": "thinking_delta", "thinking": p} for p in pieces(block[kind], chunks)]
        deltas.append({"type": "signature_delta", "signature": block["signature"]})
    elif kind == "text":
        start = {**block, "text": ""}
        deltas = [{"type": "text_delta", "text": p} for p in pieces(block[kind], chunks)]
    else:
        start = {**block, "input": {}}
        fragments = ["", *pieces(arguments, chunks)]
        deltas = [{"type": "input_json_delta", "partial_json": p} for p in fragments]
    return [
        _event("content_block_start", index=i, content_block=start),
        *(_event("content_block_delta", index=i, delta=d) for d in deltas),
        _event("content_block_stop", index=i),
    ]


def messages(
    req: dict[str, Any], turn: Turn, usage: TurnUsage, chunks: int, error_after: int | None
) -> Reply:
    """The answer to a Messages request: JSON, or SSE when it asked to stream."""
    msg: dict[str, Any] = {
        "id": f"msg_{uuid.uuid4().hex[:24]}",
        "type": "message",
        "role": "assistant",
    }
    blocks = _blocks(turn)
    msg |= {"model": req.get("model", "fake-model"), "content": blocks}
    msg |= {"stop_reason": turn.stop_reason(), "stop_sequence": turn.stop_sequence}
    used = {
        "input_tokens": usage.input,
        "cache_creation_input_tokens": usage.cache_write,
        "cache_read_input_tokens": usage.cache_read,
    }
    msg["usage"] = {**used, "output_tokens": usage.output}
    if not req.get("stream"):
        return dumps(msg)
    start: dict[str, Any] = {**msg, "content": [], "stop_reason": None, "stop_sequence": None}
    start["usage"] = {**used, "output_tokens": 1}
    events = [_event("message_start", message=start)]
    arguments = iter(call.arguments for call in turn.tool_calls)
    for i, block in enumerate(blocks):
        args = next(arguments) if block["type"] == "tool_use" else ""
        events += _block_events(i, block, args, chunks)
    events.insert(2 if blocks else 1, _event("ping"))
    end = {"stop_reason": msg["stop_reason"], "stop_sequence": msg["stop_sequence"]}
    events.append(_event("message_delta", delta=end, usage={"output_tokens": usage.output}))
    events.append(_event("message_stop"))
    if error_after is not None:
        return [*events[:error_after], messages_error_event()]
    return events
