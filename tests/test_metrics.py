"""Metrics: the Prometheus families through the whole stack, who may read ``/metrics``,
``promtool``, streams at the ASGI message level, and counters continued across restarts.

The stack is ``build_proxy`` with the offline echo provider and ``httpx.MockTransport``
providers whose answers each test scripts; the exposition is parsed with
``prometheus_client.parser`` and compared series by series, so an extra or a missing label
set fails as surely as a wrong value. The streaming tests drive ``MetricsMiddleware`` alone
with an inner app that sends the chunks the test releases, and record every ``send``.
Retention (old buckets purged, with an injected clock) is covered in ``test_history.py``.
"""

from __future__ import annotations

import asyncio
import gzip
import inspect
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from starlette.types import Message, Receive, Scope, Send

from llm_proxy_mw import HttpxTransport, LLMProxy, build_proxy, errors
from llm_proxy_mw.config import ConfigError
from llm_proxy_mw.context import Attempt, ClientDisconnected, get_context
from llm_proxy_mw.errors import OUTCOMES, ProxyError, UpstreamConnectError
from llm_proxy_mw.health import HealthRegistry
from llm_proxy_mw.history import DURATION_BUCKETS, total_key
from llm_proxy_mw.metrics import CLIENT_CLOSED, MetricsMiddleware, ProxyMetrics, exposition
from llm_proxy_mw.transports import UpstreamRequest, UpstreamResponse
from tests.asgi_helpers import AsgiDriver, eventually, http_scope
from tests.conftest import require_binary

pytestmark = pytest.mark.anyio

ADMIN_KEY = "admin-key-0123456789abcdef"
USER_KEY = "user-key-0123456789abcdef"
AS_ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
AS_USER = {"authorization": f"Bearer {USER_KEY}"}
AUTH = {
    "api_keys": [
        {"name": "ops-admin", "key": ADMIN_KEY, "admin": True},
        {"name": "app-user", "key": USER_KEY},
    ]
}
#: "hello world": the echo provider counts 2 prompt tokens and answers "echo: hello world", 3.
MESSAGES = [{"role": "user", "content": "hello world"}]
LE = [*(str(float(b)) for b in DURATION_BUCKETS), "+Inf"]

#: The families issue 4 makes a public contract: type and label names.
CONTRACT = {
    "llm_proxy_requests": ("counter", {"provider", "model", "status"}),
    "llm_proxy_request_duration_seconds": ("histogram", {"provider", "model"}),
    "llm_proxy_time_to_first_byte_seconds": ("histogram", {"provider", "model"}),
    "llm_proxy_upstream_attempts": ("counter", {"provider", "model", "outcome"}),
    "llm_proxy_tokens": ("counter", {"provider", "model", "kind"}),
    "llm_proxy_provider_success_ratio": ("gauge", {"provider"}),
    "llm_proxy_circuit_state": ("gauge", {"provider"}),
    "llm_proxy_retries": ("counter", {"provider", "reason"}),
    "llm_proxy_requests_in_flight": ("gauge", set()),
}


