"""A fast fake OpenAI provider: raw asyncio protocol + httptools, uvloop when installed.

It shares a core with the load generator, so it must cost far less per request than the proxy
under test; a Starlette mock costs ~50x more than nginx, which would make it the bottleneck.
Serves ``POST /v1/chat/completions`` (and ``/chat/completions``): the 678-byte JSON, or the
100-event SSE stream when the body has ``"stream": true`` (each event written separately, as
nginx's ``echo_flush`` does); a body whose model contains ``delay`` is answered after
``--delay-ms`` (100 ms, sent chunked like nginx). ``GET /health`` answers ``ok``.

Run: ``python -m benchmarks.fake_provider [--port 0]``; it prints the bound port on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import re
from typing import cast

import httptools

from benchmarks._raw_http import chunk, head, run, serve
from benchmarks.fixtures import CHAT, CHAT_SSE_EVENTS


def _h(status: str, headers: list[tuple[str, str]]) -> bytes:
    return head(status, headers, server="fake-provider")


_STREAM = re.compile(rb'"stream"\s*:\s*true')
_DELAY = re.compile(rb'"model"\s*:\s*"[^"]*delay')
_CHAT_PATHS = (b"/v1/chat/completions", b"/chat/completions")


_KEEP = ("Connection", "keep-alive")
_JSON_TYPE = ("Content-Type", "application/json")
_JSON = _h("200 OK", [_JSON_TYPE, ("Content-Length", str(len(CHAT))), _KEEP]) + CHAT
_JSON_CHUNKED = (
    _h("200 OK", [_JSON_TYPE, ("Transfer-Encoding", "chunked"), _KEEP]) + chunk(CHAT) + b"0\r\n\r\n"
)
_SSE_HEAD = _h(
    "200 OK",
    [
        ("Content-Type", "text/event-stream"),
        ("Transfer-Encoding", "chunked"),
        _KEEP,
        ("Cache-Control", "no-cache"),
    ],
)
_SSE_CHUNKS = [chunk(event) for event in CHAT_SSE_EVENTS] + [b"0\r\n\r\n"]
_HEALTH = _h("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "3"), _KEEP])
_HEALTH += b"ok\n"
_NOT_FOUND = _h("404 Not Found", [("Content-Length", "0"), _KEEP])
_BAD = _h("400 Bad Request", [("Content-Length", "0"), ("Connection", "close")])


class _Provider(asyncio.Protocol):
    """One client connection; requests on it are answered in order (no pipelining needed)."""

    def __init__(self, delay: float) -> None:
        self._delay = delay
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""
        self._body: list[bytes] = []
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only look alike.
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._transport = None

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            if self._transport is not None:
                self._transport.write(_BAD)
                self._transport.close()

    def on_message_begin(self) -> None:
        self._url = b""
        self._body = []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        keep_alive = self._parser.should_keep_alive()
        path = self._url.partition(b"?")[0]
        method = self._parser.get_method()
        if method == b"GET" and path == b"/health":
            self._write([_HEALTH], keep_alive)
        elif method == b"POST" and path in _CHAT_PATHS:
            body = b"".join(self._body)
            stream = _STREAM.search(body) is not None
            if _DELAY.search(body):
                parts = [_SSE_HEAD, *_SSE_CHUNKS] if stream else [_JSON_CHUNKED]
                loop = asyncio.get_running_loop()
                self._timer = loop.call_later(self._delay, self._write, parts, keep_alive)
            elif stream:
                self._write([_SSE_HEAD, *_SSE_CHUNKS], keep_alive)
            else:
                self._write([_JSON], keep_alive)
        else:
            self._write([_NOT_FOUND], keep_alive)

    def _write(self, parts: list[bytes], keep_alive: bool) -> None:
        self._timer = None
        transport = self._transport
        if transport is None:
            return
        # One write per part: each SSE event leaves as its own send, as a real provider's do.
        for part in parts:
            transport.write(part)
        if not keep_alive:
            transport.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--delay-ms", type=float, default=100.0)
    args = parser.parse_args()
    run(serve(lambda: _Provider(args.delay_ms / 1000), args.port))


if __name__ == "__main__":
    main()
