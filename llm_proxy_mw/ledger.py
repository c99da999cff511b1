"""The usage ledger: what each principal used and spent, per minute, model and provider.

``UsageLedger.add(ctx)`` runs once a request ended (the metrics layer's ``on_request``): a
dict update in memory, no I/O. A background task writes the pending minutes to a
``UsageStore`` in batches (SQLite for one process, Redis shared by several) every few seconds
and at shutdown, and purges minutes older than ``retention_days``. Reads (``usage``) merge the
stored minutes with the pending ones, so ``/usage`` is never a flush interval behind.

Cost is exact: ``Decimal`` in memory, whole picodollars (1e-12 USD) in the stores. A request
the price table could not price adds nothing to the cost and is counted in ``unpriced``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

from llm_proxy_mw._usage import token_count
from llm_proxy_mw.context import RequestContext, principal_id
from llm_proxy_mw.errors import StoreError

__all__ = [
    "PICODOLLARS",
    "UsageBucket",
    "UsageKey",
    "UsageLedger",
    "UsageStore",
]

logger = logging.getLogger("llm_proxy_mw.ledger")

#: Stored costs are whole multiples of this (USD): exact, far below the 1e-9 USD the
#: price goldens hold cost to.
PICODOLLARS = Decimal("1e-12")
_ZERO = Decimal(0)
_PURGE_EVERY = 3600.0
#: The model or provider of a request that reached no provider (never recorded here).
_NONE = "none"


@dataclass(frozen=True, slots=True)
class UsageKey:
    """What a bucket adds up: ``start`` (epoch seconds, a multiple of 60) and the owner."""

    start: int
    principal: str
    model: str
    provider: str


@dataclass(slots=True)
class UsageBucket:
    """The usage of one minute (or, read back, of a longer step) for one key.

    ``input_tokens`` are OpenAI's prompt tokens (cache reads and writes included),
    ``output_tokens`` its completion tokens (reasoning included). ``cost_usd`` adds the
    priced requests only; ``unpriced`` counts the requests with tokens but no known price.
    """

    key: UsageKey
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: Decimal = _ZERO
    unpriced: int = 0

    def merge(self, other: UsageBucket) -> None:
        """Add another bucket's usage into this one (keys are not compared)."""
        self.requests += other.requests
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cache_read_tokens += other.cache_read_tokens
        self.cache_write_tokens += other.cache_write_tokens
        self.reasoning_tokens += other.reasoning_tokens
        self.cost_usd += other.cost_usd
        self.unpriced += other.unpriced


class UsageStore(Protocol):
    """Where the ledger lives: ``SqliteUsageStore`` or ``RedisUsageStore``.

    ``add_usage`` adds the buckets (one minute each) into the stored ones, atomically per
    call; a bucket the store cannot hold (a count past 10**18) is dropped with a warning.
    ``usage`` sums the minutes in ``[since, until)`` into steps of ``step`` seconds starting
    at ``since``, of one principal or all; costs come back rounded to ``PICODOLLARS``.
    Backend failures raise ``StoreError``.
    """

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def add_usage(self, buckets: Sequence[UsageBucket]) -> None: ...

    async def usage(
        self, since: int, until: int, *, step: int, principal: str | None = None
    ) -> list[UsageBucket]: ...

    async def purge_usage(self, before: int) -> int:
        """Delete the minutes before ``before``; returns how many buckets went."""
        ...


def step_start(minute: int, since: int, step: int) -> int:
    """The start of the step of ``[since, ...)`` that holds ``minute``."""
    return since + (minute - since) // step * step


