"""Routing decides *where*: which deployment each attempt of a request goes to.

Who decides what: Retry decides *whether* a failed attempt is retried and *when* (its waits,
its deadline); Routing decides *where*, through the ``Router``'s ``Plan`` for the request;
Upstream only sends to the deployment chosen and records how the attempt ended. Health is
recorded here, once per attempt, so a stack without Retry still opens circuits.

The model is read from the JSON body, parsed once into the request context; a body of
another content type is refused (415), except on the upload endpoints. Among the
providers that speak the request's wire format and serve the model, exact model names win
over ``"*"``; several candidates share the load by ``weight``. After a failure the failed
provider's ``fallbacks`` come first; providers whose circuit is open are skipped.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Literal

from starlette.types import ASGIApp, Receive, Scope, Send

from llm_proxy_mw._json_body import declares_json, takes_other_bodies
from llm_proxy_mw.context import Attempt, RequestContext, get_context, read_body
from llm_proxy_mw.errors import (
    InvalidRequestError,
    ModelNotFoundError,
    NotFoundError,
    ProviderUnavailableError,
    UnsupportedMediaTypeError,
)
from llm_proxy_mw.health import CircuitState, HealthRegistry
from llm_proxy_mw.providers import Provider
from llm_proxy_mw.wire import WireFormat, send_json

__all__ = ["NextAttempt", "Plan", "Router", "RoutingMiddleware"]

#: Where the retry of a failed attempt would go: ``"elsewhere"``, another deployment, at
#: once (it has its own limits and health); ``"same"``, the failed provider again, after a
#: wait, when nothing else can take it and its retry budget allows.
NextAttempt = Literal["elsewhere", "same"]


class Router:
    """The deployments of every model, and their health; makes one ``Plan`` per request.

    ``health`` defaults to a registry with the default ``HealthPolicy`` for every provider.
    """

    def __init__(
        self,
        providers: Sequence[Provider],
        *,
        health: HealthRegistry | None = None,
        random: Callable[[], float] = random.random,
    ) -> None:
        self.providers = list(providers)
        self._random = random
        self._exact: dict[tuple[WireFormat, str], list[Provider]] = {}
        self._wildcard: dict[WireFormat, list[Provider]] = {wf: [] for wf in WireFormat}
        self._default: dict[WireFormat, Provider] = {}
        self._by_name = {p.name: p for p in self.providers}
        self.health = HealthRegistry(self._by_name) if health is None else health
        missing = self._by_name.keys() - self.health.providers.keys()
        if missing:
            raise ValueError(f"the health registry lacks providers: {sorted(missing)}")
        for provider in self.providers:
            for wire_format in provider.wire_formats:
                self._default.setdefault(wire_format, provider)
                for model in provider.config.models:
                    if model == "*":
                        self._wildcard[wire_format].append(provider)
                    else:
                        self._exact.setdefault((wire_format, model), []).append(provider)

    def models(self) -> list[tuple[str, str]]:
        """Every configured model name with the provider that serves it, in config order."""
        seen: dict[str, str] = {}
        for provider in self.providers:
            for model in provider.config.models:
                if model != "*":
                    seen.setdefault(model, provider.name)
        return list(seen.items())

    def plan(self, wire_format: WireFormat, model: str | None) -> Plan:
        """The plan of one request; ``NotFoundError`` when nothing serves its model."""
        if model is None:
            default = self._default.get(wire_format)
            if default is None:
                raise NotFoundError("No provider serves this API.")
            return Plan(self, [default])
        candidates = self._exact.get((wire_format, model)) or self._wildcard[wire_format]
        if not candidates:
            raise ModelNotFoundError(f"The model {json.dumps(model)[:200]} does not exist.")
        return Plan(self, candidates)

    def _fallbacks(self, name: str, out: frozenset[str]) -> list[Provider]:
        return [self._by_name[f] for f in self._by_name[name].config.fallbacks if f not in out]

    def _weighted(self, pool: list[Provider]) -> Provider:
        if len(pool) == 1:
            return pool[0]
        total = sum(p.config.weight for p in pool)
        point = self._random() * total
        for provider in pool:
            point -= provider.config.weight
            if point < 0:
                return provider
        return pool[-1]


class Plan:
    """Where each attempt of one request goes: the one answer to *where*, attempt after attempt.

    Routing asks ``next()`` for each attempt's deployment and ``record``s how it ended (which
    feeds the provider's health); Retry asks ``after_failure()`` where a retry would go, and
    decides from that whether and when. Both walk the same tiers (``_tiers``): after a failure,
    the failed provider's fallbacks in order; the model's providers, sharing the load by
    weight; their fallbacks in order. The model's own fallbacks would be further tiers.
    Providers whose circuit is open are skipped; a provider the plan moved away from stays
    out for the rest of the request.
    """

    __slots__ = ("_router", "_candidates", "_excluded", "_last")

    def __init__(self, router: Router, candidates: list[Provider]) -> None:
        self._router = router
        self._candidates = candidates
        self._excluded: frozenset[str] = frozenset()
        self._last: Attempt | None = None

    def next(self) -> Provider:
        """The deployment of the next attempt, admitted by its circuit.

        ``ProviderUnavailableError`` (503, with ``retry-after``) when every deployment left
        has its circuit open.
        """
        last = self._last
        after = last.provider if last is not None and last.outcome != "success" else None
        health = self._router.health
        for tier, weighted in self._tiers(after, self._excluded):
            while tier:
                provider = self._router._weighted(tier) if weighted else tier[0]
                if health[provider.name].admit():
                    return provider
                tier.remove(provider)
        retry_after = health.retry_after(p.name for p in self._candidates)
        raise ProviderUnavailableError(
            "No provider serving this model is available right now.",
            headers={"retry-after": str(retry_after)},
        )

    def record(self, attempt: Attempt) -> None:
        """How an attempt ended: its provider's health learns it, and ``next`` follows it."""
        self._last = attempt
        self._router.health[attempt.provider].record(attempt.outcome)

    def after_failure(self) -> NextAttempt | None:
        """Where a retry of the last attempt would go; ``None`` when nowhere.

        Elsewhere when another deployment's circuit is not open (the failed provider is then
        left out for the rest of the request); else the same provider while its retry budget
        allows and its circuit did not just open (the retry would only fail fast, and the
        client would get a 503 instead of the provider's own answer).
        """
        assert self._last is not None, "no attempt was recorded"
        failed = self._last.provider
        out = self._excluded | {failed}
        health = self._router.health
        for tier, _ in self._tiers(failed, out):
            if any(health[p.name].current_state() is not CircuitState.OPEN for p in tier):
                self._excluded = out
                return "elsewhere"
        own = health[failed]
        if own.can_retry() and own.current_state() is not CircuitState.OPEN:
            return "same"
        return None

    def _tiers(
        self, after: str | None, out: frozenset[str]
    ) -> Iterator[tuple[list[Provider], bool]]:
        """The deployments the next attempt may go to, tier by tier, each with whether it
        shares the load by weight (else its order is the preference)."""
        router = self._router
        if after is not None:
            yield router._fallbacks(after, out), False
        yield [p for p in self._candidates if p.name not in out], True
        yield [f for c in self._candidates for f in router._fallbacks(c.name, out)], False


