"""Browser sessions of the OAuth login: a random id in a signed cookie, the rest on the server.

The cookie carries nothing but a random session id signed with ``session_secret``
(HMAC-SHA256, through itsdangerous), so no identity-provider token ever reaches the browser.
It is ``HttpOnly``, ``SameSite=Lax``, ``Secure`` on https, scoped to the mount's root path,
and lives as long as the session. Sessions are kept in this process's memory: behind several
workers or replicas, route each browser to one of them (sticky sessions).

A cookie is an ambient credential, so a cookie-authenticated unsafe request (POST, PUT, PATCH,
DELETE) counts only when its ``Origin`` (or, without one, its ``Referer``) is the request's
own origin: another site's form or script cannot spend the user's session (CSRF).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from itsdangerous import BadSignature, Signer
from starlette.types import Scope

from llm_proxy_mw.auth._principal import Principal

__all__ = [
    "SESSION_COOKIE",
    "Session",
    "SessionAuthenticator",
    "SessionManager",
    "is_https",
    "request_origin",
    "same_origin",
]

logger = logging.getLogger("llm_proxy_mw")

SESSION_COOKIE = "llm_proxy_session"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: A login in progress (state, PKCE verifier, nonce) is kept this long, in seconds.
PENDING_TTL = 600

_HOST = re.compile(r"^(?:[A-Za-z0-9\-.]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$")
_COOKIE_PATH = re.compile(r"^/[A-Za-z0-9\-._~!$&'()*+,=:@/%]*$")
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(slots=True, eq=False)
class Session:
    """One browser's session. ``principal`` is ``None`` while a login is in progress."""

    id: str = field(repr=False)
    expires_at: float
    #: Scratch space of the login in progress (Authlib's state, our ``next``).
    data: dict[str, Any] = field(default_factory=dict, repr=False)
    principal: Principal | None = None
    idp: str | None = None
    #: The identity provider's token (access, refresh, ``expires_at``); server side only.
    token: dict[str, Any] | None = field(default=None, repr=False)
    #: The refresh in flight, shared by every request that waits for it.
    refresh: asyncio.Task[bool] | None = field(default=None, repr=False)
    #: After a failed refresh, the next one is not tried before this time.
    refresh_not_before: float = 0.0


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            text: str = value.decode("latin-1")
            return text
    return None


def _first(value: str | None) -> str | None:
    """The first entry of a comma-separated proxy header (the client-facing hop)."""
    if value is None:
        return None
    return value.split(",", 1)[0].strip() or None


def is_https(scope: Scope, *, trust_proxy_headers: bool) -> bool:
    """Whether the browser reached us over https (per ``x-forwarded-proto`` only if trusted)."""
    if trust_proxy_headers:
        forwarded = _first(_header(scope, b"x-forwarded-proto"))
        if forwarded is not None:
            return forwarded.lower() == "https"
    return scope.get("scheme") in ("https", "wss")


def request_origin(scope: Scope, *, trust_proxy_headers: bool) -> str | None:
    """``scheme://host[:port]`` as the browser addressed this request; ``None`` if unknown."""
    scheme = "https" if is_https(scope, trust_proxy_headers=trust_proxy_headers) else "http"
    host = _first(_header(scope, b"x-forwarded-host")) if trust_proxy_headers else None
    host = host or _header(scope, b"host")
    if host is None and scope.get("server"):
        server_host, port = scope["server"]
        host = f"{server_host}:{port}" if port is not None else str(server_host)
    if host is None or not _HOST.match(host):
        return None
    return f"{scheme}://{host}"


def _normalised(origin: str | None) -> tuple[str, str, int] | None:
    if not origin:
        return None
    try:
        parts = urlsplit(origin)
        scheme = parts.scheme.lower()
        port = parts.port or _DEFAULT_PORTS.get(scheme)
    except ValueError:
        return None
    if scheme not in _DEFAULT_PORTS or not parts.hostname or port is None:
        return None
    return scheme, parts.hostname.lower(), port


def same_origin(scope: Scope, *, trust_proxy_headers: bool) -> bool:
    """Whether ``Origin`` (or else ``Referer``) names this request's own origin."""
    claimed = _header(scope, b"origin") or _header(scope, b"referer")
    expected = _normalised(request_origin(scope, trust_proxy_headers=trust_proxy_headers))
    return expected is not None and _normalised(claimed) == expected


