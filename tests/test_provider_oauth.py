"""Providers that authenticate with OAuth2 client credentials (``[providers.<name>.oauth]``).

The whole stack from ``build_proxy``, with a fake token endpoint (``httpx.MockTransport``,
or respx for the source the builder makes itself) and a fake provider that accepts only the
tokens the endpoint issued. Time is an injected clock; nothing sleeps for an expiry.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
import respx
from prometheus_client import CollectorRegistry

from llm_proxy_mw import HttpxTransport, LLMProxy, build_proxy
from llm_proxy_mw.auth._client_credentials import DEFAULT_LIFETIME, ClientCredentialsTokenSource
from llm_proxy_mw.config import ConfigError, ProviderConfig, ProviderOAuthConfig
from llm_proxy_mw.errors import UpstreamAuthError
from llm_proxy_mw.providers import Provider

pytestmark = pytest.mark.anyio

SECRET = "canary-client-secret-9d41e7"
TOKEN_URL = "https://login.example/tenant/oauth2/v2.0/token"
SCOPE = "https://cognitiveservices.azure.com/.default"
LIFETIME = 3600.0
CHAT = {"model": "gpt", "messages": [{"role": "user", "content": "hi"}]}
MESSAGES = {"model": "claude", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
OAUTH = {"token_url": TOKEN_URL, "client_id": "app-id", "client_secret": SECRET, "scope": SCOPE}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class TokenEndpoint:
    """Client credentials grant: counts fetches; scripted failures; optional latency."""

    def __init__(self) -> None:
        self.forms: list[dict[str, str]] = []
        self.issued: list[str] = []
        self.failure: httpx.Response | Exception | None = None
        self.delay = 0.0
        self.lifetime: Any = LIFETIME

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.forms.append({k: v[0] for k, v in parse_qs(request.content.decode()).items()})
        if self.delay:
            await asyncio.sleep(self.delay)
        if isinstance(self.failure, Exception):
            raise self.failure
        if self.failure is not None:
            return self.failure
        token = f"provider-token-{len(self.forms)}"
        self.issued.append(token)
        return httpx.Response(
            200, json={"access_token": token, "token_type": "Bearer", "expires_in": self.lifetime}
        )


class Provider_:
    """The upstream: accepts only the newest issued token, records what it was sent."""

    def __init__(self, endpoint: TokenEndpoint) -> None:
        self.endpoint = endpoint
        self.seen: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        authorization = request.headers.get("authorization", "")
        self.seen.append(authorization)
        assert authorization == f"Bearer {self.endpoint.issued[-1]}"
        assert "x-api-key" not in request.headers
        if request.url.path.endswith("/messages"):
            return httpx.Response(200, json={"type": "message", "content": []})
        return httpx.Response(200, json={"object": "chat.completion", "choices": []})


def config(health: dict[str, Any] | None = None, **retry: Any) -> dict[str, Any]:
    retry = retry or {"max_attempts": 1}
    common = {"oauth": OAUTH, "retry": retry, **({"health": health} if health else {})}
    return {
        "providers": {
            "azure": {
                "kind": "openai",
                "base_url": "https://azure.example/openai/v1",
                "models": ["gpt"],
                **common,
            },
            "claude": {
                "kind": "anthropic",
                "base_url": "https://claude.example/v1",
                "models": ["claude"],
                **common,
            },
        },
        "store": {"url": "sqlite:///:memory:"},
    }


def oauth_proxy(
    endpoint: TokenEndpoint, clock: Clock, health: dict[str, Any] | None = None, **retry: Any
) -> tuple[LLMProxy, Provider_, CollectorRegistry]:
    """The stack, each provider's token source pointed at ``endpoint`` and ``clock``."""
    upstream = Provider_(endpoint)
    registry = CollectorRegistry()
    proxy = build_proxy(
        config(health, **retry),
        transports={
            name: HttpxTransport(httpx.MockTransport(upstream)) for name in ("azure", "claude")
        },
        registry=registry,
    )
    shared_endpoint = httpx.MockTransport(endpoint)
    for provider in proxy.providers:
        # The builder made one from the config; it has opened nothing yet (lazy client).
        assert isinstance(provider.credential_source, ClientCredentialsTokenSource)
        assert provider.config.oauth is not None
        provider.credential_source = ClientCredentialsTokenSource(
            provider.config.oauth, provider=provider.name, transport=shared_endpoint, clock=clock
        )
    return proxy, upstream, registry


