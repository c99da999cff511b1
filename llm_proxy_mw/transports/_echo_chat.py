"""The echo provider's OpenAI Chat Completions and legacy Completions, JSON and SSE."""

from __future__ import annotations

import time
from typing import Any

from llm_proxy_mw.translate._codec import TokenUsage
from llm_proxy_mw.translate._mappings import chat_usage
from llm_proxy_mw.transports._echo_answer import EchoAnswer
from llm_proxy_mw.transports._echo_wire import JSON_HEADERS, SSE_HEADERS, Rendered, dumps

__all__ = ["chat", "completion"]


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
