"""An upstream transport for tests that records what the proxy sends."""

from __future__ import annotations

from llm_proxy_mw.transports import EchoTransport, UpstreamRequest, UpstreamResponse

__all__ = ["RecordingTransport"]


class RecordingTransport:
    """An ``UpstreamTransport`` that records every request (``sent``), answers like the echo
    one, and counts how often it was closed (``closed``). An upload's chunks are read whole
    and recorded as bytes."""

    def __init__(self) -> None:
        self.sent: list[UpstreamRequest] = []
        self.closed = 0
        self._echo = EchoTransport()

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        if not isinstance(request.body, bytes):
            request.body = b"".join([chunk async for chunk in request.body])
        self.sent.append(request)
        return await self._echo.send(request)

    async def aclose(self) -> None:
        self.closed += 1
        await self._echo.aclose()
