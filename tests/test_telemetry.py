"""The request's GenAI span and its attempt spans, recorded by an SDK ``TracerProvider`` the
proxy is given (never the global one: it can be set once per process).

Every test runs twice: with the SDK's ``SimpleSpanProcessor`` the proxy records its spans
directly (``_otel_direct``), and with a subclass of it (which might hook ``on_start``) it
records them through the SDK's own span objects."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
import pytest
from opentelemetry import baggage, propagate
from opentelemetry.context import Context, attach, detach
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    StatusCode,
    TraceFlags,
    TraceState,
    get_current_span,
    set_span_in_context,
)
from starlette.types import Message

from llm_proxy_mw import build_proxy, telemetry
from llm_proxy_mw._otel_direct import DirectTracer
from llm_proxy_mw.context import RequestContextMiddleware
from llm_proxy_mw.errors import ClientDisconnected, UpstreamConnectError
from llm_proxy_mw.telemetry import TelemetryMiddleware
from llm_proxy_mw.transports import UpstreamRequest, UpstreamResponse
from tests.asgi_helpers import GUARD_SECONDS, http_scope
from tests.fakes.transports import RecordingTransport

GPT = "gpt-4o-mini"
CLAUDE = "claude-sonnet-4-5"
KEY = "sk-telemetry-provider-key-0123456789"
CHAT = {"model": GPT, "messages": [{"role": "user", "content": "hi"}]}


class ScriptedTransport(RecordingTransport):
    """Answers each request with the next scripted status (an exception type: raised; bytes:
    a 200 JSON answer), then like the echo provider."""

    def __init__(self, *script: int | bytes | type[Exception]) -> None:
        super().__init__()
        self.script = list(script)

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        if not self.script:
            return await super().send(request)
        self.sent.append(request)
        step = self.script.pop(0)
        if isinstance(step, type):
            raise step("scripted")
        body = b'{"error": {"message": "scripted", "type": "server_error"}}'
        if isinstance(step, bytes):
            step, body = 200, step
        return UpstreamResponse(
            step,
            [(b"content-type", b"application/json"), (b"retry-after-ms", b"1")],
            _chunks(body),
        )


def _chunks(*parts: bytes) -> Callable[[], Any]:
    remaining = list(parts)

    async def read_chunk() -> bytes:
        return remaining.pop(0) if remaining else b""

    return read_chunk


def provider(kind: str, model: str, **extra: Any) -> dict[str, Any]:
    return {
        "kind": kind,
        "base_url": f"https://{kind}.example:8443/v1",
        "api_key": KEY,
        "models": [model],
        **extra,
    }


class HookableProcessor(SimpleSpanProcessor):
    """A processor the proxy cannot know to see spans only at their end."""


@pytest.fixture(
    autouse=True,
    params=["direct spans", "the SDK's spans", "the telemetry layer reading the answer itself"],
)
def span_processor(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Which processor ``traced()`` sets up, and so which way the proxy records; and whether
    Metrics reads the answer for the span, as it does right inside the telemetry layer."""
    sdk = request.param == "the SDK's spans"
    module = sys.modules[__name__]
    monkeypatch.setattr(module, "PROCESSOR", HookableProcessor if sdk else SimpleSpanProcessor)
    monkeypatch.setattr(module, "READS_ITSELF", request.param.endswith("itself"))


PROCESSOR: type[SimpleSpanProcessor] = SimpleSpanProcessor
READS_ITSELF = False


def telemetry_layer(proxy: Any) -> TelemetryMiddleware:
    app = proxy.pipeline
    while not isinstance(app, TelemetryMiddleware):
        app = app.app
    return app


def recording_tracer(proxy: Any) -> Any:
    """The tracer the proxy's telemetry layer records with."""
    return telemetry_layer(proxy)._tracer


@dataclass
class Traced:
    client: httpx.AsyncClient
    exporter: InMemorySpanExporter
    tracer_provider: TracerProvider
    transports: dict[str, RecordingTransport]
    proxy: Any

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def request_span(self) -> ReadableSpan:
        (span,) = [s for s in self.spans() if s.attributes and "llm_proxy.attempts" in s.attributes]
        return span

    def attempt_spans(self) -> list[ReadableSpan]:
        return [s for s in self.spans() if s.attributes and "url.full" in s.attributes]