class UsageLedger:
    """Per-minute usage in memory, flushed to ``store`` in batches (see the module doc).

    Store failures never reach a request: they are logged once per failure streak and the
    batch is kept for the next flush, at most ``max_pending`` buckets (the oldest minutes
    go first, with a warning). A clean shutdown loses nothing; a crash at most what was
    added since the last flush.
    """

    def __init__(
        self,
        store: UsageStore,
        *,
        flush_interval: float = 5.0,
        retention_days: int = 30,
        clock: Callable[[], float] = time.time,
        max_pending: int = 20_000,
    ) -> None:
        self.store = store
        self.flush_interval = flush_interval
        self.retention_days = retention_days
        self.max_pending = max_pending
        self._clock = clock
        self._pending: dict[tuple[int, str, str, str], UsageBucket] = {}
        self._lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        self._next_purge = 0.0

    def add(self, ctx: RequestContext) -> None:
        """Charge a finished request to its principal, model and provider; a request that
        reached no provider (refused, malformed) is not in the ledger."""
        if not ctx.attempts:
            return
        route = ctx.route
        model = (route.model if route is not None else None) or ctx.model or _NONE
        series = (int(self._clock()) // 60 * 60, principal_id(ctx), model, ctx.provider or _NONE)
        bucket = self._pending.get(series)
        if bucket is None:
            bucket = self._pending[series] = UsageBucket(UsageKey(*series))
        usage = ctx.usage
        bucket.requests += 1
        bucket.input_tokens += token_count(usage.prompt_tokens)
        bucket.output_tokens += token_count(usage.completion_tokens)
        bucket.cache_read_tokens += token_count(usage.cache_read_tokens)
        bucket.cache_write_tokens += token_count(usage.cache_write_tokens)
        bucket.reasoning_tokens += token_count(usage.reasoning_tokens)
        cost = usage.cost_usd
        if cost is not None:
            bucket.cost_usd += cost
        elif usage.prompt_tokens or usage.completion_tokens:
            bucket.unpriced += 1

    async def start(self) -> None:
        """Open the store and start the flush task; a store that does not open is logged
        and tried again at every flush. Idempotent."""
        if self._task is not None:
            return
        self._lock, self._stopping = asyncio.Lock(), asyncio.Event()
        try:
            await self.store.open()
        except StoreError as exc:
            self._failed("open", exc)
        self._task = asyncio.create_task(self._run(), name="llm_proxy_mw-ledger-flush")

    async def stop(self) -> None:
        """Stop the flush task, flush what is pending, close the store. Idempotent."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping.set()
        try:
            await task
            if not await self.flush():
                logger.warning(
                    "llm_proxy_mw: the usage ledger lost %d unwritten buckets at shutdown",
                    len(self._pending),
                )
        finally:
            await self.store.close()

    async def flush(self) -> bool:
        """Write the pending buckets in one batch; False (logged) if the store failed."""
        async with self._lock:
            batch, self._pending = self._pending, {}
            if not batch:
                return True
            try:
                await self.store.add_usage(list(batch.values()))
            except StoreError as exc:  # nothing was written: keep the batch for the next try
                self._requeue(batch)
                self._failed("flush", exc)
                return False
            if self._failing:
                self._failing = False
                logger.info("llm_proxy_mw: the usage ledger's store is reachable again")
            return True

    async def purge(self) -> int:
        """Delete the minutes older than the retention, stored and pending."""
        now = self._clock()
        self._next_purge = now + _PURGE_EVERY
        before = int(now) // 60 * 60 - self.retention_days * 86_400
        async with self._lock:
            for series in [s for s in self._pending if s[0] < before]:
                del self._pending[series]
            try:
                return await self.store.purge_usage(before)
            except StoreError as exc:
                self._failed("purge", exc)
                return 0

    async def usage(
        self, since: int, until: int, *, step: int, principal: str | None = None
    ) -> list[UsageBucket]:
        """The usage of ``[since, until)`` in steps (see ``UsageStore.usage``), pending
        minutes merged in, ordered by step, principal, model and provider. If the store
        fails, this logs and returns only what is still in memory."""
        async with self._lock:
            try:
                stored = await self.store.usage(since, until, step=step, principal=principal)
            except StoreError as exc:
                self._failed("query", exc)
                stored = []
            merged = {bucket.key: bucket for bucket in stored}
            for (minute, who, model, provider), pending in self._pending.items():
                if since <= minute < until and principal in (None, who):
                    key = UsageKey(step_start(minute, since, step), who, model, provider)
                    target = merged.get(key)
                    if target is None:
                        target = merged[key] = UsageBucket(key)
                    target.merge(pending)
        return sorted(merged.values(), key=lambda b: _order(b.key))

    async def _run(self) -> None:
        while True:
            try:
                if self._clock() >= self._next_purge:
                    await self.purge()
                try:
                    await asyncio.wait_for(self._stopping.wait(), self.flush_interval)
                    return
                except TimeoutError:
                    pass
                await self.flush()
            except Exception:  # a bug in one round must not stop the ledger for the whole run
                logger.exception("llm_proxy_mw: usage ledger flush failed unexpectedly")

    def _requeue(self, batch: dict[tuple[int, str, str, str], UsageBucket]) -> None:
        for series, bucket in self._pending.items():
            if series in batch:
                batch[series].merge(bucket)
            else:
                batch[series] = bucket
        self._pending = batch
        excess = len(batch) - self.max_pending
        if excess > 0:
            oldest = sorted(batch)[:excess]
            for series in oldest:
                del batch[series]
            logger.warning(
                "llm_proxy_mw: the usage ledger's store is still failing; dropped %d buckets "
                "of minutes %d..%d to keep at most %d in memory",
                excess,
                oldest[0][0],
                oldest[-1][0],
                self.max_pending,
            )

    def _failed(self, what: str, exc: StoreError) -> None:
        if self._failing:
            logger.debug("llm_proxy_mw: usage ledger %s failed again: %s", what, exc)
            return
        self._failing = True
        logger.warning(
            "llm_proxy_mw: usage ledger %s failed; requests are still served and the ledger "
            "retries at the next flush (%d buckets pending): %s",
            what,
            len(self._pending),
            exc,
        )


def _order(key: UsageKey) -> tuple[int, str, str, str]:
    return (key.start, key.principal, key.model, key.provider)
