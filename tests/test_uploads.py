"""Uploads stream: the provider gets each chunk as the client sends it, under
``max_upload_bytes`` and ``min_upload_rate``, and an upload is retried only when its attempt
failed before its first chunk went out.

The proxy is served by uvicorn on loopback in front of ``UploadSink`` providers, over the
default aiohttp transport; the limits are driven message by message through the stack.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from llm_proxy_mw import build_proxy
from llm_proxy_mw.config import ProviderConfig
from llm_proxy_mw.context import RequestContextMiddleware, get_context, read_body
from llm_proxy_mw.providers import Provider
from llm_proxy_mw.retry import RetryMiddleware
from llm_proxy_mw.routing import Router, RoutingMiddleware
from llm_proxy_mw.transports import HttpxTransport
from llm_proxy_mw.upstream import UpstreamApp
from llm_proxy_mw.wire import send_json
from tests.asgi_helpers import AsgiDriver, eventually, http_scope
from tests.fakes.servers import UvicornServer, free_port
from tests.fakes.upload_sink import UploadSink

MiB = 1024 * 1024
FILES = (("content-type", "application/octet-stream"),)
TIMEOUT = 10.0


def proxy_config(tmp_path: Path, providers: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {"providers": providers, "store": {"url": f"sqlite:///{tmp_path / 's.db'}"}, **top}


def openai(url: str, **extra: Any) -> dict[str, Any]:
    return {"kind": "openai", "base_url": f"{url}/v1", "api_key": "sk-up", "models": ["*"], **extra}


@pytest.fixture
def sink() -> Iterator[tuple[UploadSink, str]]:
    app = UploadSink("first")
    with UvicornServer(app, lifespan="off") as server:
        yield app, server.url


def test_a_40_mb_upload_reaches_the_provider_while_the_client_still_sends_it(
    tmp_path: Path, sink: tuple[UploadSink, str]
) -> None:
    """The client holds its second half back until the provider got the first: the proxy
    cannot be buffering it. 40 MB was a 413 when bodies were capped at 32 MiB."""
    app, url = sink
    proxy = build_proxy(proxy_config(tmp_path, {"first": openai(url)}))
    half = 20 * MiB
    provider_has_half = threading.Event()

    def body() -> Iterator[bytes]:
        for _ in range(half // MiB):
            yield b"a" * MiB
        if app.wait(half):
            provider_has_half.set()
        for _ in range(half // MiB):
            yield b"b" * MiB

    with UvicornServer(proxy) as served, httpx.Client(timeout=TIMEOUT) as client:
        response = client.post(
            f"{served.url}/v1/files",
            content=body(),
            headers={"content-type": "application/octet-stream", "content-length": str(2 * half)},
        )
    assert response.status_code == 200, response.text
    assert provider_has_half.is_set()
    [received] = app.requests
    assert (received.size, received.complete) == (2 * half, True)
    assert received.headers["content-length"] == str(2 * half)  # passed on, not chunked
    assert received.headers["authorization"] == "Bearer sk-up"
    assert response.json()["bytes"] == 2 * half


def test_an_upload_without_a_length_goes_on_chunked(
    tmp_path: Path, sink: tuple[UploadSink, str]
) -> None:
    app, url = sink
    proxy = build_proxy(proxy_config(tmp_path, {"first": openai(url)}))
    with UvicornServer(proxy) as served, httpx.Client(timeout=TIMEOUT) as client:
        response = client.post(
            f"{served.url}/v1/uploads/upload_1/parts",
            content=iter([b"x" * 1000, b"y" * 24]),
            headers={"content-type": "application/octet-stream"},
        )
    assert response.status_code == 200, response.text
    [received] = app.requests
    assert received.size == 1024
    assert received.head == b"x" * 1000 + b"y" * 24
    assert received.headers["transfer-encoding"] == "chunked"


def test_retried_on_the_fallback_when_the_first_provider_cannot_be_reached(
    tmp_path: Path, sink: tuple[UploadSink, str]
) -> None:
    """A connect error comes before the first byte went out: the whole upload, the form's
    fields read ahead for the model included, goes to the fallback."""
    app, url = sink
    dead = f"http://127.0.0.1:{free_port()}"
    providers = {
        "down": openai(dead, models=["whisper-1"], fallbacks=["first"]),
        "first": openai(url, models=["whisper-2"]),
    }
    proxy = build_proxy(proxy_config(tmp_path, providers))
    with UvicornServer(proxy) as served, httpx.Client(timeout=TIMEOUT) as client:
        response = client.post(
            f"{served.url}/v1/audio/transcriptions",
            data={"model": "whisper-1"},
            files={"file": ("a.wav", b"RIFF" + b"\0" * 5000, "audio/wav")},
        )
    assert response.status_code == 200, response.text
    assert response.json() == {"text": "first"}
    assert response.headers["x-llm-proxy-attempts"] == "2"
    [received] = app.requests
    assert received.complete
    assert b'name="model"\r\n\r\nwhisper-1\r\n' in received.head
    assert received.head.rstrip().endswith(b"--")  # the closing delimiter: the form is whole


def test_not_retried_once_the_provider_took_the_first_byte(tmp_path: Path) -> None:
    """A 503 after the body went out goes back to the client: the upload is gone."""
    failing, other = UploadSink("failing", status=503), UploadSink("other")
    with (
        UvicornServer(failing, lifespan="off") as failing_server,
        UvicornServer(other, lifespan="off") as other_server,
    ):
        providers = {
            "failing": openai(failing_server.url, fallbacks=["other"]),
            "other": openai(other_server.url),
        }
        proxy = build_proxy(proxy_config(tmp_path, providers))
        with UvicornServer(proxy) as served, httpx.Client(timeout=TIMEOUT) as client:
            response = client.post(f"{served.url}/v1/files", content=b"z" * 4096, headers=FILES)
    assert response.status_code == 503
    assert response.headers["x-llm-proxy-provider"] == "failing"
    assert response.headers["x-llm-proxy-attempts"] == "1"
    assert [r.size for r in failing.requests] == [4096]
    assert other.requests == []


def test_a_json_body_to_the_files_endpoint_keeps_max_body_bytes(
    tmp_path: Path, sink: tuple[UploadSink, str]
) -> None:
    _, url = sink
    proxy = build_proxy(proxy_config(tmp_path, {"first": openai(url)}, max_body_bytes=1024))
    with UvicornServer(proxy) as served, httpx.Client(timeout=TIMEOUT) as client:
        response = client.post(f"{served.url}/v1/files", json={"pad": "p" * 2000})
    assert response.status_code == 413


# -- the limits, message by message -------------------------------------------------------


async def provider(scope: Scope, receive: Receive, send: Send) -> None:
    """Takes the upload's chunks as a transport would, then answers with their length."""
    ctx = get_context(scope)
    await read_body(ctx, scope, receive)
    assert ctx.upload is not None
    length = sum([len(chunk) async for chunk in ctx.upload.chunks()])
    await send_json(send, 200, json.dumps({"length": length}).encode())