class Exposition:
    """A parsed exposition: families by name, and samples by name and label values."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families = {f.name: f for f in text_string_to_metric_families(text)}

    def series(self, sample: str, *labels: str) -> dict[tuple[str, ...], float]:
        """Every sample named ``sample``, keyed by its values of ``labels`` in that order."""
        found: dict[tuple[str, ...], float] = {}
        for family in self.families.values():
            for s in family.samples:
                if s.name == sample:
                    assert set(s.labels) == set(labels), (sample, s.labels)
                    found[tuple(s.labels[name] for name in labels)] = s.value
        return found

    def value(self, sample: str, **labels: str) -> float | None:
        for family in self.families.values():
            for s in family.samples:
                if s.name == sample and s.labels == labels:
                    return s.value
        return None

    def buckets(self, histogram: str, provider: str, model: str) -> list[float]:
        """The cumulative bucket counts of one histogram series, in ``le`` order."""
        found = self.series(f"{histogram}_bucket", "provider", "model", "le")
        return [found[(provider, model, le)] for le in LE]


def client_for(proxy: LLMProxy, headers: Mapping[str, str] | None = None) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=proxy)
    return httpx.AsyncClient(transport=transport, base_url="http://proxy", headers=headers)


def chat(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": MESSAGES, **extra}


def message(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "max_tokens": 32, "messages": MESSAGES, **extra}


def sse(*events: dict[str, Any], done: bool = True) -> bytes:
    body = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
    return body + (b"data: [DONE]\n\n" if done else b"")


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion}


class Scripted:
    """An httpx ``MockTransport`` handler answering each call with the next scripted response."""

    def __init__(self) -> None:
        self.responses: list[httpx.Response] = []
        self.calls = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        return self.responses.pop(0)


def scenario_config(**metrics: Any) -> dict[str, Any]:
    return {
        "providers": {
            "echo": {"kind": "echo", "models": ["gpt-echo", "claude-echo", "*"]},
            "mock": {
                "kind": "openai",
                "base_url": "http://mock.invalid/v1",
                "models": ["gpt-mock"],
                "retry": {"backoff_base": 0.001},
            },
            "down": {
                "kind": "openai",
                "base_url": "http://down.invalid/v1",
                "models": ["gpt-down"],
                "retry": {"max_attempts": 1},
            },
        },
        "auth": AUTH,
        "store": {"url": "sqlite:///:memory:"},
        "metrics": metrics,
    }


async def run_scenario() -> tuple[LLMProxy, str]:
    """A known set of requests through the whole stack; returns the proxy and its exposition.

    echo: OpenAI JSON and SSE (gpt-echo), Anthropic JSON and SSE (claude-echo), one model no
    provider lists by name ("other"). A request without a key (401). mock: a 503 retried,
    then a 429 and a 409 retried, then an SSE stream with a final usage chunk. down: ten
    500s open its circuit, so an eleventh request fails fast (503) without an attempt.
    """
    mock, down = Scripted(), Scripted()
    mock.responses = [
        httpx.Response(503, json={"error": {"message": "busy"}}),
        httpx.Response(200, json={"id": "a", "usage": usage(11, 5)}),
        httpx.Response(429, json={"error": {"message": "slow"}}, headers={"retry-after": "0"}),
        httpx.Response(409, json={"error": {"message": "conflict"}}),
        httpx.Response(200, json={"id": "b", "usage": usage(1, 2)}),
        httpx.Response(
            200,
            headers={"content-type": "text/event-stream"},
            content=sse(
                {"id": "c", "choices": [{"index": 0, "delta": {"content": "hi"}}]},
                {"id": "c", "choices": [], "usage": usage(7, 4)},
            ),
        ),
    ]
    down.responses = [httpx.Response(500, json={"error": {"message": "down"}})] * 10
    proxy = build_proxy(
        scenario_config(),
        transports={
            "mock": HttpxTransport(httpx.MockTransport(mock)),
            "down": HttpxTransport(httpx.MockTransport(down)),
        },
    )
    stream_usage = {"stream": True, "stream_options": {"include_usage": True}}
    async with proxy.lifespan(), client_for(proxy, AS_USER) as client:
        statuses = [
            (await client.post(path, json=body)).status_code
            for path, body in [
                ("/v1/chat/completions", chat("gpt-echo")),
                ("/v1/chat/completions", chat("gpt-echo", **stream_usage)),
                ("/v1/messages", message("claude-echo")),
                ("/v1/messages", message("claude-echo", stream=True)),
                ("/v1/chat/completions", chat("mystery-model")),
            ]
        ]
        anonymous = await client.post(
            "/v1/chat/completions", json=chat("gpt-echo"), headers={"authorization": ""}
        )
        retried = [
            await client.post("/v1/chat/completions", json=chat("gpt-mock")),
            await client.post("/v1/chat/completions", json=chat("gpt-mock")),
        ]
        streamed = await client.post("/v1/chat/completions", json=chat("gpt-mock", stream=True))
        failed = [
            (await client.post("/v1/chat/completions", json=chat("gpt-down"))).status_code
            for _ in range(10)
        ]
        fast = await client.post("/v1/chat/completions", json=chat("gpt-down"))
        metrics = await client.get("/metrics", headers=AS_ADMIN)
    assert statuses == [200] * 5
    assert anonymous.status_code == 401
    assert [r.status_code for r in retried] == [200, 200]
    assert [r.headers["x-llm-proxy-attempts"] for r in retried] == ["2", "3"]
    assert streamed.status_code == 200 and b"[DONE]" in streamed.content
    assert failed == [500] * 10
    assert fast.status_code == 503 and "x-llm-proxy-attempts" not in fast.headers
    assert (mock.calls, down.calls) == (6, 10)
    assert metrics.status_code == 200
    return proxy, metrics.text


# -- the families, through the whole stack ---------------------------------------------------


async def test_every_contract_family_is_exposed_with_its_labels() -> None:
    _, text = await run_scenario()
    exposed = Exposition(text)
    for name, (kind, labels) in CONTRACT.items():
        family = exposed.families.get(name)
        assert family is not None, name
        assert family.type == kind, name
        assert family.samples, name
        for sample in family.samples:
            assert set(sample.labels) - {"le"} == labels, (name, sample)
    # Bounded labels: no key, no key name, no raw path ever becomes a label value.
    values = {v for f in exposed.families.values() for s in f.samples for v in s.labels.values()}
    for secret in (ADMIN_KEY, USER_KEY, "ops-admin", "app-user", "mystery-model"):
        assert secret not in values
    assert not any("/" in value for value in values)


async def test_requests_attempts_retries_and_tokens_after_a_known_set_of_requests() -> None:
    _, text = await run_scenario()
    exposed = Exposition(text)
    assert exposed.series("llm_proxy_requests_total", "provider", "model", "status") == {
        ("echo", "gpt-echo", "200"): 2,
        ("echo", "claude-echo", "200"): 2,
        ("echo", "other", "200"): 1,  # "mystery-model" is in no provider's list
        ("none", "none", "401"): 1,  # rejected by auth before routing
        ("mock", "gpt-mock", "200"): 3,
        ("down", "gpt-down", "500"): 10,
        ("none", "gpt-down", "503"): 1,  # the open circuit: no provider was tried
    }
    assert exposed.series("llm_proxy_upstream_attempts_total", "provider", "model", "outcome") == {
        ("echo", "gpt-echo", "success"): 2,
        ("echo", "claude-echo", "success"): 2,
        ("echo", "other", "success"): 1,
        ("mock", "gpt-mock", "server_error"): 1,
        ("mock", "gpt-mock", "rate_limited"): 1,
        ("mock", "gpt-mock", "conflict"): 1,
        ("mock", "gpt-mock", "success"): 3,
        ("down", "gpt-down", "server_error"): 10,
    }
    assert exposed.series("llm_proxy_retries_total", "provider", "reason") == {
        ("mock", "server_error"): 1,
        ("mock", "rate_limited"): 1,
        ("mock", "conflict"): 1,
    }
    # JSON and SSE of each wire format count 2 + 3 each: 4 and 6 prove both were read.
    assert exposed.series("llm_proxy_tokens_total", "provider", "model", "kind") == {
        ("echo", "gpt-echo", "prompt"): 4,
        ("echo", "gpt-echo", "completion"): 6,
        ("echo", "claude-echo", "prompt"): 4,
        ("echo", "claude-echo", "completion"): 6,
        ("echo", "other", "prompt"): 2,
        ("echo", "other", "completion"): 3,
        ("mock", "gpt-mock", "prompt"): 11 + 1 + 7,  # JSON, JSON, and the SSE usage chunk
        ("mock", "gpt-mock", "completion"): 5 + 2 + 4,
    }
    assert exposed.value("llm_proxy_requests_in_flight") == 0


async def test_latency_histograms_count_every_request() -> None:
    _, text = await run_scenario()
    exposed = Exposition(text)
    requests = {
        ("echo", "gpt-echo"): 2,
        ("echo", "claude-echo"): 2,
        ("echo", "other"): 1,
        ("none", "none"): 1,
        ("mock", "gpt-mock"): 3,
        ("down", "gpt-down"): 10,
        ("none", "gpt-down"): 1,
    }
    duration = "llm_proxy_request_duration_seconds"
    assert exposed.series(f"{duration}_count", "provider", "model") == requests
    # Errors the proxy renders itself (401, the fail-fast 503) send no body through Metrics.
    answered = {k: n for k, n in requests.items() if k[0] != "none"}
    ttfb = "llm_proxy_time_to_first_byte_seconds"
    assert exposed.series(f"{ttfb}_count", "provider", "model") == answered
    for name, series in ((duration, requests), (ttfb, answered)):
        sums = exposed.series(f"{name}_sum", "provider", "model")
        for (provider, model), count in series.items():
            cumulative = exposed.buckets(name, provider, model)
            assert cumulative == sorted(cumulative) and cumulative[-1] == count
            assert 0 < sums[(provider, model)] < count * 5.0  # seconds, in process
    # The first byte comes before the last one.
    duration_sums = exposed.series(f"{duration}_sum", "provider", "model")
    for key, first_byte in exposed.series(f"{ttfb}_sum", "provider", "model").items():
        assert first_byte <= duration_sums[key], key


async def test_health_gauges_after_a_known_set_of_requests() -> None:
    _, text = await run_scenario()
    exposed = Exposition(text)
    ratio = exposed.series("llm_proxy_provider_success_ratio", "provider")
    # mock: 3 successes, one 503; the 429 and the 409 spend budget but are not failures.
    assert ratio == {("echo",): 1.0, ("mock",): 0.75, ("down",): 0.0}
    circuit = exposed.series("llm_proxy_circuit_state", "provider")
    assert circuit == {("echo",): 0, ("mock",): 0, ("down",): 2}  # closed, closed, open
    budget = exposed.series("llm_proxy_retry_budget_tokens", "provider")
    # mock: 50 - 1 (503) + 0.5 - 1 (429) - 1 (409) + 0.5 + 0.5; down: 50 - ten failures.
    assert budget == {("echo",): 50.0, ("mock",): 48.5, ("down",): 40.0}


async def test_promtool_accepts_the_exposition() -> None:
    promtool = require_binary("promtool")
    _, text = await run_scenario()
    command = [promtool, "check", "metrics"]
    result = await anyio.run_process(command, input=text.encode(), check=False)
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert result.stdout == result.stderr == b""  # not even a lint hint


# -- who may read /metrics, /dashboard and /metrics/history ----------------------------------


OPERATOR_PATHS = ["/metrics", "/dashboard", "/metrics/history"]


@pytest.mark.parametrize("path", OPERATOR_PATHS)
@pytest.mark.parametrize(
    ("headers", "status"),
    [({}, 401), (AS_USER, 403), ({"x-api-key": USER_KEY}, 403), (AS_ADMIN, 200)],
    ids=["no-key", "user", "user-x-api-key", "admin"],
)
async def test_operator_endpoints_need_an_admin(
    path: str, headers: dict[str, str], status: int
) -> None:
    proxy = build_proxy(scenario_config())
    async with proxy.lifespan(), client_for(proxy) as client:
        response = await client.get(path, headers=headers)
    assert response.status_code == status
    if status == 200:
        assert response.headers["content-type"].startswith(
            {"/metrics": "text/plain", "/dashboard": "text/html"}.get(path, "application/json")
        )
    else:
        error = response.json()["error"]
        assert error["code"] == ("authentication_error" if status == 401 else "permission_denied")
        assert "llm_proxy_requests" not in response.text


@pytest.mark.parametrize("path", OPERATOR_PATHS)
async def test_public_metrics_need_no_key(path: str) -> None:
    proxy = build_proxy(scenario_config(public=True))
    async with proxy.lifespan(), client_for(proxy) as client:
        assert (await client.get(path)).status_code == 200
        # Public reads; the /v1 pipeline still needs a key.
        assert (await client.post("/v1/chat/completions", json=chat("gpt-echo"))).status_code == 401


@pytest.mark.parametrize("path", OPERATOR_PATHS)
async def test_without_auth_the_endpoints_are_open(path: str) -> None:
    config = scenario_config()
    del config["auth"]
    proxy = build_proxy(config)
    async with proxy.lifespan(), client_for(proxy) as client:
        await client.post("/v1/chat/completions", json=chat("gpt-echo"))
        response = await client.get(path)
    assert response.status_code == 200
    if path == "/metrics":
        requests = Exposition(response.text).series(
            "llm_proxy_requests_total", "provider", "model", "status"
        )
        assert requests == {("echo", "gpt-echo", "200"): 1}


# -- streams at the ASGI message level -------------------------------------------------------


class StreamingApp:
    """The inner app: answers with the headers given, then each chunk the test releases."""

    def __init__(self, headers: list[tuple[bytes, bytes]], *, model: str = "gpt-x") -> None:
        self.headers = headers
        self.model = model
        self._chunks: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.scope: Scope | None = None

    def release(self, chunk: bytes) -> None:
        self._chunks.put_nowait(chunk)

    def end(self) -> None:
        self._chunks.put_nowait(None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scope = scope
        ctx = get_context(scope)
        ctx.provider, ctx.model = "up", self.model
        ctx.attempts.append(Attempt("up", "success", 200, 0.0))
        await send({"type": "http.response.start", "status": 200, "headers": self.headers})
        while (chunk := await self._chunks.get()) is not None:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8")]
JSON_HEADERS = [(b"content-type", b"application/json")]


def openai_chunks() -> list[bytes]:
    """An OpenAI chat stream: role, two deltas, finish, the final usage chunk, [DONE]."""
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "gpt-x"}

    def delta(content: str, finish: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": {"content": content}, "finish_reason": finish}
        return {**base, "choices": [choice]}

    usage = {"prompt_tokens": 12, "completion_tokens": 34, "total_tokens": 46}
    events = [delta(""), delta("Hello"), delta(" there"), delta("", "stop")]
    return [
        *(sse(e, done=False) for e in events),
        sse({**base, "choices": [], "usage": usage}, done=False),
        b"data: [DONE]\n\n",
    ]


def anthropic_chunks() -> list[bytes]:
    """An Anthropic stream: message_start (input tokens), deltas, message_delta (output)."""

    def event(name: str, **data: Any) -> bytes:
        return f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n".encode()

    start = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-x",
        "content": [],
        "usage": {"input_tokens": 25, "cache_read_input_tokens": 7, "output_tokens": 1},
    }
    block = {"type": "text", "text": ""}
    return [
        event("message_start", message=start),
        event("content_block_start", index=0, content_block=block),
        event("content_block_delta", index=0, delta={"type": "text_delta", "text": "Hello"}),
        event("content_block_stop", index=0),
        event("message_delta", delta={"stop_reason": "end_turn"}, usage={"output_tokens": 15}),
        event("message_stop"),
    ]


async def stream_through(
    metrics: ProxyMetrics, app: StreamingApp, chunks: list[bytes], *, first_byte_after: float = 0
) -> AsgiDriver:
    """Release ``chunks`` one at a time, checking each is sent on before the next exists."""
    async with AsgiDriver(MetricsMiddleware(app, metrics=metrics), http_scope()) as driver:
        driver.request(b"{}")
        driver.start()
        await eventually(lambda: len(driver.sent) == 1)  # the start, not held back
        assert driver.sent[0]["type"] == "http.response.start"
        assert metrics.in_flight._value.get() == 1
        await asyncio.sleep(first_byte_after)
        ctx = get_context(driver.scope)
        assert ctx.ttfb is None
        for count, chunk in enumerate(chunks, start=1):
            app.release(chunk)
            await eventually(lambda count=count: len(driver.body_messages) == count)
            assert driver.body_messages[-1]["body"] == chunk  # forwarded as it came
            assert ctx.ttfb is not None and ctx.ttfb >= first_byte_after
            for _ in range(3):  # nothing more goes out until the next chunk is released
                await asyncio.sleep(0)
            assert len(driver.body_messages) == count
        app.end()
        await driver.finish()
    assert driver.body == b"".join(chunks)
    assert metrics.in_flight._value.get() == 0
    return driver


def tokens(metrics: ProxyMetrics, kind: str, model: str = "gpt-x") -> float | None:
    return metrics.registry.get_sample_value(
        "llm_proxy_tokens_total", {"provider": "up", "model": model, "kind": kind}
    )


def fresh_metrics() -> ProxyMetrics:
    return ProxyMetrics(CollectorRegistry(), models=["gpt-x", "claude-x"])


async def test_openai_stream_is_forwarded_chunk_by_chunk_with_ttfb_and_tokens() -> None:
    metrics = fresh_metrics()
    app = StreamingApp(SSE_HEADERS)
    driver = await stream_through(metrics, app, openai_chunks(), first_byte_after=0.05)
    ctx = get_context(driver.scope)
    labels = {"provider": "up", "model": "gpt-x"}
    sample = metrics.registry.get_sample_value
    assert sample("llm_proxy_time_to_first_byte_seconds_count", labels) == 1
    assert sample("llm_proxy_time_to_first_byte_seconds_sum", labels) == ctx.ttfb
    assert ctx.ttfb is not None and 0.05 <= ctx.ttfb
    duration = sample("llm_proxy_request_duration_seconds_sum", labels)
    assert duration is not None and duration >= ctx.ttfb
    assert (tokens(metrics, "prompt"), tokens(metrics, "completion")) == (12, 34)
    assert (ctx.usage.prompt_tokens, ctx.usage.completion_tokens) == (12, 34)
    assert sample("llm_proxy_requests_total", {**labels, "status": "200"}) == 1


async def test_anthropic_stream_counts_message_start_and_message_delta() -> None:
    metrics = fresh_metrics()
    app = StreamingApp(SSE_HEADERS, model="claude-x")
    driver = await stream_through(metrics, app, anthropic_chunks(), first_byte_after=0.02)
    # input_tokens from message_start; output_tokens: message_delta's (cumulative) 15
    # replaces message_start's 1; cache_read_input_tokens is not an input_tokens.
    assert (tokens(metrics, "prompt", "claude-x"), tokens(metrics, "completion", "claude-x")) == (
        25,
        15,
    )
    ctx = get_context(driver.scope)
    assert ctx.ttfb is not None and ctx.ttfb >= 0.02


@pytest.mark.parametrize(
    ("chunks", "split_after", "expected"),
    [
        (openai_chunks, b'"usage": {"prompt_', (12, 34)),  # inside a key
        (openai_chunks, b'"prompt_tokens": 1', (12, 34)),  # inside a number
        (openai_chunks, b'"completion_tokens": 3', (12, 34)),
        (openai_chunks, b'"completion_tok', (12, 34)),  # inside the key's "_tokens"
        (openai_chunks, b'"completion_tokens":', (12, 34)),  # before the number
        (anthropic_chunks, b'"output_tokens": 1', (25, 15)),  # message_delta's 15
        (anthropic_chunks, b'"input_tok', (25, 15)),  # message_start's key
    ],
    ids=["openai-key", "openai-prompt-number", "openai-completion-number", "openai-marker",
         "openai-colon", "anthropic-delta", "anthropic-start"],
)  # fmt: skip
async def test_a_usage_event_split_across_two_chunks_is_still_counted(
    chunks: Any, split_after: bytes, expected: tuple[int, int]
) -> None:
    original: list[bytes] = chunks()
    model = "gpt-x" if chunks is openai_chunks else "claude-x"
    # Split the last event holding the marker, and pad the chunk before it with text
    # longer than any overlap a reader keeps, as a long completion would.
    index = max(i for i, c in enumerate(original) if split_after in c)
    event = original[index]
    cut = event.rindex(split_after) + len(split_after)
    filler = sse({"choices": [{"delta": {"content": "x" * 600}}]}, done=False)
    split = [*original[:index], filler + event[:cut], event[cut:], *original[index + 1 :]]
    metrics = fresh_metrics()
    await stream_through(metrics, StreamingApp(SSE_HEADERS, model=model), split)
    assert (tokens(metrics, "prompt", model), tokens(metrics, "completion", model)) == expected


async def test_json_usage_at_the_end_of_a_body_in_several_chunks() -> None:
    body = json.dumps(
        {
            "id": "chatcmpl-2",
            "choices": [{"message": {"content": "y" * 10_000}}],
            "usage": {"prompt_tokens": 321, "completion_tokens": 2_500, "total_tokens": 2_821},
        }
    ).encode()
    cut = body.rindex(b'"completion_tokens": 2') + len(b'"completion_tokens": 2')
    chunks = [body[:4000], body[4000:cut], body[cut:]]
    metrics = fresh_metrics()
    await stream_through(metrics, StreamingApp(JSON_HEADERS), chunks)
    assert (tokens(metrics, "prompt"), tokens(metrics, "completion")) == (321, 2_500)


#: Usage values a provider may send that are not token counts: too big for the stores
#: (10**20), for a float (10**400), for ``int()`` (5,000 digits), or not integers at all.
NOT_COUNTS = {
    "1e20": b"100000000000000000000",
    "1e400": b"1" + b"0" * 400,
    "5000 digits": b"9" * 5000,
    "over 1e9": b"1000000001",
    "negative": b"-5",
    "fraction": b"1.5",
    "exponent": b"2e3",
    "string": b'"12"',
    "bool": b"true",
}


def usage_body(prompt: bytes, *, sse: bool) -> bytes:
    usage = b'"usage":{"prompt_tokens":' + prompt + b',"completion_tokens":34}'
    if sse:
        return b'data: {"id":"c","choices":[],' + usage + b"}\n\ndata: [DONE]\n\n"
    return b'{"id":"c","choices":[],' + usage + b"}"


@pytest.mark.parametrize("prompt", NOT_COUNTS.values(), ids=NOT_COUNTS.keys())
@pytest.mark.parametrize("sse", [False, True], ids=["json", "sse"])
async def test_usage_numbers_that_are_not_token_counts_are_ignored(
    prompt: bytes, sse: bool
) -> None:
    body = usage_body(prompt, sse=sse)
    cut = body.index(prompt) + len(prompt) // 2  # a read ends inside the number
    metrics = fresh_metrics()
    app = StreamingApp(SSE_HEADERS if sse else JSON_HEADERS)
    driver = await stream_through(metrics, app, [body[:cut], body[cut:]])  # every byte through
    assert driver.body == body
    assert tokens(metrics, "prompt") is None
    assert tokens(metrics, "completion") == 34
    assert get_context(driver.scope).usage.prompt_tokens == 0
    labels = {"provider": "up", "model": "gpt-x", "status": "200"}
    assert metrics.registry.get_sample_value("llm_proxy_requests_total", labels) == 1


@pytest.mark.parametrize("sse", [False, True], ids=["json", "sse"])
async def test_usage_up_to_a_billion_tokens_is_counted(sse: bool) -> None:
    metrics = fresh_metrics()
    app = StreamingApp(SSE_HEADERS if sse else JSON_HEADERS)
    await stream_through(metrics, app, [usage_body(b"1000000000", sse=sse)])
    assert (tokens(metrics, "prompt"), tokens(metrics, "completion")) == (10**9, 34)


async def test_token_counts_another_layer_put_in_the_context_are_bounded_too() -> None:
    metrics = fresh_metrics()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        ctx = get_context(scope)
        ctx.provider, ctx.model = "up", "gpt-x"
        ctx.usage.prompt_tokens, ctx.usage.completion_tokens = 10**400, 7
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    driver = AsgiDriver(MetricsMiddleware(app, metrics=metrics), http_scope())
    await driver.run(b"{}")
    assert driver.body == b"ok"
    assert (tokens(metrics, "prompt"), tokens(metrics, "completion")) == (None, 7)


async def test_a_gzip_body_is_forwarded_intact_and_counts_no_tokens() -> None:
    payload = {"id": "x", "usage": {"prompt_tokens": 5, "completion_tokens": 6}}
    compressed = gzip.compress(json.dumps(payload).encode() * 20)
    chunks = [compressed[:50], compressed[50:]]
    metrics = fresh_metrics()
    headers = [*JSON_HEADERS, (b"content-encoding", b"gzip")]
    driver = await stream_through(metrics, StreamingApp(headers), chunks)
    assert driver.body == compressed
    assert driver.headers["content-encoding"] == "gzip"
    assert tokens(metrics, "prompt") is None and tokens(metrics, "completion") is None
    labels = {"provider": "up", "model": "gpt-x", "status": "200"}
    assert metrics.registry.get_sample_value("llm_proxy_requests_total", labels) == 1


async def test_errors_raised_inside_are_counted_with_their_status() -> None:
    metrics = fresh_metrics()
    seen: list[tuple[int, str | None]] = []

    async def failing(scope: Scope, receive: Receive, send: Send) -> None:
        get_context(scope).attempts.append(Attempt("up", "connect_error", None, 0.1))
        raise UpstreamConnectError("no route", provider="up")

    async def leaving(scope: Scope, receive: Receive, send: Send) -> None:
        raise ClientDisconnected

    def on_request(ctx: Any, status: int, duration: float) -> None:
        assert duration >= 0
        seen.append((status, ctx.provider))

    for app, error in ((failing, UpstreamConnectError), (leaving, ClientDisconnected)):
        middleware = MetricsMiddleware(app, metrics=metrics, on_request=on_request)
        with pytest.raises(error):
            await AsgiDriver(middleware, http_scope()).run(b"{}")
    assert seen == [(502, None), (CLIENT_CLOSED, None)]
    exposed = Exposition(exposition(metrics)[0].decode())
    assert exposed.series("llm_proxy_requests_total", "provider", "model", "status") == {
        ("none", "none", "502"): 1,
        ("none", "none", "499"): 1,
    }
    assert exposed.series("llm_proxy_upstream_attempts_total", "provider", "model", "outcome") == {
        ("up", "none", "connect_error"): 1
    }
    assert metrics.in_flight._value.get() == 0


async def test_other_scopes_pass_through_uncounted() -> None:
    metrics = fresh_metrics()
    calls: list[str] = []

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        calls.append(scope["type"])

    async def receive() -> Message:
        raise AssertionError("not called")

    async def send(message: Message) -> None:
        raise AssertionError("not called")

    await MetricsMiddleware(inner, metrics=metrics)({"type": "lifespan"}, receive, send)
    assert calls == ["lifespan"]
    exposed = Exposition(exposition(metrics)[0].decode())
    assert exposed.series("llm_proxy_requests_total", "provider", "model", "status") == {}
    assert exposed.value("llm_proxy_requests_in_flight") == 0


# -- the outcome label: exactly errors.OUTCOMES -----------------------------------------------


class ForeignError(UpstreamConnectError):
    """A transport's own error class, with a code of its own outside the closed set."""

    code = "foreign_code"


