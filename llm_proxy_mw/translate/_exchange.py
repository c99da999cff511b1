"""One translated exchange: the client's request in the provider's API, and the provider's
answer back in the client's, JSON or SSE.

The request goes to the create endpoint of the provider's API (the client's query string
belongs to the client's API and is dropped), without ``accept-encoding``: the proxy must
read the answer. An error answer is read whole (bounded) and converted by
``translate_error``; a JSON answer is read whole (bounded) and converted by the codec; a
stream is translated event by event as it arrives, one send per upstream read at most, and
ends as the client's API ends a stream: cleanly only when the provider's did. Each event's
raw data is first offered to the translator's fast path (``feed_raw``, when it has one).
"""

from __future__ import annotations

import json
from collections.abc import Callable

from starlette.types import Send

from llm_proxy_mw.apis import API_PATHS, Api
from llm_proxy_mw.context import Attempt, RequestContext
from llm_proxy_mw.errors import InvalidRequestError, ProxyError, UpstreamProtocolError
from llm_proxy_mw.providers import Provider
from llm_proxy_mw.translate._codec import Codec, Json, StreamTranslator, Target, TokenUsage
from llm_proxy_mw.translate._errors import translate_error
from llm_proxy_mw.translate._sse import (
    DONE_FRAME,
    SseParser,
    compact_json,
    frame_events,
    parse_data,
)
from llm_proxy_mw.transports import UpstreamRequest, UpstreamResponse
from llm_proxy_mw.wire import WireFormat, log_error

__all__ = ["MAX_ERROR_BYTES", "MAX_JSON_BYTES", "relay_translated", "translated_request"]

#: The most of an error answer read to convert it.
MAX_ERROR_BYTES = 1024 * 1024
#: The most of a JSON answer read to translate it.
MAX_JSON_BYTES = 64 * 1024 * 1024

_PATH_OF = {api: path for path, api in API_PATHS.items()}
#: Client headers a translated request does not forward: its body is ours.
_NOT_FORWARDED = frozenset({"accept-encoding", "content-type", "content-length"})
#: Upstream response headers that describe the upstream's body, not ours.
_BODY_HEADERS = frozenset({b"content-length", b"content-encoding", b"content-type"})
_JSON_TYPE = (b"content-type", b"application/json")
_SSE_TYPE = (b"content-type", b"text/event-stream; charset=utf-8")


def _wire_format_of(api: Api) -> WireFormat:
    return WireFormat.ANTHROPIC if api is Api.MESSAGES else WireFormat.OPENAI


def translated_request(
    ctx: RequestContext,
    provider: Provider,
    codec: Codec,
    model: str | None,
    headers: list[tuple[bytes, bytes]],
    *,
    trace_context: bool = True,
) -> UpstreamRequest:
    """The provider's request for the client's; ``UntranslatableError`` before anything is
    sent when it has no equivalent. ``model``: the one to ask for, else the client's;
    ``trace_context``: whether the client's trace headers go (``Provider.request_headers``)."""
    body = ctx.json()
    if body is None:
        raise InvalidRequestError("The request body must be a JSON object.")
    target = Target(model or ctx.model or "", provider.config.default_max_tokens)
    translated = compact_json(codec.request(body, target))
    forwarded = [
        (n, v)
        for n, v in provider.request_headers(headers, trace_context=trace_context)
        if n not in _NOT_FORWARDED
    ]
    forwarded.append(("content-type", "application/json"))
    url = provider.url_for(_PATH_OF[codec.provider], b"")
    return UpstreamRequest("POST", url, forwarded, translated)


