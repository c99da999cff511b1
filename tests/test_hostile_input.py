"""Hostile input through the whole proxy: a clear 4xx, never forwarded, the server unharmed.

Bodies and headers are driven in-process with hand-made scopes (so that bytes no client
library would send still arrive); framing tricks go over raw sockets to real uvicorn (h11
and httptools), since the server's own parser is part of what a client attacks. Where the
request is forwarded at all, a provider that records what it got proves where it went.

Decisions recorded here:

- ``messages`` of the wrong type is refused by the proxy (400) on the chat endpoints of both
  wire formats: the body is parsed once anyway, and the issue asks that such input is never
  forwarded. Other fields are the provider's business: it answers its own 400.
- An explicit ``"model": null`` is "no model" (first provider of the wire format), as
  ``test_routing`` documents; a model of any other non-string type is a 400.
- uvicorn has no timeout for a request body that never ends: the proxy's own
  ``request_body_timeout`` (30 s by default) answers 408 and closes the connection; until
  then nothing is forwarded (see the chunked test). Uploads (a body other than JSON to an
  endpoint that takes one) have no such deadline, only the size limit.
- Every POST body to the ``/v1`` pipeline is JSON (``application/json`` or
  ``application/*+json``), else 415, except on the upload endpoints, which take multipart
  and pass it through. A request without a body needs no content type.
- A key given twice is refused at the top level of a body, where the proxy reads ``model``
  and ``messages``; nested objects are the provider's business, like their other fields.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import re
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import unquote

import httpx
import pytest

from llm_proxy_mw import LLMProxy, build_proxy
from tests.asgi_helpers import GUARD_SECONDS, LOOPBACK, AsgiDriver, RawServer, http_scope
from tests.fakes.transports import RecordingTransport
from tests.hardening_helpers import (
    CANARY,
    LoopTicker,
    collect_response,
    config,
    json_answers,
    parse_response,
    provider,
    raw_exchange,
    serve_in_loop,
    server_url,
    wait_until,
)

pytestmark = pytest.mark.anyio

OPENAI_MODEL = "gpt-test"
ANTHROPIC_MODEL = "claude-test"
CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"
GOOD = json.dumps({"model": OPENAI_MODEL, "messages": [{"role": "user", "content": "hi"}]})
JSON_HEADERS = (("content-type", "application/json"),)
HTTP_IMPLS = ["h11", "httptools"]


@contextlib.asynccontextmanager
async def both_wire_formats(**top: Any) -> AsyncIterator[tuple[LLMProxy, RecordingTransport]]:
    """A proxy whose two providers (one per wire format) answer like the echo one and record
    every request; ``top`` are top-level config keys."""
    transport = RecordingTransport()
    proxy = build_proxy(
        config(
            {
                "openai": provider("http://openai.invalid/v1", models=[OPENAI_MODEL]),
                "anthropic": provider(
                    "http://anthropic.invalid/v1", kind="anthropic", models=[ANTHROPIC_MODEL]
                ),
            },
            # Priced, so that the only log records are the ones a test provokes.
            pricing={m: {"input": 1, "output": 2} for m in (OPENAI_MODEL, ANTHROPIC_MODEL)},
            **top,
        ),
        transports={"openai": transport, "anthropic": transport},
    )
    async with proxy.lifespan():
        yield proxy, transport


@pytest.fixture
async def recorded() -> AsyncIterator[tuple[LLMProxy, RecordingTransport]]:
    async with both_wire_formats(max_body_bytes=1024 * 1024) as proxied:
        yield proxied


async def call(
    app: Any,
    path: str,
    body: bytes = b"",
    *,
    headers: tuple[tuple[str, str], ...] = JSON_HEADERS,
    method: str = "POST",
) -> AsgiDriver:
    """One request through ``app`` as uvicorn would deliver it; the finished driver."""
    async with AsgiDriver(
        app, http_scope(path, method=method, headers=headers), disconnect_when_complete=True
    ) as driver:
        await driver.run(body)
    return driver


def assert_error_in_wire_format(driver: AsgiDriver, path: str, status: int) -> None:
    assert driver.status == status, driver.body
    assert driver.complete
    body = driver.json()
    if path.startswith(MESSAGES):
        assert body["type"] == "error"
        assert set(body["error"]) == {"type", "message"}
    else:
        assert set(body) == {"error"}
        assert {"message", "type", "code"} <= set(body["error"])


async def assert_still_serves(app: Any, transport: RecordingTransport) -> None:
    before = len(transport.sent)
    driver = await call(app, CHAT, GOOD.encode())
    assert driver.status == 200
    assert len(transport.sent) == before + 1


# -- bodies ------------------------------------------------------------------------------------

BAD_BODIES = {
    "malformed JSON": b'{"model": "MODEL", "messages": [',
    "invalid UTF-8": b'{"model": "MODEL", "messages": [], "x": "\xff\xfe\xc3"}',
    "UTF-8-encoded surrogate": b'{"model": "MODEL\xed\xa0\x80"}',
    "non-object: array": b'[{"model": "MODEL"}]',
    "non-object: string": b'"MODEL"',
    "non-object: number": b"42",
    "non-object: null": b"null",
    "model: 123": b'{"model": 123, "messages": []}',
    "model: list": b'{"model": ["MODEL"], "messages": []}',
    "model: object": b'{"model": {"name": "MODEL"}, "messages": []}',
    "model: empty": b'{"model": "", "messages": []}',
    'messages: "x"': b'{"model": "MODEL", "messages": "x"}',
    "messages: object": b'{"model": "MODEL", "messages": {"role": "user"}}',
    "messages: null": b'{"model": "MODEL", "messages": null}',
    "raw control character in a string": b'{"model": "MODEL\r\nX-Injected: 1"}',
    "integer of 5,000 digits": b'{"model": "MODEL", "messages": [], "n": ' + b"9" * 5000 + b"}",
    "model twice": b'{"model": "MODEL", "messages": [], "model": "gpt-other"}',
    "model twice, escaped": b'{"model": "MODEL", "messages": [], "mod\\u0065l": "gpt-other"}',
    "messages twice": b'{"model": "MODEL", "messages": [], "messages": "x"}',
}


@pytest.mark.parametrize("path", [CHAT, MESSAGES])
@pytest.mark.parametrize("body", BAD_BODIES.values(), ids=BAD_BODIES.keys())
async def test_bad_body_is_a_400_in_the_wire_format_and_never_forwarded(
    recorded: tuple[LLMProxy, RecordingTransport], body: bytes, path: str
) -> None:
    proxy, transport = recorded
    model = OPENAI_MODEL if path == CHAT else ANTHROPIC_MODEL
    driver = await call(proxy, path, body.replace(b"MODEL", model.encode()))
    assert_error_in_wire_format(driver, path, 400)
    assert transport.sent == []
    await assert_still_serves(proxy, transport)


@pytest.mark.parametrize(
    "nested",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
    ],
    ids=["arrays", "objects"],
)
async def test_json_nested_100000_deep_is_a_400_without_blocking_the_loop(
    recorded: tuple[LLMProxy, RecordingTransport], nested: bytes
) -> None:
    proxy, transport = recorded
    body = b'{"model": "gpt-test", "messages": [], "x": ' + nested + b"}"
    async with serve_in_loop(proxy) as server, httpx.AsyncClient() as client:
        async with LoopTicker() as ticker:
            response = await client.post(
                server_url(server) + CHAT,
                content=body,
                headers={"content-type": "application/json"},
            )
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "invalid_request"
        assert "nested too deeply" in response.json()["error"]["message"]
        assert ticker.ticks > 0
        # The bound: the event loop is never blocked for more than 100 ms.
        assert ticker.max_lag < 0.1, f"event loop blocked for {ticker.max_lag * 1000:.0f} ms"
        assert transport.sent == []
        ok = await client.post(server_url(server) + CHAT, content=GOOD, headers=dict(JSON_HEADERS))
        assert ok.status_code == 200


PARSE_FAILURES = {
    "5,000 digits": b'{"model": "gpt-test", "n": ' + b"1" * 5000 + b"}",
    "nested 5,000 deep": b'{"model": "gpt-test", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    "duplicate model": b'{"model": "gpt-test", "model": "gpt-test"}',
}


@pytest.mark.parametrize("body", PARSE_FAILURES.values(), ids=PARSE_FAILURES.keys())
async def test_a_body_that_cannot_be_parsed_is_one_400_and_one_log_line(
    recorded: tuple[LLMProxy, RecordingTransport], caplog: pytest.LogCaptureFixture, body: bytes
) -> None:
    proxy, transport = recorded
    caplog.set_level(logging.DEBUG)
    caplog.clear()
    driver = await call(proxy, CHAT, body)
    assert_error_in_wire_format(driver, CHAT, 400)
    assert driver.json()["error"]["type"] == "invalid_request_error"
    records = proxy_records(caplog)
    assert len(records) == 1
    assert driver.headers["x-request-id"] in records[0].getMessage()
    assert_single_line(records)
    assert len(access_records(caplog)) == 1
    assert_single_line(access_records(caplog))
    assert transport.sent == []


# -- content types: JSON endpoints take JSON only -----------------------------------------------

JSON_ENDPOINTS = [
    CHAT,
    MESSAGES,
    "/v1/messages/count_tokens",
    "/v1/responses",
    "/v1/embeddings",
    "/v1/completions",
    "/v1/moderations",
    "/v1/images/generations",
    "/v1/batches",
]
NOT_JSON = {
    "text/plain": (("content-type", "text/plain"),),
    "missing": (),
    "form": (("content-type", "application/x-www-form-urlencoded"),),
    "multipart": (("content-type", "multipart/form-data; boundary=x"),),
    "ndjson": (("content-type", "application/x-ndjson"),),
    "json as a suffix of another type": (("content-type", "application/jsonx"),),
    "text/json": (("content-type", "text/json"),),
    "json second": (("content-type", "text/plain"), ("content-type", "application/json")),
}


@pytest.mark.parametrize("headers", NOT_JSON.values(), ids=NOT_JSON.keys())
@pytest.mark.parametrize("path", JSON_ENDPOINTS)
async def test_a_json_endpoint_answers_415_to_another_content_type_never_forwarded(
    recorded: tuple[LLMProxy, RecordingTransport], path: str, headers: tuple[tuple[str, str], ...]
) -> None:
    # The body names a model no provider serves: unrouted, it would reach the first provider,
    # whose key would then serve it (an upstream such as Ollama ignores the content type).
    proxy, transport = recorded
    body = json.dumps({"model": "gpt-expensive", "messages": [], "input": "x"}).encode()
    driver = await call(proxy, path, body, headers=headers)
    assert_error_in_wire_format(driver, path, 415)
    error = driver.json()["error"]
    assert "application/json" in error["message"]
    if not path.startswith(MESSAGES):
        assert error["code"] == "unsupported_media_type"
    assert transport.sent == []
    await assert_still_serves(proxy, transport)


JSON_TYPES = [
    "application/json",
    "application/json; charset=utf-8",
    "Application/JSON ;charset=UTF-8",
    "application/vnd.api+json",
]


@pytest.mark.parametrize("content_type", JSON_TYPES)
async def test_json_content_types_with_parameters_are_routed(
    recorded: tuple[LLMProxy, RecordingTransport], content_type: str
) -> None:
    proxy, transport = recorded
    driver = await call(proxy, CHAT, GOOD.encode(), headers=(("content-type", content_type),))
    assert driver.status == 200, driver.body
    assert driver.headers["x-llm-proxy-provider"] == "openai"
    assert len(transport.sent) == 1


UPLOADS = [
    "/v1/files",
    "/v1/uploads/upload_abc/parts",
    "/v1/audio/transcriptions",
    "/v1/audio/translations",
    "/v1/images/edits",
    "/v1/images/variations",
]
MULTIPART = b'--x\r\ncontent-disposition: form-data; name="purpose"\r\n\r\nbatch\r\n--x--\r\n'


@pytest.mark.parametrize("path", UPLOADS)
async def test_upload_endpoints_still_take_multipart_bodies(
    recorded: tuple[LLMProxy, RecordingTransport], path: str
) -> None:
    proxy, transport = recorded
    headers = (("content-type", "multipart/form-data; boundary=x"),)
    driver = await call(proxy, path, MULTIPART, headers=headers)
    assert driver.status < 500
    assert [r.body for r in transport.sent] == [MULTIPART]


async def test_a_post_without_a_body_needs_no_content_type(
    recorded: tuple[LLMProxy, RecordingTransport],
) -> None:
    proxy, transport = recorded
    driver = await call(proxy, "/v1/responses/resp_123/cancel", b"", headers=())
    assert driver.status < 500
    assert [r.body for r in transport.sent] == [b""]


# -- framing: length, chunks, lies --------------------------------------------------------------


def post_head(length: str | None = None, *, chunked: bool = False, path: str = CHAT) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nhost: proxy\r\ncontent-type: application/json\r\n"
    if length is not None:
        head += f"content-length: {length}\r\n"
    if chunked:
        head += "transfer-encoding: chunked\r\n"
    return (head + "\r\n").encode()


@pytest.fixture
async def limited() -> AsyncIterator[tuple[LLMProxy, RecordingTransport]]:
    """A proxy refusing bodies over 1 KiB."""
    transport = RecordingTransport()
    proxy = build_proxy(
        config({"openai": provider("http://openai.invalid/v1")}, max_body_bytes=1024),
        transports={"openai": transport},
    )
    async with proxy.lifespan():
        yield proxy, transport


async def assert_server_healthy(port: int, transport: RecordingTransport) -> None:
    """A fresh connection still gets a normal answer, which is forwarded."""
    before = len(transport.sent)
    raw = await raw_exchange(
        port,
        post_head(str(len(GOOD))).replace(b"\r\n\r\n", b"\r\nconnection: close\r\n\r\n")
        + GOOD.encode(),
    )
    assert parse_response(raw).status == 200
    assert len(transport.sent) == before + 1


@pytest.mark.parametrize("http", HTTP_IMPLS)
async def test_declared_body_over_the_limit_is_413_before_the_rest_is_sent(
    limited: tuple[LLMProxy, RecordingTransport], http: str
) -> None:
    proxy, transport = limited
    async with serve_in_loop(proxy, http=http) as server:
        reader, writer = await asyncio.open_connection(LOOPBACK, server.config.port)
        try:
            # A gigabyte announced, five bytes sent: the answer must come without the rest.
            writer.write(post_head(str(10**9)) + b'{"mod')
            await writer.drain()
            async with asyncio.timeout(GUARD_SECONDS):
                response = await collect_response(reader)
        finally:
            writer.close()
        assert response.status == 413
        assert json.loads(response.body)["error"]["code"] == "request_too_large"
        assert transport.sent == []
        await assert_server_healthy(server.config.port, transport)


@pytest.mark.parametrize("http", HTTP_IMPLS)
async def test_chunked_body_over_the_limit_is_413_once_it_passes_the_limit(
    limited: tuple[LLMProxy, RecordingTransport], http: str
) -> None:
    proxy, transport = limited
    async with serve_in_loop(proxy, http=http) as server:
        reader, writer = await asyncio.open_connection(LOOPBACK, server.config.port)
        try:
            writer.write(post_head(chunked=True))
            for _ in range(3):  # 1.5 KiB of a body that never says where it ends
                writer.write(b"200\r\n" + b"x" * 0x200 + b"\r\n")
            await writer.drain()
            async with asyncio.timeout(GUARD_SECONDS):
                response = await collect_response(reader)
        finally:
            writer.close()
        assert response.status == 413
        assert transport.sent == []
        await assert_server_healthy(server.config.port, transport)


LYING_LENGTHS = {
    # Fewer bytes than announced, then the client half-closes: no request, no answer.
    "shorter, then close": (post_head("100") + b'{"model": "gpt', True),
    # More bytes than announced: the announced ones are malformed JSON (a 400), the rest is
    # read as a next request, which the server refuses or the connection ends.
    "longer": (post_head("9") + b'{"model": "gpt-test", "messages": []}', False),
    "negative": (post_head("-5") + GOOD.encode(), False),
    "huge negative": (post_head("-99999999999999999999") + GOOD.encode(), False),
    "not a number": (post_head("12abc") + GOOD.encode(), False),
    "hexadecimal": (post_head("0x10") + GOOD.encode(), False),
    "two that disagree": (
        post_head(str(len(GOOD))).replace(b"\r\n\r\n", b"\r\ncontent-length: 3\r\n\r\n")
        + GOOD.encode(),
        False,
    ),
}


@pytest.mark.parametrize("http", HTTP_IMPLS)
@pytest.mark.parametrize("case", LYING_LENGTHS.values(), ids=LYING_LENGTHS.keys())
async def test_content_length_that_lies_is_refused_or_dropped_never_forwarded(
    limited: tuple[LLMProxy, RecordingTransport], case: tuple[bytes, bool], http: str
) -> None:
    proxy, transport = limited
    data, half_close = case
    async with serve_in_loop(proxy, http=http) as server:
        # The server may keep the connection open for a body that never comes: a short
        # read timeout ends the wait, and only what was answered counts.
        raw = await raw_exchange(server.config.port, data, half_close=half_close, wait=0.5)
        statuses = [int(s) for s in re.findall(rb"HTTP/1\.1 (\d{3}) ", raw)]
        assert all(400 <= s < 500 for s in statuses), raw
        assert transport.sent == []
        await assert_server_healthy(server.config.port, transport)


@pytest.mark.parametrize("http", HTTP_IMPLS)
async def test_chunked_body_without_end_is_never_forwarded_and_blocks_nobody(
    limited: tuple[LLMProxy, RecordingTransport], http: str
) -> None:
    proxy, transport = limited
    async with serve_in_loop(proxy, http=http) as server:
        port = server.config.port
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        writer.write(post_head(chunked=True) + b'5\r\n{"mod\r\n')
        await writer.drain()
        try:
            # While that body hangs, other connections are served as usual.
            await assert_server_healthy(port, transport)
            await asyncio.sleep(0.2)
            assert reader.at_eof() is False
            assert len(transport.sent) == 1  # only the healthy request went out
        finally:
            writer.close()
            await writer.wait_closed()
        # Once its client is gone, the stuck request ends and its task is released.
        await wait_until(lambda: not server.server_state.tasks)
        assert len(transport.sent) == 1


# -- a deadline for the body -------------------------------------------------------------------

#: ``request_body_timeout`` of the slow-body tests: short, so that they are quick.
BODY_TIMEOUT = 0.3
CLIENT_KEY = "client-key-hostile-0123456789"


@pytest.fixture
async def slow_bodies() -> AsyncIterator[tuple[LLMProxy, RecordingTransport]]:
    """Both wire formats and the token endpoints, with a short body deadline."""
    async with both_wire_formats(
        auth={"api_keys": [{"name": "client", "key": CLIENT_KEY}]},
        request_body_timeout=BODY_TIMEOUT,
    ) as proxied:
        yield proxied


def slow_head(path: str, content_type: str, length: int) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nhost: proxy\r\ncontent-type: {content_type}\r\n"
        f"content-length: {length}\r\nauthorization: Bearer {CLIENT_KEY}\r\n\r\n"
    ).encode()


def assert_timeout_body(path: str, body: bytes) -> None:
    """The 408 in the caller's own format: OpenAI, Anthropic, or RFC 6749 §5.2."""
    payload = json.loads(body)
    if path == "/auth/token":
        assert payload["error"] == "invalid_request"
        assert "did not arrive" in payload["error_description"]
    elif path == MESSAGES:
        assert payload["type"] == "error"
        assert payload["error"]["type"] == "timeout_error"
    else:
        assert payload["error"]["code"] == "request_timeout"


