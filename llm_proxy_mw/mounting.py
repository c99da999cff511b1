"""``mount(host, "/llm", proxy)``: the proxy beside a host app, in front of the host's router.

A Starlette ``Mount`` is the way to embed the proxy in a host's route table, and the one to
choose by default: the host's middleware (CORS, request logging, OpenTelemetry's ASGI
instrumentation, the host's own auth) then sees proxied requests too. ``mount`` decides by
path prefix alone and hands the request straight to the proxy; everything else, the
lifespan included, goes to the host. So a proxied request skips everything the host wraps
around its routes (its middleware, exception handlers and router), and saves their cost:
8 to 12 µs of CPU per request (``python -m benchmarks layers``, the ``host app`` rows) and some
30 objects kept alive per waiting request for the garbage collector to walk. Choose it for a
process that mostly proxies, at high concurrency, when no host middleware must see ``/llm``.

The proxy sees the scope a ``Mount`` would give it (``root_path`` extended by the prefix), so
the two are interchangeable; a host may keep its ``Mount`` for ``url_for``.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from llm_proxy_mw.context import route_path_of

__all__ = ["PrefixMount", "mount"]


class PrefixMount:
    """Requests under ``prefix`` go to ``app``; all others, and the lifespan, to ``host``."""

    __slots__ = ("host", "app", "prefix", "_under")

    def __init__(self, host: ASGIApp, prefix: str, app: ASGIApp) -> None:
        stripped = prefix.strip("/")
        if not stripped:
            raise ValueError("The mount prefix must name a path, like '/llm'.")
        self.host = host
        self.app = app
        self.prefix = "/" + stripped
        self._under = self.prefix + "/"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            if route_path_of(scope).startswith(self._under):
                root_path: str = scope.get("root_path", "")
                child = dict(scope)
                child["root_path"] = root_path + self.prefix
                child.setdefault("app_root_path", root_path)
                await self.app(child, receive, send)
                return
        await self.host(scope, receive, send)


def mount(host: ASGIApp, prefix: str, app: ASGIApp) -> PrefixMount:
    """Serve ``app`` (the proxy) under ``prefix`` and everything else with ``host``.

    Requests under ``prefix`` never pass the host's middleware, exception handlers or router:
    mount the proxy with a Starlette ``Mount`` instead when any of them must see those
    requests. The host keeps its own lifespan; pass it ``proxy.lifespan`` as with a ``Mount``.
    """
    return PrefixMount(host, prefix, app)