@asynccontextmanager
async def traced(
    transports: dict[str, RecordingTransport] | None = None,
    *,
    providers: dict[str, Any] | None = None,
    **config: Any,
) -> AsyncIterator[Traced]:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(PROCESSOR(exporter))
    providers = providers or {
        "gpt": provider("openai", GPT),
        "claude": provider("anthropic", CLAUDE),
    }
    transports = transports or {name: RecordingTransport() for name in providers}
    proxy = build_proxy(
        {"providers": providers, **config},
        transports=transports,
        tracer_provider=tracer_provider,
    )
    layer = telemetry_layer(proxy)
    assert layer._answer_inside  # Metrics is right inside it
    layer._answer_inside = not READS_ITSELF
    transport = httpx.ASGITransport(app=proxy)
    async with (
        proxy.lifespan(),
        httpx.AsyncClient(transport=transport, base_url="http://host") as client,
    ):
        yield Traced(client, exporter, tracer_provider, transports, proxy)
    tracer = recording_tracer(proxy)
    assert isinstance(tracer, DirectTracer)
    assert (tracer.route() is not None) is (PROCESSOR is SimpleSpanProcessor)
    tracer_provider.shutdown()


# -- the request span ---------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_chat_request_is_one_client_span_with_the_genai_attributes() -> None:
    async with traced() as t:
        body = {**CHAT, "max_tokens": 50, "temperature": 0.5, "top_p": 1}
        response = await t.client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200
    span = t.request_span()
    assert span.name == f"chat {GPT}"
    assert span.kind is SpanKind.CLIENT
    assert span.status.status_code is StatusCode.UNSET
    attributes = dict(span.attributes or {})
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.provider.name"] == "openai"
    assert attributes["gen_ai.request.model"] == GPT
    assert attributes["gen_ai.response.model"] == GPT
    assert str(attributes["gen_ai.response.id"]).startswith("chatcmpl-")
    assert attributes["gen_ai.response.finish_reasons"] == ("stop",)
    assert attributes["gen_ai.usage.input_tokens"] == 1
    assert attributes["gen_ai.usage.output_tokens"] == 2
    for detail in ("cache_read.input", "cache_creation.input", "reasoning.output"):
        assert f"gen_ai.usage.{detail}_tokens" not in attributes  # none used: left out
    assert attributes["gen_ai.request.max_tokens"] == 50
    assert attributes["gen_ai.request.temperature"] == 0.5
    assert attributes["gen_ai.request.top_p"] == 1
    assert attributes["server.address"] == "openai.example"
    assert attributes["server.port"] == 8443
    assert attributes["llm_proxy.attempts"] == 1
    assert attributes["llm_proxy.principal"] == "anonymous"
    assert "error.type" not in attributes


@pytest.mark.anyio
async def test_cache_and_reasoning_tokens_when_the_provider_counts_them() -> None:
    answer = {
        "id": "msg_1",
        "type": "message",
        "model": CLAUDE,
        "content": [{"type": "text", "text": "ok"}],
        "stop_reason": "max_tokens",
        "usage": {
            "input_tokens": 10,
            "output_tokens": 3,
            "cache_read_input_tokens": 100,
            "cache_creation_input_tokens": 20,
        },
    }
    transports: dict[str, RecordingTransport] = {
        "claude": ScriptedTransport(json.dumps(answer).encode())
    }
    body = {"model": CLAUDE, "max_tokens": 3, "messages": CHAT["messages"]}
    async with traced(transports, providers={"claude": provider("anthropic", CLAUDE)}) as t:
        response = await t.client.post(
            "/v1/messages", json=body, headers={"anthropic-version": "2023-06-01"}
        )
    assert response.status_code == 200
    attributes = dict(t.request_span().attributes or {})
    assert attributes["gen_ai.usage.input_tokens"] == 130  # as OpenAI counts: cache included
    assert attributes["gen_ai.usage.cache_read.input_tokens"] == 100
    assert attributes["gen_ai.usage.cache_creation.input_tokens"] == 20
    assert attributes["gen_ai.response.finish_reasons"] == ("max_tokens",)
    assert attributes["gen_ai.response.id"] == "msg_1"


