"""Typed errors: one tree of what the proxy renders, and the few signals it never renders.

Every error the proxy renders to a client is a ``ProxyError`` defined here. Each knows its HTTP
``status_code`` and a machine ``code``, and is rendered in the caller's wire format (OpenAI,
Anthropic, or RFC 6749 on the token endpoints). The codes, with the outcomes of the
provider's own answers (``outcome_for_status``), make ``OUTCOMES``: the closed set of the
metrics ``outcome`` label. Third-party exceptions are converted at exactly one boundary each:
aiohttp's and httpx's in ``llm_proxy_mw.transports`` for requests to providers, httpx's in
``llm_proxy_mw._http_fetch`` for the proxy's own fetches (JWKS, OAuth2 token endpoints);
nothing above those sees them.

    ProxyError                             500 internal_error
    ├── ClientRequestError                 4xx: the caller's request is at fault
    │   ├── InvalidRequestError            400 invalid_request
    │   │   └── UntranslatableError        400 unsupported_parameter (no equivalent at the provider)
    │   ├── TokenGrantError                400 invalid_grant (a refresh token that cannot be used)
    │   ├── UnsupportedGrantTypeError      400 unsupported_grant_type
    │   ├── AuthenticationError            401 authentication_error
    │   ├── PermissionDeniedError          403 permission_denied
    │   ├── NotFoundError                  404 not_found
    │   │   └── ModelNotFoundError         404 model_not_found
    │   ├── MethodNotAllowedError          405 method_not_allowed
    │   ├── RequestBodyTimeout             408 request_timeout (the body came too slowly)
    │   ├── TooManyTokenFamiliesError      409 too_many_token_families
    │   ├── RequestTooLargeError           413 request_too_large
    │   ├── UnsupportedMediaTypeError      415 unsupported_media_type
    │   └── RateLimitError                 429 rate_limit_exceeded (the principal's [limits])
    │       └── BudgetExceededError        429 budget_exceeded (its budget is spent)
    ├── TokenStoreUnavailableError         503 store_unavailable (the proxy's own store failed)
    ├── LimitsStoreUnavailableError        503 limits_unavailable (limits cannot be checked)
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

Four signals are never rendered; each is caught where named:

    ClientDisconnected    the client left: no response (RequestContextMiddleware; metrics: 499)
    StoreError            a store failed: TokenStoreUnavailableError, or the history retries
    FetchError            an own fetch failed: UpstreamAuthError, or the JWKS keys stay as they are
    StartupError          the proxy cannot start: its lifespan fails, the host or server exits

Two exceptions live elsewhere because no proxied request ever meets them: ``ConfigError``
(``llm_proxy_mw.config``, a config refused at load) and ``TokenRefreshError``
(``llm_proxy_mw.client``, raised in the host's own client code).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

__all__ = [
    "AuthenticationError",
    "BudgetExceededError",
    "ClientDisconnected",
    "ClientRequestError",
    "FetchError",
    "InvalidRequestError",
    "LimitsStoreUnavailableError",
    "MethodNotAllowedError",
    "ModelNotFoundError",
    "NotFoundError",
    "OUTCOMES",
    "PermissionDeniedError",
    "ProviderUnavailableError",
    "ProxyError",
    "RateLimitError",
    "RequestBodyTimeout",
    "RequestTooLargeError",
    "StartupError",
    "StoreError",
    "TokenGrantError",
    "TokenStoreUnavailableError",
    "TooManyTokenFamiliesError",
    "UnsupportedGrantTypeError",
    "UnsupportedMediaTypeError",
    "UntranslatableError",
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
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.provider = provider
        self.headers = headers or {}
        self.param = param  # the request parameter at fault, when one is (OpenAI's ``param``)


class ClientRequestError(ProxyError):
    """The request itself is wrong; retrying it elsewhere would not help."""

    status_code = 400
    code = "invalid_request"
    openai_type = "invalid_request_error"
    anthropic_type = "invalid_request_error"


class InvalidRequestError(ClientRequestError):
    """Malformed JSON, a non-object body, a field of the wrong type, a bad path."""


class UntranslatableError(InvalidRequestError):
    """A parameter the chosen provider's API has no equivalent for (``n > 1`` to Anthropic):
    refused before anything is sent, rather than dropped in silence."""

    code = "unsupported_parameter"


class TokenGrantError(ClientRequestError):
    """A refresh token that cannot be honoured: unknown, expired, revoked or already used.
    The code is RFC 6749's, which the token endpoint answers."""

    code = "invalid_grant"


