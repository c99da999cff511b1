"""``RevocationSync``: the revoked token families, in memory, kept current with the store.

Every request checks the in-memory ``revoked`` mapping and never waits on the store, so a
revocation must reach it by other means: the replica that revokes adds it at once; the
store pushes it to the other replicas (Redis pub/sub), and after every (re)subscription
the whole set is reloaded, so that nothing published while the connection was down is
missed; a periodic reload is the safety net for a push lost in any other way. A family is
forgotten once it has expired, since none of its tokens can be valid after that.

Stopping cancels the two loops again until they end: a store's client may lose a
cancellation (redis-py 8 now and then does, in a pub/sub read), and then a loop would run on
and the host's shutdown wait for it forever. Past ``stop_patience`` they are left running,
with a warning, rather than holding the shutdown.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextlib import aclosing

from llm_proxy_mw.auth.token_store._base import StoreError, TokenStore
from llm_proxy_mw.errors import ProxyError

__all__ = ["RevocationSync"]

logger = logging.getLogger("llm_proxy_mw.auth")

#: How long stopping waits for the loops to end, and how often it cancels them again.
STOP_PATIENCE = 5.0
_CANCEL_AGAIN_EVERY = 0.25


class RevocationSync:
    """``revoked`` maps each revoked family id to its expiry. ``clock`` gives epoch seconds;
    ``horizon`` bounds how long a family pushed without its expiry is remembered."""

    def __init__(
        self,
        store: TokenStore,
        *,
        clock: Callable[[], float],
        horizon: float,
        interval: float = 10.0,
        stop_patience: float = STOP_PATIENCE,
    ) -> None:
        self.store = store
        self.clock = clock
        self.horizon = horizon
        self.interval = interval
        self.stop_patience = stop_patience
        self.revoked: dict[str, float] = {}
        self._failing = False

    def add(self, family_id: str, expires: float) -> None:
        self.revoked[family_id] = expires

    async def reload(self) -> None:
        """Add every revocation the store knows of, and forget the expired ones."""
        now = self.clock()
        self.revoked.update(await self.store.revoked(now))
        for family_id in [f for f, expires in self.revoked.items() if expires <= now]:
            del self.revoked[family_id]

    async def run(self, ready: Callable[[], Awaitable[object]]) -> None:
        """Listen for pushes and reload periodically, until cancelled. ``ready`` opens the
        store (and raises while it cannot be opened)."""
        loops = {
            asyncio.create_task(self._listen(ready), name="llm_proxy_mw-token-pushes"),
            asyncio.create_task(
                self._reload_periodically(ready), name="llm_proxy_mw-token-reloads"
            ),
        }
        try:
            await asyncio.gather(*loops)  # they end only when cancelled
        finally:
            await self._stop(loops)

    async def _stop(self, loops: set[asyncio.Task[None]]) -> None:
        """Cancel ``loops`` and wait for them to end, cancelling again each one still
        running after ``_CANCEL_AGAIN_EVERY`` (its store's client lost the cancellation),
        for at most ``stop_patience`` seconds."""
        running = {loop for loop in loops if not loop.done()}
        for loop in running:
            if not loop.cancelling():  # not yet cancelled along with ``run``: a loop failed
                loop.cancel()
        clock = asyncio.get_running_loop().time
        deadline = clock() + self.stop_patience
        while running:
            left = deadline - clock()
            if left <= 0:
                logger.warning(
                    "llm_proxy_mw: the token revocation sync did not stop within %.1f s "
                    "(its store's client kept it running); left running",
                    self.stop_patience,
                )
                return
            _, running = await asyncio.wait(running, timeout=min(_CANCEL_AGAIN_EVERY, left))
            for loop in running:
                loop.cancel()

    async def _listen(self, ready: Callable[[], Awaitable[object]]) -> None:
        backoff = 0.5
        while True:
            try:
                await ready()
                # Closed here, whatever ends the loop (a failed reload, the stop): its
                # subscription is gone before the sync goes on, not whenever it is collected.
                async with aclosing(self.store.revocations()) as pushes:
                    async for family_id in pushes:
                        if family_id is None:  # (re)subscribed
                            await self.reload()
                            backoff = self._recovered()
                        elif family_id not in self.revoked:
                            # Its expiry is not pushed; the next reload sets the real one.
                            self.revoked[family_id] = self.clock() + self.horizon
            except (StoreError, ProxyError) as exc:
                self._failed(exc)
            except Exception:  # a bug here must not end revocation pushes for the whole run
                logger.exception("llm_proxy_mw: listening for token revocations failed")
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.interval)

    async def _reload_periodically(self, ready: Callable[[], Awaitable[object]]) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await ready()
                await self.reload()
                await self.store.purge(self.clock())
                self._recovered()
            except (StoreError, ProxyError) as exc:
                self._failed(exc)
            except Exception:  # a bug here must not end the safety net for the whole run
                logger.exception("llm_proxy_mw: reloading token revocations failed")

    def _failed(self, exc: Exception) -> None:
        if not self._failing:
            self._failing = True
            logger.warning(
                "llm_proxy_mw: cannot sync token revocations with %s (%s); revocations made "
                "on other replicas reach this one when it is back",
                self.store.url,
                exc,
            )

    def _recovered(self) -> float:
        if self._failing:
            self._failing = False
            logger.warning("llm_proxy_mw: token revocations are in sync again")
        return 0.5