SLOW_ENDPOINTS = {
    "openai": (CHAT, "application/json"),
    "anthropic": (MESSAGES, "application/json"),
    "oauth token, unauthenticated": ("/auth/token", "application/x-www-form-urlencoded"),
}


@pytest.mark.parametrize("http", HTTP_IMPLS)
@pytest.mark.parametrize("endpoint", SLOW_ENDPOINTS.values(), ids=SLOW_ENDPOINTS.keys())
async def test_a_body_that_stops_coming_is_408_and_the_connection_closed(
    slow_bodies: tuple[LLMProxy, RecordingTransport], endpoint: tuple[str, str], http: str
) -> None:
    proxy, transport = slow_bodies
    path, content_type = endpoint
    async with serve_in_loop(proxy, http=http) as server:
        reader, writer = await asyncio.open_connection(LOOPBACK, server.config.port)
        try:
            # One byte of the 100 announced, then nothing: the server's answer is the event.
            writer.write(slow_head(path, content_type, 100) + b"{")
            await writer.drain()
            async with asyncio.timeout(GUARD_SECONDS):
                response = await collect_response(reader)
                rest = await reader.read()  # b"" once the server has closed the connection
        finally:
            writer.close()
        assert response.status == 408
        assert response.header("connection") == "close"
        assert_timeout_body(path, response.body)
        assert rest == b""
        assert transport.sent == []
        await wait_until(lambda: not server.server_state.tasks)


