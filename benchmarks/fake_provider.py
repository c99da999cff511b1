"""A fast fake OpenAI provider: raw asyncio protocol + httptools, uvloop when installed.

It shares a core with the load generator, so it must cost far less per request than the proxy
under test; a Starlette mock costs ~50x more than nginx, which would make it the bottleneck.
Serves ``POST /v1/chat/completions`` (and ``/chat/completions``): the 678-byte JSON, or the
100-event SSE stream when the body has ``"stream": true`` (each event written separately, as
nginx's ``echo_flush`` does); a body whose model contains ``delay`` is answered after
``--delay-ms`` (100 ms, sent chunked like nginx). A streaming request whose model contains
``paced`` (``bench-paced``) gets ``PACED_EVENTS`` chunks ``PACE_MS`` apart, then
``data: [DONE]``; each chunk carries its number (``seq``) and the ``time.monotonic_ns()`` at
which it was written (``sent_ns``: CLOCK_MONOTONIC, comparable across the processes of one
machine), for measuring how late each event reaches a client. ``GET /health`` answers ``ok``.

Run: ``python -m benchmarks.fake_provider [--port 0]``; it prints the bound port on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
from typing import Any

from benchmarks._raw_http import RequestProtocol, chunk, head, run, serve
from benchmarks.fixtures import CHAT, CHAT_SSE_EVENTS


def _h(status: str, headers: list[tuple[str, str]]) -> bytes:
    return head(status, headers, server="fake-provider")


_STREAM = re.compile(rb'"stream"\s*:\s*true')
_DELAY = re.compile(rb'"model"\s*:\s*"[^"]*delay')
_PACED = re.compile(rb'"model"\s*:\s*"[^"]*paced')
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

#: The paced stream: how many stamped chunks, how far apart.
PACED_EVENTS = 50
PACE_MS = 5.0


def _paced_templates(n: int = PACED_EVENTS) -> list[tuple[bytes, bytes]]:
    """Per chunk, the bytes before and after its ``sent_ns`` digits (an OpenAI chunk as in
    ``fixtures``: role first, content tokens, a finish chunk with usage)."""
    templates = []
    for seq in range(n):
        fin: str | None
        if seq == 0:
            delta, fin = {"role": "assistant", "content": ""}, None
        elif seq == n - 1:
            delta, fin = {}, "stop"
        else:
            delta, fin = {"content": f" tok{seq:03d}"}, None
        event: dict[str, Any] = {
            "sent_ns": 0,
            "seq": seq,
            "id": "chatcmpl-bench-paced",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": fin}],
        }
        if seq == n - 1:
            event["usage"] = {"prompt_tokens": 25, "completion_tokens": n, "total_tokens": 25 + n}
        before, after = json.dumps(event, separators=(",", ":")).encode().split(b"0", 1)
        templates.append((b"data: " + before, after + b"\n\n"))
    return templates


_PACED_TEMPLATES = _paced_templates()
_PACED_END = chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"
_HEALTH = _h("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "3"), _KEEP])
_HEALTH += b"ok\n"
_NOT_FOUND = _h("404 Not Found", [("Content-Length", "0"), _KEEP])


class _Provider(RequestProtocol):
    """One client connection; requests on it are answered in order (no pipelining needed)."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self._delay = delay

    def on_message_complete(self) -> None:
        keep_alive = self._parser.should_keep_alive()
        path = self._url.partition(b"?")[0]
        method = self._parser.get_method()
        if method == b"GET" and path == b"/health":
            self._write([_HEALTH], keep_alive)
        elif method == b"POST" and path in _CHAT_PATHS:
            body = b"".join(self._body)
            stream = _STREAM.search(body) is not None
            if stream and _PACED.search(body):
                self._write([_SSE_HEAD], keep_alive=True)
                self._paced(0, keep_alive)
            elif _DELAY.search(body):
                parts = [_SSE_HEAD, *_SSE_CHUNKS] if stream else [_JSON_CHUNKED]
                loop = asyncio.get_running_loop()
                self._timer = loop.call_later(self._delay, self._write, parts, keep_alive)
            elif stream:
                self._write([_SSE_HEAD, *_SSE_CHUNKS], keep_alive)
            else:
                self._write([_JSON], keep_alive)
        else:
            self._write([_NOT_FOUND], keep_alive)

    def _paced(self, seq: int, keep_alive: bool) -> None:
        """Chunk ``seq`` now, stamped with the time of its write; the next one ``PACE_MS``
        later (the timer is cancelled if the client goes away)."""
        self._timer = None
        transport = self._transport
        if transport is None:
            return
        if seq == len(_PACED_TEMPLATES):
            self._write([_PACED_END], keep_alive)
            return
        before, after = _PACED_TEMPLATES[seq]
        transport.write(chunk(b"%s%d%s" % (before, time.monotonic_ns(), after)))
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(PACE_MS / 1000, self._paced, seq + 1, keep_alive)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--delay-ms", type=float, default=100.0)
    args = parser.parse_args()
    run(serve(lambda: _Provider(args.delay_ms / 1000), args.port))


if __name__ == "__main__":
    main()
