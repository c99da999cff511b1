"""The fake provider of the load and memory benchmark: both wire formats, markers, huge streams.

A raw asyncio protocol with httptools (uvloop when installed), like ``fake_provider.py``, so
it costs far less per request than the proxy in front of it. It serves:

- ``POST /v1/chat/completions`` (OpenAI) and ``POST /v1/messages`` (Anthropic): a JSON answer,
  or an SSE stream of ``DELTAS`` text deltas when the body has ``"stream": true``, each event
  written separately. The first marker (``mk`` and 12 hex digits) found in the request body is
  echoed in the answer and in every event (OpenAI: each chunk's ``id`` and text; Anthropic:
  the message id, the texts, and a ``marker`` field on the events that carry no text), so that
  a client can tell its answer from anyone else's. ``[DONE]`` alone carries none.
- a model containing ``paced``: the same stream, one event every ``--pace-ms`` (80 ms), so
  that many streams are open at once.
- a model ``big-<bytes>``: an OpenAI stream of that many bytes in 64 KiB events, written as
  fast as the connection takes them and no faster (it pauses when its transport's buffer is
  full), counting what it wrote: ``GET /stats`` returns that count per marker, as JSON.
- ``GET /health``: ``ok``.

Run: ``python -m benchmarks.load_provider [--port 0]``; it prints the bound port on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
from typing import Any

from benchmarks._raw_http import RequestProtocol, chunk, head, run, serve


def _h(status: str, headers: list[tuple[str, str]]) -> bytes:
    return head(status, headers, server="load-provider")


__all__ = ["BIG_EVENT", "DELTAS", "MARKER", "PLACEHOLDER", "main"]

#: A marker is ``mk`` and 12 hex digits; the placeholder has its length, so framing stays valid.
MARKER = re.compile(rb"mk[0-9a-f]{12}")
PLACEHOLDER = b"mk############"
_NO_MARKER = b"mk000000000000"
DELTAS = 20
BIG_EVENT = 64 * 1024

_STREAM = re.compile(rb'"stream"\s*:\s*true')
_MODEL = re.compile(rb'"model"\s*:\s*"([^"]*)"')
_OPENAI, _ANTHROPIC = b"/v1/chat/completions", b"/v1/messages"


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


_M = PLACEHOLDER.decode()
_USAGE_OPENAI = {"prompt_tokens": 12, "completion_tokens": DELTAS, "total_tokens": 12 + DELTAS}


def _openai_json() -> bytes:
    return _dumps(
        {
            "id": f"chatcmpl-{_M}",
            "object": "chat.completion",
            "created": 1700000000,
            "model": "bench-model",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": f"Echo: {_M}.", "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": _USAGE_OPENAI,
        }
    )


def _openai_events() -> list[bytes]:
    def event(delta: dict[str, Any], finish: str | None, **extra: Any) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        chunk = {
            "id": f"chatcmpl-{_M}",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": "bench-model",
            "choices": [choice],
            **extra,
        }
        return b"data: " + _dumps(chunk) + b"\n\n"

    events = [event({"role": "assistant", "content": ""}, None)]
    events += [event({"content": f" {_M} tok{i:02d}"}, None) for i in range(DELTAS)]
    events.append(event({}, "stop", usage=_USAGE_OPENAI))
    return [*events, b"data: [DONE]\n\n"]


def _anthropic_json() -> bytes:
    return _dumps(
        {
            "id": f"msg_{_M}",
            "type": "message",
            "role": "assistant",
            "model": "bench-model",
            "content": [{"type": "text", "text": f"Echo: {_M}."}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": 12, "output_tokens": DELTAS},
        }
    )


def _anthropic_events() -> list[bytes]:
    def event(data: dict[str, Any]) -> bytes:
        return b"event: %s\ndata: %s\n\n" % (data["type"].encode(), _dumps(data))

    message: dict[str, Any] = {
        "id": f"msg_{_M}",
        "type": "message",
        "role": "assistant",
        "model": "bench-model",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 1},
    }
    events = [
        event({"type": "message_start", "message": message}),
        event(
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
                "marker": _M,
            }
        ),
    ]
    events += [
        event(
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": f" {_M} tok{i:02d}"},
            }
        )
        for i in range(DELTAS)
    ]
    events += [
        event({"type": "content_block_stop", "index": 0, "marker": _M}),
        event(
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": DELTAS},
                "marker": _M,
            }
        ),
        event({"type": "message_stop", "marker": _M}),
    ]
    return events


_KEEP = ("Connection", "keep-alive")
_SSE_HEAD = _h(
    "200 OK",
    [("Content-Type", "text/event-stream"), ("Transfer-Encoding", "chunked"), _KEEP],
)
_END = b"0\r\n\r\n"


def _json_answer(body: bytes) -> bytes:
    return _h("200 OK", [("Content-Type", "application/json"), _len(body), _KEEP]) + body


def _len(body: bytes) -> tuple[str, str]:
    return ("Content-Length", str(len(body)))


#: Per path: the JSON answer, and the stream as framed parts (head, events, end).
_ANSWERS = {
    _OPENAI: (_json_answer(_openai_json()), [_SSE_HEAD, *map(chunk, _openai_events()), _END]),
    _ANTHROPIC: (
        _json_answer(_anthropic_json()),
        [_SSE_HEAD, *map(chunk, _anthropic_events()), _END],
    ),
}


def _big_event() -> bytes:
    """One 64 KiB OpenAI chunk, padded with text."""
    shell = b'data: {"id":"chatcmpl-%s","choices":[{"index":0,"delta":{"content":"%s"}}]}\n\n'
    padding = BIG_EVENT - len(shell % (PLACEHOLDER, b""))
    return shell % (PLACEHOLDER, b"x" * padding)


_BIG_CHUNK = chunk(_big_event())
_BIG_TAIL = chunk(b"data: [DONE]\n\n") + _END
_PLAIN = ("Content-Type", "text/plain")
_HEALTH = _h("200 OK", [_PLAIN, ("Content-Length", "3"), _KEEP]) + b"ok\n"
_NOT_FOUND = _h("404 Not Found", [("Content-Length", "0"), _KEEP])


class _Big:
    """One huge stream: how much was handed to the transport, and when it began and ended."""

    __slots__ = ("chunk", "left", "size", "handed", "peer_port", "started", "finished", "closed")

    def __init__(self, marker: bytes, size: int, peer_port: int) -> None:
        self.chunk = _BIG_CHUNK.replace(PLACEHOLDER, marker)
        self.size = size
        self.left = max(1, size // BIG_EVENT)
        self.handed = 0
        self.peer_port = peer_port
        self.started = time.monotonic()
        self.finished: float | None = None
        self.closed: float | None = None


#: Huge streams by marker, for ``GET /stats`` (a few per run).
_BIGS: dict[str, tuple[_Big, _Provider]] = {}


class _Provider(RequestProtocol):
    """One client connection; requests on it are answered in order."""

    def __init__(self, pace: float) -> None:
        super().__init__()
        self._pace = pace
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
            body = _dumps(_stats())
            self._write([_h("200 OK", [_PLAIN, _len(body), _KEEP]) + body], keep_alive)
        elif method == b"POST" and path in _ANSWERS:
            self._answer(path, b"".join(self._body), keep_alive)
        else:
            self._write([_NOT_FOUND], keep_alive)

    def _answer(self, path: bytes, body: bytes, keep_alive: bool) -> None:
        found = MARKER.search(body)
        marker = found.group() if found else _NO_MARKER
        model_match = _MODEL.search(body)
        model = model_match.group(1) if model_match else b""
        json_answer, stream_parts = _ANSWERS[path]
        if model.startswith(b"big-") and self._transport is not None:
            peer = self._transport.get_extra_info("peername")
            self._big = _Big(marker, int(model[4:]), peer[1] if peer else 0)
            _BIGS[marker.decode()] = (self._big, self)
            self._transport.write(_SSE_HEAD)
            self._pump()
        elif _STREAM.search(body) is None:
            self._write([json_answer.replace(PLACEHOLDER, marker)], keep_alive)
        else:
            parts = [part.replace(PLACEHOLDER, marker) for part in stream_parts]
            if b"paced" in model:
                self._paced(parts, 0, keep_alive)
            else:
                self._write(parts, keep_alive)

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

    def _paced(self, parts: list[bytes], index: int, keep_alive: bool) -> None:
        self._timer = None
        if self._transport is None:
            return
        self._transport.write(parts[index])
        if index + 1 < len(parts):
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self._pace, self._paced, parts, index + 1, keep_alive)
        elif not keep_alive:
            self._transport.close()


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
    parser.add_argument("--pace-ms", type=float, default=80.0)
    args = parser.parse_args()
    run(serve(lambda: _Provider(args.pace_ms / 1000), args.port))


if __name__ == "__main__":
    main()
