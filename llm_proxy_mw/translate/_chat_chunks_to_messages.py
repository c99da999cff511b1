"""A Chat Completions stream served to a Messages client: chunks in, Anthropic events out.

Anthropic's content blocks come one after another, each started, filled and stopped, while
a chunk's delta may carry reasoning, text and tool-call fragments at once: the open block is
stopped when a delta of another kind (or another tool call) starts the next one. A tool
call's id and name come with its first fragment, so its block starts there and each
argument fragment is an ``input_json_delta`` at once. The stop reason comes with the finish
chunk, the usage with the chunk after it (a translated stream always asks for it), so
``message_delta`` and ``message_stop`` go out with the usage chunk, or at the end of the
stream when the provider sent none. The input tokens are known only then, so
``message_delta``'s usage carries them (cumulative counts overwrite ``message_start``'s).
A text, reasoning or argument delta to the open block takes a fast path (``feed_raw``):
recognised in its raw bytes, its text copied into the event as it came.
"""

from __future__ import annotations

from typing import Any

from llm_proxy_mw.errors import ProxyError, UpstreamProtocolError
from llm_proxy_mw.translate._codec import Json, TokenUsage
from llm_proxy_mw.translate._mappings import FINISH_TO_STOP, anthropic_usage, usage_from_chat
from llm_proxy_mw.translate._raw_deltas import ARGUMENTS, TEXT, ChatChunkLayout
from llm_proxy_mw.wire import WireFormat, error_json

__all__ = ["ChatChunksToMessages"]

#: What the open content block is: nothing, text, thinking, a finished thinking block (its
#: signature came, so more reasoning starts a new block; or a redacted one) or a tool call.
_NONE, _TEXT, _THINKING, _SIGNED, _TOOL = range(5)
#: A raw delta's event, framed, up to its index; and what follows the index, by kind.
_DELTA_HEAD = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":'
_DELTA_TYPES = (
    b',"delta":{"type":"text_delta","text":',
    b',"delta":{"type":"thinking_delta","thinking":',
    b',"delta":{"type":"input_json_delta","partial_json":',
)

#: Anthropic's error types; an OpenAI error of another type is an ``api_error``.
_ANTHROPIC_ERROR_TYPES = frozenset(
    {
        "invalid_request_error",
        "authentication_error",
        "billing_error",
        "permission_error",
        "not_found_error",
        "rate_limit_error",
        "timeout_error",
        "api_error",
        "overloaded_error",
    }
)


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _dict(value: Any) -> Json:
    return value if isinstance(value, dict) else {}


