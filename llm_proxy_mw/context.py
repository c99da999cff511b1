"""The per-request context every layer reads and fills, and the layer that creates it.

One typed object lives at ``scope["state"]["llm_proxy_mw"]``. Whichever layer runs first
creates it, so each middleware also works on its own. What one layer parsed (the body, its
JSON, the model) is never parsed again by another.
"""

from __future__ import annotations

import asyncio
import contextvars
import random
import re
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llm_proxy_mw._body_deadline import start_body_read
from llm_proxy_mw._json_body import is_json_type, parse_object, takes_other_bodies
from llm_proxy_mw._upload import Upload, UploadPolicy, open_upload
from llm_proxy_mw.errors import (
    ClientDisconnected,
    InvalidRequestError,
    ProviderUnavailableError,
    ProxyError,
    RequestBodyTimeout,
    RequestTooLargeError,
)
from llm_proxy_mw.wire import WireFormat, log_error, send_error, wire_format_of

if TYPE_CHECKING:
    from llm_proxy_mw._plan import Route

__all__ = [
    "ANONYMOUS",
    "Attempt",
    "ClientDisconnected",
    "RequestContext",
    "RequestContextMiddleware",
    "Usage",
    "current_request_id",
    "get_context",
    "principal_id",
    "read_body",
]

STATE_KEY = "llm_proxy_mw"
DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024
#: Seconds to receive a whole JSON or form body (``request_body_timeout``).
DEFAULT_BODY_TIMEOUT = 30.0
_DEFAULT_UPLOADS = UploadPolicy()

#: The request id of the request being handled, for log records.
current_request_id: contextvars.ContextVar[str] = contextvars.ContextVar(
    "llm_proxy_request_id", default="-"
)

_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


@dataclass(slots=True)
class Attempt:
    """One upstream attempt: which provider, how it ended, how long it took."""

    provider: str
    outcome: str
    status: int | None
    latency: float
    wait: float = 0.0
    #: The provider's own id of its answer (its ``x-request-id`` or ``request-id``).
    upstream_request_id: str | None = None


@dataclass(slots=True)
class Usage:
    """The tokens one request used, as OpenAI counts them: ``prompt_tokens`` include the
    cache reads and writes (Anthropic counts those outside its ``input_tokens``),
    ``completion_tokens`` include the reasoning tokens. ``cost_usd`` is ``None`` until the
    request is priced, and stays ``None`` for a model without a known price (never 0)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: Decimal | None = None


#: The principal id of a request no authenticator vouched for (no ``[auth]`` section).
ANONYMOUS = "anonymous"


def principal_id(ctx: RequestContext) -> str:
    """Whom a request counts against: its principal's owner id (``api_key:<name>``,
    ``session:<idp>:<subject>``, ...; a proxy-issued token counts against the principal
    that minted it), or ``ANONYMOUS``."""
    owner = getattr(ctx.principal, "owner_id", None)
    return owner if isinstance(owner, str) else ANONYMOUS


@dataclass(slots=True)
class RequestContext:
    """Everything known about one proxied request."""

    request_id: str
    route_path: str
    wire_format: WireFormat
    started: float = field(default_factory=time.perf_counter)
    principal: Any = None
    body: bytes | None = None
    model: str | None = None
    #: The deployment of the current attempt, as Routing chose it.
    provider: str | None = None
    #: Routing's ``Plan``: where each attempt goes (typed loosely, as ``principal`` is, so
    #: that the context imports no layer).
    plan: Any = None
    #: The current attempt's route: provider, the model it is asked for, and the codec
    #: translating for it; ``None`` without Routing (Upstream then passes through).
    route: Route | None = None
    attempts: list[Attempt] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    ttfb: float | None = None
    status: int | None = None
    #: The most bytes of body ``read_body`` takes (``max_body_bytes``).
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    #: Seconds to receive the whole body; uploads have none (see ``read_body``).
    body_timeout: float = DEFAULT_BODY_TIMEOUT
    #: Whether every ``content-type`` of the request is JSON; known once the body is read.
    body_is_json: bool | None = None
    #: The limits of an upload (``max_upload_bytes``, ``min_upload_rate``).
    upload_policy: UploadPolicy = _DEFAULT_UPLOADS
    #: The body of an upload, streamed instead of read into ``body`` (``read_body``).
    upload: Upload | None = None
    #: The provider the request pins (its ``x-llm-proxy-provider`` header), if any.
    pinned_provider: str | None = None
    #: The trace and span ids (hex) of the request's span while it is traced (the
    #: ``telemetry`` layer), for the access record; ``None`` when nothing records it.
    trace_id: str | None = None
    span_id: str | None = None
    #: The request's ``RequestTrace`` while it is traced (``_otel_attempt.py``): Upstream
    #: opens each attempt's span through it, Retry notes its waits on it.
    telemetry: Any = None
    _json: dict[str, Any] | None = None
    _json_parsed: bool = False

    def json(self) -> dict[str, Any] | None:
        """The body parsed as a JSON object, once; ``None`` for an empty body.

        Raises ``InvalidRequestError`` for anything else: malformed JSON, invalid UTF-8, a
        number too long, nesting too deep, a top-level key given twice, a non-object.
        """
        if not self._json_parsed:
            self._json = parse_object(self.body or b"")
            self._json_parsed = True
        return self._json


def route_path_of(scope: Scope) -> str:
    """The path below the app's mount point (``root_path``), as routes see it."""
    path: str = scope["path"]
    root_path: str = scope.get("root_path", "")
    if root_path and path.startswith(root_path):
        path = path[len(root_path) :] or "/"
    return path


