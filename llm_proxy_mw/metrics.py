"""``MetricsMiddleware``: counts every request, from the request context, once it ended.

It sits outside Auth, so rejected requests count too. It never holds a response back: it
watches ``send`` for the status, the first body byte and the token usage (``_usage.py``);
then the request is priced, counted in ``ProxyMetrics`` (``proxy_metrics.py``), recorded
in the usage ledger, and logged as one access record (``access_log.py``).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from logging import INFO
from typing import Literal, Protocol

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llm_proxy_mw._otel_answer import AnswerReader
from llm_proxy_mw._usage import UsageReader, answer_format
from llm_proxy_mw.access_log import access_logger, log_access
from llm_proxy_mw.context import RequestContext, get_context
from llm_proxy_mw.errors import ClientDisconnected, ProxyError
from llm_proxy_mw.proxy_metrics import CLIENT_CLOSED, ProxyMetrics, exposition
from llm_proxy_mw.wire import WireFormat

__all__ = [
    "CLIENT_CLOSED",
    "GenAIRecorder",
    "MetricsMiddleware",
    "ProxyMetrics",
    "UsageLedger",
    "UsagePricing",
    "exposition",
]

#: The endpoints that count a request's tokens without using any (Anthropic's
#: ``/v1/messages/count_tokens``, OpenAI's ``/v1/responses/input_tokens``): no usage.
_COUNTING_PATHS = ("/count_tokens", "/input_tokens")


class UsagePricing(Protocol):
    """Prices a finished request: sets ``ctx.usage.cost_usd`` (``None``: no known price)."""

    def price(self, ctx: RequestContext) -> None: ...


class UsageLedger(Protocol):
    """Records a finished, priced request's usage against its principal."""

    def add(self, ctx: RequestContext) -> None: ...


class GenAIRecorder(Protocol):
    """Records a finished, priced request on the host's OpenTelemetry meters
    (``_otel_metrics.GenAIMetrics``); ``chunks``: the reads of a streamed answer, else 0."""

    def record(self, ctx: RequestContext, status: int, duration: float, chunks: int) -> None: ...


class MetricsMiddleware:
    """Counts every request through it; ``on_request`` also receives each finished one.

    When a request ends, ``ctx.usage`` is final: every count the answer reported (a stream
    cut short is charged its input and the output seen so far, ``UsageReader.charge_cut``).
    Then ``pricing`` prices it, the metrics count it, ``ledger`` records it,
    ``otel_metrics`` records it on the host's meters, and the access record logs it (when
    ``llm_proxy_mw.access`` is enabled for INFO), in that order.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: ProxyMetrics,
        on_request: Callable[[RequestContext, int, float], None] | None = None,
        pricing: UsagePricing | None = None,
        ledger: UsageLedger | None = None,
        otel_metrics: GenAIRecorder | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.on_request = on_request
        self.pricing = pricing
        self.ledger = ledger
        self.otel_metrics = otel_metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ctx = get_context(scope)
        responder = _Responder(send, ctx)
        self.metrics.in_flight_value.inc(1)
        error_code: str | None = None
        try:
            await self.app(scope, receive, responder.send)
        except ProxyError as error:
            error_code = error.code
            if responder.status is None:
                responder.status = error.status_code
            raise
        except ClientDisconnected:
            responder.status = CLIENT_CLOSED
            raise
        finally:
            self.metrics.in_flight_value.inc(-1)
            status = responder.status or CLIENT_CLOSED
            if responder.usage is not None:
                responder.settle_usage(status)
            duration = time.perf_counter() - ctx.started
            if self.pricing is not None:
                self.pricing.price(ctx)
            self.metrics.observe(ctx, status, duration)
            if self.ledger is not None:
                self.ledger.add(ctx)
            if self.otel_metrics is not None:
                usage = responder.usage
                chunks = usage.reads if usage is not None else 0
                self.otel_metrics.record(ctx, status, duration, chunks)
            if access_logger.isEnabledFor(INFO):
                log_access(scope, ctx, status, duration, error_code)
            if self.on_request is not None:
                self.on_request(ctx, status, duration)


class _Responder:
    """The wrapped ``send`` of one request: status, first byte, usage; forwards at once.

    It also reads the answer for the telemetry layer outside, when that one asks
    (``ctx.telemetry.answer_wanted``): one layer watching the bytes instead of two.
    ``send`` returns the inner ``send``'s awaitable rather than being a coroutine itself,
    which would add a frame to create and run per message (per chunk of a stream).
    """

    __slots__ = ("_send", "_ctx", "status", "usage", "answer", "_translated")

    def __init__(self, send: Send, ctx: RequestContext) -> None:
        self._send = send
        self._ctx = ctx
        self.status: int | None = None
        self.usage: UsageReader | None = None
        #: The telemetry layer's reader of the answer, when it asked for one.
        self.answer: AnswerReader | None = None
        self._translated = False

    def send(self, message: Message) -> Awaitable[None]:
        if message["type"] == "http.response.body":
            body = message.get("body", b"")
            if body:
                if self._ctx.ttfb is None:
                    self._ctx.ttfb = time.perf_counter() - self._ctx.started
                if self.usage is not None:
                    self.usage.feed(body)
                if self.answer is not None:
                    self.answer.take(body)
        elif message["type"] == "http.response.start":
            self.status = message["status"]
            ctx = self._ctx
            route = ctx.route
            self._translated = route is not None and route.codec is not None
            counted = not ctx.route_path.endswith(_COUNTING_PATHS)
            tracing = ctx.telemetry
            traced = tracing is not None and tracing.answer_wanted
            if counted or traced:
                kind = answer_format(message.get("headers", ()))
                if counted:
                    self.usage = _usage_reader(kind, self._translated)
                if traced and kind is not None:
                    self.answer = tracing.read_answer(kind)
        return self._send(message)

    def settle_usage(self, status: int) -> None:
        """Put the answer's usage on the context, and charge an answer that broke off."""
        reader = self.usage
        assert reader is not None
        reader.finish()
        ctx = self._ctx
        # A translated answer's usage is the codec's, already on the context: the bytes
        # may not show it (a Chat client that did not ask for it in its stream).
        if not self._translated:
            reader.fill(ctx.usage, anthropic=ctx.wire_format is WireFormat.ANTHROPIC)
        attempts = ctx.attempts
        broke_off = attempts and attempts[-1].outcome != "success" and status < 400
        if status == CLIENT_CLOSED or broke_off:
            reader.charge_cut(ctx.usage, ctx.body)


def _usage_reader(kind: Literal["sse", "json"] | None, translated: bool) -> UsageReader | None:
    """A reader for a JSON or SSE answer (``kind``); of a translated one only streams, for
    their reads (``settle_usage``)."""
    if kind == "sse" or (kind == "json" and not translated):
        return UsageReader(sse=kind == "sse")
    return None
