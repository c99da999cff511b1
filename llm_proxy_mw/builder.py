"""``build_proxy``: the whole stack from one config, as one ASGI app with a lifespan.

It is only a composition of public pieces, read outermost first, as the request flows:
request context, metrics, auth, retry, routing, then the upstream app; the proxy's own endpoints
sit beside the ``/v1`` pipeline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry
from starlette.types import ASGIApp, Receive, Scope, Send

from llm_proxy_mw.auth import AuthMiddleware
from llm_proxy_mw.config import ProxyConfig, load_config, parse_config
from llm_proxy_mw.context import RequestContextMiddleware, get_context
from llm_proxy_mw.dashboard import DashboardApp
from llm_proxy_mw.errors import AuthenticationError, NotFoundError, PermissionDeniedError
from llm_proxy_mw.health import CircuitState, HealthRegistry
from llm_proxy_mw.history import HistoryRecorder
from llm_proxy_mw.metrics import MetricsMiddleware, ProxyMetrics, exposition
from llm_proxy_mw.providers import Provider
from llm_proxy_mw.retry import RetryMiddleware
from llm_proxy_mw.routing import Router, RoutingMiddleware
from llm_proxy_mw.store import open_metrics_store
from llm_proxy_mw.transports import UpstreamTransport
from llm_proxy_mw.upstream import UpstreamApp
from llm_proxy_mw.wire import send_json

if TYPE_CHECKING:
    from llm_proxy_mw.auth._setup import AuthSetup

__all__ = ["LLMProxy", "build_proxy"]

logger = logging.getLogger("llm_proxy_mw")


class LLMProxy:
    """The mounted proxy: ``/v1/*`` through the pipeline; ``/healthz``, ``/metrics``,
    ``/dashboard`` and ``/metrics/history`` beside it.

    Pass ``proxy.lifespan`` to the host app so the provider pools are closed on shutdown;
    Starlette runs no lifespan for mounted apps. Served directly by an ASGI server, the
    proxy also answers the lifespan protocol itself.
    """

    def __init__(
        self,
        *,
        pipeline: ASGIApp,
        providers: list[Provider],
        config: ProxyConfig,
        health: HealthRegistry | None = None,
        metrics: ProxyMetrics | None = None,
        auth: AuthMiddleware | None = None,
        multiprocess_dir: str | None = None,
        history: HistoryRecorder | None = None,
        dashboard: DashboardApp | None = None,
        auth_setup: AuthSetup | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.health = health
        self.metrics = metrics
        self.auth = auth
        self.multiprocess_dir = multiprocess_dir
        self.providers = providers
        self.config = config
        self.history = history
        self.dashboard = dashboard
        self.auth_setup = auth_setup
        self._lifespan_entered = False
        self._warned = False
        self._lazy_start: asyncio.Task[None] | None = None
        self._restored = False
        # /v1/... goes to the pipeline with no dispatching coroutine in between: each layer
        # of a waiting request is one more object for the garbage collector to walk.
        body_timeout = config.request_body_timeout
        self._api = RequestContextMiddleware(pipeline, body_timeout=body_timeout)
        self._endpoints = RequestContextMiddleware(self._dispatch, body_timeout=body_timeout)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            if not self._lifespan_entered and not self._warned:
                self._warned = True
                logger.warning(
                    "llm_proxy_mw: the proxy's lifespan was not entered, so it starts lazily "
                    "and its connection pools and metrics history are not closed or flushed on "
                    "shutdown. Pass it on: Starlette(..., lifespan=proxy.lifespan)."
                )
                self._lazy_start = asyncio.get_running_loop().create_task(self.startup())
            if get_context(scope).route_path.startswith("/v1/"):
                await self._api(scope, receive, send)
            else:
                await self._endpoints(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._serve_lifespan(receive, send)
        elif scope["type"] == "websocket":
            # No websocket endpoints: refuse the handshake (the server answers 403).
            await send({"type": "websocket.close", "code": 1008})

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = get_context(scope).route_path
        if path == "/healthz":
            await self._serve_health(scope, send)
        elif path == "/metrics" and self.metrics is not None:
            await self._require_admin(scope, self.config.metrics.public)
            body, content_type = exposition(self.metrics, multiprocess_dir=self.multiprocess_dir)
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", content_type.encode())],
                }
            )
            await send({"type": "http.response.body", "body": body})
        elif (
            self.auth_setup is not None
            and (endpoint := self.auth_setup.endpoint_for(path)) is not None
        ):
            await endpoint(scope, receive, send)
        elif self.dashboard is not None and path in DashboardApp.paths:
            await self._require_admin(scope, self.config.metrics.public)
            await self.dashboard(scope, receive, send)
        else:
            raise NotFoundError(f"No such endpoint: {path[:200]}")

    async def _require_admin(self, scope: Scope, public: bool) -> None:
        """Operator endpoints need an admin principal, unless public or auth is off."""
        if public or self.auth is None:
            return
        ctx = get_context(scope)
        if ctx.principal is None:
            ctx.principal = await self.auth.authenticate(scope)
        if not ctx.principal.admin:
            raise PermissionDeniedError("This endpoint needs an admin principal.")

    async def _serve_health(self, scope: Scope, send: Send) -> None:
        """``{"status": "ok"}`` (503 ``unavailable`` when no provider can serve) for anyone;
        the per-provider report for an admin, or for all under ``[metrics] public`` or
        without ``[auth]``. Never 401 or 403: a liveness probe needs no credentials."""
        try:
            await self._require_admin(scope, self.config.metrics.public)
            report = self.health_report()
        except (AuthenticationError, PermissionDeniedError):
            report = {"status": self._serving_status()}
        status = 200 if report["status"] == "ok" else 503
        await send_json(send, status, json.dumps(report).encode())

    def _serving_status(self) -> str:
        """``ok`` while some provider's circuit lets requests through."""
        known = self.health.providers if self.health is not None else {}
        for provider in self.providers:
            health = known.get(provider.name)
            if health is None or health.current_state() is not CircuitState.OPEN:
                return "ok"
        return "unavailable"

    def health_report(self) -> dict[str, Any]:
        """Liveness, and each provider's kind, models, circuit, success rate and budget."""
        states = self.health.snapshot() if self.health is not None else {}
        return {
            "status": self._serving_status(),
            "providers": {
                p.name: {
                    "kind": p.config.kind,
                    "models": p.config.models,
                    **states.get(p.name, {}),
                }
                for p in self.providers
            },
        }

    @contextlib.asynccontextmanager
    async def lifespan(self, app: object = None) -> AsyncIterator[None]:
        """The host app's lifespan hook: history starts (counters restored) with the host,
        and is flushed and the pools closed when it shuts down."""
        self._lifespan_entered = True
        await self.startup()
        try:
            yield
        finally:
            await self.aclose()

    async def startup(self) -> None:
        """Start auth's stores and refreshers, open the metrics history, restore counters."""
        if self.auth_setup is not None:
            for lifecycle in self.auth_setup.lifecycles:
                await lifecycle.start()
        if self.history is None:
            return
        await self.history.start()
        if self.metrics is not None and not self.multiprocess_dir and not self._restored:
            # Under multiprocess mode every worker would add the same totals again. Once per
            # process: a lifespan entered again finds its counters already continued, and
            # what this process counted (pending, or flushed by an earlier lifespan) is in
            # them already, so only the stored totals found at the first start are added.
            self._restored = True
            self.metrics.restore(await self.history.restore_totals(pending=False))

    async def aclose(self) -> None:
        """Flush the metrics history and close every provider's connection pool."""
        if self._lazy_start is not None:
            await self._lazy_start
        if self.history is not None:
            await self.history.stop()
        if self.auth_setup is not None:
            for lifecycle in reversed(self.auth_setup.lifecycles):
                await lifecycle.stop()
        for provider in self.providers:
            await provider.transport.aclose()
            if provider.credential_source is not None:
                await provider.credential_source.aclose()

    async def _serve_lifespan(self, receive: Receive, send: Send) -> None:
        message = await receive()
        assert message["type"] == "lifespan.startup"
        self._lifespan_entered = True
        await self.startup()
        await send({"type": "lifespan.startup.complete"})
        message = await receive()
        await self.aclose()
        await send({"type": "lifespan.shutdown.complete"})


def build_proxy(
    config: ProxyConfig | Mapping[str, Any] | str | os.PathLike[str],
    *,
    transports: Mapping[str, UpstreamTransport] | None = None,
    registry: CollectorRegistry | None = None,
) -> LLMProxy:
    """Build the proxy from a config object, a mapping, or the path of a TOML file.

    ``transports`` overrides the transport of named providers (tests plug respx through
    ``HttpxTransport``); the others get aiohttp, or the echo transport for ``kind = "echo"``.
    Metrics go to ``registry``, or to a registry of the proxy's own (never the global one).
    """
    if isinstance(config, str | os.PathLike):
        config = load_config(config)
    elif not isinstance(config, ProxyConfig):
        config = parse_config(config)
    transports = transports or {}
    unknown = set(transports) - set(config.providers)
    if unknown:
        raise ValueError(f"transports given for unknown providers: {sorted(unknown)}")
    providers = [
        Provider.from_config(name, provider, transports.get(name))
        for name, provider in config.providers.items()
    ]
    limit = config.max_body_bytes
    health = HealthRegistry(
        config.providers,
        policies={name: p.health.policy() for name, p in config.providers.items()},
    )
    router = Router(providers, health=health)
    policies = {name: p.retry.policy() for name, p in config.providers.items()}
    pipeline: ASGIApp = UpstreamApp(providers, max_body_bytes=limit)
    pipeline = RoutingMiddleware(pipeline, router=router, max_body_bytes=limit)
    pipeline = RetryMiddleware(
        pipeline, policy=policies, deadline=config.request_deadline, max_body_bytes=limit
    )
    auth = None
    auth_setup = None
    if config.auth is not None:
        from llm_proxy_mw.auth._setup import build_auth  # the token machinery: only with [auth]

        auth_setup = build_auth(config.auth, store_url=config.store.url)
        pipeline = auth = AuthMiddleware(pipeline, authenticators=auth_setup.authenticators)
    else:
        logger.warning(
            "llm_proxy_mw: no [auth] configured: the proxy is open to anyone who can reach it."
        )
    models = [m for p in config.providers.values() for m in p.models]
    history = HistoryRecorder(
        open_metrics_store(config.store.url),
        flush_interval=config.metrics.flush_interval_seconds,
        retention_days=config.metrics.retention_days,
    )
    metrics = ProxyMetrics(
        registry or CollectorRegistry(), models=models, health=health, history=history
    )
    pipeline = MetricsMiddleware(pipeline, metrics=metrics)
    return LLMProxy(
        pipeline=pipeline,
        providers=providers,
        config=config,
        health=health,
        metrics=metrics,
        auth=auth,
        multiprocess_dir=os.environ.get("PROMETHEUS_MULTIPROC_DIR"),
        history=history,
        dashboard=DashboardApp(history, health=health),
        auth_setup=auth_setup,
    )
