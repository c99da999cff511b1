"""OAuth2 client credentials (RFC 6749 §4.4) for providers that take a bearer token.

Azure OpenAI with Entra ID, for one, wants ``Authorization: Bearer <token>`` from the
tenant's token endpoint rather than a static key. ``ClientCredentialsTokenSource`` fetches
that token, caches it and renews it before it expires, so the request path awaits nothing but
a cached value: a fresh token is returned at once; inside the refresh margin the still-valid
token is returned while one background fetch renews it; only with no valid token does a
request wait, and every waiter shares one fetch (``_http_fetch``: one deadline, a bounded
body, no redirects). A failed fetch becomes ``UpstreamAuthError``, and the failure is
remembered for a moment so a broken identity provider is not asked once per request.

Neither the client secret nor a token is ever logged or put in an error message.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from llm_proxy_mw._http_fetch import HttpFetcher
from llm_proxy_mw.config import ProviderOAuthConfig
from llm_proxy_mw.errors import FetchError, UpstreamAuthError

if TYPE_CHECKING:
    import httpx

__all__ = ["ClientCredentialsTokenSource"]

logger = logging.getLogger("llm_proxy_mw")

#: Lifetime assumed when the token endpoint omits ``expires_in`` (RFC 6749 only recommends it).
DEFAULT_LIFETIME = 300.0
_OAUTH_ERROR = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


class ClientCredentialsTokenSource:
    """A provider's OAuth2 access token, fetched with client credentials and kept fresh.

    ``headers()`` is the provider's credential hook: ``[("authorization", "Bearer ...")]``.
    The token is renewed ``refresh_margin`` seconds before it expires (at most half its
    lifetime). ``timeout`` is in seconds for a whole token request. ``transport`` and
    ``clock`` (monotonic seconds) are injectable for tests; the HTTP client is created on
    first use and closed by ``aclose``.
    """

    def __init__(
        self,
        config: ProviderOAuthConfig,
        *,
        provider: str = "-",
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = 10.0,
        refresh_margin: float = 60.0,
        failure_cooldown: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.provider = provider
        self.refresh_margin = refresh_margin
        self.failure_cooldown = failure_cooldown
        self._fetcher = HttpFetcher(transport=transport, timeout=timeout)
        self._clock = clock
        self._token: str | None = None
        self._refresh_at = -math.inf
        self._expires_at = -math.inf
        self._pending: asyncio.Task[str] | None = None
        self._failure: str | None = None
        self._failed_until = -math.inf

    def __repr__(self) -> str:
        return f"ClientCredentialsTokenSource(provider={self.provider!r})"

    async def headers(self) -> list[tuple[str, str]]:
        """The credential headers for one upstream request."""
        return [("authorization", "Bearer " + await self.token())]

    async def token(self) -> str:
        """A valid access token: cached, renewed in the background, or fetched once for all."""
        now = self._clock()
        if now < self._refresh_at and self._token is not None:
            return self._token
        if self._token is not None and now < self._expires_at:
            # Inside the margin: the token still works, so nobody waits for its successor.
            if self._pending is None and now >= self._failed_until:
                self._start()
            return self._token
        if now < self._failed_until and self._pending is None:
            raise UpstreamAuthError(self._failure or "", provider=self.provider)
        try:
            # Shielded: a waiter that is cancelled (its client left) must not cancel the
            # fetch the other waiters share.
            return await asyncio.shield(self._pending or self._start())
        except UpstreamAuthError as error:
            # One error object per request: each request sets its own fields on it.
            raise UpstreamAuthError(error.message, provider=self.provider) from None

    def _start(self) -> asyncio.Task[str]:
        task = asyncio.get_running_loop().create_task(self._fetch())
        self._pending = task
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[str]) -> None:
        self._pending = None
        # Retrieve the outcome so that a fetch nobody waits for (a background renewal, or
        # one whose waiters all left) does not log "exception was never retrieved".
        if not task.cancelled():
            task.exception()

    async def _fetch(self) -> str:
        try:
            token, lifetime = await self._request()
        except UpstreamAuthError as error:
            self._failure = error.message
            self._failed_until = self._clock() + self.failure_cooldown
            logger.warning(
                "llm_proxy_mw: provider %s: token request failed: %s", self.provider, error.message
            )
            raise
        now = self._clock()
        self._token = token
        self._expires_at = now + lifetime
        self._refresh_at = self._expires_at - min(self.refresh_margin, lifetime / 2)
        self._failure = None
        self._failed_until = -math.inf
        logger.debug(
            "llm_proxy_mw: provider %s: new access token, valid %.0fs", self.provider, lifetime
        )
        return token

    async def _request(self) -> tuple[str, float]:
        """POST the client credentials; the token and its lifetime, or ``UpstreamAuthError``."""
        form = {
            "grant_type": "client_credentials",
            "client_id": self.config.client_id,
            # client_secret_post: what Entra ID documents; every major IdP accepts it.
            "client_secret": self.config.client_secret.get_secret_value(),
        }
        if self.config.scope:
            form["scope"] = self.config.scope
        prefix = f"Could not obtain an access token for provider {self.provider!r}"
        try:
            answer = await self._fetcher.post_form(self.config.token_url, form)
        except FetchError as error:
            raise UpstreamAuthError(f"{prefix}: its token endpoint {error}.") from None
        payload = answer.json()
        if not isinstance(payload, dict):
            payload = {}
        if answer.status != 200:
            # Only a well-formed OAuth error code is repeated; error_description is free text.
            code = payload.get("error")
            detail = f" {code}" if isinstance(code, str) and _OAUTH_ERROR.match(code) else ""
            raise UpstreamAuthError(
                f"{prefix}: its token endpoint answered HTTP {answer.status}{detail}."
            )
        token = payload.get("access_token")
        if (
            not isinstance(token, str)
            or not token
            or str(payload.get("token_type", "")).lower() != "bearer"
        ):
            raise UpstreamAuthError(f"{prefix}: its token endpoint sent no bearer access token.")
        return token, _lifetime(payload.get("expires_in"))

    async def aclose(self) -> None:
        """Cancel a fetch in flight and close the HTTP client. Idempotent."""
        if self._pending is not None:
            self._pending.cancel()
        await self._fetcher.aclose()


def _lifetime(value: object) -> float:
    """``expires_in`` in seconds; Entra ID's v1 endpoint sends it as a string."""
    if isinstance(value, bool):
        return DEFAULT_LIFETIME
    if isinstance(value, int | float | str):
        try:
            seconds = float(value)
        except ValueError:
            return DEFAULT_LIFETIME
        if math.isfinite(seconds) and seconds > 0:
            return seconds
    return DEFAULT_LIFETIME
