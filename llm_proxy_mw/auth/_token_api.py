"""The token endpoints: management in JSON, and the OAuth shapes clients already speak.

``/auth/tokens`` and ``/auth/tokens/{id}`` manage token families (OpenAI-shaped errors);
``/auth/token`` (RFC 6749 §6 refresh), ``/auth/revoke`` (RFC 7009) and ``/auth/introspect``
(RFC 7662) take form bodies and answer RFC 6749 error JSON; ``/.well-known/jwks.json`` is
the public key. Admins see and manage every family, other principals only their own, and
another principal's family answers 404 as if it did not exist. Responses holding secrets
are ``no-store``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

from starlette.datastructures import Headers
from starlette.types import Receive, Scope, Send

from llm_proxy_mw.auth._principal import Principal
from llm_proxy_mw.auth._token_owners import LoginSession
from llm_proxy_mw.auth._tokens import IssuedTokens, TokenService
from llm_proxy_mw.auth.token_store import Family
from llm_proxy_mw.context import get_context, read_body
from llm_proxy_mw.errors import (
    AuthenticationError,
    InvalidRequestError,
    MethodNotAllowedError,
    NotFoundError,
    PermissionDeniedError,
    ProxyError,
    TokenGrantError,
    UnsupportedGrantTypeError,
    UnsupportedMediaTypeError,
)
from llm_proxy_mw.wire import log_error, send_json

__all__ = ["TokenApi"]

MAX_BODY_BYTES = 64 * 1024
_NO_STORE = [(b"cache-control", b"no-store"), (b"pragma", b"no-cache")]
_CHALLENGE = {"www-authenticate": 'Bearer realm="llm-proxy"'}
_FAMILY_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_OAUTH_PATHS = ("/auth/token", "/auth/revoke", "/auth/introspect")
_PATHS = frozenset({"/auth/tokens", "/.well-known/jwks.json", *_OAUTH_PATHS})

#: Resolves a request's principal by every configured means (``AuthenticatorChain.resolve``).
Resolver = Callable[[Scope], Awaitable[Principal | None]]
#: The login session a request is signed in with, if any.
SessionFinder = Callable[[Scope], LoginSession | None]


#: The RFC 6749 §5.2 ``error`` of our codes (``insufficient_scope``: RFC 6750 §3.1). Any
#: other is ``invalid_request``, or ``temporarily_unavailable`` for a 503 (§4.1.2.1).
_OAUTH_ERRORS = {
    AuthenticationError.code: "invalid_client",
    PermissionDeniedError.code: "insufficient_scope",
    TokenGrantError.code: TokenGrantError.code,
    UnsupportedGrantTypeError.code: UnsupportedGrantTypeError.code,
}


class TokenApi:
    """The ASGI app behind the token paths; ``resolve`` tells who is calling, and
    ``session_of`` (set with the OAuth login) which login session a session caller's is."""

    def __init__(
        self, service: TokenService, *, resolve: Resolver, session_of: SessionFinder | None = None
    ) -> None:
        self.service = service
        self.resolve = resolve
        self.session_of = session_of

    def handles(self, route_path: str) -> bool:
        return route_path in _PATHS or route_path.startswith("/auth/tokens/")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path, method = get_context(scope).route_path, scope["method"]
        if path in _OAUTH_PATHS:
            await self._oauth(path, scope, receive, send)
        elif path == "/.well-known/jwks.json":
            _allow(method, "GET")
            key = await self.service.ready()
            body = {"keys": [key.public_jwk]}
            await _json(send, 200, body, [(b"cache-control", b"public, max-age=300")])
        elif path == "/auth/tokens":
            _allow(method, "GET", "POST")
            caller = await self._caller(scope)
            if method == "POST":
                await self._mint(caller, scope, receive, send)
            else:
                owner = None if caller.admin else caller.owner_id
                families = await self.service.families(owner)
                await _json(send, 200, {"object": "list", "data": [_public(f) for f in families]})
        else:
            _allow(method, "GET", "DELETE")
            caller = await self._caller(scope)
            family = await self._visible(caller, path.removeprefix("/auth/tokens/"))
            if method == "DELETE":
                await self.service.revoke(family)
                await _json(send, 200, {"id": family.id, "object": "token_family", "revoked": True})
            else:
                await _json(send, 200, _public(family))

    async def _caller(
        self, scope: Scope, message: str = "Invalid or missing credentials."
    ) -> Principal:
        caller = await self.resolve(scope)
        if caller is None:
            raise AuthenticationError(message, headers=dict(_CHALLENGE))
        # A session cookie on an unsafe method from another origin (CSRF) resolves to no one:
        # the session authenticator checks ``Origin``, honouring trusted proxy headers.
        return caller

    async def _mint(self, caller: Principal, scope: Scope, receive: Receive, send: Send) -> None:
        if caller.kind == "token":
            # Else a leaked token could mint a family that outlives its own revocation.
            raise PermissionDeniedError("A proxy-issued token cannot mint tokens.")
        _require_media_type(scope, "application/json")
        ctx = get_context(scope)
        await read_body(ctx, scope, receive, MAX_BODY_BYTES)
        name, ttl, admin = _mint_request(ctx.json())
        if admin and not caller.admin:
            raise PermissionDeniedError("Only an admin can mint an admin token.")
        session = None
        if caller.kind == "session" and self.session_of is not None:
            session = self.session_of(scope)
            if session is None:  # ended since it was resolved: mint nothing unbound
                raise AuthenticationError("Not signed in.", headers=dict(_CHALLENGE))
        issued = await self.service.mint(caller, name, ttl, admin, session=session)
        await _json(send, 201, {"id": issued.family.id, **_pair(issued)}, _NO_STORE)

    async def _visible(self, caller: Principal, family_id: str) -> Family:
        family = await self.service.family(family_id) if _FAMILY_ID.fullmatch(family_id) else None
        if family is None or not (caller.admin or family.owner == caller.owner_id):
            raise NotFoundError("No such token family.")
        return family

    async def _oauth(self, path: str, scope: Scope, receive: Receive, send: Send) -> None:
        """The RFC 6749 endpoints: every error as ``{"error", "error_description"}``."""
        try:
            _allow(scope["method"], "POST")
            if path == "/auth/token":
                body = await self._refresh(await _form(scope, receive))
            else:
                caller = await self._caller(scope, "Authenticate with an API key or token.")
                form = await _form(scope, receive)
                if path == "/auth/revoke":
                    body = await self._revoke(caller, form)
                else:
                    body = await self._introspect(caller, form)
        except ProxyError as error:
            log_error(error, get_context(scope).request_id)
            code = _OAUTH_ERRORS.get(error.code) or (
                "temporarily_unavailable" if error.status_code == 503 else "invalid_request"
            )
            headers = [(k.encode(), v.encode()) for k, v in error.headers.items()]
            payload = {"error": code, "error_description": error.message}
            await _json(send, error.status_code, payload, _NO_STORE + headers)
            return
        await _json(send, 200, body, _NO_STORE)

    async def _refresh(self, form: dict[str, str]) -> dict[str, Any]:
        if _param(form, "grant_type") != "refresh_token":
            raise UnsupportedGrantTypeError("Only grant_type=refresh_token is supported.")
        return _pair(await self.service.refresh(_param(form, "refresh_token")))

    async def _revoke(self, caller: Principal, form: dict[str, str]) -> dict[str, Any]:
        """RFC 7009: the token's whole family, if the caller may; 200 whatever the token."""
        found = await self.service.lookup(_param(form, "token"))
        if found is not None and (caller.admin or found[0].owner == caller.owner_id):
            await self.service.revoke(found[0])
        return {}

    async def _introspect(self, caller: Principal, form: dict[str, str]) -> dict[str, Any]:
        if not caller.admin:
            raise PermissionDeniedError("Introspection needs an admin.")
        found = await self.service.lookup(_param(form, "token"))
        if found is None:
            return {"active": False}
        family, claims = found
        known = ("token_type", "sub", "exp", "iat", "nbf", "jti", "iss", "aud")
        answer = {"active": True, **{k: claims[k] for k in known if k in claims}}
        answer |= {"scope": family.scope, "username": family.owner, "family": family.id}
        return answer | {"admin": family.admin, "name": family.name}


