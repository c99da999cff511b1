"""``RetryMiddleware``: what is retried, how long it waits, where the retry goes, and when not.

The stack is composed by hand (``retry_helpers.build_stack``) with a fake clock and sleep, so
waits are asserted exactly and nothing really sleeps; respx side-effect lists script each
upstream attempt. Two tests use real time on purpose and say so: the hung attempt against a
0.2 s deadline, and the client disconnect that must cancel a real 5 s backoff sleep.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import time
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import anyio
import backoff
import httpx
import pytest
import respx
from retry_helpers import (
    ANTHROPIC_PATH,
    BODY,
    WALL_NOW,
    BrokenStream,
    ChunkedStream,
    FakeClock,
    FakeSleep,
    anthropic_body,
    build_stack,
    no_jitter,
    ok,
    openai_body,
    provider_config,
    status,
)
from starlette.types import Message

from llm_proxy_mw.config import HealthConfig, RetryConfig
from llm_proxy_mw.context import Attempt, RequestContextMiddleware, get_context
from llm_proxy_mw.errors import outcome_for_status
from llm_proxy_mw.health import CircuitState, HealthPolicy, HealthRegistry
from llm_proxy_mw.providers import Provider
from llm_proxy_mw.retry import RETRYABLE_STATUSES, RetryMiddleware, RetryPolicy
from llm_proxy_mw.transports import HttpxTransport
from llm_proxy_mw.upstream import UpstreamApp
from tests.asgi_helpers import http_scope

pytestmark = pytest.mark.anyio

ONE = {"a": provider_config()}


def rfc3339(offset: float) -> str:
    return datetime.fromtimestamp(WALL_NOW + offset, tz=UTC).isoformat().replace("+00:00", "Z")


# -- the policy ------------------------------------------------------------------------------


def test_policy_from_config() -> None:
    config = RetryConfig(max_attempts=5, backoff_base=0.1, retry_read_timeouts=False)
    policy = config.policy()
    assert policy == RetryPolicy(
        max_attempts=5,
        backoff_base=0.1,
        backoff_max=20.0,
        max_retry_after=60.0,
        retry_read_timeouts=False,
    )


def test_the_configs_defaults_are_the_policies() -> None:
    # Written once, in the dataclasses; the pydantic sections take theirs from them.
    assert RetryConfig().policy() == RetryPolicy()
    assert HealthConfig().policy() == HealthPolicy()
    assert set(RetryConfig.model_fields) == {f.name for f in dataclasses.fields(RetryPolicy)}
    assert set(HealthConfig.model_fields) == {f.name for f in dataclasses.fields(HealthPolicy)}


def test_retryable_statuses_are_the_sdk_set() -> None:
    assert frozenset({408, 409, 429, 500, 502, 503, 504, 529}) == RETRYABLE_STATUSES


# -- which statuses are retried --------------------------------------------------------------


@pytest.mark.parametrize("code", sorted(RETRYABLE_STATUSES))
async def test_retryable_status_is_retried(code: int) -> None:
    stack = build_stack(ONE)
    stack.script("a", status(code), ok())
    response = await stack.post()
    assert response.status_code == 200
    assert stack.calls("a") == 2
    assert response.headers["x-llm-proxy-attempts"] == "2"
    assert stack.sleep.waits == [0.5]


@pytest.mark.parametrize("code", [400, 401, 403, 404, 413, 422])
async def test_client_errors_are_never_retried_nor_counted(code: int) -> None:
    stack = build_stack(ONE)
    stack.script("a", status(code, {"error": {"message": "your fault"}}), ok())
    response = await stack.post()
    assert response.status_code == code
    assert response.json() == {"error": {"message": "your fault"}}
    assert response.headers["x-llm-proxy-attempts"] == "1"
    assert stack.calls("a") == 1
    assert stack.sleep.waits == []
    health = stack.health["a"]
    assert health.window() == (0, 0)
    assert health.tokens == health.policy.budget_max_tokens


async def test_success_is_passed_through_and_recorded() -> None:
    stack = build_stack(ONE)
    stack.script("a", ok({"id": "chatcmpl-1"}))
    response = await stack.post()
    assert response.json() == {"id": "chatcmpl-1"}
    assert response.headers["x-llm-proxy-provider"] == "a"
    assert response.headers["x-llm-proxy-attempts"] == "1"
    assert stack.health["a"].window() == (1, 0)


# -- waits the provider asked for, on every attempt ------------------------------------------


async def test_retry_after_is_read_from_every_attempt() -> None:
    stack = build_stack(ONE, policy=RetryPolicy(max_attempts=4))
    stack.script(
        "a",
        status(429, retry_after="1"),
        status(429, retry_after="3"),
        status(503, retry_after_ms="250"),
        ok(),
    )
    response = await stack.post()
    assert response.status_code == 200
    assert stack.sleep.waits == [1.0, 3.0, 0.25]
    assert [a.wait for a in stack.attempts] == [0.0, 1.0, 3.0, 0.25]
    assert response.headers["x-llm-proxy-attempts"] == "4"


async def test_retry_after_http_date() -> None:
    stack = build_stack(ONE)
    date = format_datetime(datetime.fromtimestamp(WALL_NOW + 7, tz=UTC), usegmt=True)
    past = format_datetime(datetime.fromtimestamp(WALL_NOW - 7, tz=UTC), usegmt=True)
    stack.script("a", status(429, retry_after=date), status(429, retry_after=past), ok())
    response = await stack.post()
    assert response.status_code == 200
    # A date in the past asks for no wait at all: the retry goes at once.
    assert stack.sleep.waits == [pytest.approx(7.0)]
    assert stack.calls("a") == 3


async def test_openai_reset_headers_pick_the_exhausted_limit_each_time() -> None:
    stack = build_stack(ONE)
    stack.script(
        "a",
        status(
            429,
            x_ratelimit_remaining_requests="0",
            x_ratelimit_reset_requests="2s",
            x_ratelimit_remaining_tokens="900",
            x_ratelimit_reset_tokens="1m0s",
        ),
        status(
            429,
            x_ratelimit_remaining_requests="7",
            x_ratelimit_reset_requests="1s",
            x_ratelimit_remaining_tokens="0",
            x_ratelimit_reset_tokens="6s",
        ),
        ok(),
    )
    response = await stack.post()
    assert response.status_code == 200
    assert stack.sleep.waits == [2.0, 6.0]


async def test_anthropic_reset_headers_each_time() -> None:
    stack = build_stack({"claude": provider_config("anthropic")})
    stack.script(
        "claude",
        status(
            429,
            anthropic_ratelimit_requests_remaining="0",
            anthropic_ratelimit_requests_reset=rfc3339(4),
            anthropic_ratelimit_tokens_remaining="1000",
            anthropic_ratelimit_tokens_reset=rfc3339(30),
        ),
        status(
            429,
            anthropic_ratelimit_requests_remaining="5",
            anthropic_ratelimit_requests_reset=rfc3339(1),
            anthropic_ratelimit_input_tokens_remaining="0",
            anthropic_ratelimit_input_tokens_reset=rfc3339(9),
        ),
        ok({"type": "message"}),
    )
    response = await stack.post(path=ANTHROPIC_PATH)
    assert response.status_code == 200
    assert stack.sleep.waits == [pytest.approx(4.0), pytest.approx(9.0)]


async def test_wait_above_max_retry_after_goes_back_to_the_client() -> None:
    stack = build_stack(ONE, policy=RetryPolicy(max_retry_after=10.0))
    body = {"error": {"message": "slow down", "type": "requests"}}
    stack.script("a", status(429, body, retry_after="30"), ok())
    response = await stack.post()
    assert response.status_code == 429
    assert response.headers["retry-after"] == "30"
    assert response.json() == body
    assert response.headers["x-llm-proxy-attempts"] == "1"
    assert stack.calls("a") == 1
    assert stack.sleep.waits == []


async def test_a_later_attempts_long_wait_is_not_slept() -> None:
    stack = build_stack(ONE, policy=RetryPolicy(max_retry_after=10.0))
    stack.script("a", status(429, retry_after="2"), status(429, retry_after="45"), ok())
    response = await stack.post()
    assert response.status_code == 429
    assert response.headers["retry-after"] == "45"
    assert stack.sleep.waits == [2.0]
    assert stack.calls("a") == 2


async def test_wait_past_the_deadline_goes_back_to_the_client() -> None:
    stack = build_stack(ONE, deadline=5.0)
    stack.script("a", status(429, {"error": {"message": "later"}}, retry_after="8"), ok())
    response = await stack.post()
    assert response.status_code == 429
    assert response.headers["retry-after"] == "8"
    assert response.json() == {"error": {"message": "later"}}
    assert stack.calls("a") == 1
    assert stack.sleep.waits == []


# -- backoff without a header ----------------------------------------------------------------


async def test_full_jitter_exponential_backoff_is_capped() -> None:
    steps: list[float] = []

    def jitter(value: float) -> float:
        steps.append(value)
        return value

    stack = build_stack(
        ONE,
        policy=RetryPolicy(max_attempts=7, backoff_base=0.5, backoff_max=4.0),
        health_policy=HealthPolicy(budget_max_tokens=100.0, min_calls=1000),
        jitter=jitter,
    )
    stack.script("a", *[status(503)] * 6, ok())
    response = await stack.post()
    assert response.status_code == 200
    assert steps == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert stack.sleep.waits == steps


async def test_jitter_decides_the_wait() -> None:
    stack = build_stack(ONE, jitter=lambda value: value / 4)
    stack.script("a", status(500), status(502), ok())
    await stack.post()
    assert stack.sleep.waits == [0.125, 0.25]


async def test_full_jitter_stays_within_the_step() -> None:
    stack = build_stack(ONE, jitter=backoff.full_jitter)
    stack.script("a", status(503), status(503), ok())
    await stack.post()
    first, second = stack.sleep.waits
    assert 0.0 <= first <= 0.5
    assert 0.0 <= second <= 1.0


async def test_header_waits_and_backoff_mix() -> None:
    stack = build_stack(ONE, policy=RetryPolicy(max_attempts=4))
    stack.script("a", status(503), status(429, retry_after="3"), status(503), ok())
    await stack.post()
    # The backoff sequence advances only on the attempts that asked for nothing.
    assert stack.sleep.waits == [0.5, 3.0, 1.0]


# -- what the provider says wins -------------------------------------------------------------


async def test_should_retry_false_wins_over_a_503() -> None:
    stack = build_stack(ONE)
    stack.script("a", status(503, x_should_retry="false"), ok())
    response = await stack.post()
    assert response.status_code == 503
    assert response.headers["x-should-retry"] == "false"
    assert stack.calls("a") == 1
    assert stack.sleep.waits == []


async def test_should_retry_true_wins_over_a_400() -> None:
    stack = build_stack(ONE)
    stack.script("a", status(400, x_should_retry="true"), ok())
    response = await stack.post()
    assert response.status_code == 200
    assert stack.calls("a") == 2
    assert stack.sleep.waits == [0.5]


async def test_should_retry_with_another_value_is_ignored() -> None:
    stack = build_stack(ONE)
    stack.script("a", status(503, x_should_retry="maybe"), ok())
    response = await stack.post()
    assert response.status_code == 200
    assert stack.calls("a") == 2


async def test_anthropic_spend_limit_is_never_retried() -> None:
    stack = build_stack({"claude": provider_config("anthropic")})
    body = {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": "enforced_spend_limit_reached"},
    }
    stack.script("claude", status(429, body, retry_after="1"), ok())
    response = await stack.post(path=ANTHROPIC_PATH)
    assert response.status_code == 429
    assert response.json() == body
    assert stack.calls("claude") == 1
    assert stack.sleep.waits == []


async def test_anthropic_spend_limit_split_across_chunks_is_never_retried() -> None:
    stack = build_stack({"claude": provider_config("anthropic")})
    chunks = (
        b'{"type": "error", "error": {"type": "rate_limit_error", "message": "enforced_spend',
        b'_limit_reached"}}',
    )
    stack.script(
        "claude",
        httpx.Response(
            429,
            headers={"content-type": "application/json", "retry-after": "1"},
            stream=ChunkedStream(*chunks),
        ),
        ok(),
    )
    response = await stack.post(path=ANTHROPIC_PATH)
    assert response.status_code == 429
    assert response.content == b"".join(chunks)
    assert stack.calls("claude") == 1


async def test_anthropic_plain_rate_limit_is_retried() -> None:
    stack = build_stack({"claude": provider_config("anthropic")})
    body = {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}
    stack.script("claude", status(429, body, retry_after="1"), ok())
    response = await stack.post(path=ANTHROPIC_PATH)
    assert response.status_code == 200
    assert stack.sleep.waits == [1.0]


# -- transport errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "error", [httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout], ids=lambda e: e.__name__
)
@pytest.mark.parametrize("read_timeouts", [True, False])
async def test_connect_errors_retry_at_once(error: type[Exception], read_timeouts: bool) -> None:
    stack = build_stack(ONE, policy=RetryPolicy(retry_read_timeouts=read_timeouts))
    stack.script("a", error, ok())
    response = await stack.post()
    assert response.status_code == 200
    assert stack.calls("a") == 2
    assert stack.sleep.waits == []
    assert [a.wait for a in stack.attempts] == [0.0, 0.0]
    assert stack.health["a"].window() == (1, 1)


@pytest.mark.parametrize(
    "error",
    [httpx.ReadTimeout, httpx.RemoteProtocolError, httpx.ReadError],
    ids=lambda e: e.__name__,
)
async def test_read_failures_before_headers_retry_at_once_by_default(
    error: type[Exception],
) -> None:
    stack = build_stack(ONE)
    stack.script("a", error, ok())
    response = await stack.post()
    assert response.status_code == 200
    assert stack.calls("a") == 2
    assert stack.sleep.waits == []


@pytest.mark.parametrize(
    ("error", "code", "kind"),
    [
        (httpx.ReadTimeout, 504, "timeout"),
        (httpx.RemoteProtocolError, 502, "protocol_error"),
    ],
    ids=["read-timeout", "protocol-error"],
)
async def test_read_failures_are_not_retried_when_turned_off(
    error: type[Exception], code: int, kind: str
) -> None:
    stack = build_stack(ONE, policy=RetryPolicy(retry_read_timeouts=False))
    stack.script("a", error, ok())
    response = await stack.post()
    assert response.status_code == code
    assert response.json()["error"]["code"] == kind
    assert stack.calls("a") == 1


async def test_per_provider_policy() -> None:
    providers = {
        "strict": provider_config(models=["m-strict"]),
        "lenient": provider_config(models=["m-lenient"]),
    }
    stack = build_stack(
        providers,
        policy={
            "strict": RetryPolicy(retry_read_timeouts=False),
            "lenient": RetryPolicy(max_attempts=2),
        },
    )
    stack.script("strict", httpx.ReadTimeout, ok())
    stack.script("lenient", httpx.ReadTimeout, httpx.ReadTimeout, ok())
    assert (await stack.post(openai_body("m-strict"))).status_code == 504
    assert (await stack.post(openai_body("m-lenient"))).status_code == 504
    assert stack.calls("strict") == 1
    assert stack.calls("lenient") == 2


async def test_transport_errors_exhaust_max_attempts() -> None:
    stack = build_stack(ONE, policy=RetryPolicy(max_attempts=4))
    stack.script("a", *[httpx.ConnectError] * 5)
    response = await stack.post()
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "connect_error"
    assert stack.calls("a") == 4
    assert [a.outcome for a in stack.attempts] == ["connect_error"] * 4


async def test_connect_error_renders_in_anthropic_format() -> None:
    stack = build_stack({"claude": provider_config("anthropic")}, policy=RetryPolicy(1))
    stack.script("claude", httpx.ConnectError)
    response = await stack.post(path=ANTHROPIC_PATH)
    assert response.status_code == 502
    assert response.json()["type"] == "error"
    assert response.json()["error"]["type"] == "api_error"


# -- attempts, replay, the attempts header ---------------------------------------------------


@pytest.mark.parametrize("max_attempts", [1, 2, 3, 5])
async def test_max_attempts_is_respected(max_attempts: int) -> None:
    stack = build_stack(ONE, policy=RetryPolicy(max_attempts=max_attempts))
    stack.script("a", *[status(503, {"error": {"n": n}}) for n in range(6)])
    response = await stack.post()
    assert response.status_code == 503
    assert stack.calls("a") == max_attempts
    assert response.headers["x-llm-proxy-attempts"] == str(max_attempts)
    # The last attempt's own response reaches the client, with its body.
    assert response.json() == {"error": {"n": max_attempts - 1}}
    assert len(stack.sleep.waits) == max_attempts - 1


async def test_body_is_replayed_byte_identical() -> None:
    stack = build_stack(ONE)
    stack.script("a", status(503), httpx.ConnectError, ok())
    response = await stack.post(BODY)
    assert response.status_code == 200
    assert stack.bodies("a") == [BODY, BODY, BODY]


async def test_large_retryable_body_is_passed_through_not_retried() -> None:
    stack = build_stack(ONE)
    big = {"error": {"message": "x" * 100_000}}
    stack.script("a", status(503, big), ok())
    response = await stack.post()
    assert response.status_code == 503
    assert response.json() == big
    assert stack.calls("a") == 1


async def test_started_stream_is_never_retried() -> None:
    stack = build_stack(ONE)
    first = b'data: {"choices": [{"delta": {"content": "Hel"}}]}\n\n'
    stack.script(
        "a",
        httpx.Response(
            200, headers={"content-type": "text/event-stream"}, stream=BrokenStream(first)
        ),
        ok(),
    )
    response = await stack.post(openai_body(stream=True))
    assert response.status_code == 200
    assert stack.calls("a") == 1
    assert response.headers["x-llm-proxy-attempts"] == "1"
    assert response.content.startswith(first)
    last = response.content.strip().split(b"\n\n")[-1]
    assert last.startswith(b"data: ")
    assert json.loads(last[len(b"data: ") :])["error"]["code"] == "protocol_error"
    assert [a.outcome for a in stack.attempts] == ["protocol_error"]


async def test_started_anthropic_stream_ends_with_an_error_event() -> None:
    stack = build_stack({"claude": provider_config("anthropic")})
    first = b'event: message_start\ndata: {"type": "message_start"}\n\n'
    stack.script(
        "claude",
        httpx.Response(
            200, headers={"content-type": "text/event-stream"}, stream=BrokenStream(first)
        ),
        ok(),
    )
    response = await stack.post(path=ANTHROPIC_PATH)
    assert stack.calls("claude") == 1
    assert response.content.rstrip().split(b"\n\n")[-1].startswith(b"event: error\ndata: ")


async def test_started_plain_body_breaks_off_and_is_not_retried() -> None:
    stack = build_stack(ONE)
    stack.script(
        "a",
        httpx.Response(
            200, headers={"content-type": "application/json"}, stream=BrokenStream(b'{"id":')
        ),
        ok(),
    )
    body = openai_body()
    sent, send = recorder()
    await stack.app(http_scope(body=body), body_then_wait(body), send)
    assert stack.calls("a") == 1
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[0]["status"] == 200
    # The client sees a response that never completes, not a clean end.
    assert sent[1] == {"type": "http.response.body", "body": b'{"id":', "more_body": True}


# -- fallbacks and load balancing ------------------------------------------------------------


FALLBACKS = {
    "a": provider_config(models=["gpt-x"], fallbacks=["b", "c"]),
    "b": provider_config(models=["b-only"]),
    "c": provider_config(models=["c-only"]),
}


@pytest.mark.parametrize("failure", [status(503), httpx.ConnectError], ids=["503", "connect-error"])
async def test_failure_goes_to_the_first_fallback_at_once(failure: Any) -> None:
    stack = build_stack(FALLBACKS)
    stack.script("a", failure, ok())
    stack.script("b", ok({"id": "from-b"}))
    stack.script("c")
    response = await stack.post()
    assert response.json() == {"id": "from-b"}
    assert response.headers["x-llm-proxy-provider"] == "b"
    assert response.headers["x-llm-proxy-attempts"] == "2"
    assert stack.trail() == ["a", "b"]
    assert stack.sleep.waits == []


async def test_fallbacks_are_tried_in_order() -> None:
    stack = build_stack(FALLBACKS)
    stack.script("a", status(503), ok())
    stack.script("b", status(502), ok())
    stack.script("c", ok({"id": "from-c"}))
    response = await stack.post(BODY)
    assert response.json() == {"id": "from-c"}
    assert stack.trail() == ["a", "b", "c"]
    assert stack.sleep.waits == []
    assert stack.bodies("c") == [BODY]


async def test_fallback_skips_over_429_at_once() -> None:
    stack = build_stack(FALLBACKS)
    stack.script("a", status(429, retry_after="20"), ok())
    stack.script("b", ok())
    response = await stack.post()
    assert response.status_code == 200
    # Another deployment has its own limits: no need to wait for a's.
    assert stack.sleep.waits == []
    assert stack.trail() == ["a", "b"]


WEIGHTED = {
    "a": provider_config(models=["gpt-x"], weight=3),
    "b": provider_config(models=["gpt-x"], weight=1),
}


async def test_weights_spread_the_load() -> None:
    points = iter([0.1, 0.5, 0.74, 0.76, 0.9])
    stack = build_stack(WEIGHTED, random=lambda: next(points))
    stack.script("a", *[ok()] * 3)
    stack.script("b", *[ok()] * 2)
    served = [(await stack.post()).headers["x-llm-proxy-provider"] for _ in range(5)]
    assert served == ["a", "a", "a", "b", "b"]


async def test_failed_provider_is_excluded_for_the_rest_of_the_request() -> None:
    stack = build_stack(WEIGHTED, random=lambda: 0.0, policy=RetryPolicy(max_attempts=4))
    stack.script("a", status(503), ok())
    stack.script("b", status(503), status(503), ok({"id": "from-b"}))
    response = await stack.post()
    assert response.json() == {"id": "from-b"}
    assert stack.trail() == ["a", "b", "b", "b"]
    # The switch to b is at once; the retries on b (no other deployment left) back off.
    assert stack.sleep.waits == [0.5, 1.0]


async def test_connect_error_switches_deployment_at_once() -> None:
    stack = build_stack(WEIGHTED, random=lambda: 0.0)
    stack.script("a", httpx.ConnectError)
    stack.script("b", ok())
    response = await stack.post()
    assert response.status_code == 200
    assert stack.trail() == ["a", "b"]
    assert stack.sleep.waits == []


async def test_single_provider_is_retried_on_itself() -> None:
    stack = build_stack(ONE)
    stack.script("a", httpx.ConnectError, status(503), ok())
    response = await stack.post()
    assert response.status_code == 200
    assert stack.trail() == ["a", "a", "a"]


async def test_without_routing_retries_stay_on_upstreams_provider() -> None:
    mock = respx.MockRouter(using=None)
    mock.route().side_effect = [status(503), ok()]
    transport = HttpxTransport(httpx.MockTransport(mock.async_handler))
    upstream = UpstreamApp([Provider.from_config("solo", provider_config(), transport)])
    sleep = FakeSleep(FakeClock())
    app = RequestContextMiddleware(RetryMiddleware(upstream, sleep=sleep, jitter=no_jitter))
    sent, send = recorder()
    await app(http_scope(body=BODY), body_then_wait(BODY), send)
    assert sent[0]["status"] == 200
    assert mock.calls.call_count == 2
    assert sleep.waits == [0.5]


async def test_open_alternative_does_not_steal_the_retry() -> None:
    stack = build_stack(WEIGHTED, random=lambda: 0.0)
    for _ in range(10):
        stack.health["b"].record("server_error")
    assert stack.health["b"].current_state() is CircuitState.OPEN
    stack.script("a", status(503), ok({"id": "from-a"}))
    stack.script("b")
    response = await stack.post()
    # b cannot serve (open circuit), so the retry belongs on a, after a backoff.
    assert response.json() == {"id": "from-a"}
    assert stack.trail() == ["a", "a"]
    assert stack.calls("b") == 0


# -- the retry budget ------------------------------------------------------------------------


async def dead_provider_attempts(
    policy: RetryPolicy, health_policy: HealthPolicy, requests: int = 50
) -> tuple[list[int], HealthRegistry]:
    """Attempts per request against a provider that answers every call with 503."""
    stack = build_stack(ONE, policy=policy, health_policy=health_policy)
    stack.routes["a"].side_effect = lambda request: status(503)
    per_request = []
    for _ in range(requests):
        before = stack.calls("a")
        response = await stack.post()
        assert response.status_code == 503
        per_request.append(stack.calls("a") - before)
        stack.clock.advance(0.1)
    return per_request, stack.health


async def test_budget_drains_against_a_dead_provider() -> None:
    # A small bucket (10 tokens), 3 attempts, and no breaker: the budget alone.
    per_request, health = await dead_provider_attempts(
        RetryPolicy(max_attempts=3), HealthPolicy(budget_max_tokens=10, min_calls=10**6)
    )
    # 3 attempts, then 2: the bucket is down to half; from then on one attempt per request.
    assert per_request == [3, 2] + [1] * 48
    assert sum(per_request) / 50 <= 1.2
    assert not health["a"].can_retry()
    assert health["a"].tokens == 0.0


async def test_default_budget_drains_against_a_dead_provider() -> None:
    # The default bucket (50 tokens) and attempts (4), without the breaker.
    per_request, health = await dead_provider_attempts(RetryPolicy(), HealthPolicy(min_calls=10**6))
    # Six requests make 4 attempts (50 -> 26 tokens); the 25th failure leaves exactly half
    # the bucket, so from the seventh request on there is one attempt per request.
    assert per_request == [4] * 6 + [1] * 44
    assert sum(per_request) == 68
    assert not health["a"].can_retry()
    assert health["a"].tokens == 0.0


async def test_dead_provider_with_the_circuit_costs_little() -> None:
    stack = build_stack(ONE)
    stack.routes["a"].side_effect = lambda request: status(503)
    fast = 0
    for _ in range(50):
        before = stack.calls("a")
        response = await stack.post()
        assert response.status_code == 503
        if stack.calls("a") == before:
            fast += 1
            assert response.json()["error"]["code"] == "provider_unavailable"
            assert int(response.headers["retry-after"]) >= 1
        stack.clock.advance(1.0)
    assert stack.calls("a") / 50 <= 1.2
    assert fast >= 30


async def client_success_rate(policy: RetryPolicy, requests: int = 200) -> float:
    """Against a provider failing 25% of calls with 503 (a seeded pattern)."""
    rng = random.Random(20240601)

    def flaky(request: httpx.Request) -> httpx.Response:
        return status(503) if rng.random() < 0.25 else ok()

    stack = build_stack(ONE, policy=policy)
    stack.routes["a"].side_effect = flaky
    successes = 0
    for _ in range(requests):
        response = await stack.post()
        successes += response.status_code == 200
        stack.clock.advance(0.05)
    # The budget refills faster than transient failures drain it; the circuit stays shut.
    assert stack.health["a"].current_state() is CircuitState.CLOSED
    assert stack.health["a"].can_retry()
    return successes / requests


async def test_transient_failures_keep_their_retries() -> None:
    with_retries = await client_success_rate(RetryPolicy(max_attempts=3))
    without = await client_success_rate(RetryPolicy(max_attempts=1))
    assert with_retries >= 0.97
    assert without < 0.85


async def test_budget_refusal_returns_the_response() -> None:
    stack = build_stack(ONE, health_policy=HealthPolicy(budget_max_tokens=2, min_calls=100))
    stack.script("a", status(503), status(503), ok())
    response = await stack.post()
    # 2 tokens: the first failure leaves 1, not more than half: no retry.
    assert response.status_code == 503
    assert stack.calls("a") == 1


async def test_budget_refusal_after_a_transport_error() -> None:
    stack = build_stack(ONE, health_policy=HealthPolicy(budget_max_tokens=2, min_calls=100))
    stack.script("a", httpx.ConnectError, ok())
    response = await stack.post()
    assert response.status_code == 502
    assert stack.calls("a") == 1


# -- the deadline ----------------------------------------------------------------------------


async def test_one_deadline_covers_attempts_and_waits() -> None:
    stack = build_stack(ONE, deadline=10.0, policy=RetryPolicy(max_attempts=10))

    def slow_failure(request: httpx.Request) -> httpx.Response:
        stack.clock.advance(3.0)
        return status(503)

    stack.routes["a"].side_effect = slow_failure
    response = await stack.post()
    # t=3 wait 0.5, t=6.5 wait 1, t=10.5: the next wait would end past the deadline.
    assert response.status_code == 503
    assert stack.calls("a") == 3
    assert stack.sleep.waits == [0.5, 1.0]


async def test_backoff_past_the_deadline_is_not_slept() -> None:
    stack = build_stack(ONE, deadline=10.0, policy=RetryPolicy(backoff_base=4.0))
    stack.script("a", status(503), status(503), ok())
    response = await stack.post()
    assert response.status_code == 503
    assert stack.sleep.waits == [4.0]
    assert stack.calls("a") == 2


async def test_transport_errors_stop_at_the_deadline() -> None:
    stack = build_stack(ONE, deadline=10.0, policy=RetryPolicy(max_attempts=10))

    def slow_connect_error(request: httpx.Request) -> httpx.Response:
        stack.clock.advance(4.0)
        raise httpx.ConnectError("refused", request=request)

    stack.routes["a"].side_effect = slow_connect_error
    response = await stack.post()
    assert response.status_code == 502
    assert stack.calls("a") == 3


@pytest.mark.parametrize(
    ("path", "body"),
    [("/v1/chat/completions", openai_body()), (ANTHROPIC_PATH, anthropic_body())],
    ids=["openai", "anthropic"],
)
async def test_hung_attempt_ends_at_the_deadline_with_504(path: str, body: bytes) -> None:
    # Real time on purpose: a 0.2 s deadline against an attempt that never answers.
    never = asyncio.Event()
    calls = 0

    async def hang(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        await never.wait()
        raise AssertionError("unreachable")

    kind = "anthropic" if path == ANTHROPIC_PATH else "openai"
    stack = build_stack(
        {"a": provider_config(kind)},
        deadline=0.2,
        transports={"a": httpx.MockTransport(hang)},
        clock=time.monotonic,
    )
    started = time.monotonic()
    with anyio.fail_after(5):
        response = await stack.post(body, path=path)
    assert time.monotonic() - started < 2.0
    assert response.status_code == 504
    payload = response.json()
    if kind == "anthropic":
        assert payload["type"] == "error"
        assert payload["error"]["type"] == "timeout_error"
    else:
        assert payload["error"]["code"] == "timeout"
        assert payload["error"]["type"] == "timeout"
    assert calls == 1
    assert [a.outcome for a in stack.attempts] == ["timeout"]
    assert stack.health["a"].window() == (0, 1)


async def test_a_backoff_that_overruns_the_deadline_is_cut_at_the_deadline() -> None:
    # Real time: a loop too busy to wake the sleeper on time must not stretch the deadline.
    async def overrunning_sleep(seconds: float) -> None:
        await asyncio.sleep(seconds * 100)

    stack = build_stack(ONE, deadline=0.3, sleep=overrunning_sleep)
    stack.script("a", status(503, retry_after="0.01"), ok())
    started = time.monotonic()
    with anyio.fail_after(5):
        response = await stack.post()
    assert time.monotonic() - started < 2.0
    assert response.status_code == 504
    assert stack.calls("a") == 1


async def test_a_cancellation_from_elsewhere_is_not_taken_for_the_deadline() -> None:
    never = asyncio.Event()

    async def hang(request: httpx.Request) -> httpx.Response:
        await never.wait()
        raise AssertionError("unreachable")

    stack = build_stack(ONE, deadline=600.0, transports={"a": httpx.MockTransport(hang)})
    body = openai_body()
    sent, send = recorder()
    task = asyncio.create_task(stack.app(http_scope(body=body), body_then_wait(body), send))
    await asyncio.sleep(0.1)  # past the watcher's arming too
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sent == []


# -- the client leaves -----------------------------------------------------------------------


def recorder() -> tuple[list[Message], Any]:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    return sent, send


def body_then_wait(body: bytes) -> Any:
    """A ``receive`` that gives the body, then waits for a disconnect that never comes."""
    delivered = False

    async def receive() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    return receive


async def test_disconnect_during_backoff_cancels_the_sleep() -> None:
    # A real 5 s sleep on purpose: the disconnect must cancel it, not wait it out.
    sleeping = asyncio.Event()
    cancelled: list[float] = []

    async def real_sleep(seconds: float) -> None:
        sleeping.set()
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            cancelled.append(seconds)
            raise

    stack = build_stack(ONE, sleep=real_sleep)
    stack.script("a", status(503, retry_after="5"), ok())
    body = openai_body()
    delivered = False

    async def receive() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await sleeping.wait()
        return {"type": "http.disconnect"}

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    started = time.monotonic()
    with anyio.fail_after(3):
        await stack.app(http_scope(body=body), receive, send)
    assert time.monotonic() - started < 2.0
    assert cancelled == [5.0]
    assert stack.calls("a") == 1
    # The client left: nothing was sent, the held 503 included.
    assert sent == []


# -- the request body ------------------------------------------------------------------------


async def test_declared_oversized_body_is_refused_before_reading() -> None:
    stack = build_stack(ONE, max_body_bytes=1024)
    body = b"x" * 4096
    received = 0

    async def receive() -> Message:
        nonlocal received
        received += 1
        return {"type": "http.request", "body": body, "more_body": False}

    sent, send = recorder()
    await stack.app(http_scope(body=body), receive, send)
    assert received == 0
    assert sent[0]["status"] == 413
    assert json.loads(sent[1]["body"])["error"]["code"] == "request_too_large"
    assert stack.calls("a") == 0


async def test_undeclared_oversized_body_is_refused_once_past_the_limit() -> None:
    stack = build_stack(ONE, max_body_bytes=1024)
    chunks = iter([b"x" * 600, b"x" * 600, b"x" * 600])
    received = 0

    async def receive() -> Message:
        nonlocal received
        received += 1
        return {"type": "http.request", "body": next(chunks), "more_body": True}

    scope = http_scope(body=b"")
    scope["headers"] = [(n, v) for n, v in scope["headers"] if n != b"content-length"]
    sent, send = recorder()
    await stack.app(scope, receive, send)
    assert received == 2
    assert sent[0]["status"] == 413
    assert stack.calls("a") == 0


async def test_non_http_scopes_pass_through() -> None:
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    async def receive() -> Message:
        raise AssertionError

    async def send(message: Message) -> None:
        raise AssertionError

    await RetryMiddleware(app)({"type": "lifespan"}, receive, send)
    assert seen == ["lifespan"]


# -- Retry alone, over any app ---------------------------------------------------------------


async def test_each_attempt_of_an_inner_app_reads_the_replayed_body() -> None:
    seen: list[bytes] = []

    async def terminal(scope: Any, receive: Any, send: Any) -> None:
        message = await receive()
        seen.append(message["body"])
        ctx = get_context(scope)
        code = 503 if len(ctx.attempts) == 0 else 200
        ctx.attempts.append(Attempt("solo", outcome_for_status(code), code, 0.0))
        await send({"type": "http.response.start", "status": code, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})

    sleep = FakeSleep(FakeClock())
    retry = RetryMiddleware(terminal, sleep=sleep, jitter=no_jitter)
    app = RequestContextMiddleware(retry)
    sent, send = recorder()
    await app(http_scope(body=BODY), body_then_wait(BODY), send)
    assert seen == [BODY, BODY]
    assert sent[0]["status"] == 200
    assert sleep.waits == [0.5]


async def test_inner_app_that_records_no_attempt_is_not_retried() -> None:
    calls = 0

    async def terminal(scope: Any, receive: Any, send: Any) -> None:
        nonlocal calls
        calls += 1
        await send({"type": "http.response.start", "status": 503, "headers": []})
        await send({"type": "http.response.body", "body": b"busy"})

    app = RequestContextMiddleware(RetryMiddleware(terminal, sleep=FakeSleep(FakeClock())))
    sent, send = recorder()
    await app(http_scope(body=BODY), body_then_wait(BODY), send)
    # Without an attempt record there is no provider to retry on, nor a count to stop at.
    assert calls == 1
    assert sent[0]["status"] == 503
    assert sent[1]["body"] == b"busy"


async def test_deadline_before_any_provider_was_chosen() -> None:
    async def stuck(scope: Any, receive: Any, send: Any) -> None:
        await asyncio.Event().wait()

    # A zero deadline expires at the first suspension point: no real waiting.
    app = RequestContextMiddleware(RetryMiddleware(stuck, deadline=0.0))
    sent, send = recorder()
    with anyio.fail_after(2):
        await app(http_scope(body=BODY), body_then_wait(BODY), send)
    assert sent[0]["status"] == 504
    assert json.loads(sent[1]["body"])["error"]["code"] == "timeout"


async def test_no_switch_to_a_fallback_once_the_deadline_passed() -> None:
    stack = build_stack(FALLBACKS, deadline=5.0)

    def slow_503(request: httpx.Request) -> httpx.Response:
        stack.clock.advance(6.0)
        return status(503, {"error": {"message": "from a"}})

    stack.routes["a"].side_effect = slow_503
    stack.script("b", ok())
    response = await stack.post()
    assert response.status_code == 503
    assert response.json() == {"error": {"message": "from a"}}
    assert stack.calls("b") == 0
