"""The benchmarks' fake provider: a raw asyncio protocol with httptools (uvloop when installed).

It shares a core with the load generator, so it must cost far less per request than the
proxy under test; a Starlette mock costs ~50x more than nginx, which would make it the
bottleneck. One server serves every benchmark:

- ``POST /v1/chat/completions`` (and ``/chat/completions``): the 678-byte JSON of
  ``fixtures``, or its 100-event SSE stream when the body has ``"stream": true`` (each event
  written separately, as nginx's ``echo_flush`` does); a model containing ``delay`` is
  answered after ``--delay-ms`` (100 ms, sent chunked like nginx). A streaming request whose
  model contains ``paced`` (``bench-paced``) gets ``PACED_EVENTS`` chunks ``PACE_MS`` apart,
  then ``data: [DONE]``; each chunk carries its number (``seq``) and the
  ``time.monotonic_ns()`` at which it was written (``sent_ns``: CLOCK_MONOTONIC, comparable
  across the processes of one machine), for measuring how late each event reaches a client.
- A body that carries a marker (the load benchmark's, see ``_marked_answers``), and any
  ``POST /v1/messages`` (Anthropic): answers that echo the marker, JSON or a stream of
  ``DELTAS`` deltas; a model containing ``paced``: one event every ``--pace-ms`` (80 ms), so
  that many streams are open at once; a model ``big-<bytes>``: an OpenAI stream of that many
  bytes in 64 KiB events, written as fast as the connection takes them and no faster,
  counting what it wrote (``GET /stats``: that count per marker, as JSON).
- ``POST /control``: the fault mode of the resilience benchmark (``_faults``); once set, it
  answers every chat call.
- ``GET /health``: ``ok``.

With ``--scripted`` it answers as the tests' provider does instead (``_scripted_server``: both
wire formats, scripted by ``x-fake-*`` request headers), for trying a proxy by hand.

Run: ``python -m benchmarks.fake_provider [--port 0] [--scripted]``; it prints the bound port
on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
from typing import Any

from benchmarks import _marked_answers as marked
from benchmarks._faults import Faults
from benchmarks._raw_http import RequestProtocol, chunk, head, run, serve
from benchmarks._scripted import FakeProvider
from benchmarks._scripted_server import ScriptedProtocol
from benchmarks.fixtures import CHAT, CHAT_SSE_EVENTS, PACE_MS, paced_templates

__all__ = ["main"]


def _h(status: str, headers: list[tuple[str, str]]) -> bytes:
    return head(status, headers, server="fake-provider")


_STREAM = re.compile(rb'"stream"\s*:\s*true')
_DELAY = re.compile(rb'"model"\s*:\s*"[^"]*delay')
_PACED = re.compile(rb'"model"\s*:\s*"[^"]*paced')
_MODEL = re.compile(rb'"model"\s*:\s*"([^"]*)"')
_CHAT_PATHS = (b"/v1/chat/completions", b"/chat/completions")
_MESSAGES = b"/v1/messages"


_KEEP = ("Connection", "keep-alive")
_END = b"0\r\n\r\n"
_JSON_TYPE = ("Content-Type", "application/json")
_JSON = _h("200 OK", [_JSON_TYPE, ("Content-Length", str(len(CHAT))), _KEEP]) + CHAT
_JSON_CHUNKED = _h("200 OK", [_JSON_TYPE, ("Transfer-Encoding", "chunked"), _KEEP]) + chunk(CHAT)
_JSON_CHUNKED += _END
_SSE_HEAD = _h(
    "200 OK",
    [
        ("Content-Type", "text/event-stream"),
        ("Transfer-Encoding", "chunked"),
        _KEEP,
        ("Cache-Control", "no-cache"),
    ],
)
_SSE_CHUNKS = [chunk(event) for event in CHAT_SSE_EVENTS] + [_END]

_PACED_TEMPLATES = paced_templates()
_PACED_END = chunk(b"data: [DONE]\n\n") + _END


def _json_answer(body: bytes) -> bytes:
    return _h("200 OK", [_JSON_TYPE, _len(body), _KEEP]) + body


def _len(body: bytes) -> tuple[str, str]:
    return ("Content-Length", str(len(body)))


#: Marked answers per path: the JSON answer, and the stream as framed parts.
_MARKED = {
    path: (_json_answer(json_body), [_SSE_HEAD, *map(chunk, events), _END])
    for path, json_body, events in (
        (_CHAT_PATHS[0], marked.openai_json(), marked.openai_events()),
        (_CHAT_PATHS[1], marked.openai_json(), marked.openai_events()),
        (_MESSAGES, marked.anthropic_json(), marked.anthropic_events()),
    )
}
_BIG_CHUNK = chunk(marked.big_event())
_BIG_TAIL = chunk(b"data: [DONE]\n\n") + _END
_PLAIN = ("Content-Type", "text/plain")
_HEALTH = _h("200 OK", [_PLAIN, ("Content-Length", "3"), _KEEP]) + b"ok\n"
_NOT_FOUND = _h("404 Not Found", [("Content-Length", "0"), _KEEP])


class _Big:
    """One huge stream: how much was handed to the transport, and when it began and ended."""

    __slots__ = ("chunk", "left", "size", "handed", "peer_port", "started", "finished", "closed")

    def __init__(self, marker: bytes, size: int, peer_port: int) -> None:
        self.chunk = _BIG_CHUNK.replace(marked.PLACEHOLDER, marker)
        self.size = size
        self.left = max(1, size // marked.BIG_EVENT)
        self.handed = 0
        self.peer_port = peer_port
        self.started = time.monotonic()
        self.finished: float | None = None
        self.closed: float | None = None


#: Huge streams by marker, for ``GET /stats`` (a few per run).
_BIGS: dict[str, tuple[_Big, _Provider]] = {}


class _Provider(RequestProtocol):
    """One client connection; requests on it are answered in order (no pipelining needed)."""

    def __init__(self, delay: float, pace: float, faults: Faults) -> None:
        super().__init__()
        self._delay = delay
        self._pace = pace
        self._faults = faults
        self._paused = False
        self._big: _Big | None = None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._big is not None:
            self._big.closed = time.monotonic()
            self._big = None
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._pump()

    def buffered(self) -> int:
        """Bytes handed to the transport that have not reached the kernel yet."""
        return self._transport.get_write_buffer_size() if self._transport is not None else 0

    def on_message_complete(self) -> None:
        keep_alive = self._parser.should_keep_alive()
        path = self._url.partition(b"?")[0]
        method = self._parser.get_method()
        if method == b"GET" and path == b"/health":
            self._write([_HEALTH], keep_alive)
        elif method == b"GET" and path == b"/stats":
            body = json.dumps(_stats(), separators=(",", ":")).encode()
            self._write([_h("200 OK", [_PLAIN, _len(body), _KEEP]) + body], keep_alive)
        elif method == b"POST" and path == b"/control":
            self._write([self._faults.control(b"".join(self._body))], keep_alive)
        elif method == b"POST" and (path in _CHAT_PATHS or path == _MESSAGES):
            self._answer(path, b"".join(self._body), keep_alive)
        else:
            self._write([_NOT_FOUND], keep_alive)

    def _answer(self, path: bytes, body: bytes, keep_alive: bool) -> None:
        if self._faults.active and path in _CHAT_PATHS:
            self._write([self._faults.answer(body)], keep_alive)
            return
        found = marked.MARKER.search(body)
        if found is not None or path == _MESSAGES:
            marker = found.group() if found else marked.NO_MARKER
            self._answer_marked(path, body, marker, keep_alive)
            return
        stream = _STREAM.search(body) is not None
        if stream and _PACED.search(body):
            self._write([_SSE_HEAD], keep_alive=True)
            self._stamped(0, keep_alive)
        elif _DELAY.search(body):
            parts = [_SSE_HEAD, *_SSE_CHUNKS] if stream else [_JSON_CHUNKED]
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self._delay, self._write, parts, keep_alive)
        elif stream:
            self._write([_SSE_HEAD, *_SSE_CHUNKS], keep_alive)
        else:
            self._write([_JSON], keep_alive)

    def _answer_marked(self, path: bytes, body: bytes, marker: bytes, keep_alive: bool) -> None:
        model_match = _MODEL.search(body)
        model = model_match.group(1) if model_match else b""
        json_answer, stream_parts = _MARKED[path]
        if model.startswith(b"big-") and self._transport is not None:
            peer = self._transport.get_extra_info("peername")
            self._big = _Big(marker, int(model[4:]), peer[1] if peer else 0)
            _BIGS[marker.decode()] = (self._big, self)
            self._transport.write(_SSE_HEAD)
            self._pump()
        elif _STREAM.search(body) is None:
            self._write([json_answer.replace(marked.PLACEHOLDER, marker)], keep_alive)
        else:
            parts = [part.replace(marked.PLACEHOLDER, marker) for part in stream_parts]
            if b"paced" in model:
                self._paced(parts, 0, keep_alive)
            else:
                self._write(parts, keep_alive)

    def _stamped(self, seq: int, keep_alive: bool) -> None:
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
        self._timer = loop.call_later(PACE_MS / 1000, self._stamped, seq + 1, keep_alive)

    def _paced(self, parts: list[bytes], index: int, keep_alive: bool) -> None:
        """Part ``index`` of a marked stream now, the next one ``--pace-ms`` later."""
        self._timer = None
        if self._transport is None:
            return
        self._transport.write(parts[index])
        if index + 1 < len(parts):
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self._pace, self._paced, parts, index + 1, keep_alive)
        elif not keep_alive:
            self._transport.close()

    def _pump(self) -> None:
        """Write the huge stream while the transport takes it; resume_writing calls again."""
        big, transport = self._big, self._transport
        while big is not None and transport is not None and not self._paused:
            if big.left == 0:
                transport.write(_BIG_TAIL)
                big.handed += len(_BIG_TAIL)
                big.finished = time.monotonic()
                self._big = None
                return
            transport.write(big.chunk)
            big.handed += len(big.chunk)
            big.left -= 1


def _stats() -> dict[str, Any]:
    """Per huge stream: bytes that reached the kernel (``sent``), its size, its times
    (``time.monotonic()``, which is system-wide on Linux) and the proxy's local port."""
    out = {}
    for marker, (big, proto) in _BIGS.items():
        buffered = proto.buffered() if big.closed is None else 0
        out[marker] = {
            "size": big.size,
            "sent": big.handed - buffered,
            "peer_port": big.peer_port,
            "started": big.started,
            "finished": big.finished,
            "closed": big.closed,
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--delay-ms", type=float, default=100.0)
    parser.add_argument("--pace-ms", type=float, default=80.0)
    parser.add_argument("--scripted", action="store_true", help="answer as the tests' provider")
    args = parser.parse_args()
    if args.scripted:
        provider, connections = FakeProvider(), set[ScriptedProtocol]()
        run(serve(lambda: ScriptedProtocol(provider, connections), args.port))
        return
    faults = Faults()
    run(serve(lambda: _Provider(args.delay_ms / 1000, args.pace_ms / 1000, faults), args.port))


if __name__ == "__main__":
    main()
