"""A Responses client's request as a Chat Completions request, for a provider without the
Responses API (a Chat-only OpenAI-compatible server; Anthropic, after Chat to Messages).

Translation is stateless: what needs the provider to keep or look something up
(``previous_response_id``, ``store: true``, ``conversation``, stored prompts, background
runs) and built-in tools (web search, file search, computer use, ...) are refused with a
400 naming the parameter, before anything is sent. So is every parameter not known here:
a new Responses feature is refused, never dropped in silence. ``metadata`` is not sent:
it only tags the stored response, and the Response echoes it back.
"""

from __future__ import annotations

from typing import Any

from llm_proxy_mw.errors import InvalidRequestError, UntranslatableError
from llm_proxy_mw.translate._codec import Json, Target
from llm_proxy_mw.translate._responses_input import (
    chat_messages,
    json_list,
    json_object,
    json_text,
)

__all__ = ["responses_request_to_chat"]

#: Parameters Chat Completions has under the same name and meaning: passed on as sent.
_SAME = (
    "temperature",
    "top_p",
    "user",
    "safety_identifier",
    "prompt_cache_key",
    "prompt_cache_retention",
    "service_tier",
)

#: Parameters translated below, or that change nothing here (``stream_options`` only
#: obfuscates stream events; ``metadata`` is echoed in the Response; ``client_metadata``,
#: which Codex sends, only labels the request).
_KNOWN = frozenset(
    (
        *_SAME,
        "model",
        "input",
        "instructions",
        "max_output_tokens",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "text",
        "reasoning",
        "stream",
        "stream_options",
        "include",
        "truncation",
        "metadata",
        "client_metadata",
    )
)

#: Why a parameter that needs the provider to keep state is refused, and what to send instead.
_STATEFUL = {
    "previous_response_id": ("keep earlier responses", "the whole conversation in `input`"),
    "conversation": ("keep the conversation", "the whole conversation in `input`"),
    "store": ("store the response", "`store: false`"),
    "background": ("keep running the response", "the request in the foreground"),
    "prompt": ("keep the prompt", "its text as `instructions`"),
}

#: ``include`` entries a stateless translation gives (encrypted reasoning is always given
#: when the provider signed its thinking); the others need built-in tools or logprobs.
_INCLUDABLE = frozenset(("reasoning.encrypted_content", "message.input_image.image_url"))

_TOOL_CHOICES = ("none", "auto", "required")


def responses_request_to_chat(body: Json, target: Target) -> Json:
    """The Chat Completions body (with the hub extensions: ``reasoning_content``,
    ``thinking_blocks``, ``cache_control``) for a Responses client's ``body``, asking for
    ``target.model``. Raises ``UntranslatableError`` naming what cannot be translated."""
    _refuse_untranslatable(body)
    if body.get("input") is None:
        raise InvalidRequestError(
            "`input` is required: this model's provider keeps no state", param="input"
        )
    chat: Json = {
        "model": target.model,
        "messages": chat_messages(body["input"], body.get("instructions")),
    }
    for key in _SAME:
        if body.get(key) is not None:
            chat[key] = body[key]
    if body.get("max_output_tokens") is not None:
        chat["max_completion_tokens"] = body["max_output_tokens"]
    tools = [] if body.get("tools") is None else json_list(body["tools"], "tools")
    choice = None if body.get("tool_choice") is None else _tool_choice(body["tool_choice"])
    if tools:  # Chat refuses an empty list, and tool options without tools
        chat["tools"] = [_tool(raw, f"tools[{i}]") for i, raw in enumerate(tools)]
        if choice is not None:
            chat["tool_choice"] = choice
        if body.get("parallel_tool_calls") is not None:
            chat["parallel_tool_calls"] = body["parallel_tool_calls"]
    if body.get("text") is not None:
        _text_options(json_object(body["text"], "text"), chat)
    if body.get("reasoning") is not None:
        effort = json_object(body["reasoning"], "reasoning").get("effort")
        if effort is not None:
            chat["reasoning_effort"] = effort
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequestError("`stream` must be a boolean", param="stream")
    if stream:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return chat