class ChatChunksToMessages:
    """``StreamTranslator`` from ``chat.completion.chunk`` objects to Anthropic's stream
    events, for the client's Messages ``request``."""

    __slots__ = (
        "usage",
        "_model",
        "_started",
        "_open",
        "_index",
        "_tools",
        "_stop_reason",
        "_done",
        "_layout",
    )

    def __init__(self, request: Json) -> None:
        self.usage: TokenUsage | None = None
        self._model = _str(request.get("model"))
        self._started = False
        self._open = _NONE
        self._index = -1  # the Anthropic index of the open (or last) block
        self._tools: dict[int, tuple[int, str]] = {}  # call index -> its block's index, id
        self._stop_reason: str | None = None
        self._done = False
        self._layout = ChatChunkLayout()

    def feed(self, event: Json) -> list[Json]:
        if self._done:
            return []
        error = event.get("error")
        if error is not None:
            return self._error(_dict(error))
        choices = event.get("choices")
        if not isinstance(choices, list):
            return []
        out: list[Json] = []
        if not self._started:
            out.append(self._start(event))
        for choice in choices:
            if isinstance(choice, dict) and choice.get("index", 0) == 0:
                self._choice(choice, out)
        usage = event.get("usage")
        if isinstance(usage, dict):
            self.usage = usage_from_chat(usage)
            if self._stop_reason is not None:
                out.extend(self._end())
        return out

    def feed_raw(self, data: bytes) -> bytes | None:
        """The framed event for a chunk's raw ``data`` that only carries a delta to the open
        block (empty when the slow path sends nothing); None for any other chunk."""
        if self._done or not self._started or self._stop_reason is not None:
            return None
        delta = self._layout.delta(data)
        if delta is None:
            return None
        kind, index, literal, text = delta
        if kind == ARGUMENTS:
            known = self._tools.get(index)
            if known is None:
                return None
            # A fragment of a call whose block was stopped has nowhere to go, as in feed.
            if not text or self._open != _TOOL or known[0] != self._index:
                return b""
        elif not text:
            return b""
        elif self._open != (_TEXT if kind == TEXT else _THINKING):
            return None
        number = str(self._index).encode()
        return _DELTA_HEAD + number + _DELTA_TYPES[kind] + literal + b"}}\n\n"

    def finish(self) -> list[Json]:
        if self._done:
            return []
        if self._stop_reason is None:
            return self.fail(UpstreamProtocolError("The provider's stream ended unfinished."))
        return self._end()

    def fail(self, error: ProxyError) -> list[Json]:
        if self._done:
            return []
        self._done = True
        return [error_json(error, WireFormat.ANTHROPIC)]

    def _start(self, chunk: Json) -> Json:
        self._started = True
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.usage = usage_from_chat(usage)
        # Chat Completions counts only at the end (Anthropic requires numbers here):
        # message_delta's cumulative counts replace these.
        start_usage = {"input_tokens": 0, "output_tokens": 0}
        return {
            "type": "message_start",
            "message": {
                "id": _str(chunk.get("id")) or "msg_unknown",
                "type": "message",
                "role": "assistant",
                "model": _str(chunk.get("model")) or self._model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": start_usage if self.usage is None else anthropic_usage(self.usage),
            },
        }

    def _choice(self, choice: Json, out: list[Json]) -> None:
        delta = _dict(choice.get("delta"))
        reasoning = _str(delta.get("reasoning_content")) or _str(delta.get("reasoning"))
        if reasoning:
            self._thinking(reasoning, out)
        blocks = delta.get("thinking_blocks")
        if isinstance(blocks, list):
            for block in blocks:
                self._thinking_block(_dict(block), reasoning, out)
        text = _str(delta.get("content")) or _str(delta.get("refusal"))
        if text:
            if self._open != _TEXT:
                self._open_block(_TEXT, {"type": "text", "text": ""}, out)
            out.append(self._delta({"type": "text_delta", "text": text}))
        calls = delta.get("tool_calls")
        if isinstance(calls, list):
            for call in calls:
                self._tool_call(_dict(call), out)
        finish_reason = choice.get("finish_reason")
        if isinstance(finish_reason, str) and self._stop_reason is None:
            self._close(out)
            self._stop_reason = FINISH_TO_STOP.get(finish_reason, "end_turn")

    def _thinking(self, text: str, out: list[Json]) -> None:
        self._open_thinking(out)
        out.append(self._delta({"type": "thinking_delta", "thinking": text}))

    def _thinking_block(self, block: Json, reasoning: str, out: list[Json]) -> None:
        """A piece of a hub ``thinking_blocks`` entry: its text unless ``reasoning_content``
        carried it already, its signature (which ends the block), or a redacted block."""
        if block.get("type") == "redacted_thinking":
            redacted = {"type": "redacted_thinking", "data": _str(block.get("data"))}
            self._open_block(_SIGNED, redacted, out)
            self._close(out)
            return
        text = _str(block.get("thinking"))
        if text and not reasoning:
            self._thinking(text, out)
        signature = _str(block.get("signature"))
        if signature:
            self._open_thinking(out)
            out.append(self._delta({"type": "signature_delta", "signature": signature}))
            self._open = _SIGNED

    def _open_thinking(self, out: list[Json]) -> None:
        if self._open != _THINKING:
            self._open_block(_THINKING, {"type": "thinking", "thinking": "", "signature": ""}, out)

    def _tool_call(self, call: Json, out: list[Json]) -> None:
        number = call.get("index", 0)
        if not isinstance(number, int):
            return
        function = _dict(call.get("function"))
        call_id = _str(call.get("id"))
        known = self._tools.get(number)
        # Some providers give every call index 0: a new id is a new call.
        if known is None or (call_id and call_id != known[1]):
            call_id = call_id or f"call_{self._index + 1}"
            block = {
                "type": "tool_use",
                "id": call_id,
                "name": _str(function.get("name")),
                "input": {},
            }
            self._open_block(_TOOL, block, out)
            known = self._tools[number] = (self._index, call_id)
        fragment = _str(function.get("arguments"))
        # A fragment of a call whose block was stopped (interleaved calls) has nowhere to go.
        if fragment and self._open == _TOOL and known[0] == self._index:
            out.append(self._delta({"type": "input_json_delta", "partial_json": fragment}))

    def _open_block(self, kind: int, block: Json, out: list[Json]) -> None:
        self._close(out)
        self._index += 1
        self._open = kind
        out.append({"type": "content_block_start", "index": self._index, "content_block": block})

    def _close(self, out: list[Json]) -> None:
        if self._open != _NONE:
            self._open = _NONE
            out.append({"type": "content_block_stop", "index": self._index})

    def _delta(self, delta: Json) -> Json:
        return {"type": "content_block_delta", "index": self._index, "delta": delta}

    def _end(self) -> list[Json]:
        self._done = True
        out: list[Json] = []
        self._close(out)  # a delta after the finish_reason opened one
        # Without the provider's usage, no input count rather than a zero that lies.
        usage = {"output_tokens": 0} if self.usage is None else anthropic_usage(self.usage)
        delta = {"stop_reason": self._stop_reason, "stop_sequence": None}
        out.append({"type": "message_delta", "delta": delta, "usage": usage})
        out.append({"type": "message_stop"})
        return out

    def _error(self, error: Json) -> list[Json]:
        self._done = True
        error_type = _str(error.get("type"))
        return [
            {
                "type": "error",
                "error": {
                    "type": error_type if error_type in _ANTHROPIC_ERROR_TYPES else "api_error",
                    "message": _str(error.get("message")) or "The provider's stream failed.",
                },
            }
        ]
