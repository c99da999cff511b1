"""Redis metrics store: one history shared by several workers or replicas.

Layout, under a key prefix (default ``llm_proxy_mw:``):

- ``minutes``: a sorted set of the minutes that have buckets (member and score: the minute
  in epoch seconds), for range queries and purges;
- ``minute:<minute>``: one hash per minute holding every bucket of that minute; a field is
  ``<series>|<value>``, where ``<series>`` is the JSON array ``[provider, model, status]``
  (unambiguous whatever a model name contains) and ``<value>`` one of ``count``, ``errors``,
  ``duration_sum``, ``d0`` .. ``d15`` (histogram slots), ``ttfb_sum``, ``ttfb_count``,
  ``prompt_tokens``, ``completion_tokens``; zero values are not written;
- ``totals``: one hash of the cumulative counters.

Every ``add`` is one MULTI/EXEC of ``HINCRBY``/``HINCRBYFLOAT`` (and a ``ZADD``), so adds
from many processes interleave atomically and the sums stay exact. Delivery is at least
once: if a connection drops after Redis applied a batch but before its reply arrived, the
retry applies the batch again. Redis errors (and socket errors) become ``StoreError``;
the client reconnects by itself, so a store that failed to open works once Redis is back.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, cast

from llm_proxy_mw.history import DURATION_BUCKETS, BucketKey, MinuteBucket, StoreError
from llm_proxy_mw.store._redis_client import RedisStoreBase

__all__ = ["RedisMetricsStore"]

_INTS = ("count", "errors", "ttfb_count", "prompt_tokens", "completion_tokens")
_FLOATS = ("duration_sum", "ttfb_sum")
_SLOTS = len(DURATION_BUCKETS) + 1
_PURGE_CHUNK = 500


class RedisMetricsStore(RedisStoreBase):
    """A ``MetricsStore`` in Redis; ``timeout`` bounds every connect and command (seconds).

    The client decodes responses, so the ``cast``s below only narrow redis-py's wide types.
    """

    error = StoreError
    label = "store"

    def __init__(self, url: str, *, prefix: str = "llm_proxy_mw:", timeout: float = 5.0) -> None:
        super().__init__(url, prefix=prefix, timeout=timeout)

    async def add(self, buckets: Sequence[MinuteBucket], totals: dict[str, float]) -> None:
        client = self._redis()
        with self._errors("add"):
            async with client.pipeline(transaction=True) as pipe:
                for bucket in buckets:
                    key = bucket.key
                    name = f"{self.prefix}minute:{key.minute}"
                    series = json.dumps([key.provider, key.model, key.status])
                    for field in _INTS:
                        if value := getattr(bucket, field):
                            pipe.hincrby(name, f"{series}|{field}", value)
                    for field in _FLOATS:
                        if value := getattr(bucket, field):
                            pipe.hincrbyfloat(name, f"{series}|{field}", value)
                    for slot, value in enumerate(bucket.duration_counts):
                        if value:
                            pipe.hincrby(name, f"{series}|d{slot}", value)
                    pipe.zadd(f"{self.prefix}minutes", {str(key.minute): key.minute})
                for total, delta in totals.items():
                    if delta:
                        pipe.hincrbyfloat(f"{self.prefix}totals", total, delta)
                await pipe.execute()

    async def totals(self) -> dict[str, float]:
        client = self._redis()
        with self._errors("totals"):
            stored = cast("dict[str, str]", await client.hgetall(f"{self.prefix}totals"))
        return {key: float(value) for key, value in stored.items()}

    async def buckets(self, since_minute: int, until_minute: int) -> list[MinuteBucket]:
        client = self._redis()
        with self._errors("query"):
            index = f"{self.prefix}minutes"
            minutes = cast(
                "list[str]", await client.zrangebyscore(index, since_minute, f"({until_minute}")
            )
            async with client.pipeline(transaction=False) as pipe:
                for minute in minutes:
                    pipe.hgetall(f"{self.prefix}minute:{minute}")
                hashes: list[dict[str, str]] = await pipe.execute()
        found: list[MinuteBucket] = []
        for minute, fields in zip(minutes, hashes, strict=True):
            by_series: dict[str, MinuteBucket] = {}
            for field, value in fields.items():
                series, _, name = field.rpartition("|")
                bucket = by_series.get(series)
                if bucket is None:
                    provider, model, status = json.loads(series)
                    key = BucketKey(int(minute), provider, model, status)
                    bucket = by_series[series] = MinuteBucket(key)
                _set(bucket, name, value)
            found.extend(by_series.values())
        found.sort(key=lambda b: (b.key.minute, b.key.provider, b.key.model, b.key.status))
        return found

    async def purge(self, before_minute: int) -> int:
        client = self._redis()
        index = f"{self.prefix}minutes"
        purged = 0
        with self._errors("purge"):
            minutes = cast(
                "list[str]", await client.zrangebyscore(index, "-inf", f"({before_minute}")
            )
            for start in range(0, len(minutes), _PURGE_CHUNK):
                chunk = minutes[start : start + _PURGE_CHUNK]
                names = [f"{self.prefix}minute:{minute}" for minute in chunk]
                async with client.pipeline(transaction=True) as pipe:
                    for name in names:
                        pipe.hkeys(name)
                    pipe.delete(*names)
                    pipe.zrem(index, *chunk)
                    results: list[Any] = await pipe.execute()
                # One "<series>|count" field per bucket: counting them counts the buckets.
                purged += sum(
                    1 for fields in results[: len(names)] for f in fields if f.endswith("|count")
                )
        return purged


def _set(bucket: MinuteBucket, name: str, value: str) -> None:
    if name in _FLOATS:
        setattr(bucket, name, float(value))
    elif name in _INTS:
        setattr(bucket, name, int(value))
    elif name.startswith("d") and name[1:].isdigit() and int(name[1:]) < _SLOTS:
        bucket.duration_counts[int(name[1:])] = int(value)