def _new_request_id() -> str:
    # Unique, not secret: Mersenne Twister bits (seeded from the OS at start and again in
    # each forked worker) spare the request a getrandom system call. 24 hex digits, through
    # bytes: formatting the integer with a width costs three times as much.
    return random.getrandbits(96).to_bytes(12, "big").hex()


def get_context(scope: Scope) -> RequestContext:
    """The request's context, created on first use."""
    try:
        ctx: RequestContext = scope["state"][STATE_KEY]
    except KeyError:
        return _new_context(scope)
    return ctx


def _new_context(scope: Scope) -> RequestContext:
    state = scope.get("state")
    if state is None:
        state = scope["state"] = {}
    route_path = route_path_of(scope)
    # One pass over the headers for all three: the client's request id (the first one
    # counts), whether it speaks Anthropic's format on a path shared by both APIs, and the
    # provider it pins (Routing's).
    request_id: str | None = None
    anthropic_version = False
    pinned: bytes | None = None
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            if request_id is None:
                candidate: str = value.decode("latin-1")
                request_id = candidate if _SANE_REQUEST_ID.fullmatch(candidate) else ""
        elif name == b"anthropic-version":
            anthropic_version = True
        elif name == b"x-llm-proxy-provider" and pinned is None:
            pinned = value
    wire_format = wire_format_of(route_path, anthropic_version=anthropic_version)
    ctx = RequestContext(request_id or _new_request_id(), route_path, wire_format)
    if pinned is not None:
        ctx.pinned_provider = pinned.decode("latin-1").strip()
    state[STATE_KEY] = ctx
    return ctx


async def read_body(
    ctx: RequestContext, scope: Scope, receive: Receive, limit: int | None = None
) -> bytes:
    """Buffer the request body into the context, once, refusing more than ``limit`` bytes
    (by default the context's ``max_body_bytes``).

    A declared ``content-length`` over the limit is refused before anything is read. The
    whole body must arrive within ``ctx.body_timeout`` seconds, else ``RequestBodyTimeout``
    (408, and the connection is closed).

    An upload (a body other than JSON to an endpoint that takes one: files, forms) is not
    read here: it becomes ``ctx.upload``, streamed to the provider as it arrives, under
    ``ctx.upload_policy`` (``max_upload_bytes``, ``min_upload_rate``), and ``b""`` is the
    body.
    """
    if ctx.body is not None:
        return ctx.body
    if limit is None:
        limit = ctx.max_body_bytes
    json_type: bool | None = None  # one pass over the headers, for Routing too
    declared: int | None = None
    content_type: bytes | None = None
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                declared = int(value)
            except ValueError:
                raise InvalidRequestError("The content-length header is not a number.") from None
            if declared < 0:
                raise InvalidRequestError("The content-length header is negative.")
        elif name == b"content-type":
            json_type = json_type is not False and is_json_type(value)
            content_type = value
    ctx.body_is_json = json_type is True
    if not json_type and takes_other_bodies(ctx.route_path):
        ctx.upload = open_upload(receive, ctx.upload_policy, content_type, declared)
        ctx.body = b""
        return ctx.body
    if declared is not None and declared > limit:
        raise RequestTooLargeError(f"The request body exceeds {limit} bytes.")
    deadline, task = start_body_read(ctx.body_timeout)
    chunks: list[bytes] = []
    size = 0
    try:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnected
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > limit:
                    raise RequestTooLargeError(f"The request body exceeds {limit} bytes.")
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
    except asyncio.CancelledError:
        if not deadline.expired(task):
            raise
        raise _body_timeout(ctx, scope) from None
    finally:
        deadline.finish(task)
    ctx.body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    return ctx.body


