"""The upstream transports: the httpx adapter (respx, MockTransport) and the aiohttp default.

The httpx adapter is driven with respx (``MockRouter(using=None)`` inside an
``httpx.MockTransport``, no global patching) and with plain ``httpx.MockTransport``; every
httpx exception must come out as its own typed error, from ``send`` and from a body that
breaks mid-way, and through the whole proxy as the right status and wire-format body, with
the provider's key nowhere in the answer or the logs. The aiohttp transport runs against
tiny raw servers on loopback whose bytes each test writes by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import gzip
import json
import logging
import socket
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import httpx
import pytest
import respx

from llm_proxy_mw import build_proxy
from llm_proxy_mw.config import PoolConfig, ProviderConfig, TimeoutConfig
from llm_proxy_mw.errors import (
    UpstreamConnectError,
    UpstreamConnectTimeout,
    UpstreamError,
    UpstreamPoolTimeout,
    UpstreamProtocolError,
    UpstreamReadTimeout,
    UpstreamWriteTimeout,
)
from llm_proxy_mw.providers import Provider
from llm_proxy_mw.transports import (
    AiohttpTransport,
    HttpxTransport,
    PoolLimits,
    Timeouts,
    UpstreamRequest,
    UpstreamResponse,
)
from tests.asgi_helpers import (
    GUARD_SECONDS,
    LOOPBACK,
    RawServer,
    reset_connection,
    sse_events,
)

pytestmark = pytest.mark.anyio

CANARY = "sk-canary-transport-5d2e8b07"
OPENAI_URL = "https://api.openai.test/v1"
ANTHROPIC_URL = "https://api.anthropic.test/v1"

Handler = Callable[[httpx.Request], Awaitable[httpx.Response]]

# (httpx exception, our error, status, code)
HTTPX_ERRORS: list[tuple[type[httpx.HTTPError], type[UpstreamError], int, str]] = [
    (httpx.ConnectError, UpstreamConnectError, 502, "connect_error"),
    (httpx.ConnectTimeout, UpstreamConnectTimeout, 504, "timeout"),
    (httpx.ReadTimeout, UpstreamReadTimeout, 504, "timeout"),
    (httpx.WriteTimeout, UpstreamWriteTimeout, 504, "timeout"),
    (httpx.PoolTimeout, UpstreamPoolTimeout, 503, "pool_timeout"),
    (httpx.RemoteProtocolError, UpstreamProtocolError, 502, "protocol_error"),
    (httpx.ReadError, UpstreamProtocolError, 502, "protocol_error"),
    (httpx.WriteError, UpstreamProtocolError, 502, "protocol_error"),
    (httpx.UnsupportedProtocol, UpstreamProtocolError, 502, "protocol_error"),
]
HTTPX_ERROR_IDS = [exc.__name__ for exc, *_ in HTTPX_ERRORS]
MOCKERS = ["respx", "mock_transport"]


def leaky(exc_type: type[httpx.HTTPError]) -> httpx.HTTPError:
    """An httpx exception whose message carries the provider key, as a careless one could."""
    return exc_type(f"failed sending authorization: Bearer {CANARY}")


def httpx_transport(mocker: str, handler: Handler) -> HttpxTransport:
    """``handler`` behind respx (as a route side effect) or behind a bare MockTransport."""
    if mocker == "respx":
        router = respx.MockRouter(using=None)
        router.route().mock(side_effect=handler)
        return HttpxTransport(httpx.MockTransport(router.async_handler))
    return HttpxTransport(httpx.MockTransport(handler))


def chat_request(url: str = OPENAI_URL) -> UpstreamRequest:
    return UpstreamRequest(
        "POST",
        f"{url}/chat/completions",
        [("content-type", "application/json"), ("authorization", f"Bearer {CANARY}")],
        b'{"model": "gpt-test"}',
    )


def breaking_body(first: bytes, error: BaseException) -> AsyncIterator[bytes]:
    async def body() -> AsyncIterator[bytes]:
        yield first
        raise error

    return body()


def assert_typed(
    error: UpstreamError, expected: type[UpstreamError], status: int, code: str
) -> None:
    assert type(error) is expected
    assert (error.status_code, error.code) == (status, code)
    # Converted at the boundary: no httpx exception rides along, and no key in the message.
    assert error.__cause__ is None and error.__suppress_context__
    assert CANARY not in str(error) and CANARY not in error.message


def assert_no_canary_in_logs(caplog: pytest.LogCaptureFixture) -> None:
    assert caplog.records, "the failure should have been logged"
    for record in caplog.records:
        assert CANARY not in record.getMessage()
        assert CANARY not in repr(record.args)
    assert CANARY not in caplog.text  # formatted, with any traceback


# -- HttpxTransport ------------------------------------------------------------------------


@pytest.mark.parametrize("mocker", MOCKERS)
@pytest.mark.parametrize(("exc", "expected", "status", "code"), HTTPX_ERRORS, ids=HTTPX_ERROR_IDS)
async def test_httpx_send_errors_become_their_own_typed_errors(
    mocker: str,
    exc: type[httpx.HTTPError],
    expected: type[UpstreamError],
    status: int,
    code: str,
) -> None:
    seen: list[httpx.Request] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        raise leaky(exc)

    transport = httpx_transport(mocker, handler)
    with pytest.raises(UpstreamError) as caught:
        await transport.send(chat_request())
    assert_typed(caught.value, expected, status, code)
    assert seen[0].headers["authorization"] == f"Bearer {CANARY}"
    await transport.aclose()


@pytest.mark.parametrize("mocker", MOCKERS)
@pytest.mark.parametrize(("exc", "expected", "status", "code"), HTTPX_ERRORS, ids=HTTPX_ERROR_IDS)
async def test_httpx_body_errors_mid_way_become_their_own_typed_errors(
    mocker: str,
    exc: type[httpx.HTTPError],
    expected: type[UpstreamError],
    status: int,
    code: str,
) -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=breaking_body(b"first part", leaky(exc)))

    transport = httpx_transport(mocker, handler)
    response = await transport.send(chat_request())
    assert response.status == 200
    assert await response.read_chunk() == b"first part"
    with pytest.raises(UpstreamError) as caught:
        await response.read_chunk()
    assert_typed(caught.value, expected, status, code)
    await response.aclose()


async def test_httpx_respx_route_with_an_exception_class_side_effect() -> None:
    router = respx.MockRouter(using=None)
    route = router.post(f"{OPENAI_URL}/chat/completions").mock(
        side_effect=[httpx.ConnectTimeout, httpx.Response(200, json={"ok": True})]
    )
    transport = HttpxTransport(httpx.MockTransport(router.async_handler))
    with pytest.raises(UpstreamConnectTimeout):
        await transport.send(chat_request())
    response = await transport.send(chat_request())
    assert response.status == 200
    assert json.loads(await response.read_all()) == {"ok": True}
    assert route.call_count == 2


async def test_httpx_request_is_forwarded_as_given_with_the_configured_timeouts() -> None:
    seen: list[httpx.Request] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, headers=[("X-Upstream", "yes")], content=b"created")

    transport = HttpxTransport(
        httpx.MockTransport(handler),
        timeout=Timeouts(connect=1.0, read=2.0, write=3.0, pool=4.0),
    )
    request = UpstreamRequest(
        "PUT",
        f"{OPENAI_URL}/files/a%2Fb?x=%20y&z=1",
        [("x-latin", "caf\xe9"), ("x-dup", "1"), ("x-dup", "2")],
        b"\x00\x01binary",
    )
    response = await transport.send(request)
    assert response.status == 201
    assert (b"X-Upstream", b"yes") in list(response.headers)
    assert await response.read_all() == b"created"
    (sent,) = seen
    assert sent.method == "PUT"
    assert sent.url.raw_path == b"/v1/files/a%2Fb?x=%20y&z=1"
    assert sent.headers.get_list("x-dup") == ["1", "2"]
    assert (b"x-latin", b"caf\xe9") in sent.headers.raw
    assert sent.content == b"\x00\x01binary"
    assert sent.extensions["timeout"] == {"connect": 1.0, "read": 2.0, "write": 3.0, "pool": 4.0}


async def test_httpx_empty_chunks_do_not_end_the_body() -> None:
    async def body() -> AsyncIterator[bytes]:
        for part in (b"", b"a", b"", b"", b"b", b""):
            yield part

    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body())

    transport = HttpxTransport(httpx.MockTransport(handler))
    response = await transport.send(chat_request())
    assert [await response.read_chunk() for _ in range(3)] == [b"a", b"b", b""]


async def test_httpx_response_close_closes_the_upstream_stream() -> None:
    class Stream(httpx.AsyncByteStream):
        closed = 0

        async def __aiter__(self) -> AsyncIterator[bytes]:
            yield b"never read to the end"

        async def aclose(self) -> None:
            Stream.closed += 1

    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=Stream())

    transport = HttpxTransport(httpx.MockTransport(handler))
    response = await transport.send(chat_request())
    await response.aclose()
    await response.aclose()
    assert Stream.closed == 1


async def test_httpx_default_transport_uses_the_pool_limits_and_closes() -> None:
    transport = HttpxTransport(
        pool=PoolLimits(max_connections=7, max_keepalive_connections=3, keepalive_expiry=2.5)
    )
    inner = transport._transport
    assert isinstance(inner, httpx.AsyncHTTPTransport)
    pool = inner._pool
    assert (pool._max_connections, pool._max_keepalive_connections) == (7, 3)
    assert pool._keepalive_expiry == 2.5
    await transport.aclose()
    await transport.aclose()


async def test_httpx_aclose_closes_the_wrapped_transport() -> None:
    class Recording(httpx.AsyncBaseTransport):
        closed = 0

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            raise AssertionError("not used")

        async def aclose(self) -> None:
            self.closed += 1

    inner = Recording()
    await HttpxTransport(inner).aclose()
    assert inner.closed == 1


# -- HttpxTransport through the whole proxy ------------------------------------------------


def proxy_client(mocker: str, handler: Handler) -> tuple[Any, httpx.AsyncClient]:
    once = {"max_attempts": 1}
    config = {
        "providers": {
            "oa": {"kind": "openai", "base_url": OPENAI_URL, "api_key": CANARY, "retry": once},
            "an": {
                "kind": "anthropic",
                "base_url": ANTHROPIC_URL,
                "api_key": CANARY,
                "retry": once,
            },
        }
    }
    proxy = build_proxy(
        config,
        transports={"oa": httpx_transport(mocker, handler), "an": httpx_transport(mocker, handler)},
    )
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=proxy), base_url="http://proxy")
    return proxy, client


WIRE = [
    ("/v1/chat/completions", {"model": "gpt-test", "messages": []}),
    ("/v1/messages", {"model": "claude-test", "max_tokens": 5, "messages": []}),
]


@pytest.mark.parametrize("mocker", MOCKERS)
@pytest.mark.parametrize(("path", "body"), WIRE, ids=["openai", "anthropic"])
@pytest.mark.parametrize(
    ("exc", "expected", "status", "code"), HTTPX_ERRORS[:6], ids=HTTPX_ERROR_IDS[:6]
)
async def test_httpx_errors_reach_the_client_in_its_wire_format_without_the_key(
    mocker: str,
    path: str,
    body: dict[str, Any],
    exc: type[httpx.HTTPError],
    expected: type[UpstreamError],
    status: int,
    code: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    seen: list[httpx.Request] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        raise leaky(exc)

    proxy, client = proxy_client(mocker, handler)
    async with proxy.lifespan(), client:
        response = await client.post(path, json=body, headers={"x-api-key": "client-key"})

    assert response.status_code == status
    assert CANARY not in response.text
    assert all(CANARY not in v for v in response.headers.values())
    payload = response.json()
    if path == "/v1/messages":
        assert payload["type"] == "error"
        assert payload["error"]["type"] == expected.anthropic_type
        assert payload["error"]["message"]
    else:
        assert payload["error"]["code"] == code
        assert payload["error"]["type"] == expected.openai_type
    # The key did go upstream (so its absence above means something), the client's did not.
    credentials = [seen[0].headers.get(n, "") for n in ("authorization", "x-api-key")]
    assert any(CANARY in value for value in credentials)
    assert all("client-key" not in value for value in credentials)
    assert_no_canary_in_logs(caplog)


@pytest.mark.parametrize("mocker", MOCKERS)
@pytest.mark.parametrize(("path", "body"), WIRE, ids=["openai", "anthropic"])
@pytest.mark.parametrize(
    ("exc", "expected", "status", "code"), HTTPX_ERRORS[:6], ids=HTTPX_ERROR_IDS[:6]
)
async def test_httpx_stream_breaking_mid_way_ends_with_an_error_event_without_the_key(
    mocker: str,
    path: str,
    body: dict[str, Any],
    exc: type[httpx.HTTPError],
    expected: type[UpstreamError],
    status: int,
    code: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    first = b'data: {"n": 1}\n\n'

    async def handler(request: httpx.Request) -> httpx.Response:
        headers = {"content-type": "text/event-stream"}
        return httpx.Response(200, headers=headers, content=breaking_body(first, leaky(exc)))

    proxy, client = proxy_client(mocker, handler)
    async with proxy.lifespan(), client:
        response = await client.post(path, json={**body, "stream": True})

    assert response.status_code == 200  # the stream had started
    assert response.content.startswith(first)
    assert CANARY not in response.text
    last = sse_events(response.content)[-1]
    if path == "/v1/messages":
        assert last["event"] == "error"
        assert json.loads(last["data"])["error"]["type"] == expected.anthropic_type
    else:
        assert json.loads(last["data"])["error"]["code"] == code
    assert_no_canary_in_logs(caplog)


# -- AiohttpTransport against raw servers ----------------------------------------------------


def raw_request(server: RawServer, path: str = "/v1/chat/completions") -> UpstreamRequest:
    return UpstreamRequest(
        "POST",
        f"{server.url}{path}",
        [("content-type", "application/json"), ("authorization", f"Bearer {CANARY}")],
        b'{"model": "gpt-test"}',
    )


async def read_at_least(response: UpstreamResponse, size: int) -> bytes:
    data = b""
    async with asyncio.timeout(GUARD_SECONDS):
        while len(data) < size:
            chunk = await response.read_chunk()
            assert chunk, f"body ended after {data!r}"
            data += chunk
    return data


def closed_port() -> int:
    """A loopback port nothing listens on: bound, then closed."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((LOOPBACK, 0))
    port: int = sock.getsockname()[1]
    sock.close()
    return port


