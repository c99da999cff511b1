"""The load benchmark's client: mixed requests in both wire formats, each answer checked.

Every request carries its own marker, which the fake provider echoes in every event. An
answer counts as *ok* only when it is complete (the JSON parses; the stream has every event
and its proper end), has status 200, came from the expected provider, and carries its own
marker and no other. Anything else is counted by kind: *lost* (no answer, a cut body or
stream, a timeout), an unexpected status, *cross-talk* (another request's marker), or
*malformed*. Keep-alive connections over raw asyncio streams and httptools' parser, so that
the client costs little beside the proxy. Every loop is bounded by a count and a deadline.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import httptools

from benchmarks._marked_answers import DELTAS, MARKER
from benchmarks.fixtures import CLIENT_KEY

__all__ = ["KINDS", "PREFIX", "PROVIDERS", "Tally", "concurrent_streams", "mixed", "request"]

HOST = "127.0.0.1"
PREFIX = "/llm"
#: The four kinds of request, in the order the mixed load cycles through them.
KINDS = ("openai-json", "openai-sse", "anthropic-json", "anthropic-sse")
#: The provider names the benchmark's config gives, by wire format.
PROVIDERS = {"openai": "fake-openai", "anthropic": "fake-anthropic"}
_EVENTS = {"openai": DELTAS + 2, "anthropic": DELTAS + 5}


def request(kind: str, marker: str, port: int, model: str) -> bytes:
    """The HTTP/1.1 request an SDK of that wire format would send, with the client key."""
    wire, _, shape = kind.partition("-")
    body = json.dumps(
        {
            "model": model,
            "max_tokens": 64,
            "messages": [{"role": "user", "content": f"Say {marker} back."}],
            "stream": shape == "sse",
        },
        separators=(",", ":"),
    ).encode()
    head = [
        f"POST {PREFIX}/v1/{'chat/completions' if wire == 'openai' else 'messages'} HTTP/1.1",
        f"Host: {HOST}:{port}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
    ]
    if wire == "openai":
        head.append(f"Authorization: Bearer {CLIENT_KEY}")
    else:
        head += [f"x-api-key: {CLIENT_KEY}", "anthropic-version: 2023-06-01"]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class _Answer:
    """httptools callbacks: status, the two headers checked, body parts, completion."""

    __slots__ = (
        "parser",
        "status",
        "content_type",
        "provider",
        "parts",
        "complete",
        "error",
        "on_first",
    )

    def __init__(self, on_first: Callable[[], None] | None = None) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.content_type = b""
        self.provider = b""
        self.parts: list[bytes] = []
        self.complete = False
        self.error = ""
        self.on_first = on_first

    def on_header(self, name: bytes, value: bytes) -> None:
        lower = name.lower()
        if lower == b"content-type":
            self.content_type = value
        elif lower == b"x-llm-proxy-provider":
            self.provider = value

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        if not self.parts and self.on_first is not None:
            self.on_first()
        self.parts.append(body)

    def on_message_complete(self) -> None:
        self.complete = True


class _Connection:
    """One keep-alive connection, opened on first use and again after any failure."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(HOST, self.port)

    async def exchange(self, data: bytes, answer: _Answer) -> None:
        await self.open()
        assert self._reader is not None and self._writer is not None
        self._writer.write(data)
        # At most one read per 16 bytes of a generous answer: bounded even if the server trickles.
        for _ in range(1 << 16):
            chunk = await self._reader.read(1 << 16)
            if not chunk:
                answer.error = "connection closed"
                break
            answer.parser.feed_data(chunk)
            if answer.complete:
                break
        if not answer.complete or not answer.parser.should_keep_alive():
            self.close()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._reader = self._writer = None


def check(kind: str, marker: bytes, answer: _Answer) -> str:
    """``""`` when the answer is whole and its own; otherwise what is wrong, category first."""
    if answer.error:
        return f"lost: {answer.error}"
    if not answer.complete:
        return "lost: incomplete"
    if answer.status != 200:
        return f"status {answer.status}"
    body = b"".join(answer.parts)
    if any(found != marker for found in MARKER.findall(body)):
        return "cross-talk"
    wire, _, shape = kind.partition("-")
    if answer.provider != PROVIDERS[wire].encode():
        return f"malformed: answered by {answer.provider.decode(errors='replace')!r}"
    if shape == "sse":
        return _check_stream(wire, marker, answer.content_type, body)
    try:
        data = json.loads(body)
        if wire == "openai":
            text = data["choices"][0]["message"]["content"]
        else:
            text = data["content"][0]["text"]
    except (ValueError, KeyError, IndexError, TypeError):
        return f"malformed: JSON {body[:120]!r}"
    return "" if marker.decode() in text else "malformed: no marker in the JSON"