def limited(**limits: Any) -> RequestContextMiddleware:
    return RequestContextMiddleware(provider, **limits)


@pytest.mark.anyio
async def test_past_max_upload_bytes_is_413_declared_or_not() -> None:
    declared = http_scope("/v1/files", headers=FILES, body=b"x" * 2048)
    async with AsgiDriver(limited(max_upload_bytes=1024), declared) as told:
        await told.run(b"x" * 2048)
    assert told.status == 413
    assert told.receive_calls == 0  # refused before a byte was read
    undeclared = http_scope("/v1/files", headers=FILES)
    async with AsgiDriver(limited(max_upload_bytes=1024), undeclared) as untold:
        await untold.run(b"x" * 1000, b"x" * 1000, b"x" * 1000)
    assert untold.status == 413
    assert untold.json()["error"]["code"] == "request_too_large"
    assert "max_upload_bytes" in untold.json()["error"]["message"]


@pytest.mark.anyio
async def test_an_upload_slower_than_min_upload_rate_is_cut_with_408() -> None:
    """A 50 ms rate window stands for the 10 s one: a byte, then nothing, is 8 bytes/s."""
    app = limited(min_upload_rate=1024, upload_rate_window=0.05)
    async with AsgiDriver(app, http_scope("/v1/files", headers=FILES)) as slow:
        slow.request_part(b"x", more_body=True)
        slow.start()
        await slow.finish()
    assert slow.status == 408
    assert slow.json()["error"]["code"] == "request_timeout"
    assert "min_upload_rate" in slow.json()["error"]["message"]


