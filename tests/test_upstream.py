"""UpstreamApp and the build_proxy stack, message by message.

These tests drive the app with scripted ``receive`` messages and record every ``send``, with
a transport whose headers and body chunks the test releases one at a time, so streaming,
completion and cancellation are visible (``httpx.ASGITransport`` would buffer them away).
The last test runs the real stack under uvicorn against a raw SSE server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn

from llm_proxy_mw import LLMProxy, UpstreamApp, build_proxy, get_context
from llm_proxy_mw.config import ProviderConfig
from llm_proxy_mw.context import ClientDisconnected
from llm_proxy_mw.errors import (
    InvalidRequestError,
    ProviderUnavailableError,
    RequestTooLargeError,
    UpstreamConnectError,
    UpstreamProtocolError,
)
from llm_proxy_mw.providers import Provider
from tests.asgi_helpers import (
    GUARD_SECONDS,
    LOOPBACK,
    AsgiDriver,
    RawServer,
    ScriptedResponse,
    ScriptedTransport,
    eventually,
    http_scope,
    sse_events,
)

pytestmark = pytest.mark.anyio

CANARY = "sk-canary-upstream-7f3a9c1e"
SSE = ("content-type", "text/event-stream; charset=utf-8")
JSON = ("content-type", "application/json")
CHAT_BODY = b'{"model": "gpt-test", "stream": true, "messages": []}'
MESSAGES_BODY = b'{"model": "claude-test", "stream": true, "max_tokens": 5, "messages": []}'


def single_app(transport: ScriptedTransport, **kwargs: Any) -> UpstreamApp:
    """UpstreamApp on its own, serving one OpenAI-kind provider named ``p``."""
    config = ProviderConfig(kind="openai", base_url="http://upstream.test/v1", api_key=CANARY)
    return UpstreamApp([Provider.from_config("p", config, transport)], **kwargs)


def stack(max_body_bytes: int = 1024) -> tuple[LLMProxy, ScriptedTransport, ScriptedTransport]:
    """The whole build_proxy stack with an OpenAI (``oa``) and an Anthropic (``an``) provider."""
    openai, anthropic = ScriptedTransport(), ScriptedTransport()
    once = {"max_attempts": 1}  # one attempt each: retries are test_retry.py's concern
    config = {
        "providers": {
            "oa": {
                "kind": "openai",
                "base_url": "http://oa.test/v1",
                "api_key": CANARY,
                "retry": once,
            },
            "an": {
                "kind": "anthropic",
                "base_url": "http://an.test/v1",
                "api_key": CANARY,
                "retry": once,
            },
        },
        "max_body_bytes": max_body_bytes,
    }
    proxy = build_proxy(config, transports={"oa": openai, "an": anthropic})
    return proxy, openai, anthropic


def flags(driver: AsgiDriver) -> list[tuple[bytes, bool]]:
    return [(m.get("body", b""), m.get("more_body", False)) for m in driver.body_messages]


# -- (a) no buffering, (b) one message per chunk -----------------------------------------------


async def test_first_chunk_reaches_the_client_before_the_upstream_produces_the_second() -> None:
    transport = ScriptedTransport()
    response = ScriptedResponse(200, [SSE])
    async with AsgiDriver(single_app(transport), http_scope()) as driver:
        driver.request(CHAT_BODY)
        driver.start()
        transport.respond(response)
        response.feed(b"data: one\n\n")

        await eventually(lambda: len(driver.body_messages) == 1 and response.waiting)
        # The client has chunk one while the app is still waiting for chunk two.
        assert flags(driver) == [(b"data: one\n\n", True)]
        assert response.reads == 1

        response.feed(b"data: two\n\n")
        await eventually(lambda: len(driver.body_messages) == 2)
        assert flags(driver)[1] == (b"data: two\n\n", True)
        response.end()
        await driver.finish()
    assert driver.status == 200
    assert flags(driver)[-1] == (b"", False)


@pytest.mark.parametrize(
    "chunks",
    [[b"a"], [b"first ", b"second ", b"third"], [b"x" * 70_000, b"y"]],
    ids=["one", "three", "large"],
)
async def test_each_upstream_chunk_becomes_one_body_message(chunks: list[bytes]) -> None:
    transport = ScriptedTransport()
    response = ScriptedResponse(200, [JSON])
    transport.respond(response)
    response.feed(*chunks)
    response.end()
    async with AsgiDriver(single_app(transport), http_scope()) as driver:
        await driver.run(b"{}")
    assert flags(driver) == [(c, True) for c in chunks] + [(b"", False)]
    assert response.closed == 1


async def test_with_content_length_the_last_data_chunk_ends_the_response() -> None:
    transport = ScriptedTransport()
    response = ScriptedResponse(200, [JSON, ("content-length", "11")])
    transport.respond(response)
    response.feed(b"hello", b" world")
    async with AsgiDriver(single_app(transport), http_scope()) as driver:
        await driver.run(b"{}")
    assert flags(driver) == [(b"hello", True), (b" world", False)]
    assert driver.headers["content-length"] == "11"
    assert response.reads == 2  # it did not wait for an end-of-body marker
    assert response.closed == 1


async def test_empty_body_with_content_length_zero_completes() -> None:
    transport = ScriptedTransport()
    response = ScriptedResponse(204, [("content-length", "0")])
    transport.respond(response)
    response.end()
    async with AsgiDriver(single_app(transport), http_scope()) as driver:
        await driver.run(b"{}")
    assert driver.status == 204
    assert flags(driver) == [(b"", False)]


async def test_response_headers_lose_hop_by_hop_fields_and_gain_provider_tags() -> None:
    transport = ScriptedTransport()
    upstream_headers = [
        JSON,
        ("Transfer-Encoding", "chunked"),
        ("Connection", "keep-alive, X-Hop"),
        ("Keep-Alive", "timeout=5"),
        ("X-Hop", "private to the connection"),
        ("X-RateLimit-Remaining-Requests", "99"),
        ("Openai-Processing-Ms", "12"),
    ]
    response = ScriptedResponse(200, upstream_headers)
    transport.respond(response)
    response.feed(b"{}")
    response.end()
    async with AsgiDriver(single_app(transport), http_scope()) as driver:
        await driver.run(b"{}")
    raw = driver.start_message["headers"]
    names = [name for name, _ in raw]
    assert names == [
        b"content-type",
        b"x-ratelimit-remaining-requests",
        b"openai-processing-ms",
        b"x-llm-proxy-provider",
        b"x-llm-proxy-attempts",
    ]
    assert driver.headers["x-llm-proxy-provider"] == "p"
    assert driver.headers["x-llm-proxy-attempts"] == "1"


#: Provider response headers that would act on the host app's whole origin, not on this one
#: response: cookies, wiping its storage, pinning it to HTTPS or to other hosts, reporting its
#: network errors to the provider, letting other sites read it, or a login prompt.
ORIGIN_HEADERS = [
    ("Set-Cookie", "__cf_bm=provider; Path=/; Domain=host.example; HttpOnly"),
    ("Set-Cookie", "session=overwritten; Path=/"),
    ("Set-Cookie2", "legacy=1"),
    ("Clear-Site-Data", '"cookies", "storage"'),
    ("Strict-Transport-Security", "max-age=31536000; includeSubDomains; preload"),
    ("Alt-Svc", 'h3=":443"; ma=86400'),
    ("Public-Key-Pins", 'pin-sha256="x"; max-age=5184000'),
    ("Public-Key-Pins-Report-Only", 'pin-sha256="x"; report-uri="https://up.example/r"'),
    ("Expect-CT", "max-age=86400, enforce"),
    ("NEL", '{"report_to":"cf-nel","max_age":604800}'),
    ("Report-To", '{"group":"cf-nel","endpoints":[{"url":"https://up.example/nel"}]}'),
    ("Access-Control-Allow-Origin", "*"),
    ("Access-Control-Allow-Credentials", "true"),
    ("Access-Control-Expose-Headers", "x-request-id"),
    ("WWW-Authenticate", 'Basic realm="provider"'),
]


@pytest.mark.parametrize(
    ("status", "content_type", "body"),
    [
        (200, JSON, [b'{"id": "chatcmpl-1"}']),
        (200, SSE, [b'data: {"n": 1}\n\n', b"data: [DONE]\n\n"]),
        (401, JSON, [b'{"error": {"message": "bad key"}}']),
    ],
    ids=["json", "sse", "error"],
)
async def test_headers_acting_on_the_hosts_origin_never_reach_the_client(
    status: int, content_type: tuple[str, str], body: list[bytes]
) -> None:
    proxy, openai, _ = stack()
    kept = [content_type, ("X-RateLimit-Remaining-Tokens", "9"), ("Content-Security-Policy", "x")]
    response = ScriptedResponse(status, [*kept, *ORIGIN_HEADERS])
    openai.respond(response)
    response.feed(*body)
    response.end()
    async with AsgiDriver(proxy, http_scope()) as driver:
        await driver.run(CHAT_BODY)
    assert driver.status == status
    names = {name for name, _ in driver.start_message["headers"]}
    assert names.isdisjoint(name.lower().encode() for name, _ in ORIGIN_HEADERS)
    assert {b"content-type", b"x-ratelimit-remaining-tokens", b"content-security-policy"} <= names
    assert driver.body == b"".join(body)


# -- (c) a stream that fails mid-way -------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "provider"),
    [("/v1/chat/completions", CHAT_BODY, "oa"), ("/v1/messages", MESSAGES_BODY, "an")],
    ids=["openai", "anthropic"],
)
async def test_sse_stream_failing_mid_way_ends_with_an_error_event_in_the_wire_format(
    path: str, body: bytes, provider: str, caplog: pytest.LogCaptureFixture
) -> None:
    proxy, openai, anthropic = stack()
    transport = openai if provider == "oa" else anthropic
    response = ScriptedResponse(200, [SSE])
    transport.respond(response)
    # The upstream leaves a partial event behind before it breaks.
    response.feed(b'data: {"n": 1}\n\n', b'data: {"partial')
    response.fail(UpstreamProtocolError("The provider closed the connection unexpectedly."))
    async with AsgiDriver(proxy, http_scope(path)) as driver:
        await driver.run(body)

    assert driver.status == 200
    messages = flags(driver)
    assert [more for _, more in messages] == [True, True, False]
    events = sse_events(driver.body)
    assert events[0] == {"data": '{"n": 1}'}
    last = events[-1]
    if provider == "oa":
        assert set(last) == {"data"}
        error = json.loads(last["data"])["error"]
        assert error["code"] == "protocol_error"
        assert error["type"] == "api_error"
        assert error["message"]
    else:
        assert last["event"] == "error"
        payload = json.loads(last["data"])
        assert payload["type"] == "error"
        assert payload["error"]["type"] == "api_error"
        assert payload["error"]["message"]
    assert response.closed == 1
    ctx = get_context(driver.scope)
    assert [(a.provider, a.outcome, a.status) for a in ctx.attempts] == [
        (provider, "protocol_error", 200)
    ]
    assert any("UpstreamProtocolError" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("content_length", [None, "1000"], ids=["chunked", "content-length"])
async def test_non_sse_stream_failing_mid_way_is_left_incomplete(
    content_length: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    proxy, openai, _ = stack()
    headers = [JSON] if content_length is None else [JSON, ("content-length", content_length)]
    response = ScriptedResponse(200, headers)
    openai.respond(response)
    response.feed(b'{"id": "x", ')
    response.fail(UpstreamProtocolError("The provider's response body was incomplete."))
    async with AsgiDriver(proxy, http_scope()) as driver:
        await driver.run(CHAT_BODY)  # returns without raising

    assert driver.status == 200
    assert flags(driver) == [(b'{"id": "x", ', True)]
    assert not driver.complete
    assert response.closed == 1
    assert get_context(driver.scope).attempts[0].outcome == "protocol_error"
    assert any("UpstreamProtocolError" in r.getMessage() for r in caplog.records)


async def test_upstream_app_alone_raises_the_mid_stream_error_for_a_non_sse_body() -> None:
    transport = ScriptedTransport()
    response = ScriptedResponse(200, [JSON])
    transport.respond(response)
    response.feed(b"{")
    response.fail(UpstreamProtocolError("broken"))
    async with AsgiDriver(single_app(transport), http_scope()) as driver:
        with pytest.raises(UpstreamProtocolError) as caught:
            await driver.run(b"{}")
    assert caught.value.provider == "p"
    assert not driver.complete
    assert response.closed == 1


# -- (d) client disconnect ---------------------------------------------------------------------


async def test_disconnect_while_waiting_for_headers_cancels_the_upstream_send() -> None:
    proxy, openai, _ = stack()
    async with AsgiDriver(proxy, http_scope()) as driver:
        driver.request(CHAT_BODY)
        driver.start()
        await eventually(lambda: openai.in_send)
        driver.disconnect()
        await driver.finish()  # returns without raising
        assert driver.task is not None
        assert driver.task.cancelling() == 0  # the cancellation was absorbed, not leaked
    assert openai.send_cancelled
    assert driver.sent == []


async def test_upstream_app_alone_turns_a_disconnect_into_client_disconnected() -> None:
    transport = ScriptedTransport()
    async with AsgiDriver(single_app(transport), http_scope()) as driver:
        driver.request(b"{}")
        driver.start()
        await eventually(lambda: transport.in_send)
        driver.disconnect()
        with pytest.raises(ClientDisconnected):
            await driver.finish()
    assert transport.send_cancelled
    assert get_context(driver.scope).attempts == []


async def test_disconnect_mid_stream_cancels_the_read_and_closes_the_response() -> None:
    proxy, openai, _ = stack()
    response = ScriptedResponse(200, [SSE])
    openai.respond(response)
    response.feed(b"data: one\n\n")
    async with AsgiDriver(proxy, http_scope()) as driver:
        driver.request(CHAT_BODY)
        driver.start()
        await eventually(lambda: len(driver.body_messages) == 1 and response.waiting)
        driver.disconnect()
        await driver.finish()
    assert response.read_cancelled
    assert response.closed == 1
    assert flags(driver) == [(b"data: one\n\n", True)]  # nothing after the disconnect


async def test_messages_other_than_a_disconnect_do_not_cancel_the_upstream() -> None:
    proxy, openai, _ = stack()
    response = ScriptedResponse(200, [JSON])
    async with AsgiDriver(proxy, http_scope()) as driver:
        driver.request(CHAT_BODY)
        driver.start()
        await eventually(lambda: openai.in_send)
        driver.request(b"")  # a stray empty body message, as a replaying server may send
        await eventually(lambda: driver.pending == 0)
        openai.respond(response)
        response.feed(b"{}")
        response.end()
        await driver.finish()
    assert not openai.send_cancelled
    assert flags(driver) == [(b"{}", True), (b"", False)]


async def test_disconnect_while_the_request_body_arrives_never_calls_the_provider() -> None:
    proxy, openai, _ = stack()
    async with AsgiDriver(proxy, http_scope()) as driver:
        driver.request_part(b'{"model": ', more_body=True)
        driver.disconnect()  # the rest of the body never comes
        driver.start()
        await driver.finish()
    assert openai.requests == []
    assert driver.sent == []


async def test_a_complete_response_is_not_turned_into_a_disconnect_while_closing() -> None:
    transport = ScriptedTransport()
    response = ScriptedResponse(200, [JSON], close_yields=2)
    transport.respond(response)
    response.feed(b"{}")
    response.end()
    scope = http_scope()
    async with AsgiDriver(single_app(transport), scope, disconnect_when_complete=True) as driver:
        driver.request(b"{}")
        driver.start()
        with contextlib.suppress(ClientDisconnected):
            await driver.finish()
        assert flags(driver) == [(b"{}", True), (b"", False)]  # the client got it all
        assert driver.task is not None and driver.task.exception() is None
    assert response.closed_fully  # the upstream connection was released, not abandoned


# -- (e) the request body ----------------------------------------------------------------------


async def test_request_body_reaches_the_transport_byte_identical_from_several_messages() -> None:
    transport = ScriptedTransport()
    response = ScriptedResponse(200, [JSON])
    transport.respond(response)
    response.end()
    parts = [b"\x00\xff binary ", b"", b'{ "not":  "normalised" }\r\n', b"\xe2\x82\xac tail"]
    scope = http_scope(
        "/v1/some/thing",
        headers=[
            ("content-type", "application/octet-stream"),
            ("authorization", "Bearer client-own-key"),
            ("openai-beta", "kept"),
        ],
        query_string=b"a=1&b=%20",
    )
    async with AsgiDriver(single_app(transport), scope) as driver:
        await driver.run(*parts)
    (request,) = transport.requests
    assert request.body == b"".join(parts)
    assert request.method == "POST"
    assert request.url == "http://upstream.test/v1/some/thing?a=1&b=%20"
    headers = dict(request.headers)
    assert headers["openai-beta"] == "kept"
    assert headers["content-type"] == "application/octet-stream"
    assert headers["authorization"] == f"Bearer {CANARY}"  # the provider's, not the client's
    assert driver.receive_calls >= len(parts)


async def test_request_body_through_the_stack_is_not_reserialised() -> None:
    proxy, _, anthropic = stack()
    response = ScriptedResponse(200, [JSON])
    anthropic.respond(response)
    response.end()
    body = '{"model":"claude-test",   "messages": [{"role":"user","content":"h\u00e9\\u00e9"}]}'
    parts = [body[:10].encode(), body[10:].encode()]
    async with AsgiDriver(proxy, http_scope("/v1/messages")) as driver:
        await driver.run(*parts)
    assert anthropic.requests[0].body == body.encode()
    assert driver.status == 200


async def test_declared_content_length_over_the_limit_is_refused_before_reading() -> None:
    proxy, openai, _ = stack(max_body_bytes=1024)
    scope = http_scope(headers=[JSON, ("content-length", "1025")])
    async with AsgiDriver(proxy, scope) as driver:
        await driver.run(b"x" * 1025)
    assert driver.status == 413
    assert driver.json()["error"]["code"] == "request_too_large"
    assert driver.receive_calls == 0
    assert openai.requests == []


async def test_upstream_app_alone_refuses_a_declared_oversized_body() -> None:
    transport = ScriptedTransport()
    scope = http_scope(headers=[JSON, ("content-length", "17")])
    async with AsgiDriver(single_app(transport, max_body_bytes=16), scope) as driver:
        with pytest.raises(RequestTooLargeError):
            await driver.run(b"x" * 17)
    assert driver.receive_calls == 0
    assert transport.requests == []


async def test_undeclared_body_over_the_limit_is_refused_once_it_passes_the_limit() -> None:
    proxy, openai, _ = stack(max_body_bytes=1024)
    async with AsgiDriver(proxy, http_scope()) as driver:
        await driver.run(*[b"x" * 400] * 5)
    assert driver.status == 413
    assert driver.json()["error"]["code"] == "request_too_large"
    assert driver.receive_calls == 3  # 1200 bytes > 1024: the other two parts stay unread
    assert openai.requests == []


async def test_upstream_app_alone_refuses_an_undeclared_oversized_body() -> None:
    transport = ScriptedTransport()
    async with AsgiDriver(single_app(transport, max_body_bytes=16), http_scope()) as driver:
        with pytest.raises(RequestTooLargeError):
            await driver.run(b"x" * 10, b"x" * 10, b"x" * 10)
    assert driver.receive_calls == 2
    assert transport.requests == []


@pytest.mark.parametrize("value", ["-1", "abc", "1.5", ""])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
async def test_bad_content_length_is_a_400_in_the_wire_format(value: str, path: str) -> None:
    proxy, openai, anthropic = stack()
    scope = http_scope(path, headers=[JSON, ("content-length", value)])
    async with AsgiDriver(proxy, scope) as driver:
        await driver.run(b"{}")
    assert driver.status == 400
    if path == "/v1/messages":
        assert driver.json()["type"] == "error"
        assert driver.json()["error"]["type"] == "invalid_request_error"
    else:
        assert driver.json()["error"]["code"] == "invalid_request"
    assert driver.receive_calls == 0
    assert openai.requests == anthropic.requests == []


@pytest.mark.parametrize("value", ["-1", "abc"])
async def test_upstream_app_alone_refuses_a_bad_content_length(value: str) -> None:
    transport = ScriptedTransport()
    scope = http_scope(headers=[JSON, ("content-length", value)])
    async with AsgiDriver(single_app(transport), scope) as driver:
        with pytest.raises(InvalidRequestError):
            await driver.run(b"{}")
    assert transport.requests == []


# -- (f) the recorded attempt ------------------------------------------------------------------


OUTCOMES = [
    (200, "success"),
    (302, "success"),
    (400, "client_error"),
    (429, "rate_limited"),
    (500, "server_error"),
    (503, "server_error"),
    (529, "overloaded"),
]


@pytest.mark.parametrize(("status", "outcome"), OUTCOMES)
async def test_attempt_records_provider_outcome_and_status(status: int, outcome: str) -> None:
    transport = ScriptedTransport()
    response = ScriptedResponse(status, [JSON, ("retry-after", "3")])
    transport.respond(response)
    response.feed(b'{"error": "upstream body"}')
    response.end()
    async with AsgiDriver(single_app(transport), http_scope()) as driver:
        await driver.run(b"{}")
    # Upstream HTTP errors pass through with their bodies and headers.
    assert driver.status == status
    assert driver.body == b'{"error": "upstream body"}'
    assert driver.headers["retry-after"] == "3"
    ctx = get_context(driver.scope)
    (attempt,) = ctx.attempts
    assert (attempt.provider, attempt.outcome, attempt.status) == ("p", outcome, status)
    assert attempt.latency >= 0
    assert ctx.provider == "p"


@pytest.mark.parametrize(("status", "outcome"), OUTCOMES)
async def test_stack_records_the_attempt_and_the_time_to_first_byte(
    status: int, outcome: str
) -> None:
    proxy, openai, _ = stack()
    response = ScriptedResponse(status, [JSON])
    openai.respond(response)
    response.feed(b'{"answer": 1}')
    response.end()
    async with AsgiDriver(proxy, http_scope()) as driver:
        await driver.run(CHAT_BODY)
    assert driver.status == status
    assert driver.body == b'{"answer": 1}'
    assert driver.headers["x-llm-proxy-provider"] == "oa"
    assert driver.headers["x-llm-proxy-attempts"] == "1"
    ctx = get_context(driver.scope)
    assert [(a.provider, a.outcome, a.status) for a in ctx.attempts] == [("oa", outcome, status)]
    assert ctx.ttfb is not None and ctx.ttfb >= 0


async def test_ttfb_is_set_when_the_first_body_byte_arrives() -> None:
    proxy, openai, _ = stack()
    response = ScriptedResponse(200, [SSE])
    async with AsgiDriver(proxy, http_scope()) as driver:
        driver.request(CHAT_BODY)
        driver.start()
        openai.respond(response)
        await eventually(lambda: len(driver.sent) == 1 and response.waiting)
        ctx = get_context(driver.scope)
        assert ctx.ttfb is None  # headers alone are not the first byte
        response.feed(b"data: 1\n\n")
        await eventually(lambda: len(driver.sent) == 2)
        assert ctx.ttfb is not None
        first = ctx.ttfb
        response.feed(b"data: 2\n\n")
        response.end()
        await driver.finish()
    assert ctx.ttfb == first


@pytest.mark.parametrize(
    ("path", "body", "provider"),
    [("/v1/chat/completions", CHAT_BODY, "oa"), ("/v1/messages", MESSAGES_BODY, "an")],
    ids=["openai", "anthropic"],
)
async def test_transport_error_is_recorded_and_rendered_in_the_wire_format(
    path: str, body: bytes, provider: str
) -> None:
    proxy, openai, anthropic = stack()
    transport = openai if provider == "oa" else anthropic
    transport.respond(UpstreamConnectError("Could not connect to the provider."))
    async with AsgiDriver(proxy, http_scope(path)) as driver:
        await driver.run(body)
    assert driver.status == 502
    payload = driver.json()
    if provider == "oa":
        assert payload["error"]["code"] == "connect_error"
    else:
        assert payload["type"] == "error"
        assert payload["error"]["type"] == "api_error"
    assert CANARY not in driver.body.decode()
    attempts = get_context(driver.scope).attempts
    assert [(a.provider, a.outcome, a.status) for a in attempts] == [
        (provider, "connect_error", None)
    ]


async def test_upstream_app_alone_raises_transport_errors_tagged_with_the_provider() -> None:
    transport = ScriptedTransport()
    transport.respond(UpstreamConnectError("Could not connect to the provider."))
    async with AsgiDriver(single_app(transport), http_scope()) as driver:
        with pytest.raises(UpstreamConnectError) as caught:
            await driver.run(b"{}")
    assert caught.value.provider == "p"
    assert driver.sent == []
    assert get_context(driver.scope).attempts[0].outcome == "connect_error"


async def test_upstream_app_with_several_providers_needs_a_routed_provider() -> None:
    config = ProviderConfig(kind="echo")
    app = UpstreamApp(
        {
            "a": Provider.from_config("a", config, ScriptedTransport()),
            "b": Provider.from_config("b", config, ScriptedTransport()),
        }
    )
    async with AsgiDriver(app, http_scope()) as driver:
        with pytest.raises(ProviderUnavailableError):
            await driver.run(b"{}")


async def test_upstream_app_ignores_non_http_scopes() -> None:
    transport = ScriptedTransport()
    async with AsgiDriver(single_app(transport), {"type": "lifespan"}) as driver:
        driver.start()
        await driver.finish()
    assert driver.receive_calls == 0
    assert driver.sent == []


# -- end to end: real uvicorn, a raw SSE provider, an httpx client -----------------------------


@contextlib.asynccontextmanager
async def serve_with_uvicorn(app: Any) -> AsyncIterator[str]:
    """Run ``app`` under uvicorn in this event loop on a pre-bound loopback socket."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((LOOPBACK, 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, lifespan="on", log_config=None, log_level="warning", access_log=False
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        for _ in range(1000):
            if server.started or task.done():
                break
            await asyncio.sleep(0.01)
        assert server.started, "uvicorn did not start"
        yield f"http://{LOOPBACK}:{port}"
    finally:
        server.should_exit = True
        async with asyncio.timeout(10):
            await task
        sock.close()


