"""``RealtimeApp``: OpenAI Realtime websockets (``GET /v1/realtime?model=...``), relayed.

The handshake is where everything is decided, before the client's is answered: the caller's
credentials (an ``authorization`` header, or the ``openai-insecure-api-key.<key>``
subprotocol a browser sends), the model's route (an ``openai`` provider; another kind is
refused), and the provider's own handshake, made with the provider's credentials and never
the client's. Any refusal is an HTTP answer in OpenAI's error format, as an HTTP request
would get (servers without the ASGI ``websocket.http.response`` extension answer 403). Once
both handshakes are done, messages are relayed both ways (``_realtime_relay.py``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable
from urllib.parse import parse_qsl

from starlette.types import Message, Receive, Scope, Send

from llm_proxy_mw._realtime_relay import relay
from llm_proxy_mw._realtime_upstream import (
    INSECURE_KEY_PREFIX,
    ProviderSocket,
    forwarded_subprotocols,
    open_provider_socket,
    realtime_url,
)
from llm_proxy_mw.auth import AuthenticatorChain, presented_secret
from llm_proxy_mw.context import RequestContext, current_request_id, get_context
from llm_proxy_mw.errors import ProxyError, UntranslatableError
from llm_proxy_mw.providers import Provider
from llm_proxy_mw.proxy_metrics import ProxyMetrics
from llm_proxy_mw.retry import RETRYABLE_STATUSES
from llm_proxy_mw.routing import Router
from llm_proxy_mw.wire import WireFormat, send_error

__all__ = ["REALTIME_PATH", "RealtimeApp"]

REALTIME_PATH = "/v1/realtime"

#: How the handshake is shown to Auth: as a request that spends the caller's session, never
#: as a safe method, so a session cookie counts only from this site's own pages (a browser
#: sends cookies with another site's websocket too).
_HANDSHAKE_METHOD = "WEBSOCKET"

#: The handshake failures tried again elsewhere: no answer (``None``: a connect error or
#: timeout), or a status a request would be retried after. Nothing was sent yet.
_RETRIED = RETRYABLE_STATUSES | {None}


class RealtimeApp:
    """Serves websocket scopes: ``/v1/realtime`` relayed to the provider of its model, any
    other path refused.

    ``auth`` checks the caller at the handshake (``None``: anyone, as without ``[auth]``);
    ``metrics`` counts sessions and their durations.
    """

    def __init__(
        self,
        *,
        router: Router,
        auth: AuthenticatorChain | None = None,
        metrics: ProxyMetrics | None = None,
    ) -> None:
        self.router = router
        self.auth = auth
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            return
        ctx = get_context(scope)
        if ctx.route_path != REALTIME_PATH:
            await send({"type": "websocket.close", "code": 1008})  # the server answers 403
            return
        if (await receive())["type"] != "websocket.connect":
            return  # the client left before its handshake was read
        token = current_request_id.set(ctx.request_id)
        try:
            async with contextlib.AsyncExitStack() as stack:
                try:
                    socket = await self._connect(ctx, scope, stack)
                except ProxyError as error:
                    await self._refuse(ctx, scope, send, error)
                    return
                ctx.status = 101
                await send(
                    {
                        "type": "websocket.accept",
                        "subprotocol": socket.protocol,
                        "headers": [
                            (b"x-request-id", ctx.request_id.encode()),
                            (b"x-llm-proxy-provider", str(ctx.provider).encode()),
                        ],
                    }
                )
                await self._relay(ctx, receive, send, socket)
        finally:
            current_request_id.reset(token)

    async def _connect(
        self, ctx: RequestContext, scope: Scope, stack: contextlib.AsyncExitStack
    ) -> ProviderSocket:
        """The provider's websocket for the caller, open until ``stack`` closes: the caller
        checked, the model (the ``model`` query) routed to an ``openai`` provider.

        A handshake that failed as a request would be retried elsewhere (no connection, a
        retryable status) is made again with the plan's next deployment; the provider's own
        status of the last one that answered is ``ctx.status``.
        """
        if self.auth is not None:
            ctx.principal = await self.auth.authenticate(_as_request(scope))
        ctx.model = _query_model(scope.get("query_string", b""))
        plan = ctx.plan = self.router.plan(WireFormat.OPENAI, ctx.model)
        failed: ProxyError | None = None
        while True:
            provider = plan.next()
            if provider.config.kind != "openai":
                raise failed or UntranslatableError(
                    f"The provider {provider.name!r} ({provider.config.kind}) has no realtime "
                    "endpoint: realtime sessions go to openai providers.",
                    param="model",
                )
            ctx.provider = provider.name
            tried = len(ctx.attempts)
            try:
                socket = await stack.enter_async_context(await self._open(ctx, scope, provider))
            except ProxyError as error:
                if len(ctx.attempts) == tried:  # no attempt was made: its credentials failed
                    raise
                attempt = ctx.attempts[-1]
                plan.record(attempt)
                ctx.status = attempt.status
                if attempt.status not in _RETRIED or plan.after_failure() != "elsewhere":
                    raise
                failed = error
                continue
            plan.record(ctx.attempts[-1])
            return socket

    async def _open(
        self, ctx: RequestContext, scope: Scope, provider: Provider
    ) -> contextlib.AbstractAsyncContextManager[ProviderSocket]:
        """The handshake with ``provider``, to enter: its credentials, never the client's."""
        headers = provider.request_headers(scope["headers"])
        if provider.credential_source is not None:
            headers += await provider.credential_source.headers()
        return open_provider_socket(
            provider,
            realtime_url(provider, ctx.route_path, scope.get("query_string", b"")),
            headers,
            forwarded_subprotocols(scope.get("subprotocols", ())),
            ctx.attempts,
        )

    async def _relay(
        self, ctx: RequestContext, receive: Receive, send: Send, socket: ProviderSocket
    ) -> None:
        """The accepted session, counted and timed."""
        metrics = self.metrics
        if metrics is None:
            await relay(receive, send, socket)
            return
        metrics.realtime_session(ctx.provider, ctx.model, 101)
        metrics.realtime_active.inc()
        started = time.perf_counter()
        try:
            await relay(receive, send, socket)
        finally:
            metrics.realtime_active.dec()
            metrics.realtime_ended(ctx.provider, ctx.model, time.perf_counter() - started)

    async def _refuse(
        self, ctx: RequestContext, scope: Scope, send: Send, error: ProxyError
    ) -> None:
        """Answer the handshake with ``error`` as an HTTP response (the provider's status
        when it refused its own), when the server can; else the server answers 403."""
        status = ctx.status = ctx.status or error.status_code
        if self.metrics is not None:
            self.metrics.realtime_session(ctx.provider, ctx.model, status)
        if "websocket.http.response" not in scope.get("extensions", {}):
            await send({"type": "websocket.close", "code": 1008})
            return

        def as_denial(message: Message) -> Awaitable[None]:
            message["type"] = "websocket." + message["type"]
            if message["type"] == "websocket.http.response.start":
                message["status"] = status
                request_id = (b"x-request-id", ctx.request_id.encode())
                message["headers"] = [*message["headers"], request_id]
            return send(message)

        await send_error(as_denial, error, WireFormat.OPENAI, ctx.request_id)


def _as_request(scope: Scope) -> Scope:
    """The handshake as Auth reads a request: with the browser's key, if it sent one as a
    subprotocol, presented as a bearer token."""
    request = {**scope, "method": _HANDSHAKE_METHOD}
    if presented_secret(scope) is None:
        for subprotocol in scope.get("subprotocols", ()):
            if subprotocol.startswith(INSECURE_KEY_PREFIX):
                key = subprotocol[len(INSECURE_KEY_PREFIX) :].encode("latin-1", "replace")
                request["headers"] = [*scope["headers"], (b"authorization", b"Bearer " + key)]
                break
    return request


def _query_model(query_string: bytes) -> str | None:
    for name, value in parse_qsl(query_string.decode("latin-1")):
        if name == "model" and value:
            return value
    return None