@pytest.mark.parametrize("http", HTTP_IMPLS)
async def test_the_deadline_is_for_the_whole_body_not_each_chunk(
    slow_bodies: tuple[LLMProxy, RecordingTransport], http: str
) -> None:
    proxy, transport = slow_bodies
    pace = BODY_TIMEOUT / 10  # a byte, then a wait for the answer, this long at most
    loop = asyncio.get_running_loop()
    async with serve_in_loop(proxy, http=http) as server:
        reader, writer = await asyncio.open_connection(LOOPBACK, server.config.port)
        sent_at: list[float] = []
        try:
            writer.write(slow_head(CHAT, "application/json", 1000))
            async with asyncio.timeout(GUARD_SECONDS):
                while True:
                    writer.write(b" ")
                    await writer.drain()
                    sent_at.append(loop.time())
                    try:
                        # readuntil keeps what it read when its wait is cut: nothing is lost.
                        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), pace)
                    except TimeoutError:
                        continue
                    break
        finally:
            writer.close()
        assert parse_response(head).status == 408
        # The premise: bytes kept coming, never a gap a per-chunk timeout would have cut.
        gaps = [later - earlier for earlier, later in itertools.pairwise(sent_at)]
        assert gaps and max(gaps) < BODY_TIMEOUT
        assert len(sent_at) < 1000
        assert transport.sent == []


