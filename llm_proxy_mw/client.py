"""Client side: an ``httpx.Auth`` that keeps a proxy-issued token pair fresh.

The proxy's access tokens are short-lived JWTs; its refresh tokens rotate on every use, and a
refresh token used twice is taken for a theft that revokes the whole family. So a client must
refresh exactly once, however many requests notice the expiry together, and must keep the
new refresh token. ``ProxyTokenAuth`` does that for sync and async httpx clients, and hence
for the SDKs built on them::

    auth = ProxyTokenAuth("https://host/llm/auth/token", refresh_token=..., on_refresh=save)
    client = openai.OpenAI(
        base_url="https://host/llm/v1", api_key="unused", http_client=httpx.Client(auth=auth)
    )

The refresh request is sent by the client that needs it (through its transport, proxies and
TLS settings): it is yielded from the auth flow, like httpx's own digest auth does.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import inspect
import json
import math
import re
import threading
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Mapping,
    MutableMapping,
)
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import httpx

if TYPE_CHECKING:
    import httpx2

__all__ = ["InvalidGrantError", "ProxyTokenAuth", "ProxyTokens", "TokenRefreshError"]

_REFRESH_HEADERS = {"accept": "application/json"}
_ERROR_CODE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


class TokenRefreshError(Exception):
    """The token endpoint did not renew the pair (an outage, a malformed answer).

    Transient: a later request tries again. ``status_code`` and ``error`` (the RFC 6749
    error code) are those of the token endpoint's answer, when there was one.
    """

    def __init__(
        self, message: str, *, status_code: int | None = None, error: str | None = None
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.error = error


class InvalidGrantError(TokenRefreshError):
    """The refresh token was refused (``invalid_grant``): revoked, expired or already used.

    Final: every later request raises it again without asking the endpoint. Mint a new
    pair (``POST /auth/tokens``) or sign in again.
    """


@dataclass(frozen=True, slots=True)
class ProxyTokens:
    """A token pair; ``expires_at`` is the access token's expiry in epoch seconds."""

    refresh_token: str = field(repr=False)
    access_token: str | None = field(default=None, repr=False)
    expires_at: float | None = None

    @classmethod
    def from_response(cls, payload: Mapping[str, Any], *, now: float | None = None) -> ProxyTokens:
        """From the JSON of ``POST /auth/tokens`` or ``POST /auth/token``."""
        now = time.time() if now is None else now
        access = payload["access_token"]
        return cls(
            payload["refresh_token"], access, _expiry(payload.get("expires_in"), now, access)
        )

    def to_dict(self) -> dict[str, Any]:
        """What to persist (the secrets included: store it like a password)."""
        return {
            "access_token": self.access_token,
            "refresh_token": self.refresh_token,
            "expires_at": self.expires_at,
        }


class _Request(Protocol):
    """What the flow needs of an ``httpx.Request`` or an ``httpx2.Request``."""

    @property
    def headers(self) -> MutableMapping[str, str]: ...
    def read(self) -> bytes: ...
    async def aread(self) -> bytes: ...


class _Response(Protocol):
    @property
    def status_code(self) -> int: ...
    @property
    def content(self) -> bytes: ...
    def read(self) -> bytes: ...
    async def aread(self) -> bytes: ...


RequestT = TypeVar("RequestT", bound=_Request)
OnRefresh = Callable[[ProxyTokens], None | Awaitable[None]]