async def client_for(proxy: LLMProxy) -> AsyncIterator[httpx.AsyncClient]:
    async with proxy.lifespan():
        transport = httpx.ASGITransport(app=proxy)
        async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as client:
            yield client


@pytest.fixture
def endpoint() -> TokenEndpoint:
    return TokenEndpoint()


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def test_the_token_is_fetched_once_sent_as_bearer_and_cached(
    endpoint: TokenEndpoint, clock: Clock
) -> None:
    proxy, upstream, _ = oauth_proxy(endpoint, clock)
    async for client in client_for(proxy):
        for _ in range(3):
            response = await client.post(
                "/v1/chat/completions", json=CHAT, headers={"authorization": "Bearer callers"}
            )
            assert response.status_code == 200
            clock.now += 600
    assert upstream.seen == ["Bearer provider-token-1"] * 3
    assert endpoint.forms == [
        {
            "grant_type": "client_credentials",
            "client_id": "app-id",
            "client_secret": SECRET,
            "scope": SCOPE,
        }
    ]


async def test_an_expired_token_is_fetched_again_before_the_request(
    endpoint: TokenEndpoint, clock: Clock
) -> None:
    proxy, upstream, _ = oauth_proxy(endpoint, clock)
    async for client in client_for(proxy):
        assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200
        clock.now += LIFETIME
        assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200
    assert upstream.seen == ["Bearer provider-token-1", "Bearer provider-token-2"]


async def test_inside_the_margin_the_valid_token_is_used_while_one_renews_it(
    endpoint: TokenEndpoint, clock: Clock
) -> None:
    proxy, upstream, _ = oauth_proxy(endpoint, clock)
    async for client in client_for(proxy):
        assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200
        clock.now += LIFETIME - 30  # 30 s left, inside the 60 s margin
        endpoint.delay = 0.05
        upstream.endpoint = _Frozen(endpoint)  # the old token is still the one to send
        replies = await asyncio.gather(
            *(client.post("/v1/chat/completions", json=CHAT) for _ in range(5))
        )
        assert [r.status_code for r in replies] == [200] * 5
        assert upstream.seen[1:] == ["Bearer provider-token-1"] * 5  # nobody waited
        for _ in range(100):
            if len(endpoint.issued) == 2:
                break
            await asyncio.sleep(0.01)
        upstream.endpoint = endpoint
        assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200
    assert upstream.seen[-1] == "Bearer provider-token-2"
    assert len(endpoint.forms) == 2


class _Frozen(TokenEndpoint):
    """The endpoint as it was: ``issued`` no longer grows."""

    def __init__(self, endpoint: TokenEndpoint) -> None:
        super().__init__()
        self.issued = list(endpoint.issued)


async def test_one_fetch_for_twenty_concurrent_requests(
    endpoint: TokenEndpoint, clock: Clock
) -> None:
    endpoint.delay = 0.05
    proxy, upstream, _ = oauth_proxy(endpoint, clock)
    async for client in client_for(proxy):
        replies = await asyncio.gather(
            *(client.post("/v1/chat/completions", json=CHAT) for _ in range(20))
        )
    assert [r.status_code for r in replies] == [200] * 20
    assert len(endpoint.forms) == 1
    assert upstream.seen == ["Bearer provider-token-1"] * 20


FAILURES = [
    pytest.param(
        httpx.Response(
            401,
            json={"error": "invalid_client", "error_description": f"bad secret {SECRET}"},
        ),
        "HTTP 401 invalid_client",
        id="invalid_client",
    ),
    pytest.param(httpx.Response(500, text=f"<html>{SECRET}</html>"), "HTTP 500.", id="500"),
    pytest.param(
        httpx.Response(400, json={"error": f"{SECRET} not a code!"}), "HTTP 400.", id="odd-code"
    ),
    pytest.param(httpx.Response(200, json={"token_type": "Bearer"}), "no bearer", id="no-token"),
    pytest.param(
        httpx.Response(200, json={"access_token": "t", "token_type": "mac"}),
        "no bearer",
        id="not-bearer",
    ),
    pytest.param(httpx.Response(200, content=b"[" * 100_000), "no bearer", id="nested-json"),
    pytest.param(
        httpx.Response(200, content=b" " * (1024 * 1024 + 1)), "sent more than", id="too-large"
    ),
    pytest.param(
        httpx.Response(302, headers={"location": "https://elsewhere.example/token"}),
        "HTTP 302.",
        id="redirect",
    ),
    pytest.param(httpx.ConnectError(f"refused {SECRET}"), "(ConnectError)", id="connect"),
    pytest.param(httpx.ReadTimeout(f"slow {SECRET}"), "timed out", id="timeout"),
]


