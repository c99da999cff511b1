"""SQLite token store: the embedded default, for one process.

It shares the ``[store] url`` file with the metrics history, in tables of its own
(``token_families``, ``token_refresh``, ``token_signing_keys``) and over a connection of its
own. As there, every call runs in one dedicated worker thread that owns the connection, so
the event loop never waits on the disk, and every write is one ``BEGIN IMMEDIATE``
transaction: a refresh rotation or a theft-triggered revocation is all or nothing.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, TypeVar

from llm_proxy_mw._sqlite_db import connect_private, immediate_transaction
from llm_proxy_mw.auth.token_store._base import Family, RefreshRecord, Rotation, StoreError

__all__ = ["SqliteTokenStore"]

_T = TypeVar("_T")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS token_families (
    id TEXT PRIMARY KEY, owner TEXT NOT NULL, name TEXT NOT NULL, admin INTEGER NOT NULL,
    scope TEXT NOT NULL, access_ttl INTEGER NOT NULL, created REAL NOT NULL,
    expires REAL NOT NULL, revoked REAL, identity TEXT NOT NULL DEFAULT ''
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS token_families_owner ON token_families (owner, created);
CREATE INDEX IF NOT EXISTS token_families_expires ON token_families (expires);
CREATE TABLE IF NOT EXISTS token_refresh (
    hash TEXT PRIMARY KEY, family TEXT NOT NULL, issued REAL NOT NULL, used REAL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS token_refresh_family ON token_refresh (family);
CREATE TABLE IF NOT EXISTS token_signing_keys (
    algorithm TEXT PRIMARY KEY, jwk TEXT NOT NULL
) WITHOUT ROWID;
"""
_FAMILY = "id, owner, name, admin, scope, access_ttl, created, expires, revoked, identity"


