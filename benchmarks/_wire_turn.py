"""A scripted assistant turn: what the fake provider answers, whatever the wire format.

A ``Turn`` holds what an agent loop reads from a model (thinking with its signature, text, a
refusal, tool calls, why it stopped, token usage); ``_wire_chat``, ``_wire_messages`` and
``_wire_responses`` render it as each real API sends it, JSON or SSE.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Reply", "ToolCall", "Turn", "TurnUsage", "count_tokens", "dumps", "pieces", "sse"]

#: A JSON body (``bytes``) or the events of a stream (``list[bytes]``).
Reply = bytes | list[bytes]

#: Anthropic's ``stop_reason`` as a Chat Completions ``finish_reason``, and back.
_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "pause_turn": "stop"}
_FINISH |= {"max_tokens": "length", "tool_use": "tool_calls", "refusal": "content_filter"}
_STOP = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}
_STOP["content_filter"] = "refusal"


@dataclass(frozen=True)
class ToolCall:
    """One function call; ``arguments`` is the JSON string, streamed in several fragments.
    Without an ``id``, each answer makes one up in its API's style (``toolu_``, ``call_``)."""

    name: str
    arguments: str = "{}"
    id: str | None = None

    def call_id(self, prefix: str) -> str:
        return self.id if self.id is not None else f"{prefix}{uuid.uuid4().hex[:24]}"

    @property
    def input(self) -> Any:
        """The arguments parsed, as Anthropic's ``tool_use.input`` carries them."""
        return json.loads(self.arguments)


@dataclass(frozen=True)
class TurnUsage:
    """Token counts as Anthropic reports them: ``input`` excludes the cache reads and writes
    (OpenAI's ``prompt_tokens`` is their sum, with ``cached_tokens = cache_read``)."""

    input: int
    output: int
    cache_read: int = 0
    cache_write: int = 0

    @property
    def prompt(self) -> int:
        return self.input + self.cache_read + self.cache_write


@dataclass(frozen=True)
class Turn:
    """One scripted answer. ``stop`` takes Anthropic's ``stop_reason`` or OpenAI's
    ``finish_reason`` (each API gets its own word); by default ``tool_use`` when there are
    tool calls, ``refusal`` (Chat: ``stop``) with a refusal, else ``end_turn``. Without
    ``usage``, tokens are counted from the request and the answer's words."""

    text: str | None = None
    thinking: str | None = None
    signature: str = "fake-signature"
    tool_calls: Sequence[ToolCall] = ()
    refusal: str | None = None
    stop: str | None = None
    stop_sequence: str | None = None
    usage: TurnUsage | None = None

    def stop_reason(self) -> str:
        """Anthropic's ``stop_reason``."""
        if self.stop is not None:
            return _STOP.get(self.stop, self.stop)
        if self.tool_calls:
            return "tool_use"
        return "refusal" if self.refusal is not None else "end_turn"

    def finish_reason(self) -> str:
        """Chat Completions' ``finish_reason``."""
        if self.stop is not None:
            return _FINISH.get(self.stop, self.stop)
        return "tool_calls" if self.tool_calls else "stop"

    def tokens(self, prompt_tokens: int) -> TurnUsage:
        if self.usage is not None:
            return self.usage
        said = [self.thinking, self.text, self.refusal, *(c.arguments for c in self.tool_calls)]
        return TurnUsage(prompt_tokens, count_tokens(" ".join(s for s in said if s)))


def count_tokens(text: str) -> int:
    """The fake's tokenizer: one token a word, at least one."""
    return max(1, len(text.split()))


def pieces(text: str, n: int) -> list[str]:
    """``text`` in ``n`` fragments (fewer when it is short); ``[""]`` for no text."""
    size = max(1, -(-len(text) // n))
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def dumps(data: Any) -> bytes:
    return json.dumps(data).encode()


def sse(data: Any, event: str | None = None) -> bytes:
    """One server-sent event; ``data`` as compact JSON."""
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data, separators=(',', ':'))}\n\n".encode()
