"""``LimitsMiddleware`` through the built proxy: refusals in the caller's format that never
reach a provider, OpenAI's ``x-ratelimit-*`` headers, settling with the real usage, the
store down, and the config it is built from."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import anyio.lowlevel
import httpx
import pytest
from prometheus_client import CollectorRegistry
from starlette.types import Receive, Scope, Send

from llm_proxy_mw import build_proxy
from llm_proxy_mw._limits_policy import Grant, Limit, Refusal, Reservation
from llm_proxy_mw.config import ConfigError, parse_config
from llm_proxy_mw.context import RequestContextMiddleware, get_context
from llm_proxy_mw.errors import StoreError
from llm_proxy_mw.limits import LimitsMiddleware, LimitsPolicy, LocalLimits
from tests.fakes.transports import RecordingTransport

pytestmark = pytest.mark.anyio

CHAT = {"model": "echo-1", "messages": [{"role": "user", "content": "hello there"}]}
MESSAGES = {**CHAT, "max_tokens": 50}
KEYS = [
    {"name": "alice", "key": "alice-key-0123456789"},
    {"name": "bob", "key": "bob-key-0123456789"},
]
ALICE = {"authorization": "Bearer alice-key-0123456789"}
BOB = {"authorization": "Bearer bob-key-0123456789"}


def config(limits: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "providers": {"demo": {"kind": "echo", "models": ["echo-1"]}},
        "auth": {"api_keys": KEYS},
        "limits": limits,
        **extra,
    }


@asynccontextmanager
async def proxy_client(
    limits: dict[str, Any], recorder: RecordingTransport | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    transports = {"demo": recorder} if recorder else None
    proxy = build_proxy(config(limits), transports=transports)
    async with (
        proxy.lifespan(),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=proxy), base_url="http://proxy"
        ) as client,
    ):
        yield client


async def test_over_rpm_is_refused_in_openai_format_and_never_reaches_the_provider() -> None:
    recorder = RecordingTransport()
    async with proxy_client({"default": {"rpm": 2}}, recorder) as client:
        for remaining in ("1", "0"):
            ok = await client.post("/v1/chat/completions", json=CHAT, headers=ALICE)
            assert ok.status_code == 200
            assert ok.headers["x-ratelimit-limit-requests"] == "2"
            assert ok.headers["x-ratelimit-remaining-requests"] == remaining
            assert ok.headers["x-ratelimit-reset-requests"].endswith("s")
        refused = await client.post("/v1/chat/completions", json=CHAT, headers=ALICE)
        other = await client.post("/v1/chat/completions", json=CHAT, headers=BOB)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(refused.headers["retry-after"]) <= 30
    assert refused.headers["x-ratelimit-limit-requests"] == "2"
    assert "x-should-retry" not in refused.headers
    assert len(recorder.sent) == 3  # alice twice, bob once: the refusal never left
    assert other.status_code == 200  # each principal has its own buckets


async def test_anthropic_callers_get_a_rate_limit_error() -> None:
    async with proxy_client({"default": {"rpm": 1}}) as client:
        headers = {**ALICE, "anthropic-version": "2023-06-01"}
        assert (await client.post("/v1/messages", json=MESSAGES, headers=headers)).is_success
        refused = await client.post("/v1/messages", json=MESSAGES, headers=headers)
    assert refused.status_code == 429
    assert refused.json() == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": "Rate limit reached for this principal."},
    }


async def test_a_spent_budget_is_refused_and_told_not_to_retry() -> None:
    recorder = RecordingTransport()
    limits = {"default": {"rpm": 100}, "principals": {"api_key:bob": {"budget_usd": 0}}}
    async with proxy_client(limits, recorder) as client:
        refused = await client.post("/v1/chat/completions", json=CHAT, headers=BOB)
        alice = await client.post("/v1/chat/completions", json=CHAT, headers=ALICE)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "budget_exceeded"
    assert refused.headers["x-should-retry"] == "false"
    assert "x-ratelimit-limit-requests" not in refused.headers  # bob's entry replaces default
    assert alice.status_code == 200
    assert len(recorder.sent) == 1


async def test_tokens_are_settled_with_the_real_usage() -> None:
    async with proxy_client({"default": {"tpm": 10_000}}) as client:
        first = await client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 4000})
        assert first.status_code == 401  # no key: auth refuses before limits
        first = await client.post(
            "/v1/chat/completions", json={**CHAT, "max_tokens": 4000}, headers=ALICE
        )
        reserved = 10_000 - int(first.headers["x-ratelimit-remaining-tokens"])
        assert reserved > 4000  # the output maximum plus the body's bytes / 4
        used = first.json()["usage"]["total_tokens"]
        # In process nothing suspends between two requests: let the settle callback run, as
        # any server's socket I/O between them does.
        await anyio.lowlevel.checkpoint()
        second = await client.post(
            "/v1/chat/completions", json={**CHAT, "max_tokens": 4000}, headers=ALICE
        )
    # The first gave back all it did not use before the second reserved.
    remaining = int(second.headers["x-ratelimit-remaining-tokens"])
    assert remaining == pytest.approx(10_000 - used - reserved, abs=2)


async def test_principals_without_limits_get_no_headers() -> None:
    async with proxy_client({"principals": {"api_key:bob": {"rpm": 5}}}) as client:
        alice = await client.post("/v1/chat/completions", json=CHAT, headers=ALICE)
        bob = await client.post("/v1/chat/completions", json=CHAT, headers=BOB)
    assert "x-ratelimit-limit-requests" not in alice.headers
    assert bob.headers["x-ratelimit-limit-requests"] == "5"


async def test_refusals_are_counted_by_outcome() -> None:
    registry = CollectorRegistry()
    limits = {"default": {"rpm": 1}, "principals": {"api_key:bob": {"budget_usd": 0}}}
    proxy = build_proxy(config(limits), registry=registry)
    async with (
        proxy.lifespan(),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=proxy), base_url="http://p") as c,
    ):
        for headers in (ALICE, ALICE, BOB):
            await c.post("/v1/chat/completions", json=CHAT, headers=headers)
    for outcome in ("rate_limited", "budget_exceeded"):
        value = registry.get_sample_value("llm_proxy_limited_requests_total", {"outcome": outcome})
        assert value == 1.0


class _HeldTransport(RecordingTransport):
    """Answers its first request only once ``release`` is set (held in flight), the others
    at once."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived, self.release = anyio.Event(), anyio.Event()

    async def send(self, request: Any) -> Any:
        if not self.arrived.is_set():
            self.arrived.set()
            await self.release.wait()
        return await super().send(request)


