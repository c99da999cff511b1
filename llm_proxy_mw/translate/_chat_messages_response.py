"""JSON responses between Messages and Chat Completions, both ways. The provider's answer
is untrusted: what cannot be used is dropped, nothing raises. Ids are kept as the provider
gave them (a Chat client may see ``msg_...``), so that logs on both sides match."""

from __future__ import annotations

import json
from time import time
from typing import Any

from llm_proxy_mw.translate._codec import Json, TokenUsage
from llm_proxy_mw.translate._mappings import (
    FINISH_TO_STOP,
    STOP_TO_FINISH,
    anthropic_usage,
    chat_usage,
    usage_from_anthropic,
    usage_from_chat,
)

__all__ = ["chat_response_to_messages", "messages_response_to_chat"]


def _object(value: Any) -> Json:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def messages_response_to_chat(body: Json) -> tuple[Json, TokenUsage]:
    """A Message as a ChatCompletion: text joined into ``content``, thinking into
    ``reasoning_content`` with its signed blocks in ``thinking_blocks``, ``tool_use`` blocks
    as ``tool_calls`` (same ids)."""
    texts: list[str] = []
    thinking: list[Json] = []
    calls: list[Json] = []
    for block in _list(body.get("content")):
        block = _object(block)
        kind = block.get("type")
        if kind == "text":
            texts.append(_str(block.get("text")))
        elif kind == "thinking":
            thinking.append(
                {
                    "type": "thinking",
                    "thinking": _str(block.get("thinking")),
                    "signature": _str(block.get("signature")),
                }
            )
        elif kind == "redacted_thinking":
            thinking.append({"type": "redacted_thinking", "data": _str(block.get("data"))})
        elif kind == "tool_use":
            arguments = json.dumps(_object(block.get("input")))
            function = {"name": _str(block.get("name")), "arguments": arguments}
            calls.append({"id": _str(block.get("id")), "type": "function", "function": function})
    stop_reason = body.get("stop_reason")
    message: Json = {
        "role": "assistant",
        "content": "".join(texts) if texts else None,
        "refusal": None,
    }
    if stop_reason == "refusal":
        details = _object(body.get("stop_details"))
        message["refusal"] = _str(details.get("explanation")) or "refused"
    if calls:
        message["tool_calls"] = calls
    if thinking:
        message["reasoning_content"] = "".join(b.get("thinking", "") for b in thinking)
        message["thinking_blocks"] = thinking
    usage = usage_from_anthropic(body.get("usage"))
    usage_body = chat_usage(usage)
    details = _object(_object(body.get("usage")).get("output_tokens_details"))
    thinking_tokens = details.get("thinking_tokens")
    if isinstance(thinking_tokens, int) and 0 <= thinking_tokens <= usage.completion_tokens:
        usage_body["completion_tokens_details"] = {"reasoning_tokens": thinking_tokens}
    chat = {
        "id": _str(body.get("id")),
        "object": "chat.completion",
        "created": int(time()),
        "model": _str(body.get("model")),
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": STOP_TO_FINISH.get(_str(stop_reason), "stop"),
                "logprobs": None,
            }
        ],
        "usage": usage_body,
    }
    return chat, usage


def chat_response_to_messages(body: Json) -> tuple[Json, TokenUsage]:
    """A ChatCompletion's first choice as a Message: thinking blocks first (a bare
    ``reasoning_content`` as one unsigned block), then text, then ``tool_use`` blocks."""
    choices = _list(body.get("choices"))
    choice = _object(choices[0]) if choices else {}
    message = _object(choice.get("message"))
    content: list[Json] = []
    blocks = _list(message.get("thinking_blocks"))
    reasoning = message.get("reasoning_content")
    if blocks:
        content.extend(
            _object(b)
            for b in blocks
            if _object(b).get("type") in ("thinking", "redacted_thinking")
        )
    elif isinstance(reasoning, str) and reasoning:
        content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    text = message.get("content")
    if isinstance(text, str) and text:
        content.append({"type": "text", "text": text})
    refusal = message.get("refusal")
    if isinstance(refusal, str) and refusal:
        content.append({"type": "text", "text": refusal})
    for call in _list(message.get("tool_calls")):
        call = _object(call)
        function = _object(call.get("function"))
        content.append(
            {
                "type": "tool_use",
                "id": _str(call.get("id")),
                "name": _str(function.get("name")),
                "input": _arguments(function.get("arguments")),
            }
        )
    finish_reason = choice.get("finish_reason")
    stop_reason = "refusal" if refusal else FINISH_TO_STOP.get(_str(finish_reason), "end_turn")
    usage = usage_from_chat(body.get("usage"))
    return {
        "id": _str(body.get("id")),
        "type": "message",
        "role": "assistant",
        "model": _str(body.get("model")),
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": anthropic_usage(usage),
    }, usage


def _arguments(arguments: Any) -> Json:
    """A tool call's arguments as an object; text that is no JSON object (a provider's
    slip) is kept whole under ``arguments`` rather than lost."""
    if not isinstance(arguments, str) or not arguments.strip():
        return {}
    try:
        parsed = json.loads(arguments)
    except ValueError:
        return {"arguments": arguments}
    return parsed if isinstance(parsed, dict) else {"arguments": parsed}
