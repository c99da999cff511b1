"""Who may open a realtime session: the handshake as Auth sees it, driven in-process."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.types import Message

from llm_proxy_mw.auth import AuthenticatorChain
from llm_proxy_mw.auth._sessions import SessionAuthenticator
from llm_proxy_mw.config import ProviderConfig
from llm_proxy_mw.providers import Provider
from llm_proxy_mw.realtime import RealtimeApp
from llm_proxy_mw.routing import Router
from tests.test_auth_sessions import ALICE, cookie_of, manager

pytestmark = pytest.mark.anyio


async def handshake_status(app: RealtimeApp, **headers: str) -> int:
    """The status the handshake is answered with (a denial response), or 101."""
    scope: dict[str, Any] = {
        "type": "websocket",
        "scheme": "ws",
        "path": "/llm/v1/realtime",
        "root_path": "/llm",
        "query_string": b"model=echo-1",
        "headers": [(b"host", b"app.example")]
        + [(k.encode(), v.encode()) for k, v in headers.items()],
        "server": ("10.0.0.1", 8000),
        "subprotocols": [],
        "extensions": {"websocket.http.response": {}},
    }
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "websocket.connect"}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = sent[0]
    assert start["type"] == "websocket.http.response.start"
    status: int = start["status"]
    return status


async def test_a_session_cookie_opens_a_session_only_from_the_sites_own_pages() -> None:
    sessions = manager()
    cookie = cookie_of(sessions, sessions.create(principal=ALICE))
    router = Router([Provider.from_config("demo", ProviderConfig(kind="echo", models=["echo-1"]))])
    app = RealtimeApp(router=router, auth=AuthenticatorChain([SessionAuthenticator(sessions)]))
    # A browser sends the cookie with any site's websocket: another site's is refused.
    assert await handshake_status(app, cookie=cookie, origin="https://evil.example") == 401
    assert await handshake_status(app, cookie=cookie) == 401
    # From the site itself, the caller passes Auth (then the echo provider has no realtime).
    assert await handshake_status(app, cookie=cookie, origin="http://app.example") == 400
