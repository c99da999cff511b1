"""What a principal may use (``Limit``), who gets which (``LimitsPolicy``), and what one request
holds while it runs (``Reservation``) or was refused with (``Refusal``).

Costs are integers of nano-USD (1e-9), so that budgets add up exactly in Redis (``INCRBY``)
and in memory alike.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, Decimal
from typing import Literal

__all__ = [
    "NANO_USD",
    "WINDOW",
    "BudgetPeriod",
    "Grant",
    "Limit",
    "LimitsPolicy",
    "Refusal",
    "Reservation",
    "budget_key",
    "nano_usd",
]

#: Seconds over which ``rpm`` and ``tpm`` refill, continuously.
WINDOW = 60.0
NANO_USD = Decimal(10) ** 9

BudgetPeriod = Literal["day", "week", "month", "total"]

#: Seconds a period's spent total is kept after the period began (longer than any period).
_BUDGET_TTL: dict[str, int] = {"day": 2 * 86_400, "week": 8 * 86_400, "month": 32 * 86_400}


@dataclass(frozen=True, slots=True)
class Limit:
    """One principal's limits; ``None`` is no limit of that kind."""

    rpm: int | None = None
    tpm: int | None = None
    concurrency: int | None = None
    budget_usd: Decimal | None = None
    budget_period: BudgetPeriod = "month"

    @property
    def needs_estimate(self) -> bool:
        """Whether a request's tokens or cost must be estimated (its body read) to reserve."""
        return self.tpm is not None or self.budget_usd is not None

    @property
    def budget_nano(self) -> int:
        return 0 if self.budget_usd is None else nano_usd(self.budget_usd)


@dataclass(frozen=True, slots=True)
class LimitsPolicy:
    """``default`` for every principal without an entry in ``principals`` (an entry replaces
    the default). ``on_store_error``: ``"allow"`` serves requests unlimited while the store is
    down (logged and counted), ``"deny"`` answers 503."""

    default: Limit | None = None
    principals: Mapping[str, Limit] = field(default_factory=dict)
    on_store_error: Literal["allow", "deny"] = "allow"

    def limit_for(self, principal: str) -> Limit | None:
        return self.principals.get(principal, self.default)


@dataclass(slots=True)
class Reservation:
    """What one admitted request holds until it is settled."""

    principal: str
    limit: Limit
    tokens: int
    cost_nano: int
    #: The budget period's key suffix, fixed at reserve: a request settles in its own period.
    budget_key: str
    #: Its slot among the principal's requests in flight (Redis: the sorted set's member).
    slot: str


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request was not admitted: ``budget`` spent (no point retrying), or a rate or the
    concurrency over its limit, which passes again in ``retry_after`` seconds."""

    budget: bool
    retry_after: float
    limit: Limit


@dataclass(frozen=True, slots=True)
class Grant:
    """An admitted request's reservation and the state of its principal's buckets, for the
    ``x-ratelimit-*`` headers (``None`` where that kind is not limited)."""

    reservation: Reservation
    remaining_requests: int | None = None
    reset_requests: float | None = None
    remaining_tokens: int | None = None
    reset_tokens: float | None = None


def nano_usd(usd: Decimal) -> int:
    """USD as whole nano-USD, rounded up: a budget never undercounts."""
    return int((usd * NANO_USD).to_integral_value(ROUND_CEILING))


def budget_key(period: BudgetPeriod, now: float) -> tuple[str, int]:
    """The key suffix of the UTC calendar period holding ``now`` (wall clock), and seconds to
    keep its total (0: forever)."""
    if period == "total":
        return "total", 0
    day = dt.datetime.fromtimestamp(now, dt.UTC).date()
    if period == "day":
        suffix = day.isoformat()
    elif period == "week":
        year, week, _ = day.isocalendar()
        suffix = f"{year}-W{week:02d}"
    else:
        suffix = day.isoformat()[:7]
    return suffix, _BUDGET_TTL[period]
