"""The fake upstream LLM provider for the end-to-end tests: the benchmarks' scripted fake
provider (``benchmarks._scripted``), served on loopback from an event loop in a thread.

>>> provider = FakeProvider()
>>> with FakeProviderServer(provider) as srv:
...     provider.script(Action(status=429, headers={"retry-after": "1"}), Action(cut_after=2))
...     ...  # exercise the proxy pointed at srv.url
...     assert provider.wait_for_requests(2)[0].headers["authorization"] == "Bearer x"
"""

from __future__ import annotations

import asyncio
import socket
import threading

from benchmarks._scripted import (
    Action,
    FakeProvider,
    RecordedRequest,
    StreamHold,
    ToolCall,
    Turn,
    TurnUsage,
)
from benchmarks._scripted_server import ScriptedProtocol

__all__ = [
    "Action",
    "FakeProvider",
    "FakeProviderServer",
    "RecordedRequest",
    "StreamHold",
    "ToolCall",
    "Turn",
    "TurnUsage",
]

_LOOPBACK = "127.0.0.1"


class FakeProviderServer:
    """Serves ``app`` on a free loopback port until the ``with`` block ends; ``url`` is its
    base URL."""

    def __init__(self, app: FakeProvider | None = None, *, timeout: float = 10.0) -> None:
        self.app = app if app is not None else FakeProvider()
        self.port = 0
        self._timeout = timeout
        self._open: set[ScriptedProtocol] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        """Base URL without trailing slash, e.g. ``http://127.0.0.1:54321``."""
        return f"http://{_LOOPBACK}:{self.port}"

    def __enter__(self) -> FakeProviderServer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((_LOOPBACK, 0))
        self.port = sock.getsockname()[1]
        loop = self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=loop.run_forever, name=f"fake-provider-{self.port}", daemon=True
        )
        self._thread.start()
        start = loop.create_server(lambda: ScriptedProtocol(self.app, self._open), sock=sock)
        self._server = asyncio.run_coroutine_threadsafe(start, loop).result(self._timeout)
        return self

    async def _close(self) -> None:
        assert self._server is not None
        self._server.close()
        tasks = [p.task for p in self._open if p.task is not None]
        for protocol in list(self._open):
            protocol.abort()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._server.wait_closed()
        await asyncio.sleep(0)  # let the aborted transports report connection_lost

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop serving: drop every connection (held streams too), join the thread. Idempotent."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        self._loop = self._thread = None
        asyncio.run_coroutine_threadsafe(self._close(), loop).result(self._timeout)
        self.app.reset()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(self._timeout)
        loop.close()