class ScriptedEndings:
    """An ``UpstreamTransport`` ending each attempt as scripted: a status, or an error raised."""

    def __init__(self, *endings: int | ProxyError) -> None:
        self.endings = list(endings)

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        ending = self.endings.pop(0)
        if isinstance(ending, ProxyError):
            raise ending
        body = [b"{}"]

        async def read_chunk() -> bytes:
            return body.pop() if body else b""

        return UpstreamResponse(ending, [(b"content-type", b"application/json")], read_chunk)

    async def aclose(self) -> None:
        pass


def every_ending() -> list[int | ProxyError]:
    """A status for each outcome of an answer, an instance of every class of the tree, and
    a foreign error: together, every way an attempt can end."""
    classes = [getattr(errors, name) for name in errors.__all__]
    tree = [cls for cls in classes if inspect.isclass(cls) and issubclass(cls, ProxyError)]
    return [
        *(200, 400, 408, 409, 429, 500, 529),
        *(cls("scripted") for cls in tree),
        ForeignError("scripted"),
    ]


async def exposed_after(transport: ScriptedEndings, requests: int, attempts: int) -> Exposition:
    provider = {
        "kind": "openai",
        "models": ["m"],
        "retry": {"max_attempts": attempts},
        # Every ending is scripted: no breaker or budget cuts an attempt short.
        "health": {"min_calls": 1000, "budget_max_tokens": 1000},
    }
    config = {"providers": {"p": provider}, "store": {"url": "sqlite:///:memory:"}}
    registry = CollectorRegistry()
    proxy = build_proxy(config, transports={"p": transport}, registry=registry)
    async with proxy.lifespan(), client_for(proxy) as client:
        for _ in range(requests):
            await client.post("/v1/chat/completions", json=chat("m"))
    assert transport.endings == []
    return Exposition(generate_latest(registry).decode())