async def test_a_body_in_time_from_several_chunks_is_served(
    slow_bodies: tuple[LLMProxy, RecordingTransport],
) -> None:
    proxy, transport = slow_bodies
    async with serve_in_loop(proxy) as server:
        reader, writer = await asyncio.open_connection(LOOPBACK, server.config.port)
        try:
            body = GOOD.encode()
            writer.write(slow_head(CHAT, "application/json", len(body)))
            for i in range(0, len(body), 16):
                writer.write(body[i : i + 16])
                await writer.drain()
            async with asyncio.timeout(GUARD_SECONDS):
                response = await collect_response(reader)
        finally:
            writer.close()
        assert response.status == 200
        assert [r.body for r in transport.sent] == [body]


# -- where a request goes -----------------------------------------------------------------------


@pytest.fixture
async def attacker() -> AsyncIterator[RawServer]:
    """A listener standing for the address an attacker would like the proxy to call."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)

    async with RawServer(handler) as server:
        yield server


@pytest.fixture
async def upstream() -> AsyncIterator[RawServer]:
    ref: list[RawServer] = []
    async with RawServer(json_answers(ref)) as server:
        ref.append(server)
        yield server


def ssrf_cases(evil: str, evil_host: str) -> dict[str, tuple[bytes, tuple[tuple[str, str], ...]]]:
    body = json.loads(GOOD)
    fields = {
        name: json.dumps({**body, name: evil}).encode()
        for name in ("api_base", "base_url", "api_host", "endpoint", "url", "azure_endpoint")
    }
    cases = {f"field {name}": (payload, JSON_HEADERS) for name, payload in fields.items()} | {
        "field extra_body.api_base": (
            json.dumps({**body, "extra_body": {"api_base": evil}}).encode(),
            JSON_HEADERS,
        )
    }
    for header in (
        "host",
        "x-upstream-host",
        "x-forwarded-host",
        "x-forwarded-server",
        "x-host",
        "x-original-host",
        "x-original-url",
        "x-rewrite-url",
        "x-api-base",
        "x-base-url",
    ):
        value = evil if header.endswith("url") or "base" in header else evil_host
        cases[f"header {header}"] = (GOOD.encode(), (*JSON_HEADERS, (header, value)))
    cases["header forwarded"] = (
        GOOD.encode(),
        (*JSON_HEADERS, ("forwarded", f"host={evil_host};proto=http")),
    )
    return cases


async def test_client_supplied_upstream_addresses_never_change_where_a_request_goes(
    attacker: RawServer, upstream: RawServer, caplog: pytest.LogCaptureFixture
) -> None:
    evil_host = f"{LOOPBACK}:{attacker.port}"
    evil = f"http://{evil_host}/v1"
    proxy = build_proxy(config({"openai": provider(f"{upstream.url}/v1")}))
    cases = ssrf_cases(evil, evil_host)
    async with proxy.lifespan():
        for name, (body, headers) in cases.items():
            driver = await call(proxy, CHAT, body, headers=headers)
            assert driver.status == 200, name
        scope = http_scope(CHAT, headers=JSON_HEADERS, query_string=f"base_url={evil}".encode())
        async with AsgiDriver(proxy, scope, disconnect_when_complete=True) as driver:
            await driver.run(GOOD.encode())
        assert driver.status == 200
    assert attacker.connections == 0
    assert len(upstream.requests) == len(cases) + 1
    for request in upstream.requests:
        assert request.header("host") == f"{LOOPBACK}:{upstream.port}"
        assert request.target.startswith("/v1/chat/completions")
        assert request.header("authorization") == f"Bearer {CANARY}"


@pytest.mark.parametrize("http", HTTP_IMPLS)
async def test_absolute_form_request_target_never_reaches_the_host_it_names(
    attacker: RawServer, upstream: RawServer, http: str
) -> None:
    evil_host = f"{LOOPBACK}:{attacker.port}"
    proxy = build_proxy(config({"openai": provider(f"{upstream.url}/v1")}))
    request = (
        f"POST http://{evil_host}{CHAT} HTTP/1.1\r\nhost: {evil_host}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(GOOD)}\r\n"
        "connection: close\r\n\r\n"
    ).encode() + GOOD.encode()
    async with serve_in_loop(proxy, http=http) as server:
        raw = await raw_exchange(server.config.port, request)
    # h11 keeps the whole target as the path (a 404); httptools keeps its path (forwarded to
    # the configured provider). Neither goes where the target says.
    assert parse_response(raw).status in (200, 404)
    assert attacker.connections == 0
    for forwarded in upstream.requests:
        assert forwarded.header("host") == f"{LOOPBACK}:{upstream.port}"


# -- control characters in values that reach headers or logs ------------------------------------


def proxy_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The proxy's records but its access records (``access_records``)."""
    return [
        r
        for r in caplog.records
        if r.name.startswith("llm_proxy_mw") and r.name != "llm_proxy_mw.access"
    ]


