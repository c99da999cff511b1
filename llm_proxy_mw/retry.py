"""Retry: replay the buffered request on retryable outcomes, before the client saw anything.

The body is buffered once (bounded; 413 past the limit) and every attempt gets a ``receive``
that replays it; an upload streams instead (``_upload.py``), retried only until its first
chunk went out. ``http.response.start`` is held back while a retryable status could still
be retried, with its (small) error body; anything else streams straight through, and once a
start reached the client nothing is retried. One deadline covers every attempt and wait.

What is retried:

- connect errors, connect and pool timeouts: at once;
- read timeouts, resets and protocol errors before the response started: at once, unless
  the provider's policy turns that off (``retry_read_timeouts = false``);
- 408, 409, 429, 500, 502, 503, 504, 529 (the set the official SDKs retry): after the wait the
  provider asked for (``retry-after-ms``, ``retry-after``, rate-limit reset headers), else
  exponential backoff with full jitter; a wait above ``max_retry_after`` or past the deadline
  is not slept: the response goes back to the client with its headers;
- ``x-should-retry: true|false`` from the provider wins over the status rule; Anthropic's
  ``enforced_spend_limit_reached`` 429 is never retried.

A retryable answer the proxy gives back after all (its attempts spent, or a retry it decided
against) carries ``x-should-retry: false``, which both official SDKs obey: one SDK call costs
at most ``max_attempts`` upstream calls, never the SDK's attempts times the proxy's.

Retry decides *whether* and *when*; *where* the retry goes is Routing's answer (its plan's
``after_failure``): another deployment at once, or the same provider after the wait while
its retry budget (``health.py``) allows. Without Routing in front, retries stay on the one
provider.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Generator, Mapping
from typing import Any

import backoff
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llm_proxy_mw._disconnect import cancel_on_disconnect
from llm_proxy_mw._retry_after import retry_after_seconds
from llm_proxy_mw._retry_policy import RetryPolicy
from llm_proxy_mw.context import (
    Attempt,
    RequestContext,
    get_context,
    read_body,
)
from llm_proxy_mw.errors import (
    ProviderUnavailableError,
    UpstreamConnectError,
    UpstreamConnectTimeout,
    UpstreamError,
    UpstreamPoolTimeout,
    UpstreamTimeout,
)
from llm_proxy_mw.routing import NextAttempt, Plan

__all__ = ["RETRYABLE_STATUSES", "RetryMiddleware", "RetryPolicy"]

RETRYABLE_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504, 529})

#: Error bodies held back while deciding; a larger body is passed through as it comes.
_HOLD_LIMIT = 64 * 1024

_ALWAYS_RETRIED = (UpstreamConnectError, UpstreamConnectTimeout, UpstreamPoolTimeout)


#: What the proxy adds to a retryable answer it gives back: the official SDKs obey it.
_DO_NOT_RETRY = (b"x-should-retry", b"false")


def _do_not_retry(start: Message) -> None:
    """Tell the client's SDK not to retry this response: the proxy decided already."""
    headers = start.get("headers", ())
    start["headers"] = [(n, v) for n, v in headers if n.lower() != b"x-should-retry"]
    start["headers"].append(_DO_NOT_RETRY)


def _final(error: UpstreamError) -> UpstreamError:
    """Mark ``error``, which the proxy will not retry: nor should the client's SDK."""
    error.headers["x-should-retry"] = "false"
    return error


