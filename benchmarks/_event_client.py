"""The per-event latency client: paced SSE streams, each event timed on arrival.

The fake provider's paced stream (``bench-paced``) stamps every chunk with the
``time.monotonic_ns()`` of its write; this client notes ``time.monotonic_ns()`` as each read
returns and, once an event is complete, records arrival − send. Both clocks are
CLOCK_MONOTONIC on one machine, so the difference is the event's trip through whatever sits
between (nothing, the floor, the proxy) plus the client's own read. Raw asyncio protocol and
httptools, like ``loadgen``, so that it stays cheap on the CPU it shares with the provider.
Every stream must come back whole: status 200, every chunk in order, ``data: [DONE]``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import cast

import httptools

from benchmarks.fixtures import CLIENT_KEY, PACED_EVENTS, request_body

__all__ = ["EventSplitter", "EventTally", "check_splitter", "paced_streams"]

HOST = "127.0.0.1"
#: The model name that makes the fake provider pace and stamp its stream.
PACED_MODEL = "bench-paced"
#: Seconds one stream may take; one takes PACED_EVENTS x PACE_MS (a quarter second).
STREAM_TIMEOUT = 30.0


class EventSplitter:
    """Incremental SSE framing: feed body bytes as they come (split or merged anyhow by TCP
    and chunked encoding), get back the ``data`` of each event completed by them.

    Lines end with ``\\n`` or ``\\r\\n`` (a line's end split between two reads is handled);
    a blank line ends an event; several ``data:`` lines join with ``\\n``; comments and other
    fields are skipped. Lone-``\\r`` line ends are not supported (no provider sends them).
    """

    __slots__ = ("_buffer", "_data")

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[bytes]:
        buffer = self._buffer + chunk if self._buffer else chunk
        events: list[bytes] = []
        start = 0
        while (end := buffer.find(b"\n", start)) >= 0:
            line = buffer[start : end - 1 if end > start and buffer[end - 1] == 13 else end]
            start = end + 1
            if not line:
                if self._data:
                    events.append(b"\n".join(self._data))
                    self._data = []
            elif line.startswith(b"data:"):
                value = line[5:]
                self._data.append(value[1:] if value.startswith(b" ") else value)
        self._buffer = buffer[start:]
        return events


def check_splitter() -> str:
    """``""`` when the splitter finds the same events however the bytes are cut: one piece,
    every byte alone, every two-way cut, CRLF lines; else what went wrong."""
    sent = [b'{"seq":%d,"text":"a\\nb"}' % n for n in range(3)]
    wire = b"".join(b": comment\ndata: %s\n\n" % event for event in sent) + b"data: [DONE]\n\n"
    expected = [*sent, b"[DONE]"]
    cuts = [[wire], [wire[i : i + 1] for i in range(len(wire))]]
    cuts += [[wire[:i], wire[i:]] for i in range(1, len(wire))]
    crlf = wire.replace(b"\n", b"\r\n")
    cuts += [[crlf[:i], crlf[i:]] for i in range(1, len(crlf))]
    for pieces in cuts:
        splitter = EventSplitter()
        got = [event for piece in pieces for event in splitter.feed(piece)]
        if got != expected:
            return f"SSE framing: cut into {[len(p) for p in pieces][:6]}... gave {got[:4]}"
    return ""


@dataclass(slots=True)
class EventTally:
    """Per-event latencies (ns) of the measured streams, and what went wrong, by kind."""

    latencies_ns: list[int] = field(default_factory=list)
    streams: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0


class _Stream(asyncio.Protocol):
    """One keep-alive connection: streams one after another, each event timed."""

    def __init__(self, tally: EventTally, request: bytes) -> None:
        self._tally = tally
        self._request = request
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._done: asyncio.Future[str] | None = None
        self._splitter = EventSplitter()
        self._arrived = 0
        self._status = 0
        self._next_seq = 0
        self._ended = False
        self._samples: list[int] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only look alike.
        self._transport = cast(asyncio.Transport, transport)

    @property
    def closed(self) -> bool:
        return self._transport is None

    async def one(self) -> None:
        """One stream; its latencies count only if it came back whole."""
        if self._transport is None:
            self._tally.errors["connection closed"] += 1
            return
        self._done = asyncio.get_running_loop().create_future()
        self._splitter = EventSplitter()
        self._status, self._next_seq, self._ended = 0, 0, False
        self._samples = []
        self._transport.write(self._request)
        try:
            problem = await asyncio.wait_for(self._done, STREAM_TIMEOUT)
        except TimeoutError:
            problem = "timeout"
        if problem:
            # The rest of a bad answer may still come: this connection is done with.
            self.close()
            self._tally.errors[problem] += 1
        else:
            self._tally.streams += 1
            self._tally.latencies_ns += self._samples

    def close(self) -> None:
        if self._transport is not None:
            self._transport.abort()
            self._transport = None

    def _finish(self, problem: str) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_result(problem)

    def data_received(self, data: bytes) -> None:
        self._arrived = time.monotonic_ns()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._finish("protocol")
            self.close()

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        for data in self._splitter.feed(body):
            self._event(data)

    def _event(self, data: bytes) -> None:
        if data == b"[DONE]":
            self._ended = True
            return
        try:
            event = json.loads(data)
            sent, seq = int(event["sent_ns"]), int(event["seq"])
        except (ValueError, KeyError, TypeError):
            self._finish("malformed event")
            return
        if seq != self._next_seq:
            self._finish("event out of order")
            return
        self._next_seq = seq + 1
        self._samples.append(self._arrived - sent)

    def on_message_complete(self) -> None:
        if self._status != 200:
            self._finish(f"status {self._status}")
        elif self._next_seq != PACED_EVENTS or not self._ended:
            self._finish(f"incomplete stream ({self._next_seq} events, [DONE] {self._ended})")
        else:
            self._finish("")
        if not self._parser.should_keep_alive():
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._finish("connection lost")


def _request(port: int, path: str) -> bytes:
    body = request_body(PACED_MODEL, stream=True)
    head = [
        f"POST {path} HTTP/1.1",
        f"Host: {HOST}:{port}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        f"Authorization: Bearer {CLIENT_KEY}",
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def paced_streams(
    port: int, path: str, *, connections: int, streams: int, stagger: float
) -> EventTally:
    """``connections`` connections, each running ``streams`` streams back to back;
    connection *i* starts ``i * stagger`` seconds in, so that the provider's paced writes for
    different streams do not all fall together."""
    loop = asyncio.get_running_loop()
    tally = EventTally()
    request = _request(port, path)

    async def connection(n: int) -> None:
        await asyncio.sleep(n * stagger)
        stream = _Stream(tally, request)
        try:
            await asyncio.wait_for(loop.create_connection(lambda: stream, HOST, port), 10)
        except (OSError, TimeoutError):
            tally.errors["connect"] += 1
            return
        try:
            for i in range(streams):
                await stream.one()
                if stream.closed:
                    tally.errors["connection closed"] += streams - i - 1
                    break
        finally:
            stream.close()

    started = time.monotonic()
    await asyncio.gather(*(connection(n) for n in range(connections)))
    tally.seconds = time.monotonic() - started
    return tally