def access_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """One per request that reached the pipeline, beside its failure line."""
    return [r for r in caplog.records if r.name == "llm_proxy_mw.access"]


def assert_single_line(records: list[logging.LogRecord]) -> None:
    for record in records:
        message = record.getMessage()
        assert "\r" not in message and "\n" not in message, repr(message)
        assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f\x85\u2028\u2029]", message), repr(message)


HOSTILE_IDS = [
    "abc\r\nx-injected: 1",
    "abc\ndef",
    "abc\x00def",
    "abc\x1b[31mred",
    "tab\there",
    "space here",
    "x" * 129,
    "ünïcödé",
    "",
]


@pytest.mark.parametrize("request_id", HOSTILE_IDS)
async def test_request_id_with_control_characters_is_replaced_never_echoed(
    recorded: tuple[LLMProxy, RecordingTransport],
    caplog: pytest.LogCaptureFixture,
    request_id: str,
) -> None:
    proxy, transport = recorded
    caplog.set_level(logging.DEBUG)
    caplog.clear()
    headers = (*JSON_HEADERS, ("x-request-id", request_id))
    ok = await call(proxy, CHAT, GOOD.encode(), headers=headers)
    bad = await call(proxy, CHAT, b"{not json", headers=headers)
    for driver in (ok, bad):
        given = driver.headers["x-request-id"]
        assert given != request_id
        assert re.fullmatch(r"[0-9a-f]{24}", given)
    assert ok.status == 200 and bad.status == 400
    records = proxy_records(caplog)
    assert len(records) == 1  # the refused request, once
    assert bad.headers["x-request-id"] in records[0].getMessage()
    assert_single_line(records)
    accessed = access_records(caplog)  # one per request, each with the id it was given
    assert [r.getMessage().rpartition(" req=")[2] for r in accessed] == [
        ok.headers["x-request-id"],
        bad.headers["x-request-id"],
    ]
    assert_single_line(accessed)


