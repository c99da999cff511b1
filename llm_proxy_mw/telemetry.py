"""``TelemetryMiddleware``: one OpenTelemetry span per proxied request, GenAI conventions.

The span is a CLIENT span, a child of whatever span is current when the request arrives (the
host's SERVER span, under its ASGI or Starlette instrumentation), named
``{gen_ai.operation.name} {gen_ai.request.model}``. It is current while the inner layers run;
Upstream opens a child span per attempt (``_otel_attempt.py``). Its attributes are read from
the request context once the request ended: Metrics, inside, has filled the usage by then.

It uses only the OpenTelemetry API and the ``TracerProvider`` given, else the global one that
the host or ``opentelemetry-instrument`` set, whenever it was set. Until one is set, a
request costs one check of a module global (``_recording_tracer``). Prompt and completion
content is recorded only with ``capture_content``, bounded by ``max_content_bytes``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode, Tracer, TracerProvider
from opentelemetry.util.types import AnyValue
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llm_proxy_mw._otel_answer import AnswerReader
from llm_proxy_mw._otel_attempt import RequestTrace, StartChild
from llm_proxy_mw._otel_context import attach, current, detach, ids_of
from llm_proxy_mw._otel_names import (
    SCHEMA_URL,
    add_request_attributes,
    operation_of,
    provider_name,
    span_name,
)
from llm_proxy_mw._usage import answer_format
from llm_proxy_mw.context import RequestContext, get_context, principal_id
from llm_proxy_mw.errors import ClientDisconnected, ProxyError
from llm_proxy_mw.metrics import MetricsMiddleware

__all__ = ["DEFAULT_MAX_CONTENT_BYTES", "TelemetryMiddleware"]

#: The most bytes of prompt, and of completion, one span records with ``capture_content``.
DEFAULT_MAX_CONTENT_BYTES = 16 * 1024
#: Request members that hold the prompt, and the system instructions, in the three APIs.
_INPUT_MEMBERS = ("messages", "input", "prompt")
_SYSTEM_MEMBERS = ("system", "instructions")
#: A span's endpoint, method, model and provider; and its name, operation and attributes.
_NameKey = tuple[str, str, str | None, str | None]
_Named = tuple[str, str | None, dict[str, Any]]
#: How many names ``_name`` keeps, and the longest model name it keeps one for.
_MAX_NAMED = 1024
_MAX_NAMED_MODEL = 256


class TelemetryMiddleware:
    """Traces each proxied request as a GenAI CLIENT span (see the module docstring).

    ``tracer_provider``: the provider to use, else the global one.
    ``capture_content``: record prompts and completions (``gen_ai.input.messages``,
    ``gen_ai.system_instructions``, ``gen_ai.output.messages``), each cut at
    ``max_content_bytes``. ``latest_conventions``: emit only the latest GenAI names, as
    ``OTEL_SEMCONV_STABILITY_OPT_IN=gen_ai_latest_experimental`` asks (the builder reads it);
    else the v1.36 ``gen_ai.system`` goes beside ``gen_ai.provider.name``.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        tracer_provider: TracerProvider | None = None,
        capture_content: bool = False,
        max_content_bytes: int = DEFAULT_MAX_CONTENT_BYTES,
        latest_conventions: bool = False,
    ) -> None:
        self.app = app
        self.tracer_provider = tracer_provider
        self.capture_content = capture_content
        self.max_content_bytes = max_content_bytes
        self.latest_conventions = latest_conventions
        self._provider: TracerProvider | None = None
        self._tracer: Tracer | None = None
        self._start_child: StartChild | None = None
        #: Each provider's attributes on an attempt span (``RequestTrace.server``).
        self._servers: dict[str, dict[str, AnyValue]] = {}
        self._named: dict[_NameKey, _Named] = {}
        #: Metrics right inside watches the answer go by: it reads it for the span too
        #: (``RequestTrace.read_answer``), so that one layer looks at each chunk, not two.
        self._answer_inside = isinstance(app, MetricsMiddleware)

    def _recording_tracer(self) -> Tracer | None:
        """The tracer of the provider in use, or ``None`` while there is none to record."""
        provider = self.tracer_provider
        if provider is None:
            # The API's own global (``get_tracer_provider`` reads the environment on each
            # call until one is set: 70 times the cost); checked in test_telemetry_internals.
            provider = trace._TRACER_PROVIDER
            if provider is None:
                return None
        if provider is not self._provider:
            tracer = _fastest(provider.get_tracer("llm_proxy_mw", schema_url=SCHEMA_URL))
            self._tracer = tracer
            self._start_child = getattr(tracer, "start_child", None)
            self._provider = provider
        return self._tracer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (tracer := self._recording_tracer()) is None:
            await self.app(scope, receive, send)
            return
        ctx = get_context(scope)
        host = current()
        span = tracer.start_span(
            span_name(ctx.route_path, scope["method"], ctx.model), host, SpanKind.CLIENT
        )
        tracing = ctx.telemetry = RequestTrace(
            ctx, tracer, span, host, self._servers, self._start_child
        )
        token = attach(tracing.context)
        if not tracing.recording:
            # Sampled out: the span only carries the context (to the provider too).
            try:
                await self.app(scope, receive, send)
            finally:
                detach(token)
                ctx.telemetry = None
            return
        trace_id, span_id, _, _ = ids_of(span.get_span_context())
        ctx.trace_id = trace_id.to_bytes(16, "big").hex()  # as {:032x}, for a third of the CPU
        ctx.span_id = span_id.to_bytes(8, "big").hex()
        if self.capture_content:
            tracing.capture = self.max_content_bytes
        if self._answer_inside:
            tracing.answer_wanted = True
        else:
            send = _AnswerReading(send, tracing).send
        status: int | None = None
        error_type: str | None = None
        try:
            await self.app(scope, receive, send)
        except ProxyError as error:
            error_type = error.code
            status = error.status_code
            raise
        except ClientDisconnected:
            error_type = "client_closed"
            raise
        finally:
            detach(token)
            ctx.telemetry = None
            self._describe(tracing, scope["method"], ctx.status or status, error_type)
            span.end()

    def _describe(
        self,
        tracing: RequestTrace,
        method: str,
        status: int | None,
        error_type: str | None,
    ) -> None:
        """The span's name, attributes and events, from what the request ended with (the
        model is known only once a layer read the body)."""
        ctx, span = tracing.ctx, tracing.span
        if error_type is None and status is not None and status >= 400:
            error_type = str(status)
        body = _parsed_body(ctx)
        route = ctx.route
        key = (ctx.route_path, method, ctx.model, route.provider.name if route else None)
        named = self._named.get(key)
        if named is None:
            named = self._name(tracing, key)
        name, operation, common = named
        span.update_name(name)
        attributes: dict[str, Any] = {
            **common,
            "llm_proxy.attempts": len(ctx.attempts),
            "llm_proxy.principal": principal_id(ctx),
        }
        if body:
            add_request_attributes(body, attributes)
        answer = tracing.answer
        if answer is not None:
            answer.finish(attributes)
            if answer.sse and ctx.ttfb is not None:
                attributes["gen_ai.response.time_to_first_chunk"] = ctx.ttfb
                span.add_event("gen_ai.first_chunk", timestamp=_first_chunk_time(ctx, ctx.ttfb))
            if self.capture_content and answer.content:
                attributes["gen_ai.output.messages"] = answer.content.decode("utf-8", "replace")
        usage = ctx.usage
        if operation is not None and (usage.prompt_tokens or usage.completion_tokens):
            attributes["gen_ai.usage.input_tokens"] = usage.prompt_tokens
            attributes["gen_ai.usage.output_tokens"] = usage.completion_tokens
            # The details only when there are some: each attribute costs the SDK ~0.5 µs.
            if usage.cache_read_tokens:
                attributes["gen_ai.usage.cache_read.input_tokens"] = usage.cache_read_tokens
            if usage.cache_write_tokens:
                attributes["gen_ai.usage.cache_creation.input_tokens"] = usage.cache_write_tokens
            if usage.reasoning_tokens:
                attributes["gen_ai.usage.reasoning.output_tokens"] = usage.reasoning_tokens
        if usage.cost_usd is not None:
            attributes["llm_proxy.cost_usd"] = float(usage.cost_usd)
        if self.capture_content and body:
            attributes.update(self._content(body))
        if error_type is not None:
            attributes["error.type"] = error_type
            span.set_status(StatusCode.ERROR)
        adopt = getattr(span, "adopt_attributes", None)
        if adopt is not None:
            adopt(attributes)  # a direct span takes the dict as it is: plain values, new keys
        else:
            span.set_attributes(attributes)

    def _name(self, tracing: RequestTrace, key: _NameKey) -> _Named:
        """The span's name, operation and the attributes that follow from its endpoint,
        method, model and provider; kept for the next such request (a bounded number: the
        model is the client's to name)."""
        route_path, method, model, _ = key
        operation = operation_of(route_path)
        common: dict[str, Any] = {}
        if operation is not None:
            common["gen_ai.operation.name"] = operation
        if model:
            common["gen_ai.request.model"] = model
        route = tracing.ctx.route
        if route is not None:
            kind = provider_name(route.provider.config.kind)
            common["gen_ai.provider.name"] = kind
            if not self.latest_conventions:
                common["gen_ai.system"] = kind
            address, port = tracing.server(route.provider)
            common["server.address"] = address
            common["server.port"] = port
        named = (span_name(route_path, method, model), operation, common)
        if model is None or len(model) <= _MAX_NAMED_MODEL:
            if len(self._named) >= _MAX_NAMED:
                self._named.clear()
            self._named[key] = named
        return named

    def _content(self, body: dict[str, Any]) -> dict[str, str]:
        """The prompt and the system instructions, as the client sent them, bounded."""
        out = {}
        for member in _INPUT_MEMBERS:
            if member in body:
                out["gen_ai.input.messages"] = self._bounded(body[member])
                break
        for member in _SYSTEM_MEMBERS:
            if member in body:
                out["gen_ai.system_instructions"] = self._bounded(body[member])
                break
        return out

    def _bounded(self, value: object) -> str:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        return text.encode()[: self.max_content_bytes].decode("utf-8", "ignore")


