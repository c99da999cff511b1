"""A transport's pool limits and timeouts: plain dataclasses, the one source of their defaults.

A host composing transports by hand builds these directly; ``[providers.<name>.pool]`` and
``[providers.<name>.timeout]`` (``PoolConfig``, ``TimeoutConfig``) validate the same fields
and build them.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PoolLimits", "Timeouts"]


@dataclass(frozen=True, slots=True)
class PoolLimits:
    """The connection pool of one provider.

    ``max_connections``: LLM calls last seconds, so a gateway holds many at once; 100
    (aiohttp's default) would cap a 100 ms provider at 1,000 requests/s.
    ``max_keepalive_connections``: idle connections kept (the httpx transport; aiohttp keeps
    idle ones up to ``max_connections``). ``keepalive_expiry``: seconds an idle one is kept.
    """

    max_connections: int = 1000
    max_keepalive_connections: int = 20
    keepalive_expiry: float = 5.0


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Upstream timeouts in seconds. ``read`` bounds each wait for data, not the whole call;
    ``pool`` the wait for a free pooled connection; ``write`` sending the request (httpx)."""

    connect: float = 5.0
    read: float = 600.0
    write: float = 30.0
    pool: float = 10.0
