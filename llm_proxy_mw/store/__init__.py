"""Metrics history stores: ``open_metrics_store(url)`` picks the backend from the URL.

``sqlite:///relative/path.db``, ``sqlite:////abs/path.db`` or ``sqlite:///:memory:`` for
one process (the default); ``redis://[:password@]host:port/db`` or ``rediss://`` for several
workers or replicas sharing one history (needs the ``redis`` extra).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llm_proxy_mw._store_urls import redact_url, sqlite_path
from llm_proxy_mw.history import MetricsStore, StoreError
from llm_proxy_mw.store._sqlite import SqliteMetricsStore

if TYPE_CHECKING:
    from llm_proxy_mw.store._redis import RedisMetricsStore

__all__ = [
    "MetricsStore",
    "RedisMetricsStore",
    "SqliteMetricsStore",
    "StoreError",
    "open_metrics_store",
    "redact_url",
]


def open_metrics_store(url: str, *, memory_fallback: bool = True) -> MetricsStore:
    """The store for a ``[store] url``, not yet connected: ``await store.open()`` it (the
    ``HistoryRecorder`` does). A malformed URL or a missing client raises at once, since that
    is a configuration mistake, not an outage. ``memory_fallback``: see ``SqliteMetricsStore``."""
    scheme = url.partition("://")[0].lower()
    if scheme == "sqlite":
        return SqliteMetricsStore(sqlite_path(url), url=url, memory_fallback=memory_fallback)
    if scheme in ("redis", "rediss"):
        return _redis_store()(url)
    raise ValueError(
        f"unsupported metrics store URL {redact_url(url)!r}: use sqlite:// or redis://"
    )


def _redis_store() -> type[RedisMetricsStore]:
    try:
        from llm_proxy_mw.store._redis import RedisMetricsStore
    except ImportError as exc:  # redis is an optional extra
        raise ImportError(
            "a redis:// metrics store needs the redis client: pip install 'llm-proxy-mw[redis]'"
        ) from exc
    return RedisMetricsStore


def __getattr__(name: str) -> object:
    # Imported on first use, so that the redis client stays an optional dependency.
    if name == "RedisMetricsStore":
        return _redis_store()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
