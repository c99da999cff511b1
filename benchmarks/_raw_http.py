"""What the benchmark's raw-asyncio fake providers share: HTTP/1.1 framing and serving."""

from __future__ import annotations

import asyncio
import email.utils
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

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
