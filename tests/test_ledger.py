"""The usage ledger: per-minute buckets in memory, flushed in batches to SQLite or Redis,
read back exactly (cost to the picodollar) with what is still pending, purged after the
retention, and shared by replicas through one Redis."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from decimal import Decimal
from pathlib import Path

import pytest

from llm_proxy_mw.auth import Principal
from llm_proxy_mw.context import Attempt, RequestContext, Usage
from llm_proxy_mw.errors import StoreError
from llm_proxy_mw.ledger import UsageBucket, UsageKey, UsageLedger, UsageStore
from llm_proxy_mw.store import SqliteUsageStore, open_usage_store
from llm_proxy_mw.store._usage_redis import RedisUsageStore
from llm_proxy_mw.wire import WireFormat
from tests.fakes.clock import FakeClock
from tests.fakes.redis_server import RedisServer, redis_server

pytestmark = pytest.mark.anyio

T0 = 1_700_000_040.0  # a whole minute
DAY = 86_400
ALICE = Principal(name="alice", kind="api_key")


def request(
    *,
    principal: Principal | None = ALICE,
    model: str = "gpt-4o",
    provider: str = "openai",
    cost: str | None = "0.000012345",
    prompt: int = 100,
    completion: int = 20,
    attempts: int = 1,
) -> RequestContext:
    """The context of a finished request that reached ``provider`` (or none: ``attempts=0``)."""
    ctx = RequestContext("r", "/v1/chat/completions", WireFormat.OPENAI, principal=principal)
    ctx.model, ctx.provider = model, provider
    ctx.attempts = [Attempt(provider, "ok", 200, 0.1) for _ in range(attempts)]
    ctx.usage = Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        cache_read_tokens=40,
        cache_write_tokens=10,
        reasoning_tokens=5,
        cost_usd=None if cost is None else Decimal(cost),
    )
    return ctx


def rows(buckets: Sequence[UsageBucket]) -> list[tuple[object, ...]]:
    return [
        (
            b.key.start,
            b.key.principal,
            b.key.model,
            b.key.provider,
            b.requests,
            b.input_tokens,
            b.output_tokens,
            b.cache_read_tokens,
            b.cache_write_tokens,
            b.reasoning_tokens,
            b.cost_usd,
            b.unpriced,
        )
        for b in buckets
    ]


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


@pytest.fixture(params=["sqlite", "redis"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], UsageStore]:
    if request.param == "sqlite":
        return lambda: SqliteUsageStore(str(tmp_path / "store.db"))
    server: RedisServer = request.getfixturevalue("redis")
    prefix = f"test:{request.node.name}:"
    return lambda: RedisUsageStore(server.url, prefix=prefix)


async def test_requests_add_up_per_minute_principal_model_and_provider() -> None:
    clock = FakeClock(T0 + 5)
    ledger = UsageLedger(SqliteUsageStore(":memory:"), clock=clock)
    await ledger.start()
    try:
        ledger.add(request())
        ledger.add(request(cost="0.000000000001"))
        ledger.add(request(principal=None, model="claude", provider="anthropic", cost=None))
        ledger.add(request(attempts=0))  # refused before any provider: not charged
        clock.advance(60)
        ledger.add(request(prompt=0, completion=0, cost=None))  # no tokens: nothing unpriced
        found = await ledger.usage(int(T0), int(T0) + 120, step=60)
    finally:
        await ledger.stop()
    assert rows(found) == [
        (int(T0), "anonymous", "claude", "anthropic", 1, 100, 20, 40, 10, 5, Decimal(0), 1),
        (int(T0), "api_key:alice", "gpt-4o", "openai", 2, 200, 40, 80, 20, 10,
         Decimal("0.000012345001"), 0),
        (int(T0) + 60, "api_key:alice", "gpt-4o", "openai", 1, 0, 0, 40, 10, 5, Decimal(0), 0),
    ]  # fmt: skip


async def test_the_model_that_answered_is_charged_not_the_one_asked_for() -> None:
    class Route:
        model = "claude-sonnet-4-5"

    ledger = UsageLedger(SqliteUsageStore(":memory:"), clock=FakeClock(T0))
    await ledger.start()
    try:
        ctx = request(provider="anthropic")
        ctx.route = Route()  # type: ignore[assignment]  # a fallback model answered
        ledger.add(ctx)
        (bucket,) = await ledger.usage(int(T0), int(T0) + 60, step=60)
    finally:
        await ledger.stop()
    assert (bucket.key.model, bucket.key.provider) == ("claude-sonnet-4-5", "anthropic")


async def test_flushed_and_pending_usage_read_back_exactly(
    make_store: Callable[[], UsageStore],
) -> None:
    clock = FakeClock(T0)
    ledger = UsageLedger(make_store(), clock=clock)
    await ledger.start()
    try:
        for _ in range(3):
            ledger.add(request(cost="0.1234567891234"))
        assert await ledger.flush()
        clock.advance(120)
        ledger.add(request(cost="0.000000000002"))  # pending, two minutes later
        ledger.add(request(principal=None, cost="1"))
        whole = await ledger.usage(int(T0), int(T0) + 180, step=180)
        alice = await ledger.usage(int(T0), int(T0) + 180, step=180, principal="api_key:alice")
        per_minute = await ledger.usage(int(T0), int(T0) + 180, step=60)
    finally:
        await ledger.stop()
    # Stored to the picodollar: 3 x 0.1234567891234 rounds to 0.370370367370.
    assert rows(whole) == [
        (int(T0), "anonymous", "gpt-4o", "openai", 1, 100, 20, 40, 10, 5, Decimal(1), 0),
        (int(T0), "api_key:alice", "gpt-4o", "openai", 4, 400, 80, 160, 40, 20,
         Decimal("0.370370367372"), 0),
    ]  # fmt: skip
    assert rows(alice) == rows(whole)[1:]
    assert [(b.key.start, b.key.principal, b.requests) for b in per_minute] == [
        (int(T0), "api_key:alice", 3),
        (int(T0) + 120, "anonymous", 1),
        (int(T0) + 120, "api_key:alice", 1),
    ]
    # stop() flushed the rest: a new ledger on the same store reads the same.
    again = UsageLedger(make_store(), clock=clock)
    await again.start()
    try:
        assert rows(await again.usage(int(T0), int(T0) + 180, step=180)) == rows(whole)
    finally:
        await again.stop()


async def test_minutes_past_the_retention_are_purged(
    make_store: Callable[[], UsageStore],
) -> None:
    clock = FakeClock(T0)
    ledger = UsageLedger(make_store(), clock=clock, retention_days=2)
    await ledger.start()
    try:
        ledger.add(request())
        assert await ledger.flush()
        clock.advance(DAY)
        ledger.add(request())  # one day later, stays
        clock.advance(DAY + 60)
        ledger.add(request())
        assert await ledger.purge() == 1  # the first minute, flushed; none pending was older
        found = await ledger.usage(int(T0), int(clock()) + 60, step=60)
    finally:
        await ledger.stop()
    assert [b.key.start for b in found] == [int(T0) + DAY, int(T0) + 2 * DAY + 60]


async def test_replicas_sharing_redis_see_each_others_usage(redis: RedisServer) -> None:
    clock = FakeClock(T0)
    assert isinstance(open_usage_store(redis.url), RedisUsageStore)
    first = UsageLedger(RedisUsageStore(redis.url, prefix="test:replicas:"), clock=clock)
    second = UsageLedger(RedisUsageStore(redis.url, prefix="test:replicas:"), clock=clock)
    await first.start()
    await second.start()
    try:
        first.add(request(cost="0.25"))
        second.add(request(cost="0.5"))
        second.add(request(principal=None, cost="0.125"))
        assert await first.flush()
        assert await second.flush()
        first.add(request(cost="0.000000000001"))  # pending in the first replica only
        seen_by_first = await first.usage(int(T0), int(T0) + 60, step=60)
        seen_by_second = await second.usage(int(T0), int(T0) + 60, step=60)
    finally:
        await first.stop()
        await second.stop()
    assert [(b.key.principal, b.requests, b.cost_usd) for b in seen_by_first] == [
        ("anonymous", 1, Decimal("0.125")),
        ("api_key:alice", 3, Decimal("0.750000000001")),
    ]
    assert [(b.key.principal, b.requests) for b in seen_by_second] == [
        ("anonymous", 1),
        ("api_key:alice", 2),
    ]


class FailingStore(SqliteUsageStore):
    """A store that fails its writes while ``down``."""

    down = True

    async def add_usage(self, buckets: Sequence[UsageBucket]) -> None:
        if self.down:
            raise StoreError("store down")
        await super().add_usage(buckets)


async def test_a_failed_flush_keeps_the_batch_for_the_next_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock(T0)
    store = FailingStore(":memory:")
    ledger = UsageLedger(store, clock=clock, max_pending=1)
    await ledger.start()
    try:
        ledger.add(request())
        with caplog.at_level(logging.WARNING, logger="llm_proxy_mw.ledger"):
            assert not await ledger.flush()
            clock.advance(60)
            ledger.add(request())
            assert not await ledger.flush()  # two buckets, one kept: the older goes
        assert "usage ledger flush failed" in caplog.text
        assert "dropped 1 buckets" in caplog.text
        store.down = False
        assert await ledger.flush()
        found = await ledger.usage(int(T0), int(T0) + 120, step=60)
    finally:
        await ledger.stop()
    assert [b.key.start for b in found] == [int(T0) + 60]


async def test_a_bucket_no_store_can_hold_is_dropped_alone(
    make_store: Callable[[], UsageStore], caplog: pytest.LogCaptureFixture
) -> None:
    store = make_store()
    await store.open()
    try:
        huge = UsageBucket(UsageKey(int(T0), "p", "m", "x"), requests=1, input_tokens=10**19)
        fine = UsageBucket(UsageKey(int(T0), "p", "m", "y"), requests=1)
        with caplog.at_level(logging.WARNING, logger="llm_proxy_mw.store"):
            await store.add_usage([huge, fine])
        found = await store.usage(int(T0), int(T0) + 60, step=60)
    finally:
        await store.close()
    assert [b.key.provider for b in found] == ["y"]
    assert "dropped 1 buckets" in caplog.text


async def test_a_model_name_that_is_not_text_is_dropped_not_retried_forever(
    make_store: Callable[[], UsageStore], caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock(T0)
    ledger = UsageLedger(make_store(), clock=clock)
    await ledger.start()
    try:
        ledger.add(request(model="bad-\udc80"))  # a lone surrogate, from a client's JSON
        ledger.add(request())
        with caplog.at_level(logging.WARNING, logger="llm_proxy_mw.store"):
            assert await ledger.flush()
        found = await ledger.usage(int(T0), int(T0) + 60, step=60)
    finally:
        await ledger.stop()
    assert [b.key.model for b in found] == ["gpt-4o"]
    assert "not UTF-8 text" in caplog.text
