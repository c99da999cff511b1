"""``LLMProxy``: the app a host mounts, and the lifespan of what its requests share.

``/v1/*`` goes down the pipeline; every other path to the proxy's own endpoints (``Endpoints``:
``/healthz``, ``/metrics``, the dashboard, the ``[auth]`` paths); websockets to ``websockets``
(``RealtimeApp``), or refused without it. The
lifespan starts the metrics history and auth's stores with the host, or keeps the host from
starting (``StartupError``: nothing is served), and closes them and every provider's pools
when it stops. Starlette runs no lifespan for mounted apps, so the host passes it on
(``Starlette(..., lifespan=proxy.lifespan)``); an ASGI server serving the proxy itself gets
the lifespan protocol. Without either, the proxy starts on its first request, with a warning.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from traceback import format_exception
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Receive, Scope, Send

from llm_proxy_mw.config import ProxyConfig
from llm_proxy_mw.context import get_context
from llm_proxy_mw.errors import NotFoundError, StartupError
from llm_proxy_mw.health import HealthRegistry
from llm_proxy_mw.healthz import health_report
from llm_proxy_mw.history import HistoryRecorder, StoreError
from llm_proxy_mw.ledger import UsageLedger
from llm_proxy_mw.limits import LimitsBackend
from llm_proxy_mw.objects import ObjectRoutes
from llm_proxy_mw.pricing import Pricing
from llm_proxy_mw.providers import Provider
from llm_proxy_mw.proxy_metrics import ProxyMetrics

if TYPE_CHECKING:
    from llm_proxy_mw.auth._setup import AuthSetup

__all__ = ["Endpoints", "LLMProxy", "ProxyParts"]

logger = logging.getLogger("llm_proxy_mw")


@dataclass(frozen=True, slots=True)
class ProxyParts:
    """What outlives every request: built by ``build_proxy``, shared by the pipeline and the
    endpoints, started and closed by the proxy's lifespan."""

    config: ProxyConfig
    providers: Sequence[Provider]
    health: HealthRegistry
    metrics: ProxyMetrics
    history: HistoryRecorder
    auth: AuthSetup | None = None
    #: Which provider owns which object: its store opens and closes with the history's.
    objects: ObjectRoutes | None = None
    #: The usage ledger (``/usage``): started after the history, stopped (flushed) before.
    ledger: UsageLedger | None = None
    #: Prices each request; its table is loaded at start, off the event loop.
    pricing: Pricing | None = None
    #: Where ``[limits]`` keeps its buckets: closed with the proxy.
    limits: LimitsBackend | None = None
    #: Under Prometheus multiprocess mode, where every worker would add the stored totals
    #: again, the counters are not continued from the store.
    multiprocess: bool = False


class Endpoints:
    """The proxy's own paths: ``routes`` by exact path, then the ``auth`` apps that claim
    the path; ``NotFoundError`` for any other."""

    def __init__(self, routes: Mapping[str, ASGIApp], *, auth: AuthSetup | None = None) -> None:
        self.routes = dict(routes)
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = get_context(scope).route_path
        app = self.routes.get(path)
        if app is None and self.auth is not None:
            app = self.auth.endpoint_for(path)
        if app is None:
            raise NotFoundError(f"No such endpoint: {path[:200]}")
        await app(scope, receive, send)


