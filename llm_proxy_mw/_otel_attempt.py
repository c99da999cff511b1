"""One span per upstream attempt (HTTP client conventions), and the trace context it sends.

``RequestTrace`` is what the telemetry layer puts on the context (``ctx.telemetry``) while a
request is traced: Upstream opens an attempt span around each send through it (``attempt``),
Retry notes each wait on the request span (``waited``). The attempt span's context goes to the
provider as W3C ``traceparent`` / ``tracestate`` (through the global propagator), replacing
the client's own trace headers: the provider's trace is the proxy's. A request sampled out
opens no attempt span: its own context goes (``propagate``), marked not sampled.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from typing import TYPE_CHECKING, Literal
from urllib.parse import SplitResult, urlsplit

from opentelemetry import propagate
from opentelemetry.baggage import _BAGGAGE_KEY
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.trace import Span, SpanKind, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.trace.span import DEFAULT_TRACE_STATE
from opentelemetry.util.types import AnyValue

from llm_proxy_mw._otel_answer import AnswerReader
from llm_proxy_mw._otel_context import ids_of, with_span
from llm_proxy_mw._otel_names import Server, server_of
from llm_proxy_mw.context import RequestContext
from llm_proxy_mw.errors import ProxyError
from llm_proxy_mw.providers import TRACE_CONTEXT_HEADERS

if TYPE_CHECKING:
    from llm_proxy_mw.providers import Provider
    from llm_proxy_mw.transports import UpstreamRequest

__all__ = ["RequestTrace", "StartChild"]

#: A ``DirectTracer``'s ``start_child``: a quicker way to an attempt span (``_otel_direct``).
StartChild = Callable[[Span, Context, str, SpanKind, dict[str, AnyValue]], Span]
#: The client's trace headers, which the proxy's own replace.
_TRACE_HEADERS = frozenset(name.decode() for name in TRACE_CONTEXT_HEADERS)
#: The trace flags a span mostly has, in ``traceparent``'s hex: a lookup costs half of
#: formatting the ``TraceFlags`` (an ``int`` subclass) with ``02x``.
_FLAGS_HEX = {flags: f"{flags:02x}" for flags in range(4)}


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
    """The traced request's span, the spans of its upstream attempts, and the reader of its
    answer (``read_answer``: the layer that watches the bytes go by feeds it)."""

    __slots__ = (
        "ctx",
        "span",
        "context",
        "recording",
        "answer",
        "answer_wanted",
        "capture",
        "_tracer",
        "_start_child",
        "_servers",
        "_headers",
        "_plain",
        "_replaced",
    )

    def __init__(
        self,
        ctx: RequestContext,
        tracer: Tracer,
        span: Span,
        host: Context,
        servers: MutableMapping[str, dict[str, AnyValue]],
        start_child: StartChild | None = None,
    ) -> None:
        self.ctx = ctx
        self.span = span
        #: ``host``, the context the request came with, with ``span`` current.
        self.context = with_span(host, span)
        self.recording = span.is_recording()
        self.answer: AnswerReader | None = None
        #: Whether a layer inside reads the answer (``read_answer``) for this span.
        self.answer_wanted = False
        #: How many bytes of the answer the reader keeps as content.
        self.capture = 0
        self._tracer = tracer
        self._start_child = start_child
        self._servers = servers
        self._headers: list[tuple[str, str]] | None = None
        #: Whether the trace headers are the default propagators' (``_trace_headers``), and
        #: the client's headers that the proxy's replace.
        self._plain: bool | None = None
        self._replaced = _TRACE_HEADERS

    def read_answer(self, kind: Literal["sse", "json"]) -> AnswerReader:
        """The reader of this span's answer, an event stream or a JSON body."""
        self.answer = AnswerReader(sse=kind == "sse", capture=self.capture)
        return self.answer

    def server(self, provider: Provider) -> Server:
        """The provider's address and port."""
        known = self._provider_attributes(provider)
        return known["server.address"], known["server.port"]  # type: ignore[return-value]

    def _provider_attributes(self, provider: Provider) -> dict[str, AnyValue]:
        """An attempt span's ``server.address``, ``server.port`` and ``llm_proxy.provider``,
        worked out once per provider."""
        known = self._servers.get(provider.name)
        if known is None:
            address, port = server_of(provider.base_url)
            known = self._servers[provider.name] = {
                "server.address": address,
                "server.port": port,
                "llm_proxy.provider": provider.name,
            }
        return known

    def waited(self, seconds: float) -> None:
        """Retry waits ``seconds`` before its next attempt."""
        self.span.add_event("llm_proxy.retry.wait", {"llm_proxy.retry.wait_seconds": seconds})

    def attempt(self, provider: Provider, request: UpstreamRequest) -> Span:
        """A CLIENT span for one attempt, whose context ``request`` carries upstream; the
        caller ends it with ``attempt_ended``. Only for a recording request: else
        ``propagate``."""
        attributes: dict[str, AnyValue] = {
            "http.request.method": request.method,
            "url.full": _redacted(request.url),
            **self._provider_attributes(provider),
        }
        if self._start_child is not None:
            span = self._start_child(
                self.span, self.context, request.method, SpanKind.CLIENT, attributes
            )
        else:
            span = self._tracer.start_span(
                request.method, self.context, SpanKind.CLIENT, attributes
            )
        _replace_trace_headers(request, self._trace_headers(span), self._replaced)
        return span

    def attempt_ended(self, span: Span, before: int, error: BaseException | None) -> None:
        """The attempt's span ends with what it ended with: its status code, and an
        ``error.type`` when it failed (``before``: the attempts recorded before it)."""
        attempts = self.ctx.attempts
        if error is not None:
            if not isinstance(error, ProxyError):
                _failed(span, type(error).__qualname__)
            elif len(attempts) == before:  # not the provider's: the upload broke off
                _failed(span, error.code)
        if len(attempts) > before:
            record = attempts[-1]
            status = record.status
            if status is not None:
                span.set_attribute("http.response.status_code", status)
            if record.outcome != "success":
                _failed(span, str(status) if status and status >= 400 else record.outcome)
        span.end()

    def propagate(self, request: UpstreamRequest) -> None:
        """A request sampled out has no attempt span: its own context goes, marked not
        sampled, worked out once for all its attempts."""
        if self._headers is None:
            self._headers = self._trace_headers(self.span)
        _replace_trace_headers(request, self._headers, self._replaced)

    def _trace_headers(self, span: Span) -> list[tuple[str, str]]:
        """What the global propagator writes for ``span``: with the default propagators
        (W3C trace context, and baggage when the context has none) written here, for a
        fraction of the cost, else by the propagator (``_replaced`` then names what it
        writes)."""
        plain = self._plain
        if plain is None:
            plain = self._plain = _default_propagators() and not self.context.get(_BAGGAGE_KEY)
        if not plain:
            headers = _injected(with_span(self.context, span))
            self._replaced = _TRACE_HEADERS.union(name for name, _ in headers)
            return headers
        trace_id, span_id, flags, state = ids_of(span.get_span_context())
        # A recording request's trace id is on the context already, in hex.
        # ``to_bytes().hex()`` is ``{:032x}`` for a third of the CPU.
        trace_hex = self.ctx.trace_id or trace_id.to_bytes(16, "big").hex()
        span_hex = span_id.to_bytes(8, "big").hex()
        parent = (
            "traceparent",
            f"00-{trace_hex}-{span_hex}-{_FLAGS_HEX.get(flags) or f'{flags:02x}'}",
        )
        if state is not DEFAULT_TRACE_STATE and state:
            return [parent, ("tracestate", state.to_header())]
        return [parent]


#: The global propagator last seen, and whether it is the default one.
_seen: list[tuple[TextMapPropagator, bool]] = []


def _default_propagators() -> bool:
    """Whether the global propagator is the API's default one (``OTEL_PROPAGATORS`` unset,
    or ``tracecontext,baggage``): W3C trace context then W3C baggage, nothing else."""
    textmap = propagate.get_global_textmap()
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


def _replace_trace_headers(
    request: UpstreamRequest, headers: list[tuple[str, str]], replaced: frozenset[str]
) -> None:
    """``request`` carries ``headers`` in place of the client's own ``replaced`` ones. It
    was built without the client's ``traceparent`` and ``tracestate`` (Upstream asks
    ``Provider.request_headers`` to leave them out): only the other headers that the host's
    propagator writes are looked for."""
    if replaced is not _TRACE_HEADERS:
        request.headers = [header for header in request.headers if header[0] not in replaced]
    request.headers += headers


def _failed(span: Span, error_type: str) -> None:
    span.set_attribute("error.type", error_type)
    span.set_status(StatusCode.ERROR)
