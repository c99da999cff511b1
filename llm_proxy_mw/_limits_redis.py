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

import asyncio
import functools
import hashlib
import itertools
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from llm_proxy_mw._limits_local import CONCURRENCY_RETRY_AFTER
from llm_proxy_mw._limits_policy import Grant, Limit, Refusal, Reservation, budget_key
from llm_proxy_mw._limits_resp import (
    RespConnection,
    RespError,
    command_head,
    connect,
    encode_args,
)
from llm_proxy_mw._store_urls import redact_url
from llm_proxy_mw.errors import StoreError

__all__ = ["RedisLimits"]

_MAX_HEADS = 10_000
_CONCURRENCY_RETRY = f"{CONCURRENCY_RETRY_AFTER:g}"

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
local budget, tokens, cost = tonumber(ARGV[4]), tonumber(ARGV[8]), ARGV[9]
if budget >= 0 and tonumber(redis.call('GET', KEYS[4]) or '0') >= budget then
  return '2 0 -1 0 -1 0'
end
if conc > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  if redis.call('ZCARD', KEYS[3]) >= conc then return '1 ' .. ARGV[7] .. ' -1 0 -1 0' end
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
if wait > 1e-9 then return '1 ' .. wait .. ' -1 0 -1 0' end  -- not a rounding error
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
  redis.call('ZADD', KEYS[3], now + tonumber(ARGV[5]), ARGV[10])
  redis.call('PEXPIRE', KEYS[3], math.ceil(tonumber(ARGV[5]) * 1000))
end
if budget >= 0 then
  redis.call('INCRBY', KEYS[4], cost)
  if tonumber(ARGV[6]) > 0 then redis.call('EXPIRE', KEYS[4], ARGV[6]) end
end
return string.format('0 0 %d %s %d %s', rr, rs, tr, ts)
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


class _Script:
    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()


_RESERVE_SCRIPT, _SETTLE_SCRIPT = _Script(_RESERVE), _Script(_SETTLE)


