"""Retries don't multiply: a retryable answer the proxy gives back after its own attempts, or
after deciding against one, carries ``x-should-retry: false``, which the official SDKs obey.

Unit tests on the hand-composed stack (fake clock, no sleeping) cover each way of giving up;
end-to-end tests count the upstream calls of one SDK call at the SDKs' default
``max_retries=2`` through the example app: never more than the provider's ``max_attempts``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import httpx2
import openai
import pytest

from llm_proxy_mw.health import HealthPolicy
from llm_proxy_mw.retry import RetryPolicy
from tests.e2e_helpers import (
    ANTHROPIC_MODEL,
    CLIENT_KEY,
    OPENAI_MODEL,
    TIMEOUT,
    ProxyServer,
    RecordingTransport,
    config_toml,
    serve_example_app,
    standard_providers,
)
from tests.fakes.provider import Action, FakeProvider, FakeProviderServer
from tests.retry_helpers import build_stack, ok, provider_config, status

POLICY = RetryPolicy(max_attempts=3, backoff_base=0.01, backoff_max=0.05, max_retry_after=5.0)


# ---- each way of giving up, on the stack ---------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("code", [408, 409, 429, 500, 502, 503, 504, 529])
async def test_spent_attempts_tell_the_sdk_not_to_retry(code: int) -> None:
    stack = build_stack({"a": provider_config()}, policy=POLICY)
    stack.script("a", *[status(code)] * 3)

    response = await stack.post()

    assert response.status_code == code
    assert stack.calls("a") == 3
    assert response.headers.get_list("x-should-retry") == ["false"]


@pytest.mark.anyio
@pytest.mark.parametrize("code", [501, 505])
async def test_a_5xx_the_proxy_does_not_retry_tells_the_sdk_not_to_either(code: int) -> None:
    stack = build_stack({"a": provider_config()}, policy=POLICY)
    stack.script("a", status(code))

    response = await stack.post()

    assert response.status_code == code
    assert stack.calls("a") == 1
    assert response.headers.get_list("x-should-retry") == ["false"]


@pytest.mark.anyio
async def test_a_provider_asking_for_a_retry_is_overruled_once_attempts_are_spent() -> None:
    stack = build_stack({"a": provider_config()}, policy=POLICY)
    stack.script("a", *[status(400, x_should_retry="true")] * 3)

    response = await stack.post()

    assert response.status_code == 400
    assert stack.calls("a") == 3
    assert response.headers.get_list("x-should-retry") == ["false"]


@pytest.mark.anyio
async def test_a_wait_past_max_retry_after_tells_the_sdk_not_to_retry() -> None:
    stack = build_stack({"a": provider_config()}, policy=POLICY)
    stack.script("a", status(429, retry_after="30"))

    response = await stack.post()

    assert response.status_code == 429
    assert stack.calls("a") == 1
    assert stack.sleep.waits == []
    assert response.headers["retry-after"] == "30"
    assert response.headers.get_list("x-should-retry") == ["false"]


@pytest.mark.anyio
async def test_an_empty_retry_budget_tells_the_sdk_not_to_retry() -> None:
    stack = build_stack(
        {"a": provider_config()}, policy=POLICY, health_policy=HealthPolicy(budget_max_tokens=0)
    )
    stack.script("a", status(503))

    response = await stack.post()

    assert response.status_code == 503
    assert stack.calls("a") == 1
    assert response.headers["x-should-retry"] == "false"


@pytest.mark.anyio
@pytest.mark.parametrize("with_retry", [True, False], ids=["retry", "no-retry"])
async def test_the_proxys_own_provider_unavailable_tells_the_sdk_not_to_retry(
    with_retry: bool,
) -> None:
    # A breaker that opens at the first failure: the next request finds no deployment.
    stack = build_stack(
        {"a": provider_config()},
        policy=POLICY,
        with_retry=with_retry,
        health_policy=HealthPolicy(min_calls=1, failure_rate=0.5),
    )
    stack.script("a", status(503), ok())
    first = await stack.post()

    response = await stack.post()

    assert first.status_code == 503
    # Without Retry the proxy retries nothing: the SDK's retries are the only ones.
    assert first.headers.get("x-should-retry") == ("false" if with_retry else None)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "provider_unavailable"
    assert response.headers["x-should-retry"] == "false"
    assert "retry-after" in response.headers
    assert stack.calls("a") == 1


@pytest.mark.anyio
async def test_a_transport_error_after_the_attempts_tells_the_sdk_not_to_retry() -> None:
    stack = build_stack({"a": provider_config()}, policy=POLICY)
    stack.script("a", *[httpx.ConnectError] * 3)

    response = await stack.post()

    assert response.status_code == 502
    assert response.json()["error"]["code"] == "connect_error"
    assert stack.calls("a") == 3
    assert response.headers["x-should-retry"] == "false"


@pytest.mark.anyio
@pytest.mark.parametrize("answer", [ok(), status(400), status(404)], ids=["200", "400", "404"])
async def test_answers_the_sdk_would_not_retry_anyway_are_left_alone(
    answer: httpx.Response,
) -> None:
    stack = build_stack({"a": provider_config()}, policy=POLICY)
    stack.script("a", answer)

    response = await stack.post()

    assert response.status_code == answer.status_code
    assert "x-should-retry" not in response.headers


@pytest.mark.anyio
async def test_a_retry_that_succeeds_carries_no_verdict() -> None:
    stack = build_stack({"a": provider_config()}, policy=POLICY)
    stack.script("a", status(503), ok())

    response = await stack.post()

    assert response.status_code == 200
    assert "x-should-retry" not in response.headers


# ---- the official SDKs at their default retries, through the example app --------------------


MAX_ATTEMPTS = 3
FAST_RETRY = {"max_attempts": MAX_ATTEMPTS, "backoff_base": 0.01, "backoff_max": 0.05}


@pytest.fixture
def proxy(fake_server: FakeProviderServer, tmp_path: Path) -> Iterator[ProxyServer]:
    config = config_toml(*standard_providers(fake_server.url, retry=FAST_RETRY))
    with serve_example_app(config, tmp_path) as proxy:
        yield proxy


def sdk_http(recorder: RecordingTransport) -> httpx2.Client:
    return httpx2.Client(transport=recorder, trust_env=False, timeout=TIMEOUT)


def default_openai(proxy: ProxyServer, recorder: RecordingTransport) -> openai.OpenAI:
    """The SDK as users construct it: ``max_retries`` left at its default (2)."""
    return openai.OpenAI(
        base_url=proxy.url + "/llm/v1", api_key=CLIENT_KEY, http_client=sdk_http(recorder)
    )


def default_anthropic(proxy: ProxyServer, recorder: RecordingTransport) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=proxy.url + "/llm", api_key=CLIENT_KEY, http_client=sdk_http(recorder)
    )


def chat(client: openai.OpenAI) -> object:
    return client.chat.completions.create(
        model=OPENAI_MODEL, messages=[{"role": "user", "content": "hi"}]
    )


def upstream_calls(provider: FakeProvider) -> int:
    return len(provider.requests)


@pytest.mark.e2e
@pytest.mark.parametrize("code", [503, 429])
def test_openai_sdk_call_costs_at_most_max_attempts(
    code: int, proxy: ProxyServer, provider: FakeProvider, recorder: RecordingTransport
) -> None:
    provider.script(*[Action(status=code)] * 20)  # every call fails, whoever asks
    client = default_openai(proxy, recorder)
    assert client.max_retries == 2
    with contextlib.closing(client), pytest.raises(openai.APIStatusError) as err:
        chat(client)

    assert err.value.status_code == code
    assert err.value.response.headers["x-should-retry"] == "false"
    calls = upstream_calls(provider)
    assert 1 <= calls <= MAX_ATTEMPTS
    assert err.value.response.headers["x-llm-proxy-attempts"] == str(calls)


@pytest.mark.e2e
def test_anthropic_sdk_call_costs_at_most_max_attempts(
    proxy: ProxyServer, provider: FakeProvider, recorder: RecordingTransport
) -> None:
    provider.script(*[Action(status=529)] * 20)
    client = default_anthropic(proxy, recorder)
    assert client.max_retries == 2
    with contextlib.closing(client), pytest.raises(anthropic.APIStatusError) as err:
        client.messages.create(
            model=ANTHROPIC_MODEL, max_tokens=16, messages=[{"role": "user", "content": "hi"}]
        )

    assert err.value.status_code == 529
    assert err.value.response.headers["x-should-retry"] == "false"
    assert 1 <= upstream_calls(provider) <= MAX_ATTEMPTS


@pytest.mark.e2e
def test_a_retry_after_past_the_cap_is_not_slept_by_the_sdk_either(
    fake_server: FakeProviderServer,
    provider: FakeProvider,
    recorder: RecordingTransport,
    tmp_path: Path,
) -> None:
    retry = {**FAST_RETRY, "max_retry_after": 5}
    config = config_toml(*standard_providers(fake_server.url, retry=retry))
    provider.script(*[Action(status=429, headers={"retry-after": "30"})] * 5)
    with serve_example_app(config, tmp_path) as proxy:
        client = default_openai(proxy, recorder)
        started = time.monotonic()
        with contextlib.closing(client), pytest.raises(openai.RateLimitError) as err:
            chat(client)

    # Without ``x-should-retry: false`` the SDK would sleep the 30 s twice.
    assert time.monotonic() - started < TIMEOUT
    assert err.value.response.headers["retry-after"] == "30"
    assert upstream_calls(provider) == 1


@pytest.mark.e2e
def test_a_hard_down_provider_costs_at_most_max_attempts_per_sdk_call(
    proxy: ProxyServer, provider: FakeProvider, recorder: RecordingTransport
) -> None:
    provider.script(*[Action(status=503)] * 50)
    client = default_openai(proxy, recorder)
    with contextlib.closing(client):
        for call in range(1, 6):
            with pytest.raises(openai.APIStatusError) as err:
                chat(client)
            assert err.value.response.headers["x-should-retry"] == "false"
            assert upstream_calls(provider) <= call * MAX_ATTEMPTS
