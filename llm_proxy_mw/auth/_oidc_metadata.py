"""The OAuth login's Authlib registry, refusing endpoints discovered over plain ``http://``.

``server_metadata_url`` is checked with the config; the endpoints its document names are not
known until it is fetched. Every Authlib step (authorization URL, token exchange and refresh,
the JWKS for the ID token, userinfo) reads them through ``load_server_metadata``, so that is
where an ``http://`` endpoint on another host is refused: a login would otherwise send the
code, the client secret and the tokens in clear, and take its signing keys from anyone on
the path. The refusal is an ``UpstreamError`` (the provider is misconfigured, not the user)
and a log line naming the endpoint, on every attempt while the metadata says so.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from authlib.integrations.starlette_client import OAuth, StarletteOAuth2App

from llm_proxy_mw._loopback import LOOPBACK_RULE, https_or_loopback
from llm_proxy_mw.errors import UpstreamError

__all__ = ["DISCOVERED_ENDPOINTS", "CheckedOAuth", "plain_http_endpoints"]

logger = logging.getLogger("llm_proxy_mw")

#: The metadata's endpoints the login uses (OpenID Connect Discovery 1.0 §3).
DISCOVERED_ENDPOINTS = ("authorization_endpoint", "token_endpoint", "jwks_uri", "userinfo_endpoint")


def plain_http_endpoints(metadata: Mapping[str, Any]) -> list[str]:
    """The names of the endpoints in ``metadata`` that are not https or loopback http."""
    return [
        name
        for name in DISCOVERED_ENDPOINTS
        if name in metadata
        and not (isinstance(metadata[name], str) and https_or_loopback(metadata[name]))
    ]


class _CheckedOAuth2App(StarletteOAuth2App):  # type: ignore[misc]  # Authlib is untyped
    async def load_server_metadata(self) -> dict[str, Any]:
        metadata: dict[str, Any] = await super().load_server_metadata()
        refused = plain_http_endpoints(metadata)
        if refused:
            named = ", ".join(f"{name} {str(metadata[name])[:200]!r}" for name in refused)
            logger.warning("oauth provider %s: %s refused: %s", self.name, named, LOOPBACK_RULE)
            raise UpstreamError("The identity provider's endpoints are not secure (plain http).")
        return metadata


class CheckedOAuth(OAuth):  # type: ignore[misc]  # Authlib is untyped
    """Authlib's Starlette ``OAuth`` registry whose OAuth2 apps check discovered endpoints."""

    oauth2_client_cls = _CheckedOAuth2App
