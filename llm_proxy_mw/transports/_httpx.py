"""Adapter: any ``httpx.AsyncBaseTransport`` as an upstream transport.

Tests plug ``respx`` or ``httpx.MockTransport`` here; users plug their own transport (a
proxying one, a custom TLS setup). httpx exceptions are converted to ours here and nowhere
else.
"""

from __future__ import annotations

import httpx

from llm_proxy_mw.errors import (
    UpstreamConnectError,
    UpstreamConnectTimeout,
    UpstreamError,
    UpstreamPoolTimeout,
    UpstreamProtocolError,
    UpstreamReadTimeout,
    UpstreamWriteTimeout,
)
from llm_proxy_mw.transports._base import UpstreamRequest, UpstreamResponse
from llm_proxy_mw.transports._limits import PoolLimits, Timeouts

__all__ = ["HttpxTransport"]

_CONVERSIONS: tuple[tuple[type[httpx.HTTPError], type[UpstreamError], str], ...] = (
    (httpx.ConnectTimeout, UpstreamConnectTimeout, "Timed out connecting to the provider."),
    (httpx.ReadTimeout, UpstreamReadTimeout, "Timed out waiting for the provider to send data."),
    (httpx.WriteTimeout, UpstreamWriteTimeout, "Timed out sending the request to the provider."),
    (httpx.PoolTimeout, UpstreamPoolTimeout, "Timed out waiting for a free connection."),
    (httpx.ConnectError, UpstreamConnectError, "Could not connect to the provider."),
    (httpx.RemoteProtocolError, UpstreamProtocolError, "The provider broke the HTTP protocol."),
    (httpx.ReadError, UpstreamProtocolError, "The connection to the provider failed."),
    (httpx.WriteError, UpstreamProtocolError, "The connection to the provider failed."),
)


def _convert(exc: httpx.HTTPError) -> UpstreamError:
    """The one place httpx's exceptions become ours. Messages carry no headers or keys."""
    for source, target, message in _CONVERSIONS:
        if isinstance(exc, source):
            return target(message)
    return UpstreamProtocolError(f"The provider request failed: {type(exc).__name__}.")


class HttpxTransport:
    """``UpstreamTransport`` over an ``httpx.AsyncBaseTransport``.

    Without one it builds an ``httpx.AsyncHTTPTransport`` from the pool settings. Redirects
    are never followed (a transport does not follow them), so credentials never go to
    another host.
    """

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        pool: PoolLimits = PoolLimits(),
        timeout: Timeouts = Timeouts(),
    ) -> None:
        self._transport = transport or httpx.AsyncHTTPTransport(
            limits=httpx.Limits(
                max_connections=pool.max_connections,
                max_keepalive_connections=pool.max_keepalive_connections,
                keepalive_expiry=pool.keepalive_expiry,
            )
        )
        self._timeout = {
            "connect": timeout.connect,
            "read": timeout.read,
            "write": timeout.write,
            "pool": timeout.pool,
        }

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        try:
            httpx_request = httpx.Request(
                request.method,
                request.url,
                # Header values are latin-1 (as ASGI gives them); httpx would encode str as ASCII.
                headers=[(n.encode("latin-1"), v.encode("latin-1")) for n, v in request.headers],
                content=request.body,
                extensions={"timeout": self._timeout},
            )
        except httpx.InvalidURL:
            raise UpstreamConnectError("The provider URL is invalid.") from None
        try:
            response = await self._transport.handle_async_request(httpx_request)
        except httpx.HTTPError as exc:
            raise _convert(exc) from None
        stream = response.stream
        assert isinstance(stream, httpx.AsyncByteStream)
        chunks = aiter(stream)

        async def read_chunk() -> bytes:
            try:
                # Skip empty chunks: b"" means the end of the body in our protocol.
                async for chunk in chunks:
                    if chunk:
                        return chunk
            except httpx.HTTPError as exc:
                raise _convert(exc) from None
            return b""

        return UpstreamResponse(
            response.status_code, response.headers.raw, read_chunk, stream.aclose
        )

    async def aclose(self) -> None:
        await self._transport.aclose()
