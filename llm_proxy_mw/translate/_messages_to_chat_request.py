"""An Anthropic Messages request as a Chat Completions request for an OpenAI-kind provider
(docs/translation.md has the table). Such a provider gets none of the hub's extensions
(thinking blocks, ``cache_control``): they are Anthropic's alone."""

from __future__ import annotations

import json
from typing import Any

from llm_proxy_mw.errors import InvalidRequestError
from llm_proxy_mw.translate._codec import Json, Target
from llm_proxy_mw.translate._fields import (
    data_url,
    int_at,
    list_at,
    object_at,
    refuse,
    str_at,
)

__all__ = ["messages_request_to_chat"]

_PROVIDER = "Chat Completions"

#: Parameters translated below (``temperature`` and ``top_p`` come from older clients).
_TRANSLATED = frozenset(
    "model messages max_tokens system stop_sequences stream metadata tools "
    "tool_choice thinking output_config temperature top_p".split()
)
#: Parameters dropped: they steer Anthropic's caching, capacity, speed and diagnostics,
#: which cannot change what the answer says; and ``context_management`` (Claude Code sends
#: it on every request), which lets Anthropic clear old tool results once a conversation
#: grows: a Chat provider gets the whole conversation instead.
_DROPPED = frozenset(
    {
        "cache_control",
        "service_tier",
        "speed",
        "diagnostics",
        "workspace_id",
        "user_profile_id",
        "context_management",
    }
)

_TOOL_CHOICES = {"auto": "auto", "any": "required", "none": "none"}
#: Tool keys that change only how Anthropic runs or caches a tool, not what it is.
_TOOL_KEYS_DROPPED = frozenset(
    {"type", "cache_control", "defer_loading", "eager_input_streaming", "allowed_callers"}
)
_TOOL_KEYS = _TOOL_KEYS_DROPPED | {"name", "description", "input_schema", "strict"}


def _effort_of_budget(budget: int) -> str:
    """A thinking budget as the nearest ``reasoning_effort`` most providers know."""
    return "low" if budget < 4096 else "medium" if budget < 16384 else "high"


def messages_request_to_chat(body: Json, target: Target) -> Json:
    """A Messages client's ``body`` as a Chat body for ``target.model``; a stream asks for
    usage, which Messages always reports."""
    for key in body:
        if key not in _TRANSLATED and key not in _DROPPED:
            raise refuse(key, _PROVIDER)
    messages: list[Json] = []
    system = body.get("system")
    if system:
        messages.append({"role": "system", "content": _system(system, "system")})
    for i, item in enumerate(list_at(body.get("messages"), "messages")):
        _add_message(messages, object_at(item, f"messages[{i}]"), f"messages[{i}]")
    out: Json = {"model": target.model, "messages": messages}
    max_tokens = body.get("max_tokens")
    if max_tokens is not None:
        out["max_completion_tokens"] = int_at(max_tokens, "max_tokens")
    for key in ("temperature", "top_p"):
        if body.get(key) is not None:
            out[key] = body[key]
    stop = body.get("stop_sequences")
    if stop:
        out["stop"] = [
            str_at(s, f"stop_sequences[{i}]") for i, s in enumerate(list_at(stop, "stop_sequences"))
        ]
    if body.get("stream"):
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    metadata = body.get("metadata")
    if metadata is not None and object_at(metadata, "metadata").get("user_id") is not None:
        out["user"] = str_at(metadata["user_id"], "metadata.user_id")
    tools = body.get("tools")
    if tools:
        out["tools"] = [
            _tool(tool, f"tools[{i}]") for i, tool in enumerate(list_at(tools, "tools"))
        ]
        if body.get("tool_choice") is not None:
            _tool_choice(out, object_at(body["tool_choice"], "tool_choice"))
    _reasoning(out, body)
    return out


def _reasoning(out: Json, body: Json) -> None:
    """``thinking`` and ``output_config`` as ``reasoning_effort`` and ``response_format``."""
    thinking = body.get("thinking")
    if thinking is not None:
        thinking = object_at(thinking, "thinking")
        if thinking.get("type") == "enabled":
            out["reasoning_effort"] = _effort_of_budget(
                int_at(thinking.get("budget_tokens"), "thinking.budget_tokens")
            )
    config = body.get("output_config")
    if config is None:
        return
    config = object_at(config, "output_config")
    effort = config.get("effort")
    if effort is not None:
        out["reasoning_effort"] = str_at(effort, "output_config.effort")
    output_format = config.get("format")
    if output_format is not None:
        schema = object_at(output_format, "output_config.format").get("schema")
        out["response_format"] = {
            "type": "json_schema",
            "json_schema": {
                "name": "response",
                "schema": object_at(schema, "output_config.format.schema"),
                "strict": True,
            },
        }


def _system(system: Any, where: str) -> str | list[Json]:
    if isinstance(system, str):
        return system
    return [_text_part(block, f"{where}[{i}]") for i, block in enumerate(list_at(system, where))]


def _text_part(value: Any, where: str) -> Json:
    block = object_at(value, where)
    if block.get("type") != "text":
        raise refuse(f"{where}.type", _PROVIDER)
    return {"type": "text", "text": str_at(block.get("text"), where, ".text")}


