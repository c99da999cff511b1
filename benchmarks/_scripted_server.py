"""The scripted fake provider on the benchmarks' raw HTTP server (``_raw_http``).

One connection, one ``ScriptedProtocol``: each request is recorded by the ``FakeProvider``,
which names the ``Action``; the answer is written by a task, so that delays, paced events
and holds can wait without blocking the loop. A lost connection cancels that task.
"""

from __future__ import annotations

import asyncio
import json
import time
import zlib
from dataclasses import replace
from http import HTTPStatus
from urllib.parse import unquote

from benchmarks import _wire
from benchmarks._raw_http import RequestProtocol, chunk, head
from benchmarks._scripted import Action, FakeProvider, RecordedRequest

__all__ = ["ScriptedProtocol"]

_JSON = "application/json"
_TEXT = "text/plain; charset=utf-8"
_END = b"0\r\n\r\n"


def _status(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:  # e.g. Anthropic's 529
        return f"{status} "


def _record(
    method: bytes, url: bytes, raw: list[tuple[str, str]], body: bytes, version: str
) -> RecordedRequest:
    path, _, query = url.partition(b"?")
    headers: dict[str, str] = {}
    for k, v in raw:
        headers[k] = f"{headers[k]}, {v}" if k in headers else v
    try:
        parsed = json.loads(body) if body else None
    except ValueError:
        parsed = None
    return RecordedRequest(
        method.decode("latin-1"),
        unquote(path.decode("latin-1")),
        query.decode("latin-1"),
        headers,
        raw,
        body,
        parsed,
        version,
        time.monotonic(),
    )


class ScriptedProtocol(RequestProtocol):
    """One client connection of the scripted fake provider; ``connections`` holds the live ones."""

    def __init__(self, provider: FakeProvider, connections: set[ScriptedProtocol]) -> None:
        super().__init__()
        self._provider = provider
        self._open = connections
        self._headers: list[tuple[str, str]] = []
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._open.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._open.discard(self)
        if self.task is not None:
            self.task.cancel()
        super().connection_lost(exc)

    def abort(self) -> None:
        """Drop the connection now (server shutdown)."""
        if self._transport is not None:
            self._transport.abort()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._headers = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.decode("latin-1").lower(), value.decode("latin-1")))

    def on_message_complete(self) -> None:
        parser = self._parser
        request = _record(
            parser.get_method(),
            self._url,
            self._headers,
            b"".join(self._body),
            parser.get_http_version(),
        )
        respond = self._respond(request, parser.should_keep_alive())
        self.task = asyncio.get_running_loop().create_task(respond)

    async def _respond(self, request: RecordedRequest, keep_alive: bool) -> None:
        action = self._provider.take(request)
        if (
            request.method == "POST"
            and not isinstance(request.json, dict)
            and not action.overrides_answer
        ):
            action = replace(action, status=400)  # the real APIs reject non-JSON bodies too
        if action.delay:
            await asyncio.sleep(action.delay)
        status, content_type, reply = self._reply(action, request)
        if isinstance(reply, list):
            await self._stream(action, reply, keep_alive)
            return
        headers = dict(action.headers)
        if action.gzip:
            reply = zlib.compress(reply, wbits=31)
            headers["content-encoding"] = "gzip"
        headers.setdefault("content-type", content_type)
        headers["content-length"] = str(len(reply))
        self._write([self._head(status, headers, keep_alive) + reply], keep_alive)

    def _reply(self, action: Action, request: RecordedRequest) -> tuple[int, str, _wire.Reply]:
        anthropic_version = "anthropic-version" in request.headers
        if action.body is not None:
            return action.status, _JSON, action.body
        if action.json_body is not None:
            return action.status, _JSON, json.dumps(action.json_body).encode()
        if action.status >= 300:
            anthropic = request.path.startswith("/v1/messages") or anthropic_version
            return action.status, _JSON, _wire.error_envelope(action.status, anthropic)
        method = _wire.ROUTES.get(request.path)
        if method is None:
            return 404, _TEXT, b"Not Found"
        if method != request.method:
            return 405, _TEXT, b"Method Not Allowed"
        req = request.json if isinstance(request.json, dict) else {}
        provider = self._provider
        wording = _wire.Wording(action.reply, provider.reply_prefix, provider.chunks)
        reply = _wire.answer(
            request.path, req, anthropic_version, wording, action.turn, action.error_after
        )
        return action.status, _JSON, reply

    def _head(self, status: int, headers: dict[str, str], keep_alive: bool) -> bytes:
        fields = list(headers.items())
        if not keep_alive:
            fields.append(("connection", "close"))
        return head(_status(status), fields, server="fake-provider")

    async def _stream(self, action: Action, events: list[bytes], keep_alive: bool) -> None:
        headers = {"cache-control": "no-cache", **action.headers}
        if action.gzip:
            headers["content-encoding"] = "gzip"
        headers.setdefault("content-type", "text/event-stream; charset=utf-8")
        headers["transfer-encoding"] = "chunked"
        hold = action.hold
        hold_at = -1 if hold is None else len(events) - 1 if hold.after is None else hold.after
        z = zlib.compressobj(wbits=31) if action.gzip else None  # gzip container
        parts = [self._head(200, headers, keep_alive)]
        for i, event in enumerate(events):
            if i == action.cut_after:  # what a provider dying mid-stream looks like
                self._write(parts, keep_alive=False)
                return
            if hold is not None and i == hold_at:
                self._write(parts, keep_alive=True)
                parts = []
                await hold.park()
            elif i and action.event_delay:
                self._write(parts, keep_alive=True)
                parts = []
                await asyncio.sleep(action.event_delay)
            parts.append(chunk(z.compress(event) + z.flush(zlib.Z_SYNC_FLUSH) if z else event))
        if z:
            parts.append(chunk(z.flush()))
        self._write([*parts, _END], keep_alive)
