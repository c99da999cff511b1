"""The translated exchange, driven message by message: what the provider gets, what the
client gets and when (streams as they arrive, one send per upstream read at most), how a
stream ends, and the token usage counted from the codec."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from starlette.types import ASGIApp

from llm_proxy_mw import Provider, Router
from llm_proxy_mw.config import ProviderConfig
from llm_proxy_mw.context import RequestContext, RequestContextMiddleware
from llm_proxy_mw.errors import UpstreamProtocolError
from llm_proxy_mw.metrics import MetricsMiddleware, ProxyMetrics
from llm_proxy_mw.retry import RetryMiddleware
from llm_proxy_mw.routing import RoutingMiddleware
from llm_proxy_mw.upstream import UpstreamApp
from tests.asgi_helpers import (
    AsgiDriver,
    ScriptedResponse,
    ScriptedTransport,
    eventually,
    http_scope,
)
from tests.codec_double import ChatToMessages, MessagesToChat, registered

pytestmark = pytest.mark.anyio

SSE = ("content-type", "text/event-stream; charset=utf-8")
JSON = ("content-type", "application/json")


@pytest.fixture(autouse=True)
def codecs() -> Iterator[None]:
    with registered(ChatToMessages(), MessagesToChat()):
        yield


class Stack:
    """Context, Metrics, Routing and Upstream over one scripted provider per kind."""

    def __init__(self, *, retry: bool = False, **router: Any) -> None:
        self.claude = ScriptedTransport()
        self.gpt = ScriptedTransport()
        providers = [
            Provider.from_config(
                "claude",
                ProviderConfig(
                    kind="anthropic",
                    base_url="https://claude.example/v1",
                    api_key="sk-ant",  # type: ignore[arg-type]
                    models=["claude-x", "claude-y"],
                    default_max_tokens=77,
                ),
                self.claude,
            ),
            Provider.from_config(
                "gpt",
                ProviderConfig(kind="openai", base_url="https://gpt.example/v1", models=["gpt-4o"]),
                self.gpt,
            ),
        ]
        self.seen: list[RequestContext] = []
        metrics = ProxyMetrics(CollectorRegistry(), models=["claude-x", "gpt-4o"])
        routed: ASGIApp = RoutingMiddleware(
            UpstreamApp(providers), router=Router(providers, **router)
        )
        if retry:
            routed = RetryMiddleware(routed)
        self.app = RequestContextMiddleware(
            MetricsMiddleware(
                routed,
                metrics=metrics,
                on_request=lambda ctx, status, duration: self.seen.append(ctx),
            )
        )

    def driver(
        self, body: dict[str, Any], path: str = "/v1/chat/completions", **kw: Any
    ) -> AsgiDriver:
        raw = json.dumps(body).encode()
        driver = AsgiDriver(self.app, http_scope(path, body=raw, **kw))
        driver.request(raw)
        return driver


def answer(
    transport: ScriptedTransport, status: int, headers: list[tuple[str, str]], *chunks: bytes
) -> ScriptedResponse:
    """Script the provider's whole answer to the next request."""
    response = ScriptedResponse(status, headers)
    response.feed(*chunks)
    response.end()
    transport.respond(response)
    return response


def chat(**extra: Any) -> dict[str, Any]:
    return {"model": "claude-x", "messages": [{"role": "user", "content": "hi"}], **extra}


def message_json(text: str = "hello", **usage: int) -> bytes:
    body = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-x",
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": usage or {"input_tokens": 5, "output_tokens": 2},
    }
    return json.dumps(body).encode()


def event(kind: str, **fields: Any) -> bytes:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **fields})}\n\n".encode()


START = event(
    "message_start",
    message={"id": "msg_1", "model": "claude-x", "usage": {"input_tokens": 7, "output_tokens": 1}},
)
PING = event("ping")
DELTA_A = event("content_block_delta", index=0, delta={"type": "text_delta", "text": "Hel"})
DELTA_B = event("content_block_delta", index=0, delta={"type": "text_delta", "text": "lo"})
STOP = event("message_delta", delta={"stop_reason": "end_turn"}, usage={"output_tokens": 3})
END = event("message_stop")


def chat_events(body: bytes) -> list[Any]:
    """The data of each event a Chat client got; ``[DONE]`` kept as the string."""
    out: list[Any] = []
    for block in body.split(b"\n\n"):
        if block.strip():
            data = block.strip().removeprefix(b"data: ")
            out.append("[DONE]" if data == b"[DONE]" else json.loads(data))
    return out


