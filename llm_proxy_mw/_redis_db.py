"""What both Redis stores share: one client per store, opened and closed with it, and the
one place where redis-py's exceptions become the store's own error type."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import ClassVar

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import RedisError

from llm_proxy_mw._store_urls import redact_url

__all__ = ["RedisStoreBase"]


class RedisStoreBase:
    """A store's Redis connection; ``timeout`` bounds every connect and command (seconds).

    Subclasses name their error type and how they call themselves in error messages.
    """

    error: ClassVar[type[Exception]]
    #: What the store calls itself in "not open" errors, and before a failed operation.
    label: ClassVar[str] = "store"
    operation_prefix: ClassVar[str] = ""

    def __init__(self, url: str, *, prefix: str, timeout: float = 5.0) -> None:
        self.url = redact_url(url)
        self.prefix = prefix
        self._raw_url = url
        self._timeout = timeout
        self._client: Redis | None = None

    async def open(self) -> None:
        if self._client is None:
            self._client = Redis.from_url(
                self._raw_url,
                decode_responses=True,
                socket_timeout=self._timeout,
                socket_connect_timeout=self._timeout,
                # Few, short retries: the callers retry a failed write themselves.
                retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), retries=2),
            )
        with self._errors("open"):
            await self._client.ping()

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with self._errors("close"):
                await client.aclose()

    def _redis(self) -> Redis:
        if self._client is None:
            raise self.error(f"{self.url}: the {self.label} is not open")
        return self._client

    @contextmanager
    def _errors(self, operation: str) -> Iterator[None]:
        """The one place where redis-py's exceptions become ours (timeouts are OSErrors)."""
        try:
            yield
        except (RedisError, OSError) as exc:
            raise self.error(
                f"{self.url}: {self.operation_prefix}{operation} failed: {exc}"
            ) from exc
