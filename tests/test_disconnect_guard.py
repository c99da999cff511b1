"""The guard that cancels a request when its client leaves or its deadline passes.

Requests answered within ``WATCH_AFTER`` never start a watcher; slower ones are picked up by
their loop's sweep. These tests drive the guard directly, with a ``receive`` that answers
``http.disconnect`` when the test says so.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from llm_proxy_mw import _disconnect
from llm_proxy_mw._disconnect import WATCH_AFTER, cancel_on_disconnect, watched
from llm_proxy_mw.context import ClientDisconnected, RequestContext
from llm_proxy_mw.wire import WireFormat
from tests.asgi_helpers import GUARD_SECONDS

pytestmark = pytest.mark.anyio


class Client:
    """A ``receive`` that notes when the guard starts watching, and reports a disconnect
    once ``leave()`` is called (from any thread)."""

    def __init__(self) -> None:
        self.calls = 0
        self._watched = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._left: asyncio.Event | None = None

    async def receive(self) -> dict[str, object]:
        self.calls += 1
        self._loop, self._left = asyncio.get_running_loop(), asyncio.Event()
        self._watched.set()
        await self._left.wait()
        return {"type": "http.disconnect"}

    async def watched(self) -> None:
        assert await asyncio.to_thread(self._watched.wait, GUARD_SECONDS)

    def leave(self) -> None:
        assert self._loop is not None and self._left is not None
        self._loop.call_soon_threadsafe(self._left.set)


def new_context() -> RequestContext:
    return RequestContext("test", "/v1/chat/completions", WireFormat.OPENAI)


async def run_until_the_client_leaves(client: Client) -> None:
    """A request whose provider never answers, guarded; returns when the guard ends it."""
    with pytest.raises(ClientDisconnected):
        async with cancel_on_disconnect(new_context(), client.receive):
            await asyncio.sleep(GUARD_SECONDS * 2)


async def test_requests_answered_in_time_never_watch_and_leave_the_loop_idle() -> None:
    client = Client()
    for _ in range(200):
        async with cancel_on_disconnect(new_context(), client.receive):
            await asyncio.sleep(0)
    await asyncio.sleep(WATCH_AFTER * 2)
    assert client.calls == 0  # no watcher was started for any of them
    sweep = _disconnect._sweeps.get(asyncio.get_running_loop(), WATCH_AFTER)
    assert not sweep.pending
    assert sweep._timer is None  # nothing pending: no more wake-ups


async def test_a_slow_request_is_watched_and_ends_when_its_client_leaves() -> None:
    client = Client()
    async with asyncio.timeout(GUARD_SECONDS):
        request = asyncio.create_task(run_until_the_client_leaves(client))
        await client.watched()  # started by the sweep
        client.leave()
        await request


async def test_guards_on_loops_in_two_threads_are_each_watched() -> None:
    """A host may run a second loop in a thread: each loop sweeps its own guards."""
    here, there = Client(), Client()

    def in_another_thread() -> None:
        asyncio.run(run_until_the_client_leaves(there))

    async with asyncio.timeout(GUARD_SECONDS):
        other = asyncio.create_task(asyncio.to_thread(in_another_thread))
        request = asyncio.create_task(run_until_the_client_leaves(here))
        await here.watched()
        await there.watched()
        there.leave()
        await other
        assert not request.done()
        here.leave()
        await request


#: Before the watch; between the watch and the sweep's next tick (one timer for both); later.
DEADLINES = [WATCH_AFTER / 5, WATCH_AFTER * 1.2, WATCH_AFTER * 3]


@pytest.mark.parametrize("deadline", DEADLINES)
async def test_the_deadline_cancels_the_block_before_and_after_the_watch(
    deadline: float,
) -> None:
    client = Client()
    async with asyncio.timeout(GUARD_SECONDS):
        guard = cancel_on_disconnect(new_context(), client.receive, deadline=deadline)
        async with guard:
            try:
                await asyncio.sleep(GUARD_SECONDS * 2)
            except asyncio.CancelledError:
                assert guard.deadline_expired()
            else:
                pytest.fail("the deadline did not cancel the block")
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_a_disarmed_deadline_does_not_cancel_a_watched_request() -> None:
    client = Client()
    async with asyncio.timeout(GUARD_SECONDS):
        guard = cancel_on_disconnect(new_context(), client.receive, deadline=WATCH_AFTER * 3)
        async with guard:
            guard.disarm_deadline()
            await asyncio.sleep(WATCH_AFTER * 5)  # past the deadline, and watched
    assert client.calls == 1


async def test_a_nested_guard_for_the_same_request_does_nothing() -> None:
    client, ctx = Client(), new_context()
    async with asyncio.timeout(GUARD_SECONDS):
        request = asyncio.create_task(run_nested(client, ctx))
        await client.watched()
        client.leave()
        with pytest.raises(ClientDisconnected):
            await request
    # One watcher, the outer guard's: ``receive`` was never awaited twice at once.
    assert client.calls == 1
    assert not watched(ctx)


async def run_nested(client: Client, ctx: RequestContext) -> None:
    assert not watched(ctx)
    async with cancel_on_disconnect(ctx, client.receive):
        assert watched(ctx)
        async with cancel_on_disconnect(ctx, client.receive):
            await asyncio.sleep(GUARD_SECONDS * 2)


def test_a_closed_loops_sweep_is_dropped() -> None:
    async def slow_request() -> None:
        async with cancel_on_disconnect(new_context(), Client().receive):
            await asyncio.sleep(WATCH_AFTER * 2)

    loop = asyncio.new_event_loop()
    loop.run_until_complete(slow_request())
    loop.close()
    assert (loop, WATCH_AFTER) in _disconnect._sweeps._wheels
    asyncio.run(slow_request())
    assert (loop, WATCH_AFTER) not in _disconnect._sweeps._wheels
