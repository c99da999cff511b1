"""The huge-stream half of the load benchmark: a fast reader, a slow one, and what they measure.

Plain blocking sockets, so that the slow reader's pace is exactly what it asks for, and
``/proc`` for the rest: the proxy's ``VmRSS`` sampled in a thread, and the bytes waiting in
the kernel's socket queues (``/proc/net/tcp``), which separate what the proxy holds itself
from what the kernel holds between the three processes.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import httptools

from benchmarks._load_client import request
from benchmarks._marked_answers import BIG_EVENT
from benchmarks._procs import rss_mb

__all__ = ["RssWatch", "SlowRead", "Transfer", "read_fast", "read_slowly"]

HOST = "127.0.0.1"
_DONE = b"data: [DONE]\n\n"


class RssWatch:
    """``with RssWatch(pid) as watch:`` samples the process tree's VmRSS (MiB) every
    ``interval`` seconds in a thread, for at most ``limit`` seconds."""

    def __init__(self, pid: int, interval: float = 0.01, limit: float = 120.0) -> None:
        self.pid = pid
        self.interval = interval
        self.limit = limit
        self.before = 0.0
        self.peak = 0.0
        self.after = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssWatch:
        self.before = self.peak = rss_mb(self.pid)
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.after = rss_mb(self.pid)
        self.peak = max(self.peak, self.after)

    def _run(self) -> None:
        for _ in range(int(self.limit / self.interval)):
            if self._stop.wait(self.interval):
                return
            self.peak = max(self.peak, rss_mb(self.pid))

    @property
    def growth(self) -> float:
        return self.peak - self.before


class _Body:
    """httptools callbacks: body bytes, the last few of them, completion."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.size = 0
        self.tail = b""
        self.complete = False

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        self.tail = (self.tail + body[-64:])[-64:]

    def on_message_complete(self) -> None:
        self.complete = True


@dataclass(slots=True)
class Transfer:
    """A huge stream read as fast as possible."""

    expected: int
    status: int = 0
    received: int = 0
    complete: bool = False
    seconds: float = 0.0
    error: str = ""

    @property
    def whole(self) -> bool:
        return self.complete and self.status == 200 and self.received == self.expected


