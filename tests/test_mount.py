"""``mount(host, prefix, proxy)``: the proxy in front of the host's router, as a Mount sees it,
and past the host's middleware, as documented."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Mount, Route
from starlette.types import Message, Receive, Scope, Send
from test_builder import CHAT, client_for, mounted_proxy, serving_lifespan

from llm_proxy_mw import mount
from llm_proxy_mw.context import get_context
from tests.test_examples import PathRecorder

pytestmark = pytest.mark.anyio


async def home(request: Request) -> PlainTextResponse:
    return PlainTextResponse("host " + request.url.path)


def host_with(proxy: Any) -> Starlette:
    async def link(request: Request) -> JSONResponse:
        return JSONResponse({"llm": str(request.url_for("llm", path="/v1"))})

    routes: list[Route | Mount] = [Route("/", home), Route("/llmx", home), Route("/link", link)]
    routes.append(Mount("/llm", app=proxy, name="llm"))
    return Starlette(routes=routes, lifespan=proxy.lifespan)


async def test_requests_under_the_prefix_reach_the_proxy_and_the_rest_the_host() -> None:
    proxy, upstream = mounted_proxy()
    app = mount(host_with(proxy), "/llm", proxy)
    async with serving_lifespan(app), client_for(app) as client:
        chat = await client.post("/llm/v1/chat/completions", json=CHAT)
        missing = await client.get("/llm/nope")
        beside = await client.get("/llmx")
        home_page = await client.get("/")
        link = await client.get("/link")
    assert chat.status_code == 200
    assert chat.headers["x-llm-proxy-provider"] == "gpt"
    assert upstream.urls == ["https://up.example/v1/chat/completions"]
    assert missing.status_code == 404
    assert "/nope" in missing.json()["error"]["message"]
    assert beside.text == "host /llmx"  # a prefix of the path, not of a path segment
    assert home_page.text == "host /"
    assert link.json() == {"llm": "http://host/llm/v1"}


async def test_the_host_middleware_sees_only_what_mount_leaves_to_the_host() -> None:
    """What ``mount()`` skips: whatever the host wraps around its routes, for the proxied
    requests; a standard ``Mount`` keeps them inside (tests/test_examples.py)."""
    proxy, _ = mounted_proxy()
    seen: list[str] = []
    host = Starlette(
        routes=[Route("/", home), Mount("/llm", app=proxy)],
        middleware=[Middleware(PathRecorder, seen=seen)],
        lifespan=proxy.lifespan,
    )
    app = mount(host, "/llm", proxy)
    async with serving_lifespan(app), client_for(app) as client:
        chat = await client.post("/llm/v1/chat/completions", json=CHAT)
        home_page = await client.get("/")
    assert chat.status_code == 200
    assert home_page.text == "host /"
    assert seen == ["/"]


async def test_the_proxy_sees_the_scope_a_starlette_mount_gives_it() -> None:
    seen: list[Scope] = []

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope)
        await PlainTextResponse("inner")(scope, receive, send)

    starlette_host = Starlette(routes=[Mount("/llm", app=inner)])
    for app in (starlette_host, mount(PlainTextResponse("host"), "/llm/", inner)):
        async with client_for(app, root_path="/base") as client:
            response = await client.get("/base/llm/v1/models?x=1")
        assert response.text == "inner"
    by_mount, by_prefix = seen
    for key in ("path", "root_path", "query_string", "app_root_path"):
        assert by_prefix[key] == by_mount[key], key
    assert by_prefix["root_path"] == "/base/llm"
    assert get_context(dict(by_prefix, state={})).route_path == "/v1/models"


async def test_the_lifespan_goes_to_the_host() -> None:
    proxy, _ = mounted_proxy()
    app = mount(host_with(proxy), "/llm", proxy)
    async with serving_lifespan(app) as received:
        pass
    assert [m["type"] for m in received] == [
        "lifespan.startup.complete",
        "lifespan.shutdown.complete",
    ]
    assert proxy._lifespan_entered


async def test_websockets_under_the_prefix_are_the_proxys_to_refuse() -> None:
    proxy, _ = mounted_proxy()
    app = mount(host_with(proxy), "/llm", proxy)
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        return {"type": "websocket.connect"}

    scope = {
        "type": "websocket",
        "path": "/llm/v1/chat/completions",
        "headers": [],
        "root_path": "",
    }
    await app(scope, receive, send)
    assert sent == [{"type": "websocket.close", "code": 1008}]


def test_a_prefix_must_name_a_path() -> None:
    with pytest.raises(ValueError, match="prefix"):
        mount(PlainTextResponse("host"), "/", PlainTextResponse("proxy"))
