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
import contextlib
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


class _Flag:
    """A ``threading.Event`` that can also be awaited from any asyncio loop (any thread)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    def is_set(self) -> bool:
        return self._event.is_set()

    def set(self) -> None:
        with self._lock:
            self._event.set()
            waiters, self._waiters = self._waiters, []
        for loop, event in waiters:
            with contextlib.suppress(RuntimeError):  # that loop is already closed
                loop.call_soon_threadsafe(event.set)

    def wait(self, timeout: float | None = None) -> bool:
        return self._event.wait(timeout)

    async def wait_async(self) -> None:
        waiter = (asyncio.get_running_loop(), asyncio.Event())
        with self._lock:
            if self._event.is_set():
                return
            self._waiters.append(waiter)
        try:
            await waiter[1].wait()
        finally:
            with self._lock, contextlib.suppress(ValueError):
                self._waiters.remove(waiter)


class StreamHold:
    """Parks a stream before event ``after`` (default: the last event) until ``release()``.

    ``reached`` is set once the provider is parked, i.e. all earlier events were handed to
    uvicorn. The park is bounded by ``timeout`` (then the stream just continues), and using
    the hold as a context manager releases it on exit, so a failing test cannot wedge shutdown.
    """

    def __init__(self, after: int | None = None, timeout: float = 30.0) -> None:
        self.after = after
        self.timeout = timeout
        self.reached = _Flag()
        self.released = _Flag()

    def release(self) -> None:
        self.released.set()

    def wait_reached(self, timeout: float = 5.0) -> bool:
        """Blocking wait; use ``await hold.reached.wait_async()`` from async tests."""
        return self.reached.wait(timeout)

    async def _park(self) -> None:
        self.reached.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.released.wait_async(), self.timeout)

    def __enter__(self) -> StreamHold:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


@dataclass(frozen=True)
class Action:
    """How to answer one request; the defaults give the normal 200 answer.

    * ``status >= 300`` without ``json_body``/``body``: an OpenAI- or Anthropic-shaped error
      envelope (Anthropic for ``/v1/messages*`` or when ``anthropic-version`` was sent).
    * ``json_body`` / ``body`` (raw bytes): replace the answer entirely, with ``status``.
    * ``headers`` are added to any response (e.g. ``{"retry-after": "1"}``).
    * ``cut_after=N``: send N stream events, then abort the connection mid chunked body.
    * ``gzip``: really gzip the body (streams too, flushed per event) + ``content-encoding``.
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


def _event(kind: str, **fields: Any) -> bytes:
    return _sse({"type": kind, **fields}, kind)


def _block(text: str, kind: str = "text") -> dict[str, str]:
    return {"type": kind, "text": text}


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def _tokens(text: str) -> int:
    return max(1, len(text.split()))


