"""OAuth2 login through Authlib's Starlette client: ``GET /auth/login/{idp}``,
``GET /auth/callback/{idp}``, ``POST /auth/logout`` and ``GET /auth/me``.

Authorization code with PKCE (S256), a one-time ``state`` bound to the browser's session, a
``nonce`` and a verified ID token (exact ``iss``, ``aud``) for OpenID Connect, and one exact
redirect URI: ``redirect_uri`` from config, else ``<public mount URL>/auth/callback/<idp>``
with the mount's URL from ``PublicOrigin`` (``public_url``, an allowed host, or the address
the server listens on; never a bare ``Host`` header).
Authlib keeps its login state in ``request.session``; here that is the server-side session's
scratch dict, so the PKCE verifier never leaves the server. A login that succeeds starts a new
session under a new id (no session fixation) and redirects to ``?next=`` (same-origin relative
paths only) or the mount's root.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from authlib.integrations.base_client import OAuthError
from joserfc.errors import JoseError
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from llm_proxy_mw.auth._oauth_http import (
    allow,
    pending_key,
    query,
    respond,
    safe_next,
    take_pending,
)
from llm_proxy_mw.auth._oauth_presets import (
    client_registration,
    github_identity,
    is_admin,
    is_allowed,
    oidc_identity,
    preset_of,
)
from llm_proxy_mw.auth._oauth_refresh import SessionRefresher, stored_token
from llm_proxy_mw.auth._oidc_metadata import CheckedOAuth
from llm_proxy_mw.auth._principal import Principal
from llm_proxy_mw.auth._sessions import PENDING_TTL, SessionAuthenticator, SessionManager
from llm_proxy_mw.config import AuthConfig
from llm_proxy_mw.context import get_context
from llm_proxy_mw.errors import (
    AuthenticationError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    UpstreamError,
)

__all__ = ["OAuthLogin"]

logger = logging.getLogger("llm_proxy_mw")

_ERROR_CODE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


class _DropCodeVerifier(logging.Filter):
    """Authlib logs the PKCE verifier at DEBUG; a secret has no place in a log record."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "code_verifier" not in str(record.msg)


_DROP_CODE_VERIFIER = _DropCodeVerifier()


def _warn_unless_public_origin(config: AuthConfig) -> None:
    """One warning at start when no setting names where browsers reach the proxy."""
    if config.public_url or config.allowed_hosts:
        return
    if all(idp.redirect_uri for idp in config.oauth.values()):
        return
    ignored = (
        " (trust_proxy_headers alone does not make x-forwarded-host count)"
        if config.trust_proxy_headers
        else ""
    )
    logger.warning(
        "llm_proxy_mw: [auth] sets neither public_url nor allowed_hosts, so the OAuth redirect "
        "URI and the session's same-origin check use the address this server listens on, "
        "never the Host header%s. Set public_url to the mount's public URL (e.g. "
        "https://app.example.com/llm), or list allowed_hosts.",
        ignored,
    )