def _refuse_untranslatable(body: Json) -> None:
    for key, value in body.items():
        if value is None or value is False or key in _KNOWN:
            continue
        if key in _STATEFUL:
            needs, instead = _STATEFUL[key]
            raise UntranslatableError(
                f"`{key}` needs the provider to {needs}, but this model's provider is reached"
                f" through Chat Completions, which keeps no state: send {instead}",
                param=key,
            )
        raise UntranslatableError(
            f"`{key}` has no equivalent in Chat Completions, through which this model's"
            " provider is reached",
            param=key,
        )
    for i, entry in enumerate(json_list(body.get("include") or [], "include")):
        if json_text(entry, f"include[{i}]") not in _INCLUDABLE:
            raise UntranslatableError(
                f"`include` {entry!r} cannot be given by this model's provider",
                param=f"include[{i}]",
            )
    if body.get("truncation") not in (None, "disabled"):
        raise UntranslatableError(
            "`truncation` other than 'disabled' has no equivalent in Chat Completions",
            param="truncation",
        )


def _function(raw: Any, where: str) -> Json:
    """``raw`` as a function tool, or a choice of one; every other kind runs at OpenAI."""
    tool = json_object(raw, where)
    if tool.get("type") != "function":
        raise UntranslatableError(
            f"`{where}` is a tool of type {tool.get('type')!r}, which only OpenAI's Responses"
            " API runs; function tools are translated",
            param=f"{where}.type",
        )
    return tool


def _tool(raw: Any, where: str) -> Json:
    """A function tool in Chat's nested shape."""
    tool = _function(raw, where)
    if tool.get("defer_loading"):
        raise UntranslatableError(
            f"`{where}.defer_loading` needs OpenAI's tool search", param=f"{where}.defer_loading"
        )
    function: Json = {"name": json_text(tool.get("name"), f"{where}.name")}
    for key in ("description", "parameters", "strict"):
        if tool.get(key) is not None:
            function[key] = tool[key]
    return {"type": "function", "function": function}


def _tool_choice(choice: Any) -> Any:
    if choice in _TOOL_CHOICES:
        return choice
    if json_object(choice, "tool_choice").get("type") != "allowed_tools":
        return {"type": "function", "function": {"name": _function_name(choice, "tool_choice")}}
    mode = choice.get("mode")
    if mode not in ("auto", "required"):
        raise InvalidRequestError(
            "`tool_choice.mode` must be 'auto' or 'required'", param="tool_choice.mode"
        )
    tools = json_list(choice.get("tools"), "tool_choice.tools")
    names = [_function_name(t, f"tool_choice.tools[{i}]") for i, t in enumerate(tools)]
    allowed = [{"type": "function", "function": {"name": name}} for name in names]
    return {"type": "allowed_tools", "allowed_tools": {"mode": mode, "tools": allowed}}


def _function_name(raw: Any, where: str) -> str:
    return json_text(_function(raw, where).get("name"), f"{where}.name")


def _text_options(text: Json, chat: Json) -> None:
    """``text.format`` as ``response_format``, ``text.verbosity`` as ``verbosity``."""
    if text.get("verbosity") is not None:
        chat["verbosity"] = text["verbosity"]
    if text.get("format") is None:
        return
    form = json_object(text["format"], "text.format")
    kind = form.get("type")
    if kind == "json_schema":
        schema: Json = {"name": json_text(form.get("name"), "text.format.name")}
        for key in ("description", "schema", "strict"):
            if form.get(key) is not None:
                schema[key] = form[key]
        chat["response_format"] = {"type": "json_schema", "json_schema": schema}
    elif kind == "json_object":
        chat["response_format"] = {"type": "json_object"}
    elif kind != "text":
        raise InvalidRequestError(
            "`text.format.type` must be text, json_schema or json_object",
            param="text.format.type",
        )
