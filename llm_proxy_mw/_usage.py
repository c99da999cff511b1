"""Token usage read from a response as it streams past, without holding any of it back.

OpenAI JSON and its final stream chunk carry ``prompt_tokens`` / ``completion_tokens``;
Anthropic's JSON, ``message_start`` and ``message_delta`` carry ``input_tokens`` /
``output_tokens`` (the latter cumulative). Both put usage at the end of a JSON body, so a
JSON body keeps only a short rolling tail. A stream chunk costs one substring search: the
regexes run only on the few bytes around a ``_tokens"`` key, and a key or number split
across two reads is found by carrying the last bytes over. The latest value wins, so a
number seen twice is not counted twice. Compressed bodies are not decoded here: their usage
is not counted.

The numbers are the provider's untrusted input: only a JSON integer in ``[0, MAX_TOKENS]``
counts; anything else (a fraction, a sign, 10**400, thousands of digits) is ignored, so
that no number reaches the counters and stores that they cannot hold, and reading never
raises (that would cost the client the rest of its response).
"""

from __future__ import annotations

import re

__all__ = ["MAX_TOKENS", "UsageReader", "token_count"]

#: The most tokens one response may report; any real one is far below.
MAX_TOKENS = 10**9

# At most ten digits, and the whole number: the lookahead wants what ends a JSON number, so
# "1.5", "2e3" and an eleventh digit never match, and a number cut off at the end of a
# read is taken only once the next read completes it.
_NUMBER = rb"\s*:\s*(\d{1,10})(?=[\s,}\]])"
_PROMPT = re.compile(rb'"(?:prompt_tokens|input_tokens)"' + _NUMBER)
_COMPLETION = re.compile(rb'"(?:completion_tokens|output_tokens)"' + _NUMBER)
_KEY = b'_tokens"'
_TAIL = 4096
#: The name before a ``_tokens"`` marker, and what a cut event carries into the next read
#: (enough for ``"completion_tokens": 1234567``).
_BEFORE = 16
_CARRY = 64


class UsageReader:
    """Feed it every body chunk; read ``prompt_tokens`` and ``completion_tokens`` at the end."""

    __slots__ = ("sse", "enabled", "prompt_tokens", "completion_tokens", "_tail")

    def __init__(self, *, sse: bool, enabled: bool = True) -> None:
        self.sse = sse
        self.enabled = enabled
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self._tail = b""

    def feed(self, chunk: bytes) -> None:
        if not self.enabled or not chunk:
            return
        if not self.sse:
            if len(chunk) >= _TAIL:
                self._tail = chunk[-_TAIL:]
            else:
                self._tail = (self._tail + chunk)[-_TAIL:]
            return
        window = self._tail + chunk if self._tail else chunk
        first = window.find(_KEY)
        if first >= 0:
            self._scan(window[max(0, first - _BEFORE) :])
        # Providers flush whole events, so a read usually ends one and nothing is carried.
        # A read that stops mid-event may have cut a key or its number: carry its end over.
        if chunk.endswith((b"\n\n", b"\r\n\r\n")):
            self._tail = b""
        else:
            self._tail = window[-_CARRY:]

    def finish(self) -> None:
        """Scan what a JSON body left in its tail, from its ``usage`` object on."""
        if self.enabled and not self.sse and self._tail:
            start = self._tail.rfind(b'"usage"')
            self._scan(self._tail[start:] if start >= 0 else self._tail)
        self._tail = b""

    def _scan(self, data: bytes) -> None:
        for found in reversed(_PROMPT.findall(data)):
            if (value := int(found)) <= MAX_TOKENS:
                self.prompt_tokens = value
                break
        for found in reversed(_COMPLETION.findall(data)):
            if (value := int(found)) <= MAX_TOKENS:
                self.completion_tokens = value
                break


def token_count(value: object) -> int:
    """``value`` if it is a token count (an ``int``, not a ``bool``, in ``[0, MAX_TOKENS]``),
    else 0: for numbers that did not come through a ``UsageReader``."""
    return value if type(value) is int and 0 <= value <= MAX_TOKENS else 0