def _add_message(messages: list[Json], message: Json, where: str) -> None:
    """One Messages turn as Chat messages: a user turn's ``tool_result`` blocks become
    ``tool`` messages ahead of what else it says."""
    role = message.get("role")
    content = message.get("content")
    if role == "system":
        messages.append({"role": "system", "content": _system(content, f"{where}.content")})
        return
    if role not in ("user", "assistant"):
        raise InvalidRequestError(f"{where}.role: unknown role {role!r}", param=f"{where}.role")
    if isinstance(content, str):
        messages.append({"role": role, "content": content})
        return
    where += ".content"
    blocks = [object_at(block, f"{where}[{j}]") for j, block in enumerate(list_at(content, where))]
    if role == "assistant":
        assistant = _assistant(blocks, where)
        if assistant is not None:
            messages.append(assistant)
        return
    media: list[Json] = []  # images and documents of tool results
    parts: list[Json] = []
    for j, block in enumerate(blocks):
        if block.get("type") == "tool_result":
            messages.append(_tool_message(block, f"{where}[{j}]", media))
        else:
            parts.append(_user_part(block, f"{where}[{j}]"))
    if media or parts:
        messages.append({"role": "user", "content": media + parts})


def _user_part(block: Json, where: str) -> Json:
    """A user block as a content part: text, an image, or a base64 PDF as a file."""
    kind = block.get("type")
    if kind == "text":
        return {"type": "text", "text": str_at(block.get("text"), where, ".text")}
    if kind not in ("image", "document"):
        raise refuse(f"{where}.type", _PROVIDER)
    source = object_at(block.get("source"), where, ".source")
    source_type = source.get("type")
    if kind == "image" and source_type == "url":
        return {
            "type": "image_url",
            "image_url": {"url": str_at(source.get("url"), where, ".source.url")},
        }
    if kind == "image" and source_type == "base64":
        url = data_url(source.get("media_type"), source.get("data"), f"{where}.source")
        return {"type": "image_url", "image_url": {"url": url}}
    if (
        kind == "document"
        and source_type == "base64"
        and source.get("media_type") == "application/pdf"
    ):
        url = data_url(source.get("media_type"), source.get("data"), f"{where}.source")
        return {"type": "file", "file": {"file_data": url}}
    raise refuse(f"{where}.source", _PROVIDER)


def _tool_message(block: Json, where: str, media: list[Json]) -> Json:
    """A ``tool_result`` as a ``tool`` message. Chat's tool messages hold text only: the
    result's images and documents go to ``media``, for the user message that follows the
    tool messages. ``is_error``, which Chat has no field for, is said in the text."""
    content = block.get("content", "")
    if not isinstance(content, str):
        at = where + ".content"
        texts: list[Json] = []
        for k, part in enumerate(list_at(content, at)):
            converted = _user_part(object_at(part, f"{at}[{k}]"), f"{at}[{k}]")
            (texts if converted["type"] == "text" else media).append(converted)
        content = texts or ""
    if block.get("is_error"):
        content = "Error: " + (
            content if isinstance(content, str) else "".join(p["text"] for p in content)
        )
    return {
        "role": "tool",
        "tool_call_id": str_at(block.get("tool_use_id"), where, ".tool_use_id"),
        "content": content,
    }


def _assistant(blocks: list[Json], where: str) -> Json | None:
    """Text and ``tool_use`` blocks as one assistant message. Thinking blocks are Anthropic's
    (signed for Anthropic): an OpenAI-kind model cannot take them back, so they are left out."""
    texts: list[Json] = []
    calls: list[Json] = []
    for j, block in enumerate(blocks):
        kind = block.get("type")
        if kind == "text":
            texts.append({"type": "text", "text": str_at(block.get("text"), where, f"[{j}].text")})
        elif kind == "tool_use":
            at = f"{where}[{j}]"
            tool_input = object_at(block.get("input"), at, ".input")
            name = str_at(block.get("name"), at, ".name")
            function = {"name": name, "arguments": json.dumps(tool_input)}
            calls.append(
                {"id": str_at(block.get("id"), at, ".id"), "type": "function", "function": function}
            )
        elif kind not in ("thinking", "redacted_thinking"):
            raise refuse(f"{where}[{j}].type", _PROVIDER)
    if not texts and not calls:
        return None
    message: Json = {
        "role": "assistant",
        "content": texts[0]["text"] if len(texts) == 1 else texts or None,
    }
    if calls:
        message["tool_calls"] = calls
    return message


def _tool(value: Any, where: str) -> Json:
    """A client tool as a function; Anthropic's server tools run only at Anthropic."""
    tool = object_at(value, where)
    if tool.get("type") not in (None, "custom"):
        raise refuse(f"{where}.type", _PROVIDER)
    unknown = tool.keys() - _TOOL_KEYS
    if unknown:
        raise refuse(f"{where}.{min(unknown)}", _PROVIDER)
    function: Json = {
        "name": str_at(tool.get("name"), where, ".name"),
        "parameters": object_at(tool.get("input_schema"), where, ".input_schema"),
    }
    if tool.get("description") is not None:
        function["description"] = str_at(tool["description"], where, ".description")
    if tool.get("strict") is not None:
        function["strict"] = bool(tool["strict"])
    return {"type": "function", "function": function}


def _tool_choice(out: Json, choice: Json) -> None:
    kind = choice.get("type")
    if kind == "tool":
        name = str_at(choice.get("name"), "tool_choice.name")
        out["tool_choice"] = {"type": "function", "function": {"name": name}}
    elif isinstance(kind, str) and kind in _TOOL_CHOICES:
        out["tool_choice"] = _TOOL_CHOICES[kind]
    else:
        raise InvalidRequestError(
            "tool_choice.type: must be auto, any, tool or none", param="tool_choice.type"
        )
    if choice.get("disable_parallel_tool_use") and kind != "none":
        out["parallel_tool_calls"] = False
