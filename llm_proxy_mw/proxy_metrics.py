"""``ProxyMetrics``: the Prometheus families of every request and attempt, which
``MetricsMiddleware`` (``metrics.py``) records into once a request ended.

Metric objects are created once per ``CollectorRegistry`` passed in (the library has no
global registry), and label children are bound once per label set, so a request costs a few
dict lookups and increments. Labels are bounded by construction: models only from config
(any other is ``other``), providers from config, outcomes from ``errors.OUTCOMES`` (any other
code is ``other``).
"""

from __future__ import annotations

import json
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from llm_proxy_mw._usage import token_count
from llm_proxy_mw.context import Attempt, RequestContext, Usage
from llm_proxy_mw.errors import OUTCOMES
from llm_proxy_mw.health import HealthRegistry
from llm_proxy_mw.history import DURATION_BUCKETS, HistoryRecorder, total_key

__all__ = ["CLIENT_CLOSED", "ProxyMetrics", "exposition"]

#: nginx's code for "the client closed the request": the status of a request whose client left.
CLIENT_CLOSED = 499

#: The ``llm_proxy_tokens_total`` kinds beyond ``prompt`` and ``completion``, by ``Usage``
#: field: parts of those two (cache reads and writes of the prompt, reasoning of the output).
_DETAIL_KINDS = (
    ("cache_read_tokens", "cache_read"),
    ("cache_write_tokens", "cache_write"),
    ("reasoning_tokens", "reasoning"),
)

#: Realtime sessions last from seconds to an hour: seconds.
REALTIME_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


def _outcome_label(outcome: str) -> str:
    """An attempt's outcome as a label value: a code from outside the closed set (a
    ``ProxyError`` subclass defined elsewhere) counts as ``other``."""
    return outcome if outcome in OUTCOMES else "other"


class _HealthCollector(Collector):
    """Success ratio and circuit state per provider, read from the health state at scrape."""

    def __init__(self, health: HealthRegistry) -> None:
        self.health = health

    def collect(self) -> Iterator[GaugeMetricFamily]:
        ratio = GaugeMetricFamily(
            "llm_proxy_provider_success_ratio",
            "Share of successful upstream attempts in the health window.",
            labels=["provider"],
        )
        circuit = GaugeMetricFamily(
            "llm_proxy_circuit_state",
            "Circuit breaker state: 0 closed, 1 half-open, 2 open.",
            labels=["provider"],
        )
        budget = GaugeMetricFamily(
            "llm_proxy_retry_budget_tokens",
            "Tokens left in the provider's retry budget.",
            labels=["provider"],
        )
        for name, state in self.health.providers.items():
            ratio.add_metric([name], state.success_ratio())
            circuit.add_metric([name], int(state.current_state()))
            budget.add_metric([name], state.tokens)
        yield ratio
        yield circuit
        yield budget


class _Series:
    """The label children of one (provider, model), bound once: a request then costs a few
    attribute reads instead of ``labels()`` lookups.

    Counters and histograms are updated through the value objects their children keep
    (``_value``; ``_sum`` and ``_buckets``, whose slots are ``DURATION_BUCKETS`` and
    ``+Inf``): the public ``inc()`` and ``observe()`` check the metric's type and their
    argument on every call, three Python calls each, a tenth of the proxy's calls per
    request. prometheus_client has kept these names for years (``restore`` uses them too).
    """

    __slots__ = (
        "requests",
        "attempts",
        "duration_sum",
        "duration_buckets",
        "ttfb_sum",
        "ttfb_buckets",
        "prompt_tokens",
        "completion_tokens",
        "ttfb_sum_key",
        "attempt_keys",
    )

    def __init__(self, metrics: ProxyMetrics, provider: str, model: str) -> None:
        #: Value objects of the request and attempt counters, by status and by raw outcome.
        self.requests: dict[int, Any] = {}
        self.attempts: dict[str, Any] = {}
        duration = metrics.duration.labels(provider, model)
        self.duration_sum: Any = duration._sum
        self.duration_buckets: list[Any] = duration._buckets
        # Bound on first use, so requests without a first byte or usage add no series.
        self.ttfb_sum: Any = None
        self.ttfb_buckets: list[Any] = []
        self.prompt_tokens: Any = None
        self.completion_tokens: Any = None
        self.ttfb_sum_key = total_key("ttfb_sum", provider, model)
        #: Persisted-total keys of the attempt counter, by raw outcome.
        self.attempt_keys: dict[str, str] = {}