class OAuthLogin:
    """The login endpoints (an ``AuthEndpoints`` app) and the session authenticator they feed.

    ``transport`` goes to Authlib's HTTP client (an ``httpx2`` transport since Authlib 1.8,
    an ``httpx`` one before); tests plug a mock there, and it may be set later. Authlib
    opens a client per exchange and closes the transport with it, so give one that survives
    ``aclose`` (a ``MockTransport``); by default each exchange gets a fresh connection.
    """

    def __init__(
        self,
        config: AuthConfig,
        sessions: SessionManager,
        *,
        transport: Any = None,
        timeout: float = 10.0,
        leeway: int = 30,
        refresh_margin: float = 60.0,
    ) -> None:
        logging.getLogger("authlib.integrations.base_client.sync_app").addFilter(
            _DROP_CODE_VERIFIER
        )
        self.sessions = sessions
        self.leeway = leeway
        self._idps = dict(config.oauth)
        _warn_unless_public_origin(config)
        self._oauth = CheckedOAuth()
        self._clients: dict[str, Any] = {
            name: self._oauth.register(name, **client_registration(name, idp, timeout=timeout))
            for name, idp in self._idps.items()
        }
        self.transport = transport
        self.refresher = SessionRefresher(
            self._clients, margin=refresh_margin, clock=sessions.clock
        )
        self.authenticator = SessionAuthenticator(sessions, refresher=self.refresher)

    @property
    def transport(self) -> Any:
        return self._transport

    @transport.setter
    def transport(self, value: Any) -> None:
        self._transport = value
        for client in self._clients.values():
            if value is None:
                client.client_kwargs.pop("transport", None)
            else:
                client.client_kwargs["transport"] = value

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        await self.refresher.aclose(self.sessions.sessions())

    def handles(self, route_path: str) -> bool:
        return route_path in ("/auth/logout", "/auth/me") or route_path.startswith(
            ("/auth/login/", "/auth/callback/")
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = get_context(scope).route_path
        method = scope["method"]
        if path == "/auth/me":
            if await allow(send, method, "GET"):
                await self._me(scope, send)
        elif path == "/auth/logout":
            if await allow(send, method, "POST"):
                await self._logout(scope, send)
        elif path.startswith("/auth/login/"):
            if await allow(send, method, "GET"):
                await self._login(scope, receive, send, path[len("/auth/login/") :])
        elif path.startswith("/auth/callback/"):
            if await allow(send, method, "GET"):
                await self._callback(scope, receive, send, path[len("/auth/callback/") :])
        else:
            raise NotFoundError(f"No such endpoint: {path[:200]}")

    def redirect_uri(self, scope: Scope, idp: str) -> str:
        """The one redirect URI of ``idp``: configured, or under the mount's public URL."""
        configured = self._idps[idp].redirect_uri
        if configured:
            return configured
        origin = self.sessions.origin
        base = origin.base_url(scope)
        if base is None:
            if origin.allowed_hosts:
                raise InvalidRequestError("This host is not one of the proxy's allowed_hosts.")
            raise InvalidRequestError("Cannot tell this server's address; set public_url.")
        return f"{base}/auth/callback/{idp}"

    def _client(self, idp: str) -> Any:
        client = self._clients.get(idp)
        if client is None:
            raise NotFoundError(f"No identity provider named {idp[:64]!r}.")
        return client

    async def _login(self, scope: Scope, receive: Receive, send: Send, idp: str) -> None:
        client = self._client(idp)
        next_path = safe_next(query(scope).get("next"))
        redirect_uri = self.redirect_uri(scope, idp)
        try:
            authorization = await client.create_authorization_url(redirect_uri)
        except Exception as exc:  # the provider's metadata did not load: network errors of
            # httpx or httpx2 (whichever Authlib uses), a bad status, malformed JSON.
            logger.warning("oauth login via %s: provider unreachable (%s)", idp, type(exc).__name__)
            raise UpstreamError("The identity provider could not be reached.") from None
        session = self.sessions.load(scope) or self.sessions.create_pending(scope)
        request = Request({**scope, "session": session.data}, receive)
        await client.save_authorize_data(request, redirect_uri=redirect_uri, **authorization)
        session.data[pending_key(idp)] = {
            "state": authorization["state"],
            "next": next_path,
            "expires_at": self.sessions.clock() + PENDING_TTL,
        }
        headers = [self.sessions.set_cookie(scope, session)]
        await respond(send, 302, headers, location=authorization["url"])

    async def _callback(self, scope: Scope, receive: Receive, send: Send, idp: str) -> None:
        client = self._client(idp)
        session = self.sessions.load(scope)
        pending = take_pending(session, idp, query(scope).get("state"), self.sessions.clock())
        if session is None or pending is None:
            logger.info("oauth callback from %s refused: unknown or replayed state", idp)
            raise InvalidRequestError("Login failed: no login with this state is in progress.")
        request = Request({**scope, "session": session.data}, receive)
        try:
            token = await client.authorize_access_token(request, **await self._checks(idp))
            identity = await self._identity(idp, client, token)
        except OAuthError as exc:
            code = exc.error if _ERROR_CODE.match(str(exc.error)) else "oauth_error"
            logger.info("oauth login via %s failed: %s", idp, code)
            raise InvalidRequestError(f"Login failed: {code}.") from None
        except (JoseError, ValueError) as exc:
            logger.info("oauth login via %s failed: %s", idp, type(exc).__name__)
            raise InvalidRequestError("Login failed: the identity did not verify.") from None
        except Exception as exc:  # network errors of httpx or httpx2 (whichever Authlib
            # uses) and the provider's error statuses: the provider failed us, not the user.
            logger.warning("oauth login via %s: provider failed (%s)", idp, type(exc).__name__)
            raise UpstreamError("The identity provider failed or could not be reached.") from None
        config = self._idps[idp]
        if not is_allowed(config, identity):
            logger.info("oauth login via %s refused for %s", idp, identity.display_name)
            raise PermissionDeniedError("This account is not allowed to use this service.")
        principal = Principal(
            name=identity.display_name,
            kind="session",
            admin=is_admin(config, identity),
            subject=f"{idp}:{identity.subject}",
            identity=identity,
        )
        kept = stored_token(token, None, self.sessions.clock())
        fresh = self.sessions.create(principal=principal, idp=idp, token=kept)
        self.sessions.delete(session)
        logger.info("oauth login via %s: %s", idp, principal.name)
        location = pending.get("next") or scope.get("root_path", "") + "/"
        await respond(send, 303, [self.sessions.set_cookie(scope, fresh)], location=location)

    async def _checks(self, idp: str) -> dict[str, Any]:
        """The ID token's exact issuer and audience (Authlib checks only ``azp`` for ``aud``)."""
        if preset_of(idp, self._idps[idp]) == "github":
            return {}
        client = self._clients[idp]
        issuer = (await client.load_server_metadata()).get("issuer")
        if not isinstance(issuer, str) or not issuer:
            raise ValueError("the provider's metadata names no issuer")
        options: dict[str, Any] = {
            "iss": {"essential": True, "value": issuer},
            "aud": {"essential": True, "value": client.client_id},
        }
        return {"claims_options": options, "leeway": self.leeway}

    async def _identity(self, idp: str, client: Any, token: dict[str, Any]) -> Any:
        config = self._idps[idp]
        if preset_of(idp, config) == "github":
            return await github_identity(client, token, config)
        if "userinfo" not in token:
            raise ValueError("no ID token")
        return oidc_identity(token["userinfo"])

    async def _logout(self, scope: Scope, send: Send) -> None:
        session = self.sessions.load(scope)
        if session is not None:
            if not self.sessions.same_origin(scope):
                raise PermissionDeniedError("Logout must come from this site.")
            self.sessions.delete(session)
        await respond(send, 204, [self.sessions.clear_cookie(scope)])

    async def _me(self, scope: Scope, send: Send) -> None:
        principal = await self.authenticator.authenticate(scope, None)
        session = self.sessions.load(scope)
        if principal is None or session is None:
            raise AuthenticationError(
                "Not signed in.", headers={"www-authenticate": 'Bearer realm="llm-proxy"'}
            )
        body = {
            "name": principal.name,
            "kind": principal.kind,
            "admin": principal.admin,
            "subject": principal.subject,
            "idp": session.idp,
            "expires_at": int(session.expires_at),
        }
        await respond(send, 200, [], body=json.dumps(body).encode())
