"""The echo provider's OpenAI Chat Completions and legacy Completions, JSON and SSE."""

from __future__ import annotations

import time
from typing import Any

from llm_proxy_mw.errors import InvalidRequestError
from llm_proxy_mw.translate._codec import TokenUsage
from llm_proxy_mw.translate._mappings import chat_usage
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

__all__ = ["chat", "completion", "read_chat", "read_completion"]


def read_chat(body: dict[str, Any]) -> Prompt:
    """A Chat Completions request: ``messages`` (system ones included) make the prompt."""
    messages = field(body, "messages", list)
    if messages is None:
        raise InvalidRequestError("Missing required parameter: 'messages'.", param="messages")
    if not all(isinstance(m, dict) for m in messages):
        raise InvalidRequestError("Each of 'messages' must be an object.", param="messages")
    prompt = Prompt(said="", prompt_tokens=sum(count(text_of(m.get("content"))) for m in messages))
    if messages and messages[-1].get("role") == "tool":
        prompt.said, prompt.tool_result = text_of(messages[-1].get("content")), True
    else:
        prompt.said = next(
            (text_of(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), ""
        )
    prompt.tools = {}
    for tool in field(body, "tools", list, []):
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            prompt.tools[function["name"]] = function.get("parameters")
    choice = body.get("tool_choice")
    if choice == "none":
        prompt.tool_choice = None
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        prompt.tool_choice = str(choice["function"].get("name"))
    response_format = field(body, "response_format", dict, {})
    if response_format.get("type") == "json_schema":
        spec = response_format.get("json_schema")
        prompt.schema = spec.get("schema", {}) if isinstance(spec, dict) else {}
    elif response_format.get("type") == "json_object":
        prompt.schema = {"type": "object"}
    prompt.limit = body.get("max_completion_tokens") or body.get("max_tokens")
    return prompt


def read_completion(body: dict[str, Any]) -> Prompt:
    """A legacy Completions request: its ``prompt`` is what was said."""
    said = body.get("prompt")
    said = said if isinstance(said, str) else ""  # token arrays are answered with an empty echo
    return Prompt(said=said, prompt_tokens=count(said), limit=body.get("max_tokens"))


def _usage(answer: EchoAnswer) -> dict[str, Any]:
    return chat_usage(TokenUsage(answer.prompt_tokens, answer.completion_tokens))


def _finish(answer: EchoAnswer) -> str:
    if answer.tool_call is not None:
        return "tool_calls"
    return "length" if answer.truncated else "stop"


def chat(answer: EchoAnswer) -> Rendered:
    base = {"id": f"chatcmpl-{answer.id}", "created": int(time.time()), "model": answer.model}
    call = answer.tool_call
    call_id = f"call_{answer.id}"
    if not answer.stream:
        message: dict[str, Any] = {"role": "assistant", "content": answer.text, "refusal": None}
        if call is not None:
            function = {"name": call.name, "arguments": call.arguments}
            message["content"] = None
            message["tool_calls"] = [{"id": call_id, "type": "function", "function": function}]
        choice = {
            "index": 0,
            "message": message,
            "logprobs": None,
            "finish_reason": _finish(answer),
        }
        body = {**base, "object": "chat.completion", "choices": [choice], "usage": _usage(answer)}
        return JSON_HEADERS, [dumps(body)]

    def chunk(delta: dict[str, Any], finish_reason: str | None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return _data({**base, "object": "chat.completion.chunk", "choices": [choice]})

    if call is None:
        events = [chunk({"role": "assistant", "content": ""}, None)]
        events += [chunk({"content": piece}, None) for piece in answer.pieces]
    else:
        # The id and name come first, then the arguments in fragments, as OpenAI streams them.
        start = {"index": 0, "id": call_id, "type": "function"}
        start["function"] = {"name": call.name, "arguments": ""}
        events = [chunk({"role": "assistant", "content": None, "tool_calls": [start]}, None)]
        events += [
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}, None)
            for piece in answer.pieces
        ]
    events.append(chunk({}, _finish(answer)))
    if answer.include_usage:
        usage = {**base, "object": "chat.completion.chunk", "choices": [], "usage": _usage(answer)}
        events.append(_data(usage))
    events.append(b"data: [DONE]\n\n")
    return SSE_HEADERS, events


def _data(payload: dict[str, Any]) -> bytes:
    return b"data: " + dumps(payload) + b"\n\n"


def completion(answer: EchoAnswer) -> Rendered:
    choice = {
        "index": 0,
        "text": answer.text,
        "logprobs": None,
        "finish_reason": "length" if answer.truncated else "stop",
    }
    body = {
        "id": f"cmpl-{answer.id}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": answer.model,
        "choices": [choice],
        "usage": _usage(answer),
    }
    return JSON_HEADERS, [dumps(body)]
