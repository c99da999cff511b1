"""Browser sessions of the OAuth login: a random id in a signed cookie, the rest on the server.

The cookie carries nothing but a random session id signed with ``session_secret``
(HMAC-SHA256, through itsdangerous), so no identity-provider token ever reaches the browser.
It is ``HttpOnly``, ``SameSite=Lax``, ``Secure`` on https, scoped to the mount's root path,
and lives as long as the session. Sessions are kept in this process's memory: behind several
workers or replicas, route each browser to one of them (sticky sessions).

A cookie is an ambient credential, so a cookie-authenticated request of any method but GET,
HEAD and OPTIONS counts only when its ``Origin`` (or, without one, its ``Referer``) is the
request's own origin: another site's form or script cannot spend the user's session (CSRF).
The safe methods are listed, not the unsafe ones: PROPFIND, QUERY, PURGE or a method not
invented yet must not slip through.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from itsdangerous import BadSignature, Signer
from starlette.types import Scope

from llm_proxy_mw.auth._origin import PublicOrigin
from llm_proxy_mw.auth._principal import Principal

__all__ = ["SESSION_COOKIE", "Session", "SessionAuthenticator", "SessionManager", "client_address"]

logger = logging.getLogger("llm_proxy_mw")

SESSION_COOKIE = "llm_proxy_session"
#: The only methods a cookie authenticates from another origin (ASGI methods are upper-case).
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: A login in progress (state, PKCE verifier, nonce) is kept this long, in seconds.
PENDING_TTL = 600

_COOKIE_PATH = re.compile(r"^/[A-Za-z0-9\-._~!$&'()*+,=:@/%]*$")


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
    #: Where a login in progress came from (``client_address``), for the per-address cap.
    client: str | None = field(default=None, repr=False)


def client_address(scope: Scope, *, trust_proxy_headers: bool) -> str | None:
    """Who a request comes from, for counting: the peer's address or, behind a trusted proxy,
    the last ``x-forwarded-for`` entry. IPv6 addresses count by their /64 prefix, which one
    host usually holds whole."""
    address: str | None = None
    if trust_proxy_headers:
        # The last entry is the one our proxy appended; the client can forge any before it.
        forwarded: list[bytes] = [v for k, v in scope["headers"] if k == b"x-forwarded-for"]
        if forwarded:
            address = forwarded[-1].decode("latin-1").rsplit(",", 1)[-1].strip() or None
    if address is None and scope.get("client"):
        address = str(scope["client"][0])
    if address is None:
        return None
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address[:64]
    if ip.version == 6:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class SessionManager:
    """Creates, finds and ends sessions, and writes their cookies.

    At most ``max_sessions`` signed-in sessions and ``max_pending`` logins in progress are
    kept; past that the oldest go first, so a flood of ``/auth/login`` cannot exhaust memory
    or push out signed-in users. Each client address holds at most ``max_pending_per_client``
    logins in progress, so that one address's flood pushes out its own, not other people's.
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
        origin: PublicOrigin | None = None,
        cookie_name: str = SESSION_COOKIE,
        max_sessions: int = 100_000,
        max_pending: int = 10_000,
        max_pending_per_client: int = 10,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ttl_seconds = ttl_seconds
        #: This site's origin for the cookie's ``Secure`` flag and the same-origin check.
        self.origin = origin or PublicOrigin()
        self.cookie_name = cookie_name
        self.clock = clock
        self._signer = Signer(secret, salt="llm_proxy_mw.session", digest_method=hashlib.sha256)
        self.max_sessions = max_sessions
        self.max_pending = max_pending
        self.max_pending_per_client = max_pending_per_client
        self._live: dict[str, Session] = {}
        self._pending: dict[str, Session] = {}
        #: Ids of the logins in progress by client address, oldest first.
        self._pending_by_client: dict[str, dict[str, None]] = {}

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
        client: str | None = None,
    ) -> Session:
        """A new session under a fresh random id: signed in when ``principal`` is given, else
        a login in progress from ``client`` (an address; see ``create_pending``)."""
        now = self.clock()
        ttl = self.ttl_seconds if principal is not None else PENDING_TTL
        session = Session(
            id=secrets.token_urlsafe(32),
            expires_at=now + ttl,
            principal=principal,
            idp=idp,
            token=token,
        )
        if principal is None:
            self._make_room_for(session, client)
        table, limit = (
            (self._live, self.max_sessions)
            if principal is not None
            else (self._pending, self.max_pending)
        )
        # Insertion order is expiry order (one TTL per table): drop expired, then the oldest.
        while table and (len(table) >= limit or next(iter(table.values())).expires_at <= now):
            self.delete(next(iter(table.values())))
        table[session.id] = session
        return session

    def create_pending(self, scope: Scope) -> Session:
        """A new login in progress, counted against the request's client address."""
        trust = self.origin.trust_proxy_headers
        return self.create(client=client_address(scope, trust_proxy_headers=trust))

    def _make_room_for(self, session: Session, client: str | None) -> None:
        """Register a login in progress under its address, dropping that address's oldest
        past ``max_pending_per_client``."""
        if client is None:
            return
        mine = self._pending_by_client.setdefault(client, {})
        while len(mine) >= self.max_pending_per_client:
            self.delete(self._pending[next(iter(mine))])
        session.client = client
        mine[session.id] = None

    def _forget(self, session: Session) -> None:
        """Take a login in progress, gone from ``_pending``, out of its address's count."""
        if session.client is None:
            return
        mine = self._pending_by_client.get(session.client)
        if mine is not None:
            mine.pop(session.id, None)
            if not mine:
                del self._pending_by_client[session.client]

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
        self._forget(session)
        self._ended(ended)

    def _ended(self, session: Session | None) -> None:
        if session is not None and self.on_end is not None:
            self.on_end(session)

    def same_origin(self, scope: Scope) -> bool:
        return self.origin.same_origin(scope)

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
        if self.origin.is_https(scope):
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

    Any method but GET, HEAD and OPTIONS needs a same-origin ``Origin``/``Referer``, else the
    cookie is ignored.
    With a ``refresher``, a session whose identity provider refuses to refresh its token ends.
    """

    def __init__(self, sessions: SessionManager, *, refresher: Refresher | None = None) -> None:
        self.sessions = sessions
        self.refresher = refresher

    async def authenticate(self, scope: Scope, secret: str | None) -> Principal | None:
        session = self.sessions.load(scope)
        if session is None or session.principal is None:
            return None
        if scope["method"] not in SAFE_METHODS and not self.sessions.same_origin(scope):
            logger.info("session cookie ignored: %s from another origin", scope.get("method"))
            return None
        if self.refresher is not None and not await self.refresher(session):
            self.sessions.delete(session)
            return None
        return session.principal
