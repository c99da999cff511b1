"""Metrics history: per-minute aggregates that survive restarts, and the store interface.

The metrics layer adds each finished request to an in-memory ``MinuteBucket`` (a dict
update, no I/O on the hot path); a ``HistoryRecorder`` flushes the buckets and the
cumulative totals to a ``MetricsStore`` in batches every few seconds and at shutdown. A
crash loses at most one flush interval. On start the totals are read back, so Prometheus
counters continue where they were instead of dropping to zero.
"""

from __future__ import annotations

import json
import logging
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, Unpack

from llm_proxy_mw._store_batches import BatchWriter, WriterOptions, drop_oldest
from llm_proxy_mw._usage import token_count
from llm_proxy_mw.errors import StoreError

__all__ = [
    "DURATION_BUCKETS",
    "BucketKey",
    "HistoryRecorder",
    "MetricsStore",
    "MinuteBucket",
    "StoreError",
]

logger = logging.getLogger("llm_proxy_mw.history")

# fmt: off
#: Histogram upper bounds in seconds for request duration and time to first byte: LLM
#: calls take from ten milliseconds (a cached embedding) to ten minutes (a long reasoning
#: stream).
DURATION_BUCKETS: tuple[float, ...] = (
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)
# fmt: on


@dataclass(frozen=True, slots=True)
class BucketKey:
    """What a minute bucket aggregates by. ``minute`` is epoch seconds, a multiple of 60."""

    minute: int
    provider: str
    model: str
    status: int


@dataclass(slots=True)
class MinuteBucket:
    """Aggregates of the requests of one minute, provider, model and status.

    ``duration_counts[i]`` counts requests whose duration was <= ``DURATION_BUCKETS[i]``
    and above the previous bound (not cumulative); the last slot counts the rest (+Inf).
    """

    key: BucketKey
    count: int = 0
    errors: int = 0
    duration_sum: float = 0.0
    duration_counts: list[int] = field(default_factory=lambda: [0] * (len(DURATION_BUCKETS) + 1))
    ttfb_sum: float = 0.0
    ttfb_count: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def merge(self, other: MinuteBucket) -> None:
        """Add another bucket with the same key into this one."""
        self.count += other.count
        self.errors += other.errors
        self.duration_sum += other.duration_sum
        pairs = zip(self.duration_counts, other.duration_counts, strict=True)
        self.duration_counts = [a + b for a, b in pairs]
        self.ttfb_sum += other.ttfb_sum
        self.ttfb_count += other.ttfb_count
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens


class MetricsStore(Protocol):
    """Where history lives: SQLite for one process, Redis for several workers or replicas.

    ``add`` adds (merges) the given buckets into stored ones with the same key, and adds
    ``totals`` deltas to the cumulative counters (keys are opaque strings chosen by the
    metrics layer, e.g. ``"requests_total|openai|gpt-4o|200"``). Both happen atomically per
    call. A bucket or total the store can never hold (a count past 64 bits, a sum that is
    not finite) is dropped with a warning and the rest is written, so a retry never meets
    it again. Implementations never block the event loop (SQLite runs in a worker thread).
    ``buckets`` returns the buckets whose minute is in ``[since_minute, until_minute)``, the
    end excluded like ``purge``'s, ordered by minute, provider, model and status. Backend
    failures raise ``StoreError``; after a failed ``open`` the store still accepts ``close``,
    and later calls succeed once the backend is back.
    """

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def add(self, buckets: Sequence[MinuteBucket], totals: dict[str, float]) -> None: ...

    async def totals(self) -> dict[str, float]: ...

    async def buckets(self, since_minute: int, until_minute: int) -> list[MinuteBucket]: ...

    async def purge(self, before_minute: int) -> int:
        """Delete buckets older than ``before_minute``; totals are kept. Returns the count."""
        ...


_Series = tuple[int, str, str, int]


def total_key(*parts: object) -> str:
    """A cumulative counter's key: its name and label values, JSON-encoded, unambiguous."""
    return json.dumps(parts, separators=(",", ":"))


def bucket_totals(bucket: MinuteBucket, into: dict[str, float]) -> dict[str, float]:
    """Add what a bucket contributes to the all-time totals (requests, latency, tokens)."""
    key = bucket.key
    labels = (key.provider, key.model)
    for name, value in (
        (total_key("requests", *labels, key.status), bucket.count),
        (total_key("duration_sum", *labels), bucket.duration_sum),
        (total_key("tokens", *labels, "prompt"), bucket.prompt_tokens),
        (total_key("tokens", *labels, "completion"), bucket.completion_tokens),
    ):
        if value:
            into[name] = into.get(name, 0.0) + value
    for slot, count in enumerate(bucket.duration_counts):
        if count:
            name = total_key("duration", *labels, slot)
            into[name] = into.get(name, 0.0) + count
    return into


def _order(bucket: MinuteBucket) -> _Series:
    key = bucket.key
    return (key.minute, key.provider, key.model, key.status)


