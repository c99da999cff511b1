"""``HistoryRecorder``: minute buckets in memory, batched flushes, retention, restart, outages.

The clock is injected, so minutes and retention are exact; the stores are real (SQLite
files, and a real ``redis-server`` for the outage test). ``CountingStore`` only counts the
calls of a real SQLite store, to see the batching.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from llm_proxy_mw.history import (
    DURATION_BUCKETS,
    BucketKey,
    HistoryRecorder,
    MinuteBucket,
)
from llm_proxy_mw.store import RedisMetricsStore, SqliteMetricsStore
from tests.fakes.redis_server import redis_server
from tests.fakes.servers import free_port

pytestmark = pytest.mark.anyio

M0 = 1_750_000_020  # a minute (epoch seconds, a multiple of 60)
DAY = 86_400


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class CountingStore(SqliteMetricsStore):
    """A real SQLite store that remembers the size of each batch it was given."""

    def __init__(self, path: str, *, fail_once: BaseException | None = None) -> None:
        super().__init__(path)
        self.batches: list[tuple[int, int]] = []
        self.fail_once = fail_once

    async def add(self, buckets: Sequence[MinuteBucket], totals: dict[str, float]) -> None:
        if self.fail_once is not None:
            error, self.fail_once = self.fail_once, None
            raise error
        self.batches.append((len(buckets), len(totals)))
        await super().add(buckets, totals)


@asynccontextmanager
async def opened(store: SqliteMetricsStore) -> AsyncIterator[SqliteMetricsStore]:
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def eventually(check: Callable[[], Awaitable[bool]]) -> None:
    """Poll, five seconds at most, until ``await check()`` is true (it reads a store)."""
    for _ in range(500):
        if await check():
            return
        await asyncio.sleep(0.01)
    pytest.fail("condition not met within 5 s")


def counts(buckets: list[MinuteBucket]) -> list[tuple[int, str, int, int]]:
    return [(b.key.minute, b.key.provider, b.key.status, b.count) for b in buckets]


def half_second(provider: str, status: int, n: int, model: str = "m") -> dict[str, float]:
    """The totals that ``n`` requests of 0.5 s add through their bucket (0.5 s is slot 5)."""
    return {
        f'["requests","{provider}","{model}",{status}]': float(n),
        f'["duration_sum","{provider}","{model}"]': 0.5 * n,
        f'["duration","{provider}","{model}",5]': float(n),
    }


def merged(*parts: dict[str, float]) -> dict[str, float]:
    total: dict[str, float] = {}
    for part in parts:
        for key, value in part.items():
            total[key] = total.get(key, 0.0) + value
    return total


def test_half_second_is_histogram_slot_5() -> None:
    assert DURATION_BUCKETS.index(0.5) == 5


async def test_requests_are_bucketed_by_the_minute_of_the_clock(tmp_path: Path) -> None:
    clock = Clock(M0 + 5)
    recorder = HistoryRecorder(SqliteMetricsStore(str(tmp_path / "m.db")), clock=clock)
    recorder.record("openai", "gpt-4o", 200, 0.5)
    clock.now = M0 + 59.999
    recorder.record("openai", "gpt-4o", 200, 0.5)
    recorder.record("openai", "gpt-4o", 429, 0.5, error=True)
    recorder.record("anthropic", "gpt-4o", 200, 0.5)
    clock.now = M0 + 60
    recorder.record("openai", "gpt-4o", 200, 0.5)
    await recorder.start()
    try:
        found = await recorder.history(M0, M0 + 120)
        assert counts(found) == [
            (M0, "anthropic", 200, 1),
            (M0, "openai", 200, 2),
            (M0, "openai", 429, 1),
            (M0 + 60, "openai", 200, 1),
        ]
        assert [b.errors for b in found] == [0, 0, 1, 0]
        assert counts(await recorder.history(M0 + 60, M0 + 120)) == [(M0 + 60, "openai", 200, 1)]
    finally:
        await recorder.stop()


async def test_histogram_slots_sums_and_tokens(tmp_path: Path) -> None:
    recorder = HistoryRecorder(SqliteMetricsStore(":memory:"), clock=Clock(M0))
    # Upper bounds are inclusive; past the last bound is the +Inf slot.
    for duration in (0.0, 0.01, 0.0101, 0.5, 600.0, 601.0):
        recorder.record("p", "m", 200, duration, ttfb=0.25, prompt_tokens=3, completion_tokens=7)
    recorder.record("p", "m", 200, 2.0, ttfb=None)  # no first byte: no TTFB sample
    await recorder.start()
    try:
        [found] = await recorder.history(M0, M0 + 60)
    finally:
        await recorder.stop()
    expected = [0] * (len(DURATION_BUCKETS) + 1)
    for slot in (0, 0, 1, 5, 14, 15, 7):
        expected[slot] += 1
    assert found.duration_counts == expected
    assert found.count == 7 and found.errors == 0
    assert found.duration_sum == pytest.approx(0.01 + 0.0101 + 0.5 + 600 + 601 + 2)
    assert (found.ttfb_sum, found.ttfb_count) == (1.5, 6)
    assert (found.prompt_tokens, found.completion_tokens) == (18, 42)


async def test_flush_writes_everything_pending_as_one_batch(tmp_path: Path) -> None:
    clock = Clock(M0)
    store = CountingStore(str(tmp_path / "m.db"))
    recorder = HistoryRecorder(store, flush_interval=3600, clock=clock)
    await recorder.start()
    try:
        for i in range(100):
            clock.now = M0 + i  # 100 seconds: two minutes
            recorder.record(("a", "b", "c")[i % 3], "m", 200, 0.5)
            recorder.add_total("requests_total", 1.0)
        assert store.batches == []  # record() does no I/O
        assert await recorder.flush()
        assert await recorder.flush()  # nothing pending: no call
        # One call: 6 buckets (3 providers x 2 minutes), the added total and 3 x 3 totals
        # derived from the buckets (requests, duration sum, one histogram slot).
        assert store.batches == [(6, 10)]
        assert sum(b.count for b in await store.buckets(M0, M0 + 120)) == 100
        assert await store.totals() == {
            "requests_total": 100.0,
            **half_second("a", 200, 34),  # i = 0, 3, ..., 99
            **half_second("b", 200, 33),
            **half_second("c", 200, 33),
        }
    finally:
        await recorder.stop()


async def test_the_background_task_flushes_every_interval(tmp_path: Path) -> None:
    store = CountingStore(str(tmp_path / "m.db"))
    recorder = HistoryRecorder(store, flush_interval=0.02, clock=Clock(M0))
    await recorder.start()
    await recorder.start()  # idempotent: still one task
    try:
        recorder.record("p", "m", 200, 0.5)

        async def flushed() -> bool:
            return bool(store.batches)

        await eventually(flushed)
    finally:
        await recorder.stop()
    await recorder.stop()  # idempotent
    await HistoryRecorder(store).stop()  # stopping a recorder never started is fine


async def test_stop_flushes_what_is_pending(tmp_path: Path) -> None:
    path = str(tmp_path / "m.db")
    recorder = HistoryRecorder(SqliteMetricsStore(path), flush_interval=3600, clock=Clock(M0))
    await recorder.start()
    recorder.record("p", "m", 200, 0.5)
    recorder.add_total("t", 1.0)
    await recorder.stop()
    async with opened(SqliteMetricsStore(path)) as store:
        assert counts(await store.buckets(M0, M0 + 60)) == [(M0, "p", 200, 1)]
        assert await store.totals() == {"t": 1.0, **half_second("p", 200, 1)}


async def test_flush_derives_totals_from_each_bucket(tmp_path: Path) -> None:
    clock = Clock(M0)
    store = SqliteMetricsStore(str(tmp_path / "m.db"))
    recorder = HistoryRecorder(store, flush_interval=3600, clock=clock)
    await recorder.start()
    try:
        recorder.record("p", "m", 200, 0.005, ttfb=0.001, prompt_tokens=3, completion_tokens=7)
        recorder.record("p", "m", 200, 700.0, prompt_tokens=2)
        clock.now = M0 + 60  # another minute, same series: the totals add up across buckets
        recorder.record("p", "m", 200, 0.005, completion_tokens=1)
        recorder.record("p", "m", 503, 2.0, error=True)
        recorder.record("q", "other", 401, 0.0)
        assert await recorder.flush()
        expected = {
            '["requests","p","m",200]': 3.0,
            '["requests","p","m",503]': 1.0,
            '["requests","q","other",401]': 1.0,
            '["duration_sum","p","m"]': 702.01,
            '["duration","p","m",0]': 2.0,
            '["duration","p","m",7]': 1.0,
            '["duration","p","m",15]': 1.0,  # past the last bound: +Inf
            '["duration","q","other",0]': 1.0,
            '["tokens","p","m","prompt"]': 5.0,
            '["tokens","p","m","completion"]': 8.0,
        }
        # Zero sums and zero token counts are not written; TTFB totals are the metrics
        # layer's (add_total), not derived here.
        assert await store.totals() == pytest.approx(expected)
        assert await recorder.restore_totals() == pytest.approx(expected)
        recorder.record("q", "other", 401, 0.0)  # pending: restore_totals counts it too
        expected['["requests","q","other",401]'] += 1
        expected['["duration","q","other",0]'] += 1
        assert await recorder.restore_totals() == pytest.approx(expected)
    finally:
        await recorder.stop()


async def test_history_merges_pending_buckets_into_stored_ones(tmp_path: Path) -> None:
    store = SqliteMetricsStore(str(tmp_path / "m.db"))
    recorder = HistoryRecorder(store, flush_interval=3600, clock=Clock(M0))
    await recorder.start()
    try:
        recorder.record("p", "m", 200, 0.5, prompt_tokens=1)
        recorder.record("p", "m", 200, 0.5, prompt_tokens=1)
        await recorder.flush()
        recorder.record("p", "m", 200, 0.5, prompt_tokens=1)
        recorder.record("q", "m", 200, 0.5)

        found = await recorder.history(M0, M0 + 60)
        assert counts(found) == [(M0, "p", 200, 3), (M0, "q", 200, 1)]
        assert found[0].prompt_tokens == 3
        assert counts(await store.buckets(M0, M0 + 60)) == [(M0, "p", 200, 2)]

        found[1].count = 99  # the caller's copy, not the pending bucket
        assert counts(await recorder.history(M0, M0 + 60))[1] == (M0, "q", 200, 1)
        assert await recorder.history(M0 + 60, M0 + 120) == []
    finally:
        await recorder.stop()


async def test_retention_purges_old_buckets_and_keeps_totals(tmp_path: Path) -> None:
    clock = Clock(M0)
    recorder = HistoryRecorder(
        SqliteMetricsStore(str(tmp_path / "m.db")), flush_interval=3600, clock=clock
    )
    await recorder.start()
    try:
        recorder.record("p", "m", 200, 0.5)
        recorder.add_total("t", 1.0)
        await recorder.flush()
        clock.now = M0 + 10
        recorder.record("p", "m", 500, 0.5)  # old, and still only in memory

        clock.now = M0 + 29 * DAY
        assert await recorder.purge() == 0  # within the 30 days
        clock.now = M0 + 31 * DAY
        recorder.record("p", "m", 200, 0.5)
        assert await recorder.purge() == 1

        found = await recorder.history(0, M0 + 32 * DAY)
        assert counts(found) == [(M0 + 31 * DAY, "p", 200, 1)]
        # The purged buckets still count in the totals, the one never written included.
        assert await recorder.restore_totals() == merged(
            {"t": 1.0}, half_second("p", 200, 2), half_second("p", 500, 1)
        )
    finally:
        await recorder.stop()


async def test_start_purges_and_the_task_purges_again_hourly(tmp_path: Path) -> None:
    path = str(tmp_path / "m.db")
    async with opened(SqliteMetricsStore(path)) as store:
        await store.add([MinuteBucket(BucketKey(M0, "p", "m", 200), count=1)], {"t": 1.0})
    clock = Clock(M0 + 31 * DAY)
    store = SqliteMetricsStore(path)
    recorder = HistoryRecorder(store, flush_interval=0.01, retention_days=30, clock=clock)

    async def empty() -> bool:
        return await store.buckets(0, M0 + 40 * DAY) == []

    await recorder.start()
    try:
        await eventually(empty)
        # Ten minutes inside the retention now; thirty minutes from now, twenty outside it.
        later = M0 + DAY + 600
        await store.add([MinuteBucket(BucketKey(later, "p", "m", 200), count=1)], {})
        clock.now += 1800
        await asyncio.sleep(0.1)  # ten flush rounds
        assert not await empty()  # expired, but the next purge is an hour after the last
        clock.now += 1801
        await eventually(empty)
        assert await store.totals() == {"t": 1.0}
    finally:
        await recorder.stop()


async def test_totals_are_restored_after_a_restart(tmp_path: Path) -> None:
    path = str(tmp_path / "m.db")
    key = "requests_total|echo|m|200"
    n = 25

    async def serve(requests: int) -> dict[str, float]:
        recorder = HistoryRecorder(SqliteMetricsStore(path), flush_interval=3600, clock=Clock(M0))
        await recorder.start()
        restored = await recorder.restore_totals()
        for _ in range(requests):
            recorder.record("echo", "m", 200, 0.5)
            recorder.add_total(key, 1.0)
        await recorder.stop()
        return restored

    assert await serve(n) == {}
    assert await serve(1) == {key: float(n), **half_second("echo", 200, n)}
    assert await serve(0) == {key: float(n + 1), **half_second("echo", 200, n + 1)}
    async with opened(SqliteMetricsStore(path)) as store:
        assert counts(await store.buckets(M0, M0 + 60)) == [(M0, "echo", 200, n + 1)]


async def test_restore_totals_includes_unflushed_deltas(tmp_path: Path) -> None:
    recorder = HistoryRecorder(SqliteMetricsStore(str(tmp_path / "m.db")), flush_interval=3600)
    await recorder.start()
    try:
        recorder.add_total("t", 2.0)
        await recorder.flush()
        recorder.add_total("t", 0.5)
        recorder.add_total("u", 1.0)
        assert await recorder.restore_totals() == {"t": 2.5, "u": 1.0}
    finally:
        await recorder.stop()


async def test_a_redis_outage_keeps_the_data_until_redis_is_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()
    store = RedisMetricsStore(f"redis://127.0.0.1:{port}/0", timeout=1.0)
    recorder = HistoryRecorder(store, flush_interval=3600, clock=Clock(M0))
    with caplog.at_level(logging.INFO, logger="llm_proxy_mw"):
        await recorder.start()  # Redis is not there yet: logged, not raised
        try:
            for _ in range(3):
                recorder.record("p", "m", 200, 0.5)
                recorder.add_total("t", 1.0)
            assert not await recorder.flush()
            recorder.record("p", "m", 200, 0.5)
            recorder.add_total("t", 1.0)
            with redis_server(port=port):
                assert await recorder.flush()
                assert counts(await store.buckets(M0, M0 + 60)) == [(M0, "p", 200, 4)]
                assert await store.totals() == {"t": 4.0, **half_second("p", 200, 4)}
                await recorder.stop()
        finally:
            await recorder.stop()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "open failed" in warnings[0]  # one per outage, not per try
    assert "reachable again" in caplog.text


async def test_pending_buckets_are_bounded_while_the_store_fails(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "m.db"
    clock = Clock(M0)
    store = SqliteMetricsStore(str(path), busy_timeout=0.01)
    recorder = HistoryRecorder(store, flush_interval=3600, clock=clock, max_pending=4)
    await recorder.start()
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        for minute in range(10):
            clock.now = M0 + 60 * minute
            recorder.record("p", "m", 200, 0.5)
            recorder.add_total("t", 1.0)
        with caplog.at_level(logging.WARNING):
            assert not await recorder.flush()
        assert "dropped 6 buckets" in caplog.text
        holder.execute("ROLLBACK")
        assert await recorder.flush()
        minutes = [b.key.minute for b in await store.buckets(0, M0 + 3600)]
        assert minutes == [M0 + 60 * m for m in range(6, 10)]  # the newest four
        # Totals are never dropped: the six dropped buckets still count in them.
        assert await store.totals() == {"t": 10.0, **half_second("p", 200, 10)}
    finally:
        holder.close()
        await recorder.stop()


async def test_an_unexpected_error_does_not_stop_the_background_task(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = CountingStore(str(tmp_path / "m.db"), fail_once=RuntimeError("a bug"))
    recorder = HistoryRecorder(store, flush_interval=0.01, clock=Clock(M0))
    await recorder.start()
    try:
        recorder.record("p", "m", 200, 0.5)

        async def logged() -> bool:
            return "failed unexpectedly" in caplog.text

        with caplog.at_level(logging.ERROR):
            await eventually(logged)
        recorder.record("p", "m", 200, 0.5)

        async def flushed() -> bool:
            return bool(store.batches)

        await eventually(flushed)
    finally:
        await recorder.stop()


async def test_requests_recorded_during_a_failing_flush_are_merged_back(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    store = SqliteMetricsStore(str(path), busy_timeout=0.2)
    recorder = HistoryRecorder(store, flush_interval=3600, clock=Clock(M0))
    await recorder.start()
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        recorder.record("p", "m", 200, 0.5)
        recorder.add_total("t", 1.0)
        flushing = asyncio.create_task(recorder.flush())
        await asyncio.sleep(0.05)  # the worker thread now waits for the lock
        recorder.record("p", "m", 200, 0.5)  # same bucket as the batch in flight
        recorder.record("q", "m", 200, 0.5)
        recorder.add_total("t", 1.0)
        assert not await flushing
        holder.execute("ROLLBACK")
        assert await recorder.flush()
        assert counts(await store.buckets(M0, M0 + 60)) == [(M0, "p", 200, 2), (M0, "q", 200, 1)]
        assert await store.totals() == {
            "t": 2.0,
            **half_second("p", 200, 2),
            **half_second("q", 200, 1),
        }
    finally:
        holder.close()
        await recorder.stop()


@pytest.mark.parametrize(
    "tokens",
    [10**20, 10**400, 10**5000 - 1, -1, True, 1.5],
    ids=["1e20", "1e400", "5000 digits", "negative", "bool", "fraction"],
)
async def test_record_counts_only_token_counts(tmp_path: Path, tokens: Any) -> None:
    store = SqliteMetricsStore(str(tmp_path / "m.db"))
    recorder = HistoryRecorder(store, flush_interval=3600, clock=Clock(M0))
    await recorder.start()
    try:
        recorder.record("p", "m", 200, 0.5, prompt_tokens=tokens, completion_tokens=7)
        assert await recorder.flush()
        [found] = await store.buckets(M0, M0 + 60)
        assert (found.count, found.prompt_tokens, found.completion_tokens) == (1, 0, 7)
        assert await store.totals() == {
            **half_second("p", 200, 1),
            '["tokens","p","m","completion"]': 7.0,
        }
    finally:
        await recorder.stop()


async def test_a_bucket_the_store_skips_is_not_written_again_with_the_next_batch(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with redis_server() as server:
        store = RedisMetricsStore(server.url)
        recorder = HistoryRecorder(store, flush_interval=3600, clock=Clock(M0))
        await recorder.start()
        raw = Redis.from_url(server.url, decode_responses=True)
        try:
            # A stored count one more request would overflow: Redis refuses that bucket.
            series = json.dumps(["full", "m", 200])
            await raw.hset(f"{store.prefix}minute:{M0}", f"{series}|count", 2**63 - 1)
            recorder.record("full", "m", 200, 0.5)
            recorder.record("p", "m", 200, 0.5)
            with caplog.at_level(logging.WARNING):
                assert await recorder.flush()  # the rest of the batch was written
            recorder.record("p", "m", 200, 0.5)
            assert await recorder.flush()
            assert await recorder.flush()
            found = {b.key.provider: b.count for b in await store.buckets(M0, M0 + 60)}
            assert found == {"full": 2**63 - 1, "p": 2}  # each request written once
        finally:
            await raw.aclose()
            await recorder.stop()
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "'full'" in warning and "1 buckets" in warning


async def test_an_unexpected_failure_drops_the_batch_instead_of_retrying_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = CountingStore(str(tmp_path / "m.db"), fail_once=OverflowError("a bug"))
    recorder = HistoryRecorder(store, flush_interval=3600, clock=Clock(M0))
    await recorder.start()
    try:
        recorder.record("lost", "m", 200, 0.5)
        with caplog.at_level(logging.ERROR):
            assert not await recorder.flush()  # logged, not raised
        assert "failed unexpectedly" in caplog.text and "dropped 1 buckets" in caplog.text
        recorder.record("p", "m", 200, 0.5)
        assert await recorder.flush()
        # It may have been written in part: never again, so nothing is counted twice.
        assert counts(await store.buckets(M0, M0 + 60)) == [(M0, "p", 200, 1)]
    finally:
        await recorder.stop()
