"""Token usage read from a response as it streams past, without holding any of it back.

The three APIs name their counts differently; every name maps to one ``Usage`` field:
Chat ``prompt_tokens``, ``completion_tokens``, ``prompt_tokens_details.cached_tokens`` /
``cache_write_tokens``, ``completion_tokens_details.reasoning_tokens``; Responses
``input_tokens``, ``output_tokens`` and the same details (in ``response.completed`` for
streams); Anthropic ``input_tokens``, ``output_tokens`` (cumulative in ``message_delta``),
``cache_read_input_tokens``, ``cache_creation_input_tokens``, which it counts outside
``input_tokens``: ``fill`` adds them in for an ``anthropic`` answer. A JSON body keeps only a
short rolling tail (usage ends it). A stream chunk costs one substring search: the regex
runs only on the few bytes around a ``_tokens"`` key, and a key or number split across two
reads is found by carrying the last bytes over. The latest value wins, so a number seen
twice is not counted twice. Compressed bodies are not decoded here: their usage is not
counted.

A stream cut short may never say its usage: ``reads`` counts the reads of its answer, and
each counts as one output token (``charge_cut``). Providers flush about one event, one token,
per read: the few events that carry no token (starts, stops, pings) count too, so the
estimate errs towards charging more; counting ``"delta"`` members instead would cost every
stream a third more CPU per chunk.

The numbers are the provider's untrusted input: only a JSON integer in ``[0, MAX_TOKENS]``
counts; anything else (a fraction, a sign, 10**400, thousands of digits) is ignored, so
that no number reaches the counters and stores that they cannot hold, and reading never
raises (that would cost the client the rest of its response).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from llm_proxy_mw.context import Usage

__all__ = [
    "BYTES_PER_TOKEN",
    "MAX_TOKENS",
    "UsageReader",
    "answer_format",
    "estimated_tokens",
    "token_count",
]

#: The most tokens one response may report; any real one is far below.
MAX_TOKENS = 10**9
#: How many request bytes count as one input token when the provider never said (the
#: usual rule of thumb for English text and JSON; tokenizers differ by model).
BYTES_PER_TOKEN = 4

# At most ten digits, and the whole number: the lookahead wants what ends a JSON number, so
# "1.5", "2e3" and an eleventh digit never match, and a number cut off at the end of a
# read is taken only once the next read completes it.
_NUMBER = rb"\s*:\s*(\d{1,10})(?=[\s,}\]])"
_COUNT = re.compile(
    rb'"(prompt|input|completion|output|cached|cache_read_input|cache_write'
    rb'|cache_creation_input|reasoning)_tokens"' + _NUMBER
)
#: Each key's ``UsageReader`` slot.
_SLOT = {
    b"prompt": "prompt_tokens",
    b"input": "prompt_tokens",
    b"completion": "completion_tokens",
    b"output": "completion_tokens",
    b"cached": "cache_read_tokens",
    b"cache_read_input": "cache_read_tokens",
    b"cache_write": "cache_write_tokens",
    b"cache_creation_input": "cache_write_tokens",
    b"reasoning": "reasoning_tokens",
}
_KEY = b'_tokens"'
_TAIL = 4096
#: The name before a ``_tokens"`` marker, and what a cut event carries into the next read
#: (enough for ``"cache_creation_input_tokens": 1234567890``).
_BEFORE = 24
_CARRY = 64


class UsageReader:
    """Feed it every body chunk, ``finish`` it, then ``fill`` a ``Usage`` with what it read.

    ``seen``: whether the answer reported any count (else ``fill`` leaves the counts alone,
    which another layer may have set).
    """

    __slots__ = (
        "sse",
        "enabled",
        "seen",
        "reads",
        "prompt_tokens",
        "completion_tokens",
        "cache_read_tokens",
        "cache_write_tokens",
        "reasoning_tokens",
        "_tail",
    )

    def __init__(self, *, sse: bool, enabled: bool = True) -> None:
        self.sse = sse
        self.enabled = enabled
        self.seen = False
        self.reads = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cache_read_tokens = 0
        self.cache_write_tokens = 0
        self.reasoning_tokens = 0
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
        self.reads += 1
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

    def fill(self, usage: Usage, *, anthropic: bool) -> None:
        """Write what was read into ``usage`` as OpenAI counts it (``Usage``'s docstring):
        Anthropic's cache reads and writes join the prompt; no detail exceeds its total."""
        if not self.seen:
            return
        prompt = self.prompt_tokens
        if anthropic:
            prompt += self.cache_read_tokens + self.cache_write_tokens
        read = min(self.cache_read_tokens, prompt)
        usage.prompt_tokens = prompt
        usage.cache_read_tokens = read
        usage.cache_write_tokens = min(self.cache_write_tokens, prompt - read)
        usage.completion_tokens = self.completion_tokens
        usage.reasoning_tokens = min(self.reasoning_tokens, self.completion_tokens)

    def charge_cut(self, usage: Usage, body: bytes | None) -> None:
        """For an answer that broke off: its input (estimated from the request ``body`` when
        the provider never said) and at least one output token per read seen so far."""
        if not usage.prompt_tokens:
            usage.prompt_tokens = estimated_tokens(body)
        usage.completion_tokens = max(usage.completion_tokens, min(self.reads, MAX_TOKENS))

    def _scan(self, data: bytes) -> None:
        for name, number in _COUNT.findall(data):
            if (value := int(number)) <= MAX_TOKENS:
                setattr(self, _SLOT[name], value)
                self.seen = True


def answer_format(headers: Iterable[tuple[bytes, bytes]]) -> Literal["sse", "json"] | None:
    """How an answer's body can be read as it goes by, from its response headers: ``"sse"``
    (an event stream), ``"json"``, or ``None`` (anything else, or compressed)."""
    kind: Literal["sse", "json"] | None = None
    for name, value in headers:
        if name == b"content-type":
            if value.startswith(b"text/event-stream"):
                kind = "sse"
            else:
                # ``find``: ``bytes in bytes`` first tries the needle as an int (twice the CPU).
                kind = "json" if value.find(b"json") >= 0 else None
        elif name == b"content-encoding" and value != b"identity":
            return None
    return kind


def token_count(value: object) -> int:
    """``value`` if it is a token count (an ``int``, not a ``bool``, in ``[0, MAX_TOKENS]``),
    else 0: for numbers that did not come through a ``UsageReader``."""
    return value if type(value) is int and 0 <= value <= MAX_TOKENS else 0


def estimated_tokens(body: bytes | None) -> int:
    """The input tokens of a request whose provider never said: its body's bytes over
    ``BYTES_PER_TOKEN`` (an estimate, for a stream cut before its usage arrived)."""
    return min(len(body or b"") // BYTES_PER_TOKEN, MAX_TOKENS)