class _TokenKeeper:
    """The pair, its locks and the two flows; shared by the httpx and httpx2 faces."""

    def __init__(
        self,
        token_url: str,
        tokens: ProxyTokens,
        *,
        refresh_margin: float,
        on_refresh: OnRefresh | None,
        clock: Callable[[], float],
    ) -> None:
        self.token_url = token_url
        self.refresh_margin = refresh_margin
        self.on_refresh = on_refresh
        self.clock = clock
        self.tokens = tokens
        self._refresh_at = -math.inf
        self._schedule(tokens)
        # One lock for sync and async clients alike, so two clients sharing the pair never
        # spend the same refresh token twice; async callers queue on an asyncio lock first.
        self._lock = threading.Lock()
        self._loop_lock: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None
        self._dead: str | None = None

    def _schedule(self, tokens: ProxyTokens) -> None:
        self.tokens = tokens
        if tokens.access_token is None:
            self._refresh_at = -math.inf
        elif tokens.expires_at is None:
            self._refresh_at = math.inf  # unknown lifetime: refreshed on a 401 only
        else:
            lifetime = max(tokens.expires_at - self.clock(), 0.0)
            self._refresh_at = tokens.expires_at - min(self.refresh_margin, lifetime / 2)

    def _stale(self) -> bool:
        return self.clock() >= self._refresh_at

    def _authorize(self, request: _Request) -> str | None:
        token = self.tokens.access_token
        request.headers["Authorization"] = f"Bearer {token}"
        # The proxy reads x-api-key too (the Anthropic SDK always sends one): only ours counts.
        request.headers.pop("x-api-key", None)
        return token

    def _refresh_request(self, make: Callable[[str, dict[str, str]], RequestT]) -> RequestT:
        if self._dead is not None:
            raise InvalidGrantError(self._dead, status_code=400, error="invalid_grant")
        form = {"grant_type": "refresh_token", "refresh_token": self.tokens.refresh_token}
        return make(self.token_url, form)

    def _accept(self, status: int, content: bytes) -> None | Awaitable[None]:
        """Take the token endpoint's answer: keep the rotated pair, or raise."""
        try:
            payload = json.loads(content)
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            payload = {}
        error = payload.get("error")
        if not isinstance(error, str) or not _ERROR_CODE.match(error):
            error = None  # only an RFC 6749 error code is repeated, never free text
        if 400 <= status < 500 and error == "invalid_grant":
            self._dead = (
                "The proxy refused the refresh token (invalid_grant): it was revoked, expired "
                "or already used. Mint a new token pair or sign in again."
            )
            raise InvalidGrantError(self._dead, status_code=status, error=error)
        if status != 200:
            detail = f" ({error})" if error else ""
            raise TokenRefreshError(
                f"The proxy's token endpoint answered HTTP {status}{detail}.",
                status_code=status,
                error=error,
            )
        access = payload.get("access_token")
        if not isinstance(access, str) or not access:
            raise TokenRefreshError(
                "The proxy's token endpoint sent no access token.", status_code=200
            )
        if str(payload.get("token_type", "")).lower() != "bearer":
            raise TokenRefreshError(
                "The proxy's token endpoint sent no bearer token.", status_code=200
            )
        refresh = payload.get("refresh_token")
        if not isinstance(refresh, str) or not refresh:
            refresh = self.tokens.refresh_token  # RFC 6749 §6: the old one stays valid
        expires_at = _expiry(payload.get("expires_in"), self.clock(), access)
        self._schedule(ProxyTokens(refresh, access, expires_at))
        return self.on_refresh(self.tokens) if self.on_refresh is not None else None

    def sync_flow(
        self, request: RequestT, make: Callable[[str, dict[str, str]], RequestT]
    ) -> Generator[RequestT, _Response, None]:
        request.read()  # the body is sent again after a 401
        if self._stale():
            with self._lock:
                if self._stale():  # another thread may have refreshed while we waited
                    response = yield self._refresh_request(make)
                    self._sync_accept(response)
        used = self._authorize(request)
        response = yield request
        if response.status_code != 401:
            return
        with self._lock:
            if self.tokens.access_token == used:
                refresh = yield self._refresh_request(make)
                self._sync_accept(refresh)
        self._authorize(request)
        yield request  # once: a second 401 is the answer

    def _sync_accept(self, response: _Response) -> None:
        response.read()
        result = self._accept(response.status_code, response.content)
        if inspect.isawaitable(result):
            if inspect.iscoroutine(result):
                result.close()
            raise TypeError("on_refresh returned an awaitable; a sync client needs a sync one")

    async def async_flow(
        self, request: RequestT, make: Callable[[str, dict[str, str]], RequestT]
    ) -> AsyncGenerator[RequestT, _Response]:
        await request.aread()  # the body is sent again after a 401
        if self._stale():
            async with self._exclusive():
                if self._stale():  # another task may have refreshed while we waited
                    response = yield self._refresh_request(make)
                    await self._async_accept(response)
        used = self._authorize(request)
        response = yield request
        if response.status_code != 401:
            return
        async with self._exclusive():
            if self.tokens.access_token == used:
                refresh = yield self._refresh_request(make)
                await self._async_accept(refresh)
        self._authorize(request)
        yield request  # once: a second 401 is the answer

    async def _async_accept(self, response: _Response) -> None:
        await response.aread()
        result = self._accept(response.status_code, response.content)
        if inspect.isawaitable(result):
            await result

    @contextlib.asynccontextmanager
    async def _exclusive(self) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        if self._loop_lock is None or self._loop_lock[0] is not loop:
            self._loop_lock = (loop, asyncio.Lock())
        async with self._loop_lock[1]:
            # Polled, not blocking: a sync client holding it may be waiting on this very
            # loop (a server in the same process), and blocking here would deadlock. The
            # holder is a thread, so there is no asyncio.Event to wait on.
            while not self._lock.acquire(blocking=False):  # noqa: ASYNC110
                await asyncio.sleep(0.005)
            try:
                yield
            finally:
                self._lock.release()


