"""Server-side refresh of a session's identity-provider token.

Within ``margin`` seconds of the provider's access token expiring, the session's next request
starts one refresh with the refresh token, and every concurrent request of that session awaits
the same task (single flight; a client that disconnects does not cancel it for the others).
``invalid_grant`` (GitHub says ``bad_refresh_token``) means the provider withdrew the grant:
the user was removed or revoked the consent, so the session ends. Any other failure is taken
as transient: the session keeps its current token and the refresh is retried after
``retry_interval`` seconds. A token without a refresh token or an expiry is never refreshed;
such a session lasts its own ``session_ttl_seconds``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from authlib.integrations.base_client import OAuthError

from llm_proxy_mw.auth._sessions import Session

__all__ = ["ENDING_ERRORS", "SessionRefresher", "stored_token"]

logger = logging.getLogger("llm_proxy_mw")

#: Token-endpoint errors that end the session rather than being retried.
ENDING_ERRORS = frozenset({"invalid_grant", "bad_refresh_token"})
_KEPT = ("access_token", "refresh_token", "token_type", "expires_at")


def stored_token(
    token: Mapping[str, Any], previous: Mapping[str, Any] | None, now: float
) -> dict[str, Any]:
    """What a session keeps of a token response: no ID token, an absolute ``expires_at``,
    and the previous refresh token when the provider did not rotate it."""
    kept = {key: token[key] for key in _KEPT if token.get(key) is not None}
    if "expires_at" not in kept and isinstance(token.get("expires_in"), int | float):
        kept["expires_at"] = now + token["expires_in"]
    if "refresh_token" not in kept and previous and previous.get("refresh_token"):
        kept["refresh_token"] = previous["refresh_token"]
    return kept


class SessionRefresher:
    """The ``Refresher`` of ``SessionAuthenticator``: ``False`` when the session must end.

    ``clients`` are Authlib's OAuth2 apps by identity-provider name.
    """

    def __init__(
        self,
        clients: Mapping[str, Any],
        *,
        margin: float = 60.0,
        retry_interval: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.clients = clients
        self.margin = margin
        self.retry_interval = retry_interval
        self.clock = clock

    async def __call__(self, session: Session) -> bool:
        token = session.token
        if not token or not token.get("refresh_token"):
            return True
        expires_at = token.get("expires_at")
        now = self.clock()
        if not isinstance(expires_at, int | float) or expires_at - now > self.margin:
            return True
        if now < session.refresh_not_before:
            return True
        task = session.refresh
        if task is None or task.done():
            task = asyncio.get_running_loop().create_task(self._refresh(session))
            session.refresh = task
        return await asyncio.shield(task)

    async def _refresh(self, session: Session) -> bool:
        client = self.clients.get(session.idp or "")
        previous = session.token or {}
        if client is None:
            return True
        try:
            fresh = await client.fetch_access_token(
                grant_type="refresh_token", refresh_token=previous["refresh_token"]
            )
        except OAuthError as exc:
            if exc.error in ENDING_ERRORS:
                logger.info("oauth session ended: %s refused to refresh its token", session.idp)
                return False
            self._failed(session, f"{type(exc).__name__} {exc.error}")
            return True
        except Exception as exc:  # network errors of httpx or httpx2 (whichever Authlib uses)
            # and malformed responses: all transient, the session lives on.
            self._failed(session, type(exc).__name__)
            return True
        session.token = stored_token(fresh, previous, self.clock())
        session.refresh_not_before = 0.0
        return True

    def _failed(self, session: Session, reason: str) -> None:
        session.refresh_not_before = self.clock() + self.retry_interval
        logger.warning(
            "oauth session token refresh at %s failed (%s); retrying in %.0f s",
            session.idp,
            reason,
            self.retry_interval,
        )

    async def aclose(self, sessions: list[Session]) -> None:
        """Cancel refreshes still in flight (at shutdown)."""
        tasks = [s.refresh for s in sessions if s.refresh is not None and not s.refresh.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
