"""``AdminGate``: who may see the proxy's operator endpoints.

``/metrics``, ``/dashboard`` and ``/metrics/history`` answer admins only (401 without known
credentials, 403 for anyone else); ``/healthz`` answers everyone, and adds each provider's
report for those the gate admits. Under ``[metrics] public = true``, or without ``[auth]``,
the gate admits everyone. The caller is resolved by the proxy's one ``AuthenticatorChain``,
once per request: a principal already in the request context is taken as it is.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from llm_proxy_mw.auth import AuthenticatorChain
from llm_proxy_mw.context import get_context
from llm_proxy_mw.errors import AuthenticationError, PermissionDeniedError

__all__ = ["AdminGate"]


class AdminGate:
    """Admits admin principals of ``authenticators``; everyone when ``public`` or when there
    are no ``authenticators`` (a proxy without auth is open to anyone who reaches it)."""

    def __init__(self, authenticators: AuthenticatorChain | None, *, public: bool = False) -> None:
        self.authenticators = None if public else authenticators

    async def check(self, scope: Scope) -> None:
        """Return if the caller is admitted; else raise ``AuthenticationError`` (401) or
        ``PermissionDeniedError`` (403)."""
        if self.authenticators is None:
            return
        ctx = get_context(scope)
        if ctx.principal is None:
            ctx.principal = await self.authenticators.authenticate(scope)
        if not ctx.principal.admin:
            raise PermissionDeniedError("This endpoint needs an admin principal.")

    async def admits(self, scope: Scope) -> bool:
        """Whether the caller is admitted, for an endpoint that serves others too."""
        try:
            await self.check(scope)
        except (AuthenticationError, PermissionDeniedError):
            return False
        return True

    def guard(self, app: ASGIApp) -> ASGIApp:
        """``app``, for admitted callers only."""

        async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
            await self.check(scope)
            await app(scope, receive, send)

        return guarded
