"""One timer for many deadlines of the same length, most of which are met.

The disconnect guard's watch (``WATCH_AFTER`` into a request) and the request body's
deadline (``request_body_timeout`` from the start of its read) are set on nearly every
request and met by nearly every one: a timer handle each, created and then cancelled, would
cost thousands of instructions for nothing. Each is instead an entry in the wheel of its
loop and delay, an insertion-ordered dict: an entry set, and deleted when met. Every entry
of a wheel waits the same delay, so insertion order is due order, and one timer, ticking
while entries are pending, hands the due ones at the front to ``on_due``: an entry is due
between its delay and its delay plus a tick after it was added.

The transport's read timeout (``transports/_read_watch.py``) keeps a timer of its own kind:
its deadline moves with every chunk read, which on a wheel would cost a dict entry set and
deleted per chunk instead of two attribute stores.
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import ClassVar, Generic, TypeVar

__all__ = ["LoopWheels", "TimerWheel"]

#: What the timer runs in: it reads no context variable, and by default each timer would
#: copy the context of the request that armed it.
_BARE = contextvars.Context()

K = TypeVar("K")
W = TypeVar("W", bound="TimerWheel")  # type: ignore[type-arg]


class TimerWheel(Generic[K]):
    """The entries of one loop that wait ``delay`` seconds, oldest first, and their timer.

    Subclasses say what becomes of a due entry (``on_due``) and how finely time is cut
    (``ticks`` per delay: the precision, against wake-ups while entries are pending).
    """

    __slots__ = ("loop", "delay", "tick", "pending", "_timer")

    ticks: ClassVar[int] = 8

    def __init__(self, loop: asyncio.AbstractEventLoop, delay: float) -> None:
        self.loop = loop
        self.delay = delay
        self.tick = delay / self.ticks
        #: The entries and when each is due (loop time); ``del`` one to meet it.
        self.pending: dict[K, float] = {}
        self._timer: asyncio.TimerHandle | None = None

    def add(self, key: K, now: float) -> None:
        """Start ``key``'s wait; ``now`` is the loop's time."""
        self.pending[key] = now + self.delay
        if self._timer is None:
            self._timer = self.loop.call_later(self.tick, self._on_tick, context=_BARE)

    def on_due(self, key: K) -> None:
        """``key`` waited its delay; it is no longer pending."""
        raise NotImplementedError

    def _on_tick(self) -> None:
        now = self.loop.time()
        due = []
        for key, at in self.pending.items():
            if at > now:
                break
            due.append(key)
        for key in due:
            del self.pending[key]
            self.on_due(key)
        self._timer = (
            self.loop.call_later(self.tick, self._on_tick, context=_BARE) if self.pending else None
        )


class LoopWheels(Generic[W]):
    """The wheels of one kind: one per running loop and delay (a host may run loops in
    several threads, and mount proxies configured differently)."""

    __slots__ = ("_kind", "_wheels", "_last")

    def __init__(self, kind: type[W]) -> None:
        self._kind = kind
        self._wheels: dict[tuple[asyncio.AbstractEventLoop, float], W] = {}
        #: The one used last: usually the only one.
        self._last: W | None = None

    def get(self, loop: asyncio.AbstractEventLoop, delay: float) -> W:
        wheel = self._last
        if wheel is None or wheel.loop is not loop or wheel.delay != delay:
            wheel = self._wheels.get((loop, delay))
            if wheel is None:
                # A closed loop's wheels, and whatever they held, go with it (with pop:
                # another thread may drop them first).
                for closed in [key for key in self._wheels if key[0].is_closed()]:
                    self._wheels.pop(closed, None)
                wheel = self._wheels[loop, delay] = self._kind(loop, delay)
            self._last = wheel
        return wheel