@pytest.mark.parametrize(("failure", "detail"), FAILURES)
async def test_a_token_endpoint_failure_is_a_502_in_the_callers_format_without_secrets(
    endpoint: TokenEndpoint,
    clock: Clock,
    failure: httpx.Response | Exception,
    detail: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    endpoint.failure = failure
    proxy, upstream, registry = oauth_proxy(endpoint, clock)
    async for client in client_for(proxy):
        openai_style = await client.post("/v1/chat/completions", json=CHAT)
        anthropic_style = await client.post("/v1/messages", json=MESSAGES)
    assert openai_style.status_code == anthropic_style.status_code == 502
    error = openai_style.json()["error"]
    assert (error["type"], error["code"]) == ("api_error", "upstream_auth_error")
    assert "'azure'" in error["message"] and detail in error["message"]
    assert anthropic_style.json() == {
        "type": "error",
        "error": {"type": "api_error", "message": anthropic_style.json()["error"]["message"]},
    }
    assert upstream.seen == []
    logged = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records) + caplog.text
    for text in (openai_style.text, anthropic_style.text, logged):
        assert SECRET not in text
    assert any(
        r.levelno == logging.WARNING and "token request failed" in r.message for r in caplog.records
    )
    samples = [
        s
        for metric in registry.collect()
        for s in metric.samples
        if s.labels.get("outcome") == "upstream_auth_error"
    ]
    assert samples, "the failed fetch counts as an attempt of the provider"


