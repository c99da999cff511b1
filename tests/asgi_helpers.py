"""Helpers for driving ASGI apps message by message and for hand-written upstream servers.

``httpx.ASGITransport`` buffers a whole response, so it cannot show whether a layer streams.
``AsgiDriver`` runs an app the way a server does instead: ``receive`` answers from a queue the
test fills, and every message the app sends is recorded, in order, as it is sent.
``ScriptedTransport`` is an ``UpstreamTransport`` whose headers and body chunks the test
releases one at a time. ``RawServer`` is a tiny TCP server on loopback whose bytes the test
writes by hand (resets, stalls, redirects, chunked framing).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from starlette.types import ASGIApp, Message, Scope

from llm_proxy_mw.transports import UpstreamRequest, UpstreamResponse

__all__ = [
    "AsgiDriver",
    "RawRequest",
    "RawServer",
    "ScriptedResponse",
    "ScriptedTransport",
    "GUARD_SECONDS",
    "eventually",
    "http_scope",
    "read_request",
    "reset_connection",
    "sse_events",
]

LOOPBACK = "127.0.0.1"


#: Bounds every wait in these helpers, only so that a broken test fails instead of hanging.
GUARD_SECONDS = 5.0


class _Changes:
    """Wakes ``eventually`` whenever a helper's recorded state changes."""

    def __init__(self) -> None:
        self._waiters: list[asyncio.Event] = []

    def fire(self) -> None:
        for waiter in self._waiters:
            waiter.set()

    async def until(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            waiter = asyncio.Event()
            self._waiters.append(waiter)
            try:
                await waiter.wait()
            finally:
                self._waiters.remove(waiter)


_changes = _Changes()


async def eventually(predicate: Callable[[], bool]) -> None:
    """Wait until ``predicate()``, over state the helpers record, holds."""
    async with asyncio.timeout(GUARD_SECONDS):
        await _changes.until(predicate)


def http_scope(
    path: str = "/v1/chat/completions",
    *,
    method: str = "POST",
    headers: Iterable[tuple[str, str]] = (("content-type", "application/json"),),
    query_string: bytes = b"",
    body: bytes | None = None,
) -> Scope:
    """An HTTP scope as uvicorn builds it (ASGI spec 2.3); with ``body``, its
    ``content-length`` is declared too."""
    if body is not None:
        headers = (*headers, ("content-length", str(len(body))))
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": query_string,
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers],
        "client": (LOOPBACK, 50000),
        "server": (LOOPBACK, 8000),
    }


class AsgiDriver:
    """Runs one request through an ASGI app with scripted ``receive`` and recorded ``send``.

    ``async with AsgiDriver(app, scope) as driver:`` cancels the app on exit if a failing
    test left it running.
    """

    def __init__(
        self, app: ASGIApp, scope: Scope, *, disconnect_when_complete: bool = False
    ) -> None:
        self.app = app
        self.scope = scope
        #: Like uvicorn: once the response is complete, ``receive`` says ``http.disconnect``.
        self.disconnect_when_complete = disconnect_when_complete
        self.sent: list[Message] = []
        self.receive_calls = 0
        self._incoming: asyncio.Queue[Message] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    # -- what the client does ---------------------------------------------------------
    def request(self, *parts: bytes) -> None:
        """Queue the request body as one ``http.request`` message per part."""
        parts = parts or (b"",)
        for i, part in enumerate(parts):
            more = i < len(parts) - 1
            self._incoming.put_nowait({"type": "http.request", "body": part, "more_body": more})

    def request_part(self, body: bytes, *, more_body: bool) -> None:
        self._incoming.put_nowait({"type": "http.request", "body": body, "more_body": more_body})

    def disconnect(self) -> None:
        self._incoming.put_nowait({"type": "http.disconnect"})

    # -- the server side ----------------------------------------------------------------
    async def receive(self) -> Message:
        self.receive_calls += 1
        if self.disconnect_when_complete and self._incoming.empty():
            await _changes.until(lambda: self.complete or not self._incoming.empty())
            if self._incoming.empty():
                return {"type": "http.disconnect"}
        message = await self._incoming.get()
        _changes.fire()
        return message

    @property
    def pending(self) -> int:
        """Messages queued for the app that it has not received yet."""
        return self._incoming.qsize()

    async def send(self, message: Message) -> None:
        # No await here: a server's send does not yield unless its buffer is full.
        self.sent.append(message)
        _changes.fire()

    def start(self) -> AsgiDriver:
        self.task = asyncio.get_running_loop().create_task(
            self.app(self.scope, self.receive, self.send)
        )
        return self

    async def finish(self) -> None:
        """Wait for the app to return; re-raises what it raised."""
        assert self.task is not None
        async with asyncio.timeout(GUARD_SECONDS):
            await asyncio.wait([self.task])
        self.task.result()

    async def run(self, *parts: bytes) -> None:
        """Send the body, run the app to the end."""
        self.request(*parts)
        self.start()
        await self.finish()

    async def __aenter__(self) -> AsgiDriver:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
            await asyncio.wait([self.task])
        if self.task is not None and self.task.done() and not self.task.cancelled():
            self.task.exception()  # retrieved, so asyncio does not log it at GC

    # -- what the client saw ------------------------------------------------------------
    @property
    def start_message(self) -> Message:
        starts = [m for m in self.sent if m["type"] == "http.response.start"]
        assert len(starts) == 1, self.sent
        return starts[0]

    @property
    def status(self) -> int:
        status: int = self.start_message["status"]
        return status

    @property
    def headers(self) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in self.start_message.get("headers", [])}

    @property
    def body_messages(self) -> list[Message]:
        return [m for m in self.sent if m["type"] == "http.response.body"]

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.body_messages)

    @property
    def complete(self) -> bool:
        """Whether the app ended the response (a body message without ``more_body``)."""
        return any(not m.get("more_body", False) for m in self.body_messages)

    def json(self) -> Any:
        return json.loads(self.body)


