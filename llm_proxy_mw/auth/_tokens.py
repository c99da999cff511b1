"""``TokenService``: issues, rotates, revokes and introspects proxy tokens.

An access token is a short-lived JWT (``_jwt_auth``); a refresh token is an opaque random
string the store knows only by its SHA-256. Every refresh rotates the pair; presenting a
refresh token that was already rotated means two parties hold it, so the whole family is
revoked (RFC 9700 §4.14.2).

Revocations must bind every replica at once, without a store round trip per request: the
revoked family ids live in memory, loaded at start, updated in-process as they happen,
pushed between replicas by the store (Redis pub/sub) and reloaded periodically as a safety
net. The signing key comes from config, or is generated once and kept in the store, so
replicas sharing the store share the key and tokens survive restarts.

A family is bound to the principal that minted it (``_token_owners``): once its owner no
longer exists or is no longer allowed, its tokens are refused, and at start-up such orphans
are revoked through the store, which tells every replica. An owner holds at most
``max_families_per_owner`` live families.

On demand (no ``[auth.tokens]`` section), nothing starts with the proxy: the first token
operation or token-shaped credential opens the store, loads the key (and with it joserfc
and cryptography) and starts the revocation sync, so a proxy whose clients use API keys
only never loads them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from llm_proxy_mw.auth._jwt_auth import AccessToken, ProxyTokenAuthenticator
from llm_proxy_mw.auth._principal import Principal
from llm_proxy_mw.auth._token_owners import LiveFamilies, LoginSession, OwnerCheck, identity_facts
from llm_proxy_mw.auth.token_store import Family, RevocationSync, TokenStore
from llm_proxy_mw.config import ConfigError, TokensConfig
from llm_proxy_mw.errors import (
    StoreError,
    TokenGrantError,
    TokenStoreUnavailableError,
    TooManyTokenFamiliesError,
)

if TYPE_CHECKING:
    from llm_proxy_mw.auth._signing_key import SigningKey

__all__ = ["IssuedTokens", "TokenService"]

logger = logging.getLogger("llm_proxy_mw.auth")

_T = TypeVar("_T")
REFRESH_PREFIX = "lpx_rt_"
FAMILY_PREFIX = "tf_"


@dataclass(frozen=True, slots=True)
class IssuedTokens:
    family: Family
    access_token: str
    refresh_token: str
    expires_in: int


def refresh_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def is_refresh_token(token: str) -> bool:
    return token.startswith(REFRESH_PREFIX) and len(token) < 128


class TokenService:
    """The lifecycle (``start``/``stop``) and the operations behind the token API.

    ``clock`` gives epoch seconds (tests move it); ``resync_interval`` is how often the
    revocations are reloaded and a failed store is retried. ``on_demand`` defers all of
    ``start`` to the first call of ``ready`` (see the module docstring). ``owner_exists``
    says whether a family's owner still exists (``_token_owners.owner_check``); without it,
    every owner does.
    """

    def __init__(
        self,
        config: TokensConfig,
        store: TokenStore,
        *,
        clock: Callable[[], float] = time.time,
        resync_interval: float = 10.0,
        on_demand: bool = False,
        owner_exists: OwnerCheck | None = None,
    ) -> None:
        self.config = config
        self.on_demand = on_demand
        self.store = store
        self.revocations = RevocationSync(
            store,
            clock=lambda: self.clock(),
            horizon=config.refresh_ttl_seconds,
            interval=resync_interval,
        )
        #: Revoked family id -> when it expires; every request checks it.
        self.revoked = self.revocations.revoked
        self.live_families = LiveFamilies(
            self._stored_family,
            revocations=self.revocations,
            revoke=self.revoke,
            owner_exists=owner_exists or _anyone,
            clock=lambda: self.clock(),
        )
        self.authenticator = ProxyTokenAuthenticator(
            issuer=config.issuer,
            audience=config.audience,
            leeway=config.leeway_seconds,
            revoked=self.revoked,
            clock=clock,
            load_keys=self._load_on_demand if on_demand else None,
            admit=self.live_families.admits,
        )
        self._configured: SigningKey | None = None
        if config.signing_key is not None:
            from llm_proxy_mw.auth._signing_key import SigningKey

            # A configured key that cannot be used is a config error: raise at build time.
            try:
                secret = config.signing_key.get_secret_value()
                self._configured = SigningKey.from_jwk(secret, config.algorithm)
            except ValueError as exc:
                raise ConfigError(f"auth.tokens.signing_key: {exc}") from None
        self.key: SigningKey | None = None
        self._ready = asyncio.Lock()
        self._healthy = True
        self._running = False
        self._sync: asyncio.Task[None] | None = None

    @property
    def clock(self) -> Callable[[], float]:
        """Epoch seconds, shared with the verifier so that tests can move both at once."""
        return self.authenticator.clock

    @clock.setter
    def clock(self, clock: Callable[[], float]) -> None:
        self.authenticator.clock = clock

    async def start(self) -> None:
        self._ready = asyncio.Lock()  # of this event loop: a host may run several in turn
        self._running = True
        if self.on_demand and not self.authenticator.keys:
            return  # until the first ``ready``; once tokens were used, they are kept in sync
        with contextlib.suppress(TokenStoreUnavailableError):  # logged; retried in the loop
            await self.ready()
        self._sync_revocations()

    def _sync_revocations(self) -> None:
        if self._running and self._sync is None:
            sync = self.revocations.run(self.ready)
            self._sync = asyncio.create_task(sync, name="llm_proxy_mw-token-revocations")

    async def _load_on_demand(self) -> None:
        with contextlib.suppress(TokenStoreUnavailableError):  # logged; the caller gets 401
            await self.ready()

    async def stop(self) -> None:
        self._running = False
        await self.live_families.settle()
        task, self._sync = self._sync, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self.key = None  # so that a later start opens the store again
        with contextlib.suppress(StoreError):
            await self.store.close()

    async def ready(self) -> SigningKey:
        """The signing key, once the store is open and the revocations are loaded."""
        if self.key is not None:
            return self.key
        async with self._ready:
            if self.key is None:
                await self._guard(self.store.open())
                key = self._configured or await self._stored_key()
                await self._guard(self.revocations.reload())
                await self._revoke_orphans()
                self.authenticator.use_key(key)
                self.key = key
        self._sync_revocations()  # on demand, the first token operation starts it
        return self.key

    async def _stored_key(self) -> SigningKey:
        from llm_proxy_mw.auth._signing_key import SigningKey

        algorithm = self.config.algorithm
        candidate = SigningKey.generate(algorithm).to_jwk()
        stored = await self._guard(self.store.signing_key(algorithm, candidate))
        try:
            return SigningKey.from_jwk(stored, algorithm)
        except ValueError as exc:
            url = self.store.url
            logger.error("llm_proxy_mw: the token store %s holds a bad key: %s", url, exc)
            raise TokenStoreUnavailableError("The token signing key is unusable.") from None

    async def _revoke_orphans(self) -> None:
        """Revoke each family whose owner no longer exists, through the store so that every
        replica learns it (their own config may still name the owner)."""
        now = self.clock()
        orphans = self.live_families.orphans(await self._guard(self.store.families(None, now)))
        for family in orphans:
            self.revocations.add(family.id, family.expires)
            await self._guard(self.store.revoke(family.id, now))
        if orphans:
            logger.warning(
                "llm_proxy_mw: revoked %d token families whose owner is no longer configured "
                "or allowed",
                len(orphans),
            )

    async def _stored_family(self, family_id: str) -> Family | None:
        return await self._guard(self.store.family(family_id))

    async def mint(
        self,
        owner: Principal,
        name: str,
        ttl: int | None,
        admin: bool,
        *,
        session: LoginSession | None = None,
    ) -> IssuedTokens:
        """A new family of ``owner``'s, bound to the login ``session`` it comes from if any;
        ``TooManyTokenFamiliesError`` past the cap."""
        key = await self.ready()
        now = self.clock()
        ttl = min(ttl or self.config.access_ttl_seconds, self.config.max_ttl_seconds)
        expires = now + self.config.refresh_ttl_seconds
        if session is not None:  # nothing a session mints outlives it
            expires = min(expires, session.expires_at)
        family = Family(
            id=FAMILY_PREFIX + secrets.token_urlsafe(12),
            owner=owner.owner_id,
            name=name,
            admin=admin,
            scope=" ".join(sorted(owner.scopes)),
            access_ttl=ttl,
            created=now,
            expires=expires,
            identity=identity_facts(owner.identity),
        )
        refresh = REFRESH_PREFIX + secrets.token_urlsafe(32)
        limit = self.config.max_families_per_owner
        added = self.store.add_family(family, refresh_digest(refresh), limit=limit)
        if not await self._guard(added):
            raise TooManyTokenFamiliesError(
                f"At most {limit} live token families per owner; revoke one to mint another."
            )
        if session is not None:
            self.live_families.minted(family, session)
        logger.info("llm_proxy_mw: %s minted token family %s", owner.name, family.id)
        return self._issue(key, family, refresh, now)

    async def refresh(self, refresh_token: str) -> IssuedTokens:
        """Rotate a refresh token into a new pair; ``TokenGrantError`` when it cannot be."""
        key = await self.ready()
        if not is_refresh_token(refresh_token):
            raise TokenGrantError("The refresh token is invalid, expired or revoked.")
        now = self.clock()
        new = REFRESH_PREFIX + secrets.token_urlsafe(32)
        rotation = await self._guard(
            self.store.rotate(refresh_digest(refresh_token), refresh_digest(new), now)
        )
        if rotation.status == "reused" and rotation.family is not None:
            self.revocations.add(rotation.family.id, rotation.family.expires)
            logger.warning(
                "llm_proxy_mw: a rotated refresh token of family %s was presented again; "
                "revoked the family as stolen",
                rotation.family.id,
            )
            raise TokenGrantError("The refresh token was already used; its tokens are revoked.")
        if rotation.status != "rotated" or rotation.family is None:
            raise TokenGrantError("The refresh token is invalid, expired or revoked.")
        if not self.live_families.live(rotation.family):  # its owner or its session is gone
            await self.revoke(rotation.family)
            raise TokenGrantError("The refresh token is invalid, expired or revoked.")
        return self._issue(key, rotation.family, new, now)

    def _issue(self, key: SigningKey, family: Family, refresh: str, now: float) -> IssuedTokens:
        issued = int(now)
        expires = int(min(now + family.access_ttl, family.expires))
        claims = {
            "iss": self.config.issuer,
            "aud": self.config.audience,
            "sub": family.owner,
            "exp": expires,
            "iat": issued,
            "nbf": issued,
            "jti": secrets.token_urlsafe(16),
            "fam": family.id,
            "adm": family.admin,
            "scope": family.scope,
        }
        return IssuedTokens(family, key.sign(claims), refresh, expires - issued)

    async def revoke(self, family: Family) -> None:
        # In memory first: this replica refuses the family even if the store write fails.
        self.revocations.add(family.id, family.expires)
        await self._guard(self.store.revoke(family.id, self.clock()))
        logger.info("llm_proxy_mw: revoked token family %s", family.id)

    async def family(self, family_id: str) -> Family | None:
        await self.ready()
        found = await self._guard(self.store.family(family_id))
        return found if found is not None and found.expires > self.clock() else None

    async def families(self, owner: str | None) -> list[Family]:
        await self.ready()
        return await self._guard(self.store.families(owner, self.clock()))

    async def lookup(self, token: str) -> tuple[Family, dict[str, Any]] | None:
        """The live family of an access or refresh token and what it says, else ``None``."""
        await self.ready()
        if is_refresh_token(token):
            record = await self._guard(self.store.refresh_record(refresh_digest(token)))
            if record is None or record.used is not None:
                return None
            family = record.family
            claims = {"token_type": "refresh_token", "iat": int(record.issued)}
            claims |= {"sub": family.owner, "exp": int(family.expires)}
            return (family, claims) if self.live_families.live(family) else None
        verified: AccessToken | None = self.authenticator.verify(token)
        found = await self.live_families.family_of(verified) if verified is not None else None
        if verified is None or found is None:
            return None
        return found, {"token_type": "access_token", **verified.claims}

    async def _guard(self, operation: Awaitable[_T]) -> _T:
        """Store failures become one 503 for the client and one warning per outage."""
        try:
            result = await operation
        except StoreError as exc:
            self._report(exc)
            raise TokenStoreUnavailableError(
                "The token store is unavailable; try again shortly.", headers={"retry-after": "5"}
            ) from exc
        if not self._healthy:
            self._healthy = True
            logger.warning("llm_proxy_mw: the token store %s is available again", self.store.url)
        return result

    def _report(self, exc: StoreError) -> None:
        if self._healthy:
            self._healthy = False
            logger.warning(
                "llm_proxy_mw: token store unavailable (%s); proxy-issued tokens cannot be "
                "minted or refreshed, and new revocations may reach other replicas late",
                exc,
            )


def _anyone(family: Family) -> bool:
    return True
