"""A deadline for receiving a whole request body, on one timer per event loop.

Without one, a client trickling a body (a byte now and then, or none after the headers)
holds its connection and its request task for as long as it likes. Most bodies come with
their request and are read without waiting, so a timer of their own (created, then
cancelled: thousands of instructions) would be spent for nothing. Each read instead notes
its task and when it must end; one sweep per loop and timeout ticks while reads are pending,
at an eighth of the timeout, and cancels the task of a read still pending past its deadline.
A stalled body is cut between the timeout and the timeout plus a tick; ``expired`` tells the
reader that the cancellation was the deadline's, which it then answers with a 408.
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

__all__ = ["BodyDeadline", "start_body_read"]

#: Ticks per timeout: the precision of the cut, against wake-ups while bodies are pending.
_TICKS = 8

#: What the timer runs in: it reads no context variable, and by default each timer would
#: copy the context of the request that armed it.
_BARE = contextvars.Context()

Task = asyncio.Task[Any]


class BodyDeadline:
    """The body reads of one loop that share one timeout, oldest first, and their timer.

    Every read waits the same timeout, so arrival order is due order, and a tick stops at
    the first read that is not due.
    """

    __slots__ = ("loop", "timeout", "tick", "pending", "timer", "_expired")

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self.loop = loop
        self.timeout = timeout
        self.tick = timeout / _TICKS
        #: The reads in progress and when each is due (loop time).
        self.pending: dict[Task, float] = {}
        self.timer: asyncio.TimerHandle | None = None
        self._expired: set[Task] = set()

    def finish(self, task: Task) -> None:
        """The read ended (read whole, refused, or cut)."""
        self.pending.pop(task, None)
        if self._expired:  # a receive that swallowed the cancellation must not leak its task
            self._expired.discard(task)

    def expired(self, task: Task) -> bool:
        """Whether the ``CancelledError`` being handled is this deadline's; if so it is spent.
        A cancellation from elsewhere as well still propagates."""
        if task not in self._expired:
            return False
        self._expired.discard(task)
        return task.uncancel() == 0

    def on_tick(self) -> None:
        now = self.loop.time()
        due = []
        for task, at in self.pending.items():
            if at > now:
                break
            due.append(task)
        for task in due:
            del self.pending[task]
            if not task.cancelling():  # else it is ending anyway: let that cancellation be
                self._expired.add(task)
                task.cancel()
        self.timer = (
            self.loop.call_later(self.tick, self.on_tick, context=_BARE) if self.pending else None
        )


#: One deadline per running loop and timeout (a host may run loops in several threads, and
#: mount proxies configured differently).
_deadlines: dict[tuple[asyncio.AbstractEventLoop, float], BodyDeadline] = {}
#: The one used last: usually the only one.
_last: BodyDeadline | None = None


def start_body_read(timeout: float) -> tuple[BodyDeadline, Task]:
    """Note the current task as reading a body, due ``timeout`` seconds from now; hand its
    deadline and the task to ``finish`` and ``expired``."""
    global _last
    task = asyncio.current_task()
    assert task is not None
    loop = task.get_loop()
    deadline = _last
    if deadline is None or deadline.loop is not loop or deadline.timeout != timeout:
        deadline = _last = _deadline_for(loop, timeout)
    deadline.pending[task] = loop.time() + timeout
    if deadline.timer is None:
        deadline.timer = loop.call_later(deadline.tick, deadline.on_tick, context=_BARE)
    return deadline, task


def _deadline_for(loop: asyncio.AbstractEventLoop, timeout: float) -> BodyDeadline:
    deadline = _deadlines.get((loop, timeout))
    if deadline is None:
        # A closed loop's deadlines, and whatever they held, go with it.
        for closed in [key for key in _deadlines if key[0].is_closed()]:
            _deadlines.pop(closed, None)
        deadline = _deadlines[loop, timeout] = BodyDeadline(loop, timeout)
    return deadline