async def test_aiohttp_response_with_content_length() -> None:
    body = b'{"id": "chatcmpl-1", "choices": []}'

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"X-Request-Id: upstream-1\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        await writer.drain()

    transport = AiohttpTransport()
    async with RawServer(handler) as server:
        try:
            response = await transport.send(raw_request(server))
            assert response.status == 200
            headers = [(k.lower(), v) for k, v in response.headers]
            assert (b"content-length", str(len(body)).encode()) in headers
            assert (b"x-request-id", b"upstream-1") in headers
            assert await response.read_all() == body
        finally:
            await transport.aclose()
    (request,) = server.requests
    assert (request.method, request.target) == ("POST", "/v1/chat/completions")
    assert request.body == b'{"model": "gpt-test"}'
    assert request.header("authorization") == f"Bearer {CANARY}"
    assert request.header("content-type") == "application/json"
    # No automatic headers: bytes pass through exactly as the client and provider sent them.
    assert request.header("user-agent") is None
    assert request.header("accept-encoding") is None


async def test_aiohttp_chunked_response_streams_chunk_by_chunk() -> None:
    first, second = b"data: one\n\n", b"data: two\n\n"
    second_allowed = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        writer.write(b"%x\r\n%s\r\n" % (len(first), first))
        await writer.drain()
        await second_allowed.wait()
        writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(second), second))
        await writer.drain()

    transport = AiohttpTransport()
    async with RawServer(handler) as server:
        try:
            response = await transport.send(raw_request(server))
            assert (b"Transfer-Encoding", b"chunked") in list(response.headers)
            assert await read_at_least(response, len(first)) == first
            assert not second_allowed.is_set()  # it arrived before the server sent more
            second_allowed.set()
            assert await response.read_all() == second
        finally:
            await transport.aclose()