@pytest.mark.e2e
async def test_streaming_end_to_end_under_uvicorn() -> None:
    events = [
        b'data: {"choices": [{"delta": {"content": "Hel"}}]}\n\n',
        b'data: {"choices": [{"delta": {"content": "lo"}}]}\n\n',
        b"data: [DONE]\n\n",
    ]
    release_last = asyncio.Event()

    async def provider(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        for i, event in enumerate(events):
            if i == len(events) - 1:
                await release_last.wait()
            writer.write(b"%x\r\n%s\r\n" % (len(event), event))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async with RawServer(provider) as server:
        config = {
            "providers": {
                "up": {"kind": "openai", "base_url": f"{server.url}/v1", "api_key": CANARY}
            }
        }
        proxy = build_proxy(config)
        async with serve_with_uvicorn(proxy) as url, httpx.AsyncClient(base_url=url) as client:
            request_body = {"model": "gpt-test", "stream": True, "messages": []}
            async with client.stream(
                "POST",
                "/v1/chat/completions",
                json=request_body,
                headers={"authorization": "Bearer client-key"},
            ) as response:
                assert response.status_code == 200
                assert response.headers["x-llm-proxy-provider"] == "up"
                received = b""
                chunks = response.aiter_raw()
                try:
                    # A proxy that buffered would hang here: the guard turns that into a failure.
                    async with asyncio.timeout(GUARD_SECONDS):
                        async for chunk in chunks:
                            received += chunk
                            if b"\n\n" in received:
                                break
                    # The first event is here, and the provider has not sent the last one yet.
                    assert received.startswith(events[0])
                    assert not release_last.is_set()
                finally:
                    release_last.set()
                async for chunk in chunks:
                    received += chunk
        assert received == b"".join(events)
        (upstream_request,) = server.requests
        assert upstream_request.target == "/v1/chat/completions"
        assert upstream_request.header("authorization") == f"Bearer {CANARY}"
        # The stream is always counted: the proxy asked for the usage the client did not.
        asked = {**request_body, "stream_options": {"include_usage": True}}
        assert json.loads(upstream_request.body) == asked
