"""The echo provider's Anthropic Messages (JSON and SSE) and count_tokens."""

from __future__ import annotations

from typing import Any

from llm_proxy_mw.errors import InvalidRequestError
from llm_proxy_mw.translate._codec import TokenUsage
from llm_proxy_mw.translate._mappings import anthropic_usage
from llm_proxy_mw.transports._echo_answer import (
    JSON_HEADERS,
    SSE_HEADERS,
    EchoAnswer,
    Prompt,
    Rendered,
    count,
    dumps,
    field,
    text_of,
)

__all__ = ["count_tokens", "messages", "read_messages"]


def read_messages(body: dict[str, Any]) -> Prompt:
    """A Messages request: ``system`` and ``messages`` make the prompt; a user turn holding
    ``tool_result`` blocks is a tool result."""
    messages = field(body, "messages", list)
    if messages is None:
        raise InvalidRequestError("messages: Field required", param="messages")
    if not all(isinstance(m, dict) for m in messages):
        raise InvalidRequestError("messages: each message must be an object", param="messages")
    tokens = count(text_of(body.get("system")))
    prompt = Prompt(
        said="", prompt_tokens=tokens + sum(count(text_of(m.get("content"))) for m in messages)
    )
    last = messages[-1].get("content") if messages else None
    results = (
        [part for part in last if isinstance(part, dict) and part.get("type") == "tool_result"]
        if isinstance(last, list)
        else []
    )
    if results:
        prompt.said, prompt.tool_result = text_of(results), True
    else:
        prompt.said = next(
            (text_of(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), ""
        )
    # Custom tools have an input_schema; server tools (web search, code execution) do not.
    prompt.tools = {
        tool["name"]: tool["input_schema"]
        for tool in field(body, "tools", list, [])
        if isinstance(tool, dict) and isinstance(tool.get("name"), str) and "input_schema" in tool
    }
    choice = field(body, "tool_choice", dict, {})
    if choice.get("type") == "none":
        prompt.tool_choice = None
    elif choice.get("type") == "tool":
        prompt.tool_choice = str(choice.get("name"))
    output_format = field(body, "output_config", dict, {}).get("format")
    if isinstance(output_format, dict) and output_format.get("type") == "json_schema":
        prompt.schema = output_format.get("schema", {})
    prompt.limit = body.get("max_tokens")
    return prompt


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