async def test_the_outcome_label_takes_exactly_the_closed_set() -> None:
    endings = every_ending()
    exposed = await exposed_after(ScriptedEndings(*endings), len(endings), attempts=1)
    series = exposed.series("llm_proxy_upstream_attempts_total", "provider", "model", "outcome")
    assert {outcome for _, _, outcome in series} == OUTCOMES
    assert sum(series.values()) == len(endings)


def outcome_series(exposed: Exposition) -> list[dict[tuple[str, ...], float]]:
    """The attempts by (provider, model, outcome), and the retries by (provider, reason)."""
    return [
        exposed.series("llm_proxy_upstream_attempts_total", "provider", "model", "outcome"),
        exposed.series("llm_proxy_retries_total", "provider", "reason"),
    ]


async def test_a_retried_attempt_outside_the_closed_set_counts_as_other() -> None:
    transport = ScriptedEndings(ForeignError("scripted"), 200)
    exposed = await exposed_after(transport, 1, attempts=2)
    assert outcome_series(exposed) == [
        {("p", "m", "other"): 1, ("p", "m", "success"): 1},
        {("p", "other"): 1},
    ]


def test_restore_counts_a_stored_outcome_outside_the_closed_set_as_other() -> None:
    metrics = ProxyMetrics(CollectorRegistry(), models=["m"])
    totals = {
        total_key("attempts", "p", "m", "success"): 1,
        total_key("attempts", "p", "m", "foreign_code"): 2,
        total_key("retries", "p", "foreign_code"): 3,
    }
    assert metrics.restore(totals) == 3
    assert outcome_series(Exposition(exposition(metrics)[0].decode())) == [
        {("p", "m", "success"): 1, ("p", "m", "other"): 2},
        {("p", "other"): 3},
    ]


