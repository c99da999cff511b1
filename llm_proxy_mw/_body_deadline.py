"""A deadline for receiving a whole request body, on one timer per event loop and timeout.

Without one, a client trickling a body (a byte now and then, or none after the headers)
holds its connection and its request task for as long as it likes. Most bodies come with
their request and are read without waiting, so a timer of their own would be spent for
nothing: each read is an entry of a ``TimerWheel`` instead, which cancels the task of a read
still pending past its deadline. A stalled body is cut between the timeout and the timeout
plus a tick (an eighth of it); ``expired`` tells the reader that the cancellation was the
deadline's, which it then answers with a 408.
"""

from __future__ import annotations

import asyncio
from typing import Any

from llm_proxy_mw._timer_wheel import LoopWheels, TimerWheel

__all__ = ["BodyDeadline", "start_body_read"]

Task = asyncio.Task[Any]


class BodyDeadline(TimerWheel[Task]):
    """The body reads of one loop that share one timeout: the reading tasks."""

    __slots__ = ("_expired",)

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        super().__init__(loop, timeout)
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

    def on_due(self, task: Task) -> None:
        if not task.cancelling():  # else it is ending anyway: let that cancellation be
            self._expired.add(task)
            task.cancel()


_deadlines = LoopWheels(BodyDeadline)


def start_body_read(timeout: float) -> tuple[BodyDeadline, Task]:
    """Note the current task as reading a body, due ``timeout`` seconds from now; hand its
    deadline and the task to ``finish`` and ``expired``."""
    task = asyncio.current_task()
    assert task is not None
    loop = task.get_loop()
    deadline = _deadlines.get(loop, timeout)
    deadline.add(task, loop.time())
    return deadline, task
