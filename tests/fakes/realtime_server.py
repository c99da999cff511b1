"""A fake OpenAI Realtime provider: a websocket server on loopback that records what it got.

It answers the handshake at ``/v1/realtime`` (401 without its key, ``refuse_status`` for the
model ``refuse-me``), picks the ``realtime`` subprotocol when offered, greets with
``session.created``, and echoes: text as a ``test.echo`` event, binary as the same bytes.
Two scripted client events make it end the session: ``test.close`` (a close with the event's
``code`` and ``reason``) and ``test.drop`` (the TCP connection dropped, no close frame).
Everything it received is kept in ``sessions``, for the test to read.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from http import HTTPStatus

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

__all__ = ["FakeRealtimeProvider", "RealtimeSession", "realtime_provider"]


@dataclass
class RealtimeSession:
    """What one handshake brought, and what its session received."""

    path: str
    headers: dict[str, str]
    offered: list[str]
    subprotocol: str | None = None
    received: list[str | bytes] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str | None = None
    #: Set once the session ended and its close is recorded.
    ended: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class FakeRealtimeProvider:
    port: int
    key: str
    sessions: list[RealtimeSession] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


@contextlib.asynccontextmanager
async def realtime_provider(
    key: str, *, refuse_status: int = 503
) -> AsyncIterator[FakeRealtimeProvider]:
    """The fake provider serving on a free loopback port for the block, on this loop."""
    fake = FakeRealtimeProvider(0, key)

    def process_request(connection: ServerConnection, request: Request) -> Response | None:
        headers = {name.lower(): value for name, value in request.headers.raw_items()}
        offered = [
            p.strip()
            for v in request.headers.get_all("sec-websocket-protocol")
            for p in v.split(",")
        ]
        fake.sessions.append(RealtimeSession(request.path, headers, offered))
        if not request.path.startswith("/v1/realtime"):
            return connection.respond(HTTPStatus.NOT_FOUND, "no such path\n")
        if headers.get("authorization") != f"Bearer {key}":
            return connection.respond(HTTPStatus.UNAUTHORIZED, "invalid key\n")
        if "model=refuse-me" in request.path:
            return connection.respond(HTTPStatus(refuse_status), "refused\n")
        return None

    def select_subprotocol(connection: ServerConnection, offered: list[str]) -> str | None:
        chosen = "realtime" if "realtime" in offered else None
        fake.sessions[-1].subprotocol = chosen
        return chosen

    async def handler(connection: ServerConnection) -> None:
        session = fake.sessions[-1]
        await connection.send(json.dumps({"type": "session.created", "session": {}}))
        try:
            async for message in connection:
                session.received.append(message)
                if isinstance(message, bytes):
                    await connection.send(message)
                    continue
                event = json.loads(message)
                if event.get("type") == "test.close":
                    await connection.close(event["code"], event["reason"])
                elif event.get("type") == "test.drop":
                    assert connection.transport is not None
                    connection.transport.abort()
                else:
                    await connection.send(json.dumps({"type": "test.echo", "event": event}))
        except ConnectionClosed:
            pass
        session.close_code = connection.close_code
        session.close_reason = connection.close_reason
        session.ended.set()

    async with serve(
        handler,
        "127.0.0.1",
        0,
        process_request=process_request,
        select_subprotocol=select_subprotocol,
        max_size=None,
    ) as server:
        fake.port = next(iter(server.sockets)).getsockname()[1]
        yield fake
