"""The OpenTelemetry GenAI client metrics, through the host's ``MeterProvider``.

``GenAIMetrics.record`` takes each finished request from ``MetricsMiddleware`` (the same
moment Prometheus counts it) and records, as the GenAI semantic conventions
(``_otel_names.SEMCONV_VERSION``) define
them: ``gen_ai.client.operation.duration``, ``gen_ai.client.token.usage`` (input and output),
and for streams ``gen_ai.client.operation.time_to_first_chunk`` and
``gen_ai.client.operation.time_per_output_chunk``, each with the advised bucket boundaries.

Nothing here imports OpenTelemetry at module level: ``host_meter_provider`` looks only at a
``opentelemetry.metrics`` the host already imported, so a proxy without the ``otel`` extra,
or whose host configured no ``MeterProvider``, builds no instrument and pays nothing.

The operation and provider names are the span layer's (``_otel_names``).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING

from llm_proxy_mw._otel_names import operation_of, provider_name, server_of
from llm_proxy_mw._usage import token_count
from llm_proxy_mw.proxy_metrics import CLIENT_CLOSED

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider

    from llm_proxy_mw.context import RequestContext

__all__ = [
    "GenAIMetrics",
    "host_meter_provider",
]

# The bucket boundaries the conventions advise for each histogram.
TOKEN_BUCKETS = tuple(4.0**power for power in range(14))  # 1, 4, 16, ... 67108864
DURATION_BUCKETS = tuple(0.01 * 2**power for power in range(14))  # 0.01, 0.02, ... 81.92
CHUNK_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
#: The four histograms, in the order ``GenAIMetrics`` names them: name, unit, description,
#: bucket boundaries.
_HISTOGRAMS = (
    ("gen_ai.client.operation.duration", "s", "GenAI operation duration.", DURATION_BUCKETS),
    (
        "gen_ai.client.token.usage",
        "{token}",
        "Number of input and output tokens used.",
        TOKEN_BUCKETS,
    ),
    (
        "gen_ai.client.operation.time_to_first_chunk",
        "s",
        "Time to receive the first chunk of a streamed answer.",
        DURATION_BUCKETS,
    ),
    (
        "gen_ai.client.operation.time_per_output_chunk",
        "s",
        "Time per output chunk after the first, of a streamed answer.",
        CHUNK_BUCKETS,
    ),
)


#: A request's attributes, then with ``gen_ai.token.type`` ``input``, then ``output``.
_AttributeSets = tuple[dict[str, "str | int"], dict[str, "str | int"], dict[str, "str | int"]]
#: The most attribute sets kept (one per operation, model and provider seen).
_MAX_SETS = 1024


def host_meter_provider() -> MeterProvider | None:
    """The ``MeterProvider`` the host (or ``opentelemetry-instrument``) set globally, if any.

    A host that set one has imported ``opentelemetry.metrics``: when that module is not
    loaded, nothing is imported and ``None`` returned. The API's stand-ins for "none set"
    (its proxy provider, the no-op one) are ``None`` too.
    """
    if "opentelemetry.metrics" not in sys.modules:
        return None
    from opentelemetry import metrics
    from opentelemetry.metrics._internal import _ProxyMeterProvider

    provider = metrics.get_meter_provider()
    if isinstance(provider, _ProxyMeterProvider | metrics.NoOpMeterProvider):
        return None
    return provider


class GenAIMetrics:
    """Records each finished GenAI request on four histograms of ``meter_provider``.

    Attributes: ``gen_ai.operation.name``, ``gen_ai.provider.name``, ``gen_ai.request.model``
    and ``gen_ai.response.model`` (the model asked of the provider: the proxy does not parse
    the answer's own name), ``server.address``/``server.port`` of the provider's URL, and on
    the duration of a failed request ``error.type`` (the last attempt's outcome, else the
    status). A model outside ``models`` that no provider took is ``other``: clients name
    models, and each name would be a new series in the host's backend.

    A stream's chunks are the reads of its answer: its time to first chunk is the time to
    the first byte; its time per output chunk is recorded once, as the mean over the chunks
    after the first, so that a long stream costs no more to record than a short one.
    """

    def __init__(self, meter_provider: MeterProvider, *, models: Iterable[str] = ()) -> None:
        meter = meter_provider.get_meter("llm_proxy_mw")
        self.duration, self.tokens, self.first_chunk, self.per_chunk = (
            meter.create_histogram(
                name, unit, description, explicit_bucket_boundaries_advisory=buckets
            )
            for name, unit, description, buckets in _HISTOGRAMS
        )
        self.models = frozenset(models)
        self._sets: dict[tuple[str | None, ...], _AttributeSets] = {}

    def record(self, ctx: RequestContext, status: int, duration: float, chunks: int) -> None:
        """Record one finished request; ``chunks`` is the number of reads of a streamed
        answer (0 for any other)."""
        operation = operation_of(ctx.route_path)
        if operation is None:
            return
        attributes, inputs, outputs = self._attributes(ctx, operation)
        error = _error_type(ctx, status)
        if error is None:
            self.duration.record(duration, attributes)
        else:
            self.duration.record(duration, {**attributes, "error.type": error})
        usage = ctx.usage
        if prompt := token_count(usage.prompt_tokens):
            self.tokens.record(prompt, inputs)
        if completion := token_count(usage.completion_tokens):
            self.tokens.record(completion, outputs)
        ttfb = ctx.ttfb
        if chunks and ttfb is not None:
            self.first_chunk.record(ttfb, attributes)
            if chunks > 1:
                self.per_chunk.record(max(duration - ttfb, 0.0) / (chunks - 1), attributes)

    def _attributes(self, ctx: RequestContext, operation: str) -> _AttributeSets:
        """The request's attributes, and those of its input and output token counts: built
        once per operation, model and provider, and reused (the SDK copies them)."""
        route = ctx.route
        model = ctx.model
        key = (
            (operation, model)
            if route is None
            else (operation, model, route.provider.name, route.model)
        )
        sets = self._sets.get(key)
        if sets is not None:
            return sets
        attributes: dict[str, str | int] = {"gen_ai.operation.name": operation}
        if model is not None:
            known = route is not None or model in self.models
            attributes["gen_ai.request.model"] = model if known else "other"
        if route is not None:
            provider = route.provider
            attributes["gen_ai.provider.name"] = provider_name(provider.config.kind)
            attributes["gen_ai.response.model"] = route.model or model or "other"
            address, port = server_of(provider.base_url)
            if address:
                attributes["server.address"] = address
                attributes["server.port"] = port
        sets = (
            attributes,
            {**attributes, "gen_ai.token.type": "input"},
            {**attributes, "gen_ai.token.type": "output"},
        )
        if len(self._sets) >= _MAX_SETS:  # clients name models: bound what they can add
            self._sets.clear()
        self._sets[key] = sets
        return sets


def _error_type(ctx: RequestContext, status: int) -> str | None:
    """The class of error a request ended with: its last attempt's outcome when that
    failed (a stream that broke off after its 200 too), else its status; ``None`` if none."""
    attempts = ctx.attempts
    if attempts and attempts[-1].outcome != "success":
        return attempts[-1].outcome
    if status >= 400:
        return "client_closed" if status == CLIENT_CLOSED else str(status)
    return None