class RoutingMiddleware:
    """Plans the request's route, sets ``ctx.provider`` for each attempt and records its
    outcome; answers ``GET /v1/models`` itself."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        router: Router,
        max_body_bytes: int | None = None,  # None: the request context's limit
    ) -> None:
        self.app = app
        self.router = router
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ctx = get_context(scope)
        plan: Plan | None = ctx.plan
        if plan is None:  # the first attempt; Retry calls again for each retry
            if ctx.route_path == "/v1/models" and scope["method"] == "GET":
                await self._list_models(scope, send)
                return
            if ctx.model is None and scope["method"] not in ("GET", "HEAD", "DELETE"):
                await self._read_model(ctx, scope, receive)
            plan = ctx.plan = self.router.plan(ctx.wire_format, ctx.model)
        ctx.provider = plan.next().name
        attempts = ctx.attempts
        first = len(attempts)
        try:
            await self.app(scope, receive, send)
        finally:
            # However the call ended: an attempt Upstream made has an outcome of its own.
            if len(attempts) > first:
                plan.record(attempts[-1])

    async def _read_model(self, ctx: RequestContext, scope: Scope, receive: Receive) -> None:
        if ctx.body is None:  # Retry in front has read it already
            await read_body(ctx, scope, receive, self.max_body_bytes)
        body_is_json = ctx.body_is_json
        if body_is_json is None:  # the body came from elsewhere than ``read_body``
            body_is_json = declares_json(scope)
        if body_is_json:
            ctx.model = _model_of(ctx)
        elif ctx.body and not takes_other_bodies(ctx.route_path):
            # Unparsed, it would reach the first provider, which may read it as JSON
            # anyway and serve whatever model it names.
            raise UnsupportedMediaTypeError(
                "This endpoint takes a JSON body: send it as application/json."
            )

    async def _list_models(self, scope: Scope, send: Send) -> None:
        anthropic = any(name == b"anthropic-version" for name, _ in scope["headers"])
        models = self.router.models()
        if anthropic:
            data = [
                {"type": "model", "id": m, "display_name": m, "created_at": "1970-01-01T00:00:00Z"}
                for m, _ in models
            ]
            payload: dict[str, object] = {
                "data": data,
                "has_more": False,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
            }
        else:
            payload = {
                "object": "list",
                "data": [
                    {"id": m, "object": "model", "created": 0, "owned_by": p} for m, p in models
                ],
            }
        await send_json(send, 200, json.dumps(payload).encode())


#: Chat endpoints of both wire formats, whose ``messages`` must be an array. Checked here,
#: where the body is parsed anyway, so that a wrong type is never forwarded.
_MESSAGES_PATHS = frozenset({"/v1/chat/completions", "/v1/messages", "/v1/messages/count_tokens"})


def _model_of(ctx: RequestContext) -> str | None:
    body = ctx.json()
    if body is None:
        return None
    if ctx.route_path in _MESSAGES_PATHS and not isinstance(body.get("messages", []), list):
        raise InvalidRequestError("The 'messages' field must be an array.")
    model = body.get("model")
    if model is None:
        return None
    if not isinstance(model, str) or not model:
        raise InvalidRequestError("The 'model' field must be a non-empty string.")
    return model
