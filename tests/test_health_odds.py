"""How often the breaker opens by chance: a model check of the default ``HealthPolicy``.

The real ``ProviderHealth`` is fed seeded outcomes, a quarter of them failures (the transient
rate the retry defaults are tuned for, see the resilience benchmark), on a simulated clock.
With the defaults the circuit must stay closed: it opens in fewer than 1% of the seeds, at
any traffic, and a fresh window's first ``min_calls`` calls open it with odds below 0.1%.
"""

from __future__ import annotations

import math
import random

import pytest

from llm_proxy_mw.health import CircuitState, HealthPolicy, ProviderHealth

FAIL_RATE = 0.25
SEEDS = 300


def opens(policy: HealthPolicy, seed: int, calls: int, spacing: float) -> bool:
    """Whether ``calls`` outcomes, ``spacing`` seconds apart, ever open the circuit."""
    now = 1000.0
    health = ProviderHealth(policy, lambda: now)
    rng = random.Random(seed)
    for _ in range(calls):
        health.record("server_error" if rng.random() < FAIL_RATE else "success")
        if health.state is CircuitState.OPEN:
            return True
        now += spacing
    return False


@pytest.mark.parametrize(
    ("calls", "spacing"),
    [
        pytest.param(300, 0.001, id="a fresh window: its first 300 calls"),
        pytest.param(600, 1.0, id="1 req/s for 10 min"),
        pytest.param(300, 2.0, id="0.5 req/s for 10 min"),
    ],
)
def test_the_default_breaker_stays_closed_at_a_quarter_of_failures(
    calls: int, spacing: float
) -> None:
    opened = sum(opens(HealthPolicy(), seed, calls, spacing) for seed in range(SEEDS))
    assert opened / SEEDS < 0.01


def test_a_fresh_windows_first_calls_rarely_reach_the_failure_rate() -> None:
    policy = HealthPolicy()
    n = policy.min_calls
    enough = math.ceil(n * policy.failure_rate - 1e-9)  # failures that open the circuit
    odds = sum(
        math.comb(n, i) * FAIL_RATE**i * (1 - FAIL_RATE) ** (n - i) for i in range(enough, n + 1)
    )
    assert odds < 0.001
