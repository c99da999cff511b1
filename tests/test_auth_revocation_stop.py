"""Stopping the token revocation sync ends its loops, even when the store's client loses a
cancellation (redis-py 8 does, now and then, in a pub/sub read), and never holds a shutdown
for longer than its patience.

Fakes stand in for a client that loses a cancellation and one that never lets go; a real
Redis checks the real client, started and stopped again and again at the moments it loses
them (just after the sync starts listening).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest

from llm_proxy_mw.auth.token_store import RevocationSync, TokenStore
from llm_proxy_mw.auth.token_store._redis import RedisTokenStore
from tests.fakes.redis_server import redis_server

pytestmark = pytest.mark.anyio

#: A bound on each wait below, so that a sync that never stops fails the test instead of
#: hanging it; the sync's own patience is far shorter.
BOUND = 10.0


async def _ready() -> None:
    """The store is open (the fakes need nothing opened)."""


class _Store:
    """What the sync asks of a store: no revocations, and a push listener made by the test."""

    def __init__(self, listener: Any) -> None:
        self.listening = asyncio.Event()
        self._listener = listener

    def revocations(self) -> AsyncIterator[str | None]:
        self.listening.set()
        return cast("AsyncIterator[str | None]", self._listener())

    async def revoked(self, now: float) -> dict[str, float]:
        return {}

    async def purge(self, now: float) -> int:
        return 0


def _sync(store: object, **options: Any) -> RevocationSync:
    return RevocationSync(cast(TokenStore, store), clock=time.time, horizon=60, **options)


async def _stop(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` once, as ``TokenService.stop`` does, and wait for it (bounded)."""
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=BOUND)
    assert done, f"the sync still runs {BOUND} s after it was cancelled"


async def test_a_lost_cancellation_is_made_again() -> None:
    cancellations: list[str] = []

    async def listener() -> AsyncIterator[str | None]:
        while True:
            try:
                await asyncio.Event().wait()  # a read that never ends by itself
            except asyncio.CancelledError:
                cancellations.append("cancelled")
                if len(cancellations) == 1:
                    continue  # lost, as the client does
                raise
            yield None

    store = _Store(listener)
    task = asyncio.create_task(_sync(store).run(_ready))
    await store.listening.wait()
    await _stop(task)
    assert cancellations == ["cancelled", "cancelled"]


async def test_a_sync_that_cannot_be_stopped_is_left_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    let_go = asyncio.Event()

    async def listener() -> AsyncIterator[str | None]:
        while not let_go.is_set():
            try:
                await let_go.wait()
            except asyncio.CancelledError:
                if let_go.is_set():
                    raise
                continue  # every cancellation lost while it holds on
        yield None

    store = _Store(listener)
    task = asyncio.create_task(_sync(store, stop_patience=0.5).run(_ready))
    await store.listening.wait()
    with caplog.at_level(logging.WARNING, logger="llm_proxy_mw.auth"):
        await _stop(task)
    assert "did not stop within 0.5 s" in caplog.text
    still = [t for t in asyncio.all_tasks() if t.get_name() == "llm_proxy_mw-token-pushes"]
    assert len(still) == 1  # left running, not awaited for ever
    let_go.set()  # its client lets go: a cancellation ends it now
    still[0].cancel()
    done, _ = await asyncio.wait(still, timeout=BOUND)
    assert done


class _Crash(BaseException):
    """What no loop catches (loops catch ``Exception``)."""


async def test_a_loop_that_dies_ends_the_other() -> None:
    async def listener() -> AsyncIterator[str | None]:
        raise _Crash
        yield None  # an async generator

    task = asyncio.create_task(_sync(_Store(listener)).run(_ready))
    with pytest.raises(_Crash):
        await asyncio.wait_for(task, BOUND)
    names = {t.get_name() for t in asyncio.all_tasks()}
    assert "llm_proxy_mw-token-reloads" not in names


async def test_the_sync_over_a_real_redis_stops_however_soon_it_is_stopped() -> None:
    """Stopped within 10 ms of starting, 60 times: with redis-py 8, 11 of 150 such syncs
    never ended before the sync cancelled again."""
    delays = random.Random(20).choices(range(11), k=60)
    with redis_server() as redis:
        store = RedisTokenStore(redis.url)
        await store.open()
        try:
            for delay_ms in delays:
                task = asyncio.create_task(_sync(store).run(_ready))
                await asyncio.sleep(delay_ms / 1000)  # the moment of the stop is the point
                await _stop(task)
        finally:
            await store.close()
