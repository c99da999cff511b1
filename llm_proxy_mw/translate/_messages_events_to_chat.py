"""A Messages stream served to a Chat Completions client: Anthropic events in, chunks out.

Each event becomes at most one chunk, at once: ``message_start`` the role chunk, a text,
thinking or tool-input delta a delta chunk, ``message_delta`` the finish chunk, and
``message_stop`` the usage chunk (only when the client asked with
``stream_options.include_usage``). Thinking goes out as the hub's extensions: its text as
``delta.reasoning_content`` and, with its signature, as pieces of ``delta.thinking_blocks``
that carry an ``index`` (the block's place among the message's thinking blocks), so that
OpenAI's own delta accumulation merges the pieces into whole blocks as it does tool calls.
The text, thinking and tool-input deltas also take a fast path (``feed_raw``): recognised in
their raw bytes, their text copied into a chunk pre-encoded for the stream.
"""

from __future__ import annotations

import json
import time
from typing import Any

from llm_proxy_mw.errors import ProxyError, UpstreamProtocolError
from llm_proxy_mw.translate._codec import Json, TokenUsage
from llm_proxy_mw.translate._mappings import STOP_TO_FINISH, chat_usage, usage_from_anthropic
from llm_proxy_mw.translate._raw_deltas import (
    ARGUMENTS,
    PING,
    REASONING,
    TEXT,
    AnthropicDeltaLayout,
    RawDelta,
    block_stop_index,
)
from llm_proxy_mw.wire import WireFormat, error_json

__all__ = ["MessagesEventsToChat"]

#: What a content block is to the Chat client: text, a thinking block or a tool call (with
#: its index among the message's thinking blocks or tool calls).
_TEXT, _THINKING, _TOOL = 0, 1, 2
#: The block each kind of raw delta belongs in.
_BLOCK_OF = {TEXT: _TEXT, REASONING: _THINKING, ARGUMENTS: _TOOL}
_CHUNK_END = b',"finish_reason":null}]}\n\n'
_TEXT_END = b"}" + _CHUNK_END


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _dict(value: Any) -> Json:
    return value if isinstance(value, dict) else {}


