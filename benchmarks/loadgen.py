"""A closed-loop HTTP/1.1 load generator: N keep-alive connections, one request in flight each.

The Python fallback for machines without ``wrk``. It is a raw asyncio protocol with
httptools' C parser (uvloop when installed), so that on the core it shares with the fake
provider it stays several times cheaper per request than any Python proxy it drives. It only
talks to 127.0.0.1, and stops at ``--duration`` seconds or ``--max-requests``, whichever comes
first; requests still in flight ``--grace`` seconds later count as timeouts.

Run: ``python -m benchmarks.loadgen --port P --connections 32 --duration 10``; prints one JSON
object with the counts, requests/s and latency percentiles (ms).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter
from typing import Any, cast

import httptools

from benchmarks.fixtures import request_body

HOST = "127.0.0.1"


def percentile(values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile of an already sorted list."""
    if not values:
        return None
    k = max(0, min(len(values) - 1, round(pct / 100 * (len(values) - 1))))
    return values[k]


class _Run:
    """Shared state of one run: the budget, the counters, the finish line."""

    def __init__(self, request: bytes, duration: float, max_requests: int, stream: bool) -> None:
        self.request = request
        self.duration = duration
        self.max_requests = max_requests
        self.check_done = stream
        self.issued = 0
        self.latencies: list[float] = []
        self.ttfb: list[float] = []
        self.errors: Counter[str] = Counter()
        self.started = 0.0
        self.deadline = 0.0
        self.active = 0
        self.finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def may_issue(self) -> bool:
        return self.issued < self.max_requests and time.perf_counter() < self.deadline

    def retire(self) -> None:
        self.active -= 1
        if self.active == 0 and not self.finished.done():
            self.finished.set_result(None)


class _Connection(asyncio.Protocol):
    def __init__(self, run: _Run) -> None:
        self._run = run
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._in_flight = False
        self._sent = 0.0
        self._first = 0.0
        self._status = 0
        self._tail = b""
        self._retired = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only look alike.
        self._transport = cast(asyncio.Transport, transport)

    def next_request(self) -> None:
        run = self._run
        if self._transport is None or not run.may_issue():
            self._stop()
            return
        run.issued += 1
        self._in_flight = True
        self._first = 0.0
        self._tail = b""
        self._sent = time.perf_counter()
        self._transport.write(run.request)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._run.errors["protocol"] += 1
            self._in_flight = False
            self._stop()

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        if not self._first:
            self._first = time.perf_counter()
        if self._run.check_done:
            self._tail = (self._tail + body)[-32:]

    def on_message_complete(self) -> None:
        now = time.perf_counter()
        run = self._run
        self._in_flight = False
        if not 200 <= self._status < 300:
            run.errors[f"status_{self._status}"] += 1
        elif run.check_done and not self._tail.rstrip().endswith(b"data: [DONE]"):
            run.errors["stream_without_done"] += 1
        else:
            run.latencies.append(now - self._sent)
            run.ttfb.append((self._first or now) - self._sent)
        if self._parser.should_keep_alive():
            self.next_request()
        else:
            run.errors["server_closed"] += 1
            self._stop()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._in_flight:
            self._in_flight = False
            self._run.errors["read"] += 1
        self._stop()

    def _stop(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        if not self._retired:
            self._retired = True
            self._run.retire()

    def abort(self) -> bool:
        """Hard stop at the end of the grace period; True if a request was still in flight."""
        in_flight = self._in_flight
        self._in_flight = False
        if self._transport is not None:
            self._transport.abort()
        return in_flight


async def run_load(
    *,
    port: int,
    path: str,
    connections: int,
    duration: float,
    max_requests: int,
    model: str,
    stream: bool,
    auth: str,
    grace: float,
) -> dict[str, Any]:
    body = request_body(model, stream=stream)
    head = [
        f"POST {path} HTTP/1.1",
        f"Host: {HOST}:{port}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
    ]
    if auth:
        head.append(f"Authorization: Bearer {auth}")
    request = ("\r\n".join(head) + "\r\n\r\n").encode() + body
    loop = asyncio.get_running_loop()
    run = _Run(request, duration, max_requests, stream)
    conns: list[_Connection] = []
    for _ in range(connections):
        conn = _Connection(run)
        try:
            await asyncio.wait_for(loop.create_connection(lambda c=conn: c, HOST, port), 10)
        except OSError:
            run.errors["connect"] += 1
            continue
        conns.append(conn)
    run.active = len(conns)
    run.started = time.perf_counter()
    run.deadline = run.started + duration
    for conn in conns:
        conn.next_request()
    if conns:
        try:
            await asyncio.wait_for(asyncio.shield(run.finished), duration + grace)
        except TimeoutError:
            run.errors["timeout"] += sum(conn.abort() for conn in conns)
    elapsed = time.perf_counter() - run.started
    lat = sorted(x * 1000 for x in run.latencies)
    ttfb = sorted(x * 1000 for x in run.ttfb)
    return {
        "tool": "python",
        "connections": connections,
        "requests": len(lat),
        "errors": sum(run.errors.values()),
        "error_kinds": dict(run.errors),
        "seconds": elapsed,
        "rps": len(lat) / elapsed if elapsed > 0 else 0.0,
        "p50_ms": percentile(lat, 50),
        "p90_ms": percentile(lat, 90),
        "p99_ms": percentile(lat, 99),
        "max_ms": lat[-1] if lat else None,
        "ttfb_p50_ms": percentile(ttfb, 50),
        "ttfb_p99_ms": percentile(ttfb, 99),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/v1/chat/completions")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--max-requests", type=int, default=2_000_000)
    parser.add_argument("--grace", type=float, default=15.0)
    parser.add_argument("--model", default="gpt-4o-mini")
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--auth", default="", help="bearer token to send")
    args = parser.parse_args()
    coro = run_load(
        port=args.port,
        path=args.path,
        connections=args.connections,
        duration=args.duration,
        max_requests=args.max_requests,
        model=args.model,
        stream=args.stream,
        auth=args.auth,
        grace=args.grace,
    )
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(coro)
    else:
        result = uvloop.run(coro)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