# -- restore, multiprocess -------------------------------------------------------------------


def test_restore_takes_known_totals_and_skips_the_rest() -> None:
    metrics = ProxyMetrics(CollectorRegistry(), models=["m"])
    restored = metrics.restore(
        {
            total_key("requests", "p", "m", 200): 3,
            total_key("tokens", "p", "m", "prompt"): 30,
            total_key("attempts", "p", "m", "success"): 4,
            total_key("retries", "p", "server_error"): 1,
            total_key("duration", "p", "m", 5): 2,
            total_key("duration", "p", "m", 15): 1,  # +Inf
            total_key("duration_sum", "p", "m"): 700.5,
            total_key("ttfb", "p", "m", 0): 3,
            total_key("ttfb_sum", "p", "m"): 0.01,
            # skipped: not JSON, not a list of labels, zero, unknown, bad arity or slot
            "requests_total|p|m|200": 9,
            total_key("requests", "p", "m", 201): 0,
            total_key("requests", "p", None, 201): 5,
            total_key("nonsense", "p"): 5,
            total_key("retries", "p"): 5,
            total_key("duration", "p", "m", 16): 5,
            total_key("duration", "p", "m", "x"): 5,
            json.dumps({"a": 1}): 5,
        }
    )
    assert restored == 9
    text = exposition(metrics)[0].decode()
    exposed = Exposition(text)
    assert exposed.series("llm_proxy_requests_total", "provider", "model", "status") == {
        ("p", "m", "200"): 3
    }
    assert exposed.value("llm_proxy_tokens_total", provider="p", model="m", kind="prompt") == 30
    assert exposed.value("llm_proxy_retries_total", provider="p", reason="server_error") == 1
    duration = exposed.buckets("llm_proxy_request_duration_seconds", "p", "m")
    assert duration == [0] * 5 + [2] * 10 + [3]
    assert exposed.value("llm_proxy_request_duration_seconds_sum", provider="p", model="m") == 700.5
    assert exposed.value("llm_proxy_time_to_first_byte_seconds_count", provider="p", model="m") == 3


