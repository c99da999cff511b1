"""The output items of a Response as a Chat Completions stream fills them: a ``reasoning``
item, a ``message`` (its ``output_text`` and ``refusal`` parts) and a ``function_call``.

Each item appends the Responses events that open it, grow it and close it to the list it
is given, without ``sequence_number`` (the stream stamps them in order), and knows its final
shape, which the closing ``response.output_item.done`` and the final Response both carry.
A delta also comes raw (``add_raw``, the stream's fast path): its JSON string literal goes
into the framed event as it came, its decoded text into the item.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from llm_proxy_mw.translate._codec import Json
from llm_proxy_mw.translate._sse import compact_json

__all__ = ["Call", "Item", "Message", "Reasoning"]

ADDED = "response.output_item.added"
DONE = "response.output_item.done"


def _framed_head(name: str, where: Json) -> bytes:
    """A delta event named ``name``, at ``where``, framed up to its ``delta``'s value."""
    event = compact_json({"type": name, **where})
    return b"event: " + name.encode() + b"\ndata: " + event[:-1] + b',"delta":'


class Item(ABC):
    """One output item: ``id`` and ``index`` (its ``output_index``); ``final`` once closed."""

    __slots__ = ("id", "index", "final", "_head")

    def __init__(self, id: str, index: int) -> None:
        self.id = id
        self.index = index
        self.final: Json | None = None
        self._head = b""  # the raw delta event's framed head, built at the first

    @abstractmethod
    def add_raw(self, literal: bytes, text: str) -> bytes:
        """Add a delta's ``text``, whose JSON string is ``literal``: its event framed up to
        the value of its ``sequence_number``, which the caller appends, and closes."""

    @abstractmethod
    def snapshot(self, status: str) -> Json:
        """The item as it stands, with ``status`` (``completed``, ``incomplete``)."""

    @abstractmethod
    def _end(self, out: list[Json]) -> None:
        """Append the events that close what is open inside the item."""

    def close(self, status: str, out: list[Json]) -> None:
        self._end(out)
        self.final = self.snapshot(status)
        out.append({"type": DONE, "output_index": self.index, "item": self.final})


class Reasoning(Item):
    """A ``reasoning`` item: the thinking text as one summary part, and the thinking
    block's signature (or a redacted block's data) as ``encrypted_content``."""

    __slots__ = ("pieces", "signature")

    def __init__(self, id: str, index: int, out: list[Json]) -> None:
        super().__init__(id, index)
        self.pieces: list[str] = []
        self.signature: str | None = None
        item = {"id": id, "type": "reasoning", "summary": []}
        out.append({"type": ADDED, "output_index": index, "item": item})

    def add(self, delta: str, out: list[Json]) -> None:
        where = {"item_id": self.id, "output_index": self.index, "summary_index": 0}
        if not self.pieces:
            part = {"type": "summary_text", "text": ""}
            out.append({"type": "response.reasoning_summary_part.added", **where, "part": part})
        self.pieces.append(delta)
        out.append({"type": "response.reasoning_summary_text.delta", **where, "delta": delta})

    def add_raw(self, literal: bytes, text: str) -> bytes:
        """Only once a summary part is open (``add`` opened it)."""
        if not self._head:
            where = {"item_id": self.id, "output_index": self.index, "summary_index": 0}
            self._head = _framed_head("response.reasoning_summary_text.delta", where)
        self.pieces.append(text)
        return self._head + literal + b',"sequence_number":'

    def _end(self, out: list[Json]) -> None:
        if self.pieces:
            where = {"item_id": self.id, "output_index": self.index, "summary_index": 0}
            text = "".join(self.pieces)
            part = {"type": "summary_text", "text": text}
            out.append({"type": "response.reasoning_summary_text.done", **where, "text": text})
            out.append({"type": "response.reasoning_summary_part.done", **where, "part": part})

    def snapshot(self, status: str) -> Json:
        summary = [{"type": "summary_text", "text": "".join(self.pieces)}] if self.pieces else []
        item: Json = {"id": self.id, "type": "reasoning", "summary": summary}
        if self.signature is not None:
            item["encrypted_content"] = self.signature
        return item


