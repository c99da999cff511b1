"""A configured provider at run time: its transport, its credentials, its URL rules.

Everything that depends only on the config is computed once here, so the hot path does no
string building beyond the request's own path: the URL prefix, the credential headers, the
set of wire formats it speaks.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import quote

from llm_proxy_mw.config import ProviderConfig
from llm_proxy_mw.errors import InvalidRequestError
from llm_proxy_mw.transports import AiohttpTransport, EchoTransport, UpstreamTransport
from llm_proxy_mw.wire import WireFormat

__all__ = ["HOP_BY_HOP", "Provider", "forward_request_headers", "upstream_path"]

#: RFC 9110 §7.6.1 connection-specific fields, plus the ones RFC 7230 still lists.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)

#: Request headers that never reach a provider: the client's own credentials and cookies,
#: what the transport sets itself, and where the client is.
_DROPPED_REQUEST = HOP_BY_HOP | {
    "authorization",
    "x-api-key",
    "cookie",
    "host",
    "content-length",
    "expect",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-real-ip",
}

_SEGMENT_SAFE = "!$&'()*+,;=:@-._~"

ANTHROPIC_VERSION = "2023-06-01"


def connection_listed(headers: Iterable[tuple[bytes, bytes]]) -> frozenset[str]:
    """Header names a ``Connection`` header marks as hop-by-hop."""
    names: set[str] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            names.update(n.strip().lower() for n in value.decode("latin-1").split(","))
    return frozenset(names)


def upstream_path(route_path: str) -> str:
    """The encoded path below the provider's base URL for a ``/v1/...`` route path.

    Empty and ``.`` segments are dropped; ``..`` is refused, so no request can leave the
    provider's base path, however it was encoded (the server already decoded ``%2e%2e``).
    """
    segments = route_path.split("/")[2:]
    kept = []
    for segment in segments:
        if segment in ("", "."):
            continue
        if segment == ".." or "\\" in segment:
            raise InvalidRequestError("The request path may not contain '..' or '\\'.")
        kept.append(quote(segment, safe=_SEGMENT_SAFE))
    return "/" + "/".join(kept)


@dataclass(slots=True)
class Provider:
    """One upstream deployment, ready to send to."""

    name: str
    config: ProviderConfig
    transport: UpstreamTransport
    wire_formats: frozenset[WireFormat]
    credentials: list[tuple[str, str]] = field(default_factory=list)
    base_url: str = ""
    dropped_request_headers: frozenset[bytes] = frozenset()

    @classmethod
    def from_config(
        cls, name: str, config: ProviderConfig, transport: UpstreamTransport | None = None
    ) -> Provider:
        if transport is None:
            if config.kind == "echo":
                transport = EchoTransport()
            else:
                transport = AiohttpTransport(pool=config.pool, timeout=config.timeout)
        formats = {
            "openai": frozenset({WireFormat.OPENAI}),
            "anthropic": frozenset({WireFormat.ANTHROPIC}),
            "echo": frozenset(WireFormat),
        }[config.kind]
        credentials = [(k.lower(), v) for k, v in config.headers.items()]
        if config.api_key is not None:
            secret = config.api_key.get_secret_value()
            if config.kind == "anthropic":
                credentials.append(("x-api-key", secret))
            else:
                credentials.append(("authorization", f"Bearer {secret}"))
        dropped = frozenset(
            n.encode("latin-1") for n in _DROPPED_REQUEST | {n for n, _ in credentials}
        )
        return cls(name, config, transport, formats, credentials, config.url, dropped)

    def __repr__(self) -> str:
        return f"Provider(name={self.name!r}, kind={self.config.kind!r}, url={self.base_url!r})"

    def url_for(self, route_path: str, query_string: bytes) -> str:
        url = self.base_url + upstream_path(route_path)
        if query_string:
            url += "?" + query_string.decode("latin-1")
        return url

    def request_headers(self, headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
        """The client's headers minus hop-by-hop and credentials, plus the provider's own."""
        return forward_request_headers(headers, self)


def forward_request_headers(
    headers: Iterable[tuple[bytes, bytes]], provider: Provider
) -> list[tuple[str, str]]:
    """ASGI request header names are lowercase bytes, so they are compared as they are."""
    dropped = provider.dropped_request_headers
    out: list[tuple[str, str]] = []
    has_version = False
    for name, value in headers:
        if name in dropped:
            if name == b"connection":
                listed = connection_listed([(name, value)])
                out = [(n, v) for n, v in out if n not in listed]
                dropped = dropped | {n.encode("latin-1") for n in listed}
            continue
        if name == b"anthropic-version":
            has_version = True
        out.append((name.decode("latin-1"), value.decode("latin-1")))
    if provider.config.kind == "anthropic" and not has_version:
        out.append(("anthropic-version", ANTHROPIC_VERSION))
    out.extend(provider.credentials)
    return out
