"""Cancel a request's work the moment its client goes away, or when its deadline passes.

Under ASGI spec 2.3 (uvicorn today) ``send`` after a disconnect silently does nothing, and
nothing at all is sent while we wait for a provider's first byte, so the only signal is an
``http.disconnect`` from ``receive``. Once a request has run for ``WATCH_AFTER`` seconds, a
task waits for it and cancels the request's task; the cancellation is turned into
``ClientDisconnected`` on the way out, so the provider's request is dropped (and its
connection closed) at most ``WATCH_AFTER`` after the client left.

Most requests are answered before ``WATCH_AFTER``, so a request does not get a timer of its
own for that: one ``_Sweep`` (a ``TimerWheel``) per loop ticks every ``WATCH_AFTER / 2``
while guards are pending and starts the watchers that are due (a watch starts 50-75 ms into
a request). A request answered in time costs a dict entry, where a timer handle cost
~10,000 instructions to create and cancel. Retry's deadline rides on the same guard: on a
timer of its own once the watch started (or from the start, if it is due within a tick of
the watch).

What lives while a request waits for a provider is what the garbage collector walks over and
over at high concurrency, so it is kept to one object, and later one task and one timer.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, cast

from starlette.types import Message, Receive

from llm_proxy_mw._timer_wheel import LoopWheels, TimerWheel
from llm_proxy_mw.context import ClientDisconnected, RequestContext

__all__ = ["WATCH_AFTER", "cancel_on_disconnect", "watched"]

#: Seconds a request runs before its client's connection is watched.
WATCH_AFTER = 0.05

#: How often a loop's sweep looks for watches that are due.
_TICKS = 2
_TICK = WATCH_AFTER / _TICKS

_INFINITY = float("inf")

#: What the guard's timer and watcher run in. Neither reads a context variable, and by
#: default each would get its own copy of the request's context.
_BARE = contextvars.Context()


class _Sweep(TimerWheel["cancel_on_disconnect"]):
    """The guards of one loop whose watch is not due yet: the wheel starts their watchers."""

    __slots__ = ()

    ticks = _TICKS

    def on_due(self, guard: cancel_on_disconnect) -> None:
        guard._watch_due()


#: One sweep per running loop (a host may run loops in several threads).
_sweeps = LoopWheels(_Sweep)

#: The requests a guard watches, by their context's ``id`` (the context lives at least as
#: long as its guard): a guard nested in another for the same request does nothing.
_watched: set[int] = set()


def watched(ctx: RequestContext) -> bool:
    """Whether a guard already watches this request: a nested one would do nothing, so a
    layer that may run alone can skip building one."""
    return id(ctx) in _watched


class cancel_on_disconnect:  # noqa: N801 - used as a context manager, reads like a function
    """``async with cancel_on_disconnect(ctx, receive, deadline=...):`` guards the block.

    Nested guards for the same request are no-ops: the outermost one (Retry's, which also
    covers backoff sleeps) owns the watcher, so ``receive`` is never awaited twice at once.
    Messages other than the disconnect (a replayed body) are ignored.

    ``deadline`` (seconds from now) cancels the block when it passes, until
    ``disarm_deadline()``; the block catches the ``CancelledError`` and asks
    ``deadline_expired()`` whether it was the deadline's (then the cancellation is spent).
    """

    __slots__ = (
        "_ctx",
        "_receive",
        "_loop",
        "_task",
        "_timer",
        "_timer_at",
        "_watch_at",
        "_deadline_at",
        "_watcher",
        "_disconnected",
        "_expiring",
        "_cancelling",
        "_owner",
        "_sweep",
    )

    def __init__(
        self, ctx: RequestContext, receive: Receive, *, deadline: float | None = None
    ) -> None:
        self._ctx = ctx
        self._receive = receive
        self._timer: asyncio.TimerHandle | None = None
        self._watcher: asyncio.Task[Message] | None = None
        self._disconnected = False
        self._expiring = False
        self._owner = False
        self._deadline_at = deadline
        self._sweep: _Sweep | None = None

    async def __aenter__(self) -> cancel_on_disconnect:
        key = id(self._ctx)
        if key in _watched:
            return self
        # One lookup of the running loop (each makes a system call to check the process id).
        self._loop = loop = asyncio.get_running_loop()
        task = asyncio.current_task(loop)
        assert task is not None
        self._task = task
        _watched.add(key)
        self._owner = True
        self._cancelling = task.cancelling()
        now = loop.time()
        # Most answers take less than this: they never pay for a watcher task (creating,
        # running and cancelling one was a tenth of the proxy's CPU per request). A slower
        # one gets its watcher then, so a disconnect is still noticed within this delay.
        self._watch_at = now + WATCH_AFTER
        if self._deadline_at is not None:
            self._deadline_at += now
            if self._deadline_at < self._watch_at + _TICK:
                self._schedule()  # the sweep could start the watch after the deadline
                return self
        self._sweep = _sweeps.get(loop, WATCH_AFTER)
        self._sweep.add(self, now)
        return self

    def _watch_due(self) -> None:
        """The sweep's call: start watching, and keep time for the deadline from now on."""
        self._sweep = None
        self._watch()
        self._schedule()

    def _schedule(self) -> None:
        at = self._deadline_at if self._deadline_at is not None else _INFINITY
        if self._watcher is None and self._watch_at < at:
            at = self._watch_at
        if at != _INFINITY:
            self._timer_at = at
            self._timer = self._loop.call_at(at, self._on_timer, context=_BARE)

    def _on_timer(self) -> None:
        self._timer = None
        due = self._timer_at
        if self._watcher is None and self._watch_at <= due:
            self._watch()
        if self._deadline_at is not None and self._deadline_at <= due:
            self._deadline_at = None
            self._expiring = True
            self._task.cancel()
            return
        self._schedule()

    def _watch(self) -> None:
        # uvicorn's receive awaited directly: after the body, its next message is the
        # disconnect (anything else, a replayed body, is ignored and waited past).
        receiving = cast(Coroutine[Any, Any, Message], self._receive())
        self._watcher = watcher = self._loop.create_task(receiving, context=_BARE)
        watcher.add_done_callback(self._on_message, context=_BARE)

    def _on_message(self, watcher: asyncio.Task[Message]) -> None:
        if watcher is not self._watcher or watcher.cancelled() or watcher.exception():
            return
        if watcher.result()["type"] != "http.disconnect":
            self._watch()
            return
        self._disconnected = True
        self._task.cancel()

    def disarm_deadline(self) -> None:
        """The client is being answered: the deadline no longer applies."""
        if self._deadline_at is None:
            return
        self._deadline_at = None
        if self._timer is not None and self._watcher is not None:
            self._timer.cancel()
            self._timer = None

    def deadline_expired(self) -> bool:
        """Whether the ``CancelledError`` being handled is the deadline's; if so, it is spent
        (like ``asyncio.timeout``, a cancellation from elsewhere still propagates)."""
        if not self._expiring or self._disconnected:
            return False
        self._expiring = False
        return self._task.uncancel() <= self._cancelling

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._owner:
            return
        _watched.discard(id(self._ctx))
        if self._sweep is not None:
            del self._sweep.pending[self]
            self._sweep = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        watcher = self._watcher
        if watcher is not None:
            self._watcher = None
            if not watcher.done():
                watcher.cancel()
        if self._disconnected:
            if self._expiring:
                self._task.uncancel()
            self._task.uncancel()
            raise ClientDisconnected from None