def _check_stream(wire: str, marker: bytes, content_type: bytes, body: bytes) -> str:
    if not content_type.startswith(b"text/event-stream"):
        return f"malformed: content-type {content_type!r}"
    if not body.endswith(b"\n\n"):
        return f"lost: stream cut after {len(body)} bytes"
    events = body[:-2].split(b"\n\n")
    if wire == "openai":
        if events[-1] != b"data: [DONE]":
            return f"lost: stream ends with {events[-1][-120:]!r}"
        events.pop()
    if len(events) != _EVENTS[wire]:
        return f"lost: {len(events)} events of {_EVENTS[wire]}"
    for event in events:
        if marker not in event:
            return f"malformed: event without its marker {event[:120]!r}"
        name, _, data = event.partition(b"\n") if wire == "anthropic" else (b"", b"", event)
        try:
            parsed = json.loads(data.removeprefix(b"data: "))
        except ValueError:
            return f"malformed: event {event[:120]!r}"
        if wire == "anthropic" and name != b"event: " + parsed.get("type", "").encode():
            return f"malformed: event {event[:120]!r}"
    if wire == "anthropic" and not events[-1].startswith(b"event: message_stop"):
        return f"lost: stream ends with {events[-1][:120]!r}"
    return ""


@dataclass(slots=True)
class Tally:
    """What came back: ok per kind, problems by category (with a few examples), latencies."""

    total: int = 0
    issued: int = 0
    ok: Counter[str] = field(default_factory=Counter)
    problems: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    open_now: int = 0
    peak_open: int = 0

    def count(self, category: str) -> int:
        """Requests whose problem starts with ``category`` (``lost``, ``status``, ...)."""
        return sum(n for what, n in self.problems.items() if what.startswith(category))

    @property
    def lost(self) -> int:
        return self.count("lost") + self.total - self.issued

    def record(self, kind: str, problem: str, latency: float) -> None:
        if not problem:
            self.ok[kind] += 1
            self.latencies.append(latency)
            return
        # "lost: timeout" counts as "lost", "status 503" as itself.
        self.problems[problem.partition(":")[0]] += 1
        if len(self.examples) < 5:
            self.examples.append(f"{kind}: {problem}")

    def percentile_ms(self, pct: float) -> float | None:
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))] * 1000

    def merge(self, other: Tally) -> None:
        self.total += other.total
        self.issued += other.issued
        self.ok += other.ok
        self.problems += other.problems
        self.examples += other.examples[: max(0, 5 - len(self.examples))]
        self.seconds += other.seconds


async def _one(
    conn: _Connection,
    kind: str,
    marker: str,
    port: int,
    model: str,
    tally: Tally,
    request_timeout: float,
) -> None:
    def first() -> None:
        tally.open_now += 1
        tally.peak_open = max(tally.peak_open, tally.open_now)

    answer = _Answer(first)
    tally.issued += 1
    started = time.perf_counter()
    try:
        async with asyncio.timeout(request_timeout):
            await conn.exchange(request(kind, marker, port, model), answer)
    except TimeoutError:
        answer.error = "timeout"
        conn.close()
    except (OSError, httptools.HttpParserError) as exc:
        answer.error = type(exc).__name__
        conn.close()
    if answer.parts:
        tally.open_now -= 1
    tally.record(kind, check(kind, marker.encode(), answer), time.perf_counter() - started)


def _markers() -> Callable[[int], str]:
    run = secrets.randbelow(1 << 16)
    return lambda i: f"mk{run:04x}{i:08x}"


async def mixed(
    port: int,
    *,
    total: int,
    concurrency: int,
    model: str = "bench-fast",
    deadline: float = 120.0,
    request_timeout: float = 30.0,
) -> Tally:
    """``total`` requests cycling through ``KINDS`` on ``concurrency`` connections, closed
    loop; none is issued after ``deadline`` seconds (those count as lost)."""
    tally = Tally(total=total)
    indices = itertools.count()
    marker = _markers()
    stop_at = time.monotonic() + deadline

    async def worker() -> None:
        conn = _Connection(port)
        try:
            while time.monotonic() < stop_at and (i := next(indices)) < total:
                await _one(
                    conn, KINDS[i % len(KINDS)], marker(i), port, model, tally, request_timeout
                )
        finally:
            conn.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    tally.seconds = time.perf_counter() - started
    return tally


async def concurrent_streams(
    port: int, *, n: int, model: str = "bench-paced", request_timeout: float = 30.0
) -> Tally:
    """``n`` streams at once, half per wire format, each on a connection opened beforehand;
    ``peak_open`` is how many were streaming at the same moment."""
    tally = Tally(total=n)
    marker = _markers()
    conns = [_Connection(port) for _ in range(n)]
    started = time.perf_counter()
    try:
        async with asyncio.timeout(request_timeout):
            await asyncio.gather(*(c.open() for c in conns), return_exceptions=True)
        kinds = ("openai-sse", "anthropic-sse")
        await asyncio.gather(
            *(
                _one(conn, kinds[i % 2], marker(i), port, model, tally, request_timeout)
                for i, conn in enumerate(conns)
            )
        )
    finally:
        for conn in conns:
            conn.close()
    tally.seconds = time.perf_counter() - started
    return tally
