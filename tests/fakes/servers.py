"""Run any ASGI app under a real uvicorn server on loopback, for end-to-end tests.

In-process ASGI transports (``httpx.ASGITransport``) hide exactly the behaviour a proxy has to
get right: chunked framing, connection aborts, keep-alive, real sockets and backpressure. This
module starts a genuine uvicorn server in a background thread (with its own event loop) on a
pre-bound ``127.0.0.1`` socket, so the port is known before the server starts and there is no
"find a free port, then bind it" race. The server is shut down and the thread joined on exit, so
nothing is leaked, even under ``pytest -W error``.
"""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType
from typing import Any, Literal

import uvicorn

__all__ = ["UvicornServer", "free_port"]

_LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """Return a TCP port that was free on 127.0.0.1 a moment ago.

    Inherently racy (another process may grab it); prefer ``UvicornServer`` which keeps its
    socket bound. Useful for "nothing listens here" connection-refused tests.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


class UvicornServer:
    """Context manager running ``app`` under uvicorn in a daemon thread.

    >>> with UvicornServer(app) as srv:
    ...     httpx.get(srv.url + "/health")
    """

    def __init__(
        self,
        app: Any,
        *,
        lifespan: Literal["on", "off", "auto"] = "auto",
        http: str = "h11",
        loop: str = "asyncio",
        log_level: str = "warning",
        startup_timeout: float = 10.0,
        shutdown_timeout: float = 10.0,
        graceful_shutdown: float = 3.0,
        **config_kwargs: Any,
    ) -> None:
        self.app = app
        self.startup_timeout = startup_timeout
        self.shutdown_timeout = shutdown_timeout
        self._config_kwargs: dict[str, Any] = {
            "lifespan": lifespan,
            "http": http,
            "loop": loop,
            "log_level": log_level,
            "log_config": None,  # do not dictConfig() the test process' logging
            "access_log": False,
            "timeout_graceful_shutdown": graceful_shutdown,
            **config_kwargs,
        }
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.server: uvicorn.Server | None = None
        self.port: int = 0

    @property
    def url(self) -> str:
        """Base URL without trailing slash, e.g. ``http://127.0.0.1:54321``."""
        if self.server is None:
            raise RuntimeError("UvicornServer is not running")
        return f"http://{_LOOPBACK}:{self.port}"

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("UvicornServer already started")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((_LOOPBACK, 0))
            sock.listen(128)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, host=_LOOPBACK, port=self.port, **self._config_kwargs)
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name=f"uvicorn-{self.port}", daemon=True)
        self._thread.start()

        deadline = time.monotonic() + self.startup_timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                reason = "did not start in time" if self._thread.is_alive() else "exited early"
                self.stop()
                raise RuntimeError(f"uvicorn {reason} (port {self.port})") from self._error
            time.sleep(0.01)

    def _run(self) -> None:
        assert self.server is not None and self._sock is not None
        try:
            self.server.run(sockets=[self._sock])
        except BaseException as exc:  # SystemExit on startup failure; surfaced by start()
            self._error = exc

    def stop(self) -> None:
        """Ask uvicorn to exit, wait for the thread, release the socket. Idempotent."""
        thread, server = self._thread, self.server
        if thread is not None and server is not None:
            server.should_exit = True
            thread.join(self.shutdown_timeout)
            if thread.is_alive():
                server.force_exit = True
                thread.join(self.shutdown_timeout)
        if self._sock is not None:
            self._sock.close()  # uvicorn closes it on clean shutdown; closing twice is fine
            self._sock = None
        self._thread = None
        if thread is not None and thread.is_alive():
            raise RuntimeError(f"uvicorn thread on port {self.port} did not stop")

    def __enter__(self) -> UvicornServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
