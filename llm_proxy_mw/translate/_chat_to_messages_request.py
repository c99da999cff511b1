"""A Chat Completions request as an Anthropic Messages request (docs/translation.md has
the table). Anthropic wants ``max_tokens``, roles that alternate and a first user turn:
same-role messages are merged, tool results become a user turn of ``tool_result`` blocks."""

from __future__ import annotations

import json
from typing import Any

from llm_proxy_mw.errors import InvalidRequestError
from llm_proxy_mw.translate._chat_to_messages_options import (
    add_thinking,
    output_format,
    tool_choice,
    tool_definition,
)
from llm_proxy_mw.translate._codec import Json, Target
from llm_proxy_mw.translate._fields import (
    IMAGE_TYPES,
    int_at,
    list_at,
    object_at,
    refuse,
    split_data_url,
    str_at,
)

__all__ = ["chat_request_to_messages"]

_PROVIDER = "Anthropic's Messages API"

#: Parameters translated below.
_TRANSLATED = frozenset(
    "model messages max_tokens max_completion_tokens stream stop user "
    "safety_identifier tools tool_choice parallel_tool_calls response_format "
    "reasoning_effort".split()
)
#: Parameters dropped: Messages has no sampling knobs (``temperature``, ``top_p``; refusing
#: them would shut out most clients), ``verbosity`` only asks for a shorter or longer answer
#: (Codex sends it on every request), and the rest only steer OpenAI's own storage, caching
#: and best-effort determinism, which cannot change what the answer says.
_DROPPED = frozenset(
    "temperature top_p seed stream_options metadata store prompt_cache_key "
    "prompt_cache_retention prompt_cache_options verbosity".split()
)
#: Parameters refused unless they hold a value that leaves the answer as Anthropic gives it.
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "n": (None, 1),
    "logprobs": (None, False),
    "top_logprobs": (None,),
    "frequency_penalty": (None, 0),
    "presence_penalty": (None, 0),
    "logit_bias": (None, {}),
    "audio": (None,),
    "modalities": (None, ["text"]),
    "prediction": (None,),
    "web_search_options": (None,),
    "service_tier": (None, "auto", "default"),
    "moderation": (None,),
    "functions": (None,),
    "function_call": (None,),
}


def chat_request_to_messages(body: Json, target: Target) -> Json:
    """A Chat client's ``body`` as a Messages body for ``target.model``; raises
    ``UntranslatableError`` for a parameter Messages cannot honour."""
    for key, value in body.items():
        if key not in _TRANSLATED and key not in _DROPPED:
            neutral = _NEUTRAL.get(key)
            if neutral is None or value not in neutral:
                raise refuse(key, _PROVIDER)
    system, turns = _conversation(list_at(body.get("messages"), "messages"))
    out: Json = {"model": target.model, "messages": turns}
    if system:
        out["system"] = system
    limit = body.get("max_completion_tokens")
    if limit is None:
        limit = body.get("max_tokens")
    out["max_tokens"] = target.default_max_tokens if limit is None else int_at(limit, "max_tokens")
    stop = body.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else _strings(stop, "stop")
    if body.get("stream"):
        out["stream"] = True
    user_key = "safety_identifier" if body.get("safety_identifier") is not None else "user"
    if body.get(user_key) is not None:
        out["metadata"] = {"user_id": str_at(body[user_key], user_key)}
    tools = body.get("tools")
    if tools:
        out["tools"] = [
            tool_definition(tool, f"tools[{i}]") for i, tool in enumerate(list_at(tools, "tools"))
        ]
        choice = tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"))
        if choice is not None:
            out["tool_choice"] = choice
    response_format = body.get("response_format")
    if response_format is not None:
        structured = output_format(object_at(response_format, "response_format"))
        if structured is not None:
            out["output_config"] = {"format": structured}
    effort = body.get("reasoning_effort")
    if effort is not None:
        add_thinking(out, effort, user_limit=limit is not None)
    return out


def _strings(value: Any, where: str) -> list[str]:
    return [str_at(item, f"{where}[{i}]") for i, item in enumerate(list_at(value, where))]


def _conversation(messages: list[Any]) -> tuple[str | list[Json], list[Json]]:
    """The leading system and developer messages as ``system``; the rest as turns whose
    roles alternate (a later system message stays in place, as Messages allows)."""
    system: list[Json] = []
    turns: list[Json] = []
    for i, item in enumerate(messages):
        where = f"messages[{i}]"
        message = object_at(item, where)
        role = message.get("role")
        content = message.get("content")
        if role in ("system", "developer"):
            if turns:
                _append(turns, "system", _content(content, where, text_only=True))
            else:
                system.extend(_blocks(_content(content, where, text_only=True)))
        elif role == "user":
            _append(turns, "user", _content(content, where, text_only=False))
        elif role == "assistant":
            assistant = _assistant(message, where)
            if assistant:
                _append(turns, "assistant", assistant)
        elif role == "tool":
            _append(turns, "user", [_tool_result(message, where)])
        elif role == "function":
            raise refuse(f"{where}.role", _PROVIDER)
        else:
            raise InvalidRequestError(f"{where}.role: unknown role {role!r}", param=f"{where}.role")
    if not turns or turns[0]["role"] != "user":
        # Messages starts with a user turn; a conversation opening with the assistant's
        # greeting gets a minimal one.
        turns.insert(0, {"role": "user", "content": "."})
    if len(system) == 1 and system[0].keys() == {"type", "text"}:
        return system[0]["text"], turns
    return system, turns


