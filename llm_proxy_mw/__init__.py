"""llm_proxy_mw: an LLM proxy as composable pure-ASGI middlewares over a pluggable transport."""

from llm_proxy_mw.auth import ApiKeyAuthenticator, AuthMiddleware, Principal
from llm_proxy_mw.builder import LLMProxy, build_proxy
from llm_proxy_mw.config import ProxyConfig, load_config
from llm_proxy_mw.context import RequestContext, RequestContextMiddleware, get_context
from llm_proxy_mw.health import HealthPolicy, HealthRegistry
from llm_proxy_mw.metrics import MetricsMiddleware, ProxyMetrics
from llm_proxy_mw.providers import Provider
from llm_proxy_mw.retry import RetryMiddleware, RetryPolicy
from llm_proxy_mw.routing import Router, RoutingMiddleware
from llm_proxy_mw.transports import (
    AiohttpTransport,
    EchoTransport,
    HttpxTransport,
    UpstreamRequest,
    UpstreamResponse,
    UpstreamTransport,
)
from llm_proxy_mw.upstream import UpstreamApp
from llm_proxy_mw.wire import WireFormat

__all__ = [
    "AiohttpTransport",
    "ApiKeyAuthenticator",
    "AuthMiddleware",
    "EchoTransport",
    "HealthPolicy",
    "HealthRegistry",
    "HttpxTransport",
    "LLMProxy",
    "MetricsMiddleware",
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
    "UpstreamApp",
    "UpstreamRequest",
    "UpstreamResponse",
    "UpstreamTransport",
    "WireFormat",
    "build_proxy",
    "get_context",
    "load_config",
]