async def test_a_budget_reserves_the_priced_estimate_while_a_request_is_in_flight() -> None:
    held = _HeldTransport()
    limits = {"default": {"budget_usd": 1, "budget_period": "day"}}
    pricing = {"echo-1": {"input": 0, "output": 10}}  # USD per million tokens
    proxy = build_proxy(config(limits, pricing=pricing), transports={"demo": held})
    dear = {**CHAT, "max_tokens": 200_000}  # may cost $2: more than the whole budget
    first: list[httpx.Response] = []
    async with (
        proxy.lifespan(),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=proxy), base_url="http://p") as c,
    ):
        async with anyio.create_task_group() as group:

            async def send_dear() -> None:
                first.append(await c.post("/v1/chat/completions", json=dear, headers=ALICE))

            group.start_soon(send_dear)
            await held.arrived.wait()
            during = await c.post("/v1/chat/completions", json=CHAT, headers=ALICE)
            held.release.set()
        await anyio.lowlevel.checkpoint()  # the first request's settlement
        after = await c.post("/v1/chat/completions", json=CHAT, headers=ALICE)
    assert during.status_code == 429
    assert during.json()["error"]["code"] == "budget_exceeded"
    assert first[0].status_code == 200
    # Settled at what it really cost (a few output tokens): the budget is open again.
    assert after.status_code == 200
    assert len(held.sent) == 2


# -- the middleware alone, over an app that plays the upstream -------------------------------


class _Upstream:
    """Answers 200 (or ``status``) after setting the usage and cost the request had."""

    def __init__(self, status: int = 200, tokens: int = 0, cost: str | None = None) -> None:
        self.status, self.tokens, self.cost, self.calls = status, tokens, cost, 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.calls += 1
        ctx = get_context(scope)
        ctx.usage.prompt_tokens = self.tokens
        ctx.usage.cost_usd = None if self.cost is None else Decimal(self.cost)
        await send({"type": "http.response.start", "status": self.status, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})


def _client(app: Any) -> httpx.AsyncClient:
    stack = RequestContextMiddleware(app)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=stack), base_url="http://p")