def test_multiprocess_exposition_reads_the_directory_and_keeps_local_gauges(
    tmp_path: Path,
) -> None:
    # In this process prometheus_client keeps values in memory (PROMETHEUS_MULTIPROC_DIR was
    # not set at import), so the directory is empty: only this worker's health gauges show.
    # The real multiprocess run (uvicorn --workers 2) is in test_metrics_e2e.py.
    metrics = ProxyMetrics(CollectorRegistry(), models=["m"], health=HealthRegistry(["p"]))
    metrics.requests.labels("p", "m", "200").inc()
    body, content_type = exposition(metrics, multiprocess_dir=str(tmp_path))
    exposed = Exposition(body.decode())
    assert content_type.startswith("text/plain")
    assert exposed.value("llm_proxy_circuit_state", provider="p") == 0
    assert exposed.value("llm_proxy_provider_success_ratio", provider="p") == 1.0
    assert "llm_proxy_requests" not in exposed.families


# -- restart: counters continue from the store -----------------------------------------------


def sqlite_config(path: Path, **metrics: Any) -> dict[str, Any]:
    return {
        "providers": {"echo": {"kind": "echo", "models": ["gpt-echo", "claude-echo"]}},
        "store": {"url": f"sqlite:///{path}"},
        "metrics": metrics,
    }