class UnsupportedGrantTypeError(ClientRequestError):
    """A token request for a grant the proxy does not issue (only ``refresh_token``)."""

    code = "unsupported_grant_type"


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


class MethodNotAllowedError(ClientRequestError):
    """An endpoint called with a method it does not take; ``headers`` carry ``allow``."""

    status_code = 405
    code = "method_not_allowed"


class RequestBodyTimeout(ClientRequestError):
    """The client did not send its whole body in time (``request_body_timeout``)."""

    status_code = 408
    code = "request_timeout"
    anthropic_type = "timeout_error"


class TooManyTokenFamiliesError(ClientRequestError):
    """The owner holds ``max_families_per_owner`` live families already. 409: the request
    conflicts with the owner's current families and revoking one resolves it (AWS IAM
    answers a key over its limit so); not 429, which says waiting helps, nor 403, which
    says the caller may not mint at all. The OpenAI SDK retries a 409, so it is told not to.
    """

    status_code = 409
    code = "too_many_token_families"

    def __init__(
        self, message: str, *, provider: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        headers = {"x-should-retry": "false", **(headers or {})}
        super().__init__(message, provider=provider, headers=headers)


class RequestTooLargeError(ClientRequestError):
    status_code = 413
    code = "request_too_large"
    anthropic_type = "request_too_large"


class UnsupportedMediaTypeError(ClientRequestError):
    """A body of a content type the endpoint does not take (a JSON endpoint takes JSON)."""

    status_code = 415
    code = "unsupported_media_type"


class RateLimitError(ClientRequestError):
    """The principal is over a limit of its own (``[limits]``): rpm, tpm or concurrency.
    ``headers`` carry ``retry-after``."""

    status_code = 429
    code = "rate_limit_exceeded"
    openai_type = "rate_limit_error"
    anthropic_type = "rate_limit_error"


class BudgetExceededError(RateLimitError):
    """The principal's budget for the period is spent: retrying will not help until the
    period ends, so the SDKs are told not to."""

    code = "budget_exceeded"
    openai_type = "insufficient_quota"

    def __init__(
        self, message: str, *, provider: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        headers = {"x-should-retry": "false", **(headers or {})}
        super().__init__(message, provider=provider, headers=headers)


class TokenStoreUnavailableError(ProxyError):
    """The token store cannot be reached; token operations fail until it is back."""

    status_code = 503
    code = "store_unavailable"


class LimitsStoreUnavailableError(ProxyError):
    """The store of the limits cannot be reached and ``on_store_error = "deny"``."""

    status_code = 503
    code = "limits_unavailable"


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


class ClientDisconnected(Exception):
    """The client went away; the request ends without a response."""


class StoreError(Exception):
    """A store operation failed (unreachable, locked, corrupt). The message names the store
    by its URL with any password redacted; the backend's own exception is the ``__cause__``."""


class FetchError(Exception):
    """A fetch of the proxy's own (``_http_fetch``) got no answer it could read whole. The
    message completes "its endpoint ...": ``timed out``, ``failed (ConnectError)``,
    ``sent more than 1048576 bytes``."""


#: Outcomes of an attempt the provider answered with a status the SDKs retry. A provider's
#: 408 is the same outcome as a timeout the proxy hit itself.
_RETRIED_STATUS_OUTCOMES = {
    408: UpstreamTimeout.code,
    409: "conflict",
    429: "rate_limited",
    529: "overloaded",
}


class StartupError(Exception):
    """The proxy cannot start (its ``[store]`` does not open); the message says why, in one
    line."""


def outcome_for_status(status: int) -> str:
    """The outcome of an attempt the provider answered with ``status``, one of ``OUTCOMES``."""
    if status < 400:
        return "success"
    outcome = _RETRIED_STATUS_OUTCOMES.get(status)
    if outcome is not None:
        return outcome
    return "client_error" if status < 500 else "server_error"


def _tree(root: type[ProxyError]) -> Iterator[type[ProxyError]]:
    yield root
    for child in root.__subclasses__():
        yield from _tree(child)


#: Every value of the metrics ``outcome`` label: the codes of the tree above, the outcomes
#: of the provider's answers, and ``other``, which metrics count a code from outside the
#: tree under (a subclass defined elsewhere with a code of its own).
OUTCOMES: frozenset[str] = frozenset(
    {
        *(cls.code for cls in _tree(ProxyError)),
        *(outcome_for_status(status) for status in range(100, 600)),
        "other",
    }
)
