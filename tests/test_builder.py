"""``build_proxy``: config in any form, the proxy's own endpoints, mounting, and its lifespan."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Message

from llm_proxy_mw import (
    HttpxTransport,
    LLMProxy,
    ProxyConfig,
    build_proxy,
)
from llm_proxy_mw.config import ConfigError, parse_config
from tests.fakes.transports import RecordingTransport

ECHO = {"providers": {"demo": {"kind": "echo"}}}
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def client_for(app: ASGIApp, root_path: str = "") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, root_path=root_path)
    return httpx.AsyncClient(transport=transport, base_url="http://host")


@contextlib.asynccontextmanager
async def serving_lifespan(app: ASGIApp) -> AsyncIterator[list[Message]]:
    """Run the ASGI lifespan protocol against ``app`` as a server would."""
    to_app_send, to_app_receive = anyio.create_memory_object_stream[Message](4)
    from_app_send, from_app_receive = anyio.create_memory_object_stream[Message](4)
    received: list[Message] = []
    scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}
    async with (
        to_app_send,
        to_app_receive,
        from_app_send,
        from_app_receive,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(app, scope, to_app_receive.receive, from_app_send.send)
        await to_app_send.send({"type": "lifespan.startup"})
        received.append(await from_app_receive.receive())
        assert received[-1]["type"] == "lifespan.startup.complete", received[-1]
        yield received
        await to_app_send.send({"type": "lifespan.shutdown"})
        received.append(await from_app_receive.receive())
        assert received[-1]["type"] == "lifespan.shutdown.complete", received[-1]


def lifespan_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r for r in caplog.records if r.levelno == logging.WARNING and "lifespan" in r.getMessage()
    ]


# -- config in any form ----------------------------------------------------------------------


async def chat_ok(proxy: LLMProxy) -> None:
    async with proxy.lifespan(), client_for(proxy) as client:
        response = await client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "echo: hi"


@pytest.mark.anyio
async def test_build_from_a_mapping() -> None:
    proxy = build_proxy(ECHO)
    assert isinstance(proxy.config, ProxyConfig)
    await chat_ok(proxy)


@pytest.mark.anyio
async def test_build_from_a_config_object() -> None:
    config = parse_config(ECHO)
    proxy = build_proxy(config)
    assert proxy.config is config
    await chat_ok(proxy)


@pytest.mark.anyio
@pytest.mark.parametrize("as_str", [False, True])
async def test_build_from_a_toml_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, as_str: bool
) -> None:
    monkeypatch.setenv("LLM_PROXY_TEST_MODEL", "from-env")
    path = tmp_path / "proxy.toml"
    path.write_text('[providers.demo]\nkind = "echo"\nmodels = ["${LLM_PROXY_TEST_MODEL}"]\n')
    proxy = build_proxy(str(path) if as_str else path)
    assert proxy.config.providers["demo"].models == ["from-env"]
    async with proxy.lifespan(), client_for(proxy) as client:
        response = await client.post("/v1/chat/completions", json={**CHAT, "model": "from-env"})
    assert response.status_code == 200


def test_invalid_mapping_raises_config_error() -> None:
    with pytest.raises(ConfigError, match="providers.demo.kind"):
        build_proxy({"providers": {"demo": {"kind": "nope"}}})


def test_transports_for_an_unknown_provider_raise() -> None:
    with pytest.raises(ValueError, match="ghost"):
        build_proxy(ECHO, transports={"ghost": RecordingTransport()})


@pytest.mark.anyio
async def test_transports_replace_the_default_of_named_providers() -> None:
    transport = RecordingTransport()
    proxy = build_proxy(
        {"providers": {"gpt": {"kind": "openai", "base_url": "https://gpt.example/v1"}}},
        transports={"gpt": transport},
    )
    async with proxy.lifespan(), client_for(proxy) as client:
        response = await client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 200
    assert [r.url for r in transport.sent] == ["https://gpt.example/v1/chat/completions"]


# -- the stack -------------------------------------------------------------------------------


def layers(app: object) -> list[str]:
    """The classes of ``app`` and of every app it wraps, outermost first."""
    names = []
    while app is not None:
        names.append(type(app).__name__)
        app = getattr(app, "app", None)
    return names


def test_the_pipeline_is_the_request_flow_outermost_first() -> None:
    flow = ["RequestContextMiddleware", "TelemetryMiddleware", "MetricsMiddleware"]
    flow += ["AuthMiddleware"]
    flow += ["RetryMiddleware", "RoutingMiddleware", "UpstreamApp"]
    assert layers(build_proxy(guarded()).pipeline) == flow
    flow.remove("AuthMiddleware")  # no [auth]: no layer for it
    assert layers(build_proxy(ECHO).pipeline) == flow


@pytest.mark.anyio
async def test_the_body_limit_is_set_once_by_the_request_context() -> None:
    proxy = build_proxy({**ECHO, "max_body_bytes": 1024})
    app: Any = proxy.pipeline
    assert app.max_body_bytes == 1024
    while (app := getattr(app, "app", None)) is not None:
        assert getattr(app, "max_body_bytes", None) is None  # the context's, not their own
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 1024}]}
    async with proxy.lifespan(), client_for(proxy) as client:
        too_large = await client.post("/v1/chat/completions", json=big)
        small = await client.post("/v1/chat/completions", json=CHAT)
    assert too_large.status_code == 413
    assert small.status_code == 200


# -- the proxy's own endpoints ---------------------------------------------------------------


@pytest.mark.anyio
async def test_healthz_reports_each_provider() -> None:
    # No [auth]: the proxy is open to anyone, /metrics too, so the detail is not held back.
    proxy = build_proxy(
        {
            "providers": {
                "demo": {"kind": "echo"},
                "gpt": {"kind": "openai", "models": ["gpt-4o"], "api_key": "sk-health-canary"},
            }
        },
        transports={"gpt": RecordingTransport()},
    )
    async with proxy.lifespan(), client_for(proxy) as client:
        response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["status"] == "ok"
    assert set(body["providers"]) == {"demo", "gpt"}
    assert body["providers"]["gpt"]["kind"] == "openai"
    assert "sk-health-canary" not in response.text
    assert "x-request-id" in response.headers


ADMIN_KEY = "admin-key-health-5d1e0c"
USER_KEY = "user-key-health-8a2f47"
#: Provider and model names the health report would reveal.
SECRET_NAMES = ("internal-gpt", "gpt-internal-ft", "kind")


def guarded(*, public: bool = False, **provider: Any) -> dict[str, Any]:
    """One OpenAI-kind provider behind API keys (an admin and a user)."""
    return {
        "providers": {
            "internal-gpt": {
                "kind": "openai",
                "base_url": "https://gpt.example/v1",
                "models": ["gpt-internal-ft"],
                **provider,
            }
        },
        "auth": {
            "api_keys": [
                {"name": "ops", "key": ADMIN_KEY, "admin": True},
                {"name": "app", "key": USER_KEY},
            ]
        },
        "metrics": {"public": public},
        "store": {"url": "sqlite:///:memory:"},
    }


@pytest.mark.anyio
@pytest.mark.parametrize(
    "credentials",
    [
        {},
        {"authorization": f"Bearer {USER_KEY}"},
        {"x-api-key": USER_KEY},
        {"authorization": "Bearer wrong-key"},
        {"cookie": "llm_proxy_session=forged"},
    ],
    ids=["anonymous", "user bearer", "user x-api-key", "wrong key", "forged cookie"],
)
async def test_healthz_without_an_admin_says_only_ok(credentials: dict[str, str]) -> None:
    proxy = build_proxy(guarded(), transports={"internal-gpt": RecordingTransport()})
    async with proxy.lifespan(), client_for(proxy) as client:
        response = await client.get("/healthz", headers=credentials)
    # A liveness probe gets its answer whatever it presents: never 401 or 403.
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert not any(name in response.text for name in SECRET_NAMES)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("public", "credentials"),
    [(False, {"authorization": f"Bearer {ADMIN_KEY}"}), (False, {"x-api-key": ADMIN_KEY})]
    + [(True, {})],
    ids=["admin bearer", "admin x-api-key", "metrics public"],
)
async def test_healthz_shows_an_admin_each_provider(
    public: bool, credentials: dict[str, str]
) -> None:
    proxy = build_proxy(guarded(public=public), transports={"internal-gpt": RecordingTransport()})
    async with proxy.lifespan(), client_for(proxy) as client:
        response = await client.get("/healthz", headers=credentials)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["providers"]["internal-gpt"]["models"] == ["gpt-internal-ft"]
    assert body["providers"]["internal-gpt"]["circuit"] == "closed"


def always(status: int) -> HttpxTransport:
    return HttpxTransport(httpx.MockTransport(lambda request: httpx.Response(status, json={})))


@pytest.mark.anyio
async def test_healthz_is_503_when_no_provider_can_serve() -> None:
    tripping = {"retry": {"max_attempts": 1}, "health": {"min_calls": 2, "failure_rate": 1.0}}
    proxy = build_proxy(guarded(**tripping), transports={"internal-gpt": always(500)})
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    chat = {**CHAT, "model": "gpt-internal-ft"}
    async with proxy.lifespan(), client_for(proxy) as client:
        assert (await client.get("/healthz")).status_code == 200
        for _ in range(2):
            response = await client.post("/v1/chat/completions", json=chat, headers=admin)
            assert response.status_code == 500
        anonymous = await client.get("/healthz")
        detailed = await client.get("/healthz", headers=admin)
    assert anonymous.status_code == 503
    assert anonymous.json() == {"status": "unavailable"}
    assert detailed.status_code == 503
    assert detailed.json()["status"] == "unavailable"
    assert detailed.json()["providers"]["internal-gpt"]["circuit"] == "open"


@pytest.mark.anyio
@pytest.mark.parametrize("path", ["/", "/nope", "/v1", "/v2/chat/completions", "/healthz/x"])
async def test_unknown_path_is_404_in_openai_shape(path: str) -> None:
    proxy = build_proxy(ECHO)
    async with proxy.lifespan(), client_for(proxy) as client:
        response = await client.get(path)
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "not_found"
    assert error["type"] == "not_found_error"
    assert "x-request-id" in response.headers


@pytest.mark.anyio
async def test_websocket_scope_is_not_served_as_http() -> None:
    proxy = build_proxy(ECHO)
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "websocket.connect"}

    async def send(message: Message) -> None:
        sent.append(message)

    async with proxy.lifespan():
        scope = {"type": "websocket", "path": "/v1/realtime", "headers": [], "root_path": ""}
        await proxy(scope, receive, send)
    assert not any(m["type"].startswith("http.") for m in sent)


# -- mounting in a host app ------------------------------------------------------------------


class Upstream:
    def __init__(self) -> None:
        self.urls: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.urls.append(str(request.url))
        return httpx.Response(200, json={"ok": True})


def mounted_proxy() -> tuple[LLMProxy, Upstream]:
    upstream = Upstream()
    proxy = build_proxy(
        {"providers": {"gpt": {"kind": "openai", "base_url": "https://up.example/v1"}}},
        transports={"gpt": HttpxTransport(httpx.MockTransport(upstream))},
    )
    return proxy, upstream


@pytest.mark.anyio
async def test_mounted_in_starlette_with_the_lifespan() -> None:
    proxy, upstream = mounted_proxy()

    async def home(request: Any) -> PlainTextResponse:
        return PlainTextResponse("host")

    host = Starlette(routes=[Route("/", home), Mount("/llm", app=proxy)], lifespan=proxy.lifespan)
    async with serving_lifespan(host), client_for(host) as client:
        chat = await client.post("/llm/v1/chat/completions", json=CHAT)
        health = await client.get("/llm/healthz")
        models = await client.get("/llm/v1/models")
        missing = await client.get("/llm/nope")
        home_page = await client.get("/")
    assert chat.status_code == 200
    assert chat.headers["x-llm-proxy-provider"] == "gpt"
    assert upstream.urls == ["https://up.example/v1/chat/completions"]
    assert health.json()["status"] == "ok"
    assert models.json()["object"] == "list"
    assert missing.status_code == 404
    assert "/nope" in missing.json()["error"]["message"]
    assert "/llm" not in missing.json()["error"]["message"]
    assert home_page.text == "host"


@pytest.mark.anyio
async def test_served_under_a_root_path() -> None:
    # As behind `uvicorn --root-path /llm`: the path keeps the prefix, root_path names it.
    proxy, upstream = mounted_proxy()
    async with proxy.lifespan(), client_for(proxy, root_path="/llm") as client:
        response = await client.post("/llm/v1/chat/completions?x=1", json=CHAT)
    assert response.status_code == 200
    assert upstream.urls == ["https://up.example/v1/chat/completions?x=1"]


# -- lifespan --------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_host_lifespan_closes_every_transport(caplog: pytest.LogCaptureFixture) -> None:
    transports = {"a": RecordingTransport(), "b": RecordingTransport()}
    proxy = build_proxy(
        {"providers": {"a": {"kind": "echo"}, "b": {"kind": "echo"}}}, transports=transports
    )
    host = Starlette(routes=[Mount("/llm", app=proxy)], lifespan=proxy.lifespan)
    async with serving_lifespan(host):
        async with client_for(host) as client:
            response = await client.post("/llm/v1/chat/completions", json=CHAT)
        assert response.status_code == 200
        assert [t.closed for t in transports.values()] == [0, 0]
    assert [t.closed for t in transports.values()] == [1, 1]
    assert lifespan_warnings(caplog) == []


@pytest.mark.anyio
async def test_lifespan_context_closes_transports_even_on_error() -> None:
    transport = RecordingTransport()
    proxy = build_proxy(ECHO, transports={"demo": transport})
    with pytest.raises(RuntimeError, match="host failed"):
        async with proxy.lifespan():
            raise RuntimeError("host failed")
    assert transport.closed == 1


@pytest.mark.anyio
async def test_served_directly_the_proxy_answers_the_lifespan_protocol(
    caplog: pytest.LogCaptureFixture,
) -> None:
    transport = RecordingTransport()
    proxy = build_proxy(ECHO, transports={"demo": transport})
    async with serving_lifespan(proxy) as received:
        async with client_for(proxy) as client:
            response = await client.post("/v1/chat/completions", json=CHAT)
        assert response.status_code == 200
        assert transport.closed == 0
    assert [m["type"] for m in received] == [
        "lifespan.startup.complete",
        "lifespan.shutdown.complete",
    ]
    assert transport.closed == 1
    assert lifespan_warnings(caplog) == []


@pytest.mark.anyio
async def test_without_the_lifespan_exactly_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    proxy = build_proxy(ECHO)
    host = Starlette(routes=[Mount("/llm", app=proxy)])  # the host forgot the lifespan
    async with client_for(host) as client:
        for _ in range(5):
            response = await client.post("/llm/v1/chat/completions", json=CHAT)
            assert response.status_code == 200
        assert (await client.get("/llm/healthz")).status_code == 200
    [warning] = lifespan_warnings(caplog)
    assert warning.name == "llm_proxy_mw"
    assert "proxy.lifespan" in warning.getMessage()
    await proxy.aclose()
