"""A configured provider at run time: its transport, its credentials, its URL rules.

Everything that depends only on the config is computed once here, so the hot path does no
string building beyond the request's own path: the URL prefix, the credential headers, the
set of wire formats it speaks. Credentials that expire (an OAuth2 token) come from a
``CredentialSource`` the upstream app awaits per request; static ones are plain headers.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import quote

from llm_proxy_mw.apis import Api
from llm_proxy_mw.config import ConfigError, ProviderConfig
from llm_proxy_mw.errors import InvalidRequestError
from llm_proxy_mw.transports import AiohttpTransport, EchoTransport, UpstreamTransport
from llm_proxy_mw.wire import WireFormat

__all__ = [
    "CredentialSource",
    "FORWARDED_REQUEST_HEADERS",
    "FORWARDED_REQUEST_PREFIXES",
    "HOP_BY_HOP",
    "Provider",
    "TRACE_CONTEXT_HEADERS",
    "forward_request_headers",
    "upstream_path",
]

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

#: The client headers a provider gets: what the OpenAI and Anthropic APIs and their official
#: SDKs use, and trace context. Everything else is dropped: the client's credentials, cookies
#: and forwarding headers, what the transport sets itself (``host``, ``content-length``), and
#: headers that would change what the provider does or whom it bills (``x-original-url``,
#: ``x-http-method-override``, ``openai-organization``, ``openai-project``, ...). The
#: provider's configured ``headers`` are added on top, so the operator picks the org or
#: project. Names are ASGI's lowercase bytes, compared as they are.
FORWARDED_REQUEST_HEADERS = frozenset(
    {
        b"accept",
        b"accept-encoding",  # bytes pass through undecoded: the client decodes what it asked for
        b"content-type",
        b"user-agent",
        b"idempotency-key",
        b"openai-beta",
        b"x-client-request-id",
        b"traceparent",
        b"tracestate",
        b"baggage",
    }
)

#: Header families forwarded by prefix: the SDKs' ``x-stainless-*`` (OS, runtime, retry count,
#: timeouts) and Anthropic's ``anthropic-version``, ``anthropic-beta`` and the like.
FORWARDED_REQUEST_PREFIXES = (b"anthropic-", b"x-stainless-")
#: The client's W3C trace context, which a traced request's own replaces (``_otel_attempt``).
TRACE_CONTEXT_HEADERS = frozenset({b"traceparent", b"tracestate"})
_FORWARDED_BUT_TRACE_CONTEXT = FORWARDED_REQUEST_HEADERS - TRACE_CONTEXT_HEADERS

#: Members of those families that pick the workspace or organization a key bills, as
#: ``openai-organization`` and ``openai-project`` do for OpenAI: the operator's to set.
_UNFORWARDED_IN_FAMILIES = frozenset({b"anthropic-workspace-id", b"anthropic-organization-id"})

_SEGMENT_SAFE = "!$&'()*+,;=:@-._~"

ANTHROPIC_VERSION = "2023-06-01"


def connection_listed(value: bytes) -> frozenset[str]:
    """Header names a ``Connection`` header value marks as hop-by-hop (none for the usual
    ``keep-alive``, ``close`` or ``upgrade``; callers on the hot path test those first)."""
    if value.lower() in PLAIN_CONNECTION_VALUES:
        return frozenset()
    return frozenset(n.strip().lower() for n in value.decode("latin-1").split(","))


#: The usual ``Connection`` values name no other header: nothing to parse.
PLAIN_CONNECTION_VALUES = frozenset({b"keep-alive", b"close", b"upgrade"})


def upstream_path(route_path: str) -> str:
    """The encoded path below the provider's base URL for a ``/v1/...`` route path.

    Empty and ``.`` segments are dropped; ``..`` is refused, so no request can leave the
    provider's base path, however it was encoded (the server already decoded ``%2e%2e``).
    """
    cached = _PATHS.get(route_path)
    if cached is not None:
        return cached
    segments = route_path.split("/")[2:]
    kept = []
    for segment in segments:
        if segment in ("", "."):
            continue
        # ``..;x`` is ``..`` to servlet-style servers (Tomcat, older Jetty).
        if segment == ".." or "\\" in segment or segment.split(";", 1)[0] in ("..", "."):
            raise InvalidRequestError("The request path may not contain '..' or '\\'.")
        kept.append(quote(segment, safe=_SEGMENT_SAFE))
    path = "/" + "/".join(kept)
    if len(_PATHS) < _PATHS_CACHED:
        _PATHS[route_path] = path
    return path


#: A proxy sees few distinct paths; the first ones are kept encoded (bounded: paths with ids
#: such as ``/v1/files/{id}`` must not grow it without limit).
_PATHS: dict[str, str] = {}
_PATHS_CACHED = 256


class CredentialSource(Protocol):
    """Credential headers that change over time, such as an OAuth2 access token.

    ``headers`` is awaited once per upstream request, so it must answer from a cache;
    it raises an ``UpstreamError`` (``UpstreamAuthError``) when it has no credentials.
    """

    async def headers(self) -> list[tuple[str, str]]: ...

    async def aclose(self) -> None: ...


@dataclass(slots=True)
class Provider:
    """One upstream deployment, ready to send to.

    ``apis`` are the APIs it speaks natively (a client of another is translated);
    ``wire_formats`` the formats of the endpoints without an ``Api`` (embeddings, files,
    count_tokens), which reach it only natively.

    ``credentials`` are its static credential headers and configured ``headers``, which
    replace a client header of the same name (``replaced_request_headers``);
    ``credential_source``, when set (``[providers.<name>.oauth]``), adds the ones fetched at
    run time.
    """

    name: str
    config: ProviderConfig
    transport: UpstreamTransport
    wire_formats: frozenset[WireFormat]
    credentials: list[tuple[str, str]] = field(default_factory=list)
    base_url: str = ""
    replaced_request_headers: frozenset[bytes] = frozenset()
    credential_source: CredentialSource | None = None
    apis: frozenset[Api] = frozenset()

    @classmethod
    def from_config(
        cls,
        name: str,
        config: ProviderConfig,
        transport: UpstreamTransport | None = None,
        *,
        credential_source: CredentialSource | None = None,
    ) -> Provider:
        """The provider of ``config``; ``credential_source`` overrides the one built from
        its ``oauth`` section (tests inject a fake token endpoint and clock this way)."""
        if transport is None:
            if config.kind == "echo":
                transport = EchoTransport()
            else:
                transport = AiohttpTransport(
                    pool=config.pool.limits(), timeout=config.timeout.timeouts()
                )
        formats = {
            "openai": frozenset({WireFormat.OPENAI}),
            "anthropic": frozenset({WireFormat.ANTHROPIC}),
            "echo": frozenset(WireFormat),
        }[config.kind]
        apis = {
            "openai": frozenset({Api.CHAT, Api.RESPONSES} if config.responses_api else {Api.CHAT}),
            "anthropic": frozenset({Api.MESSAGES}),
            "echo": frozenset(Api),
        }[config.kind]
        credentials = [(k.lower(), v) for k, v in config.headers.items()]
        if config.api_key is not None:
            secret = config.api_key.get_secret_value()
            if config.kind == "anthropic":
                credentials.append(("x-api-key", secret))
            else:
                credentials.append(("authorization", f"Bearer {secret}"))
        if config.oauth is not None and credential_source is None:
            # Imported here: only providers with an OAuth section need the token client.
            from llm_proxy_mw.auth._client_credentials import ClientCredentialsTokenSource

            credential_source = ClientCredentialsTokenSource(config.oauth, provider=name)
        if credential_source is not None and any(n == "authorization" for n, _ in credentials):
            raise ConfigError(
                f"provider {name!r}: its OAuth token and its api_key or headers would both "
                "set Authorization; keep one"
            )
        replaced = frozenset(n.encode("latin-1") for n, _ in credentials)
        return cls(
            name,
            config,
            transport,
            formats,
            credentials,
            config.url,
            replaced,
            credential_source,
            apis,
        )

    def __repr__(self) -> str:
        return f"Provider(name={self.name!r}, kind={self.config.kind!r}, url={self.base_url!r})"

    def url_for(self, route_path: str, query_string: bytes) -> str:
        url = self.base_url + upstream_path(route_path)
        if query_string:
            url += "?" + query_string.decode("latin-1")
        return url

    def request_headers(
        self, headers: Iterable[tuple[bytes, bytes]], *, trace_context: bool = True
    ) -> list[tuple[str, str]]:
        """The client's headers that the APIs use, plus the provider's own; without its
        ``traceparent`` and ``tracestate`` when ``trace_context`` is false (a traced request
        sends its own)."""
        return forward_request_headers(headers, self, trace_context)


def forward_request_headers(
    headers: Iterable[tuple[bytes, bytes]], provider: Provider, trace_context: bool = True
) -> list[tuple[str, str]]:
    """The allowed client headers (``FORWARDED_REQUEST_HEADERS``, less the trace context
    unless ``trace_context``, and the prefixed families), minus those ``Connection`` names
    and those the provider sets, then the provider's own."""
    replaced = provider.replaced_request_headers
    allowed = FORWARDED_REQUEST_HEADERS if trace_context else _FORWARDED_BUT_TRACE_CONTEXT
    out: list[tuple[str, str]] = []
    has_version = False
    for name, value in headers:
        if name in allowed or (
            name.startswith(FORWARDED_REQUEST_PREFIXES) and name not in _UNFORWARDED_IN_FAMILIES
        ):
            if name in replaced:
                continue
            if name == b"anthropic-version":
                has_version = True
            out.append((name.decode("latin-1"), value.decode("latin-1")))
        elif name == b"connection" and value.lower() not in PLAIN_CONNECTION_VALUES:
            # Named in Connection: hop-by-hop, even if allowed (it may come before or after).
            listed = connection_listed(value)
            out = [(n, v) for n, v in out if n not in listed]
            replaced = replaced | {n.encode("latin-1") for n in listed}
            if "anthropic-version" in listed:
                has_version = False
    if (
        provider.config.kind == "anthropic"
        and not has_version
        and b"anthropic-version" not in provider.replaced_request_headers
    ):
        out.append(("anthropic-version", ANTHROPIC_VERSION))
    out.extend(provider.credentials)
    return out
