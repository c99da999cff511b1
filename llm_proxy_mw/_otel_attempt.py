"""One span per upstream attempt (HTTP client conventions), and the trace context it sends.

``RequestTrace`` is what the telemetry layer puts on the context (``ctx.telemetry``) while a
request is traced: Upstream opens an attempt span around each send through it (``attempt``),
Retry notes each wait on the request span (``waited``). The attempt span's context goes to the
provider as W3C ``traceparent`` / ``tracestate`` (through the global propagator), replacing
the client's own trace headers: the provider's trace is the proxy's. A request sampled out
opens no attempt span: its own context goes (``propagate``), marked not sampled.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import TYPE_CHECKING
from urllib.parse import SplitResult, urlsplit

from opentelemetry import baggage, propagate
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.trace import Span, SpanKind, StatusCode, Tracer, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AnyValue

from llm_proxy_mw._otel_names import Server, server_of
from llm_proxy_mw.context import RequestContext
from llm_proxy_mw.errors import ProxyError

if TYPE_CHECKING:
    from llm_proxy_mw.context import Attempt
    from llm_proxy_mw.providers import Provider
    from llm_proxy_mw.transports import UpstreamRequest

__all__ = ["AttemptSpan", "RequestTrace"]

#: The client's trace headers, which the proxy's own replace.
_TRACE_HEADERS = frozenset({"traceparent", "tracestate"})


def _redacted(url: str) -> str:
    """``url`` with any user info and every query value replaced by ``REDACTED``: a key may
    ride in either (``?key=``, ``https://user:secret@host``)."""
    if "?" not in url and "@" not in url:
        return url
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "REDACTED:REDACTED@" + netloc.rpartition("@")[2]
    query = "&".join(
        f"{pair.partition('=')[0]}=REDACTED" for pair in parts.query.split("&") if pair
    )
    return SplitResult(parts.scheme, netloc, parts.path, query, "").geturl()


class RequestTrace:
    """The traced request's span, and the spans of its upstream attempts."""

    __slots__ = (
        "ctx",
        "span",
        "context",
        "recording",
        "_tracer",
        "_start_child",
        "_servers",
        "_headers",
    )

    def __init__(
        self,
        ctx: RequestContext,
        tracer: Tracer,
        span: Span,
        servers: MutableMapping[str, Server],
    ) -> None:
        self.ctx = ctx
        self.span = span
        self.context: Context = set_span_in_context(span)
        self.recording = span.is_recording()
        self._tracer = tracer
        #: A ``DirectTracer``'s quicker way to a child span (``_otel_direct``).
        self._start_child = getattr(tracer, "start_child", None)
        self._servers = servers
        self._headers: list[tuple[str, str]] | None = None

    def server(self, provider: Provider) -> Server:
        """The provider's address and port, worked out once per provider."""
        server = self._servers.get(provider.name)
        if server is None:
            server = self._servers[provider.name] = server_of(provider.base_url)
        return server

    def waited(self, seconds: float) -> None:
        """Retry waits ``seconds`` before its next attempt."""
        self.span.add_event("llm_proxy.retry.wait", {"llm_proxy.retry.wait_seconds": seconds})

    def attempt(self, provider: Provider, request: UpstreamRequest) -> AttemptSpan:
        """A CLIENT span around one attempt (``with``), whose context ``request`` carries
        upstream. Only for a recording request: else ``propagate``."""
        address, port = self.server(provider)
        attributes: dict[str, AnyValue] = {
            "http.request.method": request.method,
            "url.full": _redacted(request.url),
            "server.address": address,
            "server.port": port,
            "llm_proxy.provider": provider.name,
        }
        if self._start_child is not None:
            span = self._start_child(
                self.span, self.context, request.method, SpanKind.CLIENT, attributes
            )
        else:
            span = self._tracer.start_span(
                request.method, self.context, SpanKind.CLIENT, attributes
            )
        _replace_trace_headers(request, self._trace_headers(span))
        return AttemptSpan(span, self.ctx.attempts)

    def _trace_headers(self, span: Span) -> list[tuple[str, str]]:
        """What the global propagator writes for ``span``: with the default propagators
        (W3C trace context, and baggage when the context has none) written here, 3 µs less."""
        if not _default_propagators(propagate.get_global_textmap()) or baggage.get_all(
            self.context
        ):
            return _injected(set_span_in_context(span, self.context))
        span_context = span.get_span_context()
        headers = [
            (
                "traceparent",
                f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}"
                f"-{span_context.trace_flags:02x}",
            )
        ]
        if span_context.trace_state:
            headers.append(("tracestate", span_context.trace_state.to_header()))
        return headers

    def propagate(self, request: UpstreamRequest) -> None:
        """A request sampled out has no attempt span: its own context goes, marked not
        sampled, worked out once for all its attempts."""
        if self._headers is None:
            self._headers = self._trace_headers(self.span)
        _replace_trace_headers(request, self._headers)


class AttemptSpan:
    """The span of one attempt while it runs; what the attempt ended with, when it ends."""

    __slots__ = ("_span", "_attempts", "_before")

    def __init__(self, span: Span, attempts: list[Attempt]) -> None:
        self._span = span
        self._attempts = attempts
        self._before = len(attempts)

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, _: object
    ) -> None:
        span, attempts = self._span, self._attempts
        if error is not None:
            if not isinstance(error, ProxyError):
                _failed(span, type(error).__qualname__)
            elif len(attempts) == self._before:  # not the provider's: the upload broke off
                _failed(span, error.code)
        if len(attempts) > self._before:
            record = attempts[-1]
            if record.status is not None:
                span.set_attribute("http.response.status_code", record.status)
            if record.outcome != "success":
                status = record.status
                _failed(span, str(status) if status and status >= 400 else record.outcome)
        span.end()


#: The global propagator last seen, and whether it is the default one.
_seen: list[tuple[TextMapPropagator, bool]] = []


def _default_propagators(textmap: TextMapPropagator) -> bool:
    """Whether ``textmap`` is the API's default (``OTEL_PROPAGATORS=tracecontext,baggage``):
    W3C trace context then W3C baggage, nothing else."""
    if _seen and _seen[0][0] is textmap:
        return _seen[0][1]
    members = getattr(textmap, "_propagators", None)
    default = type(textmap) is CompositePropagator and [type(p) for p in members or ()] == [
        TraceContextTextMapPropagator,
        W3CBaggagePropagator,
    ]
    _seen[:] = [(textmap, default)]
    return default


def _injected(context: Context) -> list[tuple[str, str]]:
    """What the global propagator writes for ``context`` (``traceparent``, ``tracestate``,
    and whatever else it propagates), with lowercase names, as the proxy sends headers."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context)
    return [(name.lower(), value) for name, value in carrier.items()]


def _replace_trace_headers(request: UpstreamRequest, headers: list[tuple[str, str]]) -> None:
    """``request`` carries ``headers`` in place of the client's own trace headers."""
    replaced = _TRACE_HEADERS
    if any(name not in replaced for name, _ in headers):
        replaced = replaced.union(name for name, _ in headers)  # baggage, a vendor's
    kept = request.headers
    if any(header[0] in replaced for header in kept):
        kept = [header for header in kept if header[0] not in replaced]
    request.headers = kept + headers


def _failed(span: Span, error_type: str) -> None:
    span.set_attribute("error.type", error_type)
    span.set_status(StatusCode.ERROR)
