"""What the benchmark's raw-asyncio fake providers share: HTTP/1.1 framing and serving."""

from __future__ import annotations

import asyncio
import email.utils
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar, cast

import httptools

_T = TypeVar("_T")


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def head(status: str, headers: list[tuple[str, str]], *, server: str) -> bytes:
    """A response head with ``Server`` and ``Date``."""
    date = email.utils.formatdate(usegmt=True)
    lines = [f"HTTP/1.1 {status}", f"Server: {server}", f"Date: {date}"]
    lines += [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class RequestProtocol(asyncio.Protocol):
    """One client connection, parsed by httptools: URL and body of the request being read.

    Subclasses answer in ``on_message_complete``; ``bad_request`` answers what does not parse.
    """

    bad_request = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"

    def __init__(self) -> None:
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""
        self._body: list[bytes] = []
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only look alike.
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._transport = None

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            if self._transport is not None:
                self._transport.write(self.bad_request)
                self._transport.close()

    def on_message_begin(self) -> None:
        self._url = b""
        self._body = []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def _write(self, parts: list[bytes], keep_alive: bool) -> None:
        """Answer; also what a delayed answer's timer calls, so that timer is spent."""
        self._timer = None
        transport = self._transport
        if transport is None:
            return
        # One write per part: each SSE event leaves as its own send, as a real provider's do.
        for part in parts:
            transport.write(part)
        if not keep_alive:
            transport.close()


async def serve(factory: Callable[[], asyncio.Protocol], port: int) -> None:
    """Serve on 127.0.0.1 and print the bound port (0 picks a free one) for the parent."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(factory, "127.0.0.1", port, backlog=4096, reuse_address=True)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


def run(main: Coroutine[Any, Any, _T]) -> _T:
    """Run on uvloop when it is installed; return what ``main`` returns."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)
