"""Provider faults through the whole proxy and its aiohttp transport: bounded time, a typed
error in the caller's wire format, nothing leaked.

Each provider is a ``RawServer`` whose bytes the test writes by hand (refusals, resets,
silence, trickles, truncation, redirects). Where the client must see a stream break, the
proxy runs under real uvicorn in this loop and the client reads a real socket; where only
the status matters, it is driven in-process. The leak test pushes 1,000 mixed faults
through one proxy and checks file descriptors, tasks and pool connections against their
baseline; the disconnect tests measure, at the provider, how soon the proxy lets go.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from llm_proxy_mw import LLMProxy, build_proxy
from tests.asgi_helpers import (
    GUARD_SECONDS,
    LOOPBACK,
    AsgiDriver,
    RawServer,
    eventually,
    http_scope,
    reset_connection,
    sse_events,
)
from tests.hardening_helpers import (
    CANARY,
    RefusingPort,
    asgi_call,
    config,
    connector_of,
    open_fds,
    provider,
    serve_in_loop,
    server_url,
    wait_until,
)

pytestmark = pytest.mark.anyio

CHAT = "/v1/chat/completions"
JSON_HEADERS = (("content-type", "application/json"),)
EVENT = b'data: {"choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n'
SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
)

#: The issue's bound for letting go of the provider after the client left.
CANCEL_BOUND = 1.0
JSON_CONTENT = {"content-type": "application/json"}


def chat(model: str = "gpt-test", *, stream: bool = False) -> bytes:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    return json.dumps(body | ({"stream": True} if stream else {})).encode()


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def call(proxy: Any, body: bytes, path: str = CHAT) -> AsgiDriver:
    async with AsgiDriver(
        proxy, http_scope(path, headers=JSON_HEADERS), disconnect_when_complete=True
    ) as driver:
        await driver.run(body)
    return driver


@contextlib.asynccontextmanager
async def raw_provider(handler: Any) -> AsyncIterator[RawServer]:
    """A ``RawServer`` whose handler gets the server as its first argument."""
    ref: list[RawServer] = []

    async def bound(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await handler(ref[0], reader, writer)

    async with RawServer(bound) as server:
        ref.append(server)
        yield server


@contextlib.asynccontextmanager
async def in_process(url: str, **provider_kw: Any) -> AsyncIterator[LLMProxy]:
    proxy = build_proxy(config({"up": provider(f"{url}/v1", **provider_kw)}))
    async with proxy.lifespan():
        yield proxy


@contextlib.asynccontextmanager
async def under_uvicorn(url: str, **provider_kw: Any) -> AsyncIterator[tuple[LLMProxy, str]]:
    proxy = build_proxy(config({"up": provider(f"{url}/v1", **provider_kw)}))
    async with serve_in_loop(proxy) as server:
        yield proxy, server_url(server)


def assert_no_canary(*blobs: bytes) -> None:
    for blob in blobs:
        assert CANARY.encode() not in blob


# -- before the response: a typed error, at once ------------------------------------------------


async def test_connection_refused_is_a_502_connect_error_after_bounded_retries() -> None:
    with RefusingPort() as refused:
        started = time.monotonic()
        async with in_process(refused.url) as proxy:
            driver = await call(proxy, chat())
        elapsed = time.monotonic() - started
    assert driver.status == 502
    assert driver.json()["error"]["code"] == "connect_error"
    # The default max_attempts (4): retried at once, then given up.
    assert driver.headers["x-llm-proxy-attempts"] == "4"
    assert elapsed < GUARD_SECONDS
    assert_no_canary(driver.body)


async def reset_before_headers(
    server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    await server.read_request(reader)
    reset_connection(writer)


async def test_reset_before_headers_is_a_502_protocol_error() -> None:
    async with raw_provider(reset_before_headers) as server, in_process(server.url) as proxy:
        driver = await call(proxy, chat())
    assert driver.status == 502
    assert driver.json()["error"]["code"] == "protocol_error"
    assert len(server.requests) == 4  # the default max_attempts


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_redirect_to_another_host_is_not_followed_and_the_key_stays_home(
    status: int,
) -> None:
    async def elsewhere(
        server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nstolen")

    async with raw_provider(elsewhere) as other:
        location = f"http://{LOOPBACK}:{other.port}/v1/chat/completions".encode()

        async def redirect(
            server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> None:
            await server.read_request(reader)
            writer.write(
                b"HTTP/1.1 %d Moved\r\nlocation: %s\r\ncontent-length: 5\r\n\r\nmoved"
                % (status, location)
            )

        async with raw_provider(redirect) as server, in_process(server.url) as proxy:
            driver = await call(proxy, chat())
    assert driver.status == status
    assert driver.headers["location"] == location.decode()
    assert driver.body == b"moved"
    assert other.connections == 0
    assert server.requests[0].header("authorization") == f"Bearer {CANARY}"
    assert_no_canary(driver.body, *(v for _, v in driver.start_message["headers"]))


# -- after the response started: the stream never lies -----------------------------------------


async def test_reset_mid_stream_ends_an_sse_response_with_a_terminal_error_event() -> None:
    async def handler(
        server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await server.read_request(reader)
        writer.write(SSE_HEAD + chunk(EVENT) + chunk(b'data: {"choi'))
        await writer.drain()
        await asyncio.sleep(0.05)
        reset_connection(writer)

    async with raw_provider(handler) as server, under_uvicorn(server.url) as (_, url):
        async with httpx.AsyncClient(timeout=GUARD_SECONDS, headers=JSON_CONTENT) as client:
            response = await client.post(url + CHAT, content=chat(stream=True))
    assert response.status_code == 200
    assert response.content.startswith(EVENT + b'data: {"choi')
    events = sse_events(response.content)
    assert events[-1]["data"].startswith('{"error"')
    assert json.loads(events[-1]["data"])["error"]["code"] == "protocol_error"
    assert_no_canary(response.content)


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_reset_mid_json_leaves_the_client_a_visibly_broken_response(framing: str) -> None:
    part = b'{"id":"chatcmpl-1","choices":[{"message":{"content":"partial'

    async def handler(
        server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await server.read_request(reader)
        head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
        if framing == "chunked":
            writer.write(head + b"transfer-encoding: chunked\r\n\r\n" + chunk(part))
        else:
            writer.write(head + b"content-length: 500\r\n\r\n" + part)
        await writer.drain()
        await asyncio.sleep(0.05)
        reset_connection(writer)

    async with raw_provider(handler) as server, under_uvicorn(server.url) as (_, url):
        async with httpx.AsyncClient(timeout=GUARD_SECONDS, headers=JSON_CONTENT) as client:
            async with client.stream("POST", url + CHAT, content=chat()) as response:
                assert response.status_code == 200
                with pytest.raises(httpx.RemoteProtocolError):
                    await response.aread()


async def test_truncated_json_with_content_length_is_a_broken_response() -> None:
    async def handler(
        server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await server.read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n"
            b"connection: close\r\n\r\n" + b'{"id":"chatcmpl-1","choi'
        )
        # Then a clean close: 25 of 100 bytes.

    async with raw_provider(handler) as server, under_uvicorn(server.url) as (_, url):
        async with httpx.AsyncClient(timeout=GUARD_SECONDS, headers=JSON_CONTENT) as client:
            async with client.stream("POST", url + CHAT, content=chat()) as response:
                assert response.status_code == 200
                assert response.headers["content-length"] == "100"
                with pytest.raises(httpx.RemoteProtocolError):
                    await response.aread()


@pytest.mark.parametrize("sse", [True, False], ids=["sse", "json"])
async def test_headers_then_silence_ends_within_the_read_timeout(sse: bool) -> None:
    async def handler(
        server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await server.read_request(reader)
        if sse:
            writer.write(SSE_HEAD + chunk(EVENT))
        else:
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 50\r\n\r\n{")
        await writer.drain()
        await reader.read()  # silent until the proxy gives up

    async with raw_provider(handler) as server, under_uvicorn(server.url, read=0.5) as (_, url):
        async with httpx.AsyncClient(timeout=GUARD_SECONDS, headers=JSON_CONTENT) as client:
            started = time.monotonic()
            async with client.stream("POST", url + CHAT, content=chat(stream=sse)) as response:
                assert response.status_code == 200
                if sse:
                    body = await response.aread()
                else:
                    with pytest.raises(httpx.RemoteProtocolError):
                        await response.aread()
            elapsed = time.monotonic() - started
    # Bounded by the read timeout (0.5 s), plus generous slack for a loaded CI machine.
    assert 0.5 <= elapsed < 0.5 + 2.5
    if sse:
        assert body.startswith(EVENT)
        error = json.loads(sse_events(body)[-1]["data"])["error"]
        assert error["code"] == "timeout"


async def test_slow_trickle_within_the_read_timeout_completes() -> None:
    body = b'{"ok":true}'

    async def handler(
        server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body))
        for byte in body:
            await asyncio.sleep(0.05)
            writer.write(bytes([byte]))
            await writer.drain()

    async with raw_provider(handler) as server, under_uvicorn(server.url, read=0.5) as (_, url):
        async with httpx.AsyncClient(timeout=GUARD_SECONDS, headers=JSON_CONTENT) as client:
            response = await client.post(url + CHAT, content=chat())
    assert response.status_code == 200
    assert response.content == body


# -- 1,000 faults later: nothing leaked ---------------------------------------------------------


async def silent(
    server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    await server.read_request(reader)
    await reader.read()  # until the proxy's read timeout closes the connection


async def reset_mid_stream(
    server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    await server.read_request(reader)
    writer.write(SSE_HEAD + chunk(EVENT))
    await writer.drain()
    reset_connection(writer)


async def test_after_1000_faulty_requests_fds_tasks_and_pool_connections_are_at_baseline(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    # The proxy logs each failed request (tested elsewhere); 1,000 of them only cost time here.
    caplog.set_level(logging.ERROR, logger="llm_proxy_mw")
    kinds = ["refused", "reset", "silent", "midstream"]
    with RefusingPort() as refused:
        async with (
            raw_provider(reset_before_headers) as reset,
            raw_provider(silent) as quiet,
            raw_provider(reset_mid_stream) as midstream,
        ):
            urls = {
                "refused": refused.url,
                "reset": reset.url,
                "silent": quiet.url,
                "midstream": midstream.url,
            }
            providers = {
                kind: provider(
                    f"{urls[kind]}/v1",
                    models=[kind],
                    read=0.05,
                    connect=0.5,
                    retry={"max_attempts": 2},
                )
                for kind in kinds
            }
            proxy = build_proxy(config(providers))
            # Keep every circuit closed, so that each request really meets its fault instead
            # of a quick 503 from an open breaker (the breaker has its own tests).
            for health in proxy.health.providers.values():  # type: ignore[union-attr]
                health.policy = dataclasses.replace(health.policy, min_calls=10**9)
            servers = [reset, quiet, midstream]
            gate = asyncio.Semaphore(50)
            statuses: list[int] = []

            async def one(i: int) -> None:
                kind = kinds[i % len(kinds)]
                scope = http_scope(CHAT, headers=JSON_HEADERS)
                async with gate:
                    got = await asgi_call(proxy, scope, chat(kind, stream=kind == "midstream"))
                statuses.append(got.status)
                assert got.complete
                if got.status == 200:  # the stream broke: it must end with an error event
                    assert json.loads(sse_events(got.body)[-1]["data"])["error"]

            def settled() -> bool:
                return not any(s._tasks for s in servers) and all(
                    connector_of(proxy, k) is None or not connector_of(proxy, k)._acquired
                    for k in kinds
                )

            async with proxy.lifespan():
                await asyncio.gather(*(one(i) for i in range(40)))  # pools and threads exist
                await wait_until(settled)
                gc.collect()
                fds, tasks = open_fds(), len(asyncio.all_tasks())
                idle = {k: sum(map(len, connector_of(proxy, k)._conns.values())) for k in kinds}

                await asyncio.gather(*(one(i) for i in range(1000)))
                await wait_until(settled)
                # What closing takes a loop iteration or two for (transports, tasks) is
                # allowed to finish; then everything must be back where it was.
                gc.collect()
                await wait_until(lambda: len(asyncio.all_tasks()) <= tasks)
                await wait_until(lambda: open_fds() <= fds + 2)
                for kind in kinds:
                    connector = connector_of(proxy, kind)
                    assert not connector._acquired, kind
                    assert sum(map(len, connector._conns.values())) <= idle[kind], kind

    assert len(statuses) == 1040
    assert set(statuses) <= {200, 502, 504}, set(statuses)
    gc.collect()
    noise = [
        r.getMessage()
        for r in caplog.records
        if r.name == "asyncio"
        or "Task was destroyed" in r.getMessage()
        or "Unclosed" in r.getMessage()
    ]
    assert noise == []


# -- the client leaves: the provider is let go within 1 s ---------------------------------------


class Watched:
    """A provider that notes when its connection from the proxy ends."""

    def __init__(self, first_bytes: bytes) -> None:
        self.first_bytes = first_bytes
        self.eof_at: float | None = None
        self.sent = asyncio.Event()

    async def __call__(
        self, server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await server.read_request(reader)
        if self.first_bytes:
            writer.write(self.first_bytes)
            await writer.drain()
        self.sent.set()
        await reader.read()
        self.eof_at = time.monotonic()


async def open_request(url: str, body: bytes) -> tuple[asyncio.StreamReader, Any]:
    host_port = url.removeprefix("http://")
    host, port = host_port.split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        f"POST {CHAT} HTTP/1.1\r\nhost: {host_port}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    return reader, writer


async def close_and_time(writer: Any) -> float:
    closed_at = time.monotonic()
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()
    return closed_at


@pytest.mark.parametrize(
    "first_bytes",
    [b"", SSE_HEAD + chunk(EVENT)],
    ids=["before the first byte", "mid-stream"],
)
async def test_client_disconnect_closes_the_upstream_connection_within_1_s(
    first_bytes: bytes,
) -> None:
    watched = Watched(first_bytes)
    async with raw_provider(watched) as server, under_uvicorn(server.url) as (_, url):
        reader, writer = await open_request(url, chat(stream=True))
        async with asyncio.timeout(GUARD_SECONDS):
            await watched.sent.wait()
            if first_bytes:
                received = b""
                while EVENT not in received:
                    received += await reader.read(4096)
        closed_at = await close_and_time(writer)
        await wait_until(lambda: watched.eof_at is not None)
        assert watched.eof_at is not None
        assert watched.eof_at - closed_at < CANCEL_BOUND


async def test_client_disconnect_during_a_retry_backoff_ends_the_request_within_1_s() -> None:
    async def rate_limited(
        server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await server.read_request(reader)
        writer.write(
            b"HTTP/1.1 429 Too Many Requests\r\nretry-after: 5\r\nconnection: close\r\n"
            b"content-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
        )
        await writer.drain()

    async with raw_provider(rate_limited) as server:
        proxy = build_proxy(config({"up": provider(f"{server.url}/v1")}))
        async with serve_in_loop(proxy) as uvicorn_server:
            _, writer = await open_request(server_url(uvicorn_server), chat())
            await eventually(lambda: len(server.requests) == 1 and not server._tasks)
            await asyncio.sleep(0.1)  # the proxy has read the 429: it now waits 5 s
            assert uvicorn_server.server_state.tasks, "the request should be in its backoff"
            closed_at = await close_and_time(writer)
            await wait_until(lambda: not uvicorn_server.server_state.tasks)
            ended_at = time.monotonic()
    assert ended_at - closed_at < CANCEL_BOUND
    assert len(server.requests) == 1  # no retry after the client left
    assert server.connections == 1