class LLMProxy:
    """The mounted proxy: ``/v1/*`` through ``pipeline``, every other path to ``endpoints``
    (each with its ``RequestContextMiddleware`` in front), websockets to ``websockets``,
    ``parts`` started and closed with its lifespan."""

    def __init__(
        self,
        pipeline: ASGIApp,
        endpoints: ASGIApp,
        parts: ProxyParts,
        *,
        websockets: ASGIApp | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.endpoints = endpoints
        self.parts = parts
        self.websockets = websockets
        self._lifespan_entered = False
        self._warned = False
        self._lazy_start: asyncio.Task[None] | None = None
        self._restored = False
        self._running: contextlib.AsyncExitStack | None = None

    @property
    def config(self) -> ProxyConfig:
        return self.parts.config

    @property
    def providers(self) -> Sequence[Provider]:
        return self.parts.providers

    @property
    def health(self) -> HealthRegistry:
        return self.parts.health

    @property
    def history(self) -> HistoryRecorder:
        return self.parts.history

    @property
    def auth_setup(self) -> AuthSetup | None:
        return self.parts.auth

    def health_report(self) -> dict[str, Any]:
        """What an admin's ``/healthz`` shows."""
        return health_report(self.parts.providers, self.parts.health)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            if not self._lifespan_entered and not self._warned:
                self._start_lazily()
            # /v1/... goes to the pipeline with no dispatching coroutine in between: each
            # layer of a waiting request is one more object for the garbage collector to walk.
            if get_context(scope).route_path.startswith("/v1/"):
                await self.pipeline(scope, receive, send)
            else:
                await self.endpoints(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._serve_lifespan(receive, send)
        elif scope["type"] == "websocket":
            if self.websockets is not None:
                await self.websockets(scope, receive, send)
            else:  # refuse the handshake (the server answers 403)
                await send({"type": "websocket.close", "code": 1008})

    @contextlib.asynccontextmanager
    async def lifespan(self, app: object = None) -> AsyncIterator[None]:
        """The host app's lifespan hook: the proxy starts with the host (or the host does not
        start: ``StartupError``), and is flushed and closed when the host shuts down."""
        self._lifespan_entered = True
        await self.startup()
        try:
            yield
        finally:
            await self.aclose()

    async def startup(self, *, require_store: bool = True) -> None:
        """Open the metrics history (counters continued from it), then start auth's stores
        and refreshers; a no-op while started.

        One ``AsyncExitStack`` holds what started, so a step that fails stops the ones before
        it. A ``[store]`` that does not open raises ``StartupError``, unless not
        ``require_store``: then the history tries it again at every flush.
        """
        if self._running is not None:
            return
        history = self.parts.history
        async with contextlib.AsyncExitStack() as started:
            await _store_opens(history.start(require_store=require_store))
            started.push_async_callback(history.stop)
            objects = self.parts.objects
            if objects is not None:
                await _store_opens(objects.start())
                started.push_async_callback(objects.stop)
            ledger = self.parts.ledger
            if ledger is not None:
                await ledger.start()
                started.push_async_callback(ledger.stop)
            if self.parts.pricing is not None:
                # A third of a second of reading: not in the first request that needs it.
                await asyncio.to_thread(self.parts.pricing.warm)
            await self._continue_counters()
            auth = self.parts.auth
            for lifecycle in auth.lifecycles if auth is not None else ():
                await lifecycle.start()
                started.push_async_callback(lifecycle.stop)
            self._running = started.pop_all()

    async def _continue_counters(self) -> None:
        # Once per process: a lifespan entered again finds its counters already continued,
        # and what this process counted (pending, or flushed by an earlier lifespan) is in
        # them already, so only the stored totals found at the first start are added.
        if self.parts.multiprocess or self._restored:
            return
        self._restored = True
        self.parts.metrics.restore(await self.parts.history.restore_totals(pending=False))

    async def aclose(self) -> None:
        """Stop what ``startup`` started (the history flushed), then close every provider's
        pools. Every step runs whatever another raised; what they raised is raised after."""
        if self._lazy_start is not None:
            await self._lazy_start  # never raises: a failure was logged
        running, self._running = self._running, None
        async with contextlib.AsyncExitStack() as closing:
            for provider in self.parts.providers:
                closing.push_async_callback(provider.transport.aclose)
                if provider.credential_source is not None:
                    closing.push_async_callback(provider.credential_source.aclose)
            if self.parts.limits is not None:
                closing.push_async_callback(self.parts.limits.aclose)
            if running is not None:
                closing.push_async_exit(running)  # pushed last, so stopped before the pools

    def _start_lazily(self) -> None:
        self._warned = True
        logger.warning(
            "llm_proxy_mw: the proxy's lifespan was not entered, so it starts lazily "
            "and its connection pools and metrics history are not closed or flushed on "
            "shutdown. Pass it on: Starlette(..., lifespan=proxy.lifespan)."
        )
        self._lazy_start = asyncio.get_running_loop().create_task(self._lazy_startup())

    async def _lazy_startup(self) -> None:
        # Requests are served already, whatever happens here: a store that does not open is
        # tried again at every flush, and anything else is logged once.
        try:
            await self.startup(require_store=False)
        except Exception:  # logged, not raised: no one awaits this task but ``aclose``
            logger.exception("llm_proxy_mw: the proxy's lazy start failed")

    async def _serve_lifespan(self, receive: Receive, send: Send) -> None:
        """The ASGI lifespan protocol, for a server serving the proxy itself.

        A failure is sent to the server with its reason, which exits (uvicorn, serving
        nothing at start-up), never raised: uvicorn's default ``--lifespan auto`` would take
        an exception for a lifespan not supported, and serve a proxy that never started.
        """
        await receive()  # lifespan.startup
        self._lifespan_entered = True
        if await _answer(send, "startup", self.startup):
            await receive()  # lifespan.shutdown
            await _answer(send, "shutdown", self.aclose)


async def _answer(send: Send, event: str, step: Callable[[], Awaitable[None]]) -> bool:
    """Run ``step``, then send ``lifespan.<event>.complete``, or ``.failed`` with the reason:
    a ``StartupError``'s one line, the whole traceback of anything else (a bug)."""
    try:
        await step()
    except Exception as exc:  # reported, not raised: see ``LLMProxy._serve_lifespan``
        reason = str(exc) if isinstance(exc, StartupError) else "".join(format_exception(exc))
        await send({"type": f"lifespan.{event}.failed", "message": reason.rstrip()})
        return False
    await send({"type": f"lifespan.{event}.complete"})
    return True


async def _store_opens(start: Awaitable[None]) -> None:
    """Await a store's start; one that does not open stops the proxy's start-up with its
    own message as the reason (its traceback is the driver's)."""
    try:
        await start
    except StoreError as exc:
        message = f"llm_proxy_mw: cannot start: the [store] does not open ({exc})"
        raise StartupError(message) from None
