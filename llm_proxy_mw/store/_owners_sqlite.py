"""SQLite ``ObjectOwners``: which provider created each file, batch or response, for one
process.

The table (``object_owners``) lives in the ``[store] url`` file beside the metrics history
and the tokens, over a connection of its own, in one worker thread that owns it: the event
loop never waits on the disk. Rows past their TTL are read as absent and deleted as new
ones are written.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from llm_proxy_mw._sqlite_db import connect_private, immediate_transaction
from llm_proxy_mw.errors import StoreError

__all__ = ["SqliteObjectOwners"]

_T = TypeVar("_T")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS object_owners (
    id TEXT PRIMARY KEY, provider TEXT NOT NULL, expires REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS object_owners_expires ON object_owners (expires);
"""
_UPSERT = (
    "INSERT INTO object_owners (id, provider, expires) VALUES (?, ?, ?) "
    "ON CONFLICT (id) DO UPDATE SET provider = excluded.provider, expires = excluded.expires"
)


class SqliteObjectOwners:
    """Object id -> provider name in one SQLite file (or ``:memory:``), each kept ``ttl``
    seconds after it was recorded, as ``clock`` (epoch seconds) tells."""

    def __init__(
        self,
        path: str,
        *,
        ttl: float,
        url: str | None = None,
        clock: Callable[[], float] = time.time,
        busy_timeout: float = 5.0,
    ) -> None:
        self.path = path
        self.url = url or f"sqlite:///{path}"
        self.ttl = ttl
        self._clock = clock
        self._busy_timeout = busy_timeout
        self._conn: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def open(self) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="llm_proxy_mw-objects")
            await self._call(self._open)

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return
        try:  # the worker closes the connection it owns; then it is idle, and exits at once
            await asyncio.get_running_loop().run_in_executor(executor, self._close)
        finally:
            executor.shutdown(wait=False)

    async def owner(self, object_id: str) -> str | None:
        return await self._call(self._owner, object_id, self._clock())

    async def record(self, object_id: str, provider: str) -> None:
        await self._call(self._record, object_id, provider, self._clock())

    async def _call(self, function: Callable[..., _T], *args: Any) -> _T:
        if self._executor is None:
            raise StoreError(f"{self.url}: the object owners store is not open")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.url}: {exc}") from exc

    # Everything below runs in the worker thread.

    def _open(self) -> None:
        conn = connect_private(self.path, timeout=self._busy_timeout)
        conn.executescript(_SCHEMA)
        self._conn = conn

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise sqlite3.ProgrammingError("the object owners store is not open")
        return self._conn

    def _owner(self, object_id: str, now: float) -> str | None:
        row = (
            self._connection()
            .execute(
                "SELECT provider FROM object_owners WHERE id = ? AND expires > ?",
                (object_id, now),
            )
            .fetchone()
        )
        return None if row is None else str(row[0])

    def _record(self, object_id: str, provider: str, now: float) -> None:
        immediate_transaction(self._connection(), _record, object_id, provider, now, self.ttl)


def _record(
    conn: sqlite3.Connection, object_id: str, provider: str, now: float, ttl: float
) -> None:
    # Creating objects is rare next to reading them: the rows that expired go here.
    conn.execute(_UPSERT, (object_id, provider, now + ttl))
    conn.execute("DELETE FROM object_owners WHERE expires <= ?", (now,))
