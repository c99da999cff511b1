"""The floor: a minimal raw-ASGI passthrough over one shared ``aiohttp.ClientSession``.

A copy of the shared harness's ``floor_aiohttp`` contender (kept here so ``make bench`` needs
nothing outside the repository): what a Python proxy costs when it does nothing but forward,
on the same client library as our default transport. Issue 6's goals are ratios to it.

Run: ``UPSTREAM=http://127.0.0.1:PORT uvicorn benchmarks.floor_aiohttp:app --loop uvloop
--http httptools --no-access-log``.
"""

from __future__ import annotations

import os

import aiohttp
from starlette.types import Receive, Scope, Send

UPSTREAM = os.environ.get("UPSTREAM", "http://127.0.0.1:18080")
HOP = {
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
}
session: aiohttp.ClientSession | None = None


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    global session
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                session = aiohttp.ClientSession(
                    UPSTREAM,
                    connector=aiohttp.TCPConnector(limit=0),
                    timeout=aiohttp.ClientTimeout(total=120),
                    auto_decompress=False,
                )
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                if session is not None:
                    await session.close()
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    assert session is not None
    body, more = b"", True
    while more:
        msg = await receive()
        body += msg.get("body", b"")
        more = msg.get("more_body", False)
    url = scope["raw_path"].decode()
    if scope["query_string"]:
        url += "?" + scope["query_string"].decode()
    headers = [
        (k.decode("latin-1"), v.decode("latin-1"))
        for k, v in scope["headers"]
        if k.decode("latin-1") not in HOP
    ]
    async with session.request(
        scope["method"],
        url,
        headers=headers,
        data=body,
        skip_auto_headers=("User-Agent", "Accept-Encoding"),
    ) as resp:
        out = [
            (k.lower(), v)
            for k, v in resp.raw_headers
            if k.decode("latin-1").lower() not in HOP or k.lower() == b"content-length"
        ]
        await send({"type": "http.response.start", "status": resp.status, "headers": out})
        async for chunk in resp.content.iter_any():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
