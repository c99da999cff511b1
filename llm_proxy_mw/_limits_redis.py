"""Limits shared by every worker and replica: the buckets in Redis, changed by Lua scripts.

One script reserves (one round trip before the request), one settles (one after); each runs
atomically, on Redis's own clock (``TIME``), so replicas whose clocks differ still share one
bucket. The arithmetic is ``_limits_local``'s GCRA, restated in Lua. Keys, per principal
(the hash tag keeps them on one cluster slot): ``<prefix>{<principal>}:rq`` and ``:tk`` (the
``tat`` of requests and tokens), ``:cc`` (a sorted set of requests in flight, scored by when
their lease ends, so a replica that died holding some leaks nothing for long) and ``:b:<period>``
(nano-USD spent in the budget period, reservations included).
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable

from redis.commands.core import AsyncScript

from llm_proxy_mw._limits_policy import Grant, Limit, Refusal, Reservation, budget_key
from llm_proxy_mw._redis_db import RedisStoreBase
from llm_proxy_mw.errors import StoreError

__all__ = ["RedisLimits"]

_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local function put(key, tat)
  redis.call('SET', key, string.format('%.6f', tat), 'PX', math.ceil((tat - now) * 1000) + 1000)
end
local function base(key)
  local tat = tonumber(redis.call('GET', key) or '0')
  if tat < now then return now end
  return tat
end
"""

_RESERVE = (
    _TAKE
    + """
local rpm, tpm, conc = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local budget, tokens, cost = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
if budget >= 0 and tonumber(redis.call('GET', KEYS[4]) or '0') >= budget then
  return {2, '0', -1, '0', -1, '0'}
end
if conc > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  if redis.call('ZCARD', KEYS[3]) >= conc then return {1, ARGV[10], -1, '0', -1, '0'} end
end
local wait, rq, tk = 0, 0, 0
if rpm > 0 then
  rq = base(KEYS[1]) + 60 / rpm
  wait = math.max(wait, rq - now - 60)
end
if tpm > 0 then
  tk = base(KEYS[2]) + math.min(tokens, tpm) * 60 / tpm
  wait = math.max(wait, tk - now - 60)
end
if wait > 0 then return {1, tostring(wait), -1, '0', -1, '0'} end
local rr, rs, tr, ts = -1, '0', -1, '0'
if rpm > 0 then
  put(KEYS[1], rq)
  rr, rs = math.floor((60 - (rq - now)) * rpm / 60 + 1e-9), tostring(rq - now)
end
if tpm > 0 then
  put(KEYS[2], tk)
  tr, ts = math.floor((60 - (tk - now)) * tpm / 60 + 1e-9), tostring(tk - now)
end
if conc > 0 then
  redis.call('ZADD', KEYS[3], now + tonumber(ARGV[8]), ARGV[7])
  redis.call('PEXPIRE', KEYS[3], math.ceil(tonumber(ARGV[8]) * 1000))
end
if budget >= 0 then
  redis.call('INCRBY', KEYS[4], cost)
  if tonumber(ARGV[9]) > 0 then redis.call('EXPIRE', KEYS[4], ARGV[9]) end
end
return {0, '0', rr, rs, tr, ts}
"""
)

_SETTLE = (
    _TAKE
    + """
local rpm, tpm, extra = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[4])
if rpm > 0 and ARGV[3] == '1' then put(KEYS[1], math.max(base(KEYS[1]) - 60 / rpm, now)) end
if tpm > 0 and extra ~= 0 then put(KEYS[2], math.max(base(KEYS[2]) + extra * 60 / tpm, now)) end
if ARGV[6] ~= '' then redis.call('ZREM', KEYS[3], ARGV[6]) end
if ARGV[5] ~= '0' then redis.call('INCRBY', KEYS[4], ARGV[5]) end
return 0
"""
)


class RedisLimits(RedisStoreBase):
    """Limits in Redis at ``url``. A request holds its concurrency slot at most ``lease``
    seconds (longer than any request may run), in case its replica dies before settling."""

    error = StoreError
    label = "limits store"
    operation_prefix = "limits "

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "llm_proxy_mw:limits:",
        timeout: float = 1.0,
        lease: float = 3600.0,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(url, prefix=prefix, timeout=timeout)
        self.lease = lease
        self._wall_clock = wall_clock
        self._slots = itertools.count()
        self._slot_prefix = f"{os.getpid()}-{os.urandom(4).hex()}-"
        self._scripts: tuple[AsyncScript, AsyncScript] | None = None

    def _keys(self, principal: str, budget: str) -> list[str]:
        base = f"{self.prefix}{{{principal}}}:"
        return [base + "rq", base + "tk", base + "cc", base + "b:" + budget]

    async def reserve(
        self, principal: str, limit: Limit, tokens: int, cost_nano: int
    ) -> Grant | Refusal:
        key, ttl = budget_key(limit.budget_period, self._wall_clock())
        slot = f"{self._slot_prefix}{next(self._slots)}" if limit.concurrency else ""
        budget = limit.budget_nano if limit.budget_usd is not None else -1
        args: list[str | int | float] = [limit.rpm or 0, limit.tpm or 0, limit.concurrency or 0]
        args += [budget, tokens]
        args += [cost_nano, slot, self.lease, ttl, 1.0]
        with self._errors("reserve"):
            reserve, _ = await self._loaded()
            reply = await reserve(self._keys(principal, key), args)
        status, wait, *state = reply
        if int(status):
            return Refusal(budget=int(status) == 2, retry_after=float(wait), limit=limit)
        if limit.tpm is not None:
            tokens = min(tokens, limit.tpm)
        reservation = Reservation(principal, limit, tokens, cost_nano, key, slot)
        remaining_requests, reset_requests, remaining_tokens, reset_tokens = state
        return Grant(
            reservation,
            int(remaining_requests) if limit.rpm else None,
            float(reset_requests) if limit.rpm else None,
            int(remaining_tokens) if limit.tpm else None,
            float(reset_tokens) if limit.tpm else None,
        )

    async def settle(
        self, reservation: Reservation, *, tokens: int, cost_nano: int, give_back_request: bool
    ) -> None:
        limit = reservation.limit
        extra = tokens - reservation.tokens
        cost_delta = cost_nano - reservation.cost_nano if limit.budget_usd is not None else 0
        args = [limit.rpm or 0, limit.tpm or 0, int(give_back_request), extra, cost_delta]
        keys = self._keys(reservation.principal, reservation.budget_key)
        with self._errors("settle"):
            _, settle = await self._loaded()
            await settle(keys, [*args, reservation.slot])

    async def _loaded(self) -> tuple[AsyncScript, AsyncScript]:
        """The scripts, on a client opened at first use. redis-py runs them by SHA1 and loads
        one again when Redis says it forgot it (a restarted Redis)."""
        if self._scripts is None:
            await self.open()
            redis = self._redis()
            self._scripts = redis.register_script(_RESERVE), redis.register_script(_SETTLE)
        return self._scripts

    async def aclose(self) -> None:
        await self.close()