async def test_sane_request_id_is_kept(recorded: tuple[LLMProxy, RecordingTransport]) -> None:
    proxy, _ = recorded
    driver = await call(
        proxy, CHAT, GOOD.encode(), headers=(*JSON_HEADERS, ("x-request-id", "req_01:ab-c.d"))
    )
    assert driver.headers["x-request-id"] == "req_01:ab-c.d"


HOSTILE_MODELS = [
    "gpt\r\nx-injected: 1",
    "gpt\n2024-01-01 INFO forged log line",
    "gpt\x1b]0;title\x07",
    "gpt\x00",
    "gpt\u2028forged",
    "gpt\x85forged",
]


@pytest.mark.parametrize("model", HOSTILE_MODELS)
async def test_model_name_with_control_characters_is_escaped_in_the_error_and_the_log(
    recorded: tuple[LLMProxy, RecordingTransport],
    caplog: pytest.LogCaptureFixture,
    model: str,
) -> None:
    proxy, transport = recorded
    caplog.set_level(logging.DEBUG)
    caplog.clear()
    driver = await call(proxy, CHAT, json.dumps({"model": model, "messages": []}).encode())
    assert driver.status == 404
    assert driver.json()["error"]["code"] == "model_not_found"
    assert all(b"\r" not in v and b"\n" not in v for _, v in driver.start_message["headers"])
    assert transport.sent == []
    records = proxy_records(caplog)
    assert len(records) == 1
    assert_single_line(records)
    assert len(access_records(caplog)) == 1
    assert_single_line(access_records(caplog))


