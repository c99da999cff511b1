"""A Responses request's ``input`` items as Chat Completions messages (the hub format).

Chat has one assistant message per turn where Responses has an item per output: the
reasoning items, the assistant message and the function calls of one turn become one
assistant message (``thinking_blocks`` and ``reasoning_content``, ``content``,
``tool_calls``), so that Anthropic's alternating turns come out right after the next
translation. A reasoning item is a thinking block signed by its ``encrypted_content``, or a
redacted thinking block when that starts with ``REDACTED`` (its ``data`` follows), which is
how ``_responses_response.py`` and the stream write them. Items that only OpenAI can run or
resolve (built-in tool calls, item references) are refused, naming the item.
"""

from __future__ import annotations

from typing import Any

from llm_proxy_mw.errors import InvalidRequestError, UntranslatableError
from llm_proxy_mw.translate._codec import Json
from llm_proxy_mw.translate._responses_envelope import REDACTED

__all__ = ["chat_messages", "json_list", "json_object", "json_text"]

#: Caching hints on a content part, which Chat (and Anthropic, after the hub) understand.
_CACHE_KEYS = ("cache_control", "prompt_cache_breakpoint")


def json_object(value: Any, where: str) -> Json:
    if not isinstance(value, dict):
        raise InvalidRequestError(f"`{where}` must be an object", param=where)
    return value


def json_list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise InvalidRequestError(f"`{where}` must be an array", param=where)
    return value


def json_text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise InvalidRequestError(f"`{where}` must be a string", param=where)
    return value


def chat_messages(input: Any, instructions: Any) -> list[Json]:
    """The Chat messages for a Responses ``input`` (a string or items) and ``instructions``
    (a system message first)."""
    messages: list[Json] = []
    if instructions is not None:
        messages.append({"role": "system", "content": json_text(instructions, "instructions")})
    if isinstance(input, str):
        messages.append({"role": "user", "content": input})
        return messages
    assistant: Json | None = None  # the assistant turn being gathered
    for i, raw in enumerate(json_list(input, "input")):
        where = f"input[{i}]"
        item = json_object(raw, where)
        kind = item.get("type") or "message"
        if kind == "function_call":
            if assistant is None:
                assistant = {"role": "assistant"}
                messages.append(assistant)
            assistant.setdefault("tool_calls", []).append(_tool_call(item, where))
        elif kind == "reasoning" or (kind == "message" and item.get("role") == "assistant"):
            if assistant is None or "content" in assistant or "tool_calls" in assistant:
                assistant = {"role": "assistant"}
                messages.append(assistant)
            if kind == "reasoning":
                _add_reasoning(assistant, item, where)
            else:
                _set_assistant_content(assistant, item, where)
        else:
            assistant = None
            messages.append(_message(item, kind, where))
    return messages


def _tool_call(item: Json, where: str) -> Json:
    return {
        "id": json_text(item.get("call_id"), f"{where}.call_id"),
        "type": "function",
        "function": {
            "name": json_text(item.get("name"), f"{where}.name"),
            "arguments": json_text(item.get("arguments"), f"{where}.arguments"),
        },
    }


def _texts(parts: Any, kind: str, where: str) -> list[str]:
    texts = []
    for j, raw in enumerate(json_list(parts, where)):
        part = json_object(raw, f"{where}[{j}]")
        if part.get("type") == kind:
            texts.append(json_text(part.get("text"), f"{where}[{j}].text"))
    return texts


def _add_reasoning(assistant: Json, item: Json, where: str) -> None:
    texts = _texts(item.get("summary", []), "summary_text", f"{where}.summary")
    if not texts and item.get("content") is not None:
        texts = _texts(item["content"], "reasoning_text", f"{where}.content")
    text = "\n\n".join(texts)
    signature = item.get("encrypted_content")
    if text:
        previous = assistant.get("reasoning_content")
        assistant["reasoning_content"] = f"{previous}\n\n{text}" if previous else text
    if signature is None:
        return
    signature = json_text(signature, f"{where}.encrypted_content")
    block = (
        {"type": "redacted_thinking", "data": signature.removeprefix(REDACTED)}
        if signature.startswith(REDACTED)
        else {"type": "thinking", "thinking": text, "signature": signature}
    )
    assistant.setdefault("thinking_blocks", []).append(block)