class MessagesEventsToChat:
    """``StreamTranslator`` from Anthropic's stream events to ``chat.completion.chunk``
    objects, for the client's Chat Completions ``request``."""

    __slots__ = (
        "usage",
        "_include_usage",
        "_model",
        "_id",
        "_created",
        "_blocks",
        "_thinking_count",
        "_tool_count",
        "_argless_tool",
        "_anthropic_usage",
        "_finished",
        "_done",
        "_head",
        "_text_head",
        "_layout",
    )

    def __init__(self, request: Json) -> None:
        self.usage: TokenUsage | None = None
        self._include_usage = _dict(request.get("stream_options")).get("include_usage") is True
        self._model = _str(request.get("model"))
        self._id = ""
        self._created = 0
        self._blocks: dict[int, tuple[int, int]] = {}  # Anthropic index -> (kind, index)
        self._thinking_count = 0
        self._tool_count = 0
        self._argless_tool = -1  # the Anthropic index of a tool block without arguments yet
        self._anthropic_usage: Json = {}
        self._finished = False  # the finish chunk went out
        self._done = False  # the last chunk went out, or the error
        self._head = b""  # a framed chunk up to its delta, once the id is known
        self._text_head = b""  # and up to a text delta's text
        self._layout = AnthropicDeltaLayout()

    def feed(self, event: Json) -> list[Json]:
        event_type = event.get("type")
        if self._done or (not self._id and event_type not in ("message_start", "error")):
            return []
        if event_type == "content_block_delta":
            return self._delta(event)
        if event_type == "content_block_start":
            return self._block_start(event)
        if event_type == "message_start":
            return self._start(_dict(event.get("message")))
        if event_type == "message_delta":
            return self._message_delta(event)
        if event_type == "content_block_stop":
            return self._block_stop(event)
        if event_type == "message_stop":
            return self._stop()
        if event_type == "error":
            return self._error(_dict(event.get("error")))
        return []  # ping, an event type added later

    def feed_raw(self, data: bytes) -> bytes | None:
        """The framed chunk for a text, thinking or tool-input delta event's raw ``data``
        (empty when the slow path sends nothing); None for any other event."""
        delta = self.hub_delta(data)
        if delta is None:
            return b"" if self.quiet(data) else None
        kind, index, literal, text = delta
        if not text:
            return b""
        if kind == TEXT:
            return self._text_head + literal + _TEXT_END
        number = str(index).encode()
        if kind == ARGUMENTS:
            call = b'{"tool_calls":[{"index":' + number + b',"function":{"arguments":'
            return self._head + call + literal + b"}}]}" + _CHUNK_END
        block = b',"thinking_blocks":[{"index":' + number + b',"type":"thinking","thinking":'
        thinking = b'{"reasoning_content":' + literal + block + literal + b"}]}"
        return self._head + thinking + _CHUNK_END

    def hub_delta(self, data: bytes) -> RawDelta | None:
        """The delta a raw delta event is to the Chat client, its index the tool call's or
        the thinking block's; the state changes as ``feed`` would change it."""
        if self._done or not self._id:
            return None
        delta = self._layout.delta(data)
        if delta is None:
            return None
        kind, index, literal, text = delta
        block = self._blocks.get(index)
        if block is None or block[0] != _BLOCK_OF[kind]:
            return None
        if kind == ARGUMENTS and text:
            self._argless_tool = -1
        return kind, block[1], literal, text

    def quiet(self, data: bytes) -> bool:
        """Whether ``feed`` would send nothing for a raw event and change nothing: a ping,
        a block's stop (but that of a tool call that took no input)."""
        if data == PING:
            return True
        index = block_stop_index(data)
        return index is not None and index != self._argless_tool

    def finish(self) -> list[Json]:
        if self._done:
            return []
        return self.fail(UpstreamProtocolError("The provider's stream ended before message_stop."))

    def fail(self, error: ProxyError) -> list[Json]:
        if self._done:
            return []
        self._done = True
        return [error_json(error, WireFormat.OPENAI)]

    def _error(self, error: Json) -> list[Json]:
        """The provider's error event as OpenAI's error chunk, its type kept."""
        self._done = True
        error_type = _str(error.get("type")) or "api_error"
        message = _str(error.get("message")) or "The provider's stream failed."
        body = {"message": message, "type": error_type, "param": None, "code": error_type}
        return [{"error": body}]

    def _chunk(self, delta: Json, finish_reason: str | None = None) -> Json:
        return {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }

    def _usage_chunk(self) -> Json:
        return {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "choices": [],
            "usage": chat_usage(self.usage or TokenUsage()),
        }

    def _start(self, message: Json) -> list[Json]:
        if self._id:
            return []
        self._id = _str(message.get("id")) or "msg_unknown"
        self._model = _str(message.get("model")) or self._model
        self._created = int(time.time())
        self._count_usage(message.get("usage"))
        head = b'data: {"id":%b,"object":"chat.completion.chunk","created":%d,"model":%b,'
        ids = (json.dumps(self._id).encode(), self._created, json.dumps(self._model).encode())
        self._head = head % ids + b'"choices":[{"index":0,"delta":'
        self._text_head = self._head + b'{"content":'
        return [self._chunk({"role": "assistant"})]  # content stays null for a tool call

    def _count_usage(self, usage: Any) -> None:
        # message_delta's counts are cumulative and may leave out what did not change.
        if isinstance(usage, dict):
            self._anthropic_usage.update((k, v) for k, v in usage.items() if v is not None)
            self.usage = usage_from_anthropic(self._anthropic_usage)

    def _block_start(self, event: Json) -> list[Json]:
        index = event.get("index")
        block = _dict(event.get("content_block"))
        block_type = block.get("type")
        if not isinstance(index, int) or index in self._blocks:
            return []
        if block_type == "text":
            self._blocks[index] = (_TEXT, 0)
            text = _str(block.get("text"))
            return [self._chunk({"content": text})] if text else []
        if block_type == "tool_use":
            tool = self._tool_count
            self._tool_count += 1
            self._blocks[index] = (_TOOL, tool)
            self._argless_tool = index
            call = {"name": _str(block.get("name")), "arguments": ""}
            return [self._chunk({"tool_calls": [_tool_call(tool, _str(block.get("id")), call)]})]
        if block_type in ("thinking", "redacted_thinking"):
            thinking = self._thinking_count
            self._thinking_count += 1
            self._blocks[index] = (_THINKING, thinking)
            if block_type == "redacted_thinking":
                piece = {"index": thinking, "type": block_type, "data": _str(block.get("data"))}
                return [self._chunk({"thinking_blocks": [piece]})]
            text, signature = _str(block.get("thinking")), _str(block.get("signature"))
            if text or signature:
                return [self._chunk(_thinking_delta(thinking, text, signature))]
        return []  # server tools and their results: no Chat Completions equivalent

    def _delta(self, event: Json) -> list[Json]:
        index = event.get("index")
        block = self._blocks.get(index) if isinstance(index, int) else None
        delta = event.get("delta")
        if block is None or not isinstance(delta, dict):
            return []
        kind, number = block
        delta_type = delta.get("type")
        if kind == _TEXT and delta_type == "text_delta":
            text = _str(delta.get("text"))
            return [self._chunk({"content": text})] if text else []
        if kind == _TOOL and delta_type == "input_json_delta":
            fragment = _str(delta.get("partial_json"))
            if fragment:
                self._argless_tool = -1
                call = _tool_call(number, None, {"arguments": fragment})
                return [self._chunk({"tool_calls": [call]})]
        elif kind == _THINKING and delta_type == "thinking_delta":
            text = _str(delta.get("thinking"))
            return [self._chunk(_thinking_delta(number, text, ""))] if text else []
        elif kind == _THINKING and delta_type == "signature_delta":
            signature = _str(delta.get("signature"))
            return [self._chunk(_thinking_delta(number, "", signature))] if signature else []
        return []  # citations, or a delta that does not fit its block

    def _block_stop(self, event: Json) -> list[Json]:
        """A tool call that took no input still gets arguments, ``{}``, as OpenAI's do."""
        index = event.get("index")
        if index != self._argless_tool or not isinstance(index, int):
            return []
        self._argless_tool = -1
        call = _tool_call(self._blocks[index][1], None, {"arguments": "{}"})
        return [self._chunk({"tool_calls": [call]})]

    def _stop(self) -> list[Json]:
        if not self._finished:
            return []  # no stop reason came: the stream closes as a failure
        self._done = True
        return [self._usage_chunk()] if self._include_usage else []

    def _message_delta(self, event: Json) -> list[Json]:
        self._count_usage(event.get("usage"))
        if self._finished:
            return []
        self._finished = True
        stop_reason = _str(_dict(event.get("delta")).get("stop_reason"))
        finish_reason = STOP_TO_FINISH.get(stop_reason, "stop")
        return [self._chunk({}, finish_reason)]


def _tool_call(index: int, id: str | None, function: Json) -> Json:
    if id is None:
        return {"index": index, "function": function}
    return {"index": index, "id": id, "type": "function", "function": function}


def _thinking_delta(index: int, text: str, signature: str) -> Json:
    piece: Json = {"index": index, "type": "thinking", "thinking": text}
    if signature:
        piece["signature"] = signature
        if not text:
            return {"thinking_blocks": [piece]}
    return {"reasoning_content": text, "thinking_blocks": [piece]}
