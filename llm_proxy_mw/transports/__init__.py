"""Upstream transports: the protocol, the aiohttp default, the httpx adapter, the echo,
and the pool limits and timeouts they take."""

from __future__ import annotations

from typing import TYPE_CHECKING

from llm_proxy_mw.transports._aiohttp import AiohttpTransport
from llm_proxy_mw.transports._base import UpstreamRequest, UpstreamResponse, UpstreamTransport
from llm_proxy_mw.transports._echo import EchoTransport
from llm_proxy_mw.transports._limits import PoolLimits, Timeouts

if TYPE_CHECKING:
    from llm_proxy_mw.transports._httpx import HttpxTransport

__all__ = [
    "AiohttpTransport",
    "EchoTransport",
    "HttpxTransport",
    "PoolLimits",
    "Timeouts",
    "UpstreamRequest",
    "UpstreamResponse",
    "UpstreamTransport",
]


def __getattr__(name: str) -> object:
    # Imported on first use: httpx costs start-up time and memory that a proxy on the
    # default aiohttp transport never needs.
    if name == "HttpxTransport":
        from llm_proxy_mw.transports._httpx import HttpxTransport

        return HttpxTransport
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
