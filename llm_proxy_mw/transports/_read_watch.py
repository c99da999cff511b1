"""``timeout.read`` for every exchange of one transport, on one timer.

aiohttp's own ``sock_read`` cancels and re-creates a timer on every socket read: about
3 µs each under uvloop, two per JSON answer and one per read of a streamed one, as much as
the rest of the transport's work per chunk. Instead, each exchange notes when its current
wait for data began (``Watched.waiting_since``, a clock read and two attribute stores), and
one timer per transport ticks while exchanges are in flight, at an eighth of the bound: a
wait that has lasted the whole bound when a tick sees it is cut, so a stall is cut between
``read`` and ``read`` plus a tick after it began. Only then is anything cancelled: the task
that waits, which raises the transport's read timeout (``timed_out()`` tells that
cancellation from any other).
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

__all__ = ["ReadWatch", "Watched"]

#: What the timer runs in: it reads no context variable, and by default each timer would
#: copy the context of the request that armed it.
_BARE = contextvars.Context()

#: Ticks per bound: the precision of the cut, against wake-ups per second (16 / 600 s for
#: the default bound).
_TICKS = 8

#: The loop's clock has millisecond steps: a wait this close to the bound has lasted it.
_SLACK = 0.001


class Watched:
    """One exchange: ``waiting_since`` (loop time) while it waits for data, else ``None``.

    ``task`` is the task that waits; whoever sets ``waiting_since`` sets it too.
    """

    __slots__ = ("waiting_since", "task", "_expired")

    def __init__(self, task: asyncio.Task[Any], waiting_since: float | None) -> None:
        self.task = task
        self.waiting_since = waiting_since
        self._expired = False

    def expire(self) -> None:
        task = self.task
        if task.cancelling():
            return  # already being cancelled for another reason: let that one finish
        self._expired = True
        self.waiting_since = None
        task.cancel()

    def timed_out(self) -> bool:
        """Whether the ``CancelledError`` being handled is this exchange's read timeout; if
        so it is spent. A cancellation from elsewhere as well still propagates."""
        if not self._expired:
            return False
        self._expired = False
        return self.task.uncancel() == 0


class ReadWatch:
    """The exchanges of one transport in flight, and the timer that cuts stalled waits."""

    __slots__ = ("_read", "_tick", "_loop", "_timer", "exchanges")

    def __init__(self, read: float) -> None:
        self._read = read
        self._tick = read / _TICKS
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.exchanges: set[Watched] = set()

    def add(self, exchange: Watched, loop: asyncio.AbstractEventLoop) -> None:
        self.exchanges.add(exchange)
        if self._timer is None or self._loop is not loop:  # not ticking, or on a closed loop
            self._loop = loop
            self._timer = loop.call_later(self._tick, self._on_tick, context=_BARE)

    def _on_tick(self) -> None:
        exchanges = self.exchanges
        if not exchanges:
            self._timer = None  # idle: the next exchange arms it again
            return
        assert self._loop is not None
        cut_before = self._loop.time() - self._read + _SLACK
        for exchange in tuple(exchanges):
            since = exchange.waiting_since
            if since is not None and since <= cut_before:
                exchange.expire()
        self._timer = self._loop.call_later(self._tick, self._on_tick, context=_BARE)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.exchanges.clear()
