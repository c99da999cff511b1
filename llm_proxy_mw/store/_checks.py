"""What a metrics store can hold, checked before a batch is written.

Counts are ``int`` (not ``bool``) in ``[0, MAX_COUNT]``, sums and totals finite numbers,
total keys text that UTF-8 can encode. A bucket or total outside that can never be written,
so the store drops it with one warning and writes the rest of the batch: one absurd number
neither loses the other buckets nor, re-queued, comes back at every flush.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from llm_proxy_mw.history import DURATION_BUCKETS, BucketKey, MinuteBucket

__all__ = ["MAX_COUNT", "Dropped", "describe", "storable"]

logger = logging.getLogger("llm_proxy_mw.store")

#: 18 digits: room to grow inside the signed 64-bit integers of SQLite and Redis.
MAX_COUNT = 10**18 - 1
_COUNTS = ("count", "errors", "ttfb_count", "prompt_tokens", "completion_tokens")
_SUMS = ("duration_sum", "ttfb_sum")
_SLOTS = len(DURATION_BUCKETS) + 1
_SHOWN = 5


@dataclass(slots=True)
class Dropped:
    """What a store could not hold in one batch, described for the log."""

    buckets: list[str] = field(default_factory=list)
    totals: list[str] = field(default_factory=list)

    def warn(self, url: str) -> None:
        problems = self.buckets + self.totals
        if not problems:
            return
        more = f" and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else ""
        logger.warning(
            "llm_proxy_mw: metrics store %s dropped %d buckets and %d totals it cannot hold, "
            "and wrote the rest of the batch: %s%s",
            url,
            len(self.buckets),
            len(self.totals),
            "; ".join(problems[:_SHOWN]),
            more,
        )


def storable(
    buckets: Sequence[MinuteBucket], totals: dict[str, float]
) -> tuple[list[MinuteBucket], dict[str, float], Dropped]:
    """The buckets and totals a store can hold, and what it cannot."""
    dropped = Dropped()
    kept: list[MinuteBucket] = []
    for bucket in buckets:
        problem = _bucket_problem(bucket)
        if problem is None:
            kept.append(bucket)
        else:
            dropped.buckets.append(f"{describe(bucket.key)}: {problem}")
    kept_totals: dict[str, float] = {}
    for key, value in totals.items():
        if not _is_finite(value):
            dropped.totals.append(f"total {key!r}: not a finite number")
        elif not _is_utf8(key):
            dropped.totals.append(f"total {key!r}: not UTF-8 text")
        else:
            kept_totals[key] = value
    return kept, kept_totals, dropped


def describe(key: BucketKey) -> str:
    return f"bucket {key.provider!r} {key.model!r} {key.status} of minute {key.minute}"


def _bucket_problem(bucket: MinuteBucket) -> str | None:
    for name in _COUNTS:
        if not _is_count(getattr(bucket, name)):
            return f"{name} is not an integer in [0, 10**18)"
    slots = bucket.duration_counts
    if len(slots) != _SLOTS or not all(_is_count(value) for value in slots):
        return "duration_counts are not integers in [0, 10**18)"
    for name in _SUMS:
        if not _is_finite(getattr(bucket, name)):
            return f"{name} is not a finite number"
    return None


def _is_count(value: object) -> bool:
    return type(value) is int and 0 <= value <= MAX_COUNT


def _is_finite(value: object) -> bool:
    if type(value) is float:
        return math.isfinite(value)
    return type(value) is int and -MAX_COUNT <= value <= MAX_COUNT  # float() could overflow


def _is_utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True
