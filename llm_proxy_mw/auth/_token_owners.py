"""Whether a token family may still be used: it is live in the store, its owner still exists.

A family is bound to the principal that minted it, and the config says who still exists:
an API key owner while a key of that name is configured; an OAuth login owner while its
identity provider is configured and the identity it verified at login (kept with the family)
still passes that provider's allow lists; an external-JWT owner while its issuer is
configured. An admin family also needs an owner who is still an admin. The check is pure
and in memory, so the verifier runs it on every request.

Whether a family exists at all is the store's to say: ``LiveFamilies`` asks it once per
family and keeps the answer, while revocations and expiry are checked on every request. It
also binds families to the login sessions that minted them: those expire with the session
at the latest, and are revoked when it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llm_proxy_mw.auth._jwt_auth import AccessToken
from llm_proxy_mw.auth.token_store import Family, RevocationSync
from llm_proxy_mw.config import AuthConfig, OAuthConfig
from llm_proxy_mw.errors import ProxyError

if TYPE_CHECKING:
    from llm_proxy_mw.auth._oauth_presets import Identity

__all__ = ["LiveFamilies", "LoginSession", "OwnerCheck", "identity_facts", "owner_check"]

#: Whether the owner of a family still exists and may still hold it.
OwnerCheck = Callable[[Family], bool]


def owner_check(config: AuthConfig) -> OwnerCheck:
    """The owner check of ``config``: see the module docstring."""
    api_keys = {f"api_key:{key.name}": key.admin for key in config.api_keys}
    issuers = {name: set(issuer.admin_subjects) for name, issuer in config.jwt_issuers.items()}
    idps = config.oauth if config.session_secret is not None else {}

    def exists(family: Family) -> bool:
        kind, _, rest = family.owner.partition(":")
        if kind == "api_key":
            admin = api_keys.get(family.owner)
            return admin is not None and (admin or not family.admin)
        if kind == "jwt":
            name, _, subject = rest.partition(":")
            admins = issuers.get(name)
            return admins is not None and (subject in admins or not family.admin)
        if kind == "session":
            return _login_allowed(idps, rest, family)
        return False

    return exists


def _login_allowed(idps: Mapping[str, OAuthConfig], rest: str, family: Family) -> bool:
    idp, _, subject = rest.partition(":")
    config = idps.get(idp)
    identity = _identity(family.identity, subject) if config is not None else None
    if config is None or identity is None:
        return False
    from llm_proxy_mw.auth._oauth_presets import is_admin, is_allowed

    return is_allowed(config, identity) and (is_admin(config, identity) or not family.admin)


def identity_facts(identity: Identity | None) -> str:
    """What a family keeps of its owner's identity: its fields as JSON (empty: none)."""
    return json.dumps(dataclasses.asdict(identity)) if identity is not None else ""


def _identity(facts: str, subject: str) -> Identity | None:
    """The identity a family was minted with, under its owner's subject (only the subject
    when none was kept); ``None``, so the owner is gone, when the facts are unreadable."""
    from llm_proxy_mw.auth._oauth_presets import Identity

    try:
        data = json.loads(facts) if facts else {}
    except ValueError:
        return None
    known = {f.name for f in dataclasses.fields(Identity)}
    if not isinstance(data, dict) or not set(data) <= known:
        return None
    values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    try:
        return Identity(**{**values, "subject": subject})
    except TypeError:  # a field Identity now requires, missing from what was kept
        return None


@dataclass(frozen=True, slots=True)
class LoginSession:
    """The login session a family is minted from: a digest of its id (the id is a secret)
    and when it ends."""

    digest: str
    expires_at: float


class LiveFamilies:
    """Whether a token family may still be used: known to the store, not revoked, not
    expired, its owner still existing; and, for an access token, what it claims matching.

    ``load`` reads a family from the store (``None``: no such family); each family is read
    once and kept, at most ``size`` of them, while the revocations (``revocations``), the
    expiry and the owner are checked on every call. ``revoke`` revokes a family through the
    store, for the families of login sessions that end.
    """

    def __init__(
        self,
        load: Callable[[str], Awaitable[Family | None]],
        *,
        revocations: RevocationSync,
        revoke: Callable[[Family], Awaitable[None]],
        owner_exists: OwnerCheck,
        clock: Callable[[], float],
        size: int = 10_000,
    ) -> None:
        self.load = load
        self.revocations = revocations
        self.revoke = revoke
        self.owner_exists = owner_exists
        self.clock = clock
        self.size = size
        self._known: dict[str, Family] = {}
        #: The families each login session (by digest) minted here, oldest session first.
        self._by_session: dict[str, list[Family]] = {}
        self._revoking: set[asyncio.Task[None]] = set()

    async def admits(self, token: AccessToken) -> bool:
        return await self.family_of(token) is not None

    async def family_of(self, token: AccessToken) -> Family | None:
        """The token's family if it admits the token, else ``None``."""
        family = self._known.get(token.family)
        if family is None:
            family = await self.load(token.family)
            if family is None:
                return None
            if len(self._known) >= self.size:
                del self._known[next(iter(self._known))]
            self._known[family.id] = family
        return family if self.live(family) and _claims_match(token.claims, family) else None

    def live(self, family: Family) -> bool:
        return (
            family.revoked is None
            and family.id not in self.revocations.revoked
            and family.expires > self.clock()
            and self.owner_exists(family)
        )

    def orphans(self, families: Iterable[Family]) -> list[Family]:
        """The unrevoked ones among ``families`` whose owner no longer exists."""
        return [f for f in families if f.revoked is None and not self.owner_exists(f)]

    def minted(self, family: Family, session: LoginSession) -> None:
        """Bind ``family`` to the login ``session`` it was minted from."""
        self._by_session.setdefault(session.digest, []).append(family)
        # Forget sessions whose families have all expired, oldest first: bounded memory.
        now = self.clock()
        while self._by_session:
            oldest = next(iter(self._by_session))
            if max(f.expires for f in self._by_session[oldest]) > now:
                break
            del self._by_session[oldest]

    def session_ended(self, digest: str) -> None:
        """Revoke what the login session ``digest`` minted: here at once, and through the
        store for the other replicas (in the background: sessions end in synchronous code).
        Sessions live in one process, so their families are all known here. A family that
        expired already (an expired session's, at the latest) needs no revocation."""
        now = self.clock()
        for family in self._by_session.pop(digest, []):
            if family.expires <= now:
                continue
            self.revocations.add(family.id, family.expires)
            task = asyncio.get_running_loop().create_task(self._revoke(family))
            self._revoking.add(task)
            task.add_done_callback(self._revoking.discard)

    async def _revoke(self, family: Family) -> None:
        with contextlib.suppress(ProxyError):  # the store is down (logged): refused here anyway
            await self.revoke(family)

    async def settle(self) -> None:
        """Wait for the revocations still on their way to the store."""
        await asyncio.gather(*self._revoking, return_exceptions=True)


def _claims_match(claims: Mapping[str, Any], family: Family) -> bool:
    # Whoever holds the signing key still cannot lift a real family to admin, to another
    # owner, to other scopes, or past its end.
    return (
        claims["sub"] == family.owner
        and claims["adm"] is family.admin
        and claims["scope"] == family.scope
        and claims["exp"] <= family.expires
    )