async def serve(proxy: LLMProxy, requests: int) -> Exposition:
    """``requests`` requests (alternating wire formats and streaming) inside the lifespan."""
    async with proxy.lifespan(), client_for(proxy) as client:
        for i in range(requests):
            if i % 2:
                body = message("claude-echo", stream=i % 4 == 1)
                response = await client.post("/v1/messages", json=body)
            else:
                response = await client.post("/v1/chat/completions", json=chat("claude-echo"))
            assert response.status_code == 200
        return Exposition((await client.get("/metrics")).text)


def restart_counts(exposed: Exposition) -> tuple[float | None, ...]:
    labels = {"provider": "echo", "model": "claude-echo"}
    return (
        exposed.value("llm_proxy_requests_total", **labels, status="200"),
        exposed.value("llm_proxy_request_duration_seconds_count", **labels),
        exposed.value("llm_proxy_request_duration_seconds_bucket", **labels, le="+Inf"),
        exposed.value("llm_proxy_time_to_first_byte_seconds_count", **labels),
        exposed.value("llm_proxy_upstream_attempts_total", **labels, outcome="success"),
        exposed.value("llm_proxy_tokens_total", **labels, kind="prompt"),
        exposed.value("llm_proxy_tokens_total", **labels, kind="completion"),
    )


