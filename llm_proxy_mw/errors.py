"""Typed errors, one hierarchy, each rendered in the caller's wire format.

Every failure the proxy itself produces is one of these classes. Each knows its HTTP
``status_code`` and a machine ``code``; the codes form the closed set that metrics use as the
``outcome`` label. Third-party exceptions (aiohttp, httpx) are converted at exactly one
boundary each, in ``llm_proxy_mw.transports`` (and, for a provider's OAuth2 token endpoint,
in the token source of ``llm_proxy_mw.auth``); nothing above that sees them.

    ProxyError
    ├── ClientRequestError                 4xx: the caller's request is at fault
    │   ├── InvalidRequestError            400 invalid_request
    │   ├── AuthenticationError            401 authentication_error
    │   ├── PermissionDeniedError          403 permission_denied
    │   ├── NotFoundError                  404 not_found
    │   │   └── ModelNotFoundError         404 model_not_found
    │   ├── RequestBodyTimeout             408 request_timeout (the body came too slowly)
    │   ├── RequestTooLargeError           413 request_too_large
    │   └── UnsupportedMediaTypeError      415 unsupported_media_type
    └── UpstreamError                      5xx: the provider could not be reached or failed
        ├── UpstreamAuthError              502 upstream_auth_error (no OAuth token for it)
        ├── UpstreamConnectError           502 connect_error
        ├── UpstreamProtocolError          502 protocol_error (reset, truncated, malformed)
        ├── UpstreamTimeout                504 timeout
        │   ├── UpstreamConnectTimeout     504 timeout
        │   ├── UpstreamReadTimeout        504 timeout
        │   ├── UpstreamWriteTimeout       504 timeout
        │   └── UpstreamPoolTimeout        503 pool_timeout
        └── ProviderUnavailableError       503 provider_unavailable (no deployment can serve)

Outside the tree, never rendered: ``StartupError``, raised by the proxy's lifespan when it
cannot start (the host, or the ASGI server, then exits).
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "AuthenticationError",
    "ClientRequestError",
    "InvalidRequestError",
    "ModelNotFoundError",
    "NotFoundError",
    "PermissionDeniedError",
    "ProviderUnavailableError",
    "ProxyError",
    "RequestBodyTimeout",
    "RequestTooLargeError",
    "StartupError",
    "UnsupportedMediaTypeError",
    "UpstreamAuthError",
    "UpstreamConnectError",
    "UpstreamConnectTimeout",
    "UpstreamError",
    "UpstreamPoolTimeout",
    "UpstreamProtocolError",
    "UpstreamReadTimeout",
    "UpstreamTimeout",
    "UpstreamWriteTimeout",
    "outcome_for_status",
]


class ProxyError(Exception):
    """Base of every error the proxy renders to a client.

    ``message`` is shown to the client, so it must never contain a secret. ``headers`` are
    extra response headers (``retry-after``, ``www-authenticate``).
    """

    status_code: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    openai_type: ClassVar[str] = "api_error"
    anthropic_type: ClassVar[str] = "api_error"

    def __init__(
        self,
        message: str,
        *,
        provider: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.provider = provider
        self.headers = headers or {}


class ClientRequestError(ProxyError):
    """The request itself is wrong; retrying it elsewhere would not help."""

    status_code = 400
    code = "invalid_request"
    openai_type = "invalid_request_error"
    anthropic_type = "invalid_request_error"


class InvalidRequestError(ClientRequestError):
    """Malformed JSON, a non-object body, a field of the wrong type, a bad path."""


class AuthenticationError(ClientRequestError):
    status_code = 401
    code = "authentication_error"
    openai_type = "authentication_error"
    anthropic_type = "authentication_error"


class PermissionDeniedError(ClientRequestError):
    status_code = 403
    code = "permission_denied"
    openai_type = "permission_error"
    anthropic_type = "permission_error"


class NotFoundError(ClientRequestError):
    status_code = 404
    code = "not_found"
    openai_type = "not_found_error"
    anthropic_type = "not_found_error"


class ModelNotFoundError(NotFoundError):
    code = "model_not_found"


class RequestBodyTimeout(ClientRequestError):
    """The client did not send its whole body in time (``request_body_timeout``)."""

    status_code = 408
    code = "request_timeout"
    anthropic_type = "timeout_error"


class RequestTooLargeError(ClientRequestError):
    status_code = 413
    code = "request_too_large"
    anthropic_type = "request_too_large"


class UnsupportedMediaTypeError(ClientRequestError):
    """A body of a content type the endpoint does not take (a JSON endpoint takes JSON)."""

    status_code = 415
    code = "unsupported_media_type"


class UpstreamError(ProxyError):
    """The provider could not be reached, or broke the protocol."""

    status_code = 502
    code = "upstream_error"


class UpstreamAuthError(UpstreamError):
    """The proxy could not obtain its own credentials for the provider (OAuth2 token)."""

    code = "upstream_auth_error"


class UpstreamConnectError(UpstreamError):
    code = "connect_error"


class UpstreamProtocolError(UpstreamError):
    code = "protocol_error"


class UpstreamTimeout(UpstreamError):
    status_code = 504
    code = "timeout"
    openai_type = "timeout"
    anthropic_type = "timeout_error"


class UpstreamConnectTimeout(UpstreamTimeout):
    pass


class UpstreamReadTimeout(UpstreamTimeout):
    pass


class UpstreamWriteTimeout(UpstreamTimeout):
    pass


class UpstreamPoolTimeout(UpstreamTimeout):
    status_code = 503
    code = "pool_timeout"


class ProviderUnavailableError(UpstreamError):
    status_code = 503
    code = "provider_unavailable"
    anthropic_type = "overloaded_error"


class StartupError(Exception):
    """The proxy cannot start (its ``[store]`` does not open); the message says why, in one
    line."""


def outcome_for_status(status: int) -> str:
    """The attempt outcome of an upstream HTTP status, from the same closed set of codes."""
    if status < 400:
        return "success"
    if status == 429:
        return "rate_limited"
    if status == 408:
        return "timeout"
    if status == 409:
        return "conflict"
    if status == 529:
        return "overloaded"
    if status < 500:
        return "client_error"
    return "server_error"