class ScriptedResponse:
    """An upstream response whose body chunks the test feeds, one ``read_chunk`` each."""

    def __init__(
        self, status: int = 200, headers: Sequence[tuple[str, str]] = (), *, close_yields: int = 0
    ) -> None:
        self.status = status
        #: How many times ``close`` yields to the loop, as a real pool's release does.
        self.close_yields = close_yields
        self.closed_fully = False
        self.headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        self._chunks: asyncio.Queue[bytes | BaseException] = asyncio.Queue()
        self.reads = 0
        self.waiting = False
        self.read_cancelled = False
        self.closed = 0

    def feed(self, *chunks: bytes) -> None:
        for chunk in chunks:
            self._chunks.put_nowait(chunk)

    def end(self) -> None:
        self._chunks.put_nowait(b"")

    def fail(self, error: BaseException) -> None:
        self._chunks.put_nowait(error)

    async def read_chunk(self) -> bytes:
        self.waiting = True
        _changes.fire()
        try:
            item = await self._chunks.get()
        except asyncio.CancelledError:
            self.read_cancelled = True
            raise
        finally:
            self.waiting = False
            _changes.fire()
        if isinstance(item, BaseException):
            raise item
        self.reads += 1
        return item

    async def _close(self) -> None:
        self.closed += 1
        for _ in range(self.close_yields):
            await asyncio.sleep(0)
        self.closed_fully = True

    def upstream(self) -> UpstreamResponse:
        return UpstreamResponse(self.status, self.headers, self.read_chunk, self._close)


class ScriptedTransport:
    """An ``UpstreamTransport`` whose ``send`` waits for the test to script its outcome."""

    def __init__(self) -> None:
        self.requests: list[UpstreamRequest] = []
        self._outcomes: asyncio.Queue[ScriptedResponse | BaseException] = asyncio.Queue()
        self.in_send = False
        self.send_cancelled = False
        self.closed = False

    def respond(self, outcome: ScriptedResponse | BaseException) -> None:
        self._outcomes.put_nowait(outcome)

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        self.requests.append(request)
        self.in_send = True
        _changes.fire()
        try:
            outcome = await self._outcomes.get()
        except asyncio.CancelledError:
            self.send_cancelled = True
            raise
        finally:
            self.in_send = False
            _changes.fire()
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome.upstream()

    async def aclose(self) -> None:
        self.closed = True


def sse_events(body: bytes) -> list[dict[str, str]]:
    """Split an SSE body into events: ``{"event": ..., "data": ...}`` (blank-line framed)."""
    events = []
    for block in body.replace(b"\r\n", b"\n").split(b"\n\n"):
        if not block.strip():
            continue
        event: dict[str, str] = {}
        for line in block.decode().split("\n"):
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            event[field] = event[field] + "\n" + value if field in event else value
        events.append(event)
    return events


# -- raw upstream servers -------------------------------------------------------------------


@dataclass
class RawRequest:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name.lower()), None)


async def read_request(reader: asyncio.StreamReader) -> RawRequest:
    """Read one HTTP/1.1 request (body framed by content-length) off the wire."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers = []
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers.append((name.strip().lower(), value.strip()))
    length = int(next((v for k, v in headers if k == "content-length"), "0"))
    body = await reader.readexactly(length) if length else b""
    return RawRequest(method, target, headers, body)


def reset_connection(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (SO_LINGER 0) instead of a FIN."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawServer:
    """``async with RawServer(handler) as server:`` serves ``handler`` on ``server.url``.

    Each connection runs ``handler(reader, writer)``; the writer is closed after it. Requests
    read with ``server.read_request`` are recorded. A handler's own failure (an assertion)
    is re-raised on exit; on exit, handlers still running are cancelled.
    """

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[RawRequest] = []
        self.connections = 0
        self.port = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._errors: list[BaseException] = []
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    async def read_request(self, reader: asyncio.StreamReader) -> RawRequest:
        request = await read_request(reader)
        self.requests.append(request)
        _changes.fire()
        return request

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        _changes.fire()
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the client went away (several tests provoke it), or the server is closing
        except Exception as exc:  # surfaced by __aexit__, so a failing handler fails the test
            self._errors.append(exc)
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, LOOPBACK, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        await self._server.wait_closed()
        if self._errors and exc is None:
            raise self._errors[0]
