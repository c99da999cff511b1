"""The GCRA arithmetic of ``rpm`` and ``tpm``, and the in-process backend built on it.

GCRA (the generic cell rate algorithm) keeps one number per bucket: the theoretical arrival
time ``tat``, when the bucket would be full again. Each unit pushes it ``WINDOW / limit``
seconds later; a request passes while ``tat`` stays within ``WINDOW`` of now. That is a token
bucket of ``limit`` units refilled continuously, with no window boundary to burst across.
Giving units back moves ``tat`` earlier (never before now: a full bucket holds no more).

The in-process backend holds within one process only (one worker); several need Redis
(``_limits_redis``), whose scripts do the same arithmetic.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from llm_proxy_mw._limits_policy import (
    WINDOW,
    Grant,
    Limit,
    Refusal,
    Reservation,
    budget_key,
)

__all__ = ["CONCURRENCY_RETRY_AFTER", "LocalLimits", "gcra_adjust", "gcra_remaining", "gcra_take"]

#: Seconds a request refused for concurrency is told to wait: when a slot frees is unknown.
CONCURRENCY_RETRY_AFTER = 1.0
_EPSILON = 1e-9


def gcra_take(tat: float, now: float, limit: int, amount: int) -> tuple[float, float]:
    """Take ``amount`` units (at most ``limit``: a request larger than the whole bucket waits
    for a full one): the new ``tat``, and seconds to wait before it would pass (> 0: it does
    not pass now, and ``tat`` must stay as it was)."""
    new = max(tat, now) + min(amount, limit) * WINDOW / limit
    wait = new - now - WINDOW
    # A take of the whole bucket waits ``(now + WINDOW) - now - WINDOW``: 0, or a rounding
    # error (~1e-13 at a monotonic clock's magnitude) that must not refuse the request.
    return new, wait if wait > _EPSILON else 0.0


def gcra_adjust(tat: float, now: float, limit: int, amount: int) -> float:
    """``tat`` after charging ``amount`` more units (negative: giving them back)."""
    return max(max(tat, now) + amount * WINDOW / limit, now)


def gcra_remaining(tat: float, now: float, limit: int) -> tuple[int, float]:
    """Units that would pass now, and seconds until the bucket is full again."""
    debt = max(tat - now, 0.0)
    return max(math.floor((WINDOW - debt) * limit / WINDOW + _EPSILON), 0), debt


@dataclass(slots=True)
class _Buckets:
    """One principal's state."""

    requests_tat: float = 0.0
    tokens_tat: float = 0.0
    in_flight: int = 0
    #: nano-USD spent (reservations included) by budget period key.
    spent: dict[str, int] = field(default_factory=dict)


class LocalLimits:
    """Limits held in this process's memory. ``clock`` is monotonic (the buckets),
    ``wall_clock`` the calendar (budget periods)."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self._wall_clock = wall_clock
        self._buckets: dict[str, _Buckets] = {}

    async def reserve(
        self, principal: str, limit: Limit, tokens: int, cost_nano: int
    ) -> Grant | Refusal:
        """Reserve one request, ``tokens`` and ``cost_nano`` for ``principal``, all or none."""
        buckets = self._buckets.get(principal)
        if buckets is None:
            buckets = self._buckets[principal] = _Buckets()
        now = self._clock()
        key, _ = budget_key(limit.budget_period, self._wall_clock())
        if limit.budget_usd is not None and buckets.spent.get(key, 0) >= limit.budget_nano:
            return Refusal(budget=True, retry_after=0.0, limit=limit)
        if limit.concurrency is not None and buckets.in_flight >= limit.concurrency:
            return Refusal(budget=False, retry_after=CONCURRENCY_RETRY_AFTER, limit=limit)
        requests_tat = tokens_tat = 0.0
        wait = 0.0
        if limit.rpm is not None:
            requests_tat, wait = gcra_take(buckets.requests_tat, now, limit.rpm, 1)
        if limit.tpm is not None:
            tokens_tat, tokens_wait = gcra_take(buckets.tokens_tat, now, limit.tpm, tokens)
            wait = max(wait, tokens_wait)
        if wait > 0:
            return Refusal(budget=False, retry_after=wait, limit=limit)
        requests = tokens_left = None
        if limit.rpm is not None:
            buckets.requests_tat = requests_tat
            requests = gcra_remaining(requests_tat, now, limit.rpm)
        if limit.tpm is not None:
            buckets.tokens_tat = tokens_tat
            tokens_left = gcra_remaining(tokens_tat, now, limit.tpm)
            tokens = min(tokens, limit.tpm)  # what the bucket took
        if limit.concurrency is not None:
            buckets.in_flight += 1
        if limit.budget_usd is not None:
            buckets.spent[key] = buckets.spent.get(key, 0) + cost_nano
        reservation = Reservation(principal, limit, tokens, cost_nano, key, "")
        return Grant(reservation, *(requests or (None, None)), *(tokens_left or (None, None)))

    def settle(
        self, reservation: Reservation, *, tokens: int, cost_nano: int, give_back_request: bool
    ) -> None:
        """Replace what ``reservation`` held by what the request used: ``tokens`` and
        ``cost_nano``; with ``give_back_request`` the request itself does not count."""
        buckets = self._buckets[reservation.principal]
        limit = reservation.limit
        now = self._clock()
        if limit.rpm is not None and give_back_request:
            buckets.requests_tat = gcra_adjust(buckets.requests_tat, now, limit.rpm, -1)
        if limit.tpm is not None and tokens != reservation.tokens:
            extra = tokens - reservation.tokens
            buckets.tokens_tat = gcra_adjust(buckets.tokens_tat, now, limit.tpm, extra)
        if limit.concurrency is not None:
            buckets.in_flight -= 1
        if limit.budget_usd is not None:
            key = reservation.budget_key
            buckets.spent[key] = buckets.spent.get(key, 0) + cost_nano - reservation.cost_nano

    async def aclose(self) -> None:
        """Nothing to close: the state lives as long as the process."""
