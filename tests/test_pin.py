"""Pinning a provider with ``x-llm-proxy-provider: <name>``: through the example app with
the official ``openai`` SDK, and at the routing layer for who may pin."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from starlette.types import ASGIApp, Receive, Scope, Send

from llm_proxy_mw import (
    EchoTransport,
    Principal,
    Provider,
    RequestContextMiddleware,
    Router,
    RoutingMiddleware,
    get_context,
)
from llm_proxy_mw.config import ProviderConfig
from llm_proxy_mw.upstream import UpstreamApp
from tests.e2e_helpers import (
    ProxyServer,
    RecordingTransport,
    config_toml,
    openai_client,
    provider_toml,
    serve_example_app,
)
from tests.fakes.object_provider import ObjectProvider
from tests.fakes.provider import FakeProviderServer
from tests.fakes.servers import UvicornServer

PIN = "x-llm-proxy-provider"
ASK = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def providers() -> Iterator[tuple[ObjectProvider, ObjectProvider, str, str]]:
    first, second = ObjectProvider("first"), ObjectProvider("second")
    with UvicornServer(first.app) as one, UvicornServer(second.app) as two:
        yield first, second, one.url, two.url


@pytest.fixture
def proxy(
    providers: tuple[ObjectProvider, ObjectProvider, str, str],
    fake_server: FakeProviderServer,
    tmp_path: Path,
) -> Iterator[ProxyServer]:
    first, second, one, two = providers
    for fake in (first, second):
        fake.seen.clear()
    tables = [
        provider_toml(
            name,
            kind="openai",
            base_url=f"{url}/v1",
            key_var="FAKE_OPENAI_KEY",
            models=[f"gpt-{name}"],
        )  # fmt: skip
        for name, url in (("first", one), ("second", two))
    ]
    tables.append(
        provider_toml(
            "claude",
            kind="anthropic",
            base_url=f"{fake_server.url}/v1",
            key_var="FAKE_ANTHROPIC_KEY",
            models=["claude-e2e"],
        )  # fmt: skip
    )
    store = f'[store]\nurl = "sqlite:///{tmp_path}/store.db"\n'
    with serve_example_app(config_toml(*tables, store), tmp_path) as server:
        yield server


def test_the_pinned_provider_answers_whatever_the_model(
    proxy: ProxyServer,
    providers: tuple[ObjectProvider, ObjectProvider, str, str],
    recorder: RecordingTransport,
) -> None:
    first, second, _, _ = providers
    with openai_client(proxy.url, recorder) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-first", messages=ASK, extra_headers={PIN: "second"}
        )
    assert raw.headers["x-llm-proxy-provider"] == "second"
    assert raw.parse().choices[0].message.content == "second answers"
    assert first.seen == []


def test_a_pinned_anthropic_provider_gets_the_chat_request_translated(
    proxy: ProxyServer, provider: Any, recorder: RecordingTransport
) -> None:
    with openai_client(proxy.url, recorder) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-first", messages=ASK, extra_headers={PIN: "claude"}
        )
    assert raw.headers["x-llm-proxy-provider"] == "claude"
    assert raw.parse().object == "chat.completion"
    sent = provider.last
    assert sent.path == "/v1/messages"
    assert PIN not in sent.headers  # the pin is the proxy's, never the provider's


def test_an_unknown_or_unfit_provider_is_a_bad_request(
    proxy: ProxyServer,
    providers: tuple[ObjectProvider, ObjectProvider, str, str],
    recorder: RecordingTransport,
) -> None:
    first, second, _, _ = providers
    with openai_client(proxy.url, recorder) as client:
        with pytest.raises(openai.BadRequestError, match="No provider is named"):
            client.chat.completions.create(
                model="gpt-first", messages=ASK, extra_headers={PIN: "nobody"}
            )
        with pytest.raises(openai.BadRequestError, match="cannot serve this endpoint"):
            client.embeddings.create(model="gpt-first", input="hi", extra_headers={PIN: "claude"})
    assert first.seen == second.seen == []


# ---- who may pin -------------------------------------------------------------------------


class AsPrincipal:
    """Sets the principal Auth would have found: an admin or not, by a request header."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        admin = (b"x-test-admin", b"yes") in scope["headers"]
        get_context(scope).principal = Principal("someone", "api_key", admin=admin)
        await self.app(scope, receive, send)


@pytest.fixture
async def limited() -> AsyncIterator[httpx.AsyncClient]:
    """A stack whose ``may_pin`` refuses every principal that is not an admin."""
    providers = [
        Provider.from_config(name, ProviderConfig(kind="echo", models=[model]), EchoTransport())
        for name, model in (("first", "m"), ("second", "other"))
    ]
    routing = RoutingMiddleware(
        UpstreamApp(providers), router=Router(providers), may_pin=lambda principal: False
    )
    app = RequestContextMiddleware(AsPrincipal(routing))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://proxy"
    ) as client:
        yield client


@pytest.mark.anyio
async def test_only_principals_allowed_may_pin_and_admins_always(
    limited: httpx.AsyncClient,
) -> None:
    chat = {"model": "m", "messages": ASK}
    refused = await limited.post("/v1/chat/completions", json=chat, headers={PIN: "second"})
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "permission_denied"

    unpinned = await limited.post("/v1/chat/completions", json=chat)
    assert unpinned.headers["x-llm-proxy-provider"] == "first"
    admin = {PIN: "second", "x-test-admin": "yes"}
    pinned = await limited.post("/v1/chat/completions", json=chat, headers=admin)
    assert pinned.status_code == 200
    assert pinned.headers["x-llm-proxy-provider"] == "second"