async def test_aiohttp_adds_no_headers_of_its_own() -> None:
    """aiohttp would add Accept, Accept-Encoding, User-Agent and, for a body, Content-Type:
    the provider gets exactly the headers the proxy forwards, and the body's length."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        await writer.drain()

    transport = AiohttpTransport()
    async with RawServer(handler) as server:
        try:
            request = UpstreamRequest(
                "POST", f"{server.url}/v1/embeddings", [("x-trace", "t-1")], b"\x00\x01"
            )
            response = await transport.send(request)
            await response.aclose()
        finally:
            await transport.aclose()
    (sent,) = server.requests
    names = sorted(name.lower() for name, _ in sent.headers)
    assert names == ["content-length", "host", "x-trace"]
    assert sent.header("x-trace") == "t-1"
    assert sent.body == b"\x00\x01"


async def test_aiohttp_transport_refuses_a_loop_other_than_its_sessions() -> None:
    """aiohttp's session belongs to the loop it was opened on: a request from another loop
    gets an error that says so, before anything is sent."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        await writer.drain()

    transport = AiohttpTransport()
    async with RawServer(handler) as server:
        try:
            await (await transport.send(raw_request(server))).aclose()

            def from_another_loop() -> None:
                with pytest.raises(RuntimeError, match="another event loop: aclose"):
                    asyncio.run(transport.send(raw_request(server)))

            await asyncio.to_thread(from_another_loop)
        finally:
            await transport.aclose()
    assert len(server.requests) == 1


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_aiohttp_gzip_body_passes_through_undecoded(framing: str) -> None:
    compressed = gzip.compress(b'{"text": "' + b"hello " * 200 + b'"}')

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
        if framing == "chunked":
            writer.write(head + b"Transfer-Encoding: chunked\r\n\r\n")
            writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(compressed), compressed))
        else:
            writer.write(head + b"Content-Length: %d\r\n\r\n%s" % (len(compressed), compressed))
        await writer.drain()

    transport = AiohttpTransport()
    async with RawServer(handler) as server:
        try:
            request = raw_request(server)
            request.headers.append(("accept-encoding", "gzip"))
            response = await transport.send(request)
            assert (b"Content-Encoding", b"gzip") in list(response.headers)
            assert await response.read_all() == compressed
        finally:
            await transport.aclose()
    assert server.requests[0].header("accept-encoding") == "gzip"


