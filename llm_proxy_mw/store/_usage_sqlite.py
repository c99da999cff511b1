"""SQLite ``UsageStore``: the usage ledger of one process, in the ``[store]`` file.

A ``SqliteMetricsStore`` (one worker thread owning its own connection, WAL, a corrupt file
moved aside) that also holds the ``usage`` table: one row per minute, principal, model and
provider. Costs are whole picodollars; sums over many rows are taken by an exact aggregate
(``exact_sum``, Python integers), so no total overflows 64 bits or rounds through a float.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from llm_proxy_mw.ledger import PICODOLLARS, UsageBucket, UsageKey
from llm_proxy_mw.store._checks import MAX_COUNT, Dropped
from llm_proxy_mw.store._sqlite import _ROW_ERRORS, SqliteMetricsStore

__all__ = ["SqliteUsageStore", "stored_cost", "usage_problem"]

_KEY = ("minute", "principal", "model", "provider")
_COUNTS = (
    "requests",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "unpriced",
)
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS usage (
    minute INTEGER NOT NULL, principal TEXT NOT NULL, model TEXT NOT NULL,
    provider TEXT NOT NULL, {", ".join(f"{c} INTEGER NOT NULL" for c in _COUNTS)},
    cost_pusd INTEGER NOT NULL,
    PRIMARY KEY (minute, principal, model, provider)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS usage_principal ON usage (principal, minute);
"""
_VALUES = (*_COUNTS, "cost_pusd")
_UPSERT = (
    f"INSERT INTO usage ({', '.join(_KEY + _VALUES)}) "
    f"VALUES ({', '.join('?' * len(_KEY + _VALUES))}) "
    f"ON CONFLICT ({', '.join(_KEY)}) DO UPDATE SET "
    + ", ".join(f"{c} = {c} + excluded.{c}" for c in _VALUES)
)
_SUMS = ", ".join(f"exact_sum({c})" for c in _VALUES)
_SELECT = (
    f"SELECT ? + (minute - ?) / ? * ? AS start, principal, model, provider, {_SUMS} "
    "FROM usage WHERE minute >= ? AND minute < ? {where} "
    "GROUP BY start, principal, model, provider ORDER BY start, principal, model, provider"
)


def stored_cost(cost: Decimal) -> int:
    """A cost in whole picodollars, rounded half to even."""
    return int((cost / PICODOLLARS).to_integral_value())


def usage_problem(bucket: UsageBucket) -> str | None:
    """Why a store cannot hold ``bucket``, or ``None``."""
    values = [getattr(bucket, name) for name in _COUNTS]
    if not all(type(v) is int and 0 <= v <= MAX_COUNT for v in values):
        return "a count is not an integer in [0, 10**18)"
    if not bucket.cost_usd.is_finite() or not 0 <= stored_cost(bucket.cost_usd) <= MAX_COUNT:
        return "the cost is not in [0, 10**6) USD"
    return None


class _ExactSum:
    """SQLite aggregate: the sum of integers as decimal text, never past 64 bits."""

    def __init__(self) -> None:
        self.total = 0

    def step(self, value: int) -> None:
        self.total += value

    def finalize(self) -> str:
        return str(self.total)


class SqliteUsageStore(SqliteMetricsStore):
    """A ``UsageStore`` (and a ``MetricsStore``) in one SQLite file (or ``:memory:``)."""

    async def add_usage(self, buckets: Sequence[UsageBucket]) -> None:
        dropped = Dropped()
        rows: list[tuple[Any, ...]] = []
        for b in buckets:
            problem = usage_problem(b)
            if problem is not None:
                dropped.buckets.append(f"usage of {b.key}: {problem}")
                continue
            counts = (getattr(b, name) for name in _COUNTS)
            rows.append((*_key_values(b.key), *counts, stored_cost(b.cost_usd)))
        await self._call(self._write, _add_rows, rows, dropped)
        dropped.warn(self.url)

    async def usage(
        self, since: int, until: int, *, step: int, principal: str | None = None
    ) -> list[UsageBucket]:
        where, params = ("", ()) if principal is None else ("AND principal = ?", (principal,))
        sql = _SELECT.format(where=where)
        rows = await self._call(self._read, sql, (since, since, step, step, since, until, *params))
        return [_bucket(row) for row in rows]

    async def purge_usage(self, before: int) -> int:
        return await self._call(self._write, _delete_before, before)

    def _connect(self, path: str) -> sqlite3.Connection:
        conn = super()._connect(path)
        try:
            conn.create_aggregate("exact_sum", 1, _ExactSum)  # type: ignore[arg-type]
            # Reads need no write lock: only a file without the table takes one, to add it.
            found = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'usage'").fetchone()
            if found is None:
                conn.executescript(f"BEGIN IMMEDIATE; {_SCHEMA} COMMIT;")
        except BaseException:  # any failure (even a cancellation): close, then re-raise
            conn.close()
            raise
        return conn


def _key_values(key: UsageKey) -> tuple[int, str, str, str]:
    return (key.start, key.principal, key.model, key.provider)


def _add_rows(conn: sqlite3.Connection, rows: list[tuple[Any, ...]], dropped: Dropped) -> None:
    """Row by row: a row SQLite refuses (text it cannot encode) is dropped alone."""
    for row in rows:
        try:
            conn.execute(_UPSERT, row)
        except _ROW_ERRORS as exc:
            dropped.buckets.append(f"usage of {UsageKey(*row[:4])}: {exc}")


def _delete_before(conn: sqlite3.Connection, before: int) -> int:
    return conn.execute("DELETE FROM usage WHERE minute < ?", (before,)).rowcount


def _bucket(row: tuple[Any, ...]) -> UsageBucket:
    start, principal, model, provider, *sums = row
    *counts, cost = (int(value) for value in sums)
    return UsageBucket(
        UsageKey(start, principal, model, provider),
        **dict(zip(_COUNTS, counts, strict=True)),
        cost_usd=Decimal(cost) * PICODOLLARS,
    )
