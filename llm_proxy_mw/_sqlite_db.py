"""What both SQLite stores (metrics history, tokens) share: opening the file so that only
its owner can read it, and the one kind of write transaction.

The ``[store]`` file holds the token signing key: whoever reads it can sign an admin token.
SQLite creates a database file with mode 0644 (less the umask), and its ``-wal``, ``-shm``
and ``-journal`` files with the mode of the database file. So the database file is created
here first, 0600, with ``os.open`` (no process-wide umask change), and SQLite's companions
follow it. Files that already exist and that group or others may use (an older version
made them 0644) are changed to 0600 with a warning, since their content may have leaked;
a file whose mode cannot be changed (another user owns it) is refused.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["connect_private", "immediate_transaction"]

_T = TypeVar("_T")

logger = logging.getLogger("llm_proxy_mw.store")

_COMPANIONS = ("-wal", "-shm", "-journal")
_OTHERS = stat.S_IRWXG | stat.S_IRWXO


def connect_private(path: str, *, timeout: float) -> sqlite3.Connection:
    """``sqlite3.connect`` with explicit transactions (``isolation_level=None``), on a file
    only its owner can read or write. Raises ``sqlite3.OperationalError`` when the file
    cannot be created or made private."""
    if path != ":memory:" and os.name == "posix":  # Windows has no such mode bits
        _make_private(path)
    return sqlite3.connect(path, timeout=timeout, isolation_level=None)


def _make_private(path: str) -> None:
    # Only a file that does not exist yet is opened here: closing a descriptor drops every
    # POSIX lock the process holds on the file, the locks of the store connections already
    # open on it included. Without them, another process takes the file for unused, and may
    # checkpoint and delete the WAL that those connections keep writing to.
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass
    except OSError as exc:
        raise sqlite3.OperationalError(f"unable to open database file: {exc}") from exc
    _restrict(path)
    for suffix in _COMPANIONS:
        _restrict(path + suffix)


def _restrict(path: str) -> None:
    try:
        found = os.stat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise sqlite3.OperationalError(f"unable to open database file: {exc}") from exc
    mode = stat.S_IMODE(found)
    if not mode & _OTHERS or not stat.S_ISREG(found):  # SQLite fails on what is no file
        return
    try:
        os.chmod(path, mode & ~_OTHERS)
    except OSError as exc:
        raise sqlite3.OperationalError(
            f"{path} can be read or written by other users (mode {mode:04o}) and its mode "
            f"cannot be changed ({exc.strerror}): refusing to keep the store in it"
        ) from exc
    logger.warning(
        "llm_proxy_mw: store file %s could be read or written by other users (mode %04o); "
        "changed it to %04o. It may hold the token signing key: if anyone else could "
        "read it, treat that key as leaked and replace it",
        path,
        mode,
        mode & ~_OTHERS,
    )


def immediate_transaction(conn: sqlite3.Connection, function: Callable[..., _T], *args: Any) -> _T:
    """Run ``function(conn, *args)`` in one ``BEGIN IMMEDIATE`` transaction.

    IMMEDIATE takes the write lock up front: a busy database fails (after the busy timeout)
    before anything was applied, never halfway through a batch, and two writers never both
    read the same row as unchanged (a refresh token can be rotated only once).
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = function(conn, *args)
        conn.execute("COMMIT")
    except BaseException:  # whatever interrupted the batch: undo it, then re-raise
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return result
