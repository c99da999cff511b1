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
"""

from __future__ import annotations

import re
from collections import deque

__all__ = ["AnswerReader"]

_EDGE = 2048
_ID = re.compile(rb'"id"\s*:\s*"([^"\\]{1,128})"')
_MODEL = re.compile(rb'"model"\s*:\s*"([^"\\]{1,128})"')
_REASON = re.compile(rb'"(?:finish|stop)_reason"\s*:\s*"([A-Za-z0-9_.\-]{1,40})"')
#: How many of a stream's last reads are searched for its finish reasons.
_RECENT = 8


class AnswerReader:
    """Feed it every body chunk the client gets, ``finish`` it, then read its fields."""

    __slots__ = (
        "sse",
        "id",
        "model",
        "finish_reasons",
        "content",
        "recent",
        "_head",
        "_tail",
        "_capture",
    )

    def __init__(self, *, sse: bool, capture: int = 0) -> None:
        self.sse = sse
        self.id: str | None = None
        self.model: str | None = None
        self.finish_reasons: list[str] = []
        self.content = b""
        #: A stream's last reads (``finish`` searches them for its reasons).
        self.recent: deque[bytes] = deque(maxlen=_RECENT)
        self._head = b""
        self._tail = b""
        self._capture = capture

    def feed(self, chunk: bytes) -> None:
        if self._capture and len(self.content) < self._capture:
            self.content = (self.content + chunk)[: self._capture]
        if self.sse:
            self.feed_stream(chunk)
            return
        if len(self._head) < _EDGE:
            self._head = (self._head + chunk)[:_EDGE]
        self._tail = chunk[-_EDGE:] if len(chunk) >= _EDGE else (self._tail + chunk)[-_EDGE:]

    def feed_stream(self, chunk: bytes) -> None:
        """A stream's read: the id and model while the model is not found, and the read
        kept among the last ones."""
        if self.model is None:
            self._start(chunk)
        self.recent.append(chunk)

    def finish(self) -> None:
        if self.sse:
            self._reasons(b"".join(self.recent))
            self.recent.clear()
        elif self._head:
            self._start(self._head)
            if self.model is None:
                self._start(self._tail)
            self._reasons(self._tail)
        self._head = self._tail = b""

    def attributes(self) -> dict[str, str | list[str]]:
        """``gen_ai.response.id``, ``.model`` and ``.finish_reasons``: those it found."""
        found = {
            "gen_ai.response.id": self.id,
            "gen_ai.response.model": self.model,
            "gen_ai.response.finish_reasons": self.finish_reasons,
        }
        return {name: value for name, value in found.items() if value}

    def _start(self, data: bytes) -> None:
        if self.id is None and (found := _ID.search(data)):
            self.id = found.group(1).decode("utf-8", "replace")
        if self.model is None and (found := _MODEL.search(data)):
            self.model = found.group(1).decode("utf-8", "replace")

    def _reasons(self, data: bytes) -> None:
        for reason in _REASON.findall(data):
            text = reason.decode()
            if text not in self.finish_reasons:
                self.finish_reasons.append(text)
