"""Health: the sliding window, the circuit breaker and the retry budget, on a fake clock.

Then how Routing and Retry use it (an open provider is skipped, or the request fails fast
with 503 and ``retry-after``), and how ``/healthz`` shows it.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import respx
from retry_helpers import FakeClock, build_stack, ok, openai_body, provider_config, status

from llm_proxy_mw.builder import build_proxy
from llm_proxy_mw.context import Attempt
from llm_proxy_mw.errors import ProviderUnavailableError
from llm_proxy_mw.health import CircuitState, HealthPolicy, HealthRegistry, ProviderHealth
from llm_proxy_mw.providers import Provider
from llm_proxy_mw.retry import RetryPolicy
from llm_proxy_mw.routing import NextAttempt, Plan, Router
from llm_proxy_mw.transports import HttpxTransport
from llm_proxy_mw.wire import WireFormat

POLICY = HealthPolicy()
JSON = {"content-type": "application/json"}


def fresh(policy: HealthPolicy = POLICY) -> tuple[ProviderHealth, FakeClock]:
    clock = FakeClock()
    return ProviderHealth(policy, clock), clock


def trip(health: ProviderHealth) -> None:
    for _ in range(health.policy.min_calls):
        health.record("server_error")
    assert health.state is CircuitState.OPEN


# -- the window ------------------------------------------------------------------------------


def test_new_provider_is_healthy() -> None:
    health, _ = fresh()
    assert health.current_state() is CircuitState.CLOSED
    assert health.window() == (0, 0)
    assert health.success_ratio() == 1.0
    assert health.admit()
    assert health.can_retry()


def test_window_counts_successes_and_failures() -> None:
    health, clock = fresh()
    for outcome in ["success", "success", "server_error", "connect_error", "timeout"]:
        health.record(outcome)
        clock.advance(0.4)
    assert health.window() == (2, 3)
    assert health.success_ratio() == pytest.approx(0.4)


def test_old_outcomes_slide_out_of_the_window() -> None:
    health, clock = fresh()
    for _ in range(9):
        health.record("server_error")
    clock.advance(15)
    health.record("success")
    assert health.window() == (1, 9)
    clock.advance(15)
    # The failures are 30 s old: out of the 30 s window; the success is 15 s old.
    assert health.window() == (1, 0)
    clock.advance(15)
    assert health.window() == (0, 0)
    assert health.success_ratio() == 1.0


def test_slots_are_reused_when_the_clock_wraps_around() -> None:
    health, clock = fresh()
    health.record("server_error")
    clock.advance(POLICY.window_seconds * 3)
    health.record("success")
    assert health.window() == (1, 0)


# -- opening ---------------------------------------------------------------------------------


def test_opens_at_the_failure_rate_over_min_calls() -> None:
    health, _ = fresh()
    for _ in range(2):
        health.record("success")
    for _ in range(7):
        health.record("server_error")
    assert health.state is CircuitState.CLOSED  # 9 calls, 78% failed: under min_calls
    health.record("server_error")
    assert health.state is CircuitState.OPEN  # 10 calls, 80% failed
    assert not health.admit()


def test_stays_closed_under_the_failure_rate_and_opens_at_it() -> None:
    health, _ = fresh()
    for _ in range(3):
        health.record("success")
    for _ in range(8):
        health.record("server_error")
    assert health.window() == (3, 8)
    assert health.state is CircuitState.CLOSED  # 73% failed: under 75%
    health.record("server_error")
    assert health.window() == (3, 9)
    assert health.state is CircuitState.OPEN  # exactly 75% failed


def test_stays_closed_under_min_calls() -> None:
    health, _ = fresh()
    for _ in range(POLICY.min_calls - 1):
        health.record("server_error")
    assert health.state is CircuitState.CLOSED
    assert health.admit()


def test_failures_spread_beyond_the_window_do_not_open() -> None:
    health, clock = fresh()
    for _ in range(30):
        health.record("server_error")
        clock.advance(4)
        health.record("success")
        clock.advance(4)
    # Half the calls fail, but never 10 of them fall within one 30 s window.
    assert health.state is CircuitState.CLOSED


@pytest.mark.parametrize(
    "outcome",
    ["server_error", "overloaded", "connect_error", "timeout", "protocol_error", "pool_timeout"],
)
def test_provider_failures_count(outcome: str) -> None:
    health, _ = fresh()
    for _ in range(POLICY.min_calls):
        health.record(outcome)
    assert health.state is CircuitState.OPEN


@pytest.mark.parametrize("outcome", ["rate_limited", "conflict"])
def test_rate_limits_and_conflicts_do_not_open_the_circuit_but_spend_budget(
    outcome: str,
) -> None:
    health, _ = fresh()
    for _ in range(100):
        health.record(outcome)
    assert health.current_state() is CircuitState.CLOSED
    assert health.window() == (0, 0)
    assert health.tokens == 0.0
    assert not health.can_retry()


def test_client_errors_count_for_nothing() -> None:
    health, _ = fresh()
    for _ in range(100):
        health.record("client_error")
    assert health.current_state() is CircuitState.CLOSED
    assert health.window() == (0, 0)
    assert health.tokens == POLICY.budget_max_tokens


# -- open, half-open, closed -----------------------------------------------------------------


def test_open_refuses_until_the_cool_down() -> None:
    health, clock = fresh()
    trip(health)
    assert health.retry_after() == POLICY.cooldown_seconds
    clock.advance(POLICY.cooldown_seconds - 0.5)
    assert not health.admit()
    assert health.current_state() is CircuitState.OPEN
    assert health.retry_after() == pytest.approx(0.5)
    clock.advance(0.5)
    assert health.current_state() is CircuitState.HALF_OPEN


def test_late_failures_while_open_do_not_extend_the_cool_down() -> None:
    health, clock = fresh()
    trip(health)
    clock.advance(4)
    health.record("server_error")  # a request sent before the circuit opened
    assert health.state is CircuitState.OPEN
    assert health.retry_after() == POLICY.cooldown_seconds - 4


def test_half_open_admits_a_few_probes_at_a_time() -> None:
    health, clock = fresh()
    trip(health)
    clock.advance(POLICY.cooldown_seconds)
    admitted = [health.admit() for _ in range(POLICY.half_open_probes + 2)]
    assert admitted == [True] * POLICY.half_open_probes + [False, False]
    assert health.current_state() is CircuitState.HALF_OPEN


def test_probe_successes_close_the_circuit() -> None:
    health, clock = fresh()
    trip(health)
    clock.advance(POLICY.cooldown_seconds)
    for _ in range(POLICY.half_open_probes):
        assert health.admit()
    for _ in range(POLICY.half_open_probes - 1):
        health.record("success")
        assert health.current_state() is CircuitState.HALF_OPEN
    health.record("success")
    assert health.current_state() is CircuitState.CLOSED
    # A fresh start: the outage's history and the drained budget are forgotten.
    assert health.window() == (0, 0)
    assert health.tokens == POLICY.budget_max_tokens
    assert health.admit()


def test_a_probe_failure_reopens_the_circuit() -> None:
    health, clock = fresh()
    trip(health)
    clock.advance(POLICY.cooldown_seconds)
    assert health.admit()
    health.record("success")
    assert health.admit()
    health.record("connect_error")
    assert health.current_state() is CircuitState.OPEN
    assert not health.admit()
    assert health.retry_after() == POLICY.cooldown_seconds
    clock.advance(POLICY.cooldown_seconds)
    assert health.current_state() is CircuitState.HALF_OPEN


def test_rate_limit_in_half_open_neither_closes_nor_reopens() -> None:
    health, clock = fresh()
    trip(health)
    clock.advance(POLICY.cooldown_seconds)
    assert health.admit()
    health.record("rate_limited")
    assert health.current_state() is CircuitState.HALF_OPEN


def test_probes_that_never_answered_are_forgotten_after_a_cool_down() -> None:
    health, clock = fresh()
    trip(health)
    clock.advance(POLICY.cooldown_seconds)
    for _ in range(POLICY.half_open_probes):
        assert health.admit()
    # Their clients left: no outcome will ever be recorded.
    assert not health.admit()
    clock.advance(POLICY.cooldown_seconds - 1)
    assert not health.admit()
    clock.advance(1)
    assert health.admit()
    assert health.current_state() is CircuitState.HALF_OPEN


def test_answered_probes_are_kept_when_stale_ones_are_forgotten() -> None:
    health, clock = fresh()
    trip(health)
    clock.advance(POLICY.cooldown_seconds)
    for _ in range(POLICY.half_open_probes):
        assert health.admit()
    health.record("success")
    health.record("success")
    clock.advance(POLICY.cooldown_seconds)
    # One probe slot came free (the stale one); its success closes the circuit.
    assert health.admit()
    assert not health.admit()
    health.record("success")
    assert health.current_state() is CircuitState.CLOSED


def test_custom_policy() -> None:
    policy = HealthPolicy(min_calls=4, failure_rate=0.75, cooldown_seconds=2, half_open_probes=1)
    health, clock = fresh(policy)
    health.record("success")
    health.record("server_error")
    health.record("server_error")
    health.record("server_error")
    assert health.state is CircuitState.OPEN
    clock.advance(2)
    assert health.admit()
    assert not health.admit()
    health.record("success")
    assert health.current_state() is CircuitState.CLOSED


# -- the retry budget ------------------------------------------------------------------------


def test_budget_is_a_token_bucket() -> None:
    health, _ = fresh(HealthPolicy(min_calls=1000))
    assert health.tokens == 50
    for expected in range(49, 25, -1):
        health.record("server_error")
        assert health.tokens == expected
        assert health.can_retry()
    health.record("server_error")
    assert health.tokens == 25
    assert not health.can_retry()  # retries need more than half the bucket
    health.record("success")
    assert health.tokens == 25.5
    assert health.can_retry()
    for _ in range(48):
        health.record("success")
    assert health.tokens == 49.5
    health.record("success")
    assert health.tokens == 50
    health.record("success")
    assert health.tokens == 50  # capped


def test_budget_never_goes_below_zero() -> None:
    health, _ = fresh(HealthPolicy(min_calls=1000))
    for _ in range(50):
        health.record("timeout")
    assert health.tokens == 0.0


def test_default_ratio_keeps_retries_at_25_percent_failures() -> None:
    health, _ = fresh(HealthPolicy(min_calls=1000))
    for _ in range(100):
        for outcome in ["success", "success", "success", "server_error"]:
            health.record(outcome)
    assert health.can_retry()


# -- the registry and its snapshot -----------------------------------------------------------


def test_snapshot() -> None:
    clock = FakeClock()
    registry = HealthRegistry(["a", "b"], clock=clock)
    registry["a"].record("success")
    registry["a"].record("server_error")
    registry["a"].record("rate_limited")
    assert registry.snapshot() == {
        "a": {"circuit": "closed", "success_ratio": 0.5, "window_calls": 2, "retry_budget": 48.0},
        "b": {"circuit": "closed", "success_ratio": 1.0, "window_calls": 0, "retry_budget": 50.0},
    }
    trip(registry["b"])
    assert registry.snapshot()["b"]["circuit"] == "open"
    clock.advance(POLICY.cooldown_seconds)
    assert registry.snapshot()["b"]["circuit"] == "half_open"


def test_registry_retry_after_is_the_earliest_whole_second() -> None:
    clock = FakeClock()
    registry = HealthRegistry(["a", "b"], clock=clock)
    trip(registry["a"])
    clock.advance(2.5)
    trip(registry["b"])
    assert registry.retry_after(["a", "b"]) == 8  # a: 7.5 s left, rounded up
    assert registry.retry_after(["b"]) == 10
    assert registry.retry_after(["unknown"]) == 1
    clock.advance(20)
    assert registry.retry_after(["a"]) == 1  # never 0


# -- routing around open circuits ------------------------------------------------------------


def router_with_health(
    configs: dict[str, dict[str, object]], random: float = 0.0
) -> tuple[Router, HealthRegistry, FakeClock]:
    transport = HttpxTransport(httpx.MockTransport(lambda request: httpx.Response(200)))
    providers = [
        Provider.from_config(name, provider_config(**config), transport)  # type: ignore[arg-type]
        for name, config in configs.items()
    ]
    clock = FakeClock()
    health = HealthRegistry(configs, clock=clock)
    return Router(providers, health=health, random=lambda: random), health, clock


def first_attempt(router: Router) -> str:
    return router.plan(WireFormat.OPENAI, "m").next().name


def after_failing(plan: Plan, *names: str) -> NextAttempt | None:
    """Fail an attempt on each of ``names`` in turn (the plan's choice, checked); where would
    the retry of the last go?"""
    where = None
    for name in names:
        assert plan.next().name == name
        plan.record(Attempt(name, "server_error", 503, 0.0))
        where = plan.after_failure()
    return where


def test_router_skips_an_open_provider() -> None:
    router, health, _ = router_with_health({"a": {"weight": 9}, "b": {"weight": 1}})
    assert first_attempt(router) == "a"
    trip(health["a"])
    assert first_attempt(router) == "b"


def test_router_goes_to_fallbacks_when_every_candidate_is_open() -> None:
    router, health, _ = router_with_health(
        {"a": {"models": ["m"], "fallbacks": ["b"]}, "b": {"models": ["other"]}}
    )
    trip(health["a"])
    assert first_attempt(router) == "b"


def test_router_fails_fast_with_retry_after_when_none_is_admitted() -> None:
    router, health, clock = router_with_health({"a": {}})
    trip(health["a"])
    clock.advance(3.5)
    with pytest.raises(ProviderUnavailableError) as caught:
        first_attempt(router)
    assert caught.value.status_code == 503
    assert caught.value.headers == {"retry-after": "7"}


def test_a_retry_goes_elsewhere_only_to_a_deployment_not_open() -> None:
    router, health, clock = router_with_health({"a": {}, "b": {}})
    assert after_failing(router.plan(WireFormat.OPENAI, "m"), "a") == "elsewhere"
    trip(health["b"])
    assert after_failing(router.plan(WireFormat.OPENAI, "m"), "a") == "same"
    clock.advance(POLICY.cooldown_seconds)
    assert after_failing(router.plan(WireFormat.OPENAI, "m"), "a") == "elsewhere"


def test_a_retry_goes_to_the_candidates_fallbacks() -> None:
    configs: dict[str, dict[str, object]] = {
        "a": {"models": ["m"], "fallbacks": ["b", "c"]},
        "b": {"models": ["x"]},
        "c": {"models": ["y"]},
    }
    router, _, _ = router_with_health(configs)
    plan = router.plan(WireFormat.OPENAI, "m")
    assert after_failing(plan, "a", "b") == "elsewhere"
    assert after_failing(plan, "c") == "same"  # a and b are out for the rest of the request
    router, health, _ = router_with_health(configs)
    trip(health["c"])
    assert after_failing(router.plan(WireFormat.OPENAI, "m"), "a", "b") == "same"


def test_a_drained_budget_leaves_the_retry_nowhere() -> None:
    router, health, _ = router_with_health({"a": {}})
    health["a"].tokens = health["a"].policy.budget_max_tokens / 2
    assert after_failing(router.plan(WireFormat.OPENAI, "m"), "a") is None


@pytest.mark.anyio
@pytest.mark.parametrize("failure", [status(503), httpx.ConnectError], ids=["503", "connect-error"])
async def test_routing_without_retry_records_health_and_opens_the_circuit(failure: object) -> None:
    # Health is recorded where the attempt is made: no Retry is needed for a circuit to open.
    stack = build_stack({"a": provider_config()}, with_retry=False)
    stack.script("a", *[failure] * POLICY.min_calls)
    for _ in range(POLICY.min_calls):
        assert (await stack.post()).status_code in (502, 503)
    assert stack.health["a"].window() == (0, POLICY.min_calls)
    assert stack.health["a"].current_state() is CircuitState.OPEN
    response = await stack.post()
    assert response.json()["error"]["code"] == "provider_unavailable"
    assert response.headers["retry-after"] == "10"
    assert stack.calls("a") == POLICY.min_calls


@pytest.mark.anyio
async def test_each_attempt_is_recorded_once_through_the_whole_stack() -> None:
    stack = build_stack({"a": provider_config()})
    stack.script("a", status(503), httpx.ConnectError, ok())
    assert (await stack.post()).status_code == 200
    assert stack.health["a"].window() == (1, 2)


@pytest.mark.anyio
async def test_open_provider_is_skipped_for_another_deployment() -> None:
    stack = build_stack(
        {"a": provider_config(models=["gpt-x"]), "b": provider_config(models=["gpt-x"])}
    )
    trip(stack.health["a"])
    stack.script("a")
    stack.script("b", ok({"id": "from-b"}))
    response = await stack.post()
    assert response.json() == {"id": "from-b"}
    assert stack.calls("a") == 0


@pytest.mark.anyio
async def test_open_provider_fails_fast_with_503_and_retry_after() -> None:
    stack = build_stack({"a": provider_config()})
    stack.routes["a"].side_effect = lambda request: status(503)
    per_request = []
    while stack.health["a"].current_state() is CircuitState.CLOSED:
        before = stack.calls("a")
        last = await stack.post()
        assert last.status_code == 503
        per_request.append(stack.calls("a") - before)
    # Four attempts each (the budget, 50 tokens, stays above half) until the 10th failure,
    # the third request's second attempt, opens the circuit: that request is not retried
    # (a retry would only fail fast) and the client gets the provider's own 503.
    assert per_request == [4, 4, 2]
    assert stack.sleep.waits == [0.5, 1.0, 2.0, 0.5, 1.0, 2.0, 0.5]
    assert last.json()["error"]["code"] != "provider_unavailable"
    assert "retry-after" not in last.headers
    stack.clock.advance(4)
    response = await stack.post()
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "provider_unavailable"
    assert response.headers["retry-after"] == "6"  # opened 4 s ago
    assert stack.calls("a") == 10
    assert stack.attempts == []


@pytest.mark.anyio
async def test_fail_fast_in_anthropic_format() -> None:
    stack = build_stack({"claude": provider_config("anthropic")})
    trip(stack.health["claude"])
    response = await stack.post(path="/v1/messages")
    assert response.status_code == 503
    assert response.json()["error"]["type"] == "overloaded_error"
    assert response.headers["retry-after"] == "10"


@pytest.mark.anyio
async def test_traffic_resumes_after_the_cool_down() -> None:
    stack = build_stack({"a": provider_config()})
    trip(stack.health["a"])
    stack.script("a", ok(), ok(), ok(), ok())
    assert (await stack.post()).status_code == 503
    stack.clock.advance(POLICY.cooldown_seconds)
    for _ in range(POLICY.half_open_probes):
        assert (await stack.post()).status_code == 200
    assert stack.health["a"].current_state() is CircuitState.CLOSED
    assert (await stack.post()).status_code == 200
    assert stack.calls("a") == 4


@pytest.mark.anyio
async def test_probe_failure_reopens_through_the_stack() -> None:
    stack = build_stack({"a": provider_config()}, policy=RetryPolicy(max_attempts=3))
    trip(stack.health["a"])
    stack.clock.advance(POLICY.cooldown_seconds)
    stack.script("a", status(503), ok())
    response = await stack.post()
    # The probe failed: the circuit reopened, and the budget (drained) allows no retry.
    assert response.status_code == 503
    assert stack.calls("a") == 1
    assert stack.health["a"].current_state() is CircuitState.OPEN


@pytest.mark.anyio
async def test_429s_do_not_open_the_circuit_through_the_stack() -> None:
    stack = build_stack({"a": provider_config()}, policy=RetryPolicy(max_attempts=1))
    stack.script("a", *[status(429, retry_after="1")] * 20)
    for _ in range(20):
        assert (await stack.post()).status_code == 429
    assert stack.health["a"].current_state() is CircuitState.CLOSED
    assert stack.health["a"].window() == (0, 0)


@pytest.mark.anyio
async def test_4xx_do_not_open_the_circuit_through_the_stack() -> None:
    stack = build_stack({"a": provider_config()})
    stack.script("a", *[status(400)] * 20)
    for _ in range(20):
        assert (await stack.post()).status_code == 400
    assert stack.health["a"].current_state() is CircuitState.CLOSED
    assert stack.health["a"].snapshot()["window_calls"] == 0


# -- /healthz --------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_healthz_shows_each_providers_health() -> None:
    mocks = {name: respx.MockRouter(using=None) for name in ["down", "up"]}
    down = mocks["down"].route()
    down.side_effect = lambda request: status(503)
    mocks["up"].route().side_effect = lambda request: ok()
    proxy = build_proxy(
        {
            "providers": {
                "down": {"kind": "openai", "models": ["gpt-down"], "retry": {"max_attempts": 1}},
                "up": {"kind": "openai", "models": ["gpt-up"]},
            }
        },
        transports={
            name: HttpxTransport(httpx.MockTransport(mock.async_handler))
            for name, mock in mocks.items()
        },
    )
    async with proxy.lifespan():
        transport = httpx.ASGITransport(app=proxy)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://proxy", headers=JSON
        ) as client:
            for _ in range(POLICY.min_calls):
                response = await client.post(
                    "/v1/chat/completions", content=openai_body("gpt-down")
                )
                assert response.status_code == 503
            for _ in range(3):
                response = await client.post("/v1/chat/completions", content=openai_body("gpt-up"))
                assert response.status_code == 200
            response = await client.post("/v1/chat/completions", content=openai_body("gpt-down"))
            assert response.json()["error"]["code"] == "provider_unavailable"
            assert response.headers["retry-after"] == "10"
            report = (await client.get("/healthz")).json()
    assert down.call_count == POLICY.min_calls
    assert report["status"] == "ok"
    assert report["providers"]["down"] == {
        "kind": "openai",
        "models": ["gpt-down"],
        "circuit": "open",
        "success_ratio": 0.0,
        "window_calls": 10,
        "retry_budget": 40.0,
    }
    assert report["providers"]["up"] == {
        "kind": "openai",
        "models": ["gpt-up"],
        "circuit": "closed",
        "success_ratio": 1.0,
        "window_calls": 3,
        "retry_budget": 50.0,
    }


# -- per-provider policies from the config ---------------------------------------------------

PER_PROVIDER_HEALTH = """
[providers.strict]
kind = "openai"
models = ["gpt-strict"]
retry = { max_attempts = 1 }

[providers.strict.health]
budget_max_tokens = 4
budget_token_ratio = 0.25
window_seconds = 60
min_calls = 2
failure_rate = 1.0
cooldown_seconds = 30
half_open_probes = 1

[providers.lenient]
kind = "openai"
models = ["gpt-lenient"]
retry = { max_attempts = 1 }

[providers.lenient.health]
min_calls = 50
failure_rate = 0.9

[providers.plain]
kind = "openai"
models = ["gpt-plain"]

[store]
url = "sqlite:///:memory:"
"""


@pytest.mark.anyio
async def test_health_sections_from_the_config_reach_each_provider(tmp_path: Path) -> None:
    path = tmp_path / "proxy.toml"
    path.write_text(PER_PROVIDER_HEALTH, encoding="utf-8")
    mocks = {name: respx.MockRouter(using=None) for name in ["strict", "lenient", "plain"]}
    routes = {name: mock.route() for name, mock in mocks.items()}
    for route in routes.values():
        route.side_effect = lambda request: status(503)
    proxy = build_proxy(
        path,
        transports={
            name: HttpxTransport(httpx.MockTransport(mock.async_handler))
            for name, mock in mocks.items()
        },
    )
    assert proxy.health["strict"].policy == HealthPolicy(
        budget_max_tokens=4,
        budget_token_ratio=0.25,
        window_seconds=60,
        min_calls=2,
        failure_rate=1.0,
        cooldown_seconds=30,
        half_open_probes=1,
    )
    assert proxy.health["lenient"].policy == HealthPolicy(min_calls=50, failure_rate=0.9)
    assert proxy.health["plain"].policy == HealthPolicy()
    # The policies act: two failures open strict (min_calls 2), not lenient (min_calls 50).
    async with proxy.lifespan():
        transport = httpx.ASGITransport(app=proxy)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://proxy", headers=JSON
        ) as client:
            for model in ["gpt-strict", "gpt-lenient"] * 2:
                response = await client.post("/v1/chat/completions", content=openai_body(model))
                assert response.status_code == 503
            refused = await client.post("/v1/chat/completions", content=openai_body("gpt-strict"))
            report = (await client.get("/healthz")).json()["providers"]
    assert refused.json()["error"]["code"] == "provider_unavailable"
    assert refused.headers["retry-after"] == "30"
    assert {name: route.call_count for name, route in routes.items()} == {
        "strict": 2,
        "lenient": 2,
        "plain": 0,
    }
    assert (report["strict"]["circuit"], report["strict"]["retry_budget"]) == ("open", 2.0)
    assert (report["lenient"]["circuit"], report["lenient"]["retry_budget"]) == ("closed", 48.0)
    assert (report["plain"]["circuit"], report["plain"]["retry_budget"]) == ("closed", 50.0)
