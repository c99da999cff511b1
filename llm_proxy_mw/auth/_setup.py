"""Everything ``[auth]`` configures, composed in one place for the builder.

Each capability adds its authenticators (tried in order on every request), its endpoint
apps (served beside the ``/v1`` pipeline) and anything that must start and stop with the
proxy (stores, background refreshers).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from starlette.types import Receive, Scope, Send

from llm_proxy_mw._extras import installed
from llm_proxy_mw.auth._api_keys import ApiKeyAuthenticator
from llm_proxy_mw.auth._middleware import Authenticator, AuthenticatorChain
from llm_proxy_mw.auth._token_api import TokenApi
from llm_proxy_mw.auth._token_owners import LoginSession, owner_check
from llm_proxy_mw.auth._tokens import TokenService
from llm_proxy_mw.auth.token_store import open_token_store
from llm_proxy_mw.config import AuthConfig

if TYPE_CHECKING:
    from llm_proxy_mw.auth._sessions import Session, SessionManager

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
    """``chain`` asks ``authenticators`` (the very list, so every one added is asked): the
    pipeline's ``AuthMiddleware``, the admin gate and the token API all resolve callers so."""

    authenticators: list[Authenticator] = field(default_factory=list)
    endpoints: list[AuthEndpoints] = field(default_factory=list)
    lifecycles: list[Lifecycle] = field(default_factory=list)
    chain: AuthenticatorChain = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.chain = AuthenticatorChain(self.authenticators)

    def endpoint_for(self, route_path: str) -> AuthEndpoints | None:
        for endpoint in self.endpoints:
            if endpoint.handles(route_path):
                return endpoint
        return None


def build_auth(config: AuthConfig, *, store_url: str) -> AuthSetup:
    """Compose API keys, proxy-issued tokens, external JWTs and the OAuth login."""
    setup = AuthSetup()
    setup.authenticators.append(ApiKeyAuthenticator(config.api_keys))
    on_demand = "tokens" not in config.model_fields_set
    tokens = None
    if not on_demand or installed("tokens"):  # [auth.tokens] without it fails at load
        tokens = _add_tokens(setup, config, store_url, on_demand=on_demand)
    _add_external_jwt(setup, config)
    if tokens is not None:  # always, with [auth.oauth]: its extra brings the tokens one
        _add_oauth_login(setup, config, tokens)
    return setup


def _add_tokens(
    setup: AuthSetup, config: AuthConfig, store_url: str, *, on_demand: bool
) -> TokenApi:
    """Proxy-issued tokens: their verifier, their API and JWKS, and their store.

    Served wherever the tokens extra is installed; without an ``[auth.tokens]`` section
    they start on demand, so that a proxy whose clients use API keys only never loads
    joserfc and cryptography. Their families live only while their owners do, as this
    config has it.
    """
    service = TokenService(
        config.tokens,
        open_token_store(store_url),
        on_demand=on_demand,
        owner_exists=owner_check(config),
    )
    setup.authenticators.append(service.authenticator)
    api = TokenApi(service, resolve=setup.chain.resolve)
    setup.endpoints.append(api)
    setup.lifecycles.append(service)
    return api


def _add_external_jwt(setup: AuthSetup, config: AuthConfig) -> None:
    """Bearer tokens of the ``[auth.jwt_issuers]``; their JWKS client closes with the proxy."""
    if config.jwt_issuers:
        from llm_proxy_mw.auth._external_jwt import ExternalJwtAuthenticator

        authenticator = ExternalJwtAuthenticator(config.jwt_issuers)
        setup.authenticators.append(authenticator)
        setup.lifecycles.append(authenticator)


def _add_oauth_login(setup: AuthSetup, config: AuthConfig, tokens: TokenApi) -> None:
    """The ``[auth.oauth]`` login endpoints and their session cookie, tried last; a session
    that ends takes the token families it minted with it.

    Imported only when configured: Authlib's client is needed for nothing else.
    """
    if config.oauth and config.session_secret is not None:
        from llm_proxy_mw.auth._oauth_login import OAuthLogin
        from llm_proxy_mw.auth._origin import PublicOrigin
        from llm_proxy_mw.auth._sessions import SessionManager

        sessions = SessionManager(
            secret=config.session_secret.get_secret_value(),
            ttl_seconds=config.session_ttl_seconds,
            origin=PublicOrigin.from_config(config),
        )
        _bind_tokens_to_sessions(tokens, sessions)
        login = OAuthLogin(config, sessions)
        setup.authenticators.append(login.authenticator)
        setup.endpoints.append(login)
        setup.lifecycles.append(login)


def _bind_tokens_to_sessions(tokens: TokenApi, sessions: SessionManager) -> None:
    """A family minted from a login session expires with it at the latest, and is revoked
    when it ends. The session's id is a secret: families know a digest of it only."""

    def login_session(session: Session) -> LoginSession:
        digest = hashlib.sha256(session.id.encode()).hexdigest()
        return LoginSession(digest, session.expires_at)

    def session_of(scope: Scope) -> LoginSession | None:
        session = sessions.load(scope)
        return login_session(session) if session is not None else None

    def ended(session: Session) -> None:
        tokens.service.live_families.session_ended(login_session(session).digest)

    tokens.session_of = session_of
    sessions.on_end = ended
