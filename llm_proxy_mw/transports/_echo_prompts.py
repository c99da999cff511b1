"""What a request of each API asks the echo provider: its ``Prompt``.

Each reader takes the parsed body of its API's create request, reads only what the echo's
answer depends on (the conversation, the tools, the structured output's schema, the cap on
output tokens) and raises ``InvalidRequestError`` naming the parameter for a body of the
wrong shape, as the real API answers it.
"""

from __future__ import annotations

from typing import Any

from llm_proxy_mw.errors import InvalidRequestError
from llm_proxy_mw.transports._echo_answer import Prompt

__all__ = ["count", "field", "read_chat", "read_completion", "read_messages", "read_responses"]

_JSON_TYPES = {dict: "object", list: "array", str: "string", int: "integer", bool: "boolean"}


def count(text: str) -> int:
    return len(text.split())


def text_of(content: Any) -> str:
    """The text of a message's content: a string, or parts with ``text`` (any API's text
    parts), or Anthropic ``tool_result`` blocks whose ``content`` is either again."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    texts = []
    for part in content:
        if isinstance(part, dict):
            text = part.get("text")
            if isinstance(text, str):
                texts.append(text)
            elif part.get("type") == "tool_result":
                texts.append(text_of(part.get("content")))
    return " ".join(t for t in texts if t).strip()


def field(body: dict[str, Any], param: str, kind: type, default: Any = None) -> Any:
    """``body[param]`` when it has the JSON type ``kind``, ``default`` when absent; a 400
    naming the parameter otherwise, as the real APIs answer a body of the wrong shape."""
    value = body.get(param)
    if value is None:
        return default
    if not isinstance(value, kind) or isinstance(value, bool) is not (kind is bool):
        raise InvalidRequestError(f"'{param}' must be of type {_JSON_TYPES[kind]}.", param=param)
    return value


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


def read_responses(body: dict[str, Any]) -> Prompt:
    """A Responses request: ``instructions`` and ``input`` (a string, or message, function
    call and function call output items) make the prompt."""
    items = body.get("input")
    if isinstance(items, str):
        items = [{"role": "user", "content": items}]
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise InvalidRequestError(
            "'input' must be a string or an array of input items.", param="input"
        )
    texts = [_text_of_item(item) for item in items]
    prompt = Prompt(
        said="", prompt_tokens=count(text_of(body.get("instructions"))) + sum(map(count, texts))
    )
    if items and items[-1].get("type") == "function_call_output":
        prompt.said, prompt.tool_result = texts[-1], True
    else:
        prompt.said = next(
            (
                t
                for item, t in zip(reversed(items), reversed(texts), strict=True)
                if item.get("role") == "user"
            ),
            "",
        )
    prompt.tools = {
        tool["name"]: tool.get("parameters")
        for tool in field(body, "tools", list, [])
        if isinstance(tool, dict)
        and tool.get("type") == "function"
        and isinstance(tool.get("name"), str)
    }
    choice = body.get("tool_choice")
    if choice == "none":
        prompt.tool_choice = None
    elif isinstance(choice, dict) and choice.get("type") == "function":
        prompt.tool_choice = str(choice.get("name"))
    text_format = field(body, "text", dict, {}).get("format")
    if isinstance(text_format, dict) and text_format.get("type") == "json_schema":
        prompt.schema = text_format.get("schema", {})
    elif isinstance(text_format, dict) and text_format.get("type") == "json_object":
        prompt.schema = {"type": "object"}
    prompt.limit = body.get("max_output_tokens")
    return prompt


def _text_of_item(item: dict[str, Any]) -> str:
    if item.get("type") == "function_call_output":
        return text_of(item.get("output"))
    if item.get("type") == "function_call":
        return str(item.get("arguments", ""))
    return text_of(item.get("content"))