@pytest.mark.anyio
async def test_an_upload_fast_enough_is_not_cut_when_its_window_passes() -> None:
    """Both start with one message; ``fast`` sent 1 MiB, ``slow`` one byte. Once ``slow``
    (started later, same window) was cut, ``fast``'s window has passed too, and it is
    still going at its average: it finishes whole."""
    app = limited(min_upload_rate=1024, upload_rate_window=0.05)
    async with (
        AsgiDriver(app, http_scope("/v1/files", headers=FILES)) as fast,
        AsgiDriver(app, http_scope("/v1/files", headers=FILES)) as slow,
    ):
        fast.request_part(b"f" * MiB, more_body=True)
        fast.start()
        await eventually(lambda: fast.pending == 0)
        slow.request_part(b"s", more_body=True)
        slow.start()
        await slow.finish()
        assert slow.status == 408
        fast.request_part(b"f", more_body=False)
        await fast.finish()
    assert fast.status == 200
    assert fast.json() == {"length": MiB + 1}


@pytest.mark.anyio
async def test_a_client_gone_mid_upload_ends_the_request_without_an_answer() -> None:
    async with AsgiDriver(limited(), http_scope("/v1/files", headers=FILES)) as gone:
        gone.request_part(b"x" * 100, more_body=True)
        gone.disconnect()
        gone.start()
        await gone.finish()
    assert gone.sent == []


@pytest.mark.anyio
@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_a_trickling_upload_is_cut_with_408_while_the_provider_waits_for_it(
    sink: tuple[UploadSink, str], transport: str
) -> None:
    """Through the whole stack and a real transport: the provider is reading the body when
    the rate check cuts it; the client gets 408 and the provider a body that broke off."""
    app, url = sink
    config = ProviderConfig.model_validate(openai(url))
    chosen = HttpxTransport() if transport == "httpx" else None
    provider = Provider.from_config("first", config, chosen)
    stack = RequestContextMiddleware(
        RetryMiddleware(RoutingMiddleware(UpstreamApp([provider]), router=Router([provider]))),
        min_upload_rate=1024,
        upload_rate_window=0.05,
    )
    never = asyncio.Event()

    async def trickle() -> AsyncIterator[bytes]:
        yield b"x" * 10
        await never.wait()

    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=stack), base_url="http://proxy"
        ) as client:
            response = await client.post("/v1/files", content=trickle(), headers=dict(FILES))
    finally:
        await provider.transport.aclose()
    assert response.status_code == 408
    assert "min_upload_rate" in response.json()["error"]["message"]
    [cut] = await asyncio.to_thread(app.wait_for_requests, 1)
    assert (cut.size, cut.complete) == (10, False)


@pytest.mark.anyio
async def test_the_httpx_transport_streams_an_upload(sink: tuple[UploadSink, str]) -> None:
    app, url = sink
    proxy = build_proxy(
        {"providers": {"first": openai(url)}, "store": {"url": "sqlite:///:memory:"}},
        transports={"first": HttpxTransport()},
    )
    async with (
        proxy.lifespan(),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=proxy), base_url="http://proxy"
        ) as client,
    ):
        chunks = [b"%d" % i * 1000 for i in range(10)]

        async def body() -> AsyncIterator[bytes]:
            for chunk in chunks:
                yield chunk

        response = await client.post("/v1/files", content=body(), headers=dict(FILES))
    assert response.status_code == 200, response.text
    [received] = app.requests
    assert received.head == b"".join(chunks)
