"""A Responses client served by a Chat Completions stream, event by event.

Chat chunks (with the hub's ``delta.reasoning_content`` and ``delta.thinking_blocks``) in,
the Responses event grammar out: ``response.created`` and ``response.in_progress`` with the
first chunk, then each output item opened, grown and closed as the deltas arrive
(``_responses_items.py``), and ``response.completed`` (``response.incomplete`` for
``length`` and ``content_filter``) with the whole Response and its usage when the stream
ends. Chat's usage chunk comes after the one with the ``finish_reason``, so the items close
at the ``finish_reason`` and the Response completes at the stream's end.

Reasoning, text and tool calls each open their own item, in the order they come: a kind
that follows another closes it. Tool calls stay open until the ``finish_reason``, since a
provider may interleave parallel calls' arguments by ``index``; items close in output order.

Ids are deterministic from the provider's chunk ``id`` (``resp_<id>``; items
``rs_``/``msg_``/``fc_<id>_<output_index>``), so a retried translation names things the
same. A stream that fails (an ``{"error": ...}`` chunk, ``fail``) or ends without a
``finish_reason`` ends with ``response.failed``, never ``response.completed``. A delta to an
open item takes a fast path (``feed_raw``, ``feed_delta``): recognised in its raw bytes,
its text copied into the event as it came.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from llm_proxy_mw._usage import token_count
from llm_proxy_mw.errors import ProxyError
from llm_proxy_mw.translate._codec import Json, TokenUsage
from llm_proxy_mw.translate._mappings import responses_usage, usage_from_chat
from llm_proxy_mw.translate._raw_deltas import ARGUMENTS, TEXT, ChatChunkLayout, RawDelta
from llm_proxy_mw.translate._responses_envelope import REDACTED, ResponseStatus, response_object
from llm_proxy_mw.translate._responses_items import Call, Item, Message, Reasoning

__all__ = ["ChatChunksToResponses"]

#: A ``finish_reason`` that leaves the Response incomplete, and the reason it shows.
_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}
_UNFINISHED = "The provider's stream ended before its last event."


def _object(value: Any) -> Json:
    return value if isinstance(value, dict) else {}


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _error_code(*names: Any) -> str:
    """The Responses ``error.code`` (a closed set) for a provider's error type or code."""
    limited = any(isinstance(n, str) and "rate_limit" in n for n in names)
    return "rate_limit_exceeded" if limited else "server_error"


