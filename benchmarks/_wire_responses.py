"""A ``Turn`` as OpenAI's Responses API sends it: a ``response`` or its event grammar.

Output items in the real order: a ``reasoning`` item (the thinking as its summary; the
signature as ``encrypted_content`` when the request asked to ``include`` it), a ``message``
(``output_text`` and ``refusal`` parts), one ``function_call`` per tool call. A stream goes
``response.created``, ``response.in_progress``, per item ``output_item.added``, its parts'
added/delta/done events, ``output_item.done``, then ``response.completed`` (or
``response.incomplete`` when the turn stopped at its token limit); a failure mid-stream is a
``response.failed``.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from benchmarks._wire_turn import Reply, Turn, TurnUsage, dumps, pieces, sse

__all__ = ["responses"]

_INCOMPLETE = {"max_tokens": "max_output_tokens", "refusal": "content_filter"}


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


def _shell(req: dict[str, Any]) -> dict[str, Any]:
    """The response object around the output, echoing the request's settings."""
    reasoning = req.get("reasoning") or {}
    return {
        "id": _id("resp"),
        "object": "response",
        "created_at": int(time.time()),
        "status": "in_progress",
        "error": None,
        "incomplete_details": None,
        "instructions": req.get("instructions"),
        "max_output_tokens": req.get("max_output_tokens"),
        "model": req.get("model", "fake-model"),
        "output": [],
        "parallel_tool_calls": req.get("parallel_tool_calls", True),
        "previous_response_id": req.get("previous_response_id"),
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "store": req.get("store", True),
        "temperature": req.get("temperature", 1.0),
        "text": req.get("text") or {"format": {"type": "text"}},
        "tool_choice": req.get("tool_choice", "auto"),
        "tools": req.get("tools", []),
        "top_p": req.get("top_p", 1.0),
        "truncation": req.get("truncation", "disabled"),
        "usage": None,
        "user": req.get("user"),
        "metadata": req.get("metadata") or {},
    }


def _items(req: dict[str, Any], turn: Turn) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    if turn.thinking is not None:
        summary = [{"type": "summary_text", "text": turn.thinking}]
        item = {"id": _id("rs"), "type": "reasoning", "summary": summary}
        if "reasoning.encrypted_content" in (req.get("include") or []):
            item["encrypted_content"] = turn.signature
        items.append(item)
    parts: list[dict[str, Any]] = []
    if turn.text is not None:
        parts.append({"type": "output_text", "text": turn.text, "annotations": [], "logprobs": []})
    if turn.refusal is not None:
        parts.append({"type": "refusal", "refusal": turn.refusal})
    if parts:
        message = {"id": _id("msg"), "type": "message", "role": "assistant"}
        items.append({**message, "status": "completed", "content": parts})
    for call in turn.tool_calls:
        named = {"call_id": call.call_id("call_"), "name": call.name}
        item = {"id": _id("fc"), "type": "function_call", **named, "arguments": call.arguments}
        items.append({**item, "status": "completed"})
    return items


def _usage(usage: TurnUsage) -> dict[str, Any]:
    return {
        "input_tokens": usage.prompt,
        "input_tokens_details": {
            "cached_tokens": usage.cache_read,
            "cache_write_tokens": usage.cache_write,
        },
        "output_tokens": usage.output,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.prompt + usage.output,
    }


def _part_events(at: dict[str, Any], part: dict[str, Any], chunks: int) -> list[dict[str, Any]]:
    """A message part's added, delta and done events (``at``: item id, output and part index)."""
    key = "text" if part["type"] == "output_text" else "refusal"
    kind = "output_text" if key == "text" else "refusal"
    extra: dict[str, Any] = {"logprobs": []} if key == "text" else {}
    events = [{"type": "response.content_part.added", **at, "part": {**part, key: ""}}]
    events += [
        {"type": f"response.{kind}.delta", **at, "delta": p, **extra}
        for p in pieces(part[key], chunks)
    ]
    events.append({"type": f"response.{kind}.done", **at, key: part[key], **extra})
    return [*events, {"type": "response.content_part.done", **at, "part": part}]


def _item_events(n: int, item: dict[str, Any], chunks: int) -> list[dict[str, Any]]:
    """One output item's events, from ``output_item.added`` to ``output_item.done``."""
    at: dict[str, Any] = {"item_id": item["id"], "output_index": n}
    kind = item["type"]
    if kind == "reasoning":
        start = {**item, "summary": []}
        at["summary_index"] = 0
        done = item["summary"][0]
        text = done["text"]
        empty = {"type": "summary_text", "text": ""}
        inner = [{"type": "response.reasoning_summary_part.added", **at, "part": empty}]
        inner += [
            {"type": "response.reasoning_summary_text.delta", **at, "delta": p}
            for p in pieces(text, chunks)
        ]
        inner.append({"type": "response.reasoning_summary_text.done", **at, "text": text})
        inner.append({"type": "response.reasoning_summary_part.done", **at, "part": done})
    elif kind == "message":
        start = {**item, "status": "in_progress", "content": []}
        inner = []
        for i, part in enumerate(item["content"]):
            inner += _part_events({**at, "content_index": i}, part, chunks)
    else:
        start = {**item, "status": "in_progress", "arguments": ""}
        inner = [
            {"type": "response.function_call_arguments.delta", **at, "delta": p}
            for p in pieces(item["arguments"], chunks)
        ]
        done_args = {"arguments": item["arguments"], "name": item["name"]}
        inner.append({"type": "response.function_call_arguments.done", **at, **done_args})
    added = {"type": "response.output_item.added", "output_index": n, "item": start}
    return [added, *inner, {"type": "response.output_item.done", "output_index": n, "item": item}]


def responses(
    req: dict[str, Any], turn: Turn, usage: TurnUsage, chunks: int, error_after: int | None
) -> Reply:
    """The answer to a Responses request: JSON, or SSE when it asked to stream."""
    shell = _shell(req)
    items = _items(req, turn)
    reason = _INCOMPLETE.get(turn.stop_reason()) if turn.stop is not None else None
    final = {**shell, "status": "incomplete" if reason else "completed", "output": items}
    final |= {"incomplete_details": {"reason": reason} if reason else None}
    final["usage"] = _usage(usage)
    if not req.get("stream"):
        return dumps(final)
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": shell},
        {"type": "response.in_progress", "response": shell},
    ]
    for n, item in enumerate(items):
        events += _item_events(n, item, chunks)
    events.append({"type": f"response.{final['status']}", "response": final})
    if error_after is not None:
        error = {"code": "server_error", "message": "Overloaded"}
        failed = {**shell, "status": "failed", "error": error}
        events = [*events[:error_after], {"type": "response.failed", "response": failed}]
    return [sse({**e, "sequence_number": i}, e["type"]) for i, e in enumerate(events)]
