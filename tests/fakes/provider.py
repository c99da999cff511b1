"""A fake upstream LLM provider (OpenAI + Anthropic wire formats) for proxy tests and benchmarks.

The proxy must be tested against something that speaks the *real* wire formats -- JSON bodies,
SSE framing, error envelopes, gzip, retry headers -- closely enough that the official ``openai``
and ``anthropic`` SDKs parse its answers, while being deterministic and scriptable: every request
is recorded, and tests can queue failures (status codes, slow headers, cut or held streams).

Run standalone with ``python tests/fakes/provider.py --port 8001``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gzip
import hashlib
import json
import logging
import struct
import threading
import time
import uuid
import zlib
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

__all__ = ["Action", "FakeProvider", "RecordedRequest", "StreamCut", "StreamHold"]

_OPENAI_ERR = {400: "invalid_request_error", 401: "invalid_request_error", 429: "requests"}
_ANTHROPIC_ERR = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


class StreamCut(Exception):
    """Raised inside the app to abort a stream; uvicorn then closes the socket mid-body."""


class _HideStreamCut(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, BaseExceptionGroup):
            return exc.subgroup(StreamCut) is None
        return not isinstance(exc, StreamCut)


class StreamHold:
    """Parks a stream before event ``after`` (default: before the last event) until released.

    ``reached`` is set once the provider is parked, i.e. everything before it was handed to
    the server. Waiting is bounded by ``timeout`` (then the stream just continues).
    """

    def __init__(self, after: int | None = None, timeout: float = 30.0) -> None:
        self.after = after
        self.timeout = timeout
        self.reached = threading.Event()
        self.released = threading.Event()

    def release(self) -> None:
        self.released.set()

    def wait_reached(self, timeout: float = 5.0) -> bool:
        return self.reached.wait(timeout)

    async def wait_reached_async(self, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while not self.reached.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        return self.reached.is_set()

    async def _park(self) -> None:
        self.reached.set()
        deadline = time.monotonic() + self.timeout
        while not self.released.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.005)

    def __enter__(self) -> StreamHold:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


@dataclass(frozen=True)
class Action:
    """How to answer one request. Defaults give the normal 200 answer.

    ``status >= 300`` without ``json_body``/``body`` sends a provider-shaped error envelope.
    ``cut_after=N`` sends N stream events then aborts the connection (no terminating chunk).
    """

    status: int = 200
    json_body: Any = None
    body: bytes | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before the response headers
    event_delay: float = 0.0  # seconds between stream events
    cut_after: int | None = None
    gzip: bool = False
    hold: StreamHold | None = None
    reply: str | None = None  # override the reply text

    @property
    def overrides_answer(self) -> bool:
        return self.status >= 300 or self.json_body is not None or self.body is not None


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: str
    headers: dict[str, str]  # lowercase names; repeated headers joined with ", "
    raw_headers: list[tuple[str, str]]
    body: bytes
    json: Any  # parsed body, or None if not JSON
    http_version: str
    at: float  # time.monotonic() when the body was fully received


def _sse(data: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def _tokens(text: str) -> int:
    return max(1, len(text.split()))


def _header_action(h: Mapping[str, str]) -> Action:
    cut = h.get("x-fake-cut-after")
    return Action(
        status=int(h.get("x-fake-status", "200")),
        delay=float(h.get("x-fake-delay", "0")),
        event_delay=float(h.get("x-fake-event-delay", "0")),
        cut_after=int(cut) if cut is not None else None,
        gzip=h.get("x-fake-gzip", "") not in ("", "0", "false"),
        reply=h.get("x-fake-reply"),
    )


class FakeProvider:
    """ASGI app (pass it straight to ``UvicornServer``) that records and scripts requests.

    Per request: the next queued ``Action`` (see ``script``), else one built from ``x-fake-*``
    request headers (status, delay, event-delay, cut-after, gzip, reply), else the normal answer.
    """

    def __init__(self, *, reply_prefix: str = "fake reply to: ", chunks: int = 5) -> None:
        self.reply_prefix = reply_prefix
        self.chunks = chunks
        self.requests: list[RecordedRequest] = []
        self._cond = threading.Condition()
        self._script: deque[Action] = deque()
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/v1/messages", self._messages, methods=["POST"]),
                Route("/v1/messages/count_tokens", self._count_tokens, methods=["POST"]),
                Route("/v1/embeddings", self._embeddings, methods=["POST"]),
                Route("/v1/models", self._models, methods=["GET"]),
            ]
        )
        uv_log = logging.getLogger("uvicorn.error")
        if not any(isinstance(f, _HideStreamCut) for f in uv_log.filters):
            uv_log.addFilter(_HideStreamCut())

    # ---- test-facing API -------------------------------------------------------------
    def script(self, *actions: Action) -> None:
        """Queue actions; each request consumes one, in arrival order."""
        with self._cond:
            self._script.extend(actions)

    def hold_stream(self, after: int | None = None, timeout: float = 30.0) -> StreamHold:
        """Queue a normal answer whose stream parks before event ``after`` until released."""
        hold = StreamHold(after, timeout)
        self.script(Action(hold=hold))
        return hold

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._script)

    @property
    def last(self) -> RecordedRequest:
        with self._cond:
            return self.requests[-1]

    def wait_for_requests(self, n: int, timeout: float = 5.0) -> list[RecordedRequest]:
        """Block until at least ``n`` requests were recorded; return a snapshot."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.requests) >= n, timeout):
                raise TimeoutError(f"expected {n} requests, got {len(self.requests)}")
            return list(self.requests)

    def reset(self) -> None:
        with self._cond:
            for action in self._script:
                if action.hold is not None:
                    action.hold.release()
            self._script.clear()
            self.requests.clear()

    # ---- ASGI ------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        raw = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope["headers"]]
        headers: dict[str, str] = {}
        for k, v in raw:
            headers[k] = f"{headers[k]}, {v}" if k in headers else v
        try:
            parsed: Any = json.loads(body) if body else None
        except ValueError:
            parsed = None
        record = RecordedRequest(
            scope["method"],
            scope["path"],
            scope["query_string"].decode("latin-1"),
            headers,
            raw,
            body,
            parsed,
            scope.get("http_version", "1.1"),
            time.monotonic(),
        )
        with self._cond:
            self.requests.append(record)
            action = self._script.popleft() if self._script else _header_action(headers)
            self._cond.notify_all()
        if scope["method"] == "POST" and not isinstance(parsed, dict):
            action = replace(action, status=400)  # the real APIs reject non-JSON bodies too

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        if action.delay:
            await asyncio.sleep(action.delay)
        if action.overrides_answer:
            anthropic = scope["path"].startswith("/v1/messages") or "anthropic-version" in headers
            await self._override(action, anthropic)(scope, replay, send)
        else:
            await self.app({**scope, "fake.action": action}, replay, send)

    # ---- response helpers ------------------------------------------------------------
    def _override(self, action: Action, anthropic: bool) -> Response:
        if action.body is not None:
            return self._respond(action, action.body, "application/json")
        payload = action.json_body
        if payload is None:
            msg = f"fake error {action.status}"
            if anthropic:
                kind = _ANTHROPIC_ERR.get(action.status, "api_error")
                payload = {"type": "error", "error": {"type": kind, "message": msg}}
            else:
                kind = _OPENAI_ERR.get(action.status, "server_error")
                payload = {"error": {"message": msg, "type": kind, "param": None, "code": None}}
        return self._json(action, payload)

    def _respond(self, action: Action, raw: bytes, media_type: str) -> Response:
        headers = dict(action.headers)
        if action.gzip:
            raw = gzip.compress(raw)
            headers["content-encoding"] = "gzip"
        return Response(raw, action.status, headers, media_type)

    def _json(self, action: Action, payload: Any) -> Response:
        return self._respond(action, json.dumps(payload).encode(), "application/json")

    def _stream(self, action: Action, events: list[bytes]) -> StreamingResponse:
        headers = {"cache-control": "no-cache", **action.headers}
        if action.gzip:
            headers["content-encoding"] = "gzip"
        return StreamingResponse(self._emit(action, events), 200, headers, "text/event-stream")

    async def _emit(self, action: Action, events: list[bytes]) -> AsyncIterator[bytes]:
        hold = action.hold
        hold_at = -1 if hold is None else len(events) - 1 if hold.after is None else hold.after
        z = zlib.compressobj(wbits=31) if action.gzip else None  # gzip container
        for i, event in enumerate(events):
            if i == action.cut_after:
                raise StreamCut(f"fake provider cut the stream after {i} events")
            if hold is not None and i == hold_at:
                await hold._park()
            elif i and action.event_delay:
                await asyncio.sleep(action.event_delay)
            yield z.compress(event) + z.flush(zlib.Z_SYNC_FLUSH) if z else event
        if z:
            yield z.flush()

    def _reply(self, action: Action, messages: Any) -> tuple[str, list[str]]:
        last = ""
        for m in reversed(messages if isinstance(messages, list) else []):
            if isinstance(m, dict) and m.get("role") == "user":
                last = _text(m.get("content"))
                break
        text = action.reply if action.reply is not None else self.reply_prefix + last
        size = max(1, -(-len(text) // self.chunks))
        return text, [text[i : i + size] for i in range(0, len(text), size)] or [""]

    async def _parse(self, request: Request) -> tuple[Action, dict[str, Any]]:
        body = await request.json()
        return request.scope["fake.action"], body if isinstance(body, dict) else {}

    # ---- endpoints -------------------------------------------------------------------
    async def _chat(self, request: Request) -> Response:
        action, req = await self._parse(request)
        text, parts = self._reply(action, req.get("messages"))
        prompt = _tokens(" ".join(_text(m.get("content")) for m in req.get("messages") or []))
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": _tokens(text),
            "total_tokens": prompt + _tokens(text),
        }
        base = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "created": int(time.time()),
            "model": req.get("model", "fake-model"),
            "system_fingerprint": "fp_fake",
        }
        if not req.get("stream"):
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
            body = {**base, "object": "chat.completion", "choices": [choice], "usage": usage}
            return self._json(action, body)
        with_usage = bool((req.get("stream_options") or {}).get("include_usage"))
        extra: dict[str, Any] = {"usage": None} if with_usage else {}

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return _sse({**base, "object": "chat.completion.chunk", "choices": [choice], **extra})

        events = [chunk({"role": "assistant", "content": "", "refusal": None})]
        events += [chunk({"content": p}) for p in parts] + [chunk({}, "stop")]
        if with_usage:
            events.append(
                _sse({**base, "object": "chat.completion.chunk", "choices": [], "usage": usage})
            )
        return self._stream(action, [*events, b"data: [DONE]\n\n"])

    async def _messages(self, request: Request) -> Response:
        action, req = await self._parse(request)
        text, parts = self._reply(action, req.get("messages"))
        prompt = _tokens(
            _text(req.get("system"))
            + " "
            + " ".join(_text(m.get("content")) for m in req.get("messages") or [])
        )
        msg = {
            "id": f"msg_{uuid.uuid4().hex[:24]}",
            "type": "message",
            "role": "assistant",
            "model": req.get("model", "fake-model"),
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": prompt, "output_tokens": _tokens(text)},
        }
        if not req.get("stream"):
            return self._json(action, msg)
        start = {
            **msg,
            "content": [],
            "stop_reason": None,
            "usage": {"input_tokens": prompt, "output_tokens": 1},
        }
        block = {"type": "text", "text": ""}
        events = [
            _sse({"type": "message_start", "message": start}, "message_start"),
            _sse(
                {"type": "content_block_start", "index": 0, "content_block": block},
                "content_block_start",
            ),
            _sse({"type": "ping"}, "ping"),
            *(
                _sse(
                    {
                        "type": "content_block_delta",
                        "index": 0,
                        "delta": {"type": "text_delta", "text": p},
                    },
                    "content_block_delta",
                )
                for p in parts
            ),
            _sse({"type": "content_block_stop", "index": 0}, "content_block_stop"),
            _sse(
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                    "usage": {"output_tokens": _tokens(text)},
                },
                "message_delta",
            ),
            _sse({"type": "message_stop"}, "message_stop"),
        ]
        return self._stream(action, events)

    async def _count_tokens(self, request: Request) -> Response:
        action, req = await self._parse(request)
        text = " ".join(_text(m.get("content")) for m in req.get("messages") or [])
        return self._json(action, {"input_tokens": _tokens(text)})

    async def _embeddings(self, request: Request) -> Response:
        action, req = await self._parse(request)
        inputs = req.get("input", "")
        if isinstance(inputs, str) or (inputs and isinstance(inputs[0], int)):
            inputs = [inputs]
        dims = int(req.get("dimensions") or 8)
        data = []
        for i, item in enumerate(inputs):
            seed = hashlib.sha256(json.dumps(item).encode()).digest()
            vec = [(seed[j % 32] - 128) / 128 for j in range(dims)]
            emb: Any = vec
            if req.get("encoding_format") == "base64":
                emb = base64.b64encode(struct.pack(f"<{dims}f", *vec)).decode()
            data.append({"object": "embedding", "index": i, "embedding": emb})
        n = sum(_tokens(json.dumps(x)) for x in inputs)
        return self._json(
            action,
            {
                "object": "list",
                "data": data,
                "model": req.get("model"),
                "usage": {"prompt_tokens": n, "total_tokens": n},
            },
        )

    async def _models(self, request: Request) -> Response:
        action: Action = request.scope["fake.action"]
        ids = ["fake-gpt", "fake-claude"]
        if "anthropic-version" in request.headers:
            data = [
                {"type": "model", "id": i, "display_name": i, "created_at": "2025-01-01T00:00:00Z"}
                for i in ids
            ]
            return self._json(
                action, {"data": data, "has_more": False, "first_id": ids[0], "last_id": ids[-1]}
            )
        data = [
            {"id": i, "object": "model", "created": 1735689600, "owned_by": "fake"} for i in ids
        ]
        return self._json(action, {"object": "list", "data": data})


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args()
    uvicorn.run(FakeProvider(), host=args.host, port=args.port, log_level=args.log_level)


if __name__ == "__main__":
    main()