class SessionManager:
    """Creates, finds and ends sessions, and writes their cookies.

    At most ``max_sessions`` signed-in sessions and ``max_pending`` logins in progress are
    kept; past that the oldest go first, so a flood of ``/auth/login`` cannot exhaust memory
    or push out signed-in users.
    """

    #: Called with each signed-in session that ends by ``delete`` (logout, found expired,
    #: refused by its identity provider, replaced by a new sign-in), so that what it minted
    #: ends with it.
    on_end: Callable[[Session], None] | None = None

    def __init__(
        self,
        *,
        secret: str,
        ttl_seconds: int,
        trust_proxy_headers: bool = False,
        cookie_name: str = SESSION_COOKIE,
        max_sessions: int = 100_000,
        max_pending: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ttl_seconds = ttl_seconds
        self.trust_proxy_headers = trust_proxy_headers
        self.cookie_name = cookie_name
        self.clock = clock
        self._signer = Signer(secret, salt="llm_proxy_mw.session", digest_method=hashlib.sha256)
        self.max_sessions = max_sessions
        self.max_pending = max_pending
        self._live: dict[str, Session] = {}
        self._pending: dict[str, Session] = {}

    def __len__(self) -> int:
        return len(self._live) + len(self._pending)

    def sessions(self) -> list[Session]:
        """Every session held, signed in or pending (for shutdown and tests)."""
        return [*self._live.values(), *self._pending.values()]

    def create(
        self,
        *,
        principal: Principal | None = None,
        idp: str | None = None,
        token: dict[str, Any] | None = None,
    ) -> Session:
        """A new session under a fresh random id: signed in when ``principal`` is given."""
        now = self.clock()
        ttl = self.ttl_seconds if principal is not None else PENDING_TTL
        session = Session(
            id=secrets.token_urlsafe(32),
            expires_at=now + ttl,
            principal=principal,
            idp=idp,
            token=token,
        )
        table, limit = (
            (self._live, self.max_sessions)
            if principal is not None
            else (self._pending, self.max_pending)
        )
        # Insertion order is expiry order (one TTL per table): drop expired, then the oldest.
        while table and (len(table) >= limit or next(iter(table.values())).expires_at <= now):
            table.pop(next(iter(table)))
        table[session.id] = session
        return session

    def load(self, scope: Scope) -> Session | None:
        """The live session the request's cookie names, if any."""
        for value in self._cookie_values(scope):
            try:
                session_id = self._signer.unsign(value).decode("ascii")
            except (BadSignature, UnicodeDecodeError):
                continue
            session = self._live.get(session_id) or self._pending.get(session_id)
            if session is None:
                continue
            if session.expires_at <= self.clock():
                self.delete(session)
                continue
            return session
        return None

    def delete(self, session: Session) -> None:
        """End a session; its cookie is worthless from now on."""
        ended = self._live.pop(session.id, None)
        self._pending.pop(session.id, None)
        self._ended(ended)

    def _ended(self, session: Session | None) -> None:
        if session is not None and self.on_end is not None:
            self.on_end(session)

    def same_origin(self, scope: Scope) -> bool:
        return same_origin(scope, trust_proxy_headers=self.trust_proxy_headers)

    def set_cookie(self, scope: Scope, session: Session) -> tuple[bytes, bytes]:
        """The ``set-cookie`` header that hands ``session`` to the browser."""
        value = self._signer.sign(session.id.encode("ascii")).decode("ascii")
        max_age = max(0, int(session.expires_at - self.clock()))
        return self._cookie(scope, value, max_age)

    def clear_cookie(self, scope: Scope) -> tuple[bytes, bytes]:
        """The ``set-cookie`` header that makes the browser forget its session cookie."""
        return self._cookie(scope, "", 0)

    def _cookie(self, scope: Scope, value: str, max_age: int) -> tuple[bytes, bytes]:
        path = scope.get("root_path") or "/"
        if not _COOKIE_PATH.match(path):
            path = "/"
        attributes = f"{self.cookie_name}={value}; Path={path}; Max-Age={max_age}; HttpOnly"
        attributes += "; SameSite=Lax"
        if is_https(scope, trust_proxy_headers=self.trust_proxy_headers):
            attributes += "; Secure"
        return b"set-cookie", attributes.encode("latin-1")

    def _cookie_values(self, scope: Scope) -> list[str]:
        prefix = self.cookie_name + "="
        values = []
        for name, raw in scope["headers"]:
            if name == b"cookie":
                for chunk in raw.decode("latin-1").split(";"):
                    chunk = chunk.strip()
                    if chunk.startswith(prefix):
                        values.append(chunk[len(prefix) :].strip('"'))
        return values


#: Keeps a session's identity-provider token fresh; ``False`` means the session is over.
Refresher = Callable[[Session], Awaitable[bool]]


class SessionAuthenticator:
    """Resolves the session cookie to its principal (kind ``session``); ignores ``secret``.

    Unsafe methods need a same-origin ``Origin``/``Referer``, else the cookie is ignored.
    With a ``refresher``, a session whose identity provider refuses to refresh its token ends.
    """

    def __init__(self, sessions: SessionManager, *, refresher: Refresher | None = None) -> None:
        self.sessions = sessions
        self.refresher = refresher

    async def authenticate(self, scope: Scope, secret: str | None) -> Principal | None:
        session = self.sessions.load(scope)
        if session is None or session.principal is None:
            return None
        if scope.get("method", "GET") in UNSAFE_METHODS and not self.sessions.same_origin(scope):
            logger.info("session cookie ignored: %s from another origin", scope.get("method"))
            return None
        if self.refresher is not None and not await self.refresher(session):
            self.sessions.delete(session)
            return None
        return session.principal
