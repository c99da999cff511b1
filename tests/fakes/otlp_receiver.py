"""A fake OpenTelemetry collector: OTLP/HTTP on a loopback port, decoded for the tests.

It takes ``POST /v1/traces``, ``/v1/metrics`` and ``/v1/logs`` with protobuf bodies, gzip or
not, as the SDK's OTLP/HTTP exporters send them, decodes them with ``opentelemetry-proto``
into ``ReceivedSpan`` and ``MetricPoint`` records (log records are counted), and lets a test
wait, bounded, until what it expects arrived. ``refuse = 503`` makes it a collector that is
down but answering; ``unreachable_endpoint()`` is an address where nothing listens.

>>> with OtlpReceiver() as receiver:
...     ...  # run the app with OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url
...     server_span = receiver.wait_for_span(lambda s: s.kind == "SERVER")
"""

from __future__ import annotations

import gzip
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.fakes.servers import free_port

__all__ = ["MetricPoint", "OtlpReceiver", "ReceivedSpan", "unreachable_endpoint"]

_LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class ReceivedSpan:
    """One exported span: ids in hex (``parent_id`` empty for a root), kind by name
    (``SERVER``, ``CLIENT``, ``INTERNAL``, ...), its attributes and its resource's."""

    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, Any]
    resource: dict[str, Any]
    scope: str
    events: tuple[str, ...] = ()


@dataclass(frozen=True)
class MetricPoint:
    """One exported data point: a histogram's ``count``, ``sum`` and buckets, or the
    ``value`` of a sum or gauge."""

    name: str
    unit: str
    attributes: dict[str, Any]
    count: int = 0
    sum: float = 0.0
    explicit_bounds: tuple[float, ...] = ()
    bucket_counts: tuple[int, ...] = ()
    value: float | None = None


@dataclass
class _Received:
    spans: list[ReceivedSpan] = field(default_factory=list)
    points: list[MetricPoint] = field(default_factory=list)
    log_records: int = 0
    #: Export requests by path, refused ones included.
    requests: dict[str, int] = field(default_factory=dict)


def unreachable_endpoint() -> str:
    """An OTLP endpoint where nothing listens (a collector that is down)."""
    return f"http://{_LOOPBACK}:{free_port()}"


class OtlpReceiver:
    """An OTLP/HTTP receiver on a free loopback port until the ``with`` block ends;
    ``url`` is the endpoint to export to (``OTEL_EXPORTER_OTLP_ENDPOINT``)."""

    def __init__(self, *, timeout: float = 10.0) -> None:
        self.timeout = timeout
        #: The status to refuse every export with (503: the collector is down), or ``None``.
        self.refuse: int | None = None
        self._received = _Received()
        self._changed = threading.Condition()
        self._server = ThreadingHTTPServer((_LOOPBACK, 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="otlp-receiver", daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://{_LOOPBACK}:{self._server.server_address[1]}"

    def __enter__(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(self.timeout)

    @property
    def spans(self) -> list[ReceivedSpan]:
        with self._changed:
            return list(self._received.spans)

    @property
    def points(self) -> list[MetricPoint]:
        with self._changed:
            return list(self._received.points)

    def requests(self, path: str) -> int:
        """How many exports reached ``path`` (``/v1/traces``, ...), refused ones too."""
        with self._changed:
            return self._received.requests.get(path, 0)

    def wait_for_span(
        self, matches: Callable[[ReceivedSpan], bool], timeout: float | None = None
    ) -> ReceivedSpan:
        """The first span received that ``matches``, waiting up to ``timeout`` seconds for
        one; ``TimeoutError`` (listing what did arrive) if none came."""
        found = self._wait(lambda r: next((s for s in r.spans if matches(s)), None), timeout)
        if found is None:
            names = [(s.kind, s.name) for s in self.spans]
            raise TimeoutError(f"no matching span arrived; received: {names}")
        return found

    def wait_for_points(
        self,
        name: str,
        matches: Callable[[MetricPoint], bool] = lambda point: True,
        timeout: float | None = None,
    ) -> list[MetricPoint]:
        """The points of metric ``name`` that ``matches``, once at least one arrived (an
        export repeats cumulative points: the latest come last), waiting up to ``timeout``
        seconds; ``TimeoutError`` if none came."""
        found = self._wait(
            lambda r: [p for p in r.points if p.name == name and matches(p)] or None, timeout
        )
        if found is None:
            seen = [(p.name, p.attributes, p.count) for p in self.points]
            raise TimeoutError(f"no matching point of {name} arrived; received: {seen}")
        return found

    def _wait(self, found: Callable[[_Received], Any], timeout: float | None) -> Any:
        with self._changed:
            result = None

            def ready() -> bool:
                nonlocal result
                result = found(self._received)
                return result is not None

            self._changed.wait_for(ready, self.timeout if timeout is None else timeout)
            return result

    def _export(self, path: str, body: bytes) -> int:
        """Decode and keep one export request; the status to answer it with."""
        with self._changed:
            self._received.requests[path] = self._received.requests.get(path, 0) + 1
        if self.refuse is not None:
            return self.refuse
        try:
            if path == "/v1/traces":
                spans = _spans(ExportTraceServiceRequest.FromString(body))
                points: list[MetricPoint] = []
                logs = 0
            elif path == "/v1/metrics":
                spans, logs = [], 0
                points = _points(ExportMetricsServiceRequest.FromString(body))
            elif path == "/v1/logs":
                spans, points = [], []
                logs = _log_count(ExportLogsServiceRequest.FromString(body))
            else:
                return 404
        except DecodeError:
            return 400
        with self._changed:
            self._received.spans += spans
            self._received.points += points
            self._received.log_records += logs
            self._changed.notify_all()
        return 200


def _handler(receiver: OtlpReceiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 (the http.server hook's name)
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            if self.headers.get("content-encoding") == "gzip":
                body = gzip.decompress(body)
            status = receiver._export(self.path, body)
            self.send_response(status)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the test reports what arrived."""

    return Handler


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    return getattr(value, kind) if kind is not None else None


def _attributes(pairs: Iterable[KeyValue]) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in pairs}


def _spans(request: ExportTraceServiceRequest) -> list[ReceivedSpan]:
    spans = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    ReceivedSpan(
                        name=span.name,
                        kind=Span.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_"),
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_id=span.parent_span_id.hex(),
                        attributes=_attributes(span.attributes),
                        resource=resource,
                        scope=scope_spans.scope.name,
                        events=tuple(event.name for event in span.events),
                    )
                )
    return spans


def _points(request: ExportMetricsServiceRequest) -> list[MetricPoint]:
    points = []
    for resource_metrics in request.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                kind = metric.WhichOneof("data")
                if kind == "histogram":
                    points += [
                        MetricPoint(
                            metric.name,
                            metric.unit,
                            _attributes(p.attributes),
                            count=p.count,
                            sum=p.sum,
                            explicit_bounds=tuple(p.explicit_bounds),
                            bucket_counts=tuple(p.bucket_counts),
                        )
                        for p in metric.histogram.data_points
                    ]
                elif kind in ("sum", "gauge"):
                    points += [
                        MetricPoint(
                            metric.name,
                            metric.unit,
                            _attributes(p.attributes),
                            value=getattr(p, p.WhichOneof("value")),
                        )
                        for p in getattr(metric, kind).data_points
                    ]
    return points


def _log_count(request: ExportLogsServiceRequest) -> int:
    return sum(
        len(scope_logs.log_records)
        for resource_logs in request.resource_logs
        for scope_logs in resource_logs.scope_logs
    )
