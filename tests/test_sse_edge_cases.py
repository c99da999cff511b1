"""SSE edge cases from the provider are forwarded faithfully, byte for byte.

A ``RawServer`` provider writes the exact bytes of each case, one piece per write with a
pause between, so the proxy's aiohttp transport reads them as separate chunks: CRLF line
endings, multi-line ``data:``, comments, events split mid-line and between ``\\r`` and
``\\n``, a stream that ends without its trailing blank line, and one framed by the
connection's close instead of chunks. The proxy is real uvicorn in this loop; the client
reads the raw body. The official SDKs then parse the CRLF and multi-line streams through
the proxy as they would from the provider.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import anthropic
import httpx
import httpx2
import openai
import pytest

from llm_proxy_mw import build_proxy
from tests.asgi_helpers import GUARD_SECONDS, RawServer
from tests.hardening_helpers import config, provider, serve_in_loop, server_url

pytestmark = pytest.mark.anyio

#: A pause between writes, so each piece reaches the proxy as a read of its own.
PAUSE = 0.005

OPENAI_TEXT = ["Hel", "lo", " wor", "ld"]


def openai_chunk(content: str | None, finish: str | None = None) -> str:
    delta = {} if content is None else {"content": content}
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    payload = {
        "id": "chatcmpl-edge",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-test",
        "choices": [choice],
    }
    return json.dumps(payload, separators=(",", ":"))


def anthropic_events() -> list[tuple[str, str]]:
    message = {
        "id": "msg_edge",
        "type": "message",
        "role": "assistant",
        "model": "claude-test",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 3, "output_tokens": 1},
    }
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"type": "message_start", "message": message}),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        ("ping", {"type": "ping"}),
    ]
    for part in OPENAI_TEXT:
        delta = {"type": "text_delta", "text": part}
        events.append(
            ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})
        )
    events += [
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": 4},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    return [(name, json.dumps(data, separators=(",", ":"))) for name, data in events]


def frame(data: str, *, eol: str = "\n", event: str | None = None, multiline: bool = False) -> str:
    """One SSE event; ``multiline`` spreads the JSON over one ``data:`` line per member."""
    lines = [f"event: {event}"] if event else []
    if multiline:
        lines += ["data: " + part for part in data.replace(',"', ',\n"').split("\n")]
    else:
        lines.append(f"data: {data}")
    return eol.join(lines) + eol + eol


def openai_stream(*, eol: str = "\n", multiline: bool = False) -> str:
    chunks = [openai_chunk(p) for p in OPENAI_TEXT] + [openai_chunk(None, "stop")]
    return (
        "".join(frame(c, eol=eol, multiline=multiline) for c in chunks) + f"data: [DONE]{eol}{eol}"
    )


def anthropic_stream(*, eol: str = "\n", multiline: bool = False) -> str:
    return "".join(
        frame(data, eol=eol, event=name, multiline=multiline) for name, data in anthropic_events()
    )


def split_every(text: str, size: int) -> list[bytes]:
    raw = text.encode()
    return [raw[i : i + size] for i in range(0, len(raw), size)]


def split_mid_crlf(text: str) -> list[bytes]:
    """Pieces that each end between a ``\\r`` and its ``\\n``."""
    raw = text.encode()
    pieces, start = [], 0
    while (at := raw.find(b"\r\n", start)) != -1:
        pieces.append(raw[start : at + 1])
        start = at + 1
    pieces.append(raw[start:])
    return [p for p in pieces if p]


def split_mid_line(text: str) -> list[bytes]:
    """Pieces cut inside every ``data:`` keyword ("da" | "ta:") and in the middle of each line."""
    raw = text.encode()
    cuts, start = set(), 0
    for line in raw.split(b"\n"):
        if line:
            cuts |= {start + 2, start + len(line) // 2}
        start += len(line) + 1
    bounds = [0, *sorted(c for c in cuts if 0 < c < len(raw)), len(raw)]
    return [raw[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


STREAM = openai_stream().encode()
CASES: dict[str, list[bytes]] = {
    "CRLF line endings": [
        e.encode() + b"\r\n\r\n" for e in openai_stream(eol="\r\n").split("\r\n\r\n") if e
    ],
    "bare CR line endings": [openai_stream(eol="\r").encode()],
    "multi-line data": split_every(openai_stream(multiline=True), 97),
    "comments and keep-alives": [
        b": keep-alive\n\n",
        b":\n\n",
        STREAM[:100],
        STREAM[100:],
        b": ping\r\n\r\n",
        b"retry: 1000\nid: 7\n\n",
    ],
    "split mid-line": split_mid_line(openai_stream()),
    "split between CR and LF": split_mid_crlf(openai_stream(eol="\r\n")),
    "one byte per read": split_every(openai_stream(eol="\r\n")[:90], 1),
    "EOF without trailing blank line": [STREAM.removesuffix(b"data: [DONE]\n\n"), b"data: [DONE]"],
    "EOF right after the last line": [STREAM.removesuffix(b"\n")],
    "non-ASCII split inside a character": split_every('data: {"text":"héllo 世界 🎉"}\n\n', 3),
}


def chunked_provider(pieces: list[bytes], server_ref: list[RawServer]) -> Any:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server_ref[0].read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
            b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        for piece in pieces:
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
            await asyncio.sleep(PAUSE)
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    return handler


def close_delimited_provider(pieces: list[bytes], server_ref: list[RawServer]) -> Any:
    """No length, no chunks: the body ends when the provider closes (HTTP/1.0 style)."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server_ref[0].read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n"
        )
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(PAUSE)

    return handler


