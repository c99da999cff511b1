"""Upstream transports: the protocol, the aiohttp default, the httpx adapter, the echo."""

from llm_proxy_mw.transports._aiohttp import AiohttpTransport
from llm_proxy_mw.transports._base import UpstreamRequest, UpstreamResponse, UpstreamTransport
from llm_proxy_mw.transports._echo import EchoTransport
from llm_proxy_mw.transports._httpx import HttpxTransport

__all__ = [
    "AiohttpTransport",
    "EchoTransport",
    "HttpxTransport",
    "UpstreamRequest",
    "UpstreamResponse",
    "UpstreamTransport",
]
