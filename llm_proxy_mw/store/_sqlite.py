"""SQLite metrics store: the embedded default for one process.

All I/O runs in one dedicated worker thread (a single-thread executor that also owns the
connection), so the event loop never waits on the disk. The file is in WAL mode: readers
(the dashboard) never block the writer, and with ``synchronous=NORMAL`` a committed batch
survives a crash of the process (a power cut may lose the last few commits).

A file that is not a database or is corrupt is moved aside (``<name>.corrupt-<time>``) and
a fresh one created in its place, at open or when a later read meets a corrupt page; a file
that cannot be opened at all (locked by another program past the busy timeout, unwritable
directory) leaves the store running in memory for this run. Each is logged as one warning
and never raises out of ``open``: the proxy keeps serving, with history starting empty.
Other failures after opening (a lock held too long) raise ``StoreError``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from llm_proxy_mw._sqlite_db import connect_private, immediate_transaction
from llm_proxy_mw.history import DURATION_BUCKETS, BucketKey, MinuteBucket, StoreError
from llm_proxy_mw.store._checks import Dropped, describe, storable

__all__ = ["SqliteMetricsStore"]

logger = logging.getLogger("llm_proxy_mw.store")

_T = TypeVar("_T")
_SCHEMA_VERSION = 1
_SQLITE_CORRUPT, _SQLITE_NOTADB = 11, 26
_KEY = ("minute", "provider", "model", "status")
_SLOTS = tuple(f"d{i}" for i in range(len(DURATION_BUCKETS) + 1))
_VALUES = (
    ("count", "errors", "duration_sum")
    + _SLOTS
    + ("ttfb_sum", "ttfb_count", "prompt_tokens", "completion_tokens")
)
_COLUMNS = ", ".join(_KEY + _VALUES)
_FLOATS = {"duration_sum", "ttfb_sum"}
#: What one row's values can make SQLite raise (a lone surrogate, a NULL from a NaN, ...).
_ROW_ERRORS = (sqlite3.IntegrityError, sqlite3.DataError, OverflowError, ValueError)
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS buckets (
    minute INTEGER NOT NULL, provider TEXT NOT NULL, model TEXT NOT NULL, status INTEGER NOT NULL,
    {", ".join(f"{c} {'REAL' if c in _FLOATS else 'INTEGER'} NOT NULL" for c in _VALUES)},
    PRIMARY KEY (minute, provider, model, status)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS totals (key TEXT PRIMARY KEY, value REAL NOT NULL) WITHOUT ROWID;
PRAGMA user_version = {_SCHEMA_VERSION};
"""
_UPSERT_BUCKET = (
    f"INSERT INTO buckets ({_COLUMNS}) VALUES ({', '.join('?' * len(_KEY + _VALUES))}) "
    f"ON CONFLICT ({', '.join(_KEY)}) DO UPDATE SET "
    + ", ".join(f"{c} = {c} + excluded.{c}" for c in _VALUES)
)
_UPSERT_TOTAL = (
    "INSERT INTO totals (key, value) VALUES (?, ?) "
    "ON CONFLICT (key) DO UPDATE SET value = value + excluded.value"
)
_SELECT = (
    f"SELECT {_COLUMNS} FROM buckets WHERE minute >= ? AND minute < ? "
    "ORDER BY minute, provider, model, status"
)