def _connect(port: int, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        # Before connect, so the window is small from the start: the client's own buffer
        # then stays out of the figures, which are about the proxy.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(10)
    sock.connect((HOST, port))
    return sock


def read_fast(port: int, size: int, marker: str, timeout: float = 60.0) -> Transfer:
    """Ask for a ``size``-byte stream and read it as fast as the proxy sends it."""
    events = max(1, size // BIG_EVENT)
    result = Transfer(expected=events * BIG_EVENT + len(_DONE))
    body = _Body()
    buffer = bytearray(1 << 20)
    view = memoryview(buffer)
    started = time.monotonic()
    try:
        with _connect(port) as sock:
            sock.sendall(request("openai-sse", marker, port, f"big-{size}"))
            # Each read returns at least one byte, so the count bounds it as well as the clock.
            for _ in range(result.expected + (1 << 16)):
                if body.complete or time.monotonic() - started > timeout:
                    break
                n = sock.recv_into(buffer)
                if n == 0:
                    result.error = "connection closed"
                    break
                body.parser.feed_data(view[:n])
    except (OSError, httptools.HttpParserError) as exc:
        result.error = type(exc).__name__
    result.seconds = time.monotonic() - started
    result.status, result.received = body.status, body.size
    result.complete = body.complete and body.tail.endswith(_DONE)
    return result


def provider_stats(port: int) -> dict[str, Any]:
    """The fake provider's per-marker record of its huge streams."""
    conn = http.client.HTTPConnection(HOST, port, timeout=5)
    try:
        conn.request("GET", "/stats")
        data: dict[str, Any] = json.loads(conn.getresponse().read())
        return data
    finally:
        conn.close()


def socket_queues(pairs: set[frozenset[int]]) -> dict[tuple[int, int], tuple[int, int]]:
    """``(local port, remote port) -> (send queue, receive queue)`` in bytes, from the kernel,
    for both ends of the TCP connections between these port pairs."""
    queues = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = (int(address.rsplit(":", 1)[1], 16) for address in fields[1:3])
        if frozenset((local, remote)) in pairs:
            tx, rx = (int(n, 16) for n in fields[4].split(":"))
            queues[local, remote] = (tx, rx)
    return queues


@dataclass(slots=True)
class SlowRead:
    """A huge stream read at a slow, steady pace, then abandoned."""

    size: int
    client_read: int = 0
    seconds: float = 0.0
    upstream_sent: int = 0
    #: Per socket (named by who owns it and where it points): (send queue, receive queue).
    queues: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: (seconds since the start, client bytes read, upstream bytes sent), every half second.
    samples: list[tuple[float, int, int]] = field(default_factory=list)
    #: Seconds from the client's close to the upstream connection's; None if it stayed open.
    upstream_closed_after: float | None = None
    upstream_sent_final: int = 0
    error: str = ""

    @property
    def kernel_queued(self) -> int:
        return sum(tx + rx for tx, rx in self.queues.values())

    @property
    def held_by_proxy(self) -> int:
        """What the provider sent that is neither read by the client nor in a kernel queue."""
        return self.upstream_sent - self.client_read - self.kernel_queued

    def late_rate(self) -> float | None:
        """Upstream bytes/s over the second half of the read: the pace backpressure set."""
        if len(self.samples) < 3:
            return None
        mid, last = self.samples[len(self.samples) // 2], self.samples[-1]
        return (last[2] - mid[2]) / (last[0] - mid[0]) if last[0] > mid[0] else None

    def client_rate(self) -> float:
        return self.client_read / self.seconds if self.seconds else 0.0


def read_slowly(
    port: int,
    provider_port: int,
    size: int,
    marker: str,
    *,
    rate: int = 100_000,
    seconds: float = 5.0,
    tick: float = 0.05,
) -> SlowRead:
    """Read ``rate`` bytes/s for ``seconds``, with a 64 KiB receive buffer, then close."""
    result = SlowRead(size=size)
    per_tick = int(rate * tick)
    sock = _connect(port, rcvbuf=64 * 1024)
    try:
        sock.sendall(request("openai-sse", marker, port, f"big-{size}"))
        client_port = sock.getsockname()[1]
        started = time.monotonic()
        for i in range(int(seconds / tick)):
            got = 0
            for _ in range(per_tick):
                data = sock.recv(per_tick - got)
                got += len(data)
                if not data or got >= per_tick:
                    break
            if not data:
                result.error = "connection closed early"
                break
            result.client_read += got
            time.sleep(max(0.0, started + (i + 1) * tick - time.monotonic()))
            if i % 10 == 9:
                sent = provider_stats(provider_port).get(marker, {}).get("sent", 0)
                result.samples.append((time.monotonic() - started, result.client_read, sent))
        result.seconds = time.monotonic() - started
        # Nothing is read now, so the pipeline is still: one consistent snapshot.
        stats = provider_stats(provider_port).get(marker, {})
        result.upstream_sent = stats.get("sent", 0)
        upstream_port = stats["peer_port"]
        pairs = {frozenset((port, client_port)), frozenset((provider_port, upstream_port))}
        names = {
            (client_port, port): "client ← proxy",
            (port, client_port): "proxy → client",
            (upstream_port, provider_port): "proxy ← provider",
            (provider_port, upstream_port): "provider → proxy",
        }
        queues = socket_queues(pairs)
        result.queues = {names[k]: v for k, v in queues.items() if k in names}
    except (OSError, KeyError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        sock.close()
    closed_at = time.monotonic()
    # Up to 5 s for the provider to see its connection closed (or the stream finished).
    for _ in range(250):
        try:
            stats = provider_stats(provider_port).get(marker, {})
        except OSError as exc:
            result.error = f"provider stats: {type(exc).__name__}"
            break
        if stats.get("closed") or stats.get("finished"):
            result.upstream_sent_final = stats["sent"]
            if stats.get("closed"):
                result.upstream_closed_after = max(0.0, stats["closed"] - closed_at)
            break
        time.sleep(0.02)
    return result