@pytest.mark.parametrize(
    ("path", "body", "kind", "response_id"),
    [
        ("/v1/messages", {"model": CLAUDE, "max_tokens": 9}, "anthropic", "msg_"),
        ("/v1/messages", {"model": GPT, "max_tokens": 9}, "openai", "chatcmpl-"),
        ("/v1/responses", {"model": GPT, "max_output_tokens": 9}, "openai", "resp_"),
        ("/v1/responses", {"model": CLAUDE, "max_output_tokens": 9}, "anthropic", "resp_"),
    ],
    ids=["messages", "messages-translated", "responses", "responses-translated"],
)
@pytest.mark.anyio
async def test_messages_and_responses_native_and_translated(
    path: str, body: dict[str, Any], kind: str, response_id: str
) -> None:
    prompt = {"input": "hi"} if path == "/v1/responses" else {"messages": CHAT["messages"]}
    headers = {"anthropic-version": "2023-06-01"} if path == "/v1/messages" else {}
    async with traced() as t:
        response = await t.client.post(path, json={**body, **prompt}, headers=headers)
    assert response.status_code == 200, response.text
    attributes = dict(t.request_span().attributes or {})
    assert t.request_span().name == f"chat {body['model']}"
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.provider.name"] == kind
    assert attributes["gen_ai.request.max_tokens"] == 9
    assert attributes["gen_ai.response.model"] == body["model"]
    # What the client got: a translated answer keeps the provider's id.
    assert attributes["gen_ai.response.id"] == response.json()["id"]
    assert response.json()["id"].startswith(response_id)
    assert attributes["gen_ai.usage.input_tokens"] >= 1
    assert attributes["gen_ai.usage.output_tokens"] >= 1


@pytest.mark.anyio
async def test_embeddings_and_other_endpoints() -> None:
    async with traced() as t:
        await t.client.post("/v1/embeddings", json={"model": GPT, "input": "hi"})
        embeddings = t.request_span()
        t.exporter.clear()
        await t.client.get("/v1/models")
    assert embeddings.name == f"embeddings {GPT}"
    attributes = dict(embeddings.attributes or {})
    assert attributes["gen_ai.operation.name"] == "embeddings"
    assert attributes["gen_ai.response.model"] == GPT  # at the end of the answer
    (models,) = [s for s in t.spans() if s.kind is SpanKind.CLIENT and s.parent is None]
    assert models.name == "GET models"
    assert "gen_ai.operation.name" not in (models.attributes or {})


@pytest.mark.anyio
async def test_the_span_is_a_child_of_the_hosts_current_span() -> None:
    async with traced() as t:
        tracer = t.tracer_provider.get_tracer("host")
        with tracer.start_as_current_span("GET /llm", kind=SpanKind.SERVER) as host:
            await t.client.post("/v1/chat/completions", json=CHAT)
    span = t.request_span()
    assert span.parent is not None
    assert span.parent.span_id == host.get_span_context().span_id
    assert span.context.trace_id == host.get_span_context().trace_id
    (attempt,) = t.attempt_spans()
    assert attempt.parent is not None and attempt.parent.span_id == span.context.span_id


@pytest.mark.anyio
async def test_streams_carry_the_time_to_the_first_chunk() -> None:
    async with traced() as t:
        response = await t.client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert response.status_code == 200
    span = t.request_span()
    assert [e.name for e in span.events] == ["gen_ai.first_chunk"]
    attributes = dict(span.attributes or {})
    assert attributes["gen_ai.response.time_to_first_chunk"] > 0
    assert attributes["gen_ai.response.finish_reasons"] == ("stop",)
    assert str(attributes["gen_ai.response.id"]).startswith("chatcmpl-")


# -- attempts, retries, fallbacks, errors ----------------------------------------------------