async def test_a_budget_reserves_the_estimated_cost_and_settles_the_real_one() -> None:
    estimates: list[tuple[str, int, int]] = []

    def estimate(model: str, prompt: int, output: int) -> Decimal:
        estimates.append((model, prompt, output))
        return Decimal("0.4")

    upstream = _Upstream(tokens=10, cost="0.1")
    policy = LimitsPolicy(default=Limit(budget_usd=Decimal(1)))
    limits = LimitsMiddleware(upstream, policy=policy, estimate_cost=estimate)
    statuses = []
    async with _client(limits) as client:
        for _ in range(12):
            response = await client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 7})
            statuses.append(response.status_code)
            await limits.settled()
    assert estimates[0][0] == "echo-1" and estimates[0][2] == 7
    assert statuses == [200] * 10 + [429] * 2  # ten requests of 0.1: the budget is spent
    assert upstream.calls == 10


async def test_a_failed_request_gives_back_its_reservation() -> None:
    upstream = _Upstream(status=502)
    policy = LimitsPolicy(default=Limit(rpm=1, tpm=5000, concurrency=1))
    limits = LimitsMiddleware(upstream, policy=policy)
    async with _client(limits) as client:
        for _ in range(3):
            assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 502
            await limits.settled()
    assert upstream.calls == 3


class _DownStore:
    async def reserve(self, *args: object) -> Grant | Refusal:
        raise StoreError("redis://limits: reserve failed")

    def settle(self, reservation: Reservation, **kwargs: object) -> Awaitable[None] | None:
        raise AssertionError("nothing was reserved")

    async def aclose(self) -> None:
        pass


@pytest.mark.parametrize(("on_error", "status"), [("allow", 200), ("deny", 503)])
async def test_the_store_down_allows_or_denies(
    on_error: Any, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    upstream = _Upstream()
    policy = LimitsPolicy(default=Limit(rpm=1), on_store_error=on_error)
    registry = CollectorRegistry()
    limits = LimitsMiddleware(upstream, policy=policy, backend=_DownStore(), registry=registry)
    async with _client(limits) as client:
        responses = [await client.post("/v1/chat/completions", json=CHAT) for _ in range(3)]
    assert [r.status_code for r in responses] == [status] * 3
    assert registry.get_sample_value("llm_proxy_limits_store_errors_total") == 3.0
    assert len([r for r in caplog.records if "limits reserve failed" in r.message]) == 1
    if status == 503:
        assert responses[0].json()["error"]["code"] == "limits_unavailable"


async def test_local_limits_are_the_default_backend() -> None:
    limits = LimitsMiddleware(_Upstream(), policy=LimitsPolicy())
    assert isinstance(limits.backend, LocalLimits)
    async with _client(limits) as client:  # no default, no entry: not limited
        assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200


# -- config ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limits", "auth", "message"),
    [
        ({"default": {"rpm": 0}}, True, "limits.default.rpm"),
        ({"default": {"tpm": -5}}, True, "limits.default.tpm"),
        ({"default": {"concurrency": 0}}, True, "limits.default.concurrency"),
        ({"default": {"budget_usd": -1}}, True, "limits.default.budget_usd"),
        ({"default": {"budget_period": "year"}}, True, "limits.default.budget_period"),
        ({"principals": {"api_key:carol": {"rpm": 1}}}, True, "'api_key:carol'"),
        ({"principals": {"session:github:1": {"rpm": 1}}}, True, "'session:github:1'"),
        ({"principals": {"jwt:corp:1": {"rpm": 1}}}, True, "'jwt:corp:1'"),
        ({"principals": {"alice": {"rpm": 1}}}, True, "'alice'"),
        ({"principals": {"anonymous": {"rpm": 1}}}, True, "'anonymous'"),
        ({"principals": {"api_key:alice": {"rpm": 1}}}, False, "without [auth]"),
        ({"on_store_error": "ignore"}, True, "limits.on_store_error"),
    ],
)
def test_bad_limits_are_config_errors_naming_them(
    limits: dict[str, Any], auth: bool, message: str
) -> None:
    data = config(limits)
    if not auth:
        del data["auth"]
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        parse_config(data)


def test_good_principal_ids_pass() -> None:
    limits = {"principals": {"api_key:alice": {"rpm": 1}, "api_key:bob": {}}}
    policy = parse_config(config(limits)).limits
    assert policy is not None and policy.policy().limit_for("api_key:bob") == Limit()
    assert parse_config({**config({"principals": {"anonymous": {"rpm": 1}}}), "auth": None}).limits
