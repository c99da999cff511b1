"""What the token store keeps, and the protocol both backends implement.

A *family* is everything one ``POST /auth/tokens`` started: its access tokens and its chain
of refresh tokens. Revoking is per family, so a stolen token takes its whole lineage down.
Refresh tokens are kept only as SHA-256 digests; the signing key is kept as a private JWK,
so the store must be as protected as a config file holding secrets.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Literal, Protocol

from llm_proxy_mw.errors import StoreError

__all__ = ["Family", "RefreshRecord", "Rotation", "StoreError", "TokenStore"]


@dataclass(frozen=True, slots=True)
class Family:
    """One token family. Times are epoch seconds; ``expires`` is absolute: rotation never
    extends it, and no token of the family outlives it. ``identity`` is what its owner was
    known by when it minted the family (an OAuth login's verified facts, as JSON; empty for
    other owners), so that the owner can be checked again against the config of the day."""

    id: str
    owner: str
    name: str
    admin: bool
    scope: str
    access_ttl: int
    created: float
    expires: float
    revoked: float | None = None
    identity: str = ""


@dataclass(frozen=True, slots=True)
class RefreshRecord:
    """A stored refresh token: its family and when it was rotated (``None``: still live)."""

    family: Family
    issued: float
    used: float | None


@dataclass(frozen=True, slots=True)
class Rotation:
    """How a refresh attempt ended. ``reused`` means the presented token had been rotated
    already: the store revoked the family in the same atomic step."""

    status: Literal["rotated", "reused", "revoked", "expired", "unknown"]
    family: Family | None = None


class TokenStore(Protocol):
    """Families, refresh-token digests, revocations and the signing key.

    Every method raises ``StoreError`` when the backend fails; nothing else escapes.
    """

    url: str

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def signing_key(self, algorithm: str, candidate: str) -> str:
        """The stored private JWK for ``algorithm``, storing ``candidate`` first if there is
        none: of two replicas racing, both get the first one written."""
        ...

    async def add_family(
        self, family: Family, refresh_hash: str, *, limit: int | None = None
    ) -> bool:
        """Add the family and its first refresh token, unless its owner already holds
        ``limit`` live (unrevoked, unexpired at ``family.created``) families: then add
        nothing and answer ``False``. Checking and adding are one atomic step."""
        ...

    async def family(self, family_id: str) -> Family | None: ...

    async def families(self, owner: str | None, now: float) -> list[Family]:
        """Unexpired families, oldest first; all of them when ``owner`` is ``None``."""
        ...

    async def refresh_record(self, refresh_hash: str) -> RefreshRecord | None: ...

    async def rotate(self, old_hash: str, new_hash: str, now: float) -> Rotation:
        """Atomically retire ``old_hash`` and add ``new_hash`` to its family."""
        ...

    async def revoke(self, family_id: str, now: float) -> bool:
        """Mark the family revoked and tell every replica; ``False`` if it does not exist."""
        ...

    async def revoked(self, now: float) -> dict[str, float]:
        """Revoked families that have not expired yet: family id -> its ``expires``. Past
        that, none of its tokens is valid anyway, so the revocation need not be known."""
        ...

    def revocations(self) -> AsyncGenerator[str | None, None]:
        """Family ids as replicas revoke them. It first yields ``None`` once it listens, so
        that the caller can reload the revocations without missing one in between; a
        single-process store yields nothing else. A generator: its caller closes it (and
        with it the subscription) when it stops listening."""
        ...

    async def purge(self, now: float) -> int:
        """Forget families (and their refresh tokens) that expired before ``now``."""
        ...
