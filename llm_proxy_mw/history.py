"""Metrics history: per-minute aggregates that survive restarts, and the store interface.

The metrics layer adds each finished request to an in-memory ``MinuteBucket`` (a dict
update, no I/O on the hot path); a ``HistoryRecorder`` flushes the buckets and the
cumulative totals to a ``MetricsStore`` in batches every few seconds and at shutdown. A
crash loses at most one flush interval. On start the totals are read back, so Prometheus
counters continue where they were instead of dropping to zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

__all__ = [
    "DURATION_BUCKETS",
    "BucketKey",
    "MetricsStore",
    "MinuteBucket",
]

#: Histogram upper bounds in seconds for request duration and time to first byte: LLM
#: calls take from ten milliseconds (a cached embedding) to ten minutes (a long reasoning
#: stream).
DURATION_BUCKETS: tuple[float, ...] = (
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
)


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

    ``add_buckets`` adds (merges) the given buckets into stored ones with the same key, and
    adds ``totals`` deltas to the cumulative counters (keys are opaque strings chosen by the
    metrics layer, e.g. ``"requests_total|openai|gpt-4o|200"``). Both happen atomically per
    call. Implementations never block the event loop (SQLite runs in a worker thread).
    """

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def add(self, buckets: Sequence[MinuteBucket], totals: dict[str, float]) -> None: ...

    async def totals(self) -> dict[str, float]: ...

    async def buckets(self, since_minute: int, until_minute: int) -> list[MinuteBucket]: ...

    async def purge(self, before_minute: int) -> int:
        """Delete buckets older than ``before_minute``; totals are kept. Returns the count."""
        ...
