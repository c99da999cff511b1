"""Cancel a request's work the moment its client goes away.

Under ASGI spec 2.3 (uvicorn today) ``send`` after a disconnect silently does nothing, and
nothing at all is sent while we wait for a provider's first byte, so the only signal is an
``http.disconnect`` from ``receive``. Once a request has run for ``WATCH_AFTER`` seconds, a
small task waits for it and cancels the request's task; the cancellation is turned into
``ClientDisconnected`` on the way out, so the provider's request is dropped (and its
connection closed) at most ``WATCH_AFTER`` after the client left.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

from starlette.types import Receive

from llm_proxy_mw.context import ClientDisconnected, RequestContext

__all__ = ["WATCH_AFTER", "cancel_on_disconnect"]

#: Seconds a request runs before its client's connection is watched.
WATCH_AFTER = 0.05


class cancel_on_disconnect:  # noqa: N801 - used as a context manager, reads like a function
    """``async with cancel_on_disconnect(ctx, receive):`` guards the block.

    Nested guards for the same request are no-ops: the outermost one (Retry's, which also
    covers backoff sleeps) owns the watcher, so ``receive`` is never awaited twice at once.
    Messages other than the disconnect (a replayed body) are ignored.
    """

    __slots__ = (
        "_ctx",
        "_receive",
        "_task",
        "_timer",
        "_watcher",
        "_disconnected",
        "_owner",
    )

    def __init__(self, ctx: RequestContext, receive: Receive) -> None:
        self._ctx = ctx
        self._receive = receive
        self._timer: asyncio.TimerHandle | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._disconnected = False
        self._owner = False

    async def __aenter__(self) -> None:
        if self._ctx.watching_disconnect:
            return
        self._ctx.watching_disconnect = self._owner = True
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        # Most answers take less than this: they never pay for a watcher task (creating,
        # running and cancelling one was a tenth of the proxy's CPU per request). A slower
        # one gets its watcher then, so a disconnect is still noticed within this delay.
        self._timer = asyncio.get_running_loop().call_later(WATCH_AFTER, self._start_watching)

    def _start_watching(self) -> None:
        self._timer = None
        self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        self._disconnected = True
        self._task.cancel()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._owner:
            return
        self._ctx.watching_disconnect = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._watcher is not None:
            self._watcher.cancel()
            # The cancelled task's traceback refers back to this object through _watch's
            # frame: drop our side of that cycle so the request is freed at once.
            self._watcher = None
        if self._disconnected:
            self._task.uncancel()
            raise ClientDisconnected from None