async def test_aiohttp_connection_refused_is_a_connect_error() -> None:
    transport = AiohttpTransport(timeout=Timeouts(connect=5.0))
    request = chat_request(f"http://{LOOPBACK}:{closed_port()}/v1")
    try:
        with pytest.raises(UpstreamError) as caught:
            await transport.send(request)
    finally:
        await transport.aclose()
    assert type(caught.value) is UpstreamConnectError
    assert (caught.value.status_code, caught.value.code) == (502, "connect_error")
    assert CANARY not in str(caught.value)


async def test_aiohttp_server_that_never_answers_is_a_read_timeout() -> None:
    never = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        await never.wait()

    transport = AiohttpTransport(timeout=Timeouts(read=0.2))
    async with RawServer(handler) as server:
        try:
            with pytest.raises(UpstreamError) as caught:
                await transport.send(raw_request(server))
        finally:
            await transport.aclose()
    assert type(caught.value) is UpstreamReadTimeout
    assert caught.value.status_code == 504
    assert len(server.requests) == 1


async def answer_abc_then_stall(
    server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Promise 10 body bytes, send 3, then nothing: a body that stalls."""
    await server.read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    await writer.drain()
    await asyncio.Event().wait()


@contextlib.asynccontextmanager
async def stalled_response(read: float) -> AsyncIterator[UpstreamResponse]:
    """An aiohttp response whose first 3 bytes were read and whose rest never comes."""
    transport = AiohttpTransport(timeout=Timeouts(read=read))
    async with RawServer(lambda r, w: answer_abc_then_stall(server, r, w)) as server:
        try:
            response = await transport.send(raw_request(server))
            assert await read_at_least(response, 3) == b"abc"
            yield response
            await response.aclose()
        finally:
            await transport.aclose()


async def test_aiohttp_body_that_stalls_is_a_read_timeout_from_read_chunk() -> None:
    # Not 0.2 as above: here the headers must beat the timer even on a loaded machine.
    async with stalled_response(read=0.5) as response:
        with pytest.raises(UpstreamReadTimeout):
            await response.read_chunk()


async def test_aiohttp_read_timeout_bounds_each_wait_not_the_whole_body() -> None:
    """A stream that keeps sending, each chunk well within ``read``, outlasts ``read`` in
    total without timing out: the bound is per wait for data, as documented."""
    chunks = [b"data: %d\n\n" % i for i in range(8)]

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(b"".join(chunks)))
        for chunk in chunks:
            await asyncio.sleep(0.1)
            writer.write(chunk)
            await writer.drain()

    # 8 chunks 0.1 s apart: 0.8 s in all against a read bound of 0.4 s.
    transport = AiohttpTransport(timeout=Timeouts(read=0.4))
    async with RawServer(handler) as server:
        try:
            response = await transport.send(raw_request(server))
            async with asyncio.timeout(GUARD_SECONDS):
                assert await response.read_all() == b"".join(chunks)
        finally:
            await transport.aclose()


async def test_aiohttp_read_timeout_does_not_count_time_between_reads() -> None:
    """While the caller is busy elsewhere (a slow client downstream), nothing waits for the
    provider, so that time is not a stalled read."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nabc")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"def")
        await writer.drain()

    transport = AiohttpTransport(timeout=Timeouts(read=0.3))
    async with RawServer(handler) as server:
        try:
            response = await transport.send(raw_request(server))
            assert await read_at_least(response, 3) == b"abc"
            await asyncio.sleep(0.6)  # busy for twice the read bound, not reading
            assert await read_at_least(response, 3) == b"def"
            assert await response.read_chunk() == b""
            await response.aclose()
        finally:
            await transport.aclose()


