"""llm_proxy_mw: an LLM proxy as composable pure-ASGI middlewares over a pluggable transport."""

from __future__ import annotations

from typing import TYPE_CHECKING

from llm_proxy_mw import transports
from llm_proxy_mw.auth import ApiKeyAuthenticator, AuthMiddleware, Principal
from llm_proxy_mw.builder import build_proxy
from llm_proxy_mw.config import ProxyConfig, load_config
from llm_proxy_mw.context import RequestContext, RequestContextMiddleware, get_context
from llm_proxy_mw.gc_tuning import tuned_gc
from llm_proxy_mw.health import HealthPolicy, HealthRegistry
from llm_proxy_mw.limits import Limit, LimitsMiddleware, LimitsPolicy
from llm_proxy_mw.metrics import MetricsMiddleware, ProxyMetrics
from llm_proxy_mw.mounting import PrefixMount, mount
from llm_proxy_mw.providers import Provider
from llm_proxy_mw.proxy import LLMProxy
from llm_proxy_mw.retry import RetryMiddleware, RetryPolicy
from llm_proxy_mw.routing import Router, RoutingMiddleware
from llm_proxy_mw.transports import (
    AiohttpTransport,
    EchoTransport,
    PoolLimits,
    Timeouts,
    UpstreamRequest,
    UpstreamResponse,
    UpstreamTransport,
)
from llm_proxy_mw.upstream import UpstreamApp
from llm_proxy_mw.wire import WireFormat

if TYPE_CHECKING:
    from llm_proxy_mw.transports._httpx import HttpxTransport

__all__ = [
    "AiohttpTransport",
    "ApiKeyAuthenticator",
    "AuthMiddleware",
    "EchoTransport",
    "HealthPolicy",
    "HealthRegistry",
    "HttpxTransport",
    "LLMProxy",
    "Limit",
    "LimitsMiddleware",
    "LimitsPolicy",
    "MetricsMiddleware",
    "PoolLimits",
    "PrefixMount",
    "Principal",
    "Provider",
    "ProxyConfig",
    "ProxyMetrics",
    "RequestContext",
    "RequestContextMiddleware",
    "RetryMiddleware",
    "RetryPolicy",
    "Router",
    "RoutingMiddleware",
    "Timeouts",
    "UpstreamApp",
    "UpstreamRequest",
    "UpstreamResponse",
    "UpstreamTransport",
    "WireFormat",
    "build_proxy",
    "get_context",
    "load_config",
    "mount",
    "tuned_gc",
]


def __getattr__(name: str) -> object:
    # The httpx adapter (and httpx) load on first use, as llm_proxy_mw.transports does it.
    if name == "HttpxTransport":
        return transports.HttpxTransport
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