@pytest.mark.anyio
async def test_each_attempt_is_a_span_and_each_wait_an_event() -> None:
    transports: dict[str, RecordingTransport] = {"gpt": ScriptedTransport(429, 503)}
    async with traced(transports, providers={"gpt": provider("openai", GPT)}) as t:
        response = await t.client.post("/v1/chat/completions?api-key=hush", json=CHAT)
    assert response.status_code == 200
    attempts = sorted(t.attempt_spans(), key=lambda s: s.start_time or 0)
    assert [a.name for a in attempts] == ["POST"] * 3
    codes = [dict(a.attributes or {})["http.response.status_code"] for a in attempts]
    assert codes == [429, 503, 200]
    assert [dict(a.attributes or {}).get("error.type") for a in attempts] == ["429", "503", None]
    assert [a.status.status_code for a in attempts] == [StatusCode.ERROR] * 2 + [StatusCode.UNSET]
    first = dict(attempts[0].attributes or {})
    assert first["url.full"] == "https://openai.example:8443/v1/chat/completions?api-key=REDACTED"
    assert first["http.request.method"] == "POST"
    assert first["server.address"] == "openai.example"
    span = t.request_span()
    waits = [e for e in span.events if e.name == "llm_proxy.retry.wait"]
    assert [dict(e.attributes or {})["llm_proxy.retry.wait_seconds"] for e in waits] == [
        0.001,
        0.001,
    ]
    assert dict(span.attributes or {})["llm_proxy.attempts"] == 3
    assert span.status.status_code is StatusCode.UNSET


@pytest.mark.anyio
async def test_a_fallback_shows_each_provider_tried() -> None:
    transports: dict[str, RecordingTransport] = {
        "gpt": ScriptedTransport(UpstreamConnectError),
        "claude": RecordingTransport(),
    }
    providers = {
        "gpt": provider("openai", GPT, fallbacks=["claude"]),
        "claude": provider("anthropic", CLAUDE),
    }
    async with traced(transports, providers=providers) as t:
        response = await t.client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 200
    attempts = sorted(t.attempt_spans(), key=lambda s: s.start_time or 0)
    tried = [dict(a.attributes or {})["llm_proxy.provider"] for a in attempts]
    assert tried == ["gpt", "claude"]
    assert dict(attempts[0].attributes or {})["error.type"] == "connect_error"
    assert dict(attempts[1].attributes or {})["server.address"] == "anthropic.example"
    assert dict(t.request_span().attributes or {})["gen_ai.provider.name"] == "anthropic"


@pytest.mark.anyio
async def test_a_failed_request_has_its_error_type_and_status() -> None:
    transports: dict[str, RecordingTransport] = {"gpt": ScriptedTransport(*[500] * 5)}
    async with traced(transports, providers={"gpt": provider("openai", GPT)}) as t:
        response = await t.client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 500
    span = t.request_span()
    assert span.status.status_code is StatusCode.ERROR
    assert dict(span.attributes or {})["error.type"] == "500"


@pytest.mark.anyio
async def test_a_request_refused_before_any_attempt_is_an_error_too() -> None:
    async with traced() as t:
        response = await t.client.post(
            "/v1/chat/completions",
            content=b"{not json",
            headers={"content-type": "application/json"},
        )
    assert response.status_code == 400
    span = t.request_span()
    assert span.status.status_code is StatusCode.ERROR
    assert dict(span.attributes or {})["error.type"] == "invalid_request"
    assert t.attempt_spans() == []


class StallingTransport(RecordingTransport):
    """A provider that takes the request and never answers."""

    def __init__(self) -> None:
        super().__init__()
        self.sending = asyncio.Event()

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        self.sent.append(request)
        self.sending.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


