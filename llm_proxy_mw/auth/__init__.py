"""Authentication: principals, API keys, and the middleware that requires them."""

from llm_proxy_mw.auth._api_keys import ApiKeyAuthenticator
from llm_proxy_mw.auth._middleware import (
    Authenticator,
    AuthenticatorChain,
    AuthMiddleware,
    presented_secret,
)
from llm_proxy_mw.auth._principal import Principal

__all__ = [
    "ApiKeyAuthenticator",
    "AuthMiddleware",
    "Authenticator",
    "AuthenticatorChain",
    "Principal",
    "presented_secret",
]