def _body_timeout(ctx: RequestContext, scope: Scope) -> RequestBodyTimeout:
    # The rest of the body may still be on its way: HTTP/1 cannot take a next request on
    # this connection, so it is closed (HTTP/2 forbids the header, and has streams instead).
    close = {"connection": "close"} if scope.get("http_version", "1.1")[:1] == "1" else {}
    return RequestBodyTimeout(
        f"The request body did not arrive within {ctx.body_timeout:g} seconds.", headers=close
    )


class RequestContextMiddleware:
    """Creates the request context, tags every response with the request id (``_TaggedSend``),
    and renders any ``ProxyError`` an inner layer raised in the caller's wire format.

    It sets the limits of the request body for every layer below (``read_body``):
    ``max_body_bytes``, past which a JSON body is refused (413), and ``body_timeout``, seconds
    for the client to send a whole JSON body (408); for uploads, streamed instead,
    ``max_upload_bytes`` (413) and ``min_upload_rate``, the bytes per second an upload must
    average once ``upload_rate_window`` seconds passed (408).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        body_timeout: float = DEFAULT_BODY_TIMEOUT,
        max_upload_bytes: int = _DEFAULT_UPLOADS.max_bytes,
        min_upload_rate: float = _DEFAULT_UPLOADS.min_rate,
        upload_rate_window: float = _DEFAULT_UPLOADS.rate_window,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_timeout = body_timeout
        self.upload_policy = UploadPolicy(max_upload_bytes, min_upload_rate, upload_rate_window)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ctx = get_context(scope)
        ctx.max_body_bytes = self.max_body_bytes
        ctx.body_timeout = self.body_timeout
        ctx.upload_policy = self.upload_policy
        token = current_request_id.set(ctx.request_id)
        tagged = _TaggedSend(send, ctx)
        try:
            await self.app(scope, receive, tagged.send)
        except ClientDisconnected:
            pass
        except ProxyError as error:
            upstream_id = ctx.attempts[-1].upstream_request_id if ctx.attempts else None
            if tagged.started:
                # Too late for an error response: end without completing it, so the client
                # sees a broken response rather than one that looks whole.
                log_error(error, ctx.request_id, upstream_id)
                return
            if ctx.attempts:
                error.headers.setdefault("x-llm-proxy-attempts", str(len(ctx.attempts)))
                error.headers.setdefault("x-llm-proxy-provider", ctx.attempts[-1].provider)
            if isinstance(error, ProviderUnavailableError):
                # No deployment to send to: the SDK's retries, moments later, would find the
                # same (``retry-after`` says when a circuit may close).
                error.headers["x-should-retry"] = "false"
            await send_error(tagged.send, error, ctx.wire_format, ctx.request_id, upstream_id)
        finally:
            current_request_id.reset(token)


class _TaggedSend:
    """The request's ``send``: adds the request id to the response start, notes the status.

    The id goes out as ``x-request-id``, and in Anthropic's format as ``request-id`` too,
    the header Anthropic's SDKs read (``message._request_id``, ``error.request_id``).
    Passed on as the bound method: a call through ``__call__`` costs more, per message. A
    plain method that returns the server's awaitable: a coroutine of its own per message
    would be one more frame to create and run for every chunk of a stream.
    """

    __slots__ = ("_send", "_ctx", "started")

    def __init__(self, send: Send, ctx: RequestContext) -> None:
        self._send = send
        self._ctx = ctx
        self.started = False

    def send(self, message: Message) -> Awaitable[None]:
        if message["type"] == "http.response.start":
            self.started = True
            ctx = self._ctx
            ctx.status = message["status"]
            # UpstreamApp drops the provider's own ids (it keeps them under another name),
            # so these are the only ones.
            request_id = ctx.request_id.encode()
            headers = [*message.get("headers", ()), (b"x-request-id", request_id)]
            if ctx.wire_format is WireFormat.ANTHROPIC:
                headers.append((b"request-id", request_id))
            message["headers"] = headers
        return self._send(message)
