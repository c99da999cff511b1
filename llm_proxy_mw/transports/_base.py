"""The upstream transport protocol: the one seam between the proxy and an HTTP client.

The hot path talks to this small protocol, not to any client library's objects: a request
is four plain fields, a response is a status, raw headers and a chunk reader. Each
implementation converts its library's exceptions into ``llm_proxy_mw.errors`` at exactly
this boundary, so nothing above it sees aiohttp or httpx types.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = ["UpstreamRequest", "UpstreamResponse", "UpstreamTransport"]


@dataclass(slots=True)
class UpstreamRequest:
    """What goes to the provider. ``url`` is fully encoded; ``headers`` already filtered.

    ``body`` is bytes, or an upload's chunks as they arrive (sent as they come, with the
    declared ``content-length`` when there is one, else chunked).
    """

    method: str
    url: str
    headers: list[tuple[str, str]]
    body: bytes | AsyncIterator[bytes]


class UpstreamResponse:
    """A provider's answer whose body has not been read yet.

    ``read_chunk`` returns the next chunk as it arrives (``b""`` at the end) and raises an
    ``UpstreamError`` if the body breaks; ``aclose`` releases the connection (it is safe to
    call more than once, and closes the connection if the body was not read to the end).
    """

    __slots__ = ("status", "headers", "read_chunk", "_close", "_closed")

    def __init__(
        self,
        status: int,
        headers: Sequence[tuple[bytes, bytes]],
        read_chunk: Callable[[], Awaitable[bytes]],
        close: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.status = status
        self.headers = headers
        self.read_chunk = read_chunk
        self._close = close
        self._closed = False

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            if self._close is not None:
                await self._close()

    async def read_all(self) -> bytes:
        """The whole body; for small responses and tests."""
        parts = []
        while chunk := await self.read_chunk():
            parts.append(chunk)
        await self.aclose()
        return b"".join(parts)


class UpstreamTransport(Protocol):
    """Sends requests to one provider; one instance per provider, owning its pool."""

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        """Send the request and return once the response headers arrived."""
        ...

    async def aclose(self) -> None:
        """Close the pool. Idempotent."""
        ...