def _fastest(tracer: Tracer) -> Tracer:
    """``tracer``, or when it is the SDK's own a ``DirectTracer`` over it (``_otel_direct``:
    the same spans for less than half the CPU)."""
    if type(tracer).__module__ != "opentelemetry.sdk.trace":
        return tracer  # the SDK is not even loaded: nothing to import
    from llm_proxy_mw._otel_direct import direct_tracer

    return direct_tracer(tracer) or tracer


def _parsed_body(ctx: RequestContext) -> dict[str, Any] | None:
    """The request's JSON body if a layer read one (never read here: the request is over)."""
    if not ctx.body or not ctx.body_is_json:
        return None
    try:
        return ctx.json()
    except ProxyError:
        return None


def _first_chunk_time(ctx: RequestContext, ttfb: float) -> int:
    """When the first chunk went out, in ns since the epoch (spans' clock), from its time
    after the request's start (``perf_counter``'s clock)."""
    return time.time_ns() - round((time.perf_counter() - ctx.started - ttfb) * 1e9)


class _AnswerReading:
    """The traced request's ``send`` when no Metrics layer inside reads the answer for the
    span: the reader of the answer, and the time of its first body byte."""

    __slots__ = ("_send", "_tracing", "_answer")

    def __init__(self, send: Send, tracing: RequestTrace) -> None:
        self._send = send
        self._tracing = tracing
        self._answer: AnswerReader | None = None

    def send(self, message: Message) -> Awaitable[None]:
        if message["type"] == "http.response.body":
            if self._answer is not None and (body := message.get("body")):
                ctx = self._tracing.ctx
                if ctx.ttfb is None:
                    ctx.ttfb = time.perf_counter() - ctx.started
                self._answer.take(body)
        elif message["type"] == "http.response.start":
            kind = answer_format(message.get("headers", ()))
            if kind is not None:
                self._answer = self._tracing.read_answer(kind)
        return self._send(message)
