"""What the echo provider answers, read from a request of any of the three APIs.

The answer is decided once, in API-neutral terms (a text or a tool call, the pieces a
stream sends, the token counts), then each API's module renders it in its own shape:

- with callable tools and a ``tool_choice`` other than none, it calls the named tool or
  the first, with arguments that satisfy the tool's schema (``_echo_schema``);
- when the conversation ends on a tool result, it answers with text echoing that result,
  so that an agent loop ends;
- otherwise it echoes the last user text, or, when structured output was asked for, a
  minimal JSON object satisfying the schema, as text.

A token is one streamed piece: a word of an echoed text, a fragment of JSON.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from llm_proxy_mw.errors import InvalidRequestError
from llm_proxy_mw.transports._echo_schema import minimal_value
from llm_proxy_mw.transports._echo_wire import dumps

__all__ = ["EchoAnswer", "Prompt", "ToolCall"]

#: Width of the fragments a streamed JSON text or tool arguments are split into.
_FRAGMENT = 8


@dataclass(slots=True)
class Prompt:
    """A request's meaning to the echo provider, whichever API it came in."""

    said: str  # the last user text, or the tool result the conversation ends on
    prompt_tokens: int
    tool_result: bool = False
    tools: dict[str, Any] | None = None  # callable tools' schemas by name, in order
    tool_choice: str | None = ""  # None: no tool; "": the first; else the tool's name
    schema: Any = None  # the structured output's JSON schema
    limit: Any = None  # the client's cap on output tokens


@dataclass(slots=True)
class ToolCall:
    name: str
    input: Any  # the arguments, as an object
    arguments: str  # the same, as JSON text


def _fragments(text: str) -> list[str]:
    return [text[i : i + _FRAGMENT] for i in range(0, len(text), _FRAGMENT)] or [""]


class EchoAnswer:
    """The deterministic answer to one request: ``text`` or a ``tool_call``, ``pieces``
    (what a stream sends, in order: words of the text, or fragments of the JSON), and usage.
    ``id`` is a hash of the request's bytes."""

    __slots__ = (
        "completion_tokens",
        "id",
        "include_usage",
        "model",
        "pieces",
        "prompt_tokens",
        "stream",
        "text",
        "tool_call",
        "truncated",
    )

    def __init__(self, body: dict[str, Any], raw: bytes, prompt: Prompt) -> None:
        model = body.get("model")
        self.model = model if isinstance(model, str) else "echo"
        self.id = hashlib.sha256(raw).hexdigest()[:24]
        self.stream = body.get("stream") is True
        options = body.get("stream_options")
        self.include_usage = isinstance(options, dict) and options.get("include_usage") is True
        self.prompt_tokens = prompt.prompt_tokens
        self.tool_call = _tool_call(prompt)
        self.truncated = False
        if self.tool_call is not None:
            self.text = ""
            self.pieces = _fragments(self.tool_call.arguments)
        elif prompt.schema is not None:
            self.text = dumps(minimal_value(prompt.schema, prompt.said)).decode()
            self.pieces = _fragments(self.text)
        else:
            words = f"echo: {prompt.said}".split()
            limit = prompt.limit
            self.truncated = isinstance(limit, int) and 0 < limit < len(words)
            if self.truncated:
                words = words[:limit]
            self.text = " ".join(words)
            self.pieces = [w if i == 0 else " " + w for i, w in enumerate(words)]
        self.completion_tokens = len(self.pieces)


def _tool_call(prompt: Prompt) -> ToolCall | None:
    if not prompt.tools or prompt.tool_choice is None or prompt.tool_result:
        return None
    name = prompt.tool_choice or next(iter(prompt.tools))
    if name not in prompt.tools:
        raise InvalidRequestError(
            f"'tool_choice' names the tool {name!r}, which is not in 'tools'.",
            param="tool_choice",
        )
    arguments = minimal_value(prompt.tools[name] or {"type": "object"}, prompt.said)
    return ToolCall(name, arguments, dumps(arguments).decode())
