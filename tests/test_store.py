"""Metrics stores: one contract for SQLite and Redis, then each backend's failure modes.

Both backends are real: SQLite files in a temporary directory, and a ``redis-server``
started on a free loopback port (``tests/fakes/redis_server.py``); every Redis test works
under its own key prefix. Concurrency is tested with two stores in one loop and with two
separate processes, and the sums must be exact.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import sqlite3
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
from redis.asyncio import Redis

from llm_proxy_mw.history import BucketKey, HistoryRecorder, MetricsStore, MinuteBucket
from llm_proxy_mw.store import (
    RedisMetricsStore,
    SqliteMetricsStore,
    StoreError,
    open_metrics_store,
    redact_url,
)
from tests.fakes.redis_server import redis_server
from tests.fakes.servers import free_port

pytestmark = pytest.mark.anyio

M0 = 1_750_000_020  # a minute (epoch seconds, a multiple of 60)


def bucket(
    minute: int = M0, provider: str = "openai", model: str = "gpt-4o", **values: int
) -> MinuteBucket:
    """A bucket of ``count`` requests of 0.5 s (exact in binary, so float sums are exact)."""
    count = values.pop("count", 1)
    result = MinuteBucket(BucketKey(minute, provider, model, values.pop("status", 200)))
    result.count = count
    result.errors = values.pop("errors", 0)
    result.duration_sum = 0.5 * count
    result.duration_counts[5] = count  # 0.5 s: the slot whose upper bound is 0.5
    result.ttfb_sum = 0.25 * count
    result.ttfb_count = count
    result.prompt_tokens = 10 * count
    result.completion_tokens = 20 * count
    assert not values
    return result


@dataclass
class Backend:
    """How to make another store on the same data (same file, same server and prefix)."""

    kind: str
    make: Callable[[], MetricsStore]
    argv: list[str]  # the same, for a child process: kind, location, prefix


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with redis_server() as server:
        yield server.url


@pytest.fixture(params=["sqlite", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        path = str(tmp_path / "metrics.db")
        return Backend("sqlite", lambda: SqliteMetricsStore(path), ["sqlite", path, ""])
    url: str = request.getfixturevalue("redis_url")
    prefix = f"test-{uuid.uuid4().hex}:"
    return Backend("redis", lambda: RedisMetricsStore(url, prefix=prefix), ["redis", url, prefix])


@asynccontextmanager
async def opened(store: MetricsStore) -> AsyncIterator[MetricsStore]:
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def plain(buckets: list[MinuteBucket]) -> list[tuple[object, ...]]:
    return [
        (b.key, b.count, b.errors, b.duration_sum, b.duration_counts, b.ttfb_sum)
        + (b.ttfb_count, b.prompt_tokens, b.completion_tokens)
        for b in buckets
    ]


def matching(directory: Path, pattern: str) -> list[Path]:
    return sorted(directory.glob(pattern))


# --- the contract, for both backends ---------------------------------------------------


async def test_add_merges_buckets_and_queries_half_open_ranges(backend: Backend) -> None:
    async with opened(backend.make()) as store:
        await store.add([bucket(M0), bucket(M0 + 60), bucket(M0 + 120)], {})
        await store.add([bucket(M0 + 60, count=2, errors=1), bucket(M0 + 60, "anthropic")], {})
        await store.add([], {})

        found = await store.buckets(M0 + 60, M0 + 120)

        merged = bucket(M0 + 60, count=3)
        merged.errors = 1
        assert plain(found) == plain([bucket(M0 + 60, "anthropic"), merged])
        assert [b.key.minute for b in await store.buckets(M0, M0 + 180)] == [
            M0,
            M0 + 60,
            M0 + 60,
            M0 + 120,
        ]
        assert await store.buckets(M0 + 180, M0 + 600) == []


async def test_keys_with_separator_characters_round_trip(backend: Backend) -> None:
    odd = bucket(M0, provider="vllm.local-1", model='llama3:8b|q4 "ünï" [x]', status=429)
    async with opened(backend.make()) as store:
        await store.add([odd], {'requests_total|vllm|llama3:8b|"x"': 1.0})
        assert plain(await store.buckets(M0, M0 + 60)) == plain([odd])
        assert await store.totals() == {'requests_total|vllm|llama3:8b|"x"': 1.0}


async def test_totals_accumulate_and_survive_reopening(backend: Backend) -> None:
    async with opened(backend.make()) as store:
        assert await store.totals() == {}
        await store.add([], {"requests_total|a": 2.0, "tokens_total|a": 0.5})
        await store.add([bucket()], {"requests_total|a": 3.0})
    async with opened(backend.make()) as store:
        assert await store.totals() == {"requests_total|a": 5.0, "tokens_total|a": 0.5}
        assert plain(await store.buckets(M0, M0 + 60)) == plain([bucket()])


async def test_purge_deletes_older_buckets_and_keeps_totals(backend: Backend) -> None:
    async with opened(backend.make()) as store:
        old = [bucket(M0 + 60 * i, provider) for i in range(3) for provider in ("a", "b")]
        await store.add([*old, bucket(M0 + 180)], {"requests_total": 7.0})

        assert await store.purge(M0 + 120) == 4
        assert await store.purge(M0 + 120) == 0

        assert [b.key.minute for b in await store.buckets(0, M0 + 600)] == [
            M0 + 120,
            M0 + 120,
            M0 + 180,
        ]
        assert await store.totals() == {"requests_total": 7.0}


async def test_two_stores_adding_concurrently_give_exact_sums(backend: Backend) -> None:
    rounds = 40
    async with opened(backend.make()) as first, opened(backend.make()) as second:

        async def hammer(store: MetricsStore) -> None:
            for i in range(rounds):
                await store.add([bucket(M0), bucket(M0 + 60 * (i % 3))], {"t": 1.0})

        await asyncio.gather(hammer(first), hammer(second))
        found = await first.buckets(M0, M0 + 60)
        assert await second.totals() == {"t": 2.0 * rounds}
    assert [b.count for b in found] == [2 * rounds + 2 * 14]  # i % 3 == 0 for 14 of 40
    assert found[0].duration_sum == 0.5 * found[0].count
    assert found[0].duration_counts[5] == found[0].count


CHILD = """
import asyncio, sys
from llm_proxy_mw.history import BucketKey, MinuteBucket
from llm_proxy_mw.store import RedisMetricsStore, SqliteMetricsStore