async def relay_translated(
    ctx: RequestContext,
    codec: Codec,
    response: UpstreamResponse,
    headers: list[tuple[bytes, bytes]],
    attempt: Attempt,
    send: Send,
) -> None:
    """Send the provider's ``response`` to the client in its API; ``headers`` are the
    forwardable upstream headers plus the proxy's own. The token usage goes to ``ctx``."""
    headers = [(n, v) for n, v in headers if n not in _BODY_HEADERS]
    sse = False
    for name, value in response.headers:
        lower = name.lower()
        if lower == b"content-type":
            sse = value.startswith(b"text/event-stream")
        elif lower == b"content-encoding" and value.lower() != b"identity":
            raise UpstreamProtocolError("The provider compressed an answer the proxy must read.")
    status = response.status
    if not 200 <= status < 300:
        body = await _read_whole(response, MAX_ERROR_BYTES)
        provider_format = _wire_format_of(codec.provider)
        status, body = translate_error(status, body, provider_format, ctx.wire_format)
        await _send_whole(send, status, headers, body)
    elif sse:
        translator = codec.stream(ctx.json() or {})
        await _relay_stream(ctx, translator, codec.client, response, attempt, headers, send)
    else:
        answer = _object(await _read_whole(response, MAX_JSON_BYTES))
        translated, usage = codec.response(answer, ctx.json() or {})
        _count(ctx, usage)
        body = compact_json(translated)
        await _send_whole(send, status, headers, body)


async def _relay_stream(
    ctx: RequestContext,
    translator: StreamTranslator,
    client: Api,
    response: UpstreamResponse,
    attempt: Attempt,
    headers: list[tuple[bytes, bytes]],
    send: Send,
) -> None:
    """Each upstream read's events translated and sent at once, then the closing events."""
    parser = SseParser()
    relay = _Relay(translator, client)
    raw = relay.raw
    headers.append(_SSE_TYPE)
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    try:
        while not parser.done and (chunk := await response.read_chunk()):
            datas = parser.feed_data(chunk)
            if len(datas) == 1:  # the usual read: one event, most often a delta
                body = raw(datas[0])
                if body is None:
                    body = relay.slow(datas[0])
            else:
                body = relay.body(datas)
            if body:
                await send({"type": "http.response.body", "body": body, "more_body": True})
        out = _fed(translator, parser.close()) + translator.finish()
        closing = frame_events(client, out)
        if client is Api.CHAT and not (out and "error" in out[-1]):
            closing += DONE_FRAME
    except ProxyError as error:
        # The stream broke: the client's API's terminal error, never a clean end.
        error.provider = ctx.provider
        attempt.outcome = error.code
        log_error(error, ctx.request_id, attempt.upstream_request_id)
        closing = frame_events(client, translator.fail(error))
    finally:
        _count(ctx, translator.usage)
    await response.aclose()
    await send({"type": "http.response.body", "body": closing})


class _Relay:
    """Each upstream event's data as the client's framed events: by the translator's fast
    path (``raw``) when it takes the event, else parsed, fed and framed (``slow``)."""

    __slots__ = ("raw", "_translator", "_client")

    def __init__(self, translator: StreamTranslator, client: Api) -> None:
        self.raw: Callable[[bytes], bytes | None] = getattr(translator, "feed_raw", _no_raw)
        self._translator = translator
        self._client = client

    def body(self, datas: list[bytes]) -> bytes:
        raw = self.raw
        return b"".join([body if (body := raw(d)) is not None else self.slow(d) for d in datas])

    def slow(self, data: bytes) -> bytes:
        event = parse_data(data)
        if event is None:
            return b""
        return frame_events(self._client, self._translator.feed(event))


def _fed(translator: StreamTranslator, events: list[Json]) -> list[Json]:
    out: list[Json] = []
    for event in events:
        out += translator.feed(event)
    return out


def _no_raw(data: bytes) -> None:
    return None


def _object(body: bytes) -> Json:
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise UpstreamProtocolError("The provider's answer is not a JSON object.")
    return answer


def _count(ctx: RequestContext, usage: TokenUsage | None) -> None:
    """The provider's token count, as the codec read it: Metrics takes it from here."""
    if usage is not None:
        counted = ctx.usage
        counted.prompt_tokens = usage.prompt_tokens
        counted.completion_tokens = usage.completion_tokens
        counted.cache_read_tokens = usage.cached_tokens
        counted.cache_write_tokens = usage.cache_creation_tokens
        counted.reasoning_tokens = usage.reasoning_tokens


async def _read_whole(response: UpstreamResponse, limit: int) -> bytes:
    parts = []
    size = 0
    while chunk := await response.read_chunk():
        size += len(chunk)
        if size > limit:
            raise UpstreamProtocolError(f"The provider's answer exceeds {limit} bytes.")
        parts.append(chunk)
    await response.aclose()
    return b"".join(parts)


async def _send_whole(
    send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes
) -> None:
    headers += [_JSON_TYPE, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