@pytest.mark.anyio
async def test_a_client_that_leaves_mid_attempt_ends_both_spans_as_errors() -> None:
    stalling = StallingTransport()
    body = json.dumps(CHAT).encode()
    sent: list[Message] = []

    async def receive() -> Message:
        if not stalling.sent:
            return {"type": "http.request", "body": body, "more_body": False}
        await stalling.sending.wait()
        return {"type": "http.disconnect"}  # the client is gone while the provider thinks

    async def send(message: Message) -> None:
        sent.append(message)

    providers = {"gpt": provider("openai", GPT)}
    async with traced({"gpt": stalling}, providers=providers) as t:
        with anyio.fail_after(GUARD_SECONDS):
            with contextlib.suppress(ClientDisconnected):
                await t.proxy(http_scope(body=body), receive, send)
    assert sent == []  # nobody to answer
    request_span = t.request_span()
    assert request_span.status.status_code is StatusCode.ERROR
    assert dict(request_span.attributes or {})["error.type"] == "client_closed"
    (attempt,) = t.attempt_spans()
    assert attempt.status.status_code is StatusCode.ERROR
    assert dict(attempt.attributes or {})["error.type"] == "CancelledError"  # cut short
    assert attempt.end_time is not None and attempt.parent is not None
    assert attempt.parent.span_id == request_span.context.span_id


@pytest.mark.anyio
async def test_span_names_stay_right_while_what_they_are_kept_for_stays_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Clients name models: the layer keeps a bounded number of names (here 2) and none for
    # a model name longer than it keeps.
    monkeypatch.setattr(telemetry, "_MAX_NAMED", 2)
    models = ["model-a", "model-b", "model-c", "m" * (telemetry._MAX_NAMED_MODEL + 1)]
    async with traced(providers={"gpt": provider("openai", GPT)}) as t:
        for model in models:
            await t.client.post("/v1/chat/completions", json={**CHAT, "model": model})
            assert len(telemetry_layer(t.proxy)._named) <= 2
        await t.client.post("/v1/chat/completions", json=CHAT)
    names = [s.name for s in t.spans() if s.kind is SpanKind.CLIENT and s.name != "POST"]
    assert names == [f"chat {model}" for model in models] + [f"chat {GPT}"]
    assert len(telemetry_layer(t.proxy)._named) <= 2


# -- trace context to the provider -----------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "provider_name"), [(GPT, "gpt"), (CLAUDE, "claude")], ids=["as-is", "translated"]
)
@pytest.mark.anyio
async def test_the_provider_gets_the_attempts_traceparent_not_the_clients(
    model: str, provider_name: str
) -> None:
    theirs = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    async with traced() as t:
        response = await t.client.post(
            "/v1/chat/completions",
            json={**CHAT, "model": model},
            headers={"traceparent": theirs, "tracestate": "client=1", "baggage": "k=v"},
        )
    assert response.status_code == 200, response.text
    sent = dict(t.transports[provider_name].sent[-1].headers)
    (attempt,) = t.attempt_spans()
    context = attempt.context
    ids = f"{context.trace_id:032x}-{context.span_id:016x}"
    assert sent["traceparent"] == f"00-{ids}-{context.trace_flags:02x}"
    names = [name for name, _ in t.transports[provider_name].sent[-1].headers]
    assert names.count("traceparent") == 1
    assert "tracestate" not in names
    # The proxy's context has no baggage of its own: the client's goes on, as untraced.
    assert sent["baggage"] == "k=v"


HOST_PARENT = SpanContext(
    0x4BF92F3577B34DA6A3CE929D0E0E4736,
    0x00F067AA0BA902B7,
    is_remote=True,
    trace_flags=TraceFlags(TraceFlags.SAMPLED),
    trace_state=TraceState([("host", "1")]),
)


async def _post_under(context: Context, t: Traced) -> dict[str, str]:
    """A request made while ``context`` is current (the host's), and the headers the
    provider got."""
    token = attach(context)
    try:
        response = await t.client.post("/v1/chat/completions", json=CHAT)
    finally:
        detach(token)
    assert response.status_code == 200
    return dict(t.transports["gpt"].sent[-1].headers)


@pytest.mark.anyio
async def test_the_provider_gets_the_hosts_trace_and_trace_state() -> None:
    async with traced() as t:
        sent = await _post_under(set_span_in_context(NonRecordingSpan(HOST_PARENT)), t)
    (attempt,) = t.attempt_spans()
    assert sent["traceparent"] == (
        f"00-{HOST_PARENT.trace_id:032x}-{attempt.context.span_id:016x}-01"
    )
    assert sent["tracestate"] == "host=1"
    assert "baggage" not in sent