async def test_model_name_with_control_characters_never_becomes_a_metric_label() -> None:
    transport = RecordingTransport()
    proxy = build_proxy(
        config({"any": provider("http://any.invalid/v1", models=["*"])}),
        transports={"any": transport},
    )
    async with proxy.lifespan():
        for model in HOSTILE_MODELS:
            body = json.dumps({"model": model, "messages": []}).encode()
            driver = await call(proxy, CHAT, body)
            assert driver.status == 200  # a wildcard provider takes it, JSON-escaped as sent
        assert [r.body for r in transport.sent] == [
            json.dumps({"model": m, "messages": []}).encode() for m in HOSTILE_MODELS
        ]
        metrics = await call(proxy, "/metrics", method="GET")
    assert metrics.status == 200
    text = metrics.body.decode()
    assert 'model="other"' in text
    for model in HOSTILE_MODELS:
        assert model not in text


UNKNOWN_PATHS = [
    "/nope\r\n2024-01-01 INFO forged",
    "/nope\x1b[2J",
    "/nope\u2028forged",
]


@pytest.mark.parametrize("path", UNKNOWN_PATHS)
async def test_unknown_path_with_control_characters_is_one_escaped_log_record(
    recorded: tuple[LLMProxy, RecordingTransport], caplog: pytest.LogCaptureFixture, path: str
) -> None:
    proxy, _ = recorded
    caplog.set_level(logging.DEBUG)
    caplog.clear()
    driver = await call(proxy, path, method="GET")
    assert driver.status == 404
    records = proxy_records(caplog)
    assert len(records) == 1
    assert_single_line(records)
    assert access_records(caplog) == []  # no endpoint: nothing was proxied