class ProxyMetrics:
    """The metric families of one proxy, registered in ``registry``."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        models: Iterable[str] = (),
        health: HealthRegistry | None = None,
        history: HistoryRecorder | None = None,
    ) -> None:
        self.registry = registry
        self.history = history
        self.models = frozenset(m for m in models if m != "*")
        labels = ["provider", "model"]
        self.requests = Counter(
            "llm_proxy_requests",
            "Client-visible requests by HTTP status.",
            [*labels, "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "llm_proxy_request_duration_seconds",
            "Client-visible request latency, to the last byte.",
            labels,
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.ttfb = Histogram(
            "llm_proxy_time_to_first_byte_seconds",
            "Time from the request to the first response body byte.",
            labels,
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.attempts = Counter(
            "llm_proxy_upstream_attempts",
            "Upstream attempts by outcome.",
            [*labels, "outcome"],
            registry=registry,
        )
        self.tokens = Counter(
            "llm_proxy_tokens",
            "Tokens reported by the provider.",
            [*labels, "kind"],
            registry=registry,
        )
        self.cost = Counter(
            "llm_proxy_cost_usd",
            "Cost of the tokens used, in USD, for the models with a known price.",
            labels,
            registry=registry,
        )
        self.retries = Counter(
            "llm_proxy_retries",
            "Retries, by the outcome of the attempt that was retried.",
            ["provider", "reason"],
            registry=registry,
        )
        self.in_flight = Gauge(
            "llm_proxy_requests_in_flight",
            "Requests being handled now.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        #: The gauge's value object, updated directly like the series' (see ``_Series``).
        self.in_flight_value: Any = self.in_flight._value
        self.realtime_sessions = Counter(
            "llm_proxy_realtime_sessions",
            "Realtime websocket handshakes, by status: 101 accepted, else refused.",
            [*labels, "status"],
            registry=registry,
        )
        self.realtime_duration = Histogram(
            "llm_proxy_realtime_session_duration_seconds",
            "Duration of accepted realtime sessions, to the close.",
            labels,
            buckets=REALTIME_BUCKETS,
            registry=registry,
        )
        self.realtime_active = Gauge(
            "llm_proxy_realtime_sessions_active",
            "Realtime sessions open now.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        #: Collectors that describe this process only (not kept in multiprocess files).
        self.local_collectors: list[Collector] = []
        if health is not None:
            self.local_collectors.append(_HealthCollector(health))
            registry.register(self.local_collectors[-1])
        self._children: dict[tuple[Any, ...], Any] = {}
        self._keys: dict[tuple[object, ...], str] = {}
        self._by_series: dict[tuple[str, str], _Series] = {}

    def model_label(self, model: str | None) -> str:
        if model is None:
            return "none"
        return model if model in self.models else "other"

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def _total(self, *parts: object, amount: float = 1.0) -> None:
        """Add ``amount`` to a persisted total that a restart restores (see ``restore``)."""
        assert self.history is not None
        key = self._keys.get(parts)
        if key is None:
            key = self._keys[parts] = total_key(*parts)
        self.history.add_total(key, amount)

    def _series(self, provider: str, model: str) -> _Series:
        series = self._by_series.get((provider, model))
        if series is None:
            series = self._by_series[(provider, model)] = _Series(self, provider, model)
        return series

    def observe(self, ctx: RequestContext, status: int, duration: float) -> None:
        """Record one finished request from its context."""
        provider = ctx.provider or "none"
        model = self.model_label(ctx.model)
        series = self._series(provider, model)
        requests = series.requests.get(status)
        if requests is None:
            child = self.requests.labels(provider, model, str(status))
            requests = series.requests[status] = child._value
        requests.inc(1)
        series.duration_sum.inc(duration)
        series.duration_buckets[bisect_left(DURATION_BUCKETS, duration)].inc(1)
        ttfb = ctx.ttfb
        if ttfb is not None:
            if series.ttfb_sum is None:
                histogram = self.ttfb.labels(provider, model)
                series.ttfb_sum, series.ttfb_buckets = histogram._sum, histogram._buckets
            series.ttfb_sum.inc(ttfb)
            series.ttfb_buckets[bisect_left(DURATION_BUCKETS, ttfb)].inc(1)
        history = self.history
        attempts = ctx.attempts
        if len(attempts) == 1 and attempts[0].provider == provider:
            # Keyed by the attempt's outcome; its label value is checked once, on first use.
            outcome = attempts[0].outcome
            value = series.attempts.get(outcome)
            if value is None:
                child = self.attempts.labels(provider, model, _outcome_label(outcome))
                value = series.attempts[outcome] = child._value
            value.inc(1)
            if history is not None:
                key = series.attempt_keys.get(outcome)
                if key is None:
                    key = series.attempt_keys[outcome] = total_key(
                        "attempts", provider, model, _outcome_label(outcome)
                    )
                history.add_total(key, 1.0)
        else:
            self._observe_attempts(attempts, model)
        # Any layer may have set the usage: count only what is a token count.
        prompt_tokens = token_count(ctx.usage.prompt_tokens)
        completion_tokens = token_count(ctx.usage.completion_tokens)
        if prompt_tokens:
            if series.prompt_tokens is None:
                series.prompt_tokens = self.tokens.labels(provider, model, "prompt")._value
            series.prompt_tokens.inc(prompt_tokens)
        if completion_tokens:
            if series.completion_tokens is None:
                child = self.tokens.labels(provider, model, "completion")
                series.completion_tokens = child._value
            series.completion_tokens.inc(completion_tokens)
        usage = ctx.usage
        if usage.cache_read_tokens or usage.cache_write_tokens or usage.reasoning_tokens:
            self._observe_details(usage, provider, model)
        if usage.cost_usd is not None and usage.cost_usd > 0:
            cost = float(usage.cost_usd)
            self._child(self.cost, provider, model).inc(cost)
            if history is not None:
                self._total("cost", provider, model, amount=cost)
        if history is not None:
            history.record(
                provider,
                model,
                status,
                duration,
                ttfb,
                prompt_tokens,
                completion_tokens,
                status >= 400,
            )
            if ttfb is not None:
                self._total("ttfb", provider, model, bisect_left(DURATION_BUCKETS, ttfb))
                history.add_total(series.ttfb_sum_key, ttfb)

    def _observe_details(self, usage: Usage, provider: str, model: str) -> None:
        """The cache and reasoning token kinds, rarer than the prompt and completion."""
        for field, kind in _DETAIL_KINDS:
            if count := token_count(getattr(usage, field)):
                self._child(self.tokens, provider, model, kind).inc(count)
                if self.history is not None:
                    self._total("tokens", provider, model, kind, amount=count)

    def realtime_session(self, provider: str | None, model: str | None, status: int) -> None:
        """Count one realtime handshake, accepted (101) or refused with ``status``."""
        labels = (provider or "none", self.model_label(model), str(status))
        self._child(self.realtime_sessions, *labels).inc()

    def realtime_ended(self, provider: str | None, model: str | None, duration: float) -> None:
        """Record how long an accepted realtime session lasted."""
        labels = (provider or "none", self.model_label(model))
        self._child(self.realtime_duration, *labels).observe(duration)

    def _observe_attempts(self, attempts: list[Attempt], model: str) -> None:
        """Attempts and retries of a request that was retried or answered by another."""
        child = self._child
        history = self.history
        previous: tuple[str, str] | None = None
        for attempt in attempts:
            outcome = _outcome_label(attempt.outcome)
            child(self.attempts, attempt.provider, model, outcome).inc()
            if history is not None:
                self._total("attempts", attempt.provider, model, outcome)
            if previous is not None:
                child(self.retries, *previous).inc()
                if history is not None:
                    self._total("retries", *previous)
            previous = (attempt.provider, outcome)

    def restore(self, totals: dict[str, float]) -> int:
        """Continue the counters from persisted totals; returns how many were restored.

        Histogram slots are restored through prometheus_client's child internals
        (``_buckets``, ``_sum``): it has no public way to seed a histogram.
        """
        restored = 0
        for key, value in totals.items():
            try:
                name, *labels = json.loads(key)
            except (ValueError, TypeError):
                continue
            if not value or not all(isinstance(label, str | int) for label in labels):
                continue
            text = [str(label) for label in labels]
            if name == "requests" and len(text) == 3:
                self.requests.labels(*text).inc(value)
            elif name == "tokens" and len(text) == 3:
                self.tokens.labels(*text).inc(value)
            elif name == "cost" and len(text) == 2:
                self.cost.labels(*text).inc(value)
            elif name == "attempts" and len(text) == 3:
                self.attempts.labels(*text[:2], _outcome_label(text[2])).inc(value)
            elif name == "retries" and len(text) == 2:
                self.retries.labels(text[0], _outcome_label(text[1])).inc(value)
            elif name in ("duration", "ttfb") and len(text) == 3 and text[2].isdigit():
                histogram = self.duration if name == "duration" else self.ttfb
                slots = histogram.labels(*text[:2])._buckets
                slot = int(text[2])
                if slot >= len(slots):
                    continue
                slots[slot].inc(value)
            elif name in ("duration_sum", "ttfb_sum") and len(text) == 2:
                histogram = self.duration if name == "duration_sum" else self.ttfb
                histogram.labels(*text)._sum.inc(value)
            else:
                continue
            restored += 1
        return restored


def exposition(metrics: ProxyMetrics, *, multiprocess_dir: str | None = None) -> tuple[bytes, str]:
    """The Prometheus text exposition and its content type.

    Under ``uvicorn --workers N`` with ``PROMETHEUS_MULTIPROC_DIR`` set (pass it as
    ``multiprocess_dir``), prometheus_client keeps counters in files shared by the workers:
    they are collected from there, the health gauges from this worker, which keeps its own
    health view.
    """
    if multiprocess_dir:
        combined = CollectorRegistry()
        multiprocess.MultiProcessCollector(combined, path=multiprocess_dir)  # type: ignore[no-untyped-call]
        for collector in metrics.local_collectors:
            combined.register(collector)
        return generate_latest(combined), CONTENT_TYPE_LATEST
    return generate_latest(metrics.registry), CONTENT_TYPE_LATEST
