"""The answer's id, model and finish reasons, read from the bytes going to the client.

Every API puts the id and the model at the start of its answer (the first event of a stream)
and the finish reasons near the end (a late event of a stream): a JSON body keeps its first
and last ``_EDGE`` bytes; a stream reads the id and model from its reads until it found the
model, then only keeps its last ``_RECENT`` reads (a deque's C ``append`` per read), where
``finish`` looks for the reasons: a provider's last events give them, before the usage and
the end.
Only what the client's API calls ``finish_reason`` (Chat, Completions) or ``stop_reason``
(Messages) is read; Responses has neither. An embeddings answer names its model at the end.
A key split across two reads is missed: providers flush whole events.

With ``capture`` set, the first ``capture`` bytes of the answer are kept too (the content).

Whichever layer watches the answer go by (Metrics, when it is inside the telemetry layer)
hands each read to ``take``: the reader's current way to take one, which for a stream whose
model was found is the deque's own ``append``, so a read costs no Python frame.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ["AnswerReader"]

_EDGE = 2048
#: A value up to its closing quote: ``[^"]`` is counted in a tight C loop, ``[^"\\]`` (a
#: class) a character at a time, at twice the cost. A value with an escape in it (no id or
#: model has one) is then dropped (``_start``).
_ID = re.compile(rb'"id"\s*:\s*"([^"]{1,128})"')
_MODEL = re.compile(rb'"model"\s*:\s*"([^"]{1,128})"')
#: Looked for as a byte's value: ``b"\\" in value`` costs ten times as much (CPython first
#: tries the bytes as an int, and clears the ``TypeError`` that raises).
_BACKSLASH = ord("\\")
#: Starts with its longest literal, so that ``re`` skips to each ``_reason"`` at once; the
#: lookbehinds then check the whole key.
_REASON = re.compile(
    rb'_reason"(?:(?<="finish_reason")|(?<="stop_reason"))\s*:\s*"([A-Za-z0-9_.\-]{1,40})"'
)
#: How many of a stream's last reads are searched for its finish reasons.
_RECENT = 8


def _ignored(chunk: bytes) -> None:
    """``take`` once the answer is finished."""


#: A JSON answer's ``recent``: it keeps no reads.
_NO_READS: deque[bytes] = deque(maxlen=0)


class AnswerReader:
    """Feed it every body chunk the client gets, ``finish`` it, then read its fields."""

    __slots__ = (
        "sse",
        "id",
        "model",
        "content",
        "recent",
        "take",
        "_head",
        "_tail",
        "_capture",
    )

    def __init__(self, *, sse: bool, capture: int = 0) -> None:
        self.sse = sse
        self.id: str | None = None
        self.model: str | None = None
        self.content = b""
        #: A stream's last reads (``finish`` searches them for its reasons).
        self.recent: deque[bytes] = deque(maxlen=_RECENT) if sse else _NO_READS
        #: A JSON body's first bytes (at least ``_EDGE`` once it has them) and last ones: the
        #: chunks themselves while they are that long, not copies.
        self._head = b""
        self._tail = b""
        self._capture = capture
        #: Takes one read of the answer (``feed``, or quicker ways for a stream).
        self.take: Callable[[bytes], None] = self._take_read if sse and not capture else self.feed

    def feed(self, chunk: bytes) -> None:
        if self._capture and len(self.content) < self._capture:
            self.content = (self.content + chunk)[: self._capture]
        if self.sse:
            self.feed_stream(chunk)
            return
        if len(self._head) < _EDGE:
            self._head = self._head + chunk[:_EDGE] if self._head else chunk
        tail = self._tail
        self._tail = tail[-_EDGE:] + chunk if tail and len(chunk) < _EDGE else chunk

    def feed_stream(self, chunk: bytes) -> None:
        """A stream's read: the id and model while the model is not found, and the read
        kept among the last ones."""
        if self.model is None:
            self._start(chunk, len(chunk))
        self.recent.append(chunk)

    def _take_read(self, chunk: bytes) -> None:
        """A stream's read while its model is not found; then ``take`` is ``recent.append``."""
        self.feed_stream(chunk)
        if self.model is not None:
            self.take = self.recent.append

    def finish(self, attributes: dict[str, Any]) -> None:
        """Stop reading, and put ``gen_ai.response.id``, ``.model`` and ``.finish_reasons``
        (those it found) in ``attributes``."""
        self.take = _ignored  # and the reader no longer refers to itself: no cycle to collect
        if self.sse:
            data, start = b"".join(self.recent), 0
            self.recent.clear()
        else:
            data = self._tail
            start = max(len(data) - _EDGE, 0)
            if head := self._head:
                self._start(head, _EDGE)
                if self.model is None:
                    self._start(data, len(data))
            self._head = self._tail = b""
        if self.id:
            attributes["gen_ai.response.id"] = self.id
        if self.model:
            attributes["gen_ai.response.model"] = self.model
        if data and (reasons := _REASON.findall(data, start)):
            attributes["gen_ai.response.finish_reasons"] = (
                (reasons[0].decode(),) if len(reasons) == 1 else _each_once(reasons)
            )

    def _start(self, data: bytes, end: int) -> None:
        """The id and the model, from the first ``end`` bytes of ``data``."""
        if self.id is None and (found := _ID.search(data, 0, end)):
            value = found.group(1)
            self.id = "" if _BACKSLASH in value else value.decode("utf-8", "replace")
        if self.model is None and (found := _MODEL.search(data, 0, end)):
            value = found.group(1)
            self.model = "" if _BACKSLASH in value else value.decode("utf-8", "replace")


def _each_once(reasons: list[bytes]) -> tuple[str, ...]:
    """The reasons of several choices, each once, in order."""
    return tuple(dict.fromkeys(reason.decode() for reason in reasons))
