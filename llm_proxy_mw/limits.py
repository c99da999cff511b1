"""``LimitsMiddleware``: per-principal rpm, tpm, concurrency and budgets, reserved before a
request is forwarded and settled with its real usage afterwards.

Before: one request, its estimated tokens (the body's bytes / 4 for the input, plus
``max_tokens``, ``max_completion_tokens`` or ``max_output_tokens``, else the model's
``default_max_tokens``) and their estimated cost are reserved at once, all or nothing; a
refused request never reaches a provider (429 in the caller's format, ``retry-after``; a
spent budget also ``x-should-retry: false``). After: the reservation is replaced by what
``ctx.usage`` says was used; a request that failed with no usage gives its tokens and cost
back (and, when the failure was not the client's, the request too).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from decimal import Decimal
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llm_proxy_mw._limits_local import LocalLimits
from llm_proxy_mw._limits_policy import (
    Grant,
    Limit,
    LimitsPolicy,
    Refusal,
    Reservation,
    nano_usd,
)
from llm_proxy_mw.context import RequestContext, get_context, principal_id, read_body
from llm_proxy_mw.errors import (
    BudgetExceededError,
    LimitsStoreUnavailableError,
    RateLimitError,
    StoreError,
)

__all__ = ["Limit", "LimitsBackend", "LimitsMiddleware", "LimitsPolicy", "LocalLimits"]

logger = logging.getLogger("llm_proxy_mw")

#: ``Pricing.estimate(model, input_tokens, output_tokens)``: USD, or ``None`` when unknown.
CostEstimate = Callable[[str, int, int], Decimal | None]

#: The endpoints that generate output, whose ``max_tokens`` (or default) is reserved.
_GENERATING = frozenset(
    {"/v1/chat/completions", "/v1/completions", "/v1/messages", "/v1/responses"}
)
_MAX_OUTPUT_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


class LimitsBackend(Protocol):
    """Where the buckets live: ``LocalLimits`` (this process) or ``RedisLimits`` (shared)."""

    async def reserve(
        self, principal: str, limit: Limit, tokens: int, cost_nano: int
    ) -> Grant | Refusal: ...

    def settle(
        self, reservation: Reservation, *, tokens: int, cost_nano: int, give_back_request: bool
    ) -> Awaitable[None] | None: ...

    async def aclose(self) -> None: ...


class LimitsMiddleware:
    """Enforces ``policy`` on every request, per principal id, in ``backend`` (by default in
    this process's memory). ``estimate_cost`` prices a reservation; without it (or for a
    model it cannot price) budgets count only what requests really cost.
    ``default_max_tokens`` by model: the output reserved when the request sets no maximum.
    Refusals and store errors are counted in ``registry``."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        policy: LimitsPolicy,
        backend: LimitsBackend | None = None,
        estimate_cost: CostEstimate | None = None,
        default_max_tokens: Mapping[str, int] | None = None,
        fallback_max_tokens: int = 4096,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.app = app
        self.policy = policy
        self.backend: LimitsBackend = backend or LocalLimits()
        self.estimate_cost = estimate_cost
        self.default_max_tokens = dict(default_max_tokens or {})
        self.fallback_max_tokens = fallback_max_tokens
        registry = registry or CollectorRegistry()
        self.refused = Counter(
            "llm_proxy_limited_requests",
            "Requests refused by [limits], by outcome: rate_limited or budget_exceeded.",
            ["outcome"],
            registry=registry,
        )
        self.store_errors = Counter(
            "llm_proxy_limits_store_errors",
            "Reservations or settlements the limits store failed.",
            registry=registry,
        )
        self._store_down = False
        self._settling: set[asyncio.Future[None]] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ctx = get_context(scope)
        principal = principal_id(ctx)
        limit = self.policy.limit_for(principal)
        if limit is None:
            await self.app(scope, receive, send)
            return
        tokens = cost_nano = 0
        if limit.needs_estimate:
            tokens, cost_nano = await self._estimate(ctx, scope, receive, limit)
        try:
            decision = await self.backend.reserve(principal, limit, tokens, cost_nano)
        except StoreError as exc:
            self._store_failed("reserve", exc)
            if self.policy.on_store_error == "deny":
                raise LimitsStoreUnavailableError(
                    "Limits cannot be checked now.", headers={"retry-after": "1"}
                ) from None
            await self.app(scope, receive, send)
            return
        if isinstance(decision, Refusal):
            raise self._refuse(decision)
        self._store_down = False
        reservation = decision.reservation
        try:
            await self.app(scope, receive, _HeaderSend(send, _limit_headers(decision)).send)
        finally:
            # Settled once the layers outside have finished with the request: Metrics fills
            # ``ctx.usage`` (and prices it) as the response ends, after this layer returns
            # and before the task next yields to the loop, where this callback runs.
            asyncio.get_running_loop().call_soon(self._settle, ctx, reservation)

    async def _estimate(
        self, ctx: RequestContext, scope: Scope, receive: Receive, limit: Limit
    ) -> tuple[int, int]:
        """Tokens and nano-USD to reserve for the request."""
        body = await read_body(ctx, scope, receive)
        if not ctx.body_is_json or not body:
            return 0, 0
        request = ctx.json() or {}
        model = request.get("model")
        model = model if isinstance(model, str) else ""
        output = 0
        if ctx.route_path in _GENERATING:
            output = self.default_max_tokens.get(model, self.fallback_max_tokens)
            for name in _MAX_OUTPUT_FIELDS:
                value = request.get(name)
                if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                    output = value
                    break
        prompt = len(body) // 4 + 1  # bytes / 4: an overestimate of the text, settled later
        cost: Decimal | None = None
        if limit.budget_usd is not None and self.estimate_cost is not None and model:
            cost = self.estimate_cost(model, prompt, output)
        return prompt + output, 0 if cost is None else nano_usd(cost)

    def _refuse(self, refusal: Refusal) -> RateLimitError:
        headers = _limit_headers(refusal)
        if refusal.budget:
            self.refused.labels("budget_exceeded").inc()
            return BudgetExceededError("The budget of this principal is spent.", headers=headers)
        self.refused.labels("rate_limited").inc()
        headers["retry-after"] = str(max(1, -int(-refusal.retry_after // 1)))
        headers["retry-after-ms"] = str(max(1, round(refusal.retry_after * 1000)))
        return RateLimitError("Rate limit reached for this principal.", headers=headers)

    def _settle(self, ctx: RequestContext, reservation: Reservation) -> None:
        usage = ctx.usage
        tokens = usage.prompt_tokens + usage.completion_tokens
        status = ctx.status
        give_back_request = False
        if tokens:
            cost = usage.cost_usd
            if cost is None and self.estimate_cost is not None and ctx.model:
                cost = self.estimate_cost(ctx.model, usage.prompt_tokens, usage.completion_tokens)
            cost_nano = 0 if cost is None else nano_usd(cost)
        elif status is not None and status < 400:
            # Answered but no usage reported: the estimate stands.
            tokens, cost_nano = reservation.tokens, reservation.cost_nano
        else:
            cost_nano = 0
            give_back_request = status is None or status == 429 or status >= 500
        try:
            pending = self.backend.settle(
                reservation, tokens=tokens, cost_nano=cost_nano, give_back_request=give_back_request
            )
        except StoreError as exc:
            self._store_failed("settle", exc)
            return
        if pending is not None:
            settling = asyncio.ensure_future(pending)
            self._settling.add(settling)
            settling.add_done_callback(self._settle_done)

    def _settle_done(self, settling: asyncio.Future[None]) -> None:
        self._settling.discard(settling)
        if settling.cancelled():
            return
        exc = settling.exception()
        if isinstance(exc, StoreError):
            self._store_failed("settle", exc)
        elif exc is not None:
            logger.error("llm_proxy_mw: limits settle failed", exc_info=exc)

    def _store_failed(self, operation: str, exc: StoreError) -> None:
        self.store_errors.inc()
        if not self._store_down:  # once per outage, not once per request
            self._store_down = True
            logger.warning(
                "llm_proxy_mw: limits %s failed (%s): requests are %s meanwhile",
                operation,
                exc,
                "refused" if self.policy.on_store_error == "deny" else "not limited",
            )

    async def settled(self) -> None:
        """Wait until every finished request's reservation is settled."""
        await asyncio.sleep(0)  # the settle callbacks of requests that just returned
        while self._settling:
            await asyncio.gather(*self._settling)

    async def aclose(self) -> None:
        await self.settled()
        await self.backend.aclose()


class _HeaderSend:
    """The request's ``send``: adds the ``x-ratelimit-*`` headers to the response start."""

    __slots__ = ("_send", "_headers")

    def __init__(self, send: Send, headers: dict[str, str]) -> None:
        self._send = send
        self._headers = [(k.encode(), v.encode()) for k, v in headers.items()]

    def send(self, message: Message) -> Awaitable[None]:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", ()), *self._headers]
        return self._send(message)


def _limit_headers(decision: Grant | Refusal) -> dict[str, str]:
    """OpenAI's ``x-ratelimit-*`` headers for what is limited."""
    limit = decision.reservation.limit if isinstance(decision, Grant) else decision.limit
    headers: dict[str, str] = {}
    if limit.rpm is not None:
        headers["x-ratelimit-limit-requests"] = str(limit.rpm)
    if limit.tpm is not None:
        headers["x-ratelimit-limit-tokens"] = str(limit.tpm)
    if isinstance(decision, Grant):
        if decision.remaining_requests is not None and decision.reset_requests is not None:
            headers["x-ratelimit-remaining-requests"] = str(decision.remaining_requests)
            headers["x-ratelimit-reset-requests"] = _duration(decision.reset_requests)
        if decision.remaining_tokens is not None and decision.reset_tokens is not None:
            headers["x-ratelimit-remaining-tokens"] = str(decision.remaining_tokens)
            headers["x-ratelimit-reset-tokens"] = _duration(decision.reset_tokens)
    return headers


def _duration(seconds: float) -> str:
    """OpenAI's form: ``20ms``, ``1.5s``, ``6m0s``."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    minutes, rest = divmod(round(seconds, 3), 60)
    return f"{int(minutes)}m{rest:g}s" if minutes else f"{rest:g}s"
