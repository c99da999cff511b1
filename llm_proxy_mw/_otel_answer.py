"""The answer's id, model and finish reasons, read from the bytes going to the client.

Every API puts the id and the model at the start of its answer (the first event of a stream)
and the finish reasons near the end (a late event of a stream): a JSON body keeps its first
and last ``_EDGE`` bytes; a stream looks for a reason in each read with two substring
searches, and for the id and model only until it found the model.
Only what the client's API calls ``finish_reason`` (Chat, Completions) or ``stop_reason``
(Messages) is read; Responses has neither. An embeddings answer names its model at the end.
A key split across two reads is missed: providers flush whole events.

With ``capture`` set, the first ``capture`` bytes of the answer are kept too (the content).
"""

from __future__ import annotations

import re
from collections.abc import Callable

__all__ = ["AnswerReader"]

_EDGE = 2048
_ID = re.compile(rb'"id"\s*:\s*"([^"\\]{1,128})"')
_MODEL = re.compile(rb'"model"\s*:\s*"([^"\\]{1,128})"')
_REASON = re.compile(rb'"(?:finish|stop)_reason"\s*:\s*"([A-Za-z0-9_.\-]{1,40})"')
_REASON_SET = b'_reason":"'
_REASON_SPACED = b'_reason": "'


class AnswerReader:
    """Feed it every body chunk the client gets, ``finish`` it, then read its fields."""

    __slots__ = ("sse", "id", "model", "finish_reasons", "content", "_head", "_tail", "_capture")

    def __init__(self, *, sse: bool, capture: int = 0) -> None:
        self.sse = sse
        self.id: str | None = None
        self.model: str | None = None
        self.finish_reasons: list[str] = []
        self.content = b""
        self._head = b""
        self._tail = b""
        self._capture = capture

    def feed(self, chunk: bytes) -> None:
        if self._capture and len(self.content) < self._capture:
            self.content = (self.content + chunk)[: self._capture]
        if self.sse:
            self._feed_event(chunk)
            return
        if len(self._head) < _EDGE:
            self._head = (self._head + chunk)[:_EDGE]
        self._tail = chunk[-_EDGE:] if len(chunk) >= _EDGE else (self._tail + chunk)[-_EDGE:]

    def feeder(self) -> Callable[[bytes], None]:
        """``feed``, or for a stream without ``capture`` its cheaper per-chunk part."""
        return self._feed_event if self.sse and not self._capture else self.feed

    def _feed_event(self, chunk: bytes) -> None:
        """A stream's read (its reader's ``feed`` without ``capture``: called per chunk)."""
        if self.model is None:
            self._start(chunk)
        # A reason given, not the ``"finish_reason":null`` of every Chat delta.
        if _REASON_SET in chunk or _REASON_SPACED in chunk:
            self._reasons(chunk)

    def finish(self) -> None:
        if not self.sse and self._head:
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
