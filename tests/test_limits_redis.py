"""Limits in a real ``redis-server``: two backends (as two replicas would hold) share every
bucket, and the store killed mid-run allows or denies as configured, then limits again."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Literal

import httpx
import pytest

from llm_proxy_mw._limits_policy import Grant, Limit, Refusal
from llm_proxy_mw._limits_redis import RedisLimits
from llm_proxy_mw.context import RequestContextMiddleware
from llm_proxy_mw.limits import LimitsMiddleware, LimitsPolicy
from tests.fakes.redis_server import RedisServer, redis_server
from tests.test_limits import CHAT, _Upstream

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]


@pytest.fixture(scope="module")
def redis() -> AsyncIterator[RedisServer]:
    with redis_server() as server:
        yield server


@pytest.fixture
async def replicas(
    redis: RedisServer, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[RedisLimits, RedisLimits]]:
    # A prefix of the test's own: the buckets of one test never meet another's.
    prefix = f"test:{request.node.name}:"
    a, b = RedisLimits(redis.url, prefix=prefix), RedisLimits(redis.url, prefix=prefix)
    yield a, b
    await a.aclose()
    await b.aclose()


async def test_rpm_is_shared_by_both_replicas(replicas: tuple[RedisLimits, RedisLimits]) -> None:
    a, b = replicas
    limit = Limit(rpm=4)
    decisions = [await (a if i % 2 else b).reserve("p", limit, 0, 0) for i in range(6)]
    assert [isinstance(d, Grant) for d in decisions] == [True] * 4 + [False] * 2
    refusal = decisions[-1]
    assert isinstance(refusal, Refusal) and not refusal.budget
    assert 0 < refusal.retry_after <= 15.0  # one request refills every 15 s
    first = decisions[0]
    assert isinstance(first, Grant) and first.remaining_requests == 3
    assert first.reset_requests == pytest.approx(15.0, abs=0.5)


async def test_tpm_is_shared_and_settles_with_the_real_usage(
    replicas: tuple[RedisLimits, RedisLimits],
) -> None:
    a, b = replicas
    limit = Limit(tpm=1000)
    grant = await a.reserve("p", limit, 800, 0)
    assert isinstance(grant, Grant) and grant.remaining_tokens == 200
    assert isinstance(await b.reserve("p", limit, 300, 0), Refusal)
    await a.settle(grant.reservation, tokens=100, cost_nano=0, give_back_request=False)
    second = await b.reserve("p", limit, 300, 0)
    assert isinstance(second, Grant)
    assert second.remaining_tokens == pytest.approx(600, abs=2)


async def test_concurrency_is_shared_and_freed_by_settling(
    replicas: tuple[RedisLimits, RedisLimits],
) -> None:
    a, b = replicas
    limit = Limit(concurrency=2)
    first = await a.reserve("p", limit, 0, 0)
    assert isinstance(first, Grant)
    assert isinstance(await b.reserve("p", limit, 0, 0), Grant)
    assert isinstance(await a.reserve("p", limit, 0, 0), Refusal)
    assert isinstance(await b.reserve("p", limit, 0, 0), Refusal)
    await a.settle(first.reservation, tokens=0, cost_nano=0, give_back_request=False)
    assert isinstance(await b.reserve("p", limit, 0, 0), Grant)


async def test_a_budget_is_shared_and_overshoots_by_one_reservation_at_most(
    replicas: tuple[RedisLimits, RedisLimits],
) -> None:
    a, b = replicas
    limit = Limit(budget_usd=Decimal("0.00001"), budget_period="day")  # 10,000 nano-USD
    grants = []
    for i in range(10):
        decision = await (a if i % 2 else b).reserve("p", limit, 0, 3_000)
        if isinstance(decision, Grant):
            grants.append(decision)
        else:
            assert decision.budget
    assert len(grants) == 4  # 9,000 < 10,000 admits a fourth; then nothing
    for grant in grants:
        await b.settle(grant.reservation, tokens=0, cost_nano=2_000, give_back_request=False)
    assert isinstance(await a.reserve("p", limit, 0, 3_000), Grant)  # 8,000 spent
    assert isinstance(await a.reserve("p", limit, 0, 3_000), Refusal)  # 11,000


async def test_failed_requests_give_the_request_back(
    replicas: tuple[RedisLimits, RedisLimits],
) -> None:
    a, b = replicas
    limit = Limit(rpm=1)
    grant = await a.reserve("p", limit, 0, 0)
    assert isinstance(grant, Grant)
    await a.settle(grant.reservation, tokens=0, cost_nano=0, give_back_request=True)
    assert isinstance(await b.reserve("p", limit, 0, 0), Grant)
    assert isinstance(await b.reserve("p", limit, 0, 0), Refusal)


@pytest.mark.parametrize(("on_error", "status"), [("allow", 200), ("deny", 503)])
async def test_killing_redis_mid_run_allows_or_denies_then_limits_again(
    on_error: Literal["allow", "deny"], status: int
) -> None:
    upstream = _Upstream()
    with redis_server() as server:
        port = server.port
        backend = RedisLimits(server.url, timeout=0.5)
        policy = LimitsPolicy(default=Limit(rpm=2), on_store_error=on_error)
        limits = LimitsMiddleware(upstream, policy=policy, backend=backend)
        app = RequestContextMiddleware(limits)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://p"
        ) as client:
            before = [(await client.post("/v1/chat/completions", json=CHAT)).status_code]
            before += [(await client.post("/v1/chat/completions", json=CHAT)).status_code]
            before += [(await client.post("/v1/chat/completions", json=CHAT)).status_code]
            assert before == [200, 200, 429]
            server.process.kill()
            server.process.wait()
            during = [(await client.post("/v1/chat/completions", json=CHAT)).status_code]
            during += [(await client.post("/v1/chat/completions", json=CHAT)).status_code]
            assert during == [status, status]
            with redis_server(port=port):  # back, empty: limits hold again
                after = [
                    (await client.post("/v1/chat/completions", json=CHAT)).status_code
                    for _ in range(3)
                ]
                await limits.aclose()
    assert after == [200, 200, 429]
    assert upstream.calls == 4 + (2 if status == 200 else 0)


async def test_a_settlement_after_redis_forgot_the_scripts_loads_them_again(
    redis: RedisServer, replicas: tuple[RedisLimits, RedisLimits]
) -> None:
    import redis.asyncio as redis_client

    a, _ = replicas
    limit = Limit(tpm=1000)
    grant = await a.reserve("p", limit, 900, 0)
    assert isinstance(grant, Grant)
    admin = redis_client.Redis.from_url(redis.url)
    await admin.script_flush()  # as a restarted Redis would have
    await admin.aclose()
    await a.settle(grant.reservation, tokens=100, cost_nano=0, give_back_request=False)
    again = await a.reserve("p", limit, 0, 0)
    assert isinstance(again, Grant) and again.remaining_tokens == pytest.approx(900, abs=2)


async def test_settlements_share_the_write_of_the_next_reservation(
    replicas: tuple[RedisLimits, RedisLimits],
) -> None:
    a, _ = replicas
    limit = Limit(tpm=1000)
    # Both scripts loaded first (another test may have flushed them): the writes below are
    # then the two commands alone, in order.
    warm = await a.reserve("warm-up", limit, 1, 0)
    assert isinstance(warm, Grant)
    await a.settle(warm.reservation, tokens=1, cost_nano=0, give_back_request=False)
    first = await a.reserve("p", limit, 500, 0)
    assert isinstance(first, Grant) and a._connection is not None
    transport = a._connection._transport
    assert transport is not None
    writes: list[bytes] = []
    write = transport.write

    def recorded(data: bytes) -> None:
        writes.append(bytes(data))
        write(data)

    transport.write = recorded  # type: ignore[method-assign]
    settled = a.settle(first.reservation, tokens=0, cost_nano=0, give_back_request=False)
    assert writes == []  # held for company
    second = await a.reserve("p", limit, 1000, 0)
    await settled
    assert len(writes) == 1 and writes[0].count(b"EVALSHA") == 2
    assert isinstance(second, Grant)  # the settlement gave its 500 back first