@contextlib.asynccontextmanager
async def serving(
    pieces: list[bytes], *, kind: str = "openai", framing: Callable[..., Any] = chunked_provider
) -> AsyncIterator[str]:
    """A raw provider writing ``pieces``, and the proxy in front of it; yields the proxy URL."""
    ref: list[RawServer] = []
    async with RawServer(framing(pieces, ref)) as server:
        ref.append(server)
        proxy = build_proxy(config({"up": provider(f"{server.url}/v1", kind=kind)}))
        async with serve_in_loop(proxy) as uvicorn_server:
            yield server_url(uvicorn_server)


async def raw_body(url: str, path: str = "/v1/chat/completions") -> tuple[httpx.Response, bytes]:
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient(timeout=GUARD_SECONDS) as client:
        async with client.stream("POST", url + path, json=body) as response:
            received = b"".join([chunk async for chunk in response.aiter_raw()])
    return response, received


@pytest.mark.parametrize("pieces", CASES.values(), ids=CASES.keys())
async def test_sse_from_the_provider_reaches_the_client_byte_for_byte(pieces: list[bytes]) -> None:
    async with serving(pieces) as url:
        response, received = await raw_body(url)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert received == b"".join(pieces)


@pytest.mark.parametrize(
    "pieces",
    [CASES["EOF without trailing blank line"], CASES["split between CR and LF"]],
    ids=["EOF without trailing blank line", "split between CR and LF"],
)
async def test_sse_framed_by_the_connection_close_is_forwarded_byte_for_byte(
    pieces: list[bytes],
) -> None:
    async with serving(pieces, framing=close_delimited_provider) as url:
        response, received = await raw_body(url)
    assert response.status_code == 200
    assert received == b"".join(pieces)


SDK_STREAMS = {
    "CRLF": {"eol": "\r\n"},
    "multi-line data": {"multiline": True},
    "CRLF and multi-line data": {"eol": "\r\n", "multiline": True},
}


@pytest.mark.parametrize("shape", SDK_STREAMS.values(), ids=SDK_STREAMS.keys())
async def test_openai_sdk_parses_the_edge_case_stream_through_the_proxy(
    shape: dict[str, Any],
) -> None:
    pieces = (
        split_mid_crlf(openai_stream(**shape))
        if "eol" in shape
        else [openai_stream(**shape).encode()]
    )
    async with serving(pieces) as url:
        async with httpx.AsyncClient(timeout=GUARD_SECONDS) as http:
            client = openai.AsyncOpenAI(
                base_url=url + "/v1", api_key="client-key", max_retries=0, http_client=http
            )
            stream = await client.chat.completions.create(
                model="gpt-test", messages=[{"role": "user", "content": "hi"}], stream=True
            )
            chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "".join(OPENAI_TEXT)
    assert chunks[-1].choices[0].finish_reason == "stop"


@pytest.mark.parametrize("shape", SDK_STREAMS.values(), ids=SDK_STREAMS.keys())
async def test_anthropic_sdk_parses_the_edge_case_stream_through_the_proxy(
    shape: dict[str, Any],
) -> None:
    pieces = (
        split_mid_crlf(anthropic_stream(**shape))
        if "eol" in shape
        else [anthropic_stream(**shape).encode()]
    )
    async with serving(pieces, kind="anthropic") as url:
        async with httpx2.AsyncClient(timeout=GUARD_SECONDS, trust_env=False) as http:
            client = anthropic.AsyncAnthropic(
                base_url=url, api_key="client-key", max_retries=0, http_client=http
            )
            async with client.messages.stream(
                model="claude-test",
                max_tokens=16,
                messages=[{"role": "user", "content": "hi"}],
            ) as stream:
                text = "".join([delta async for delta in stream.text_stream])
                final = await stream.get_final_message()
    assert text == "".join(OPENAI_TEXT)
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 4


#: Usage numbers no provider should send: past any store (10**20), past a float (10**400),
#: past what Python's ``int()`` reads (5,000 digits).
ABSURD_USAGE = {"1e20": b"1" + b"0" * 20, "1e400": b"1" + b"0" * 400, "5000 digits": b"9" * 5000}


@pytest.mark.parametrize("number", ABSURD_USAGE.values(), ids=ABSURD_USAGE.keys())
async def test_an_absurd_usage_number_reaches_the_client_byte_for_byte_and_is_not_counted(
    number: bytes,
) -> None:
    usage = {"prompt_tokens": 0, "completion_tokens": 4}
    event = openai_chunk(None).replace('"choices":[', f'"usage":{json.dumps(usage)},"choices":[')
    event = event.replace('"prompt_tokens": 0', '"prompt_tokens": ' + number.decode())
    assert number.decode() in event
    pieces = [STREAM.removesuffix(b"data: [DONE]\n\n"), frame(event).encode(), b"data: [DONE]\n\n"]
    async with serving(pieces) as url:
        response, received = await raw_body(url)
        async with httpx.AsyncClient(timeout=GUARD_SECONDS) as client:
            metrics = (await client.get(url + "/metrics")).text
    assert response.status_code == 200
    assert received == b"".join(pieces)
    tokens = [line for line in metrics.splitlines() if line.startswith("llm_proxy_tokens_total{")]
    assert len(tokens) == 1 and 'kind="completion"' in tokens[0] and tokens[0].endswith(" 4.0")