@pytest.mark.anyio
async def test_the_provider_gets_the_hosts_baggage() -> None:
    context = baggage.set_baggage(
        "tenant", "acme", set_span_in_context(NonRecordingSpan(HOST_PARENT))
    )
    async with traced() as t:
        sent = await _post_under(context, t)
    assert sent["baggage"] == "tenant=acme"
    assert sent["tracestate"] == "host=1"
    assert sent["traceparent"].split("-")[1] == f"{HOST_PARENT.trace_id:032x}"


class VendorPropagator(TextMapPropagator):
    """A host's own propagator, in place of the W3C ones."""

    def inject(self, carrier: Any, context: Context | None = None, setter: Any = None) -> None:
        span_context = get_current_span(context).get_span_context()
        carrier["X-Vendor-Trace"] = f"{span_context.trace_id:x};{span_context.span_id:x}"

    def extract(self, carrier: Any, context: Context | None = None, getter: Any = None) -> Context:
        return context or Context()

    @property
    def fields(self) -> set[str]:
        return {"X-Vendor-Trace"}


@pytest.mark.anyio
async def test_the_provider_gets_what_the_hosts_own_propagator_writes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(propagate, "_HTTP_TEXT_FORMAT", VendorPropagator())
    async with traced() as t:
        sent = await _post_under(set_span_in_context(NonRecordingSpan(HOST_PARENT)), t)
    (attempt,) = t.attempt_spans()
    assert sent["x-vendor-trace"] == f"{HOST_PARENT.trace_id:x};{attempt.context.span_id:x}"
    assert "traceparent" not in sent


@pytest.mark.anyio
async def test_the_context_holds_the_request_spans_ids() -> None:
    async with traced() as t:
        response = await t.client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 200
    span = t.request_span()
    proxy_ctx_ids = [(s.context.trace_id, s.context.span_id) for s in t.spans() if s.parent is None]
    assert proxy_ctx_ids == [(span.context.trace_id, span.context.span_id)]


@pytest.mark.anyio
async def test_without_a_tracer_provider_the_clients_trace_headers_pass_as_before() -> None:
    transport = RecordingTransport()
    proxy = build_proxy(
        {"providers": {"gpt": provider("openai", GPT)}}, transports={"gpt": transport}
    )
    theirs = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    async with (
        proxy.lifespan(),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=proxy), base_url="http://h") as client,
    ):
        await client.post("/v1/chat/completions", json=CHAT, headers={"traceparent": theirs})
    assert dict(transport.sent[-1].headers)["traceparent"] == theirs


# -- content ---------------------------------------------------------------------------------


def everything_recorded(spans: list[ReadableSpan]) -> str:
    parts = []
    for span in spans:
        parts.append(span.name)
        parts.append(json.dumps(dict(span.attributes or {}), default=str))
        parts += [json.dumps(dict(e.attributes or {}), default=str) for e in span.events]
    return "\n".join(parts)


@pytest.mark.anyio
async def test_no_content_is_recorded_by_default() -> None:
    body = {"model": GPT, "messages": [{"role": "user", "content": "the secret plan"}]}
    async with traced() as t:
        await t.client.post("/v1/chat/completions", json=body)
        await t.client.post("/v1/chat/completions", json={**body, "stream": True})
    recorded = everything_recorded(t.spans())
    assert "secret plan" not in recorded
    assert "gen_ai.input.messages" not in recorded
    assert KEY not in recorded


@pytest.mark.anyio
async def test_content_is_recorded_bounded_with_capture_content() -> None:
    body = {
        "model": GPT,
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "x" * 500},
        ],
    }
    async with traced(otel={"capture_content": True, "max_content_bytes": 300}) as t:
        await t.client.post("/v1/chat/completions", json=body)
    attributes = dict(t.request_span().attributes or {})
    prompt = str(attributes["gen_ai.input.messages"])
    assert prompt.startswith('[{"role":"system","content":"be brief"}')
    assert len(prompt.encode()) == 300
    output = str(attributes["gen_ai.output.messages"])
    assert "echo: " in output and len(output.encode()) <= 300