async def test_aiohttp_cancelling_a_read_is_not_mistaken_for_a_read_timeout() -> None:
    """A cancellation from elsewhere (the client left) propagates as a cancellation."""
    async with stalled_response(read=0.3) as response:
        reading = asyncio.create_task(response.read_chunk())
        await asyncio.sleep(0.05)
        reading.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reading


async def test_aiohttp_reset_before_headers_is_a_protocol_error() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        reset_connection(writer)

    transport = AiohttpTransport()
    async with RawServer(handler) as server:
        try:
            with pytest.raises(UpstreamError) as caught:
                await transport.send(raw_request(server))
        finally:
            await transport.aclose()
    assert type(caught.value) is UpstreamProtocolError
    assert caught.value.status_code == 502


async def test_aiohttp_close_before_headers_is_a_protocol_error() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)  # then a clean FIN, without a response

    transport = AiohttpTransport()
    async with RawServer(handler) as server:
        try:
            with pytest.raises(UpstreamProtocolError):
                await transport.send(raw_request(server))
        finally:
            await transport.aclose()


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_aiohttp_reset_mid_body_is_a_protocol_error(framing: str) -> None:
    part = b"data: partial event\n\n"
    first_read = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        if framing == "chunked":
            head = b"Transfer-Encoding: chunked\r\n\r\n"
            writer.write(b"HTTP/1.1 200 OK\r\n" + head + b"%x\r\n%s\r\n" % (len(part), part))
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + part)
        await writer.drain()
        await first_read.wait()  # reset only once the client holds the first bytes
        reset_connection(writer)

    transport = AiohttpTransport()
    async with RawServer(handler) as server:
        try:
            response = await transport.send(raw_request(server))
            assert await read_at_least(response, len(part)) == part
            first_read.set()
            with pytest.raises(UpstreamError) as caught:
                await read_at_least(response, 1000)
            await response.aclose()
        finally:
            await transport.aclose()
    assert type(caught.value) is UpstreamProtocolError