#: A message's content part kinds: the prefix of their events, and the key of their text.
_PARTS = {
    "output_text": ("response.output_text", "text"),
    "refusal": ("response.refusal", "refusal"),
}


def _part(kind: str, text: str) -> Json:
    if kind == "output_text":
        return {"type": kind, "text": text, "annotations": [], "logprobs": []}
    return {"type": kind, "refusal": text}


class Message(Item):
    """A ``message`` item: consecutive text deltas of one kind (``output_text`` or
    ``refusal``) make one content part; a change of kind starts the next part."""

    __slots__ = ("parts", "kind", "pieces")

    def __init__(self, id: str, index: int, out: list[Json]) -> None:
        super().__init__(id, index)
        self.parts: list[Json] = []
        self.kind: str | None = None
        self.pieces: list[str] = []
        item = {"id": id, "type": "message", "role": "assistant", "status": "in_progress"}
        out.append({"type": ADDED, "output_index": index, "item": {**item, "content": []}})

    def _where(self) -> Json:
        return {"item_id": self.id, "output_index": self.index, "content_index": len(self.parts)}

    def add(self, kind: str, delta: str, out: list[Json]) -> None:
        if kind != self.kind:
            self._end(out)
            self.kind = kind
            part = _part(kind, "")
            out.append({"type": "response.content_part.added", **self._where(), "part": part})
        self.pieces.append(delta)
        event = {"type": _PARTS[kind][0] + ".delta", **self._where(), "delta": delta}
        if kind == "output_text":
            event["logprobs"] = []
        out.append(event)

    def add_raw(self, literal: bytes, text: str) -> bytes:
        """Only to an open ``output_text`` part (``add`` opened it)."""
        if not self._head:
            self._head = _framed_head("response.output_text.delta", self._where())
        self.pieces.append(text)
        return self._head + literal + b',"logprobs":[],"sequence_number":'

    def _end(self, out: list[Json]) -> None:
        if self.kind is None:
            return
        prefix, key = _PARTS[self.kind]
        text = "".join(self.pieces)
        done = {"type": prefix + ".done", **self._where(), key: text}
        if self.kind == "output_text":
            done["logprobs"] = []
        part = _part(self.kind, text)
        out.append(done)
        out.append({"type": "response.content_part.done", **self._where(), "part": part})
        self.parts.append(part)
        self.kind = None
        self.pieces = []
        self._head = b""  # the next part's index is another

    def snapshot(self, status: str) -> Json:
        content = self.parts
        if self.kind is not None:
            content = [*content, _part(self.kind, "".join(self.pieces))]
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "status": status,
            "content": content,
        }


class Call(Item):
    """A ``function_call`` item: the tool call's id as ``call_id``, its arguments as they
    come."""

    __slots__ = ("call_id", "name", "pieces")

    def __init__(self, id: str, index: int, call_id: str, name: str, out: list[Json]) -> None:
        super().__init__(id, index)
        self.call_id = call_id
        self.name = name
        self.pieces: list[str] = []
        out.append({"type": ADDED, "output_index": index, "item": self.snapshot("in_progress")})

    def add(self, delta: str, out: list[Json]) -> None:
        self.pieces.append(delta)
        out.append(
            {
                "type": "response.function_call_arguments.delta",
                "item_id": self.id,
                "output_index": self.index,
                "delta": delta,
            }
        )

    def add_raw(self, literal: bytes, text: str) -> bytes:
        if not self._head:
            where = {"item_id": self.id, "output_index": self.index}
            self._head = _framed_head("response.function_call_arguments.delta", where)
        self.pieces.append(text)
        return self._head + literal + b',"sequence_number":'

    def _end(self, out: list[Json]) -> None:
        out.append(
            {
                "type": "response.function_call_arguments.done",
                "item_id": self.id,
                "output_index": self.index,
                "arguments": "".join(self.pieces),
            }
        )

    def snapshot(self, status: str) -> Json:
        return {
            "id": self.id,
            "type": "function_call",
            "call_id": self.call_id,
            "name": self.name,
            "arguments": "".join(self.pieces),
            "status": status,
        }
