"""``AuthMiddleware``: resolve the caller to a ``Principal`` or answer 401.

Credentials come as ``Authorization: Bearer`` (the OpenAI SDK) or ``x-api-key`` (the
Anthropic SDK). An ``AuthenticatorChain`` asks its authenticators in order; the first that
knows the secret wins. It is the one place a request's credentials are checked: the
middleware uses it for the pipeline, the proxy's own endpoints (the admin gate, the token API)
for theirs. A rejection says nothing about which check failed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from starlette.types import ASGIApp, Receive, Scope, Send

from llm_proxy_mw.auth._principal import Principal
from llm_proxy_mw.context import get_context
from llm_proxy_mw.errors import AuthenticationError

__all__ = ["AuthMiddleware", "Authenticator", "AuthenticatorChain", "presented_secret"]

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


class AuthenticatorChain:
    """``authenticators``, asked in order. The chain keeps the list it is given (not a copy),
    so an authenticator appended to it later is asked too."""

    __slots__ = ("authenticators", "_challenge")

    def __init__(self, authenticators: list[Authenticator], *, realm: str = "llm-proxy") -> None:
        self.authenticators = authenticators
        self._challenge = {"www-authenticate": f'Bearer realm="{realm}"'}

    async def authenticate(self, scope: Scope) -> Principal:
        """The caller; ``AuthenticationError`` (401, with a challenge) when no one knows it."""
        secret = presented_secret(scope)
        if secret is None or len(secret) <= MAX_CREDENTIAL_BYTES:
            for authenticator in self.authenticators:
                principal = await authenticator.authenticate(scope, secret)
                if principal is not None:
                    return principal
        raise AuthenticationError("Invalid or missing credentials.", headers=dict(self._challenge))

    async def resolve(self, scope: Scope) -> Principal | None:
        """The caller, or ``None``: for endpoints that also serve the anonymous."""
        try:
            return await self.authenticate(scope)
        except AuthenticationError:
            return None


class AuthMiddleware:
    """Sets ``ctx.principal``; unauthenticated requests get 401 with ``WWW-Authenticate``."""

    def __init__(
        self, app: ASGIApp, *, authenticators: Sequence[Authenticator], realm: str = "llm-proxy"
    ) -> None:
        self.app = app
        self.chain = AuthenticatorChain(list(authenticators), realm=realm)
        self._authenticate = self.chain.authenticate  # one attribute lookup per request

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ctx = get_context(scope)
        if ctx.principal is None:
            ctx.principal = await self._authenticate(scope)
        await self.app(scope, receive, send)
