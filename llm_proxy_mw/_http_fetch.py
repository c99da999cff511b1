"""The proxy's own small HTTP fetches: an issuer's JWKS, a provider's OAuth2 access token.

Requests to providers go through ``llm_proxy_mw.transports``; this is the one other module
that speaks httpx, so auth needs no HTTP client of its own. Every fetch has one deadline for
the whole exchange (a server that trickles its answer cannot hold it longer), reads at most
``max_bytes`` of the body, and never follows a redirect: a 3xx comes back as it is, which no
caller accepts, so a credential never goes to another host. httpx's exceptions become
``FetchError`` here and nowhere else.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import httpx

from llm_proxy_mw.errors import FetchError

__all__ = ["MAX_BODY_BYTES", "Fetched", "HttpFetcher"]

#: The most of an answer read: a JWKS of a few dozen keys or a token is a few kilobytes.
MAX_BODY_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Fetched:
    """An answer, read whole."""

    status: int
    body: bytes

    def json(self) -> Any:
        """The body as JSON; ``None`` when it is not JSON or is nested too deep to parse."""
        try:
            return json.loads(self.body)
        except (ValueError, RecursionError):
            return None


class HttpFetcher:
    """The fetches of one component (an issuer's key cache, a token source).

    ``timeout`` is in seconds for a whole fetch. ``transport`` (an
    ``httpx.AsyncBaseTransport``) is injectable for tests. The client opens on first use and
    ``aclose`` closes it; a later fetch opens it again.
    """

    def __init__(
        self,
        *,
        timeout: float,
        transport: httpx.AsyncBaseTransport | None = None,
        max_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        self.timeout = timeout
        self.max_bytes = max_bytes
        self._transport = transport
        self._client: httpx.AsyncClient | None = None

    @property
    def is_open(self) -> bool:
        return self._client is not None

    async def get(self, url: str) -> Fetched:
        return await self._fetch("GET", url)

    async def post_form(self, url: str, form: dict[str, str]) -> Fetched:
        """POST ``form`` url-encoded, asking for JSON."""
        return await self._fetch("POST", url, data=form, headers={"accept": "application/json"})

    async def _fetch(self, method: str, url: str, **request: Any) -> Fetched:
        if self._client is None:
            # No timeout of httpx's own: the deadline below covers every phase at once.
            self._client = httpx.AsyncClient(
                transport=self._transport, timeout=None, follow_redirects=False
            )
        try:
            async with (
                asyncio.timeout(self.timeout),
                self._client.stream(method, url, **request) as response,
            ):
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > self.max_bytes:
                        raise FetchError(f"sent more than {self.max_bytes} bytes")
                return Fetched(response.status_code, bytes(body))
        except (TimeoutError, httpx.TimeoutException):
            raise FetchError("timed out") from None
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise FetchError(f"failed ({type(exc).__name__})") from None

    async def aclose(self) -> None:
        """Close the client. Idempotent."""
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()
