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

Every ``add`` is one Lua script (``_ADD``), so adds from many processes interleave
atomically and the sums stay exact. Redis does not undo a script's writes when one of its
commands fails, so the script checks every increment first (its value, and what it would
do to the value stored) and skips a bucket or total that Redis would refuse, whole; it
then writes the rest, and nothing can fail halfway. What it skipped is logged, never
retried. Delivery is at least once: if a connection drops after Redis applied a batch but
before its reply arrived, the retry applies the batch again. Redis errors (and socket
errors) become ``StoreError``; the client reconnects by itself, so a store that failed to
open works once Redis is back.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, cast

from llm_proxy_mw._redis_db import RedisStoreBase
from llm_proxy_mw.history import DURATION_BUCKETS, BucketKey, MinuteBucket, StoreError
from llm_proxy_mw.store._checks import describe, storable

__all__ = ["RedisMetricsStore"]

_INTS = ("count", "errors", "ttfb_count", "prompt_tokens", "completion_tokens")
_FLOATS = ("duration_sum", "ttfb_sum")
_SLOTS = len(DURATION_BUCKETS) + 1
_PURGE_CHUNK = 500
_REFUSED = "Redis would refuse it (a stored value it would overflow, a key of another type)"

# KEYS: the minutes index, the totals hash, then the minute hash of each bucket in order.
# ARGV[1]: JSON {"buckets": [[minute, [[field, "i" | "f", value], ...]], ...],
# "totals": [[key, value], ...]}, every number a decimal string. Returns the 0-based
# indexes of the buckets and totals skipped. Checks run on doubles: 9.2e18 stays below
# 2**63 by far more than their rounding there.
_ADD = """
local batch = cjson.decode(ARGV[1])
local pending = {}  -- key -> field -> what the increments checked so far will make it

local function holds(key, kind)
  local found = redis.call('TYPE', key)['ok']
  return found == 'none' or found == kind
end

local function number(text, kind)
  if kind == 'i' then
    if #text > 20 or not string.find(text, '^%-?%d+$') then return nil end
    return tonumber(text)
  end
  local value = #text <= 40 and tonumber(text)
  if value and value == value and value > -math.huge and value < math.huge then
    return value
  end
  return nil
end

-- Adds one increment of key's field to sums; false if Redis would refuse it.
local function add(sums, key, field, kind, delta, stored)
  if kind ~= 'i' and kind ~= 'f' then return false end
  if kind == 'i' and (#delta > 18 or not string.find(delta, '^%d+$')) then return false end
  local current = sums[field] or (pending[key] or {})[field]
  if current == nil then
    if stored then current = number(stored, kind) else current = 0 end
  end
  local step = number(delta, kind)
  if current == nil or step == nil then return false end
  local result = current + step
  if kind == 'i' and (result >= 9.2e18 or result <= -9.2e18) then return false end
  if result ~= result or result == math.huge or result == -math.huge then return false end
  sums[field] = result
  return true
end

local function keep(key, sums)
  pending[key] = pending[key] or {}
  for field, value in pairs(sums) do pending[key][field] = value end
end

local skipped_buckets, skipped_totals, buckets, totals = {}, {}, {}, {}
local index_ok = holds(KEYS[1], 'zset')
for i, bucket in ipairs(batch['buckets']) do
  local key, increments, sums = KEYS[2 + i], bucket[2], {}
  local ok = index_ok and string.find(bucket[1], '^%d+$') ~= nil and holds(key, 'hash')
  if ok and #increments > 0 then
    local fields = {}
    for j, increment in ipairs(increments) do fields[j] = increment[1] end
    local stored = redis.call('HMGET', key, unpack(fields))
    for j, increment in ipairs(increments) do
      ok = add(sums, key, increment[1], increment[2], increment[3], stored[j])
      if not ok then break end
    end
  end
  if ok then
    keep(key, sums)
    buckets[#buckets + 1] = i
  else
    skipped_buckets[#skipped_buckets + 1] = i - 1
  end
end
local totals_ok = holds(KEYS[2], 'hash')
for i, total in ipairs(batch['totals']) do
  local stored, sums = totals_ok and redis.call('HGET', KEYS[2], total[1]), {}
  if totals_ok and add(sums, KEYS[2], total[1], 'f', total[2], stored) then
    keep(KEYS[2], sums)
    totals[#totals + 1] = i
  else
    skipped_totals[#skipped_totals + 1] = i - 1
  end
end

for _, i in ipairs(buckets) do
  local bucket, key = batch['buckets'][i], KEYS[2 + i]
  for _, increment in ipairs(bucket[2]) do
    if increment[2] == 'i' then
      redis.call('HINCRBY', key, increment[1], increment[3])
    else
      redis.call('HINCRBYFLOAT', key, increment[1], increment[3])
    end
  end
  redis.call('ZADD', KEYS[1], bucket[1], bucket[1])
end
for _, i in ipairs(totals) do
  redis.call('HINCRBYFLOAT', KEYS[2], batch['totals'][i][1], batch['totals'][i][2])
end
return {skipped_buckets, skipped_totals}
"""


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
        kept, kept_totals, dropped = storable(buckets, totals)
        keys = [f"{self.prefix}minutes", f"{self.prefix}totals"]
        keys += [f"{self.prefix}minute:{bucket.key.minute}" for bucket in kept]
        deltas = [[key, repr(float(delta))] for key, delta in kept_totals.items() if delta]
        batch = {
            "buckets": [[str(bucket.key.minute), _increments(bucket)] for bucket in kept],
            "totals": deltas,
        }
        with self._errors("add"):
            skipped = await client.eval(_ADD, len(keys), *keys, json.dumps(batch))
        skipped_buckets, skipped_totals = cast("list[list[int]]", skipped)
        dropped.buckets += [f"{describe(kept[i].key)}: {_REFUSED}" for i in skipped_buckets]
        dropped.totals += [f"total {deltas[i][0]!r}: {_REFUSED}" for i in skipped_totals]
        dropped.warn(self.url)

    async def totals(self) -> dict[str, float]:
        client = self._redis()
        with self._errors("totals"):
            stored = cast("dict[str, str]", await client.hgetall(f"{self.prefix}totals"))
        return {key: float(value) for key, value in stored.items()}

    async def buckets(self, since_minute: int, until_minute: int) -> list[MinuteBucket]:
        found: list[MinuteBucket] = []
        for minute, fields in await self._minute_hashes(since_minute, until_minute):
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

    async def _minute_hashes(
        self, since_minute: int, until_minute: int
    ) -> list[tuple[str, dict[str, str]]]:
        """Each stored minute in ``[since_minute, until_minute)`` with its hash."""
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
        return list(zip(minutes, hashes, strict=True))

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


def _increments(bucket: MinuteBucket) -> list[list[str]]:
    """The script's ``[field, "i" or "f", value]`` for every non-zero value of a bucket."""
    key = bucket.key
    series = json.dumps([key.provider, key.model, key.status])
    found = [[f"{series}|{name}", "i", str(v)] for name in _INTS if (v := getattr(bucket, name))]
    found += [
        [f"{series}|{name}", "f", repr(float(v))]
        for name in _FLOATS
        if (v := getattr(bucket, name))
    ]
    found += [
        [f"{series}|d{slot}", "i", str(v)] for slot, v in enumerate(bucket.duration_counts) if v
    ]
    return found


def _set(bucket: MinuteBucket, name: str, value: str) -> None:
    if name in _FLOATS:
        setattr(bucket, name, float(value))
    elif name in _INTS:
        setattr(bucket, name, int(value))
    elif name.startswith("d") and name[1:].isdigit() and int(name[1:]) < _SLOTS:
        bucket.duration_counts[int(name[1:])] = int(value)
