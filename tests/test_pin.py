"""Pinning a provider with ``x-llm-proxy-provider: <name>``: through the example app with
the official ``openai`` SDK, and at the routing layer for who may pin."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletion
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
from tests.fakes.object_provider import TwoProviders, two_providers
from tests.fakes.provider import FakeProvider, FakeProviderServer

PIN = "x-llm-proxy-provider"
ASK = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def servers() -> Iterator[TwoProviders]:
    with two_providers() as found:
        yield found


@pytest.fixture
def proxy(
    servers: TwoProviders, fake_server: FakeProviderServer, tmp_path: Path
) -> Iterator[ProxyServer]:
    claude = provider_toml(
        "claude", kind="anthropic", base_url=f"{fake_server.url}/v1",
        key_var="FAKE_ANTHROPIC_KEY", models=["claude-e2e"],
    )  # fmt: skip
    store = f'[store]\nurl = "sqlite:///{tmp_path}/store.db"\n'
    with serve_example_app(config_toml(*servers.forget().tables(), claude, store), tmp_path) as s:
        yield s


def pinned_chat(
    proxy: ProxyServer, recorder: RecordingTransport, provider: str
) -> openai.APIResponse[ChatCompletion]:
    """A Chat request for the first provider's model, pinned to ``provider``."""
    with openai_client(proxy.url, recorder) as client:
        return client.chat.completions.with_raw_response.create(
            model="gpt-first", messages=ASK, extra_headers={PIN: provider}
        )


def test_the_pinned_provider_answers_whatever_the_model(
    proxy: ProxyServer, servers: TwoProviders, recorder: RecordingTransport
) -> None:
    raw = pinned_chat(proxy, recorder, "second")
    assert raw.headers["x-llm-proxy-provider"] == "second"
    assert raw.parse().choices[0].message.content == "second answers"
    assert servers.first.seen == []


def test_a_pinned_anthropic_provider_gets_the_chat_request_translated(
    proxy: ProxyServer, provider: FakeProvider, recorder: RecordingTransport
) -> None:
    raw = pinned_chat(proxy, recorder, "claude")
    assert raw.headers["x-llm-proxy-provider"] == "claude"
    assert raw.parse().object == "chat.completion"
    sent = provider.last
    assert sent.path == "/v1/messages"
    assert PIN not in sent.headers  # the pin is the proxy's, never the provider's


def test_an_unknown_or_unfit_provider_is_a_bad_request(
    proxy: ProxyServer, servers: TwoProviders, recorder: RecordingTransport
) -> None:
    with pytest.raises(openai.BadRequestError, match="No provider is named"):
        pinned_chat(proxy, recorder, "nobody")
    with openai_client(proxy.url, recorder) as client:
        with pytest.raises(openai.BadRequestError, match="cannot serve this endpoint"):
            client.embeddings.create(model="gpt-first", input="hi", extra_headers={PIN: "claude"})
    assert servers.first.seen == servers.second.seen == []


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