async def test_tokens_never_reach_the_logs(
    endpoint: TokenEndpoint, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    proxy, _, _ = oauth_proxy(endpoint, clock)
    async for client in client_for(proxy):
        response = await client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 200
    assert "provider-token-1" not in caplog.text
    assert SECRET not in caplog.text
    assert "provider-token-1" not in response.text + str(response.headers)


async def test_one_fetch_for_twenty_concurrent_requests_that_fail(
    endpoint: TokenEndpoint, clock: Clock
) -> None:
    endpoint.failure = httpx.Response(503)
    endpoint.delay = 0.05
    # Retries allowed: the retried attempts find the failure remembered, not a new fetch.
    # Neither the retry budget nor the breaker cuts them short: every request makes all 3.
    health = {"budget_max_tokens": 1000, "min_calls": 1000}
    proxy, _, _ = oauth_proxy(endpoint, clock, health, max_attempts=3)
    async for client in client_for(proxy):
        replies = await asyncio.gather(
            *(client.post("/v1/chat/completions", json=CHAT) for _ in range(20))
        )
    assert [r.status_code for r in replies] == [502] * 20
    assert [r.json()["error"]["code"] for r in replies] == ["upstream_auth_error"] * 20
    assert [r.headers["x-llm-proxy-attempts"] for r in replies] == ["3"] * 20
    assert len(endpoint.forms) == 1


async def test_the_builder_makes_the_source_from_config_and_closes_it() -> None:
    upstream_seen: list[str] = []

    def upstream(request: httpx.Request) -> httpx.Response:
        upstream_seen.append(request.headers["authorization"])
        return httpx.Response(200, json={})

    cfg = config()
    del cfg["providers"]["claude"]
    proxy = build_proxy(cfg, transports={"azure": HttpxTransport(httpx.MockTransport(upstream))})
    source = proxy.providers[0].credential_source
    assert isinstance(source, ClientCredentialsTokenSource)
    with respx.mock(assert_all_called=True) as router:
        route = router.post(TOKEN_URL).respond(
            json={"access_token": "from-respx", "token_type": "bearer", "expires_in": "3599"}
        )
        async for client in client_for(proxy):
            assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200
            assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200
    assert route.call_count == 1
    assert upstream_seen == ["Bearer from-respx"] * 2
    assert not source._fetcher.is_open  # closed by the proxy's shutdown


def test_oauth_and_a_static_authorization_are_refused_together() -> None:
    with pytest.raises(ConfigError, match="Authorization"):
        Provider.from_config(
            "azure",
            ProviderConfig.model_validate({"kind": "openai", "api_key": "k", "oauth": OAUTH}),
        )
    # Anthropic's key goes in x-api-key, so a token beside it does not collide.
    provider = Provider.from_config(
        "claude",
        ProviderConfig.model_validate({"kind": "anthropic", "api_key": "k", "oauth": OAUTH}),
    )
    assert provider.credential_source is not None


def test_a_provider_without_oauth_has_no_credential_source() -> None:
    provider = Provider.from_config("p", ProviderConfig(kind="openai", api_key="k"))
    assert provider.credential_source is None


# ---- the token source alone -----------------------------------------------------------------


def source_for(
    endpoint: TokenEndpoint, clock: Clock, **kwargs: Any
) -> ClientCredentialsTokenSource:
    oauth = ProviderOAuthConfig.model_validate({**OAUTH, "scope": None})
    return ClientCredentialsTokenSource(
        oauth, provider="p", transport=httpx.MockTransport(endpoint), clock=clock, **kwargs
    )


async def test_a_cancelled_waiter_does_not_cancel_the_shared_fetch(
    endpoint: TokenEndpoint, clock: Clock
) -> None:
    endpoint.delay = 0.05
    source = source_for(endpoint, clock)
    leaving = asyncio.ensure_future(source.token())
    staying = asyncio.ensure_future(source.token())
    await asyncio.sleep(0.01)
    leaving.cancel()
    assert await staying == "provider-token-1"
    assert leaving.cancelled()
    assert "scope" not in endpoint.forms[0]
    await source.aclose()
    await source.aclose()


@pytest.mark.parametrize(
    ("expires_in", "lifetime"),
    [
        (3599, 3599.0),
        ("3599", 3599.0),
        (None, DEFAULT_LIFETIME),
        ("soon", DEFAULT_LIFETIME),
        (-5, DEFAULT_LIFETIME),
        (True, DEFAULT_LIFETIME),
        ([], DEFAULT_LIFETIME),
    ],
)
async def test_the_lifetime_comes_from_expires_in(
    endpoint: TokenEndpoint, clock: Clock, expires_in: Any, lifetime: float
) -> None:
    endpoint.lifetime = expires_in
    source = source_for(endpoint, clock, refresh_margin=0.0)
    await source.token()
    clock.now += lifetime - 0.5
    await source.token()
    assert len(endpoint.forms) == 1
    clock.now += 1
    await source.token()
    assert len(endpoint.forms) == 2
    await source.aclose()


async def test_aclose_cancels_a_fetch_in_flight(endpoint: TokenEndpoint, clock: Clock) -> None:
    endpoint.delay = 10
    source = source_for(endpoint, clock)
    waiter = asyncio.ensure_future(source.token())
    await asyncio.sleep(0.01)
    await source.aclose()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert "p" in repr(source) and SECRET not in repr(source)


async def test_the_error_is_typed_and_one_per_waiter(endpoint: TokenEndpoint, clock: Clock) -> None:
    endpoint.failure = httpx.Response(500)
    endpoint.delay = 0.02
    source = source_for(endpoint, clock)
    errors = await asyncio.gather(source.token(), source.token(), return_exceptions=True)
    assert all(isinstance(e, UpstreamAuthError) for e in errors)
    assert errors[0] is not errors[1]
    assert len(endpoint.forms) == 1
    assert json.dumps([str(e) for e in errors]).count(SECRET) == 0
    await source.aclose()


async def test_a_failure_is_remembered_briefly_then_retried(
    endpoint: TokenEndpoint, clock: Clock
) -> None:
    endpoint.failure = httpx.Response(503)
    source = source_for(endpoint, clock, failure_cooldown=2.0)
    for _ in range(2):
        with pytest.raises(UpstreamAuthError, match="HTTP 503"):
            await source.token()
        clock.now += 1.5  # the second try is still inside the cooldown
    assert len(endpoint.forms) == 1
    endpoint.failure = None
    assert await source.token() == "provider-token-2"
    await source.aclose()


async def test_a_failed_renewal_keeps_the_valid_token_and_waits_out_the_cooldown(
    endpoint: TokenEndpoint, clock: Clock
) -> None:
    source = source_for(endpoint, clock, failure_cooldown=2.0)
    assert await source.token() == "provider-token-1"
    clock.now += LIFETIME - 30
    endpoint.failure = httpx.Response(503)
    assert await source.token() == "provider-token-1"  # renewal started in the background
    await asyncio.sleep(0.01)
    assert await source.token() == "provider-token-1"  # it failed; no new one yet
    assert len(endpoint.forms) == 2
    endpoint.failure = None
    clock.now += 3
    assert await source.token() == "provider-token-1"
    await asyncio.sleep(0.01)
    assert await source.token() == "provider-token-3"
    await source.aclose()
