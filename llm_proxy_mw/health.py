"""Per-provider health from the success/failure history: retry budget and circuit breaker.

Owned by the ``Router``: its plan of each request records every attempt's outcome, skips
providers whose circuit is open, and asks the budget before a retry on the same provider
(``routing.py``). Only provider failures count: transport errors, 408 and 5xx. A 429 or 409
spends retry budget but does not open the circuit (a rate limit or a conflict is not an
outage), and other 4xx count for nothing.

The retry budget is gRPC's token bucket (gRFC A6): each failure takes a token, each success
gives back ``token_ratio``; retries are allowed while more than half the bucket is left. We
chose it over Envoy's share of live requests because it bounds amplification per request at
any concurrency: against a hard-down provider the bucket drains after a few failures and
every further request costs one attempt. The default ratio is 0.5, not gRPC's example 0.1:
with 25% transient failures a success must refill more than the retries it pays for, or
retries starve exactly when they help. The bucket holds 50 tokens, not 10: each failure takes
a whole token and retries stop at half, so a small bucket refuses retries after a few
failures that happen to come close together (measured: 94% client success at 25% failures
with 10 tokens, 99.7% with 50), and a burst of 20 concurrent 429s would get only 4 retries.

The breaker opens at a 75% failure rate over at least 10 calls in 30 s. At 50%, a provider
failing 25% of calls transiently opened it by chance in 8% of fresh windows (and most of the
time at low traffic, where the window holds few calls); a dead provider still trips it at
its 10th call. A provider failing 50-75% stays in rotation, but the budget stops retrying it
above about 33% failures, so it gets no extra load.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["CircuitState", "HealthPolicy", "HealthRegistry", "ProviderHealth"]


class CircuitState(enum.IntEnum):
    """The gauge value of ``llm_proxy_circuit_state``."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


@dataclass(frozen=True, slots=True)
class HealthPolicy:
    """Tuning of the budget and the breaker; its defaults, explained above, are the only ones
    (``HealthConfig``'s too)."""

    budget_max_tokens: float = 50.0
    budget_token_ratio: float = 0.5
    window_seconds: int = 30
    min_calls: int = 10
    failure_rate: float = 0.75
    cooldown_seconds: float = 10.0
    half_open_probes: int = 3


class ProviderHealth:
    """Health of one provider: a sliding window of outcomes, a breaker, a retry budget."""

    def __init__(self, policy: HealthPolicy, clock: Callable[[], float]) -> None:
        self.policy = policy
        self._clock = clock
        size = policy.window_seconds
        self._second = [-1] * size
        self._successes = [0] * size
        self._failures = [0] * size
        self.tokens = policy.budget_max_tokens
        self.state = CircuitState.CLOSED
        self._opened_at = 0.0
        self._probes_admitted = 0
        self._probe_successes = 0

    # -- history -------------------------------------------------------------------------

    def _slot(self, now: float) -> int:
        second = int(now)
        index = second % len(self._second)
        if self._second[index] != second:
            self._second[index] = second
            self._successes[index] = self._failures[index] = 0
        return index

    def window(self) -> tuple[int, int]:
        """(successes, failures) within the window."""
        oldest = int(self._clock()) - len(self._second)
        successes = failures = 0
        for index, second in enumerate(self._second):
            if second > oldest:
                successes += self._successes[index]
                failures += self._failures[index]
        return successes, failures

    def success_ratio(self) -> float:
        successes, failures = self.window()
        total = successes + failures
        return successes / total if total else 1.0

    # -- recording -----------------------------------------------------------------------

    def record(self, outcome: str) -> None:
        """Feed one attempt's outcome (a code from the closed set)."""
        if outcome == "success":
            self._record_success()
        elif outcome in ("rate_limited", "conflict"):
            self.tokens = max(0.0, self.tokens - 1)
        elif outcome != "client_error":
            self._record_failure()

    def _record_success(self) -> None:
        now = self._clock()
        self._successes[self._slot(now)] += 1
        self.tokens = min(
            self.policy.budget_max_tokens, self.tokens + self.policy.budget_token_ratio
        )
        if self.state is CircuitState.HALF_OPEN:
            self._probe_successes += 1
            if self._probe_successes >= self.policy.half_open_probes:
                self._close()

    def _record_failure(self) -> None:
        now = self._clock()
        self._failures[self._slot(now)] += 1
        self.tokens = max(0.0, self.tokens - 1)
        if self.state is CircuitState.HALF_OPEN:
            self._open(now)
            return
        if self.state is CircuitState.CLOSED:
            successes, failures = self.window()
            calls = successes + failures
            if calls >= self.policy.min_calls and failures / calls >= self.policy.failure_rate:
                self._open(now)

    def _open(self, now: float) -> None:
        self.state = CircuitState.OPEN
        self._opened_at = now
        self._probes_admitted = self._probe_successes = 0

    def _close(self) -> None:
        self.state = CircuitState.CLOSED
        self._second = [-1] * len(self._second)
        self.tokens = self.policy.budget_max_tokens

    # -- decisions -----------------------------------------------------------------------

    def current_state(self) -> CircuitState:
        if (
            self.state is CircuitState.OPEN
            and self._clock() - self._opened_at >= self.policy.cooldown_seconds
        ):
            self.state = CircuitState.HALF_OPEN
            self._opened_at = self._clock()
            self._probes_admitted = self._probe_successes = 0
        return self.state

    def admit(self) -> bool:
        """May a request go to this provider now? Half-open admits a few probes at a time.

        Probes whose outcome never came back (their client left) are forgotten after one
        cool-down, so the breaker cannot stick half-open.
        """
        state = self.current_state()
        if state is CircuitState.CLOSED:
            return True
        if state is CircuitState.OPEN:
            return False
        if self._clock() - self._opened_at >= self.policy.cooldown_seconds:
            self._opened_at = self._clock()
            self._probes_admitted = self._probe_successes
        if self._probes_admitted < self.policy.half_open_probes:
            self._probes_admitted += 1
            return True
        return False

    def retry_after(self) -> float:
        """Seconds until an open circuit lets probes through."""
        remaining = self.policy.cooldown_seconds - (self._clock() - self._opened_at)
        return max(0.0, remaining)

    def can_retry(self) -> bool:
        return self.tokens > self.policy.budget_max_tokens / 2

    def snapshot(self) -> dict[str, Any]:
        successes, failures = self.window()
        return {
            "circuit": self.current_state().name.lower(),
            "success_ratio": round(self.success_ratio(), 4),
            "window_calls": successes + failures,
            "retry_budget": round(self.tokens, 2),
        }


class HealthRegistry:
    """Every provider's health, by name."""

    def __init__(
        self,
        names: Iterable[str],
        policy: HealthPolicy | None = None,
        *,
        policies: Mapping[str, HealthPolicy] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy or HealthPolicy()
        policies = policies or {}
        self.providers = {
            name: ProviderHealth(policies.get(name, self.policy), clock) for name in names
        }

    def __getitem__(self, name: str) -> ProviderHealth:
        return self.providers[name]

    def retry_after(self, names: Iterable[str]) -> int:
        """Whole seconds until the first of these providers admits probes again."""
        waits = [self.providers[n].retry_after() for n in names if n in self.providers]
        return max(1, math.ceil(min(waits))) if waits else 1

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return {name: health.snapshot() for name, health in self.providers.items()}