def _pair(issued: IssuedTokens) -> dict[str, Any]:
    pair: dict[str, Any] = {
        "access_token": issued.access_token,
        "refresh_token": issued.refresh_token,
        "token_type": "Bearer",
        "expires_in": issued.expires_in,
    }
    if issued.family.scope:
        pair["scope"] = issued.family.scope
    return pair


def _public(family: Family) -> dict[str, Any]:
    """A family as listed: everything but secrets, which the store does not have anyway."""
    return {
        "id": family.id,
        "object": "token_family",
        "name": family.name,
        "owner": family.owner,
        "admin": family.admin,
        "scope": family.scope,
        "access_ttl_seconds": family.access_ttl,
        "created": int(family.created),
        "expires": int(family.expires),
        "revoked": family.revoked is not None,
    }


def _mint_request(body: dict[str, Any] | None) -> tuple[str, int | None, bool]:
    if body is None:
        raise InvalidRequestError('The body must be a JSON object with a "name".')
    unknown = sorted(set(body) - {"name", "ttl_seconds", "admin"})
    if unknown:
        raise InvalidRequestError(f"Unknown fields: {', '.join(unknown)[:200]}.")
    name, ttl, admin = body.get("name"), body.get("ttl_seconds"), body.get("admin", False)
    if not isinstance(name, str) or not 1 <= len(name) <= 100 or not name.isprintable():
        raise InvalidRequestError('"name" must be a printable string of 1 to 100 characters.')
    if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 1):
        raise InvalidRequestError('"ttl_seconds" must be a positive integer.')
    if not isinstance(admin, bool):
        raise InvalidRequestError('"admin" must be true or false.')
    return name, ttl, admin


def _allow(method: str, *allowed: str) -> None:
    if method not in allowed:
        raise MethodNotAllowedError(
            f"Use {' or '.join(allowed)}.", headers={"allow": ", ".join(allowed)}
        )


def _require_media_type(scope: Scope, expected: str) -> None:
    content_type = Headers(scope=scope).get("content-type", "")
    media_type = content_type.partition(";")[0].strip().lower()
    if media_type != expected:
        raise UnsupportedMediaTypeError(f"The request body must be {expected}.")


async def _form(scope: Scope, receive: Receive) -> dict[str, str]:
    """The form body of an OAuth request; each parameter at most once (RFC 6749 §3.2)."""
    _require_media_type(scope, "application/x-www-form-urlencoded")
    body = await read_body(get_context(scope), scope, receive, MAX_BODY_BYTES)
    try:
        pairs = parse_qsl(body.decode("ascii"), keep_blank_values=True, max_num_fields=16)
    except (UnicodeDecodeError, ValueError):
        raise InvalidRequestError("The form body is malformed.") from None
    form: dict[str, str] = {}
    for name, value in pairs:
        if name in form:
            raise InvalidRequestError("A parameter was given more than once.")
        form[name] = value
    return form


def _param(form: dict[str, str], name: str) -> str:
    value = form.get(name)
    if not value:
        raise InvalidRequestError(f"The {name} parameter is required.")
    return value


async def _json(
    send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    await send_json(send, status, json.dumps(body, separators=(",", ":")).encode(), headers)
