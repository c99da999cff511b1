"""The translation benchmark's payloads: one answer in each API, and one request in each.

The provider's answers are the fixtures' Chat Completions answer (the 678-byte completion,
the 100-chunk stream) carried into Messages and Responses by the proxy's own codecs, once
at import: every provider answers the same text with the same usage, so a translated row
and its passthrough row differ only by the translation. The client requests ask the same
question in each API.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

from benchmarks.fixtures import CHAT, CHAT_SSE_EVENTS, UPSTREAM_KEY, request_body
from llm_proxy_mw import UpstreamRequest, UpstreamResponse
from llm_proxy_mw.apis import Api
from llm_proxy_mw.translate import CODECS
from llm_proxy_mw.translate._sse import SseParser, frame_events

__all__ = ["ANSWERS", "MemoryTransport", "TEXT_DELTAS", "client_request", "provider_data"]

#: The text deltas of the fixtures' stream, which every translated stream must keep.
TEXT_DELTAS = len(CHAT_SSE_EVENTS) - 3


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


_SYSTEM = "You are a terse assistant used in a benchmark."
_QUESTION = "Say one short sentence about proxy latency."


def client_request(client: Api, model: str, *, stream: bool) -> bytes:
    """The fixtures' chat request, asked in ``client``'s API."""
    if client is Api.CHAT:
        return request_body(model, stream=stream)
    common = {"model": model, "temperature": 0, "stream": stream}
    if client is Api.MESSAGES:
        user = {"role": "user", "content": _QUESTION}
        return _dumps({**common, "system": _SYSTEM, "messages": [user], "max_tokens": 64})
    return _dumps({**common, "instructions": _SYSTEM, "input": _QUESTION, "max_output_tokens": 64})


def _answers_from_chat(client: Api) -> tuple[bytes, list[bytes]]:
    """The fixtures' answer in ``client``'s API: the JSON body, and the stream framed one
    event per chunk, as a provider writes it."""
    codec = CODECS[(client, Api.CHAT)]
    request = json.loads(client_request(client, "bench", stream=True))
    body, _ = codec.response(json.loads(CHAT), request)
    translator = codec.stream(request)
    events: list[Any] = []
    parser = SseParser()
    for chunk in CHAT_SSE_EVENTS:
        for event in parser.feed(chunk):
            events += translator.feed(event)
    events += translator.finish()
    return _dumps(body), [frame_events(client, [event]) for event in events]


#: Per provider API: its JSON answer and its stream, the same answer in each.
ANSWERS: dict[Api, tuple[bytes, list[bytes]]] = {
    Api.CHAT: (CHAT, CHAT_SSE_EVENTS),
    Api.MESSAGES: _answers_from_chat(Api.MESSAGES),
    Api.RESPONSES: _answers_from_chat(Api.RESPONSES),
}

_PATHS = {b"/chat/completions": Api.CHAT, b"/messages": Api.MESSAGES, b"/responses": Api.RESPONSES}
_JSON_HEADERS = [(b"content-type", b"application/json")]
_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


class MemoryTransport:
    """An ``UpstreamTransport`` answering at once from ``ANSWERS`` in the API of the URL it
    is sent to, one event per read. With ``stamp`` it notes when each read returned
    (``read_ns``), for the per-event latency rows; off, the CPU rows pay nothing for it."""

    def __init__(self, *, stamp: bool = False) -> None:
        self.stamp = stamp
        self.read_ns = 0

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        api = _PATHS[request.url.encode().rsplit(b"/v1", 1)[1]]
        body, events = ANSWERS[api]
        chunks: Iterator[bytes]
        if b'"stream":true' in request.body:
            chunks, headers = iter(events), _SSE_HEADERS
        else:
            chunks = iter((body,))
            headers = [*_JSON_HEADERS, (b"content-length", str(len(body)).encode())]

        async def read_chunk() -> bytes:
            return next(chunks, b"")

        async def stamped_read_chunk() -> bytes:
            chunk = next(chunks, b"")
            self.read_ns = time.perf_counter_ns()
            return chunk

        return UpstreamResponse(200, headers, stamped_read_chunk if self.stamp else read_chunk)

    async def aclose(self) -> None:
        return None


def provider_data(kind: str, models: list[str], **options: Any) -> dict[str, Any]:
    """One provider's config entry, its base URL never dialled (the transport answers)."""
    return {
        "kind": kind,
        "base_url": "http://127.0.0.1:9/v1",
        "api_key": UPSTREAM_KEY,
        "models": models,
        **options,
    }
