"""Shared pieces of the hardening tests (hostile input, faults, SSE edge cases, lifecycle).

Everything runs on 127.0.0.1, in the test's own event loop where that matters: uvicorn is
served in-loop (``serve_in_loop``) so that a ticker task can see whether the loop was
blocked, and so that a raw socket client, the proxy and a ``RawServer`` provider share one
clock. Every wait is bounded by ``GUARD_SECONDS`` (or a bound the issue itself states).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import uvicorn

from llm_proxy_mw import LLMProxy
from tests.asgi_helpers import GUARD_SECONDS, LOOPBACK, RawServer

__all__ = [
    "CANARY",
    "Exchange",
    "LoopTicker",
    "RefusingPort",
    "asgi_call",
    "collect_response",
    "config",
    "connector_of",
    "json_answers",
    "open_fds",
    "parse_response",
    "provider",
    "raw_exchange",
    "serve_in_loop",
    "server_url",
    "wait_until",
]

#: The provider key of every hardening test: it may reach the provider, nothing else.
CANARY = "sk-canary-hardening-0b7e14c9a2"


def provider(
    base_url: str,
    *,
    kind: str = "openai",
    models: list[str] | None = None,
    read: float = 10.0,
    connect: float = 2.0,
    retry: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One provider table, with test-sized timeouts and the canary key."""
    return {
        "kind": kind,
        "base_url": base_url,
        "api_key": CANARY,
        "models": models or ["*"],
        "timeout": {"connect": connect, "read": read, "pool": 2.0},
        "retry": {"backoff_base": 0.01, "backoff_max": 0.05, **(retry or {})},
        **extra,
    }


def config(providers: dict[str, dict[str, Any]], **top: Any) -> dict[str, Any]:
    """A proxy config whose metrics history lives in memory (no file in the working dir)."""
    return {"providers": providers, "store": {"url": "sqlite:///:memory:"}, **top}


class RefusingPort:
    """A loopback port that refuses every connection: bound, never listening.

    Unlike "a port that was free a moment ago", nobody else can take it while it is held.
    """

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind((LOOPBACK, 0))
        self.port: int = self._sock.getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> RefusingPort:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def json_answers(server_ref: list[RawServer], body: bytes = b'{"ok":true}') -> Any:
    """A ``RawServer`` handler answering every request of a keep-alive connection with 200.

    ``server_ref`` holds the server once it exists (the handler is made before it).
    """

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                await server_ref[0].read_request(reader)
            except asyncio.IncompleteReadError:
                return
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\n\r\n%s" % (len(body), body)
            )
            await writer.drain()

    return handler


@contextlib.asynccontextmanager
async def serve_in_loop(
    app: Any, *, http: str = "h11", **config_kwargs: Any
) -> AsyncIterator[uvicorn.Server]:
    """Serve ``app`` under uvicorn in this event loop, on a pre-bound loopback socket.

    The server's port is ``server.config.port``; the lifespan runs, so the proxy's pools are
    opened and closed as in production.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((LOOPBACK, 0))
    port = sock.getsockname()[1]
    settings: dict[str, Any] = {
        "lifespan": "on",
        "log_config": None,
        "log_level": "warning",
        "access_log": False,
        "timeout_graceful_shutdown": 2,
        **config_kwargs,
    }
    server = uvicorn.Server(uvicorn.Config(app, host=LOOPBACK, port=port, http=http, **settings))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(GUARD_SECONDS):
            while not server.started:
                if task.done():
                    task.result()
                    raise AssertionError("uvicorn exited during startup")
                await asyncio.sleep(0.005)
        yield server
    finally:
        server.should_exit = True
        async with asyncio.timeout(GUARD_SECONDS):
            await task
        sock.close()


def server_url(server: uvicorn.Server) -> str:
    return f"http://{LOOPBACK}:{server.config.port}"


async def raw_exchange(
    port: int,
    data: bytes,
    *,
    half_close: bool = False,
    wait: float = GUARD_SECONDS,
) -> bytes:
    """Write ``data`` on a fresh connection and read until the server closes it (or
    ``wait`` seconds pass: then what arrived so far). ``half_close`` sends a FIN after it."""
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    received = b""
    try:
        writer.write(data)
        await writer.drain()
        if half_close:
            writer.write_eof()
        with contextlib.suppress(TimeoutError, ConnectionError):
            async with asyncio.timeout(wait):
                while chunk := await reader.read(65536):
                    received += chunk
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return received


@dataclass
class RawResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name.lower()), None)


def parse_response(raw: bytes) -> RawResponse:
    """The first HTTP/1.1 response in ``raw`` (content-length framed, or up to the end)."""
    head, sep, rest = raw.partition(b"\r\n\r\n")
    assert sep, f"no complete response head in {raw[:200]!r}"
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.append((name.strip().lower(), value.strip()))
    length = next((int(v) for k, v in headers if k == "content-length"), None)
    return RawResponse(status, headers, rest if length is None else rest[:length])


async def collect_response(reader: asyncio.StreamReader) -> RawResponse:
    """Read one content-length framed response off ``reader``."""
    head = await reader.readuntil(b"\r\n\r\n")
    response = parse_response(head)
    length = int(response.header("content-length") or 0)
    response.body = await reader.readexactly(length)
    return response


@dataclass
class LoopTicker:
    """Measures the event loop's worst stall: a task that asks to wake every ``interval``.

    ``async with LoopTicker() as ticker: ...`` then ``ticker.max_lag`` is the longest a wake-up
    came late, in seconds.
    """

    interval: float = 0.005
    max_lag: float = 0.0
    ticks: int = 0
    _task: asyncio.Task[None] | None = field(default=None, repr=False)

    async def _run(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(self.interval)
            self.max_lag = max(self.max_lag, time.perf_counter() - before - self.interval)
            self.ticks += 1

    async def __aenter__(self) -> LoopTicker:
        self._task = asyncio.create_task(self._run())
        await asyncio.sleep(self.interval * 2)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def wait_until(predicate: Callable[[], bool], *, within: float = GUARD_SECONDS) -> None:
    """Poll ``predicate`` (state no helper announces, such as a server's task set)."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"still not true after {within} s: {predicate}")
        await asyncio.sleep(0.005)


@dataclass
class Exchange:
    """What one in-process request got back."""

    status: int = 0
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    complete: bool = False


async def asgi_call(app: Any, scope: dict[str, Any], body: bytes) -> Exchange:
    """Run one request through ``app`` like a server: the body, then ``http.disconnect``
    once the response is complete. Lighter than ``AsgiDriver`` for many concurrent calls."""
    done = asyncio.Event()
    result = Exchange()
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            result.status = message["status"]
            result.headers = list(message.get("headers", []))
        elif message["type"] == "http.response.body":
            result.body += message.get("body", b"")
            if not message.get("more_body", False):
                result.complete = True
                done.set()

    await app(scope, receive, send)
    return result


def open_fds() -> int:
    """How many file descriptors this process has open."""
    return len(os.listdir("/proc/self/fd"))


def connector_of(proxy: LLMProxy, name: str) -> Any:
    """The aiohttp connector of a provider's default transport (private: tests only)."""
    transport = next(p.transport for p in proxy.providers if p.name == name)
    session = transport._session  # type: ignore[attr-defined]
    return None if session is None else session.connector
