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

from llm_proxy_mw.ledger import COUNTS, PICODOLLARS, UsageBucket, UsageKey
from llm_proxy_mw.store._checks import MAX_COUNT, Dropped, _is_utf8
from llm_proxy_mw.store._sqlite import _ROW_ERRORS, SqliteMetricsStore

__all__ = ["SqliteUsageStore", "storable_usage", "stored_cost"]

_KEY = ("minute", "principal", "model", "provider")
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS usage (
    minute INTEGER NOT NULL, principal TEXT NOT NULL, model TEXT NOT NULL,
    provider TEXT NOT NULL, {", ".join(f"{c} INTEGER NOT NULL" for c in COUNTS)},
    cost_pusd INTEGER NOT NULL,
    PRIMARY KEY (minute, principal, model, provider)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS usage_principal ON usage (principal, minute);
"""
_VALUES = (*COUNTS, "cost_pusd")
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


def storable_usage(buckets: Sequence[UsageBucket]) -> tuple[list[UsageBucket], Dropped]:
    """The buckets a store can hold, and what it cannot (a name that is not UTF-8 text, a
    count past 10**18, a cost past 10**6 USD in one minute or not a number): dropped at
    once, as a retry would meet it again."""
    dropped = Dropped()
    kept: list[UsageBucket] = []
    for bucket in buckets:
        counts = [getattr(bucket, name) for name in COUNTS]
        cost = bucket.cost_usd
        key = bucket.key
        if not all(_is_utf8(name) for name in (key.principal, key.model, key.provider)):
            dropped.buckets.append(f"usage of {key!r}: a name is not UTF-8 text")
        elif not all(type(v) is int and 0 <= v <= MAX_COUNT for v in counts):
            dropped.buckets.append(f"usage of {bucket.key}: a count is not in [0, 10**18)")
        elif not cost.is_finite() or not 0 <= stored_cost(cost) <= MAX_COUNT:
            dropped.buckets.append(f"usage of {bucket.key}: the cost is not in [0, 10**6) USD")
        else:
            kept.append(bucket)
    return kept, dropped


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
        kept, dropped = storable_usage(buckets)
        rows = [
            (*_key_values(b.key), *(getattr(b, n) for n in COUNTS), stored_cost(b.cost_usd))
            for b in kept
        ]
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
        **dict(zip(COUNTS, counts, strict=True)),
        cost_usd=Decimal(cost) * PICODOLLARS,
    )
