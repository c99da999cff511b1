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
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, cast

import pytest

from llm_proxy_mw.auth.token_store import RevocationSync, TokenStore
from llm_proxy_mw.auth.token_store._redis import RedisTokenStore
from llm_proxy_mw.errors import StoreError
from tests.fakes.redis_server import redis_server

pytestmark = pytest.mark.anyio

#: A bound on each wait below, so that a sync that never stops fails the test instead of
#: hanging it; the sync's own patience is far shorter.
BOUND = 10.0


async def _ready() -> None:
    """The store is open (the fakes need nothing opened)."""


class _Store:
    """What the sync asks of a store: no revocations, and a push listener made by the test."""

    url = "redis://fake"

    def __init__(self, listener: Any, revoked: Any = None) -> None:
        self.listening = asyncio.Event()
        self._listener = listener
        self._revoked = revoked

    def revocations(self) -> AsyncGenerator[str | None, None]:
        self.listening.set()
        return cast("AsyncGenerator[str | None, None]", self._listener())

    async def revoked(self, now: float) -> dict[str, float]:
        if self._revoked is not None:
            return cast("dict[str, float]", await self._revoked())
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


async def test_a_sync_stopped_while_it_reloads_has_closed_its_subscription() -> None:
    """Stopped in the reload after subscribing (outside the store's generator), the sync
    ends only once the generator closed its subscription, which takes the client some I/O:
    not left to whenever the generator is collected, after the host closed the store."""
    reloading = asyncio.Event()
    closing: list[str] = []

    async def listener() -> AsyncIterator[str | None]:
        try:
            yield None  # subscribed
            await asyncio.Event().wait()
        finally:
            closing.append("unsubscribing")
            for _ in range(3):
                await asyncio.sleep(0)  # the client's round trip
            closing.append("closed")

    async def revoked() -> dict[str, float]:
        reloading.set()
        await asyncio.Event().wait()  # a reload the stop lands in
        return {}

    store = _Store(listener, revoked)
    task = asyncio.create_task(_sync(store).run(_ready))
    await asyncio.wait_for(reloading.wait(), BOUND)
    await _stop(task)
    assert closing == ["unsubscribing", "closed"]


async def test_a_failed_reload_has_closed_its_subscription_when_reported() -> None:
    """A reload that fails after subscribing has ended that subscription by the time the
    failure is logged, and the sync subscribes again after its backoff."""
    events: list[str] = []
    reloaded_again = asyncio.Event()

    async def listener() -> AsyncIterator[str | None]:
        events.append("subscribed")
        try:
            yield None
            await asyncio.Event().wait()
        finally:
            for _ in range(3):
                await asyncio.sleep(0)  # the client's round trip
            events.append("closed")

    async def revoked() -> dict[str, float]:
        if "failure logged" not in events:
            raise StoreError("redis://fake: token store: connection reset")
        reloaded_again.set()
        return {}

    class _Noting(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "cannot sync token revocations" in record.getMessage():
                events.append("failure logged")

    handler = _Noting(logging.WARNING)
    logger = logging.getLogger("llm_proxy_mw.auth")
    logger.addHandler(handler)
    try:
        task = asyncio.create_task(_sync(_Store(listener, revoked)).run(_ready))
        await asyncio.wait_for(reloaded_again.wait(), BOUND)  # after the sync's backoff
        await _stop(task)
    finally:
        logger.removeHandler(handler)
    assert events[:4] == ["subscribed", "closed", "failure logged", "subscribed"]


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
