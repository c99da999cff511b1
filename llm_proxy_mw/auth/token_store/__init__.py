"""Where proxy-issued token families live: ``open_token_store(url)`` picks the backend.

The same ``[store] url`` as the metrics history, in tables or keys of its own: SQLite for
one process (the default), Redis for several workers or replicas, which then share the
signing key, the families and every revocation (needs the ``redis`` extra).
"""

from __future__ import annotations

from llm_proxy_mw._store_urls import redact_url, sqlite_path
from llm_proxy_mw.auth.token_store._base import (
    Family,
    RefreshRecord,
    Rotation,
    StoreError,
    TokenStore,
)
from llm_proxy_mw.auth.token_store._revocations import RevocationSync
from llm_proxy_mw.auth.token_store._sqlite import SqliteTokenStore

__all__ = [
    "Family",
    "RefreshRecord",
    "RevocationSync",
    "Rotation",
    "SqliteTokenStore",
    "StoreError",
    "TokenStore",
    "open_token_store",
]


def open_token_store(url: str) -> TokenStore:
    """The token store for a ``[store] url``, not yet opened. A malformed URL or a missing
    redis client raises at once: that is a configuration mistake, not an outage."""
    scheme = url.partition("://")[0].lower()
    if scheme == "sqlite":
        return SqliteTokenStore(sqlite_path(url), url=url)
    if scheme in ("redis", "rediss"):
        try:
            from llm_proxy_mw.auth.token_store._redis import RedisTokenStore
        except ImportError as exc:  # redis is an optional extra
            raise ImportError(
                "a redis:// token store needs the redis client: pip install 'llm-proxy-mw[redis]'"
            ) from exc
        return RedisTokenStore(url)
    raise ValueError(f"unsupported token store URL {redact_url(url)!r}: use sqlite:// or redis://")
