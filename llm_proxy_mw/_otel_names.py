"""What the proxy's spans are called and which attributes they carry: the GenAI semantic
conventions (pinned in ``SEMCONV_VERSION``), read from the request context.

Names are plain strings: the semantic-conventions package moved its GenAI names to another
repository and marks them deprecated, and the proxy needs only the API. Nothing here imports
OpenTelemetry, so the builder can reason about the names without the ``otel`` extra.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "SCHEMA_URL",
    "SEMCONV_VERSION",
    "Server",
    "latest_experimental",
    "operation_of",
    "provider_name",
    "add_request_attributes",
    "server_of",
    "span_name",
]

#: The version of the OpenTelemetry semantic conventions (GenAI and HTTP client) followed.
SEMCONV_VERSION = "1.41.0"
SCHEMA_URL = f"https://opentelemetry.io/schemas/{SEMCONV_VERSION}"

#: The GenAI operation of each endpoint that has one (Responses creates a chat turn).
_OPERATIONS = {
    "/v1/chat/completions": "chat",
    "/v1/messages": "chat",
    "/v1/responses": "chat",
    "/v1/completions": "text_completion",
    "/v1/embeddings": "embeddings",
}
#: ``gen_ai.provider.name`` of each provider ``kind``: the API it speaks, which is all the
#: proxy knows of who serves it (an ``openai`` kind may be vLLM or Azure behind its URL).
_PROVIDER_NAMES = {"openai": "openai", "anthropic": "anthropic", "echo": "llm_proxy_mw.echo"}
#: The other endpoints' first path segment names their span (``files``, ``batches``, ...);
#: anything else is ``other``, so that a client cannot mint span names.
_OTHER_ENDPOINTS = frozenset(
    {
        "audio",
        "batches",
        "files",
        "fine_tuning",
        "images",
        "messages",
        "models",
        "moderations",
        "responses",
        "uploads",
        "vector_stores",
    }
)

#: The body members each request attribute comes from, in order of preference.
_MAX_TOKENS = ("max_completion_tokens", "max_tokens", "max_output_tokens")
_NUMBERS = (int, float)


def latest_experimental(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether ``OTEL_SEMCONV_STABILITY_OPT_IN`` lists ``gen_ai_latest_experimental``: then
    only the latest names are emitted, without the v1.36 ``gen_ai.system`` beside
    ``gen_ai.provider.name``."""
    values = environ.get("OTEL_SEMCONV_STABILITY_OPT_IN", "")
    return "gen_ai_latest_experimental" in (v.strip() for v in values.split(","))


def operation_of(route_path: str) -> str | None:
    """The ``gen_ai.operation.name`` of an endpoint; ``None`` for one that is not a GenAI call."""
    return _OPERATIONS.get(route_path)


#: A provider's ``server.address`` and ``server.port``.
Server = tuple[str, int]


def server_of(url: str) -> Server:
    """The host and port a provider's base URL names (the scheme's port if it names none;
    an empty host for a URL without one)."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.hostname or "", port


def provider_name(kind: str) -> str:
    """The ``gen_ai.provider.name`` of a provider of ``kind``."""
    return _PROVIDER_NAMES.get(kind, kind)


def span_name(route_path: str, method: str, model: str | None) -> str:
    """``{operation} {model}`` for a GenAI call (``chat gpt-4o-mini``); else the method and
    the endpoint's family (``GET files``, ``POST other``)."""
    operation = _OPERATIONS.get(route_path)
    if operation is not None:
        return f"{operation} {model}" if model else operation
    parts = route_path.split("/", 3)
    family = parts[2] if len(parts) > 2 and parts[2] in _OTHER_ENDPOINTS else "other"
    return f"{method} {family}"


def add_request_attributes(body: Mapping[str, Any], attributes: dict[str, Any]) -> None:
    """``gen_ai.request.max_tokens``, ``temperature`` and ``top_p``, when the body sets them
    (a bool is no number here, though Python's ``bool`` is an ``int``)."""
    for name in _MAX_TOKENS:
        if type(value := body.get(name)) is int:
            attributes["gen_ai.request.max_tokens"] = value
            break
    if type(temperature := body.get("temperature")) in _NUMBERS:
        attributes["gen_ai.request.temperature"] = temperature
    if type(top_p := body.get("top_p")) in _NUMBERS:
        attributes["gen_ai.request.top_p"] = top_p