def _set_assistant_content(assistant: Json, item: Json, where: str) -> None:
    """The text a Chat completion would have had: one string, and any refusal apart."""
    content = item.get("content")
    if isinstance(content, str):
        assistant["content"] = content
        return
    texts, refusals = [], []
    for j, raw in enumerate(json_list(content, f"{where}.content")):
        at = f"{where}.content[{j}]"
        part = json_object(raw, at)
        kind = part.get("type")
        if kind in ("output_text", "input_text"):
            texts.append(json_text(part.get("text"), f"{at}.text"))
        elif kind == "refusal":
            refusals.append(json_text(part.get("refusal"), f"{at}.refusal"))
        else:
            raise InvalidRequestError(f"`{at}.type` {kind!r} is no assistant content", param=at)
    assistant["content"] = "".join(texts)
    if refusals:
        assistant["refusal"] = "".join(refusals)


def _message(item: Json, kind: Any, where: str) -> Json:
    if kind == "function_call_output":
        return {
            "role": "tool",
            "tool_call_id": json_text(item.get("call_id"), f"{where}.call_id"),
            "content": _tool_output(item.get("output"), f"{where}.output"),
        }
    if kind == "item_reference":
        raise UntranslatableError(
            f"`{where}` refers to an item stored at OpenAI; this model's provider keeps no"
            " state: send the item itself",
            param=where,
        )
    if kind != "message":
        raise UntranslatableError(
            f"`{where}` is an item of type {kind!r}, which only OpenAI's Responses API handles",
            param=f"{where}.type",
        )
    role = item.get("role")
    if role not in ("user", "system", "developer"):
        raise InvalidRequestError(
            f"`{where}.role` must be user, assistant, system or developer", param=f"{where}.role"
        )
    # Chat-only servers (vLLM, Ollama, llama.cpp) know `system`; OpenAI treats both alike.
    chat_role = "user" if role == "user" else "system"
    content = item.get("content")
    if isinstance(content, str):
        return {"role": chat_role, "content": content}
    parts = json_list(content, f"{where}.content")
    return {
        "role": chat_role,
        "content": [_part(raw, f"{where}.content[{j}]", chat_role) for j, raw in enumerate(parts)],
    }


def _part(raw: Any, where: str, role: str) -> Json:
    part = json_object(raw, where)
    kind = part.get("type")
    if kind == "input_text":
        chat: Json = {"type": "text", "text": json_text(part.get("text"), f"{where}.text")}
    elif role == "system":
        raise UntranslatableError(
            f"`{where}`: Chat Completions takes only text in system messages", param=where
        )
    elif kind == "input_image":
        chat = {"type": "image_url", "image_url": _image_url(part, where)}
    elif kind == "input_file":
        chat = {"type": "file", "file": _file(part, where)}
    else:
        raise InvalidRequestError(f"`{where}.type` {kind!r} is no input content", param=where)
    for key in _CACHE_KEYS:
        if key in part:
            chat[key] = part[key]
    return chat


def _image_url(part: Json, where: str) -> Json:
    if part.get("image_url") is None:
        raise UntranslatableError(
            f"`{where}`: an image by `file_id` needs OpenAI's file store; send `image_url`"
            " (a URL or a base64 data URL)",
            param=f"{where}.file_id",
        )
    image = {"url": json_text(part["image_url"], f"{where}.image_url")}
    if part.get("detail") is not None:
        image["detail"] = part["detail"]
    return image


def _file(part: Json, where: str) -> Json:
    if part.get("file_url") is not None:
        raise UntranslatableError(
            f"`{where}.file_url` has no equivalent in Chat Completions: send `file_data`",
            param=f"{where}.file_url",
        )
    return {key: part[key] for key in ("file_data", "file_id", "filename") if part.get(key)}


def _tool_output(output: Any, where: str) -> str | list[Json]:
    if isinstance(output, str):
        return output
    parts = []
    for j, raw in enumerate(json_list(output, where)):
        part = json_object(raw, f"{where}[{j}]")
        if part.get("type") != "input_text":
            raise UntranslatableError(
                f"`{where}[{j}]`: Chat Completions takes only text in a tool's output",
                param=f"{where}[{j}]",
            )
        parts.append({"type": "text", "text": json_text(part.get("text"), f"{where}[{j}].text")})
    return parts
