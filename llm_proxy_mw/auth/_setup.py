"""Everything ``[auth]`` configures, composed in one place for the builder.

Each capability adds its authenticators (tried in order on every request), its endpoint
apps (served beside the ``/v1`` pipeline) and anything that must start and stop with the
proxy (stores, background refreshers).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from starlette.types import Receive, Scope, Send

from llm_proxy_mw.auth._api_keys import ApiKeyAuthenticator
from llm_proxy_mw.auth._middleware import Authenticator, presented_secret
from llm_proxy_mw.auth._principal import Principal
from llm_proxy_mw.config import AuthConfig

__all__ = ["AuthEndpoints", "AuthSetup", "Lifecycle", "build_auth"]


class AuthEndpoints(Protocol):
    """An ASGI app serving some of the proxy's own auth paths (``/auth/...``)."""

    def handles(self, route_path: str) -> bool: ...

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None: ...


class Lifecycle(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


@dataclass
class AuthSetup:
    authenticators: list[Authenticator] = field(default_factory=list)
    endpoints: list[AuthEndpoints] = field(default_factory=list)
    lifecycles: list[Lifecycle] = field(default_factory=list)

    async def resolve(self, scope: Scope) -> Principal | None:
        """The request's principal by every configured means, or ``None``."""
        secret = presented_secret(scope)
        for authenticator in self.authenticators:
            principal = await authenticator.authenticate(scope, secret)
            if principal is not None:
                return principal
        return None

    def endpoint_for(self, route_path: str) -> AuthEndpoints | None:
        for endpoint in self.endpoints:
            if endpoint.handles(route_path):
                return endpoint
        return None


#: Resolves a request's principal; endpoint apps get this to know who is calling.
Resolver = Callable[[Scope], Awaitable[Principal | None]]


def build_auth(config: AuthConfig, *, store_url: str) -> AuthSetup:
    """Compose API keys, proxy-issued tokens, external JWTs and the OAuth login."""
    setup = AuthSetup()
    setup.authenticators.append(ApiKeyAuthenticator(config.api_keys))
    return setup
