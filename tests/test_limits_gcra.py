"""The GCRA arithmetic and the in-process backend, on a fake clock: sliding rates with no
boundary bursts, all-or-nothing reservations, and settlements that never leak."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_proxy_mw._limits_local import LocalLimits, gcra_adjust, gcra_remaining, gcra_take
from llm_proxy_mw._limits_policy import Grant, Limit, Refusal, budget_key, nano_usd
from tests.fakes.clock import FakeClock

pytestmark = pytest.mark.anyio


def backend(clock: FakeClock, wall: float = 1_764_000_000.0) -> LocalLimits:
    return LocalLimits(clock=clock, wall_clock=lambda: wall)


def test_a_take_of_the_whole_bucket_passes_whatever_the_clock_rounds() -> None:
    now = 4044.324  # (now + 60) - now - 60 is 4.5e-13 in floating point, not 0
    assert (now + 60.0) - now - 60.0 > 0
    tat, wait = gcra_take(0.0, now, 1, 1)
    assert wait <= 0  # rpm = 1: the first request passes
    _, wait = gcra_take(tat, now, 1, 1)
    assert wait == pytest.approx(60.0)


def test_gcra_passes_a_full_bucket_then_one_unit_per_interval() -> None:
    tat, now = 0.0, 100.0
    for _ in range(60):
        tat, wait = gcra_take(tat, now, 60, 1)
        assert wait <= 0
    _, wait = gcra_take(tat, now, 60, 1)
    assert wait == pytest.approx(1.0)  # one request per second refills
    assert gcra_remaining(tat, now, 60) == (0, pytest.approx(60.0))
    assert gcra_remaining(tat, now + 30, 60) == (30, pytest.approx(30.0))


def test_gcra_a_request_larger_than_the_bucket_waits_for_a_full_one() -> None:
    tat, wait = gcra_take(0.0, 10.0, 100, 10_000)
    assert wait == pytest.approx(0.0)
    assert tat == pytest.approx(70.0)


def test_gcra_giving_back_never_fills_beyond_full() -> None:
    assert gcra_adjust(150.0, 100.0, 60, -10) == pytest.approx(140.0)
    assert gcra_adjust(150.0, 100.0, 60, -1000) == 100.0
    assert gcra_adjust(0.0, 100.0, 60, 5) == pytest.approx(105.0)


async def test_rpm_slides_no_double_burst_at_a_minute_boundary() -> None:
    clock = FakeClock(0.0)
    limits = backend(clock)
    limit = Limit(rpm=60)
    admitted = 0
    for _ in range(1200):  # 20 offers a second for 60 s, crossing a "minute" at 59.95
        if isinstance(await limits.reserve("p", limit, 0, 0), Grant):
            admitted += 1
        clock.advance(0.05)
    # a full bucket (60) plus one a second: a fixed window would have allowed 120 at once
    assert admitted == pytest.approx(60 + 60, abs=1)


async def test_a_refusal_says_when_it_would_pass() -> None:
    clock = FakeClock()
    limits = backend(clock)
    limit = Limit(rpm=2, tpm=1000)
    assert isinstance(await limits.reserve("p", limit, 100, 0), Grant)
    assert isinstance(await limits.reserve("p", limit, 100, 0), Grant)
    refusal = await limits.reserve("p", limit, 100, 0)
    assert isinstance(refusal, Refusal) and not refusal.budget
    assert refusal.retry_after == pytest.approx(30.0)
    clock.advance(30.0)
    assert isinstance(await limits.reserve("p", limit, 100, 0), Grant)


async def test_a_refused_reservation_takes_nothing() -> None:
    clock = FakeClock()
    limits = backend(clock)
    limit = Limit(rpm=10, tpm=100, concurrency=5, budget_usd=Decimal(1))
    assert isinstance(await limits.reserve("p", limit, 90, 1000), Grant)
    assert isinstance(await limits.reserve("p", limit, 20, 1000), Refusal)  # tokens
    grant = await limits.reserve("p", limit, 10, 1000)
    assert isinstance(grant, Grant)
    assert grant.remaining_requests == 8  # the refused request did not count
    assert grant.remaining_tokens == 0


async def test_concurrency_holds_until_settled() -> None:
    limits = backend(FakeClock())
    limit = Limit(concurrency=2)
    first = await limits.reserve("p", limit, 0, 0)
    assert isinstance(first, Grant)
    assert isinstance(await limits.reserve("p", limit, 0, 0), Grant)
    assert isinstance(await limits.reserve("p", limit, 0, 0), Refusal)
    assert isinstance(await limits.reserve("q", limit, 0, 0), Grant)  # per principal
    limits.settle(first.reservation, tokens=0, cost_nano=0, give_back_request=False)
    assert isinstance(await limits.reserve("p", limit, 0, 0), Grant)


async def test_a_budget_admits_while_unspent_so_it_overshoots_by_one_reservation_at_most() -> None:
    limits = backend(FakeClock())
    limit = Limit(budget_usd=Decimal("0.000010"))  # 10,000 nano-USD
    grants = []
    while isinstance(decision := await limits.reserve("p", limit, 0, 3_000), Grant):
        grants.append(decision)
    assert isinstance(decision, Refusal) and decision.budget
    assert len(grants) == 4  # 9,000 < 10,000 admits a fourth: 12,000 reserved
    # Settled for less than reserved: the rest is given back and admits again.
    limits.settle(grants[0].reservation, tokens=0, cost_nano=500, give_back_request=False)
    fifth = await limits.reserve("p", limit, 0, 3_000)  # 9,500 spent or reserved
    assert isinstance(fifth, Grant)
    assert isinstance(await limits.reserve("p", limit, 0, 3_000), Refusal)
    for grant in [*grants[1:], fifth]:
        limits.settle(grant.reservation, tokens=0, cost_nano=500, give_back_request=False)
    assert isinstance(await limits.reserve("p", limit, 0, 3_000), Grant)


async def test_a_budget_period_is_the_utc_calendar() -> None:
    limit = Limit(budget_usd=Decimal(0), budget_period="day")
    assert isinstance(await backend(FakeClock()).reserve("p", limit, 0, 0), Refusal)
    moment = dt.datetime(2026, 12, 31, 23, 59, tzinfo=dt.UTC).timestamp()
    assert budget_key("day", moment) == ("2026-12-31", 2 * 86_400)
    assert budget_key("week", moment) == ("2026-W53", 8 * 86_400)
    assert budget_key("month", moment) == ("2026-12", 32 * 86_400)
    assert budget_key("total", moment) == ("total", 0)
    assert budget_key("day", moment + 60)[0] == "2027-01-01"


def test_costs_round_up_to_whole_nano_usd() -> None:
    assert nano_usd(Decimal("0.0000000001")) == 1
    assert nano_usd(Decimal("1.5")) == 1_500_000_000


async def test_failed_requests_give_back_the_request_too() -> None:
    limits = backend(FakeClock())
    limit = Limit(rpm=1)
    grant = await limits.reserve("p", limit, 0, 0)
    assert isinstance(grant, Grant)
    limits.settle(grant.reservation, tokens=0, cost_nano=0, give_back_request=True)
    assert isinstance(await limits.reserve("p", limit, 0, 0), Grant)
    assert isinstance(await limits.reserve("p", limit, 0, 0), Refusal)


_requests = st.lists(
    st.tuples(
        st.integers(0, 5_000),  # tokens reserved
        st.integers(0, 5_000),  # tokens used
        st.integers(0, 10**6),  # nano-USD reserved
        st.integers(0, 10**6),  # nano-USD spent
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(requests=_requests, order=st.randoms(use_true_random=False))
def test_reserve_then_settle_never_leaks(
    requests: list[tuple[int, int, int, int]], order: object
) -> None:
    """Whatever the amounts and the order of settlements, once every request is settled
    (the clock stopped) the buckets hold exactly what was used: no slot, token or cent
    leaks either way."""
    import asyncio
    import random

    assert isinstance(order, random.Random)
    clock = FakeClock(500.0)
    limits = backend(clock)
    limit = Limit(tpm=10**9, concurrency=10**6, budget_usd=Decimal(10**6))

    async def run() -> None:
        grants = []
        for reserved, _, cost, _ in requests:
            grant = await limits.reserve("p", limit, reserved, cost)
            assert isinstance(grant, Grant)
            grants.append(grant)
        settled = list(zip(grants, requests, strict=True))
        order.shuffle(settled)
        for grant, (_, used, _, spent) in settled:
            limits.settle(grant.reservation, tokens=used, cost_nano=spent, give_back_request=False)

    asyncio.run(run())
    state = limits._buckets["p"]
    assert state.in_flight == 0
    key = budget_key("month", 1_764_000_000.0)[0]
    assert state.spent[key] == sum(spent for *_, spent in requests)
    used = sum(used for _, used, _, _ in requests)
    assert state.tokens_tat == pytest.approx(500.0 + used * 60 / 10**9)
