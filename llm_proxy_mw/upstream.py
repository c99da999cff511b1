"""The terminal app: send the request to the chosen provider, stream its answer back.

Upstream only sends: to the deployment Routing chose (``ctx.route``), once per call, and
appends an ``Attempt`` saying how it ended; whether to retry, and where, is decided around it.
Bytes flow chunk by chunk as they arrive; nothing is buffered, decoded or re-encoded, unless
the route translates (``translate/_exchange.py``): then the request and the answer are
converted, streams event by event as they arrive. When
the provider fails after the response started, an SSE client gets a terminal error event in
its wire format and any other client a response that visibly breaks off, never a clean end
that looks like success. The provider's own id of its answer (``x-request-id``,
``request-id``) goes back as ``x-llm-proxy-upstream-request-id`` and onto the attempt's record,
for the request's log line.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from starlette.types import Receive, Scope, Send

from llm_proxy_mw._disconnect import cancel_on_disconnect, watched
from llm_proxy_mw._stream_usage import HiddenUsage, body_asking_usage
from llm_proxy_mw._upload import Upload
from llm_proxy_mw.context import (
    Attempt,
    RequestContext,
    get_context,
    read_body,
)
from llm_proxy_mw.errors import (
    InvalidRequestError,
    ProviderUnavailableError,
    ProxyError,
    outcome_for_status,
)
from llm_proxy_mw.providers import (
    HOP_BY_HOP,
    PLAIN_CONNECTION_VALUES,
    CredentialSource,
    Provider,
    connection_listed,
)
from llm_proxy_mw.translate._codec import Codec
from llm_proxy_mw.translate._exchange import relay_translated, translated_request
from llm_proxy_mw.translate._sse import compact_json
from llm_proxy_mw.transports import UpstreamRequest
from llm_proxy_mw.wire import error_event, log_error

__all__ = ["ORIGIN_RESPONSE_HEADERS", "UpstreamApp"]

_HOP_BY_HOP_BYTES = frozenset(name.encode() for name in HOP_BY_HOP)

#: Provider response headers that would act on the host app's whole origin, where the proxy
#: is mounted, rather than on this one response: cookies (the provider's or its CDN's, set
#: on the host's domain), wiping the host's storage, pinning the host to HTTPS, other hosts
#: or keys, reporting the host's network errors to the provider (``nel``, ``report-to``),
#: letting other sites read the host's responses (CORS is the host's decision), and a login
#: prompt for the provider's realm. Per-response policies such as
#: ``content-security-policy`` only restrict this response, and pass.
ORIGIN_RESPONSE_HEADERS = frozenset(
    {
        b"set-cookie",
        b"set-cookie2",
        b"clear-site-data",
        b"strict-transport-security",
        b"alt-svc",
        b"public-key-pins",
        b"public-key-pins-report-only",
        b"expect-ct",
        b"nel",
        b"report-to",
        b"www-authenticate",
    }
)

#: The provider's own ids of its answer (OpenAI's, Anthropic's): the client gets the proxy's
#: id under these names, and the provider's as ``x-llm-proxy-upstream-request-id``.
_UPSTREAM_IDS = frozenset({b"x-request-id", b"request-id"})
_UPSTREAM_REQUEST_ID = b"x-llm-proxy-upstream-request-id"

#: The server in front of us sets its own ``date`` and ``server``; two of each is invalid
#: (RFC 9110 §5.3). Our own headers from a proxy further upstream would be misleading.
_DROPPED_RESPONSE = (
    ORIGIN_RESPONSE_HEADERS
    | _UPSTREAM_IDS
    | {
        b"date",
        b"server",
        b"x-llm-proxy-provider",
        b"x-llm-proxy-attempts",
        _UPSTREAM_REQUEST_ID,
    }
)


def response_headers(
    raw: Sequence[tuple[bytes, bytes]],
) -> tuple[list[tuple[bytes, bytes]], int | None, bool, bytes | None]:
    """Forwardable response headers, the content length if declared, whether it is SSE, and
    the provider's own id of the answer (the first of ``x-request-id``, ``request-id``)."""
    headers: list[tuple[bytes, bytes]] = []
    length: int | None = None
    sse = False
    upstream_id: bytes | None = None
    listed: frozenset[str] = frozenset()
    for name, value in raw:
        lower = name.lower()
        if lower in _HOP_BY_HOP_BYTES:
            if lower == b"connection" and value.lower() not in PLAIN_CONNECTION_VALUES:
                listed = connection_listed(value)
            continue
        if lower in _DROPPED_RESPONSE or lower.startswith(b"access-control-"):
            if upstream_id is None and lower in _UPSTREAM_IDS:
                upstream_id = value
            continue
        if lower == b"content-length":
            length = int(value) if value.isdigit() else None
        elif lower == b"content-type":
            sse = value.startswith(b"text/event-stream")
        headers.append((lower, value))
    if listed:
        headers = [(n, v) for n, v in headers if n.decode("latin-1") not in listed]
    return headers, length, sse, upstream_id