class HistoryRecorder(BatchWriter["MetricsStore"]):
    """Collects finished requests into minute buckets in memory and writes them in batches.

    ``record`` and ``add_total`` are the hot path: a dict lookup and a few additions, no
    I/O, no await (about 1 µs). A background task flushes every ``flush_interval`` seconds
    and ``stop`` flushes once more. So a clean shutdown loses nothing, and a crash (kill -9,
    OOM) loses what was recorded since the last successful flush began: one flush interval
    while the store is healthy, everything pending (at most ``max_pending`` buckets) while it
    is down. Buckets older than ``retention_days`` are purged at start and hourly; totals
    are never purged.

    Store failures never reach the caller: they are logged (a warning when a failure streak
    begins, an info when the store is back) and the batch is kept for the next flush. While
    the store stays down, at most ``max_pending`` buckets are kept; past that the oldest
    minutes are dropped with a warning (totals are few, one per label set, and always kept).
    """

    subject = "metrics history"
    back = "metrics store is reachable again"
    logger = logger
    task_name = "llm_proxy_mw-history-flush"

    def __init__(self, store: MetricsStore, **options: Unpack[WriterOptions]) -> None:
        super().__init__(store, **options)
        self._buckets: dict[_Series, MinuteBucket] = {}
        self._totals: dict[str, float] = {}

    def record(
        self,
        provider: str,
        model: str,
        status: int,
        duration: float,
        ttfb: float | None = None,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        error: bool = False,
    ) -> None:
        """Count one finished request in the bucket of the current minute. A token count
        that is not an ``int`` in ``[0, MAX_TOKENS]`` is ignored."""
        minute = int(self._clock()) // 60 * 60
        series = (minute, provider, model, status)
        bucket = self._buckets.get(series)
        if bucket is None:
            bucket = MinuteBucket(BucketKey(minute, provider, model, status))
            self._buckets[series] = bucket
        bucket.count += 1
        if error:
            bucket.errors += 1
        bucket.duration_sum += duration
        bucket.duration_counts[bisect_left(DURATION_BUCKETS, duration)] += 1
        if ttfb is not None:
            bucket.ttfb_sum += ttfb
            bucket.ttfb_count += 1
        bucket.prompt_tokens += token_count(prompt_tokens)
        bucket.completion_tokens += token_count(completion_tokens)

    def add_total(self, key: str, delta: float) -> None:
        """Add ``delta`` to the cumulative counter ``key`` (persisted, restored at start)."""
        self._totals[key] = self._totals.get(key, 0.0) + delta

    async def flush(self) -> bool:
        """Write pending buckets and totals in one batch; False (logged) if the store failed."""
        async with self._lock:
            if not self._buckets and not self._totals:
                return True
            buckets, totals = self._buckets, self._totals
            self._buckets, self._totals = {}, {}
            try:
                batch_totals = dict(totals)
                for bucket in buckets.values():
                    bucket_totals(bucket, batch_totals)
                await self.store.add(list(buckets.values()), batch_totals)
            except StoreError as exc:  # nothing was written: keep the batch for the next try
                self._requeue(buckets, totals)
                self._failed("flush", exc)
                return False
            except Exception:  # a bug: the batch may be written in part, so never retry it
                logger.exception(
                    "llm_proxy_mw: metrics history flush failed unexpectedly; dropped %d "
                    "buckets and %d totals rather than risk counting them twice",
                    len(buckets),
                    len(totals),
                )
                return False
            self._recovered()
            return True

    async def purge(self) -> int:
        """Delete buckets older than the retention, stored and pending; totals stay."""
        before = self._purge_before()
        async with self._lock:
            for series in [s for s in self._buckets if s[0] < before]:
                # Never written: keep what it adds to the totals, which are never purged.
                bucket_totals(self._buckets.pop(series), self._totals)
            try:
                purged = await self.store.purge(before)
            except StoreError as exc:
                self._failed("purge", exc)
                return 0
            self._recovered()
            return purged

    async def restore_totals(self, *, pending: bool = True) -> dict[str, float]:
        """The cumulative totals: stored plus (unless ``pending=False``) not yet flushed.

        Empty (logged) on failure. Counters restored at start take only the stored ones:
        what is pending was counted by this process already (a request served before a lazy
        start finished).
        """
        async with self._lock:
            try:
                totals = await self.store.totals()
            except StoreError as exc:
                self._failed("restore totals", exc)
                totals = {}
            if not pending:
                return totals
            for key, delta in self._totals.items():
                totals[key] = totals.get(key, 0.0) + delta
            for bucket in self._buckets.values():
                bucket_totals(bucket, totals)
            return totals

    async def history(self, since_minute: int, until_minute: int) -> list[MinuteBucket]:
        """Buckets with minute in ``[since_minute, until_minute)``, pending ones merged in.

        If the store fails, this logs and returns only what is still in memory.
        """
        async with self._lock:
            try:
                stored = await self.store.buckets(since_minute, until_minute)
            except StoreError as exc:
                self._failed("history query", exc)
                stored = []
            merged = {bucket.key: bucket for bucket in stored}
            for (minute, *_), pending in self._buckets.items():
                if since_minute <= minute < until_minute:
                    target = merged.get(pending.key)
                    if target is None:
                        target = merged[pending.key] = MinuteBucket(pending.key)
                    target.merge(pending)
        return sorted(merged.values(), key=_order)

    def _requeue(self, buckets: dict[_Series, MinuteBucket], totals: dict[str, float]) -> None:
        """Put a failed batch back, merging what was recorded meanwhile, within the bound."""
        for series, bucket in self._buckets.items():
            if series in buckets:
                buckets[series].merge(bucket)
            else:
                buckets[series] = bucket
        for key, delta in self._totals.items():
            totals[key] = totals.get(key, 0.0) + delta
        self._buckets, self._totals = buckets, totals
        # The totals are always kept: a dropped bucket still adds to them.
        drop_oldest(buckets, self.max_pending, lambda b: bucket_totals(b, totals), self._failures)

    def _pending_buckets(self) -> int:
        return len(self._buckets)

    def _unwritten(self) -> str:
        return f"{len(self._buckets)} unwritten buckets and {len(self._totals)} totals"