@pytest.mark.anyio
async def test_latest_conventions_leave_out_the_old_system_attribute(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with traced() as t:
        await t.client.post("/v1/chat/completions", json=CHAT)
    assert dict(t.request_span().attributes or {})["gen_ai.system"] == "openai"
    monkeypatch.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", "http, gen_ai_latest_experimental")
    async with traced() as t:
        await t.client.post("/v1/chat/completions", json=CHAT)
    attributes = dict(t.request_span().attributes or {})
    assert "gen_ai.system" not in attributes
    assert attributes["gen_ai.provider.name"] == "openai"


@pytest.mark.anyio
async def test_a_request_sampled_out_records_nothing_yet_sends_its_context() -> None:
    transport = RecordingTransport()
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider(sampler=ALWAYS_OFF)
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    proxy = build_proxy(
        {"providers": {"gpt": provider("openai", GPT)}},
        transports={"gpt": transport},
        tracer_provider=tracer_provider,
    )
    theirs = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    async with (
        proxy.lifespan(),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=proxy), base_url="http://h") as client,
    ):
        response = await client.post(
            "/v1/chat/completions", json=CHAT, headers={"traceparent": theirs}
        )
    assert response.status_code == 200
    assert exporter.get_finished_spans() == ()
    sent = dict(transport.sent[-1].headers)["traceparent"]
    assert sent != theirs
    assert int(sent.rpartition("-")[2], 16) & 1 == 0  # not sampled


@pytest.mark.anyio
async def test_a_retried_request_sampled_out_sends_one_context_on_each_attempt() -> None:
    transport = ScriptedTransport(429)
    proxy = build_proxy(
        {"providers": {"gpt": provider("openai", GPT)}},
        transports={"gpt": transport},
        tracer_provider=TracerProvider(sampler=ALWAYS_OFF),
    )
    theirs = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    async with (
        proxy.lifespan(),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=proxy), base_url="http://h") as client,
    ):
        response = await client.post(
            "/v1/chat/completions", json=CHAT, headers={"traceparent": theirs}
        )
    assert response.status_code == 200
    sent = [[v for k, v in r.headers if k == "traceparent"] for r in transport.sent]
    assert len(sent) == 2
    assert sent[0] == sent[1] and len(sent[0]) == 1
    assert sent[0][0] != theirs


# -- the layer by itself --------------------------------------------------------------------


@pytest.mark.anyio
async def test_the_layer_mounted_by_itself_reads_the_answer_it_passes_on() -> None:
    """Without Metrics inside, the layer watches the answer itself: model, finish reason
    and the first chunk of a stream, from an app of the host's own."""
    events = [
        {"id": "chatcmpl-9", "model": "gpt-own", "choices": [{"delta": {"content": "hi"}}]},
        {"id": "chatcmpl-9", "choices": [{"delta": {}, "finish_reason": "stop"}]},
    ]

    async def app(scope: Any, receive: Any, send: Any) -> None:
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for event in events:
            chunk = b"data: " + json.dumps(event).encode() + b"\n\n"
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(PROCESSOR(exporter))
    layer = TelemetryMiddleware(app, tracer_provider=tracer_provider)
    assert not layer._answer_inside
    transport = httpx.ASGITransport(app=RequestContextMiddleware(layer))
    async with httpx.AsyncClient(transport=transport, base_url="http://host") as client:
        response = await client.post("/v1/chat/completions", json={"model": "m"})
    assert response.status_code == 200
    (span,) = exporter.get_finished_spans()
    assert span.name == "chat"  # no layer read the body: the model asked for is unknown
    assert span.attributes is not None
    assert span.attributes["gen_ai.response.model"] == "gpt-own"
    assert span.attributes["gen_ai.response.id"] == "chatcmpl-9"
    assert span.attributes["gen_ai.response.finish_reasons"] == ("stop",)
    assert span.attributes["gen_ai.response.time_to_first_chunk"] > 0
    (first_chunk,) = span.events
    assert first_chunk.name == "gen_ai.first_chunk"
    assert span.start_time is not None and span.end_time is not None
    assert span.start_time <= first_chunk.timestamp <= span.end_time
