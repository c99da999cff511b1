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

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol, Unpack

from llm_proxy_mw._store_batches import BatchWriter, WriterOptions, drop_oldest
from llm_proxy_mw._usage import token_count
from llm_proxy_mw.context import RequestContext, principal_id
from llm_proxy_mw.errors import StoreError

__all__ = [
    "COUNTS",
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
#: The counts of a ``UsageBucket``, in the order the stores keep them.
COUNTS = (
    "requests",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "unpriced",
)
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


class UsageLedger(BatchWriter["UsageStore"]):
    """Per-minute usage in memory, flushed to ``store`` in batches (see the module doc).

    Store failures never reach a request: they are logged once per failure streak and the
    batch is kept for the next flush, at most ``max_pending`` buckets (the oldest minutes
    go first, with a warning). A clean shutdown loses nothing; a crash at most what was
    added since the last flush.
    """

    subject = "usage ledger"
    back = "the usage ledger's store is reachable again"
    logger = logger
    task_name = "llm_proxy_mw-ledger-flush"

    def __init__(self, store: UsageStore, **options: Unpack[WriterOptions]) -> None:
        super().__init__(store, **options)
        self._pending: dict[tuple[int, str, str, str], UsageBucket] = {}

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
            except Exception:  # a bug: the batch may be written in part, so never retry it
                self.logger.exception("llm_proxy_mw: usage ledger batch dropped unexpectedly")
                return False
            self._recovered()
            return True

    async def purge(self) -> int:
        """Delete the minutes older than the retention, stored and pending."""
        before = self._purge_before()
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

    def _requeue(self, batch: dict[tuple[int, str, str, str], UsageBucket]) -> None:
        """Put a failed batch back, merging what was added meanwhile, within the bound."""
        for series, bucket in self._pending.items():
            if series in batch:
                batch[series].merge(bucket)
            else:
                batch[series] = bucket
        self._pending = batch
        drop_oldest(batch, self.max_pending, lambda bucket: None, self._failures)

    def _pending_buckets(self) -> int:
        return len(self._pending)


def _order(key: UsageKey) -> tuple[int, str, str, str]:
    return (key.start, key.principal, key.model, key.provider)
