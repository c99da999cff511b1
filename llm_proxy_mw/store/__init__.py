"""Metrics history stores: ``open_metrics_store(url)`` picks the backend from the URL;
``open_object_owners(url)`` likewise for which provider owns which object, and
``open_usage_store(url)`` for the usage ledger.

``sqlite:///relative/path.db``, ``sqlite:////abs/path.db`` or ``sqlite:///:memory:`` for
one process (the default); ``redis://[:password@]host:port/db`` or ``rediss://`` for several
workers or replicas sharing one history (needs the ``redis`` extra).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llm_proxy_mw._store_urls import redact_url, sqlite_path
from llm_proxy_mw.history import MetricsStore, StoreError
from llm_proxy_mw.ledger import UsageStore
from llm_proxy_mw.objects import ObjectOwners
from llm_proxy_mw.store._owners_sqlite import SqliteObjectOwners
from llm_proxy_mw.store._sqlite import SqliteMetricsStore
from llm_proxy_mw.store._usage_sqlite import SqliteUsageStore

if TYPE_CHECKING:
    from llm_proxy_mw.store._redis import RedisMetricsStore

__all__ = [
    "MetricsStore",
    "RedisMetricsStore",
    "SqliteMetricsStore",
    "SqliteObjectOwners",
    "SqliteUsageStore",
    "StoreError",
    "UsageStore",
    "open_metrics_store",
    "open_object_owners",
    "open_usage_store",
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


def open_object_owners(url: str, *, ttl: float) -> ObjectOwners:
    """Where the proxy remembers which provider created each object, for a ``[store] url``,
    not yet opened; each record is kept ``ttl`` seconds."""
    scheme = url.partition("://")[0].lower()
    if scheme == "sqlite":
        return SqliteObjectOwners(sqlite_path(url), ttl=ttl, url=url)
    if scheme in ("redis", "rediss"):
        _redis_store()  # the same clear error when the redis client is missing
        from llm_proxy_mw.store._owners_redis import RedisObjectOwners

        return RedisObjectOwners(url, ttl=ttl)
    raise ValueError(f"unsupported store URL {redact_url(url)!r}: use sqlite:// or redis://")


def open_usage_store(url: str) -> UsageStore:
    """The usage ledger's store for a ``[store] url``, not yet opened (the ledger does)."""
    scheme = url.partition("://")[0].lower()
    if scheme == "sqlite":
        return SqliteUsageStore(sqlite_path(url), url=url, memory_fallback=False)
    if scheme in ("redis", "rediss"):
        _redis_store()  # the same clear error when the redis client is missing
        from llm_proxy_mw.store._usage_redis import RedisUsageStore

        return RedisUsageStore(url)
    raise ValueError(f"unsupported store URL {redact_url(url)!r}: use sqlite:// or redis://")


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