async def main(kind, where, prefix, rounds):
    if kind == "sqlite":
        store = SqliteMetricsStore(where)
    else:
        store = RedisMetricsStore(where, prefix=prefix)
    await store.open()
    try:
        for _ in range(rounds):
            bucket = MinuteBucket(BucketKey({minute}, "p", "m", 200), count=1, duration_sum=0.5)
            await store.add([bucket], {{"t": 1.0}})
    finally:
        await store.close()

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
"""


async def test_two_processes_adding_concurrently_give_exact_sums(backend: Backend) -> None:
    rounds = 100
    async with opened(backend.make()) as store:  # creates the schema before the race
        command = [sys.executable, "-c", CHILD.format(minute=M0), *backend.argv, str(rounds)]
        async with anyio.create_task_group() as group:
            for _ in range(2):
                group.start_soon(anyio.run_process, command)
        [found] = await store.buckets(M0, M0 + 60)
        assert (found.count, found.duration_sum) == (2 * rounds, rounds * 1.0)
        assert await store.totals() == {"t": 2.0 * rounds}


async def test_calls_on_a_store_that_is_not_open_raise_store_error(backend: Backend) -> None:
    store = backend.make()
    with pytest.raises(StoreError, match="not open"):
        await store.totals()
    await store.close()  # closing what was never opened is fine


# --- URLs --------------------------------------------------------------------------------


def test_open_metrics_store_picks_the_backend_from_the_url(tmp_path: Path) -> None:
    store = open_metrics_store(f"sqlite:///{tmp_path}/m.db")
    assert isinstance(store, SqliteMetricsStore) and store.path == f"{tmp_path}/m.db"
    relative = open_metrics_store("sqlite:///data/m.db")
    assert isinstance(relative, SqliteMetricsStore) and relative.path == "data/m.db"
    memory = open_metrics_store("sqlite:///:memory:")
    assert isinstance(memory, SqliteMetricsStore) and memory.path == ":memory:"
    remote = open_metrics_store("rediss://:pw@cache.example:6380/2")
    assert (
        isinstance(remote, RedisMetricsStore) and remote.url == "rediss://***@cache.example:6380/2"
    )
    for bad in ("postgres://:pw@db/x", "sqlite://", "sqlite:///", "sqlite:///m.db?mode=ro"):
        with pytest.raises(ValueError) as info:
            open_metrics_store(bad)
        assert "pw" not in str(info.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:secret@host:6379/0", "redis://***@host:6379/0"),
        ("redis://user:secret@host/0", "redis://***@host/0"),
        ("rediss://:se@c/r#et@host:1/0", "rediss://***@host:1/0"),
        ("redis://host:6379/0?password=secret&db=1", "redis://host:6379/0?password=***&db=1"),
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("sqlite:///data/a@b.db", "sqlite:///data/a@b.db"),
    ],
)
def test_redact_url_hides_passwords(url: str, shown: str) -> None:
    assert redact_url(url) == shown


# --- SQLite ------------------------------------------------------------------------------


async def test_sqlite_uses_wal_and_creates_the_schema(tmp_path: Path) -> None:
    path = tmp_path / "metrics.db"
    async with opened(SqliteMetricsStore(str(path))):
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        conn.close()
    assert {"buckets", "totals"} <= tables


async def test_sqlite_in_memory(tmp_path: Path) -> None:
    async with opened(open_metrics_store("sqlite:///:memory:")) as store:
        await store.add([bucket()], {"t": 1.0})
        assert plain(await store.buckets(M0, M0 + 60)) == plain([bucket()])


async def test_a_write_waiting_for_a_lock_does_not_block_the_event_loop(tmp_path: Path) -> None:
    path = tmp_path / "metrics.db"
    async with opened(SqliteMetricsStore(str(path), busy_timeout=0.3)) as store:
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        ticker = asyncio.create_task(tick())
        try:
            with pytest.raises(StoreError, match="database is locked"):
                await store.add([bucket()], {"t": 1.0})
        finally:
            ticker.cancel()
            holder.execute("ROLLBACK")
            holder.close()
        assert ticks >= 10  # the loop kept running while the worker waited 0.3 s
        assert await store.totals() == {}  # nothing half-applied


async def test_a_corrupt_file_is_moved_aside_and_history_starts_fresh(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "metrics.db"
    path.write_bytes(b"this is not a database, just garbage " * 200)
    path.chmod(0o600)  # as the store makes its files: a looser mode is warned about too
    recorder = HistoryRecorder(SqliteMetricsStore(str(path)), flush_interval=60)
    with caplog.at_level(logging.WARNING):
        await recorder.start()
    try:
        assert await recorder.restore_totals() == {}
        recorder.add_total("t", 1.0)
        assert await recorder.flush()
    finally:
        await recorder.stop()
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "corrupt" in warning.getMessage() and str(path) in warning.getMessage()
    [aside] = matching(tmp_path, "metrics.db.corrupt-*")
    assert aside.read_bytes().startswith(b"this is not a database")
    async with opened(SqliteMetricsStore(str(path))) as store:
        assert await store.totals() == {"t": 1.0}


async def test_a_database_locked_at_open_falls_back_to_memory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "metrics.db"
    holder = sqlite3.connect(path, isolation_level=None)  # rollback journal: locks readers out
    holder.execute("CREATE TABLE other (x)")
    holder.execute("BEGIN EXCLUSIVE")
    path.chmod(0o600)  # as the store makes its files: a looser mode is warned about too
    store = SqliteMetricsStore(str(path), busy_timeout=0.05)
    recorder = HistoryRecorder(store, flush_interval=60)
    try:
        with caplog.at_level(logging.WARNING):
            await recorder.start()
        assert store.in_memory
        recorder.add_total("t", 1.0)
        assert await recorder.flush()
        assert await recorder.restore_totals() == {"t": 1.0}
    finally:
        await recorder.stop()
        holder.execute("ROLLBACK")
        holder.close()
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "database is locked" in warning.getMessage()
    assert "in memory" in warning.getMessage() and str(path) in warning.getMessage()
    assert path.exists() and not matching(tmp_path, "*.corrupt-*")  # locked is not corrupt


async def test_an_unopenable_path_falls_back_to_memory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = SqliteMetricsStore(str(tmp_path / "missing" / "metrics.db"))
    with caplog.at_level(logging.WARNING):
        async with opened(store):
            assert store.in_memory
            await store.add([bucket()], {})
            assert len(await store.buckets(M0, M0 + 60)) == 1
    assert "unable to open database file" in caplog.text


async def test_a_locked_database_fails_the_flush_without_raising(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "metrics.db"
    recorder = HistoryRecorder(SqliteMetricsStore(str(path), busy_timeout=0.05), clock=lambda: M0)
    await recorder.start()
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        recorder.record("openai", "gpt-4o", 200, 0.5)
        with caplog.at_level(logging.WARNING):
            assert not await recorder.flush()
        assert "database is locked" in caplog.text and str(path) in caplog.text
        assert [b.count for b in await recorder.history(M0, M0 + 60)] == [1]  # still pending
        holder.execute("ROLLBACK")
        assert await recorder.flush()
    finally:
        holder.close()
        await recorder.stop()
    async with opened(SqliteMetricsStore(str(path))) as store:
        assert [b.count for b in await store.buckets(M0, M0 + 60)] == [1]


# --- Redis -------------------------------------------------------------------------------


async def test_redis_with_a_password(tmp_path: Path) -> None:
    with redis_server(password="s3cret-pw") as server:
        store = RedisMetricsStore(server.url)
        assert "s3cret-pw" not in store.url
        async with opened(store):
            await store.add([bucket()], {"t": 1.0})
            assert await store.totals() == {"t": 1.0}


async def test_unreachable_redis_is_logged_without_its_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()
    store = RedisMetricsStore(f"redis://:hunter2@127.0.0.1:{port}/0", timeout=1.0)
    recorder = HistoryRecorder(store, flush_interval=60, clock=lambda: M0)
    with caplog.at_level(logging.DEBUG, logger="llm_proxy_mw"):
        await recorder.start()
        recorder.record("openai", "gpt-4o", 200, 0.5)
        assert not await recorder.flush()
        # Redis is down: only what the pending bucket adds (0.5 s is histogram slot 5).
        assert await recorder.restore_totals() == {
            '["requests","openai","gpt-4o",200]': 1.0,
            '["duration_sum","openai","gpt-4o"]': 0.5,
            '["duration","openai","gpt-4o",5]': 1.0,
        }
        assert [b.count for b in await recorder.history(M0, M0 + 60)] == [1]
        await recorder.stop()
    assert f"redis://***@127.0.0.1:{port}/0" in caplog.text
    assert "hunter2" not in caplog.text
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2  # the outage began; the batch left unwritten at shutdown
    assert "open failed" in warnings[0].getMessage()
    assert "lost 1 unwritten buckets" in warnings[1].getMessage()


def corrupt_after_first_page(path: Path) -> None:
    """Overwrite every page but the first (header and schema): tables become garbage."""
    with path.open("r+b") as file:
        file.seek(4096)
        file.write(b"\xa5" * (path.stat().st_size - 4096))


async def test_corruption_found_after_opening_starts_a_fresh_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "metrics.db"
    async with opened(SqliteMetricsStore(str(path))) as store:
        rows = [bucket(M0 + 60 * i, f"p{j}") for i in range(200) for j in range(5)]
        await store.add(rows, {"t": 1.0})
    corrupt_after_first_page(path)
    recorder = HistoryRecorder(SqliteMetricsStore(str(path)), flush_interval=3600)
    await recorder.start()  # the header is fine: this opens
    try:
        recorder.add_total("t", 1.0)
        with caplog.at_level(logging.WARNING):
            assert not await recorder.flush()  # meets the corrupt pages
        assert "is corrupt" in caplog.text and "malformed" in caplog.text
        assert await recorder.flush()  # the same batch, into the fresh file
        assert await recorder.restore_totals() == {"t": 1.0}
    finally:
        await recorder.stop()
    assert len(matching(tmp_path, "metrics.db.corrupt-*")) == 1


# --- numbers a store cannot hold ---------------------------------------------------------

UNSTORABLE: dict[str, tuple[str, object]] = {
    "prompt 1e20": ("prompt_tokens", 10**20),
    "prompt 1e400": ("prompt_tokens", 10**400),
    "completion 5000 digits": ("completion_tokens", 10**5000 - 1),
    "histogram slot 1e20": ("duration_counts", [10**20] + [0] * 15),
    "negative count": ("count", -1),
    "fractional count": ("ttfb_count", 1.5),
    "NaN duration sum": ("duration_sum", math.nan),
    "infinite ttfb sum": ("ttfb_sum", math.inf),
}


@pytest.mark.parametrize(("field", "value"), UNSTORABLE.values(), ids=UNSTORABLE.keys())
async def test_a_bucket_the_store_cannot_hold_is_dropped_and_the_rest_is_written(
    backend: Backend, field: str, value: object, caplog: pytest.LogCaptureFixture
) -> None:
    absurd = bucket(M0, "absurd")
    setattr(absurd, field, value)
    good = [bucket(M0), bucket(M0 + 60, "anthropic")]
    async with opened(backend.make()) as store:
        with caplog.at_level(logging.WARNING):
            await store.add([good[0], absurd, good[1]], {"t": 1.0, "nan": math.nan})
            await store.add([], {"t": 1.0})
        assert plain(await store.buckets(M0, M0 + 120)) == plain(good)
        assert await store.totals() == {"t": 2.0}
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "absurd" in warning and field in warning and "nan" in warning
    assert len(warning) < 1000  # the number itself is not in it


async def test_redis_skips_a_bucket_that_would_overflow_what_is_stored(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    prefix = f"test-{uuid.uuid4().hex}:"
    series = json.dumps(["openai", "gpt-4o", 200])
    near_max = str(2**63 - 5)
    raw = Redis.from_url(redis_url, decode_responses=True)
    try:
        await raw.hset(f"{prefix}minute:{M0}", f"{series}|prompt_tokens", near_max)
        await raw.set(f"{prefix}minute:{M0 + 60}", "not a hash")
        await raw.hset(f"{prefix}totals", "full", "1.7e308")
        async with opened(RedisMetricsStore(redis_url, prefix=prefix)) as store:
            with caplog.at_level(logging.WARNING):
                await store.add(
                    [bucket(M0), bucket(M0, "anthropic"), bucket(M0 + 60), bucket(M0 + 120)],
                    {"t": 1.0, "full": 1e308},
                )
            stored = await raw.hgetall(f"{prefix}minute:{M0}")
            found = await store.buckets(M0, M0 + 180)
            totals = await store.totals()
    finally:
        await raw.aclose()
    # The overflowing bucket is skipped whole: none of its other fields moved.
    assert {k: v for k, v in stored.items() if k.startswith(series)} == {
        f"{series}|prompt_tokens": near_max
    }
    assert plain([b for b in found if b.key.provider == "anthropic"]) == plain(
        [bucket(M0, "anthropic")]
    )
    assert [b.key.minute for b in found] == [M0, M0, M0 + 120]
    assert totals == {"t": 1.0, "full": 1.7e308}
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "2 buckets" in warning and "1 total" in warning


async def test_sqlite_drops_a_bucket_it_cannot_bind_and_writes_the_rest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    unencodable = bucket(M0, model="gpt-\ud800")  # a lone surrogate: not UTF-8
    async with opened(SqliteMetricsStore(str(tmp_path / "m.db"))) as store:
        with caplog.at_level(logging.WARNING):
            await store.add([bucket(M0), unencodable, bucket(M0, "anthropic")], {"t": 1.0})
        assert plain(await store.buckets(M0, M0 + 60)) == plain(
            [bucket(M0, "anthropic"), bucket(M0)]
        )
        assert await store.totals() == {"t": 1.0}
    assert "surrogates not allowed" in caplog.text