class _HeldResponse:
    """The ``send`` of one attempt: forwards, or holds a retryable response back.

    Once forwarding, ``send`` hands back the inner ``send``'s awaitable instead of running a
    coroutine of its own per message (per chunk of a stream).
    """

    __slots__ = ("_send", "_guard", "start", "parts", "size", "holding", "forwarded")

    def __init__(self, send: Send, guard: cancel_on_disconnect) -> None:
        self._send = send
        #: Its deadline is disarmed once the client is being answered.
        self._guard = guard
        self.start: Message | None = None
        self.parts: list[bytes] = []
        self.size = 0
        self.holding = False
        self.forwarded = False

    def send(self, message: Message) -> Awaitable[None]:
        if not self.forwarded:
            if self.holding or (message["type"] == "http.response.start" and _may_retry(message)):
                return self._hold(message)
            self.forwarded = True
            self._guard.disarm_deadline()
            if message["type"] == "http.response.start" and message["status"] >= 500:
                # A 5xx this proxy does not retry (501, 505, ...), which the SDKs would.
                _do_not_retry(message)
        return self._send(message)

    async def _hold(self, message: Message) -> None:
        if not self.holding:
            self.start = message
            self.holding = True
            return
        if message["type"] != "http.response.body":
            return
        chunk = message.get("body", b"")
        self.size += len(chunk)
        self.parts.append(chunk)
        if self.size > _HOLD_LIMIT:
            await self.flush(more_body=message.get("more_body", False))

    async def flush(self, *, more_body: bool = False) -> None:
        """Send what was held, and pass the rest of the response through.

        The response is one the client's SDK would retry: it is told not to
        (``x-should-retry: false``), since this proxy spent its own attempts or decided
        against more, so that the SDK's retries do not multiply the proxy's.
        """
        start = self.start
        assert start is not None
        self.holding = False
        self.forwarded = True
        self._guard.disarm_deadline()
        _do_not_retry(start)
        await self._send(start)
        await self._send(
            {"type": "http.response.body", "body": b"".join(self.parts), "more_body": more_body}
        )

    @property
    def status(self) -> int:
        assert self.start is not None
        return int(self.start["status"])

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        assert self.start is not None
        return list(self.start.get("headers", ()))


def _should_retry_header(headers: Any) -> bool | None:
    for name, value in headers:
        if name.lower() == b"x-should-retry":
            if value == b"true":
                return True
            if value == b"false":
                return False
    return None


def _may_retry(start: Message) -> bool:
    told = _should_retry_header(start.get("headers", ()))
    return told if told is not None else start["status"] in RETRYABLE_STATUSES


class _Replay:
    """The ``receive`` of one attempt: the buffered body, then the client's own messages."""

    __slots__ = ("_body", "_receive")

    def __init__(self, body: bytes, receive: Receive) -> None:
        self._body: bytes | None = body
        self._receive = receive

    async def receive(self) -> Message:
        body = self._body
        if body is not None:
            self._body = None
            return {"type": "http.request", "body": body, "more_body": False}
        return await self._receive()


def _note_wait(ctx: RequestContext, first: int, wait: float) -> None:
    """The wait before this round's attempt, on its record."""
    if len(ctx.attempts) > first:
        ctx.attempts[first].wait = wait


def _deadline_passed(ctx: RequestContext) -> UpstreamTimeout:
    return UpstreamTimeout(
        "The request deadline passed before a provider answered.", provider=ctx.provider
    )


