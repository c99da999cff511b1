"""The echo provider's Anthropic Messages (JSON and SSE) and count_tokens."""

from __future__ import annotations

from typing import Any

from llm_proxy_mw.translate._codec import TokenUsage
from llm_proxy_mw.translate._mappings import anthropic_usage
from llm_proxy_mw.transports._echo_answer import EchoAnswer
from llm_proxy_mw.transports._echo_prompts import read_messages
from llm_proxy_mw.transports._echo_wire import JSON_HEADERS, SSE_HEADERS, Rendered, dumps

__all__ = ["count_tokens", "messages"]


def count_tokens(body: dict[str, Any]) -> Rendered:
    return JSON_HEADERS, [dumps({"input_tokens": read_messages(body).prompt_tokens})]


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + dumps({"type": event, **data}) + b"\n\n"


def messages(answer: EchoAnswer) -> Rendered:
    call = answer.tool_call
    if call is not None:
        stop = "tool_use"
        tool_id = f"toolu_{answer.id}"
        block: dict[str, Any] = {"type": "tool_use", "id": tool_id, "name": call.name}
        content = [{**block, "input": call.input}]
    else:
        stop = "max_tokens" if answer.truncated else "end_turn"
        content = [{"type": "text", "text": answer.text}]
    usage = anthropic_usage(TokenUsage(answer.prompt_tokens, answer.completion_tokens))
    message: dict[str, Any] = {
        "id": f"msg_{answer.id}",
        "type": "message",
        "role": "assistant",
        "model": answer.model,
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": usage,
    }
    if not answer.stream:
        return JSON_HEADERS, [dumps(message)]
    # message_start carries the real input count; message_delta the final output count.
    start = {**message, "content": [], "stop_reason": None, "usage": {**usage, "output_tokens": 1}}
    if call is None:
        first: dict[str, Any] = {"type": "text", "text": ""}
        deltas = [{"type": "text_delta", "text": piece} for piece in answer.pieces]
    else:
        first = {**block, "input": {}}
        deltas = [{"type": "input_json_delta", "partial_json": piece} for piece in answer.pieces]
    events = [
        _sse("message_start", {"message": start}),
        _sse("content_block_start", {"index": 0, "content_block": first}),
        _sse("ping", {}),
    ]
    events += [_sse("content_block_delta", {"index": 0, "delta": delta}) for delta in deltas]
    events += [
        _sse("content_block_stop", {"index": 0}),
        _sse(
            "message_delta",
            {
                "delta": {"stop_reason": stop, "stop_sequence": None},
                "usage": {"output_tokens": answer.completion_tokens},
            },
        ),
        _sse("message_stop", {}),
    ]
    return SSE_HEADERS, events
