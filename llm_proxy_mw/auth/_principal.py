"""Who is calling: the principal every authenticator resolves and every layer may read."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Principal"]


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller. ``kind`` says how: ``api_key``, ``token``, ``jwt``, ``session``."""

    name: str
    kind: str
    admin: bool = False
    scopes: frozenset[str] = field(default_factory=frozenset)
    subject: str | None = None