async def test_a_json_request_is_translated_both_ways() -> None:
    stack = Stack()
    headers = [JSON, ("accept-encoding", "gzip"), ("authorization", "Bearer client")]
    async with stack.driver(chat(), query_string=b"api-version=1", headers=headers) as driver:
        driver.start()
        await eventually(lambda: stack.claude.requests != [])
        sent = stack.claude.requests[0]
        assert sent.url == "https://claude.example/v1/messages"  # no client query string
        assert json.loads(sent.body) == {
            "model": "claude-x",
            "max_tokens": 77,  # the provider's default_max_tokens
            "messages": [{"role": "user", "content": "hi"}],
        }
        names = [n for n, _ in sent.headers]
        assert "accept-encoding" not in names and "authorization" not in names
        assert ("content-type", "application/json") in sent.headers
        assert ("x-api-key", "sk-ant") in sent.headers and (
            "anthropic-version",
            "2023-06-01",
        ) in sent.headers
        answer(
            stack.claude,
            200,
            [JSON, ("content-length", "999"), ("x-upstream", "1")],
            message_json("hello there"),
        )
        await driver.finish()
    assert driver.status == 200
    completion = driver.json()
    assert completion["object"] == "chat.completion"
    assert completion["choices"][0]["message"]["content"] == "hello there"
    assert completion["usage"]["prompt_tokens"] == 5
    assert driver.headers["content-length"] == str(len(driver.body))
    assert driver.headers["content-type"] == "application/json"
    assert driver.headers["x-llm-proxy-provider"] == "claude"
    assert driver.headers["x-upstream"] == "1"
    usage = stack.seen[0].usage
    assert (usage.prompt_tokens, usage.completion_tokens) == (5, 2)


async def test_an_untranslatable_request_is_400_before_anything_is_sent() -> None:
    stack = Stack()
    async with stack.driver(chat(n=2)) as driver:
        driver.start()
        await driver.finish()
    assert driver.status == 400
    assert driver.json()["error"]["param"] == "n"
    assert driver.json()["error"]["code"] == "unsupported_parameter"
    assert stack.claude.requests == []


async def test_a_provider_error_is_converted_with_its_status() -> None:
    stack = Stack()
    async with stack.driver(chat()) as driver:
        driver.start()
        body = b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'
        answer(stack.claude, 529, [JSON, ("content-length", str(len(body)))], body)
        await driver.finish()
    assert driver.status == 503
    assert driver.json()["error"]["message"] == "Overloaded"
    assert driver.headers["content-length"] == str(len(driver.body))
    assert driver.headers["x-llm-proxy-provider"] == "claude"


async def test_a_stream_is_translated_as_it_arrives() -> None:
    stack = Stack()
    async with stack.driver(chat(stream=True)) as driver:
        driver.start()
        upstream = ScriptedResponse(200, [SSE, ("content-encoding", "identity")])
        stack.claude.respond(upstream)
        await eventually(lambda: driver.body_messages == [] and upstream.waiting)
        assert driver.status == 200
        assert driver.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert "content-length" not in driver.headers
        assert "content-encoding" not in driver.headers
        for reads, chunk in enumerate((START, PING + DELTA_A, DELTA_B[:10]), start=1):
            upstream.feed(chunk)
            await eventually(lambda n=reads: upstream.reads == n and upstream.waiting)  # type: ignore[misc]
        # One send per read that completed an event: none for the ping alone, none for
        # half an event.
        assert [m["more_body"] for m in driver.body_messages] == [True, True]
        assert chat_events(driver.body)[-1]["choices"][0]["delta"] == {"content": "Hel"}
        upstream.feed(DELTA_B[10:] + STOP, END)
        upstream.end()
        await driver.finish()
    events = chat_events(driver.body)
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1]) == "Hello"
    assert events[-2]["choices"][0]["finish_reason"] == "stop"
    assert events[-1] == "[DONE]"
    assert driver.complete
    # The client did not ask for usage in its stream; it is counted all the same.
    usage = stack.seen[0].usage
    assert (usage.prompt_tokens, usage.completion_tokens) == (7, 3)


async def test_usage_asked_for_comes_as_the_last_chunk() -> None:
    stack = Stack()
    async with stack.driver(chat(stream=True, stream_options={"include_usage": True})) as driver:
        driver.start()
        answer(stack.claude, 200, [SSE], START + DELTA_A + STOP + END)
        await driver.finish()
    events = chat_events(driver.body)
    assert events[-1] == "[DONE]"
    assert events[-2]["usage"]["completion_tokens"] == 3


async def test_a_stream_that_fails_midway_ends_with_an_error_never_done() -> None:
    stack = Stack()
    async with stack.driver(chat(stream=True)) as driver:
        driver.start()
        upstream = ScriptedResponse(200, [SSE])
        upstream.feed(START, DELTA_A)
        upstream.fail(UpstreamProtocolError("The connection was reset."))
        stack.claude.respond(upstream)
        await driver.finish()
    events = chat_events(driver.body)
    assert events[-1]["error"]["message"] == "The connection was reset."
    assert "[DONE]" not in events
    assert stack.seen[0].attempts[-1].outcome == "protocol_error"
    assert upstream.closed


