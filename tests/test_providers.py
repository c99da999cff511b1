"""What crosses the proxy: headers both ways, credentials, request ids, and upstream paths."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import anthropic
import anyio
import httpx
import httpx2
import openai
import pytest
from starlette.types import ASGIApp, Message

from llm_proxy_mw import (
    AiohttpTransport,
    EchoTransport,
    HttpxTransport,
    LLMProxy,
    Provider,
    build_proxy,
)
from llm_proxy_mw.config import ProviderConfig
from llm_proxy_mw.errors import InvalidRequestError
from llm_proxy_mw.providers import upstream_path

OPENAI_KEY = "sk-provider-canary-3e8b1d"
ANTHROPIC_KEY = "sk-ant-provider-canary-9c2f"
AZURE_KEY = "azure-canary-5a7d"


class Upstream:
    """An ``httpx.MockTransport`` handler that records the requests it got."""

    def __init__(
        self,
        headers: Sequence[tuple[str, str]] = (),
        respond: Callable[[httpx.Request], httpx.Response] | None = None,
    ) -> None:
        self.requests: list[httpx.Request] = []
        self.headers = list(headers)
        self.respond = respond

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.respond is not None:
            return self.respond(request)
        return httpx.Response(200, headers=self.headers, json={"ok": True})

    @property
    def last(self) -> httpx.Request:
        assert self.requests, "the provider was never called"
        return self.requests[-1]


def make_proxy(upstream: Upstream, **provider: Any) -> LLMProxy:
    config = {"kind": "openai", "base_url": "https://up.example/base/v1", **provider}
    return build_proxy(
        {"providers": {"main": config}},
        transports={"main": HttpxTransport(httpx.MockTransport(upstream))},
    )


@pytest.fixture
def upstream() -> Upstream:
    return Upstream()


@pytest.fixture
def proxy(upstream: Upstream) -> LLMProxy:
    return make_proxy(upstream, api_key=OPENAI_KEY)


@pytest.fixture
async def client(proxy: LLMProxy) -> AsyncIterator[httpx.AsyncClient]:
    async with proxy.lifespan():
        transport = httpx.ASGITransport(app=proxy)
        async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as client:
            yield client


async def call(
    app: ASGIApp,
    path: str,
    *,
    method: str = "POST",
    headers: Sequence[tuple[bytes, bytes]] = (),
    body: bytes = b'{"model": "m"}',
    query: bytes = b"",
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Drive the app with a hand-made scope: raw paths and headers no HTTP client would send."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode("latin-1"),
        "query_string": query,
        "root_path": "",
        "headers": [(b"host", b"proxy"), (b"content-type", b"application/json"), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("proxy", 80),
    }
    pending = [{"type": "http.request", "body": body, "more_body": False}]
    done = anyio.Event()
    sent: list[Message] = []

    async def receive() -> Message:
        if pending:
            return pending.pop()
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            done.set()

    await app(scope, receive, send)
    done.set()
    start = sent[0]
    assert start["type"] == "http.response.start"
    body_out = b"".join(m.get("body", b"") for m in sent[1:])
    return start["status"], list(start["headers"]), body_out


def values(headers: list[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    return [v for n, v in headers if n.lower() == name]


# -- request headers -------------------------------------------------------------------------

NEVER_FORWARDED = (
    "authorization",
    "x-api-key",
    "cookie",
    "connection",
    "keep-alive",
    "te",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "proxy-connection",
    "trailer",
    "x-forwarded-for",
    "forwarded",
)


@pytest.mark.anyio
async def test_client_credentials_and_hop_by_hop_headers_never_reach_the_provider(
    client: httpx.AsyncClient, upstream: Upstream
) -> None:
    response = await client.post(
        "/v1/chat/completions",
        json={"model": "gpt-4o"},
        headers=[
            ("authorization", "Bearer client-key"),
            ("x-api-key", "client-key"),
            ("cookie", "session=client"),
            ("connection", "keep-alive, x-hop-listed"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("proxy-authorization", "Basic Y2xpZW50"),
            ("proxy-connection", "keep-alive"),
            ("trailer", "x-checksum"),
            ("x-forwarded-for", "10.0.0.1"),
            ("forwarded", "for=10.0.0.1"),
            ("x-hop-listed", "1"),
            ("openai-beta", "assistants=v2"),
        ],
    )
    assert response.status_code == 200
    sent = upstream.last.headers
    for name in NEVER_FORWARDED:
        if name == "authorization":
            continue
        assert name not in sent, name
    assert "x-hop-listed" not in sent
    assert sent.get_list("authorization") == [f"Bearer {OPENAI_KEY}"]
    assert "client-key" not in str(sent.raw)
    assert sent["host"] == "up.example"
    assert sent["openai-beta"] == "assistants=v2"


#: Each one changes what the provider does or whom it bills, or lies about where the request
#: came from; none is among the headers the APIs need, so none is forwarded.
ATTACK_HEADERS = {
    "x-original-url": "/v1/organization/admin_api_keys",
    "x-rewrite-url": "/v1/organization/admin_api_keys",
    "x-http-method-override": "DELETE",
    "x-forwarded-prefix": "/evil",
    "x-forwarded-port": "8443",
    "x-forwarded-scheme": "http",
    "via": "1.1 evil.example",
    "true-client-ip": "10.0.0.1",
    "openai-organization": "org-victim",
    "openai-project": "proj-victim",
    "anthropic-workspace-id": "wrkspc-victim",
    "anthropic-organization-id": "org-victim",
    "x-upstream-host": "evil.example",
}


@pytest.mark.anyio
@pytest.mark.parametrize("name", sorted(ATTACK_HEADERS))
async def test_attack_headers_never_reach_the_provider(upstream: Upstream, name: str) -> None:
    value = ATTACK_HEADERS[name].encode()
    for kind in ("openai", "anthropic"):
        status, _, _ = await call(
            make_proxy(upstream, kind=kind, api_key=OPENAI_KEY),
            "/v1/chat/completions" if kind == "openai" else "/v1/messages",
            headers=[(name.encode(), value), (b"user-agent", b"sdk/1.0")],
        )
        assert status == 200
        sent = upstream.last.headers
        assert name not in sent, (kind, name)
        assert value not in b"".join(v for _, v in sent.raw), (kind, name)
        assert sent["user-agent"] == "sdk/1.0"


@pytest.mark.anyio
async def test_the_operators_organization_replaces_the_clients(upstream: Upstream) -> None:
    proxy = make_proxy(
        upstream, headers={"OpenAI-Organization": "org-operator", "OpenAI-Project": "proj-op"}
    )
    await call(
        proxy,
        "/v1/chat/completions",
        headers=[(b"openai-organization", b"org-victim"), (b"openai-project", b"proj-victim")],
    )
    sent = upstream.last.headers
    assert sent.get_list("openai-organization") == ["org-operator"]
    assert sent.get_list("openai-project") == ["proj-op"]


#: What the SDKs send that a provider must not get from the client: credentials (replaced by
#: the provider's), what the transport sets, and the org and project the key would bill.
NOT_FROM_THE_SDK = {
    "authorization",
    "x-api-key",
    "host",
    "content-length",
    "connection",
    "openai-organization",
    "openai-project",
}


async def sdk_exchange(
    proxy: LLMProxy, call_sdk: Callable[[httpx2.AsyncClient], Awaitable[object]]
) -> list[tuple[str, str]]:
    """The headers an SDK sent for one call through the proxy, as the SDK sent them."""
    sent: list[tuple[str, str]] = []

    async def record(request: httpx2.Request) -> None:
        sent.extend((n.decode().lower(), v.decode()) for n, v in request.headers.raw)

    transport = httpx2.ASGITransport(app=proxy)
    async with (
        proxy.lifespan(),
        httpx2.AsyncClient(transport=transport, event_hooks={"request": [record]}) as http,
    ):
        await call_sdk(http)
    return sent


def assert_forwarded_as_sent(sdk_sent: list[tuple[str, str]], upstream: Upstream) -> None:
    got = upstream.last.headers
    expected = [(n, v) for n, v in sdk_sent if n not in NOT_FROM_THE_SDK]
    missing = [(n, v) for n, v in expected if v not in got.get_list(n)]
    assert missing == []


@pytest.mark.anyio
async def test_the_openai_sdks_own_headers_reach_the_provider(upstream: Upstream) -> None:
    extra = {
        "openai-beta": "assistants=v2",
        "idempotency-key": "idem-1",
        "x-client-request-id": "client-req-1",
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "tracestate": "vendor=1",
        "baggage": "tenant=a",
    }

    async def chat(http: httpx2.AsyncClient) -> object:
        sdk = openai.AsyncOpenAI(
            base_url="http://proxy/v1",
            api_key="client-key",
            organization="org-victim",
            project="proj-victim",
            max_retries=0,
            http_client=http,
        )
        return await sdk.chat.completions.with_raw_response.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "hi"}],
            extra_headers=extra,
        )

    sdk_sent = await sdk_exchange(make_proxy(upstream, api_key=OPENAI_KEY), chat)
    names = {n for n, _ in sdk_sent}
    assert {"x-stainless-lang", "x-stainless-retry-count", "user-agent", *extra} <= names
    assert {"openai-organization", "openai-project"} <= names
    assert_forwarded_as_sent(sdk_sent, upstream)
    got = upstream.last.headers
    assert "openai-organization" not in got
    assert "openai-project" not in got
    assert got.get_list("authorization") == [f"Bearer {OPENAI_KEY}"]


@pytest.mark.anyio
async def test_the_anthropic_sdks_own_headers_reach_the_provider(upstream: Upstream) -> None:
    async def message(http: httpx2.AsyncClient) -> object:
        sdk = anthropic.AsyncAnthropic(
            base_url="http://proxy", api_key="client-key", max_retries=0, http_client=http
        )
        return await sdk.messages.with_raw_response.create(
            model="claude-x",
            max_tokens=8,
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"anthropic-beta": "prompt-caching-2024-07-31"},
        )

    proxy = make_proxy(
        upstream, kind="anthropic", base_url="https://claude.example/v1", api_key=ANTHROPIC_KEY
    )
    sdk_sent = await sdk_exchange(proxy, message)
    names = {n for n, _ in sdk_sent}
    assert {"anthropic-version", "anthropic-beta", "x-stainless-lang", "user-agent"} <= names
    assert_forwarded_as_sent(sdk_sent, upstream)
    assert upstream.last.headers.get_list("x-api-key") == [ANTHROPIC_KEY]


@pytest.mark.anyio
@pytest.mark.parametrize("connection_first", [True, False])
async def test_headers_named_in_connection_are_dropped_wherever_they_appear(
    proxy: LLMProxy, upstream: Upstream, connection_first: bool
) -> None:
    # Headers the proxy would otherwise forward: Connection makes them hop-by-hop.
    hop = [(b"x-stainless-arch", b"1"), (b"traceparent", b"2")]
    connection = [(b"connection", b"X-Stainless-Arch , traceparent")]
    headers = connection + hop if connection_first else hop + connection
    status, _, _ = await call(
        proxy, "/v1/chat/completions", headers=[*headers, (b"openai-beta", b"y")]
    )
    assert status == 200
    sent = upstream.last.headers
    assert "x-stainless-arch" not in sent
    assert "traceparent" not in sent
    assert sent["openai-beta"] == "y"


@pytest.mark.anyio
async def test_transfer_encoding_from_the_client_is_not_forwarded(
    proxy: LLMProxy, upstream: Upstream
) -> None:
    status, _, _ = await call(
        proxy, "/v1/chat/completions", headers=[(b"transfer-encoding", b"chunked")]
    )
    assert status == 200
    assert upstream.last.headers.get_list("transfer-encoding") == []
    assert upstream.last.content == b'{"model": "m"}'


@pytest.mark.anyio
async def test_anthropic_provider_gets_x_api_key_and_a_default_version() -> None:
    upstream = Upstream()
    proxy = make_proxy(
        upstream, kind="anthropic", base_url="https://claude.example/v1", api_key=ANTHROPIC_KEY
    )
    status, _, _ = await call(
        proxy,
        "/v1/messages",
        headers=[
            (b"x-api-key", b"client-key"),
            (b"authorization", b"Bearer client-key"),
            (b"anthropic-beta", b"prompt-caching-2024-07-31"),
        ],
    )
    assert status == 200
    sent = upstream.last.headers
    assert str(upstream.last.url) == "https://claude.example/v1/messages"
    assert sent.get_list("x-api-key") == [ANTHROPIC_KEY]
    assert "authorization" not in sent
    assert sent.get_list("anthropic-version") == ["2023-06-01"]
    assert sent["anthropic-beta"] == "prompt-caching-2024-07-31"


@pytest.mark.anyio
async def test_client_sent_anthropic_version_is_kept() -> None:
    upstream = Upstream()
    proxy = make_proxy(upstream, kind="anthropic", api_key=ANTHROPIC_KEY)
    await call(proxy, "/v1/messages", headers=[(b"anthropic-version", b"2099-01-01")])
    assert upstream.last.headers.get_list("anthropic-version") == ["2099-01-01"]


@pytest.mark.anyio
async def test_a_configured_anthropic_version_is_sent_once() -> None:
    upstream = Upstream()
    proxy = make_proxy(
        upstream, kind="anthropic", api_key=ANTHROPIC_KEY, headers={"anthropic-version": "2099"}
    )
    await call(proxy, "/v1/messages", headers=[(b"anthropic-version", b"2023-06-01")])
    assert upstream.last.headers.get_list("anthropic-version") == ["2099"]


@pytest.mark.anyio
async def test_openai_provider_gets_no_anthropic_version(upstream: Upstream) -> None:
    await call(make_proxy(upstream, api_key=OPENAI_KEY), "/v1/chat/completions")
    assert "anthropic-version" not in upstream.last.headers
    assert "x-api-key" not in upstream.last.headers


@pytest.mark.anyio
async def test_provider_without_key_forwards_no_client_credentials(upstream: Upstream) -> None:
    await call(
        make_proxy(upstream),
        "/v1/chat/completions",
        headers=[(b"authorization", b"Bearer client-key"), (b"x-api-key", b"client-key")],
    )
    assert "authorization" not in upstream.last.headers
    assert "x-api-key" not in upstream.last.headers


@pytest.mark.anyio
async def test_non_ascii_header_bytes_are_forwarded_unchanged(upstream: Upstream) -> None:
    # HTTP allows obs-text (0x80-0xFF) in values; servers hand it over as raw bytes.
    status, _, _ = await call(
        make_proxy(upstream), "/v1/chat/completions", headers=[(b"user-agent", b"caf\xe9")]
    )
    assert status == 200
    assert (b"user-agent", b"caf\xe9") in upstream.last.headers.raw


@pytest.mark.anyio
async def test_configured_headers_are_injected_and_clients_cannot_override_them(
    upstream: Upstream,
) -> None:
    proxy = make_proxy(upstream, headers={"api-key": AZURE_KEY, "X-Tenant": "t1"})
    await call(
        proxy,
        "/v1/chat/completions",
        headers=[(b"api-key", b"client-key"), (b"x-tenant", b"client-tenant")],
    )
    sent = upstream.last.headers
    assert sent.get_list("api-key") == [AZURE_KEY]
    assert sent.get_list("x-tenant") == ["t1"]


# -- the provider's key never reaches the client ---------------------------------------------


@pytest.mark.anyio
async def test_provider_key_never_appears_in_the_response(
    client: httpx.AsyncClient, upstream: Upstream
) -> None:
    response = await client.post("/v1/chat/completions", json={"model": "m"})
    assert response.status_code == 200
    assert upstream.last.headers["authorization"] == f"Bearer {OPENAI_KEY}"
    assert OPENAI_KEY not in str(response.headers.raw)
    assert OPENAI_KEY not in response.text


@pytest.mark.anyio
async def test_provider_key_never_appears_in_a_transport_error_or_the_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        # A client library may put the request (and so the key) into its message.
        raise httpx.ConnectError(f"cannot connect: {request.headers!r} {OPENAI_KEY}")

    proxy = make_proxy(Upstream(respond=fail), api_key=OPENAI_KEY)
    caplog.set_level(logging.DEBUG)
    status, headers, body = await call(proxy, "/v1/chat/completions")
    assert status == 502
    assert b"connect_error" in body
    assert OPENAI_KEY.encode() not in body
    assert OPENAI_KEY.encode() not in b"".join(n + v for n, v in headers)
    assert OPENAI_KEY not in caplog.text


# -- response headers ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_hop_by_hop_response_headers_are_stripped() -> None:
    upstream = Upstream(
        headers=[
            ("connection", "close, X-Hop-Listed"),
            ("keep-alive", "timeout=5"),
            ("proxy-authenticate", "Basic"),
            ("proxy-connection", "close"),
            ("trailer", "x-checksum"),
            ("upgrade", "h2c"),
            ("x-hop-listed", "1"),
            ("openai-processing-ms", "12"),
            ("x-ratelimit-remaining-requests", "99"),
        ]
    )
    proxy = make_proxy(upstream)
    status, headers, body = await call(proxy, "/v1/chat/completions")
    assert status == 200
    names = {n.lower() for n, _ in headers}
    for hop in (
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-connection",
        b"trailer",
        b"upgrade",
        b"x-hop-listed",
    ):
        assert hop not in names, hop
    assert values(headers, b"openai-processing-ms") == [b"12"]
    assert values(headers, b"x-ratelimit-remaining-requests") == [b"99"]
    assert values(headers, b"content-type") == [b"application/json"]
    assert body == b'{"ok":true}'


@pytest.mark.anyio
async def test_upstream_transfer_encoding_is_not_passed_to_the_client() -> None:
    async def parts() -> AsyncIterator[bytes]:
        yield b"a"
        yield b"b"

    def chunked(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"transfer-encoding": "chunked"}, content=parts())

    status, headers, body = await call(make_proxy(Upstream(respond=chunked)), "/v1/x")
    assert status == 200
    assert values(headers, b"transfer-encoding") == []
    assert body == b"ab"


@pytest.mark.anyio
async def test_proxied_responses_name_the_provider_and_the_attempts(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post("/v1/chat/completions", json={"model": "m"})
    assert response.headers.get_list("x-llm-proxy-provider") == ["main"]
    assert response.headers.get_list("x-llm-proxy-attempts") == ["1"]


@pytest.mark.anyio
async def test_upstream_error_passes_through_with_its_body_and_proxy_headers() -> None:
    def rate_limited(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            400, headers={"x-upstream": "yes"}, json={"error": {"message": "bad", "code": "x"}}
        )

    status, headers, body = await call(make_proxy(Upstream(respond=rate_limited)), "/v1/x")
    assert status == 400
    assert body == b'{"error":{"message":"bad","code":"x"}}'
    assert values(headers, b"x-upstream") == [b"yes"]
    assert values(headers, b"x-llm-proxy-provider") == [b"main"]


# -- x-request-id ----------------------------------------------------------------------------

GENERATED_ID = re.compile(r"[0-9a-f]{24}")


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("path", "method", "status"),
    [
        ("/v1/chat/completions", "POST", 200),
        ("/v1/models", "GET", 200),
        ("/healthz", "GET", 200),
        ("/nowhere", "GET", 404),
        ("/v1/../x", "POST", 400),
    ],
)
async def test_every_response_keeps_a_sane_inbound_request_id(
    proxy: LLMProxy, path: str, method: str, status: int
) -> None:
    inbound = b"req-2024.01:abc_DEF"
    got, headers, _ = await call(proxy, path, method=method, headers=[(b"x-request-id", inbound)])
    assert got == status
    assert values(headers, b"x-request-id") == [inbound]


@pytest.mark.anyio
async def test_request_id_is_generated_when_missing_and_unique(proxy: LLMProxy) -> None:
    ids = []
    for _ in range(3):
        _, headers, _ = await call(proxy, "/v1/chat/completions")
        [request_id] = values(headers, b"x-request-id")
        assert GENERATED_ID.fullmatch(request_id.decode())
        ids.append(request_id)
    assert len(set(ids)) == 3


@pytest.mark.anyio
@pytest.mark.parametrize(
    "inbound",
    [
        b"abc\r\nset-cookie: pwned=1",
        b"abc\ndef",
        b"a" * 500,
        b"",
        b"<script>alert(1)</script>",
        "caf\u00e9".encode("latin-1"),
    ],
    ids=["crlf", "lf", "500 chars", "empty", "markup", "non-ascii"],
)
async def test_malicious_request_id_is_replaced(proxy: LLMProxy, inbound: bytes) -> None:
    _, headers, _ = await call(proxy, "/v1/chat/completions", headers=[(b"x-request-id", inbound)])
    [request_id] = values(headers, b"x-request-id")
    assert GENERATED_ID.fullmatch(request_id.decode())
    assert not values(headers, b"set-cookie")


@pytest.mark.anyio
async def test_upstream_request_id_does_not_duplicate_ours() -> None:
    upstream = Upstream(headers=[("x-request-id", "req_upstream_1")])
    _, headers, _ = await call(
        make_proxy(upstream), "/v1/chat/completions", headers=[(b"x-request-id", b"mine")]
    )
    assert values(headers, b"x-request-id") == [b"mine"]


# -- upstream paths --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("route", "expected"),
    [
        ("/v1/chat/completions", "/chat/completions"),
        ("/v1//chat//completions/", "/chat/completions"),
        ("/v1/./files/./file-1", "/files/file-1"),
        ("/v1/files/a b", "/files/a%20b"),
        ("/v1/files/a?b#c", "/files/a%3Fb%23c"),
        ("/v1/files/%2e%2e", "/files/%252e%252e"),
        ("/v1/models/ft:gpt-4o:org@x", "/models/ft:gpt-4o:org@x"),
        ("/v1", "/"),
    ],
)
def test_upstream_path_stays_below_the_base_path(route: str, expected: str) -> None:
    assert upstream_path(route) == expected


@pytest.mark.parametrize(
    "route",
    ["/v1/..", "/v1/../secret", "/v1/a/../../secret", "/v1/a/..", "/v1/a\\..\\b", "/v1/a\\b"],
)
def test_upstream_path_refuses_dot_dot_and_backslashes(route: str) -> None:
    with pytest.raises(InvalidRequestError):
        upstream_path(route)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "path",
    ["/v1/..", "/v1/../secret", "/v1/a/../../secret", "/v1/chat/../../../etc/passwd"],
)
async def test_dot_dot_in_the_scope_path_is_400_and_never_reaches_the_provider(
    proxy: LLMProxy, upstream: Upstream, path: str
) -> None:
    status, headers, body = await call(proxy, path)
    assert status == 400
    assert b'"code":"invalid_request"' in body
    assert upstream.requests == []


@pytest.mark.anyio
@pytest.mark.parametrize(
    "raw",
    [
        "/v1/%2e%2e/secret",
        "/v1/a/%2E%2E/%2e%2e/secret",
        "/v1/%2e%2e%2fsecret",
        "/v1/..%2f..%2fsecret",
        "/v1/a%5c..%5csecret",
    ],
)
async def test_encoded_dot_dot_through_an_http_client_is_400(
    client: httpx.AsyncClient, upstream: Upstream, raw: str
) -> None:
    # httpx sends percent-encoded dots as they are; the ASGI scope path arrives decoded.
    response = await client.post(raw, json={"model": "m"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_request"
    assert upstream.requests == []


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/v1//chat//completions", "https://up.example/base/v1/chat/completions"),
        ("/v1/./files", "https://up.example/base/v1/files"),
        ("/v1/files/a%2Fb", "https://up.example/base/v1/files/a/b"),
        ("/v1/files/%252e%252e", "https://up.example/base/v1/files/%252e%252e"),
        ("/v1/files/a%3Fb", "https://up.example/base/v1/files/a%3Fb"),
    ],
)
async def test_odd_paths_stay_inside_the_base_path(
    client: httpx.AsyncClient, upstream: Upstream, raw: str, expected: str
) -> None:
    response = await client.post(raw, json={"model": "m"})
    assert response.status_code == 200
    assert str(upstream.last.url) == expected
    assert upstream.last.url.query == b""


@pytest.mark.anyio
async def test_query_string_is_forwarded_as_sent(
    client: httpx.AsyncClient, upstream: Upstream
) -> None:
    response = await client.get("/v1/files?purpose=fine-tune&after=file%2D1&limit=2")
    assert response.status_code == 200
    assert upstream.last.url.path == "/base/v1/files"
    assert upstream.last.url.query == b"purpose=fine-tune&after=file%2D1&limit=2"
    assert upstream.last.method == "GET"


# -- the run-time provider -------------------------------------------------------------------


def test_provider_repr_never_shows_the_key() -> None:
    config = ProviderConfig(kind="openai", api_key=OPENAI_KEY, headers={"api-key": AZURE_KEY})
    text = repr(Provider.from_config("gpt", config, EchoTransport()))
    assert "gpt" in text
    assert OPENAI_KEY not in text
    assert AZURE_KEY not in text


def test_default_transports_by_kind() -> None:
    openai = Provider.from_config("o", ProviderConfig(kind="openai"))
    echo = Provider.from_config("e", ProviderConfig(kind="echo"))
    assert isinstance(openai.transport, AiohttpTransport)
    assert isinstance(echo.transport, EchoTransport)