def _append(turns: list[Json], role: str, content: str | list[Json]) -> None:
    """Add a turn, merged into the previous one when it has the same role."""
    if turns and turns[-1]["role"] == role:
        last = turns[-1]
        last["content"] = _blocks(last["content"]) + _blocks(content)
    else:
        turns.append({"role": role, "content": content})


def _blocks(content: str | list[Json]) -> list[Json]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def _content(content: Any, where: str, *, text_only: bool) -> str | list[Json]:
    if isinstance(content, str):
        return content
    where += ".content"
    if not isinstance(content, list):
        raise InvalidRequestError(f"{where}: must be a string or an array", param=where)
    parts = content
    return [_part(part, f"{where}[{j}]", text_only) for j, part in enumerate(parts)]


def _part(value: Any, where: str, text_only: bool) -> Json:
    """A content part as a block: text, an image (URL or base64 data URL) or a PDF; with
    the ``cache_control`` the client put on it."""
    part = object_at(value, where)
    kind = part.get("type")
    if kind == "text" or (kind == "refusal" and not text_only):
        key = ".text" if kind == "text" else ".refusal"
        block: Json = {"type": "text", "text": str_at(part.get(kind), where, key)}
    elif kind == "image_url" and not text_only:
        image = part.get("image_url")
        url = image if isinstance(image, str) else object_at(image, where).get("url")
        block = {
            "type": "image",
            "source": _image_source(str_at(url, where, ".image_url.url"), where),
        }
    elif kind == "file" and not text_only:
        block = _document(object_at(part.get("file"), where, ".file"), where)
    else:
        raise refuse(f"{where}.type", _PROVIDER)
    cache_control = part.get("cache_control")
    if cache_control is not None:
        block["cache_control"] = cache_control
    return block


def _image_source(url: str, where: str) -> Json:
    if url.startswith(("https://", "http://")):
        return {"type": "url", "url": url}
    media_type, data = split_data_url(url, where, ".image_url.url")
    if media_type not in IMAGE_TYPES:
        raise refuse(where + ".image_url.url", _PROVIDER)
    return {"type": "base64", "media_type": media_type, "data": data}


def _document(file: Json, where: str) -> Json:
    """A ``file`` part holding a PDF as a data URL; a ``file_id`` lives at OpenAI only."""
    file_data = file.get("file_data")
    if file_data is None:
        raise refuse(where + ".file.file_id", _PROVIDER)
    url = str_at(file_data, where, ".file.file_data")
    media_type, data = split_data_url(url, where, ".file.file_data")
    if media_type != "application/pdf":
        raise refuse(where + ".file.file_data", _PROVIDER)
    return {
        "type": "document",
        "source": {"type": "base64", "media_type": media_type, "data": data},
    }


def _assistant(message: Json, where: str) -> str | list[Json]:
    """Thinking blocks (their signatures kept), then text, then ``tool_use`` blocks. A
    ``reasoning_content`` without its signed blocks came from another provider: Anthropic
    would refuse it unsigned, so it is not sent."""
    content = message.get("content")
    thinking = message.get("thinking_blocks")
    calls = message.get("tool_calls")
    if isinstance(content, str) and not thinking and not calls and not message.get("refusal"):
        return content
    blocks: list[Json] = []
    if thinking:
        for j, block in enumerate(list_at(thinking, where, ".thinking_blocks")):
            at = f"{where}.thinking_blocks[{j}]"
            if object_at(block, at).get("type") not in ("thinking", "redacted_thinking"):
                raise InvalidRequestError(f"{at}.type: unknown type", param=f"{at}.type")
            blocks.append(block)
    if content is not None:
        blocks.extend(
            b for b in _blocks(_content(content, where, text_only=False)) if b.get("text") != ""
        )
    refusal = message.get("refusal")
    if refusal:
        blocks.append({"type": "text", "text": str_at(refusal, where, ".refusal")})
    if calls:
        for j, call in enumerate(list_at(calls, where, ".tool_calls")):
            at = f"{where}.tool_calls[{j}]"
            blocks.append(_tool_use(object_at(call, at), at))
    return blocks


def _tool_use(call: Json, where: str) -> Json:
    if call.get("type", "function") != "function":
        raise refuse(f"{where}.type", _PROVIDER)
    function = object_at(call.get("function"), where, ".function")
    arguments = str_at(function.get("arguments", ""), where, ".function.arguments")
    try:
        tool_input = json.loads(arguments) if arguments.strip() else {}
    except ValueError:
        tool_input = None
    if not isinstance(tool_input, dict):
        raise InvalidRequestError(
            f"{where}.function.arguments: must be a JSON object",
            param=f"{where}.function.arguments",
        )
    return {
        "type": "tool_use",
        "id": str_at(call.get("id"), where, ".id"),
        "name": str_at(function.get("name"), where, ".function.name"),
        "input": tool_input,
    }


def _tool_result(message: Json, where: str) -> Json:
    content = message.get("content")
    return {
        "type": "tool_result",
        "tool_use_id": str_at(message.get("tool_call_id"), where, ".tool_call_id"),
        "content": "" if content is None else _content(content, where, text_only=False),
    }