class RetryMiddleware:
    """Whether and when to retry, within one deadline, around Routing and the upstream app.

    ``policy``: one ``RetryPolicy`` for every provider, or one per provider name.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        policy: RetryPolicy | Mapping[str, RetryPolicy] | None = None,
        deadline: float = 600.0,
        max_body_bytes: int | None = None,  # None: the request context's limit
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        jitter: Callable[[float], float] = backoff.full_jitter,
    ) -> None:
        self.app = app
        self._default = policy if isinstance(policy, RetryPolicy) else RetryPolicy()
        self._policies = dict(policy) if isinstance(policy, Mapping) else {}
        self.deadline = deadline
        self.max_body_bytes = max_body_bytes
        self._sleep = sleep
        self._clock = clock
        self._wall_clock = wall_clock
        self._jitter = jitter

    def policy_for(self, provider: str) -> RetryPolicy:
        return self._policies.get(provider, self._default)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ctx = get_context(scope)
        body = await read_body(ctx, scope, receive, self.max_body_bytes)
        deadline = self._clock() + self.deadline
        guard_deadline: float | None = self.deadline
        if ctx.upload is not None:
            # The body streams through the attempt: the guard must not take its chunks, and
            # its transfer (as long as ``min_upload_rate`` allows) is not the answer's wait.
            receive = ctx.upload.receive_after_body
            guard_deadline = None
        waits: Generator[float, Any, None] | None = None
        wait = 0.0
        # One guard for every attempt and wait: it notices the client leaving, and its
        # deadline cancels whatever runs when it passes, until the client is being answered.
        async with cancel_on_disconnect(ctx, receive, deadline=guard_deadline) as guard:
            while True:
                first = len(ctx.attempts)
                started = self._clock()
                response = _HeldResponse(send, guard)
                try:
                    await self.app(scope, _Replay(body, receive).receive, response.send)
                except asyncio.CancelledError:
                    if not guard.deadline_expired():
                        raise
                    self._timed_out(ctx, first, started)
                    _note_wait(ctx, first, wait)
                    raise _final(_deadline_passed(ctx)) from None
                except UpstreamError as error:
                    _note_wait(ctx, first, wait)
                    if response.forwarded:
                        raise
                    wait_or_none = self._after_error(ctx, error, deadline)
                    if wait_or_none is None:
                        _final(error)
                        raise
                    wait = wait_or_none
                else:
                    _note_wait(ctx, first, wait)
                    if not response.holding:
                        return
                    if waits is None:
                        waits = backoff.expo(factor=1.0)
                        next(waits)
                    wait_or_none = self._after_status(ctx, response, deadline, waits)
                    if wait_or_none is None:
                        await response.flush()
                        return
                    wait = wait_or_none
                if wait > 0:
                    if ctx.telemetry is not None:
                        ctx.telemetry.waited(wait)
                    try:
                        await self._sleep(wait)
                    except asyncio.CancelledError:
                        if not guard.deadline_expired():
                            raise
                        raise _final(_deadline_passed(ctx)) from None

    def _timed_out(self, ctx: RequestContext, first: int, started: float) -> None:
        """The deadline cut this round's attempt: unless Upstream recorded it already, it is
        a timeout, an outcome only Retry sees, so Routing's plan learns it from here."""
        if len(ctx.attempts) > first or ctx.provider is None:
            return
        attempt = Attempt(ctx.provider, "timeout", None, self._clock() - started)
        ctx.attempts.append(attempt)
        plan: Plan | None = ctx.plan
        if plan is not None:
            plan.record(attempt)

    @staticmethod
    def _where(ctx: RequestContext) -> NextAttempt | None:
        """Where a retry would go: Routing's plan answers; without Routing, the same provider.
        Nowhere once an upload's first chunk went out: it cannot be replayed."""
        if ctx.upload is not None and ctx.upload.sent:
            return None
        plan: Plan | None = ctx.plan
        return "same" if plan is None else plan.after_failure()

    def _after_error(
        self, ctx: RequestContext, error: UpstreamError, deadline: float
    ) -> float | None:
        """The wait before retrying after a transport error, or ``None`` to give up."""
        if isinstance(error, ProviderUnavailableError) or not ctx.attempts:
            return None
        policy = self.policy_for(ctx.attempts[-1].provider)
        if len(ctx.attempts) >= policy.max_attempts or self._clock() >= deadline:
            return None
        if not isinstance(error, _ALWAYS_RETRIED) and not policy.retry_read_timeouts:
            return None
        return None if self._where(ctx) is None else 0.0

    def _after_status(
        self,
        ctx: RequestContext,
        response: _HeldResponse,
        deadline: float,
        waits: Generator[float, Any, None],
    ) -> float | None:
        """The wait before retrying a held retryable response, or ``None`` to pass it on."""
        if not ctx.attempts:
            return None
        policy = self.policy_for(ctx.attempts[-1].provider)
        if len(ctx.attempts) >= policy.max_attempts or self._clock() >= deadline:
            return None
        status = response.status
        if status == 429 and b"enforced_spend_limit_reached" in b"".join(response.parts):
            return None
        where = self._where(ctx)
        if where is None:
            return None
        if where == "elsewhere":
            return 0.0
        asked = retry_after_seconds(status, response.headers, self._wall_clock())
        if asked is not None:
            if asked > policy.max_retry_after:
                return None
            wait = asked
        else:
            step = min(policy.backoff_max, policy.backoff_base * next(waits))
            wait = self._jitter(step)
        if self._clock() + wait > deadline:
            return None
        return wait
