"""Redis ``ObjectOwners``: which provider created each object, shared by every replica.

One string key per object under the prefix (default ``llm_proxy_mw:objects:``), its value
``<expires> <provider>`` and Redis' own expiry set to the TTL: Redis forgets it by itself,
and the expiry in the value lets an injected clock decide too (provider names have no
spaces).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from llm_proxy_mw._redis_db import RedisStoreBase
from llm_proxy_mw.errors import StoreError

__all__ = ["RedisObjectOwners"]


class RedisObjectOwners(RedisStoreBase):
    """Object id -> provider name in Redis, each kept ``ttl`` seconds."""

    error = StoreError
    label = "object owners store"
    operation_prefix = "object owners "

    def __init__(
        self,
        url: str,
        *,
        ttl: float,
        prefix: str = "llm_proxy_mw:objects:",
        timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(url, prefix=prefix, timeout=timeout)
        self.ttl = ttl
        self._clock = clock

    async def owner(self, object_id: str) -> str | None:
        with self._errors("read"):
            value = await self._redis().get(self.prefix + object_id)
        if not isinstance(value, str):
            return None
        expires, _, provider = value.partition(" ")
        try:
            alive = float(expires) > self._clock()
        except ValueError:  # not written by this store: as if absent
            return None
        return provider if alive else None

    async def record(self, object_id: str, provider: str) -> None:
        value = f"{self._clock() + self.ttl!r} {provider}"
        with self._errors("write"):
            await self._redis().set(self.prefix + object_id, value, ex=math.ceil(self.ttl))