class SqliteTokenStore:
    """A ``TokenStore`` in one SQLite file (or ``:memory:``, which forgets on restart)."""

    def __init__(self, path: str, *, url: str | None = None, busy_timeout: float = 5.0) -> None:
        self.path = path
        self.url = url or f"sqlite:///{path}"
        self.busy_timeout = busy_timeout
        self._conn: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def open(self) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="llm_proxy_mw-tokens")
        if self._conn is None:
            await self._call(self._open)
        await self._call(self._write, _add_identity_column)

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(executor, self._close)
        finally:
            executor.shutdown(wait=False)  # its only thread is idle now and exits at once

    async def signing_key(self, algorithm: str, candidate: str) -> str:
        return await self._call(self._write, _signing_key, algorithm, candidate)

    async def add_family(
        self, family: Family, refresh_hash: str, *, limit: int | None = None
    ) -> bool:
        return await self._call(self._write, _add_family, family, refresh_hash, limit)

    async def family(self, family_id: str) -> Family | None:
        rows = await self._call(
            self._read, f"SELECT {_FAMILY} FROM token_families WHERE id = ?", (family_id,)
        )
        return _family(rows[0]) if rows else None

    async def families(self, owner: str | None, now: float) -> list[Family]:
        sql = f"SELECT {_FAMILY} FROM token_families WHERE expires > ?"
        params: tuple[Any, ...] = (now,)
        if owner is not None:
            sql, params = sql + " AND owner = ?", (now, owner)
        rows = await self._call(self._read, sql + " ORDER BY created, id", params)
        return [_family(row) for row in rows]

    async def refresh_record(self, refresh_hash: str) -> RefreshRecord | None:
        rows = await self._call(self._read, _SELECT_REFRESH, (refresh_hash,))
        if not rows:
            return None
        issued, used, *family = rows[0]
        return RefreshRecord(_family(family), issued, used)

    async def rotate(self, old_hash: str, new_hash: str, now: float) -> Rotation:
        return await self._call(self._write, _rotate, old_hash, new_hash, now)

    async def revoke(self, family_id: str, now: float) -> bool:
        return await self._call(self._write, _revoke, family_id, now)

    async def revoked(self, now: float) -> dict[str, float]:
        rows = await self._call(
            self._read,
            "SELECT id, expires FROM token_families WHERE revoked IS NOT NULL AND expires > ?",
            (now,),
        )
        return {family_id: expires for family_id, expires in rows}

    async def revocations(self) -> AsyncGenerator[str | None, None]:
        # One process: every revocation is already in its memory, nothing to hear about.
        yield None
        await asyncio.Event().wait()

    async def purge(self, now: float) -> int:
        return await self._call(self._write, _purge, now)

    async def _call(self, function: Callable[..., _T], *args: Any) -> _T:
        if self._executor is None:
            raise StoreError(f"{self.url}: the token store is not open")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, functools.partial(function, *args))
        except sqlite3.Error as exc:
            raise StoreError(f"{self.url}: token store: {exc}") from exc

    # Everything below runs in the worker thread.

    def _open(self) -> None:
        # Transactions are explicit (BEGIN IMMEDIATE ... COMMIT); only the owner may read.
        conn = connect_private(self.path, timeout=self.busy_timeout)
        try:
            if self.path != ":memory:":
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = NORMAL")
            conn.executescript(f"BEGIN IMMEDIATE; {_SCHEMA} COMMIT;")
        except BaseException:  # any failure (even a cancellation): close, then re-raise
            conn.close()
            raise
        self._conn = conn

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise sqlite3.ProgrammingError("the token store is not open")
        return self._conn

    def _write(self, function: Callable[..., _T], *args: Any) -> _T:
        return immediate_transaction(self._connection(), function, *args)

    def _read(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        return self._connection().execute(sql, params).fetchall()


_SELECT_REFRESH = (
    "SELECT r.issued, r.used, "
    + ", ".join(f"f.{column.strip()}" for column in _FAMILY.split(","))
    + " FROM token_refresh r JOIN token_families f ON f.id = r.family WHERE r.hash = ?"
)


def _family(row: Any) -> Family:
    family_id, owner, name, admin, scope, access_ttl, created, expires, revoked, identity = row
    return Family(
        family_id, owner, name, bool(admin), scope, access_ttl, created, expires, revoked, identity
    )


def _add_identity_column(conn: sqlite3.Connection) -> None:
    # A store written before families kept their owner's identity gets the column.
    columns = {row[1] for row in conn.execute("PRAGMA table_info(token_families)")}
    if "identity" not in columns:
        conn.execute("ALTER TABLE token_families ADD COLUMN identity TEXT NOT NULL DEFAULT ''")


def _signing_key(conn: sqlite3.Connection, algorithm: str, candidate: str) -> str:
    conn.execute(
        "INSERT OR IGNORE INTO token_signing_keys (algorithm, jwk) VALUES (?, ?)",
        (algorithm, candidate),
    )
    (stored,) = conn.execute(
        "SELECT jwk FROM token_signing_keys WHERE algorithm = ?", (algorithm,)
    ).fetchone()
    return str(stored)


def _add_family(
    conn: sqlite3.Connection, family: Family, refresh_hash: str, limit: int | None
) -> bool:
    if limit is not None:
        (live,) = conn.execute(
            "SELECT COUNT(*) FROM token_families "
            "WHERE owner = ? AND revoked IS NULL AND expires > ?",
            (family.owner, family.created),
        ).fetchone()
        if live >= limit:
            return False
    conn.execute(
        f"INSERT INTO token_families ({_FAMILY}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            *(family.id, family.owner, family.name, int(family.admin), family.scope),
            *(family.access_ttl, family.created, family.expires, family.revoked),
            family.identity,
        ),
    )
    conn.execute(
        "INSERT INTO token_refresh (hash, family, issued, used) VALUES (?, ?, ?, NULL)",
        (refresh_hash, family.id, family.created),
    )
    return True


def _rotate(conn: sqlite3.Connection, old_hash: str, new_hash: str, now: float) -> Rotation:
    row = conn.execute(_SELECT_REFRESH, (old_hash,)).fetchone()
    if row is None:
        return Rotation("unknown")
    _issued, used, *columns = row
    family = _family(columns)
    if family.revoked is not None:
        return Rotation("revoked", family)
    if family.expires <= now:
        return Rotation("expired", family)
    if used is not None:
        conn.execute("UPDATE token_families SET revoked = ? WHERE id = ?", (now, family.id))
        return Rotation("reused", replace(family, revoked=now))
    conn.execute("UPDATE token_refresh SET used = ? WHERE hash = ?", (now, old_hash))
    conn.execute(
        "INSERT INTO token_refresh (hash, family, issued, used) VALUES (?, ?, ?, NULL)",
        (new_hash, family.id, now),
    )
    return Rotation("rotated", family)


def _revoke(conn: sqlite3.Connection, family_id: str, now: float) -> bool:
    found = conn.execute("SELECT revoked FROM token_families WHERE id = ?", (family_id,))
    row = found.fetchone()
    if row is None:
        return False
    if row[0] is None:
        conn.execute("UPDATE token_families SET revoked = ? WHERE id = ?", (now, family_id))
    return True


def _purge(conn: sqlite3.Connection, now: float) -> int:
    conn.execute(
        "DELETE FROM token_refresh WHERE family IN "
        "(SELECT id FROM token_families WHERE expires <= ?)",
        (now,),
    )
    return conn.execute("DELETE FROM token_families WHERE expires <= ?", (now,)).rowcount
