"""``build_proxy``: the whole stack from one config, as one ASGI app with a lifespan.

It is only a composition of public pieces. What outlives a request is built first, in the order
the request meets it; then the pipeline, a list of layers read outermost first as the request
flows (request context, metrics, auth, retry, routing) over the upstream app, applied in
reverse as Starlette's ``build_middleware_stack`` does; the realtime websockets, checked by the
same auth and routed by the same router; then the proxy's own endpoints beside it, behind the
one admin gate.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry
from starlette.middleware import Middleware
from starlette.types import ASGIApp

from llm_proxy_mw._extras import installed
from llm_proxy_mw._otel_metrics import GenAIMetrics, host_meter_provider
from llm_proxy_mw.admin import AdminGate
from llm_proxy_mw.auth import AuthMiddleware
from llm_proxy_mw.config import OtelConfig, ProxyConfig, load_config, parse_config
from llm_proxy_mw.context import RequestContextMiddleware
from llm_proxy_mw.dashboard import DashboardApp
from llm_proxy_mw.health import HealthRegistry
from llm_proxy_mw.healthz import HealthzApp
from llm_proxy_mw.history import HistoryRecorder
from llm_proxy_mw.ledger import UsageLedger
from llm_proxy_mw.limits import LimitsBackend, LimitsMiddleware, LocalLimits
from llm_proxy_mw.metrics import MetricsMiddleware, ProxyMetrics
from llm_proxy_mw.metrics_app import MetricsApp
from llm_proxy_mw.objects import ObjectRoutes
from llm_proxy_mw.pricing import Pricing
from llm_proxy_mw.providers import Provider
from llm_proxy_mw.proxy import Endpoints, LLMProxy, ProxyParts
from llm_proxy_mw.realtime import RealtimeApp
from llm_proxy_mw.retry import RetryMiddleware
from llm_proxy_mw.routing import Router, RoutingMiddleware
from llm_proxy_mw.store import open_metrics_store, open_object_owners, open_usage_store
from llm_proxy_mw.transports import UpstreamTransport
from llm_proxy_mw.upstream import UpstreamApp
from llm_proxy_mw.usage_app import UsageApp

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

    from llm_proxy_mw.auth._setup import AuthSetup

__all__ = ["LLMProxy", "build_proxy"]

logger = logging.getLogger("llm_proxy_mw")


def build_proxy(
    config: ProxyConfig | Mapping[str, Any] | str | os.PathLike[str],
    *,
    transports: Mapping[str, UpstreamTransport] | None = None,
    registry: CollectorRegistry | None = None,
    tracer_provider: TracerProvider | None = None,
) -> LLMProxy:
    """Build the proxy from a config object, a mapping, or the path of a TOML file.

    ``transports`` overrides the transport of named providers (tests plug respx through
    ``HttpxTransport``); the others get aiohttp, or the echo transport for ``kind = "echo"``.
    Metrics go to ``registry``, or to a registry of the proxy's own (never the global one).
    Spans (with the ``otel`` extra) go to ``tracer_provider``, else to the global one.
    """
    config = _as_config(config)
    # The deployments and their health, which the metrics report and routing decides by;
    # then what the pipeline shares, in the order the request meets it.
    providers = _providers(config, transports or {})
    health = HealthRegistry(
        config.providers,
        policies={name: p.health.policy() for name, p in config.providers.items()},
    )
    fallbacks = {model: options.fallbacks for model, options in config.models.items()}
    router = Router(providers, health=health, model_fallbacks=fallbacks)
    history = HistoryRecorder(
        open_metrics_store(config.store.url, memory_fallback=False),  # or the proxy won't start
        flush_interval=config.metrics.flush_interval_seconds,
        retention_days=config.metrics.retention_days,
    )
    models = [m for p in config.providers.values() for m in p.models]
    metrics = ProxyMetrics(
        registry or CollectorRegistry(), models=models, health=health, history=history
    )
    # The cost metric is the metrics layer's: Pricing only sets each request's cost.
    pricing = Pricing(
        {name: price.price() for name, price in config.pricing.items()},
        models=models,
        providers=providers,
    )
    ledger = UsageLedger(
        open_usage_store(config.store.url),
        flush_interval=config.metrics.flush_interval_seconds,
        retention_days=config.metrics.retention_days,
    )
    # The GenAI metrics go to the host's MeterProvider, if it set one before building.
    meter_provider = host_meter_provider()
    otel_metrics = (
        GenAIMetrics(meter_provider, models=models) if meter_provider is not None else None
    )
    auth = _auth(config)
    objects = ObjectRoutes(
        open_object_owners(config.store.url, ttl=config.store.object_ttl_days * 86_400)
    )

    request_context = Middleware(
        RequestContextMiddleware,
        max_body_bytes=config.max_body_bytes,
        body_timeout=config.request_body_timeout,
        max_upload_bytes=config.max_upload_bytes,
        min_upload_rate=config.min_upload_rate,
    )
    auth_layer = [Middleware(AuthMiddleware, authenticators=auth.authenticators)] if auth else []
    limits = _limits_backend(config)
    limits_layer = []
    if config.limits is not None and limits is not None:
        limits_layer.append(
            Middleware(
                LimitsMiddleware,
                policy=config.limits.policy(),
                backend=limits,
                estimate_cost=pricing.estimate,
                default_max_tokens=_default_max_tokens(config),
                registry=metrics.registry,
            )
        )
    pipeline = _stack(
        [
            request_context,
            *_telemetry(config.otel or OtelConfig(), tracer_provider),
            Middleware(
                MetricsMiddleware,
                metrics=metrics,
                pricing=pricing,
                ledger=ledger,
                otel_metrics=otel_metrics,
            ),
            *auth_layer,
            *limits_layer,
            Middleware(
                RetryMiddleware,
                policy={n: p.retry.policy() for n, p in config.providers.items()},
                deadline=config.request_deadline,
            ),
            Middleware(RoutingMiddleware, router=router, objects=objects),
        ],
        UpstreamApp(providers),
    )

    realtime = RealtimeApp(router=router, auth=auth.chain if auth else None, metrics=metrics)

    gate = AdminGate(auth.chain if auth else None, public=config.metrics.public)
    multiprocess_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    dashboard = gate.guard(DashboardApp(history, health=health, usage=ledger))
    routes: dict[str, ASGIApp] = {
        "/healthz": HealthzApp(providers, health=health, gate=gate),
        "/metrics": gate.guard(MetricsApp(metrics, multiprocess_dir=multiprocess_dir)),
        **dict.fromkeys(DashboardApp.paths, dashboard),
        "/usage": UsageApp(ledger, authenticators=auth.chain if auth else None),
    }
    endpoints = _stack([request_context], Endpoints(routes, auth=auth))

    parts = ProxyParts(
        config,
        providers,
        health,
        metrics,
        history,
        auth=auth,
        objects=objects,
        ledger=ledger,
        pricing=pricing,
        limits=limits,
        multiprocess=bool(multiprocess_dir),
    )
    return LLMProxy(pipeline, endpoints, parts, websockets=realtime)


def _stack(middleware: Sequence[Middleware], app: ASGIApp) -> ASGIApp:
    """``app`` inside ``middleware``, which is listed outermost first."""
    for cls, args, kwargs in reversed(middleware):
        app = cls(app, *args, **kwargs)
    return app


def _as_config(config: ProxyConfig | Mapping[str, Any] | str | os.PathLike[str]) -> ProxyConfig:
    if isinstance(config, str | os.PathLike):
        return load_config(config)
    if isinstance(config, ProxyConfig):
        return config
    return parse_config(config)


def _providers(config: ProxyConfig, transports: Mapping[str, UpstreamTransport]) -> list[Provider]:
    unknown = set(transports) - set(config.providers)
    if unknown:
        raise ValueError(f"transports given for unknown providers: {sorted(unknown)}")
    return [
        Provider.from_config(name, provider, transports.get(name))
        for name, provider in config.providers.items()
    ]


def _telemetry(otel: OtelConfig, tracer_provider: TracerProvider | None) -> list[Middleware]:
    """The request spans, with the ``otel`` extra installed, unless ``[otel]`` turns them
    off. Without a ``TracerProvider`` (given, or set globally at any time) they cost a check."""
    if not otel.enabled or not installed("otel"):
        return []
    from llm_proxy_mw._otel_names import latest_experimental
    from llm_proxy_mw.telemetry import TelemetryMiddleware  # the otel extra

    return [
        Middleware(
            TelemetryMiddleware,
            tracer_provider=tracer_provider,
            capture_content=otel.capture_content,
            max_content_bytes=otel.max_content_bytes,
            latest_conventions=latest_experimental(),
        )
    ]


def _limits_backend(config: ProxyConfig) -> LimitsBackend | None:
    """Where ``[limits]`` keeps its buckets: Redis with a ``redis://`` store (shared by every
    worker and replica), else this process's memory."""
    if config.limits is None:
        return None
    if config.store.url.partition("://")[0].lower() in ("redis", "rediss"):
        from llm_proxy_mw._limits_redis import RedisLimits  # the redis extra

        # A request's concurrency slot outlives its longest possible run, and no more.
        return RedisLimits(config.store.url, lease=config.request_deadline + 60)
    if _several_workers():
        logger.warning(
            "llm_proxy_mw: [limits] with a non-Redis [store] hold within each worker process: "
            "with several workers each allows the whole limit. Use store.url = 'redis://...'."
        )
    return LocalLimits()


def _several_workers() -> bool:
    """Whether this process looks like one of several workers (uvicorn's or gunicorn's
    ``--workers``, ``WEB_CONCURRENCY``, Prometheus multiprocess mode)."""
    argv = sys.argv
    for flag in ("--workers", "-w"):
        if flag in argv[:-1] and argv[argv.index(flag) + 1] not in ("1", "0"):
            return True
    workers = os.environ.get("WEB_CONCURRENCY", "1")
    return workers not in ("", "0", "1") or bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def _default_max_tokens(config: ProxyConfig) -> dict[str, int]:
    """The output reserved for a request that sets no maximum, by model: the largest
    ``default_max_tokens`` of the providers serving it."""
    by_model: dict[str, int] = {}
    for provider in config.providers.values():
        for model in provider.models:
            by_model[model] = max(by_model.get(model, 0), provider.default_max_tokens)
    return by_model


def _auth(config: ProxyConfig) -> AuthSetup | None:
    if config.auth is None:
        logger.warning(
            "llm_proxy_mw: no [auth] configured: the proxy is open to anyone who can reach it."
        )
        return None
    from llm_proxy_mw.auth._setup import build_auth  # the token machinery: only with [auth]

    return build_auth(config.auth, store_url=config.store.url)
