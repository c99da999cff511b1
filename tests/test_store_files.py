"""The SQLite store file holds the token signing key: only its owner may read it.

Both SQLite stores (metrics history and tokens) share the ``[store] url`` file and open it
through one helper. Fresh files are tested under umask 0, the most permissive, so that their
modes come from the code and not from the umask; the ``-wal`` and ``-shm`` files are looked
at while the stores hold the file open (SQLite removes them at the last close).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from llm_proxy_mw import build_proxy
from llm_proxy_mw.auth.token_store import SqliteTokenStore
from llm_proxy_mw.history import BucketKey, MinuteBucket
from llm_proxy_mw.store import SqliteMetricsStore, StoreError

pytestmark = pytest.mark.anyio

ADMIN_KEY = "admin-key-0123456789abcdef"
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
PRIVATE = {"s.db": 0o600, "s.db-wal": 0o600, "s.db-shm": 0o600}


@pytest.fixture
def open_umask() -> Iterator[None]:
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def modes(path: Path) -> dict[str, int]:
    """The permission bits of the database file and its companions, by name."""
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in path.parent.glob(path.name + "*")}


def tables(path: Path) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        return {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    finally:
        conn.close()


async def write_something(store: SqliteMetricsStore | SqliteTokenStore) -> None:
    if isinstance(store, SqliteTokenStore):
        await store.signing_key("EdDSA", '{"kty": "OKP"}')
    else:
        await store.add([MinuteBucket(BucketKey(60, "p", "m", 200), count=1)], {"t": 1.0})


STORES = {"metrics": SqliteMetricsStore, "tokens": SqliteTokenStore}


async def test_the_proxy_creates_its_store_files_for_its_owner_only(
    tmp_path: Path, open_umask: None
) -> None:
    path = tmp_path / "s.db"
    proxy = build_proxy(
        {
            "providers": {"echo": {"kind": "echo"}},
            "auth": {"api_keys": [{"name": "root", "key": ADMIN_KEY, "admin": True}]},
            "store": {"url": f"sqlite:///{path}"},
        }
    )
    headers = {"authorization": f"Bearer {ADMIN_KEY}"}
    transport = httpx.ASGITransport(app=proxy)
    async with (
        proxy.lifespan(),
        httpx.AsyncClient(transport=transport, base_url="http://h", headers=headers) as client,
    ):
        minted = await client.post("/auth/tokens", json={"name": "ci"})  # writes the key
        chat = await client.post("/v1/chat/completions", json=CHAT)
        assert proxy.history is not None and await proxy.history.flush()  # writes a batch
        found = modes(path)
    assert (minted.status_code, chat.status_code) == (201, 200)
    assert found == PRIVATE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize("kind", STORES)
async def test_each_sqlite_store_creates_its_files_for_its_owner_only(
    kind: str, tmp_path: Path, open_umask: None
) -> None:
    path = tmp_path / "s.db"
    store = STORES[kind](str(path))
    await store.open()
    try:
        await write_something(store)
        assert modes(path) == PRIVATE
    finally:
        await store.close()


@pytest.mark.parametrize("kind", STORES)
async def test_existing_files_others_can_read_are_made_private_with_a_warning(
    kind: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "s.db"
    older = sqlite3.connect(path, isolation_level=None)  # as an older version left it
    older.execute("PRAGMA journal_mode = WAL")
    older.execute("CREATE TABLE other (x)")
    for name, mode in {"s.db": 0o644, "s.db-wal": 0o666, "s.db-shm": 0o640}.items():
        os.chmod(tmp_path / name, mode)
    store = STORES[kind](str(path))
    try:
        with caplog.at_level(logging.WARNING):
            await store.open()
        await write_something(store)
        assert modes(path) == PRIVATE
    finally:
        await store.close()
        older.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3, warnings  # one per file
    assert all("other users" in w and "0600" in w for w in warnings)
    assert any(f"{path} " in w and "0644" in w for w in warnings)
    assert any("signing key" in w for w in warnings)


def deny_chmod(monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on, chmod fails as for a user who does not own the file (the tests may run
    as root, who could change any file's mode)."""

    def refuse(path: object, mode: int, **kwargs: object) -> None:
        raise PermissionError(1, "Operation not permitted", str(path))

    monkeypatch.setattr(os, "chmod", refuse)


async def test_a_metrics_store_whose_file_cannot_be_made_private_stays_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "s.db"
    path.touch()
    path.chmod(0o644)
    deny_chmod(monkeypatch)
    store = SqliteMetricsStore(str(path))
    with caplog.at_level(logging.WARNING):
        await store.open()
    try:
        assert store.in_memory
        await write_something(store)
    finally:
        await store.close()
    assert "other users" in caplog.text and "in memory" in caplog.text
    assert path.stat().st_size == 0  # refused: nothing was written into it


async def test_a_token_store_whose_file_cannot_be_made_private_refuses_to_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "s.db"
    sqlite3.connect(path).close()
    path.chmod(0o604)
    deny_chmod(monkeypatch)
    store = SqliteTokenStore(str(path))
    try:
        with pytest.raises(StoreError, match="other users"):
            await store.open()
    finally:
        await store.close()
    assert tables(path) == set()  # no signing key was written into a file others can read
    assert stat.S_IMODE(path.stat().st_mode) == 0o604


async def test_a_private_file_is_opened_without_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "s.db"
    for kind in STORES:
        store = STORES[kind](str(path))
        with caplog.at_level(logging.WARNING):
            await store.open()
        try:
            await write_something(store)
        finally:
            await store.close()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert {"buckets", "totals", "token_signing_keys"} <= tables(path)