class ProxyTokenAuth(httpx.Auth):
    """``httpx.Auth`` for ``httpx.Client`` and ``httpx.AsyncClient`` with a proxy token pair.

    It sends ``Authorization: Bearer <access token>``, refreshes the pair at ``token_url``
    (the proxy's ``<mount>/auth/token``) ``refresh_margin`` seconds before the access token
    expires (at most half its lifetime early), and once more on a 401, retrying the request
    once. One refresh serves every request waiting on it, across threads and tasks.
    ``on_refresh`` gets each rotated pair to persist (sync, or async with async clients); it
    runs under the refresh lock. Without ``access_token`` the first request refreshes; without
    ``expires_at`` the expiry is read from the JWT's ``exp`` (unverified: only to schedule).
    ``clock`` is wall-clock seconds. Raises ``InvalidGrantError`` once the pair is dead and
    ``TokenRefreshError`` when a refresh fails; the SDKs pass both on to the caller as they are.
    """

    def __init__(
        self,
        token_url: str,
        *,
        refresh_token: str,
        access_token: str | None = None,
        expires_at: float | None = None,
        refresh_margin: float = 60.0,
        on_refresh: OnRefresh | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if expires_at is None and access_token is not None:
            expires_at = _jwt_expiry(access_token)
        self._keeper = _TokenKeeper(
            token_url,
            ProxyTokens(refresh_token, access_token, expires_at),
            refresh_margin=refresh_margin,
            on_refresh=on_refresh,
            clock=clock,
        )

    @classmethod
    def from_token_response(
        cls, token_url: str, payload: Mapping[str, Any], **kwargs: Any
    ) -> ProxyTokenAuth:
        """From the JSON of ``POST /auth/tokens`` (or a pair saved with ``to_dict``)."""
        clock: Callable[[], float] = kwargs.get("clock", time.time)
        if "expires_at" in payload:
            tokens = ProxyTokens(
                payload["refresh_token"], payload.get("access_token"), payload["expires_at"]
            )
        else:
            tokens = ProxyTokens.from_response(payload, now=clock())
        return cls(
            token_url,
            refresh_token=tokens.refresh_token,
            access_token=tokens.access_token,
            expires_at=tokens.expires_at,
            **kwargs,
        )

    def __repr__(self) -> str:
        return f"ProxyTokenAuth(token_url={self._keeper.token_url!r})"

    @property
    def tokens(self) -> ProxyTokens:
        """The current pair (after any rotation)."""
        return self._keeper.tokens

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        return self._keeper.sync_flow(request, _httpx_refresh)

    def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        return self._keeper.async_flow(request, _httpx_refresh)

    def for_httpx2(self) -> httpx2.Auth:
        """The same pair as an ``httpx2.Auth``, for SDKs that take only httpx2 clients (the
        Anthropic SDK). Both faces share one pair and one refresh lock."""
        import httpx2

        keeper = self._keeper

        def make(url: str, form: dict[str, str]) -> httpx2.Request:
            return httpx2.Request("POST", url, data=form, headers=_REFRESH_HEADERS)

        class ProxyTokenAuth2(httpx2.Auth):
            def sync_auth_flow(
                self, request: httpx2.Request
            ) -> Generator[httpx2.Request, httpx2.Response, None]:
                return keeper.sync_flow(request, make)

            def async_auth_flow(
                self, request: httpx2.Request
            ) -> AsyncGenerator[httpx2.Request, httpx2.Response]:
                return keeper.async_flow(request, make)

        return ProxyTokenAuth2()


def _httpx_refresh(url: str, form: dict[str, str]) -> httpx.Request:
    return httpx.Request("POST", url, data=form, headers=_REFRESH_HEADERS)


def _expiry(expires_in: object, now: float, access_token: str) -> float | None:
    """``now + expires_in``, or else the JWT's own ``exp``."""
    if isinstance(expires_in, int | float) and not isinstance(expires_in, bool):
        if math.isfinite(expires_in) and expires_in >= 0:
            return now + expires_in
    return _jwt_expiry(access_token)


def _jwt_expiry(token: str) -> float | None:
    """The ``exp`` claim of a JWT, read without verification: it only schedules a refresh."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:  # not base64, not UTF-8 or not JSON: no expiry to read
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if isinstance(exp, int | float) and not isinstance(exp, bool) and math.isfinite(exp):
        return float(exp)
    return None
