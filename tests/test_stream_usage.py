"""Streams are always counted: a Chat stream whose client did not ask for usage asks the
provider for it, and the client gets exactly the stream it would have got without it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_proxy_mw import HttpxTransport, build_proxy
from llm_proxy_mw._plan import Route
from llm_proxy_mw._stream_usage import MAX_PENDING, HiddenUsage, body_asking_usage
from llm_proxy_mw.config import ProviderConfig
from llm_proxy_mw.context import RequestContext, Usage
from llm_proxy_mw.providers import Provider
from llm_proxy_mw.wire import WireFormat

pytestmark = pytest.mark.anyio

USAGE = {
    "prompt_tokens": 1000,
    "completion_tokens": 300,
    "total_tokens": 1300,
    "prompt_tokens_details": {"cached_tokens": 600, "cache_write_tokens": 100},
    "completion_tokens_details": {"reasoning_tokens": 200},
}
COUNTED = Usage(1000, 300, 600, 100, 200)


def chunk(delta: dict[str, Any], finish: str | None = None, **more: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-x",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **more,
    }


def stream(*, with_usage: bool, newline: bytes = b"\n") -> bytes:
    """A Chat stream as OpenAI sends it, with the ``include_usage`` additions or without:
    ``"usage":null`` on every chunk (before a member OpenAI adds after it, as it does with
    ``obfuscation``) and the usage chunk. Content that looks like usage stays content."""
    null = {"usage": None} if with_usage else {}
    chunks = [
        chunk({"role": "assistant", "content": ""}, **null, obfuscation="ab"),
        chunk({"content": 'say "usage":null, "choices":[]'}, **null, obfuscation="cd"),
        chunk({"content": ' and ,"usage":{"prompt_tokens":9}'}, **null),
        chunk({}, "stop", **null),
    ]
    if with_usage:
        chunks.append({**chunk({}), "choices": [], "usage": USAGE})
    end = newline * 2
    events = [b"data: " + json.dumps(c, separators=(",", ":")).encode() + end for c in chunks]
    return b"".join(events) + b"data: [DONE]" + end


def context() -> RequestContext:
    return RequestContext("r", "/v1/chat/completions", WireFormat.OPENAI)


def hide(body: bytes, cuts: list[int]) -> tuple[bytes, Usage]:
    ctx = context()
    hidden = HiddenUsage(ctx)
    bounds = sorted({0, len(body), *(c % (len(body) + 1) for c in cuts)})
    out = b"".join(hidden.feed(body[a:b]) for a, b in zip(bounds, bounds[1:], strict=False))
    return out + hidden.finish(), ctx.usage


@settings(database=None, max_examples=200, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0), max_size=12), crlf=st.booleans())
def test_the_client_gets_the_stream_it_would_have_got_wherever_reads_end(
    cuts: list[int], crlf: bool
) -> None:
    newline = b"\r\n" if crlf else b"\n"
    out, usage = hide(stream(with_usage=True, newline=newline), cuts)
    assert out == stream(with_usage=False, newline=newline)
    assert usage == COUNTED


def test_a_chunk_without_choices_or_usage_is_kept() -> None:
    # Azure's content-filter results come first, without choices and without usage.
    azure = b'data: {"choices":[],"prompt_filter_results":[{"prompt_index":0}],"usage":null}\n\n'
    out, usage = hide(azure + stream(with_usage=True), [])
    assert out == b'data: {"choices":[],"prompt_filter_results":[{"prompt_index":0}]}\n\n' + (
        stream(with_usage=False)
    )
    assert usage == COUNTED


def test_an_event_that_never_ends_is_not_kept_back_without_bound() -> None:
    hidden = HiddenUsage(context())
    piece = b"x" * (64 * 1024)
    out = b"".join(hidden.feed(piece) for _ in range(MAX_PENDING // len(piece) + 2))
    assert out + hidden.finish() == piece * (MAX_PENDING // len(piece) + 2)
    assert len(out) > MAX_PENDING


def openai_like(request: httpx.Request) -> httpx.Response:
    body = json.loads(request.content)
    with_usage = (body.get("stream_options") or {}).get("include_usage") is True
    return httpx.Response(
        200,
        headers={"content-type": "text/event-stream"},
        content=stream(with_usage=with_usage),
    )


def proxy_for(handler: Any, tmp_path: Path) -> Any:
    config = {
        "providers": {"up": {"kind": "openai", "models": ["gpt-x"]}},
        "store": {"url": f"sqlite:///{tmp_path}/proxy.db"},
    }
    return build_proxy(config, transports={"up": HttpxTransport(httpx.MockTransport(handler))})


def counted(proxy: Any, kind: str) -> float:
    labels = {"provider": "up", "model": "gpt-x", "kind": kind}
    value = proxy.parts.metrics.registry.get_sample_value("llm_proxy_tokens_total", labels)
    return float(value or 0.0)


@pytest.mark.parametrize(
    "options",
    [None, {}, {"include_usage": False}, {"include_obfuscation": False}],
    ids=["none", "empty", "false", "other-option"],
)
async def test_a_chat_stream_is_counted_though_its_client_did_not_ask(
    options: dict[str, Any] | None, tmp_path: Path
) -> None:
    asked: list[dict[str, Any]] = []

    def provider(request: httpx.Request) -> httpx.Response:
        asked.append(json.loads(request.content))
        return openai_like(request)

    proxy = proxy_for(provider, tmp_path)
    body: dict[str, Any] = {"model": "gpt-x", "messages": [], "stream": True}
    if options is not None:
        body["stream_options"] = options
    transport = httpx.ASGITransport(app=proxy)
    async with proxy.lifespan(), httpx.AsyncClient(transport=transport, base_url="http://h") as c:
        answer = await c.post(
            "/v1/chat/completions", json=body, headers={"accept-encoding": "gzip"}
        )
    assert answer.content == stream(with_usage=False)
    assert "content-length" not in answer.headers
    assert asked[0]["stream_options"] == {**(options or {}), "include_usage": True}
    kinds = ("prompt", "completion", "cache_read", "cache_write", "reasoning")
    assert [counted(proxy, kind) for kind in kinds] == [1000, 300, 600, 100, 200]


async def test_what_the_client_asked_for_passes_untouched(tmp_path: Path) -> None:
    sent: list[httpx.Request] = []

    def provider(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return openai_like(request)

    proxy = proxy_for(provider, tmp_path)
    asked = {"model": "gpt-x", "messages": [], "stream": True}
    asked["stream_options"] = {"include_usage": True}
    bodies = [asked, {"model": "gpt-x", "messages": []}]
    transport = httpx.ASGITransport(app=proxy)
    async with proxy.lifespan(), httpx.AsyncClient(transport=transport, base_url="http://h") as c:
        answers = [(await c.post("/v1/chat/completions", json=b)).content for b in bodies]
    assert answers[0] == stream(with_usage=True)
    assert [json.loads(r.content) for r in sent] == bodies
    assert counted(proxy, "reasoning") == 200


async def test_an_error_answer_to_the_asking_request_passes_as_it_is(tmp_path: Path) -> None:
    error = {"error": {"message": "no", "type": "invalid_request_error", "code": None}}
    proxy = proxy_for(lambda request: httpx.Response(400, json=error), tmp_path)
    body = {"model": "gpt-x", "messages": [], "stream": True}
    transport = httpx.ASGITransport(app=proxy)
    async with proxy.lifespan(), httpx.AsyncClient(transport=transport, base_url="http://h") as c:
        answer = await c.post("/v1/chat/completions", json=body)
    assert (answer.status_code, answer.json()) == (400, error)


def routed(body: bytes, path: str = "/v1/chat/completions") -> RequestContext:
    ctx = RequestContext("r", path, WireFormat.OPENAI)
    ctx.body = body
    provider = Provider.from_config("up", ProviderConfig(kind="openai", models=["gpt-x"]))
    ctx.route = Route(provider, None, None)
    return ctx


@pytest.mark.parametrize(
    ("body", "path"),
    [
        pytest.param(b'{"model":"gpt-x","messages":[]}', None, id="json-answer"),
        pytest.param(b'{"stream":true,"stream_options":{"include_usage":true}}', None, id="asked"),
        pytest.param(b'{"stream":true,"stream_options":"yes"}', None, id="refused-anyway"),
        pytest.param(b'{"stream":true', None, id="malformed"),
        pytest.param(b'{"stream":true}', "/v1/completions", id="legacy-completions"),
        pytest.param(b'{"stream":true}', "/v1/responses", id="responses"),
    ],
)
def test_only_a_chat_stream_without_usage_asks_for_it(body: bytes, path: str | None) -> None:
    assert body_asking_usage(routed(body, path or "/v1/chat/completions"), None) is None


def test_the_asking_body_asks_for_the_fallback_model_too() -> None:
    ctx = routed(b'{"model":"gpt-x","stream":true,"messages":[],"stream_options":{"a":1}}')
    asked = body_asking_usage(ctx, "gpt-fallback")
    assert asked is not None
    assert json.loads(asked) == {
        "model": "gpt-fallback",
        "stream": True,
        "messages": [],
        "stream_options": {"a": 1, "include_usage": True},
    }
    ctx.route = None  # Upstream alone parses no body for this
    assert body_asking_usage(ctx, None) is None