class SqliteMetricsStore:
    """A ``MetricsStore`` in one SQLite file (or ``:memory:``).

    ``busy_timeout`` is how long a write waits for another connection's lock before it
    fails with ``StoreError`` (the recorder keeps the batch and retries). ``in_memory`` tells
    whether the store fell back to memory because the file could not be opened; without
    ``memory_fallback`` such a file fails ``open`` with ``StoreError`` instead.
    """

    def __init__(
        self,
        path: str,
        *,
        busy_timeout: float = 5.0,
        url: str | None = None,
        memory_fallback: bool = True,
    ) -> None:
        self.path = path
        self.url = url or f"sqlite:///{path}"
        self.busy_timeout = busy_timeout
        self.memory_fallback = memory_fallback
        self.in_memory = path == ":memory:"
        self._conn: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def open(self) -> None:
        if self._executor is None:
            self.in_memory = self.path == ":memory:"
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="llm_proxy_mw-sqlite")
            await self._call(self._open)

    async def close(self) -> None:
        executor = self._executor
        if executor is None:
            return
        try:
            await self._call(self._close)
        finally:
            self._executor = None
            executor.shutdown(wait=False)  # its only thread is idle now and exits at once

    async def add(self, buckets: Sequence[MinuteBucket], totals: dict[str, float]) -> None:
        kept, kept_totals, dropped = storable(buckets, totals)
        # Rows are built here, on the loop, so the worker thread never touches live buckets.
        rows = [
            (
                *(b.key.minute, b.key.provider, b.key.model, b.key.status),
                *(b.count, b.errors, b.duration_sum, *b.duration_counts, b.ttfb_sum),
                *(b.ttfb_count, b.prompt_tokens, b.completion_tokens),
            )
            for b in kept
        ]
        await self._call(self._write, _add_rows, rows, list(kept_totals.items()), dropped)
        dropped.warn(self.url)

    async def totals(self) -> dict[str, float]:
        rows = await self._call(self._read, "SELECT key, value FROM totals", ())
        return {key: float(value) for key, value in rows}

    async def buckets(self, since_minute: int, until_minute: int) -> list[MinuteBucket]:
        rows = await self._call(self._read, _SELECT, (since_minute, until_minute))
        return [_bucket(row) for row in rows]

    async def purge(self, before_minute: int) -> int:
        return await self._call(self._write, _delete_before, before_minute)

    async def _call(self, function: Callable[..., _T], *args: Any) -> _T:
        if self._executor is None:
            raise StoreError(f"{self.url}: the store is not open")
        loop = asyncio.get_running_loop()
        try:
            call = functools.partial(self._guarded, function, *args)
            return await loop.run_in_executor(self._executor, call)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.url}: {exc}") from exc

    # Everything below runs in the worker thread.

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise sqlite3.ProgrammingError("the store is not open")
        return self._conn

    def _write(self, function: Callable[..., _T], *args: Any) -> _T:
        return immediate_transaction(self._connection(), function, *args)

    def _read(self, sql: str, params: tuple[int, ...]) -> list[Any]:
        return self._connection().execute(sql, params).fetchall()

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _guarded(self, function: Callable[..., _T], *args: Any) -> _T:
        try:
            return function(*args)
        except sqlite3.DatabaseError as exc:
            # Corruption inside the file shows only when a page is read: start afresh now,
            # fail this call (the recorder keeps its batch), and the next one succeeds.
            if _is_corrupt(exc) and not self.in_memory:
                self._close()
                self._start_fresh(exc)
            raise

    def _open(self) -> None:
        try:
            self._conn = self._connect(self.path)
        except sqlite3.Error as exc:
            if self.in_memory:
                raise
            if _is_corrupt(exc):
                self._start_fresh(exc)
            else:
                self._use_memory(exc)

    def _start_fresh(self, error: sqlite3.Error) -> None:
        moved = self._move_aside()
        if moved is not None:
            try:
                self._conn = self._connect(self.path)
            except sqlite3.Error as exc:
                error = exc
            else:
                logger.warning(
                    "llm_proxy_mw: metrics store %s is corrupt (%s); moved it to %s and "
                    "started a fresh one, so metrics history starts empty",
                    self.url,
                    error,
                    moved,
                )
                return
        self._use_memory(error)

    def _use_memory(self, error: sqlite3.Error) -> None:
        if not self.memory_fallback:
            raise error
        logger.warning(
            "llm_proxy_mw: cannot open metrics store %s (%s); keeping metrics history in "
            "memory for this run: it starts empty and will not survive a restart",
            self.url,
            error,
        )
        self.in_memory = True
        self._conn = self._connect(":memory:")

    def _connect(self, path: str) -> sqlite3.Connection:
        # Transactions are explicit (BEGIN IMMEDIATE ... COMMIT); only the owner may read.
        conn = connect_private(path, timeout=self.busy_timeout)
        try:
            if path != ":memory:":
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = NORMAL")
            # Reads need no write lock in WAL mode: an existing schema opens even while
            # another connection holds the write lock.
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            if version < _SCHEMA_VERSION:
                conn.executescript(f"BEGIN IMMEDIATE; {_SCHEMA} COMMIT;")
        except BaseException:  # any failure (even a cancellation): close, then re-raise
            conn.close()
            raise
        return conn

    def _move_aside(self) -> str | None:
        target = f"{self.path}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}"
        try:
            for suffix in ("-wal", "-shm", ""):  # the database last: its name is the marker
                if os.path.exists(self.path + suffix):
                    os.replace(self.path + suffix, target + suffix)
        except OSError as exc:
            logger.warning("llm_proxy_mw: cannot move corrupt %s aside: %s", self.url, exc)
            return None
        return target


def _is_corrupt(error: sqlite3.Error) -> bool:
    return (getattr(error, "sqlite_errorcode", 0) & 0xFF) in (_SQLITE_CORRUPT, _SQLITE_NOTADB)


def _add_rows(
    conn: sqlite3.Connection,
    rows: list[tuple[Any, ...]],
    totals: list[tuple[str, float]],
    dropped: Dropped,
) -> None:
    """Upsert row by row: a row SQLite refuses (a value it cannot bind or store) is dropped
    alone, as a failed statement leaves nothing behind; failures of the database itself
    (locked, full, corrupt) still fail the whole transaction."""
    for row in rows:
        try:
            conn.execute(_UPSERT_BUCKET, row)
        except _ROW_ERRORS as exc:
            dropped.buckets.append(f"{describe(BucketKey(*row[:4]))}: {exc}")
    for key, value in totals:
        try:
            conn.execute(_UPSERT_TOTAL, (key, value))
        except _ROW_ERRORS as exc:
            dropped.totals.append(f"total {key!r}: {exc}")


def _delete_before(conn: sqlite3.Connection, before_minute: int) -> int:
    return conn.execute("DELETE FROM buckets WHERE minute < ?", (before_minute,)).rowcount


def _bucket(row: tuple[Any, ...]) -> MinuteBucket:
    minute, provider, model, status, count, errors, duration_sum, *rest = row
    slots, (ttfb_sum, ttfb_count, prompt, completion) = rest[: len(_SLOTS)], rest[len(_SLOTS) :]
    return MinuteBucket(
        BucketKey(minute, provider, model, status),
        count=count,
        errors=errors,
        duration_sum=duration_sum,
        duration_counts=list(slots),
        ttfb_sum=ttfb_sum,
        ttfb_count=ttfb_count,
        prompt_tokens=prompt,
        completion_tokens=completion,
    )