class RedisLimits:
    """Limits in Redis at ``url``, over one pipelined connection opened at first use (and
    again after a failure). Each command must be answered within ``timeout`` seconds. A
    request holds its concurrency slot at most ``lease`` seconds (longer than any request
    may run), in case its replica dies before settling."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "llm_proxy_mw:limits:",
        timeout: float = 1.0,
        lease: float = 3600.0,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.url = redact_url(url)
        self.prefix = prefix
        self.lease = lease
        self._raw_url = url
        self._timeout = timeout
        self._wall_clock = wall_clock
        self._slots = itertools.count()
        self._slot_prefix = f"{os.getpid()}-{os.urandom(4).hex()}-"
        self._connection: RespConnection | None = None
        self._connecting = asyncio.Lock()
        #: Encoded command starts by (principal, limit or None for settle, budget key).
        self._heads: dict[tuple[str, Limit | None, str], bytes] = {}

    def _keys(self, principal: str, budget: str) -> list[str]:
        base = f"{self.prefix}{{{principal}}}:"
        return [base + "rq", base + "tk", base + "cc", base + "b:" + budget]

    async def reserve(
        self, principal: str, limit: Limit, tokens: int, cost_nano: int
    ) -> Grant | Refusal:
        key, ttl = budget_key(limit.budget_period, self._wall_clock())
        slot = f"{self._slot_prefix}{next(self._slots)}" if limit.concurrency else ""
        head = self._heads.get((principal, limit, key))
        if head is None:
            budget = limit.budget_nano if limit.budget_usd is not None else -1
            constant: list[int | str] = [limit.rpm or 0, limit.tpm or 0, limit.concurrency or 0]
            constant += [budget, int(self.lease), ttl, _CONCURRENCY_RETRY]
            head = self._head(_RESERVE_SCRIPT, principal, limit, key, 10, *constant)
        command = head + encode_args(tokens, cost_nano, slot)
        reply = await self._run("reserve", _RESERVE_SCRIPT, command)
        status, wait, *state = reply.split()  # one string: six fields, one parse
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

    def settle(
        self, reservation: Reservation, *, tokens: int, cost_nano: int, give_back_request: bool
    ) -> Awaitable[None]:
        """Settle ``reservation``; nobody waits for it on a request's path, so it is held
        briefly to share a write with the next reservation (``_limits_resp.DEFER``)."""
        limit = reservation.limit
        extra = tokens - reservation.tokens
        cost_delta = cost_nano - reservation.cost_nano if limit.budget_usd is not None else 0
        key = reservation.budget_key
        head = self._heads.get((reservation.principal, None, key))
        if head is None:
            constant = (limit.rpm or 0, limit.tpm or 0)
            head = self._head(_SETTLE_SCRIPT, reservation.principal, None, key, 6, *constant)
        command = head + encode_args(int(give_back_request), extra, cost_delta, reservation.slot)
        connection = self._connection
        if connection is None or connection.closed:
            return self._run("settle", _SETTLE_SCRIPT, command)
        # Futures and a callback rather than a task: nothing waits on this path.
        reply = connection.send(command, can_wait=True)
        settled: asyncio.Future[None] = reply.get_loop().create_future()
        reply.add_done_callback(functools.partial(self._on_settled, settled, command))
        return settled

    def _on_settled(
        self, settled: asyncio.Future[None], command: bytes, reply: asyncio.Future[Any]
    ) -> None:
        exc = reply.exception()
        if exc is not None:
            self._drop()
            settled.set_exception(StoreError(f"{self.url}: limits settle failed: {exc!r}"))
            return
        answer = reply.result()
        if not isinstance(answer, RespError):
            settled.set_result(None)
        elif str(answer).startswith("NOSCRIPT"):  # Redis restarted: load it, and again
            again = asyncio.ensure_future(self._run("settle", _SETTLE_SCRIPT, command))
            again.add_done_callback(functools.partial(_pass_on, settled))
        else:
            settled.set_exception(StoreError(f"{self.url}: limits settle failed: {answer}"))

    def _head(
        self,
        script: _Script,
        principal: str,
        limit: Limit | None,
        key: str,
        argc: int,
        *args: int | str,
    ) -> bytes:
        """The encoded start of a script's command, the same for every request of the
        principal in the budget period: ``EVALSHA``, its keys, its constant arguments (kept;
        a few per principal, so the cache starts again past ``_MAX_HEADS``)."""
        if len(self._heads) >= _MAX_HEADS:
            self._heads.clear()
        keys = self._keys(principal, key)
        # EVALSHA, the SHA1, the number of keys, the keys, then ``argc`` arguments in all.
        head = command_head(3 + len(keys) + argc, "EVALSHA", script.sha, len(keys), *keys, *args)
        self._heads[(principal, limit, key)] = head
        return head

    async def _run(self, operation: str, script: _Script, command: bytes) -> Any:
        """The script's reply; where connection failures become ``StoreError``. A Redis
        that forgot the script (restarted) is sent it again. Only opening a connection has a
        timer of its own; an open one's watchdog fails commands that wait too long."""
        try:
            connection = self._connection
            if connection is None or connection.closed:
                async with asyncio.timeout(self._timeout):
                    connection = await self._open()
            reply = await connection.send(command)
            if isinstance(reply, RespError) and str(reply).startswith("NOSCRIPT"):
                await connection.call("SCRIPT", "LOAD", script.source)
                reply = await connection.send(command)
        except OSError as exc:  # ConnectionError, and TimeoutError
            self._drop()
            raise StoreError(f"{self.url}: limits {operation} failed: {exc!r}") from exc
        if isinstance(reply, RespError):
            raise StoreError(f"{self.url}: limits {operation} failed: {reply}")
        return reply

    async def _open(self) -> RespConnection:
        connection = self._connection
        if connection is None or connection.closed:
            async with self._connecting:  # one connection, however many requests wait for it
                connection = self._connection
                if connection is None or connection.closed:
                    connection = self._connection = await connect(self._raw_url, self._timeout)
        return connection

    def _drop(self) -> None:
        # After a timeout the connection may be stuck: the next command opens a fresh one.
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    async def aclose(self) -> None:
        self._drop()


def _pass_on(settled: asyncio.Future[None], done: asyncio.Future[Any]) -> None:
    """``settled`` ends as ``done`` did."""
    exc = done.exception()
    if exc is None:
        settled.set_result(None)
    else:
        settled.set_exception(exc)
