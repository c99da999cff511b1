"""The timer wheel under the disconnect guard's watch and the request body deadline.

Entries of a wheel wait the same delay, so they come due in the order they were added;
one timer ticks while any is pending, and none when the wheel is empty.
"""

from __future__ import annotations

import asyncio

import pytest

from llm_proxy_mw._timer_wheel import LoopWheels, TimerWheel

pytestmark = pytest.mark.anyio

DELAY = 0.02
#: Every wait for the wheel is bounded by this (seconds).
BOUND = 5.0


class Recording(TimerWheel[str]):
    """Notes each due entry and the loop time it was handed over."""

    __slots__ = ("due", "all_due")

    def __init__(self, loop: asyncio.AbstractEventLoop, delay: float) -> None:
        super().__init__(loop, delay)
        self.due: list[tuple[str, float]] = []
        self.all_due = asyncio.Event()

    def on_due(self, key: str) -> None:
        self.due.append((key, self.loop.time()))
        if not self.pending:
            self.all_due.set()


async def test_entries_come_due_in_order_after_their_delay_and_the_timer_stops() -> None:
    loop = asyncio.get_running_loop()
    wheel = Recording(loop, DELAY)
    added = {}
    for key in ("a", "b", "c"):
        added[key] = loop.time()
        wheel.add(key, added[key])
        await asyncio.sleep(0)
    async with asyncio.timeout(BOUND):
        await wheel.all_due.wait()
    assert [key for key, _ in wheel.due] == ["a", "b", "c"]
    for key, at in wheel.due:
        assert at >= added[key] + DELAY
    assert wheel._timer is None  # nothing pending: no more wake-ups


async def test_an_entry_met_in_time_never_comes_due() -> None:
    loop = asyncio.get_running_loop()
    wheel = Recording(loop, DELAY)
    wheel.add("met", loop.time())
    wheel.add("late", loop.time())
    del wheel.pending["met"]
    async with asyncio.timeout(BOUND):
        await wheel.all_due.wait()
    assert [key for key, _ in wheel.due] == ["late"]


async def test_one_wheel_per_loop_and_delay() -> None:
    wheels = LoopWheels(Recording)
    loop = asyncio.get_running_loop()
    first = wheels.get(loop, DELAY)
    assert wheels.get(loop, DELAY) is first
    other = wheels.get(loop, DELAY * 2)
    assert other is not first and other.delay == DELAY * 2
    assert wheels.get(loop, DELAY) is first  # found again, not made anew


def test_a_closed_loops_wheels_are_dropped() -> None:
    wheels = LoopWheels(Recording)
    old = asyncio.new_event_loop()
    wheels.get(old, DELAY)
    old.close()
    assert (old, DELAY) in wheels._wheels
    new = asyncio.new_event_loop()
    try:
        wheels.get(new, DELAY)
    finally:
        new.close()
    assert (old, DELAY) not in wheels._wheels