async def test_counters_continue_across_a_restart_on_the_same_sqlite_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "m.db"
    n = 6
    first = await serve(build_proxy(sqlite_config(path)), n)
    assert restart_counts(first) == (n, n, n, n, n, 2 * n, 3 * n)
    duration_sum = first.value(
        "llm_proxy_request_duration_seconds_sum", provider="echo", model="claude-echo"
    )

    second = build_proxy(sqlite_config(path))  # a new process would build exactly this
    async with second.lifespan(), client_for(second) as client:
        restored = Exposition((await client.get("/metrics")).text)
        assert restart_counts(restored) == (n, n, n, n, n, 2 * n, 3 * n)
        assert restored.buckets(
            "llm_proxy_request_duration_seconds", "echo", "claude-echo"
        ) == first.buckets("llm_proxy_request_duration_seconds", "echo", "claude-echo")
        assert restored.value(
            "llm_proxy_request_duration_seconds_sum", provider="echo", model="claude-echo"
        ) == pytest.approx(duration_sum)
        await client.post("/v1/chat/completions", json=chat("claude-echo"))
        after = Exposition((await client.get("/metrics")).text)
    assert restart_counts(after) == (n + 1, n + 1, n + 1, n + 1, n + 1, 2 * n + 2, 3 * n + 3)

    third = await serve(build_proxy(sqlite_config(path)), 0)
    assert restart_counts(third) == (n + 1, n + 1, n + 1, n + 1, n + 1, 2 * n + 2, 3 * n + 3)


async def test_entering_the_lifespan_again_does_not_restore_twice(tmp_path: Path) -> None:
    proxy = build_proxy(sqlite_config(tmp_path / "m.db"))
    for round_ in range(1, 4):
        exposed = await serve(proxy, 1)
        assert restart_counts(exposed)[:2] == (round_, round_)


async def test_a_lazy_start_restores_the_stored_totals_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "m.db"
    await serve(build_proxy(sqlite_config(path)), 3)
    proxy = build_proxy(sqlite_config(path))  # the host forgot the lifespan
    try:
        async with client_for(proxy) as client:
            response = await client.post("/v1/chat/completions", json=chat("claude-echo"))
            assert response.status_code == 200
            assert proxy._lazy_start is not None
            await proxy._lazy_start
            exposed = Exposition((await client.get("/metrics")).text)
    finally:
        await proxy.aclose()
    # The request served before the start finished is counted once, on top of the three.
    assert restart_counts(exposed)[:2] == (4, 4)
    assert "lifespan was not entered" in caplog.text
    assert restart_counts(await serve(build_proxy(sqlite_config(path)), 0))[:2] == (4, 4)


# -- config ----------------------------------------------------------------------------------


def test_flush_interval_and_retention_reach_the_recorder(tmp_path: Path) -> None:
    default = build_proxy(sqlite_config(tmp_path / "a.db"))
    assert default.history is not None
    assert (default.history.flush_interval, default.history.retention_days) == (5.0, 30)
    tuned = build_proxy(
        sqlite_config(tmp_path / "b.db", flush_interval_seconds=0.25, retention_days=7)
    )
    assert tuned.history is not None
    assert (tuned.history.flush_interval, tuned.history.retention_days) == (0.25, 7)


@pytest.mark.parametrize("interval", [0, -1.0, math.nan])
def test_flush_interval_must_be_positive(tmp_path: Path, interval: float) -> None:
    with pytest.raises(ConfigError, match="metrics.flush_interval_seconds"):
        build_proxy(sqlite_config(tmp_path / "m.db", flush_interval_seconds=interval))