def _prompt_tokens(req: dict[str, Any]) -> int:
    texts = [_text(req.get("system"))] + [
        _text(m.get("content")) for m in req.get("messages") or []
    ]
    return _tokens(" ".join(texts))


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

    >>> provider = FakeProvider()
    >>> with UvicornServer(provider) as srv:
    ...     provider.script(Action(status=429, headers={"retry-after": "1"}), Action(cut_after=2))
    ...     ...  # exercise the proxy pointed at srv.url
    ...     assert provider.wait_for_requests(2)[0].headers["authorization"] == "Bearer x"
    """

    def __init__(self, *, reply_prefix: str = "fake reply to: ", chunks: int = 5) -> None:
        self.reply_prefix = reply_prefix
        self.chunks = chunks
        self.requests: list[RecordedRequest] = []
        self._cond = threading.Condition()
        self._script: deque[Action] = deque()
        self._holds: list[StreamHold] = []
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
        with self._cond:
            self._holds.append(hold)
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
        """Forget recorded requests and queued actions; release every hold (even in-flight)."""
        with self._cond:
            holds = self._holds + [a.hold for a in self._script if a.hold is not None]
            self._holds, self.requests[:] = [], []
            self._script.clear()
        for hold in holds:
            hold.release()

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
        if (
            scope["method"] == "POST"
            and not isinstance(parsed, dict)
            and not action.overrides_answer
        ):
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
        prompt, completion = _prompt_tokens(req), _tokens(text)
        usage = dict(prompt_tokens=prompt, completion_tokens=completion)
        usage["total_tokens"] = prompt + completion
        base: dict[str, Any] = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "created": int(time.time()),
        }
        base |= {"model": req.get("model", "fake-model"), "system_fingerprint": "fp_fake"}
        if not req.get("stream"):
            message = {"role": "assistant", "content": text, "refusal": None}
            choice = dict(index=0, message=message, logprobs=None, finish_reason="stop")
            body = {**base, "object": "chat.completion", "choices": [choice], "usage": usage}
            return self._json(action, body)
        base["object"] = "chat.completion.chunk"
        with_usage = bool((req.get("stream_options") or {}).get("include_usage"))
        if with_usage:
            base["usage"] = None  # like the real API: null on every chunk but the last one

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            choice = dict(index=0, delta=delta, logprobs=None, finish_reason=finish)
            return _sse({**base, "choices": [choice]})

        events = [chunk({"role": "assistant", "content": "", "refusal": None})]
        events += [chunk({"content": p}) for p in parts] + [chunk({}, "stop")]
        if with_usage:
            events.append(_sse({**base, "choices": [], "usage": usage}))
        return self._stream(action, [*events, b"data: [DONE]\n\n"])

    async def _messages(self, request: Request) -> Response:
        action, req = await self._parse(request)
        text, parts = self._reply(action, req.get("messages"))
        prompt, completion = _prompt_tokens(req), _tokens(text)
        msg: dict[str, Any] = {
            "id": f"msg_{uuid.uuid4().hex[:24]}",
            "type": "message",
            "role": "assistant",
        }
        msg |= {"model": req.get("model", "fake-model"), "content": [_block(text)]}
        msg |= {"stop_reason": "end_turn", "stop_sequence": None}
        msg["usage"] = {"input_tokens": prompt, "output_tokens": completion}
        if not req.get("stream"):
            return self._json(action, msg)
        start: dict[str, Any] = {**msg, "content": [], "stop_reason": None}
        start["usage"] = {"input_tokens": prompt, "output_tokens": 1}
        end = {"stop_reason": "end_turn", "stop_sequence": None}
        events = [
            _event("message_start", message=start),
            _event("content_block_start", index=0, content_block=_block("")),
            _event("ping"),
            *(_event("content_block_delta", index=0, delta=_block(p, "text_delta")) for p in parts),
            _event("content_block_stop", index=0),
            _event("message_delta", delta=end, usage={"output_tokens": completion}),
            _event("message_stop"),
        ]
        return self._stream(action, events)

    async def _count_tokens(self, request: Request) -> Response:
        action, req = await self._parse(request)
        return self._json(action, {"input_tokens": _prompt_tokens(req)})

    async def _embeddings(self, request: Request) -> Response:
        action, req = await self._parse(request)
        inputs = req.get("input", "")
        if isinstance(inputs, str) or (inputs and isinstance(inputs[0], int)):
            inputs = [inputs]
        dims = int(req.get("dimensions") or 8)
        data = []
        for i, item in enumerate(inputs):
            seed = hashlib.sha256(json.dumps(item).encode()).digest()
            vector = [(seed[j % 32] - 128) / 128 for j in range(dims)]
            embedding: Any = vector
            if req.get("encoding_format") == "base64":  # the openai SDK's default!
                embedding = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode()
            data.append({"object": "embedding", "index": i, "embedding": embedding})
        n = sum(_tokens(json.dumps(x)) for x in inputs)
        body = {"object": "list", "data": data, "model": req.get("model")}
        return self._json(action, {**body, "usage": {"prompt_tokens": n, "total_tokens": n}})

    async def _models(self, request: Request) -> Response:
        action: Action = request.scope["fake.action"]
        ids = ["fake-gpt", "fake-claude"]
        if "anthropic-version" in request.headers:  # Anthropic's list shape
            created = "2025-01-01T00:00:00Z"
            models = [dict(type="model", id=i, display_name=i, created_at=created) for i in ids]
            page = {"has_more": False, "first_id": ids[0], "last_id": ids[-1]}
            return self._json(action, {"data": models, **page})
        data: list[dict[str, Any]]
        data = [dict(id=i, object="model", created=1735689600, owned_by="fake") for i in ids]
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
