"""``AuthMiddleware``: resolve the caller to a ``Principal`` or answer 401.

Credentials come as ``Authorization: Bearer`` (the OpenAI SDK) or ``x-api-key`` (the
Anthropic SDK). Authenticators are asked in order; the first that knows the secret wins.
A rejection says nothing about which check failed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from starlette.types import ASGIApp, Receive, Scope, Send

from llm_proxy_mw.auth._principal import Principal
from llm_proxy_mw.context import get_context
from llm_proxy_mw.errors import AuthenticationError

__all__ = ["AuthMiddleware", "Authenticator", "presented_secret"]

#: Longer credentials are refused before any authenticator sees them.
MAX_CREDENTIAL_BYTES = 8192


class Authenticator(Protocol):
    """Resolves a request to a principal, or ``None`` when its credentials are not its kind.

    ``secret`` is the presented bearer token or ``x-api-key`` (``None`` when there is none);
    cookie-based authenticators read the scope instead.
    """

    async def authenticate(self, scope: Scope, secret: str | None) -> Principal | None: ...


def presented_secret(scope: Scope) -> str | None:
    """The bearer token or ``x-api-key`` of the request, if any."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                bearer: str = token.strip().decode("latin-1")
                return bearer
        elif name == b"x-api-key" and value:
            api_key: str = value.decode("latin-1")
            return api_key
    return None


class AuthMiddleware:
    """Sets ``ctx.principal``; unauthenticated requests get 401 with ``WWW-Authenticate``."""

    def __init__(
        self, app: ASGIApp, *, authenticators: Sequence[Authenticator], realm: str = "llm-proxy"
    ) -> None:
        self.app = app
        self.authenticators = list(authenticators)
        self._challenge = {"www-authenticate": f'Bearer realm="{realm}"'}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ctx = get_context(scope)
        if ctx.principal is None:
            ctx.principal = await self.authenticate(scope)
        await self.app(scope, receive, send)

    async def authenticate(self, scope: Scope) -> Principal:
        secret = presented_secret(scope)
        if secret is None or len(secret) <= MAX_CREDENTIAL_BYTES:
            for authenticator in self.authenticators:
                principal = await authenticator.authenticate(scope, secret)
                if principal is not None:
                    return principal
        raise AuthenticationError("Invalid or missing credentials.", headers=dict(self._challenge))