def _with_model(ctx: RequestContext, model: str) -> bytes:
    """The client's body asking for ``model`` instead (a fallback model's native provider)."""
    body = ctx.json()
    if body is None:
        raise InvalidRequestError("The request body must be a JSON object.")
    return compact_json({**body, "model": model})


def _stream_upload(upload: Upload, request: UpstreamRequest) -> None:
    """The upload as the request's body, chunk by chunk, with its declared length."""
    request.body = upload.chunks()
    if upload.length is not None:
        request.headers.append(("content-length", str(upload.length)))


class UpstreamApp:
    """ASGI app that proxies the request to the provider that Routing chose.

    Without Routing in front (used alone), it serves a single provider.
    """

    def __init__(
        self,
        providers: Mapping[str, Provider] | Sequence[Provider],
        *,
        max_body_bytes: int | None = None,  # None: the request context's limit
    ) -> None:
        if not isinstance(providers, Mapping):
            providers = {p.name: p for p in providers}
        self.providers = dict(providers)
        self.max_body_bytes = max_body_bytes
        self._only = next(iter(self.providers.values())) if len(self.providers) == 1 else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        ctx = get_context(scope)
        provider = self.providers.get(ctx.provider) if ctx.provider else self._only
        if provider is None:
            raise ProviderUnavailableError("No provider was chosen for this request.")
        if ctx.provider is None:  # alone, without Routing: it names its one provider
            ctx.provider = provider.name
        body = ctx.body  # read once, by whichever layer needed it first
        if body is None:
            body = await read_body(ctx, scope, receive, self.max_body_bytes)
        route = ctx.route
        model = codec = None
        if route is not None:
            model, codec = route.model, route.codec
        hidden: HiddenUsage | None = None
        traced = ctx.telemetry
        # A traced request sends its own trace context, not the client's (``_otel_attempt``).
        trace_context = traced is None
        if codec is not None:
            request = translated_request(
                ctx, provider, codec, model, scope["headers"], trace_context=trace_context
            )
        else:
            fallback = model if model is not None and model != ctx.model else None
            if (asking := body_asking_usage(ctx, fallback)) is not None:
                body, hidden = asking, HiddenUsage(ctx)  # a stream always counted
            elif fallback is not None:
                body = _with_model(ctx, fallback)  # a fallback model: only then a copy
            request = UpstreamRequest(
                scope["method"],
                provider.url_for(ctx.route_path, scope["query_string"]),
                provider.request_headers(scope["headers"], trace_context=trace_context),
                body,
            )
            if ctx.upload is not None:
                _stream_upload(ctx.upload, request)
            elif hidden is not None:  # the proxy must read what it takes out
                request.headers = [h for h in request.headers if h[0] != "accept-encoding"]
        if traced is not None and not traced.recording:
            traced.propagate(request)  # sampled out: its context goes, with no attempt span
            traced = None
        if traced is not None:
            before = len(ctx.attempts)
            span = traced.attempt(provider, request)
        try:
            if watched(ctx):
                # Retry in front already guards the request (and owns its one watcher).
                await self._exchange(ctx, provider, request, codec, hidden, send)
            else:
                if ctx.upload is not None:
                    receive = ctx.upload.receive_after_body
                async with cancel_on_disconnect(ctx, receive):
                    await self._exchange(ctx, provider, request, codec, hidden, send)
        except BaseException as error:  # any ending, cancellation too, ends the span; re-raised
            if traced is not None:
                traced.attempt_ended(span, before, error)
            raise
        if traced is not None:
            traced.attempt_ended(span, before, None)

    async def _add_credentials(
        self, ctx: RequestContext, name: str, source: CredentialSource, request: UpstreamRequest
    ) -> None:
        """Credentials fetched at run time (a cached OAuth2 token). A failure counts as an
        attempt of this provider, so that metrics, health and fallbacks see it."""
        started = time.perf_counter()
        try:
            request.headers += await source.headers()
        except ProxyError as error:
            error.provider = name
            ctx.attempts.append(Attempt(name, error.code, None, time.perf_counter() - started))
            raise

    async def _exchange(
        self,
        ctx: RequestContext,
        provider: Provider,
        request: UpstreamRequest,
        codec: Codec | None,
        hidden: HiddenUsage | None,
        send: Send,
    ) -> None:
        """``hidden``: the usage the proxy asked for, to take out of a stream's answer."""
        if provider.credential_source is not None:
            await self._add_credentials(ctx, provider.name, provider.credential_source, request)
        started = time.perf_counter()
        try:
            response = await provider.transport.send(request)
        except ProxyError as error:
            if ctx.upload is not None and ctx.upload.error is not None:
                # The client's upload broke off (too slow, too large, gone), not the
                # provider: no attempt of the provider's to record.
                raise ctx.upload.error from None
            error.provider = provider.name
            ctx.attempts.append(
                Attempt(provider.name, error.code, None, time.perf_counter() - started)
            )
            raise
        attempt = Attempt(
            provider.name,
            outcome_for_status(response.status),
            response.status,
            time.perf_counter() - started,
        )
        ctx.attempts.append(attempt)
        try:
            headers, remaining, sse, upstream_id = response_headers(response.headers)
            headers.append((b"x-llm-proxy-provider", provider.name.encode()))
            headers.append((b"x-llm-proxy-attempts", str(len(ctx.attempts)).encode()))
            if upstream_id is not None:
                headers.append((_UPSTREAM_REQUEST_ID, upstream_id))
                attempt.upstream_request_id = upstream_id.decode("latin-1")
            if codec is not None:
                try:
                    await relay_translated(ctx, codec, response, headers, attempt, send)
                except ProxyError as error:
                    error.provider = provider.name
                    attempt.outcome = error.code
                    raise
                return
            if hidden is not None and (hidden := hidden.taking(response.status, sse, headers)):
                remaining = None
            await send(
                {"type": "http.response.start", "status": response.status, "headers": headers}
            )
            try:
                while chunk := await response.read_chunk():
                    if hidden is not None and not (chunk := hidden.feed(chunk)):
                        continue
                    if remaining is not None:
                        remaining -= len(chunk)
                        if remaining <= 0:
                            # Release the upstream before the last byte goes out: once the
                            # response is complete the server reports a disconnect, which
                            # must not interrupt a close still in progress.
                            await response.aclose()
                            await send({"type": "http.response.body", "body": chunk})
                            return
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except ProxyError as error:
                error.provider = provider.name
                attempt.outcome = error.code
                if not sse:
                    raise
                log_error(error, ctx.request_id, attempt.upstream_request_id)
                await response.aclose()
                if hidden is not None and (rest := hidden.finish()):
                    await send({"type": "http.response.body", "body": rest, "more_body": True})
                await send(
                    {"type": "http.response.body", "body": error_event(error, ctx.wire_format)}
                )
                return
            await response.aclose()
            rest = hidden.finish() if hidden is not None else b""
            await send({"type": "http.response.body", "body": rest})
        finally:
            await response.aclose()