async def test_a_stream_that_ends_early_is_not_a_clean_end() -> None:
    stack = Stack()
    async with stack.driver(chat(stream=True)) as driver:
        driver.start()
        answer(stack.claude, 200, [SSE], START, DELTA_A)
        await driver.finish()
    events = chat_events(driver.body)
    assert "error" in events[-1]
    assert "[DONE]" not in events


async def test_an_oversized_upstream_event_is_a_terminal_error() -> None:
    stack = Stack()
    async with stack.driver(chat(stream=True)) as driver:
        driver.start()
        upstream = ScriptedResponse(200, [SSE])
        upstream.feed(START, b"data: " + b"x" * (5 * 1024 * 1024))
        stack.claude.respond(upstream)
        await driver.finish()
    assert "error" in chat_events(driver.body)[-1]


async def test_a_client_that_leaves_cancels_the_translated_stream() -> None:
    stack = Stack()
    async with stack.driver(chat(stream=True)) as driver:
        driver.start()
        upstream = ScriptedResponse(200, [SSE])
        upstream.feed(START)
        stack.claude.respond(upstream)
        await eventually(lambda: len(driver.body_messages) == 1 and upstream.waiting)
        driver.disconnect()
        await driver.finish()
    assert upstream.read_cancelled
    assert upstream.closed


async def test_a_messages_client_gets_named_events() -> None:
    stack = Stack()
    body = {
        "model": "gpt-4o",
        "max_tokens": 9,
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
    }
    async with stack.driver(body, "/v1/messages") as driver:
        driver.start()
        await eventually(lambda: stack.gpt.requests != [])
        sent = stack.gpt.requests[0]
        assert sent.url == "https://gpt.example/v1/chat/completions"
        assert json.loads(sent.body)["stream_options"] == {"include_usage": True}
        upstream = ScriptedResponse(200, [SSE])
        chunk = {
            "id": "c",
            "model": "gpt-4o",
            "choices": [{"index": 0, "delta": {"content": "hey"}}],
        }
        last = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        usage = {"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 1}}
        upstream.feed(*(f"data: {json.dumps(c)}\r\n\r\n".encode() for c in (chunk, last, usage)))
        upstream.feed(b"data: [DONE]\r\n\r\n")
        stack.gpt.respond(upstream)
        await driver.finish()
    names = [
        line.removeprefix(b"event: ")
        for line in driver.body.split(b"\n")
        if line.startswith(b"event: ")
    ]
    assert names[0] == b"message_start" and names[-1] == b"message_stop"
    assert b"[DONE]" not in driver.body
    assert upstream.closed  # released at [DONE], without waiting for the end of the body
    usage_seen = stack.seen[0].usage
    assert (usage_seen.prompt_tokens, usage_seen.completion_tokens) == (4, 1)


async def test_a_compressed_or_malformed_answer_is_a_bad_gateway() -> None:
    stack = Stack()
    for headers, body in [([JSON, ("content-encoding", "gzip")], b"\x1f\x8b"), ([JSON], b"<html>")]:
        async with stack.driver(chat()) as driver:
            driver.start()
            answer(stack.claude, 200, headers, body)
            await driver.finish()
        assert driver.status == 502
        assert driver.json()["error"]["code"] == "protocol_error"


async def test_a_fallback_model_is_asked_for_by_name_and_answers_with_it() -> None:
    stack = Stack(retry=True, model_fallbacks={"claude-x": ["claude-y"]})
    body = {"model": "claude-x", "max_tokens": 9, "messages": [{"role": "user", "content": "hi"}]}
    async with stack.driver(body, "/v1/messages") as driver:
        driver.start()
        answer(
            stack.claude,
            529,
            [JSON],
            b'{"type":"error","error":{"type":"overloaded_error","message":"busy"}}',
        )
        answer(stack.claude, 200, [JSON], message_json().replace(b'"claude-x"', b'"claude-y"'))
        await driver.finish()
    first, second = stack.claude.requests
    assert first.body == json.dumps(body).encode()  # passed through: the client's own bytes
    assert json.loads(second.body) == {**body, "model": "claude-y"}
    assert driver.status == 200
    assert driver.json()["model"] == "claude-y"
    assert driver.headers["x-llm-proxy-attempts"] == "2"


async def test_a_fallback_model_of_another_kind_is_translated() -> None:
    stack = Stack(retry=True, model_fallbacks={"gpt-4o": ["claude-x"]})
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    async with stack.driver(body) as driver:
        driver.start()
        answer(stack.gpt, 503, [JSON], b'{"error":{"message":"down","type":"server_error"}}')
        answer(stack.claude, 200, [JSON], message_json())
        await driver.finish()
    assert json.loads(stack.claude.requests[0].body)["model"] == "claude-x"
    assert driver.status == 200
    assert driver.json()["model"] == "claude-x"
    assert driver.headers["x-llm-proxy-provider"] == "claude"
