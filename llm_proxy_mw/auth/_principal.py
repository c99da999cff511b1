"""Who is calling: the principal every authenticator resolves and every layer may read."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llm_proxy_mw.auth._oauth_presets import Identity

__all__ = ["Principal"]


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller. ``kind`` says how: ``api_key``, ``token``, ``jwt``, ``session``.

    A login's principal also carries its ``identity`` as the provider verified it: the token
    families it mints keep it, to check it again against the allow lists of the day.
    """

    name: str
    kind: str
    admin: bool = False
    scopes: frozenset[str] = field(default_factory=frozenset)
    subject: str | None = None
    identity: Identity | None = field(default=None, repr=False)
    #: Who owns what this principal mints: namespaced by kind, so an API key named ``alice``
    #: and a GitHub user ``alice`` never share tokens. A proxy token acts for the principal
    #: that minted it, whose id is its ``sub``. Worked out once: several layers read it on
    #: every request.
    owner_id: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.kind == "token":
            owner = self.subject or self.name
        else:
            owner = f"{self.kind}:{self.subject or self.name}"
        object.__setattr__(self, "owner_id", owner)