class ChatChunksToResponses:
    """A ``StreamTranslator`` from Chat Completions chunks to Responses events, for the
    client's Responses ``request`` (its parameters are echoed in the Response)."""

    __slots__ = (
        "usage",
        "_request",
        "_key",
        "_model",
        "_created",
        "_seq",
        "_items",
        "_open",
        "_reasoning",
        "_message",
        "_calls",
        "_finish",
        "_reasoning_tokens",
        "_ended",
        "_layout",
    )

    def __init__(self, request: Json) -> None:
        self.usage: TokenUsage | None = None
        self._request = request
        self._key: str | None = None  # the provider's id, once the first chunk came
        self._model = _text(request.get("model"))
        self._created = 0
        self._seq = 0
        self._items: list[Item] = []  # every item, in output order
        self._open: list[Item] = []  # the items not closed yet, in output order
        self._reasoning: Reasoning | None = None
        self._message: Message | None = None
        self._calls: dict[int, Call] = {}  # by the tool call's ``index``
        self._finish: str | None = None
        self._reasoning_tokens = 0
        self._ended = False
        self._layout = ChatChunkLayout()

    def feed(self, event: Json) -> list[Json]:
        if self._ended:
            return []
        out: list[Json] = []
        if self._key is None:
            self._start(event, out)
        error = event.get("error")
        if error is not None:
            e = _object(error)
            message = _text(e.get("message")) or "The provider failed mid-stream."
            self._fail(_error_code(e.get("type"), e.get("code")), message, out)
            return self._stamp(out)
        usage = event.get("usage")
        if isinstance(usage, dict):
            self.usage = usage_from_chat(usage)
            details = _object(usage.get("completion_tokens_details"))
            self._reasoning_tokens = token_count(details.get("reasoning_tokens"))
        choices = event.get("choices")
        if isinstance(choices, list) and self._finish is None:
            for choice in choices:
                if isinstance(choice, dict) and choice.get("index", 0) == 0:
                    self._choice(choice, out)
        return self._stamp(out)

    def feed_raw(self, data: bytes) -> bytes | None:
        """The framed event for a chunk's raw ``data`` that only carries a delta to an open
        item (empty when the slow path sends nothing); None for any other chunk."""
        delta = self._layout.delta(data)
        return None if delta is None else self.feed_delta(delta)

    def feed_delta(self, delta: RawDelta) -> bytes | None:
        """``feed_raw`` for a delta recognised already (a chained stream's hub delta)."""
        if self._ended or self._key is None or self._finish is not None:
            return None
        kind, index, literal, text = delta
        if not text and kind != ARGUMENTS:  # feed sends nothing for it
            return b""
        item: Item | None = self._calls.get(index)
        if kind == TEXT:
            item = self._message
            if self._reasoning is not None or item is None or item.kind != "output_text":
                return None
        elif kind != ARGUMENTS:
            item = self._reasoning
            if item is None or item.signature is not None or not item.pieces:
                return None
        if item is None:
            return None  # the call's first delta: it opens an item
        if not text:
            return b""
        seq = self._seq
        self._seq += 1
        return item.add_raw(literal, text) + str(seq).encode() + b"}\n\n"

    def finish(self) -> list[Json]:
        if self._ended:
            return []
        out: list[Json] = []
        if self._key is None:
            self._start({}, out)
        if self._finish is None:
            self._fail("server_error", _UNFINISHED, out)
            return self._stamp(out)
        reason = _INCOMPLETE.get(self._finish)
        status: ResponseStatus = "completed" if reason is None else "incomplete"
        response = self._response(status, incomplete_reason=reason)
        out.append({"type": f"response.{status}", "response": response})
        self._ended = True
        return self._stamp(out)

    def fail(self, error: ProxyError) -> list[Json]:
        if self._ended:
            return []
        out: list[Json] = []
        if self._key is None:
            self._start({}, out)
        code = "rate_limit_exceeded" if error.status_code == 429 else "server_error"
        self._fail(code, error.message, out)
        return self._stamp(out)

    def _stamp(self, out: list[Json]) -> list[Json]:
        for event in out:
            event["sequence_number"] = self._seq
            self._seq += 1
        return out

    def _start(self, chunk: Json, out: list[Json]) -> None:
        self._key = _text(chunk.get("id")) or secrets.token_hex(12)
        self._model = _text(chunk.get("model")) or self._model
        created = chunk.get("created")
        self._created = int(time.time())
        if isinstance(created, int) and not isinstance(created, bool) and created >= 0:
            self._created = created
        # One object for both events: it is never changed once sent.
        response = self._response("in_progress")
        out.append({"type": "response.created", "response": response})
        out.append({"type": "response.in_progress", "response": response})

    def _response(self, status: ResponseStatus, **end: Any) -> Json:
        """The Response now; its usage once the provider gave it."""
        output = [i.final or i.snapshot("incomplete") for i in self._items]
        usage = None
        if self.usage is not None and status != "in_progress":
            usage = responses_usage(self.usage, self._reasoning_tokens)
        return response_object(
            self._request,
            id=f"resp_{self._key}",
            created_at=self._created,
            model=self._model,
            status=status,
            output=output,
            usage=usage,
            **end,
        )

    def _fail(self, code: str, message: str, out: list[Json]) -> None:
        error = {"code": code, "message": message}
        out.append({"type": "response.failed", "response": self._response("failed", error=error)})
        self._ended = True

    def _choice(self, choice: Json, out: list[Json]) -> None:
        delta = _object(choice.get("delta"))
        thinking = delta.get("reasoning_content")
        if not isinstance(thinking, str):
            thinking = delta.get("reasoning")  # vLLM's and OpenRouter's name for it
        blocks = delta.get("thinking_blocks")
        if thinking or blocks:
            self._think(_text(thinking), blocks if isinstance(blocks, list) else [], out)
        for kind, key in (("output_text", "content"), ("refusal", "refusal")):
            text = delta.get(key)
            if text and isinstance(text, str):
                self._say(kind, text, out)
        calls = delta.get("tool_calls")
        if isinstance(calls, list):
            for call in calls:
                if isinstance(call, dict):
                    self._call(call, out)
        finish = choice.get("finish_reason")
        if finish and isinstance(finish, str):
            self._finish = finish
            status = "incomplete" if finish in _INCOMPLETE else "completed"
            for item in self._open:
                item.close(status, out)
            self._open.clear()
            self._reasoning = self._message = None
            self._calls.clear()

    def _item_id(self, prefix: str) -> str:
        return f"{prefix}_{self._key}_{len(self._items)}"

    def _opened(self, item: Item) -> None:
        self._items.append(item)
        self._open.append(item)

    def _close(self, item: Item | None, out: list[Json]) -> None:
        if item is not None:
            item.close("completed", out)
            self._open.remove(item)

    def _think(self, text: str, blocks: list[Any], out: list[Json]) -> None:
        """Reasoning text goes to the open reasoning item; a thinking block's signature
        seals it (the next text opens another); a redacted block is an item of its own."""
        for block in blocks:
            b = _object(block)
            if b.get("type") == "redacted_thinking":
                self._new_reasoning(out).signature = REDACTED + _text(b.get("data"))
                self._close(self._reasoning, out)
                self._reasoning = None
            elif b.get("type") == "thinking":
                piece = text or _text(b.get("thinking"))  # the text came in one or the other
                text = ""
                if piece:
                    self._reason(piece, out)
                signature = b.get("signature")
                if signature and isinstance(signature, str):
                    item = self._reasoning
                    if item is None or item.signature is not None:  # a block without text
                        item = self._new_reasoning(out)
                    item.signature = signature
        if text:
            self._reason(text, out)

    def _new_reasoning(self, out: list[Json]) -> Reasoning:
        self._close(self._message, out)
        self._close(self._reasoning, out)
        self._message = None
        item = self._reasoning = Reasoning(self._item_id("rs"), len(self._items), out)
        self._opened(item)
        return item

    def _reason(self, text: str, out: list[Json]) -> None:
        item = self._reasoning
        if item is None or item.signature is not None:
            item = self._new_reasoning(out)
        item.add(text, out)

    def _say(self, kind: str, text: str, out: list[Json]) -> None:
        self._close(self._reasoning, out)
        self._reasoning = None
        if self._message is None:
            self._message = Message(self._item_id("msg"), len(self._items), out)
            self._opened(self._message)
        self._message.add(kind, text, out)

    def _call(self, delta: Json, out: list[Json]) -> None:
        index = delta.get("index")
        if not isinstance(index, int) or isinstance(index, bool):
            index = max(self._calls, default=0) + (1 if delta.get("id") else 0)
        function = _object(delta.get("function"))
        name = _text(function.get("name"))
        call = self._calls.get(index)
        if call is None:
            self._close(self._reasoning, out)
            self._close(self._message, out)
            self._reasoning = self._message = None
            item_id = self._item_id("fc")
            call_id = _text(delta.get("id")) or "call_" + item_id.removeprefix("fc_")
            call = self._calls[index] = Call(item_id, len(self._items), call_id, name, out)
            self._opened(call)
        elif name and not call.name:
            call.name = name
        arguments = function.get("arguments")
        if arguments and isinstance(arguments, str):
            call.add(arguments, out)
