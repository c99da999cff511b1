"""Relay one accepted realtime session: messages both ways as they come, then the close.

The provider's messages come down in a task of their own, the client's go up in the
caller's; each message is sent on before the next is read, so neither side is buffered (a
slow reader slows its sender through the sockets' flow control). Whichever side closes, the
other is closed with its code and reason, or told why when the close had none.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Literal

from aiohttp import WSMsgType
from starlette.types import Message, Receive, Send

from llm_proxy_mw._realtime_upstream import ProviderSocket

__all__ = ["relay"]

#: Codes that report a close but may not be sent in one (RFC 6455 §7.4.1): 1005, a close
#: without a code, and 1006, a connection dropped without a close. What the other side is
#: told instead: of a client, 1001 "going away" (servers such as uvicorn report a dropped
#: client as 1005 too); of a provider, 1000 for a close without a code, and 1011 for a
#: drop, after which the SDKs reconnect as after the provider's own 1006.
_CLIENT_CODES = {1005: 1001, 1006: 1001}
_PROVIDER_CODES = {1005: 1000, 1006: 1011}
_PROVIDER_LOST = 1011
#: The close a client gets when the provider vanished.
_LOST: Message = {
    "type": "websocket.close",
    "code": _PROVIDER_LOST,
    "reason": "The provider's connection was lost.",
}


async def relay(
    receive: Receive, send: Send, provider: ProviderSocket
) -> Literal["client", "provider"]:
    """Relay until one side closes, then close the other; which side ended the session."""
    down = asyncio.create_task(_provider_to_client(provider, send))
    try:
        code, reason = await _client_to_provider(receive, provider)
        if down.done() and down.result():
            return "provider"
    finally:
        if not down.done():
            down.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await down
    # Closed only once ``down`` stopped reading: aiohttp answers a close made while another
    # task reads with a 1000 of its own, and the client's code would be lost.
    await provider.close(code=code, message=reason.encode())
    return "client"


async def _client_to_provider(receive: Receive, provider: ProviderSocket) -> tuple[int, str]:
    """The client's messages up until it leaves; its close code and reason."""
    while True:
        message = await receive()
        if message["type"] == "websocket.receive":
            try:
                text = message.get("text")
                if text is not None:
                    await provider.send_str(text)
                else:
                    await provider.send_bytes(message.get("bytes") or b"")
            except ConnectionError:
                # The provider closed: its close reaches the client, whose disconnect follows.
                continue
        elif message["type"] == "websocket.disconnect":
            code: int = message.get("code", 1005)
            return _CLIENT_CODES.get(code, code), message.get("reason") or ""


async def _provider_to_client(provider: ProviderSocket, send: Send) -> bool:
    """The provider's messages down until a side closes; whether the provider closed (the
    client then got its close), else the client vanished."""
    while True:
        message = await provider.receive()
        kind = message.type
        event: Message
        if kind is WSMsgType.TEXT:
            event = {"type": "websocket.send", "text": message.data}
        elif kind is WSMsgType.BINARY:
            event = {"type": "websocket.send", "bytes": message.data}
        elif kind is WSMsgType.CLOSE:
            code = _PROVIDER_CODES.get(message.data, message.data)
            event = {"type": "websocket.close", "code": code, "reason": message.extra or ""}
        else:  # closed without a close frame, or broke the protocol
            event = dict(_LOST)
        try:
            await send(event)
        except OSError:
            # The client vanished (the server raises its ``ClientDisconnected``): its
            # disconnect, queued already, ends the relay.
            return False
        if event["type"] == "websocket.close":
            return True