async def test_aiohttp_redirect_to_another_host_is_not_followed() -> None:
    async def elsewhere(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await other.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nstolen")
        await writer.drain()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        location = f"{other.url}/v1/chat/completions".encode()
        writer.write(
            b"HTTP/1.1 302 Found\r\nLocation: %s\r\nContent-Length: 5\r\n\r\nmoved" % location
        )
        await writer.drain()

    transport = AiohttpTransport()
    async with RawServer(elsewhere) as other, RawServer(handler) as server:
        try:
            response = await transport.send(raw_request(server))
            assert response.status == 302
            assert (b"Location", f"{other.url}/v1/chat/completions".encode()) in list(
                response.headers
            )
            assert await response.read_all() == b"moved"

            # Through the whole proxy, the client gets the 302 itself.
            config = {"providers": {"up": {"kind": "openai", "base_url": f"{server.url}/v1"}}}
            config["providers"]["up"]["api_key"] = CANARY
            proxy = build_proxy(config, transports={"up": transport})
            client = httpx.AsyncClient(
                transport=httpx.ASGITransport(app=proxy), base_url="http://proxy"
            )
            async with client:
                answer = await client.post("/v1/chat/completions", json={"model": "gpt-test"})
            assert answer.status_code == 302
            assert answer.headers["location"] == f"{other.url}/v1/chat/completions"
            assert answer.content == b"moved"
        finally:
            await transport.aclose()
    assert other.connections == 0  # the key never went to the other host
    assert len(server.requests) == 2


async def test_aiohttp_session_uses_the_pool_limits_and_timeouts() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        await writer.drain()

    transport = AiohttpTransport(
        pool=PoolLimits(max_connections=7, keepalive_expiry=2.5),
        timeout=Timeouts(connect=1.5, read=3.5, write=9.0, pool=4.0),
    )
    assert transport._session is None  # opened lazily, inside a running loop
    async with RawServer(handler) as server:
        try:
            response = await transport.send(raw_request(server))
            assert response.status == 204
            await response.aclose()
            session = transport._session
            assert session is not None
            connector = session.connector
            assert isinstance(connector, aiohttp.TCPConnector)
            assert connector.limit == 7
            assert connector.limit_per_host == 0
            assert connector._keepalive_timeout == 2.5
            # No sock_read: the read timeout is the transport's own (ReadWatch).
            assert session.timeout == aiohttp.ClientTimeout(
                total=None, connect=4.0 + 1.5, sock_connect=1.5
            )
            assert session.auto_decompress is False
            assert isinstance(session.cookie_jar, aiohttp.DummyCookieJar)
        finally:
            await transport.aclose()


def test_the_config_builds_the_transport_settings_with_their_defaults() -> None:
    assert PoolConfig().limits() == PoolLimits()
    assert TimeoutConfig().timeouts() == Timeouts()
    provider = ProviderConfig.model_validate(
        {
            "kind": "openai",
            "pool": {"max_connections": 7, "max_keepalive_connections": 3},
            "timeout": {"read": 3.5, "pool": 4.0},
        }
    )
    transport = Provider.from_config("p", provider).transport
    assert isinstance(transport, AiohttpTransport)
    assert transport._pool == PoolLimits(max_connections=7, max_keepalive_connections=3)
    assert transport._timeout == Timeouts(read=3.5, pool=4.0)


async def test_aiohttp_exhausted_pool_is_a_typed_timeout() -> None:
    release = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\na")
        await writer.drain()
        await release.wait()
        writer.write(b"b")
        await writer.drain()

    # The wait for a free connection is bounded by pool + connect (0.3 s here); connect is
    # generous enough that the first request's own connect never races the timer.
    transport = AiohttpTransport(
        pool=PoolLimits(max_connections=1), timeout=Timeouts(pool=0.05, connect=0.25)
    )
    async with RawServer(handler) as server:
        try:
            held = await transport.send(raw_request(server))
            with pytest.raises(UpstreamError) as caught:
                await transport.send(raw_request(server))
            assert server.connections == 1  # the limit held: no second connection
            release.set()
            assert await held.read_all() == b"ab"
        finally:
            release.set()
            await transport.aclose()
    # aiohttp cannot tell a pool wait from a connect wait: both are a connect timeout.
    assert type(caught.value) is UpstreamConnectTimeout
    assert caught.value.status_code == 504


async def test_aiohttp_invalid_provider_url_is_a_connect_error() -> None:
    transport = AiohttpTransport()
    try:
        with pytest.raises(UpstreamConnectError):
            await transport.send(UpstreamRequest("GET", "http://:80/v1/models", [], b""))
    finally:
        await transport.aclose()


@pytest.mark.parametrize(
    ("kind", "url"),
    [
        ("aiohttp", "http://host:abc/v1/models"),
        ("aiohttp", "http://[::1/v1/models"),
        ("aiohttp", "http://a..b/v1/models"),
        ("httpx", "http://host:abc/v1/models"),
        ("httpx", "http://[::1/v1/models"),
    ],
)
async def test_malformed_provider_url_is_a_typed_error(kind: str, url: str) -> None:
    async def unreachable(request: httpx.Request) -> httpx.Response:
        raise AssertionError("a malformed URL must not be sent")

    transport: AiohttpTransport | HttpxTransport
    if kind == "aiohttp":
        transport = AiohttpTransport()
    else:
        transport = HttpxTransport(httpx.MockTransport(unreachable))
    try:
        with pytest.raises(UpstreamError):
            await transport.send(UpstreamRequest("GET", url, [], b""))
    finally:
        await transport.aclose()


async def test_aiohttp_aclose_is_idempotent_and_leaves_nothing_unclosed() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()

    await AiohttpTransport().aclose()  # never opened: nothing to do

    transport = AiohttpTransport()
    async with RawServer(handler) as server:
        response = await transport.send(raw_request(server))
        assert await response.read_all() == b"ok"
        session = transport._session
        assert session is not None and not session.closed
        connector = session.connector
        assert connector is not None
        await transport.aclose()
        await transport.aclose()
        assert session.closed and connector.closed
        ours = (repr(session), repr(connector))

    # aiohttp warns from __del__ about a session or connector left open; none of ours may.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del session, connector, transport, response
        gc.collect()
    leaks = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert [leak for leak in leaks if any(name in leak for name in ours)] == []
