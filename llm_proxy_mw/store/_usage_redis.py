"""Redis ``UsageStore``: one usage ledger shared by every worker and replica.

The layout of the metrics history under its own prefix (default ``llm_proxy_mw:usage:``):
``minutes`` indexes the minutes, ``minute:<minute>`` is one hash per minute, a field is
``<series>|<value>`` with ``<series>`` the JSON array ``[principal, model, provider]`` and
``<value>`` one of ``count`` (requests), the token counts, ``unpriced`` and ``cost_pusd``
(whole picodollars). Adds go through the history's checked Lua script, so batches from many
processes interleave atomically and a value Redis would refuse skips its bucket, whole;
purges are the history's.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from decimal import Decimal
from typing import cast

from llm_proxy_mw.ledger import COUNTS, PICODOLLARS, UsageBucket, UsageKey, step_start
from llm_proxy_mw.store._redis import _ADD, _REFUSED, RedisMetricsStore
from llm_proxy_mw.store._usage_sqlite import storable_usage, stored_cost

__all__ = ["RedisUsageStore"]

#: Field name -> bucket attribute, for the counts ("count": the history's name, so that its
#: purge counts buckets).
_FIELDS = {"count": "requests", **{name: name for name in COUNTS[1:]}}


class RedisUsageStore(RedisMetricsStore):
    """A ``UsageStore`` in Redis; ``timeout`` bounds every connect and command (seconds)."""

    def __init__(
        self, url: str, *, prefix: str = "llm_proxy_mw:usage:", timeout: float = 5.0
    ) -> None:
        super().__init__(url, prefix=prefix, timeout=timeout)

    async def add_usage(self, buckets: Sequence[UsageBucket]) -> None:
        client = self._redis()
        kept, dropped = storable_usage(buckets)
        keys = [f"{self.prefix}minutes", f"{self.prefix}totals"]
        keys += [f"{self.prefix}minute:{bucket.key.start}" for bucket in kept]
        batch = {"buckets": [[str(b.key.start), _increments(b)] for b in kept], "totals": []}
        with self._errors("add"):
            skipped = await client.eval(_ADD, len(keys), *keys, json.dumps(batch))
        skipped_buckets = cast("list[list[int]]", skipped)[0]
        dropped.buckets += [f"usage of {kept[i].key}: {_REFUSED}" for i in skipped_buckets]
        dropped.warn(self.url)

    async def usage(
        self, since: int, until: int, *, step: int, principal: str | None = None
    ) -> list[UsageBucket]:
        found: dict[UsageKey, UsageBucket] = {}
        owners: dict[str, tuple[str, str, str]] = {}
        for minute, fields in await self._minute_hashes(since, until):
            start = step_start(int(minute), since, step)
            for field, value in fields.items():
                series, _, name = field.rpartition("|")
                owner = owners.get(series)
                if owner is None:
                    who, model, provider = json.loads(series)
                    owner = owners[series] = (who, model, provider)
                if principal is not None and owner[0] != principal:
                    continue
                key = UsageKey(start, *owner)
                bucket = found.get(key)
                if bucket is None:
                    bucket = found[key] = UsageBucket(key)
                if name == "cost_pusd":
                    bucket.cost_usd += Decimal(int(value)) * PICODOLLARS
                elif name in _FIELDS:
                    attribute = _FIELDS[name]
                    setattr(bucket, attribute, getattr(bucket, attribute) + int(value))
        return sorted(found.values(), key=lambda b: (b.key.start, *_key_owner(b.key)))

    async def purge_usage(self, before: int) -> int:
        return await self.purge(before)


def _key_owner(key: UsageKey) -> tuple[str, str, str]:
    return (key.principal, key.model, key.provider)


def _increments(bucket: UsageBucket) -> list[list[str]]:
    """The script's ``[field, "i", value]`` for every non-zero value of a bucket."""
    key = bucket.key
    series = json.dumps([key.principal, key.model, key.provider])
    found = [
        [f"{series}|{name}", "i", str(value)]
        for name, attribute in _FIELDS.items()
        if (value := getattr(bucket, attribute))
    ]
    cost = stored_cost(bucket.cost_usd)
    if cost:
        found.append([f"{series}|cost_pusd", "i", str(cost)])
    return found