# -- path tricks --------------------------------------------------------------------------------

ESCAPING_PATHS = [
    "/v1/../../admin",
    "/v1/chat/../../../admin",
    "/v1/%2e%2e/%2e%2e/admin",
    "/v1/%2E%2E/admin",
    "/v1/.%2e/admin",
    "/v1/%2e./admin",
    "/v1/chat%2f..%2f..%2fadmin",
    "/v1/chat/completions/..%2f..%2f..%2fadmin",
    "/v1/..%5cadmin",
    "/v1/..\\admin",
]
CONTAINED_PATHS = {
    "/v1//chat//completions": "/base/v1/chat/completions",
    "/v1/./chat/./completions": "/base/v1/chat/completions",
    "/v1/%2fetc%2fpasswd": "/base/v1/etc/passwd",
    "/v1/chat%2fcompletions": "/base/v1/chat/completions",
    "/v1/%252e%252e/admin": "/base/v1/%252e%252e/admin",
    "/v1/files/a%3Fb%23c": "/base/v1/files/a%3Fb%23c",
    "/v1/files/@evil.example": "/base/v1/files/@evil.example",
}


def inside_base(target: str) -> bool:
    path = target.split("?", 1)[0]
    segments = unquote(path).split("/")
    return path.startswith("/base/v1/") and ".." not in segments and "\\" not in path


@pytest.mark.parametrize("http", HTTP_IMPLS)
async def test_path_tricks_never_leave_the_provider_base_path(
    upstream: RawServer, http: str
) -> None:
    proxy = build_proxy(config({"openai": provider(f"{upstream.url}/base/v1")}))
    async with serve_in_loop(proxy, http=http) as server:
        port = server.config.port
        for path in ESCAPING_PATHS:
            raw = await raw_exchange(
                port, f"GET {path} HTTP/1.1\r\nhost: proxy\r\nconnection: close\r\n\r\n".encode()
            )
            response = parse_response(raw)
            assert response.status == 400, (path, response)
        assert upstream.requests == []
        for path, expected in CONTAINED_PATHS.items():
            raw = await raw_exchange(
                port, f"GET {path} HTTP/1.1\r\nhost: proxy\r\nconnection: close\r\n\r\n".encode()
            )
            assert parse_response(raw).status == 200, path
            assert upstream.requests[-1].target == expected
    assert all(inside_base(r.target) for r in upstream.requests)
    assert len(upstream.requests) == len(CONTAINED_PATHS)


async def test_dot_segments_with_path_parameters_never_reach_the_provider(
    upstream: RawServer,
) -> None:
    proxy = build_proxy(config({"openai": provider(f"{upstream.url}/base/v1")}))
    async with serve_in_loop(proxy) as server:
        for path in ("/v1/..;/admin", "/v1/%2e%2e;x=1/admin", "/v1/.;/..;/admin"):
            raw = await raw_exchange(
                server.config.port,
                f"GET {path} HTTP/1.1\r\nhost: proxy\r\nconnection: close\r\n\r\n".encode(),
            )
            assert parse_response(raw).status == 400, path
    assert upstream.requests == []
