"""Routing decides *where*: which deployment each attempt of a request goes to.

Who decides what: Retry decides *whether* a failed attempt is retried and *when* (its waits,
its deadline); Routing decides *where*, through the ``Router``'s ``Plan`` for the request;
Upstream only sends to the deployment chosen and records how the attempt ended. Health is
recorded here, once per attempt, so a stack without Retry still opens circuits.

The model is read from the JSON body, parsed once into the request context; a body of
another content type is refused (415), except on the upload endpoints. A request of one of
the three APIs (``apis.py``) reaches every provider serving its model, translated when the
provider speaks another API; every other endpoint only the providers speaking its wire
format. Exact model names win over ``"*"``; providers speaking the client's API come before
those that need translation; several candidates share the load by ``weight``. After a
failure the failed provider's ``fallbacks`` come first, then the model's own fallbacks
(``[models.x] fallbacks``); providers whose circuit is open are skipped.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Literal

from starlette.types import ASGIApp, Receive, Scope, Send

from llm_proxy_mw._json_body import declares_json, takes_other_bodies
from llm_proxy_mw._model_list import MODELS_PATH, send_model, send_models
from llm_proxy_mw.apis import Api, api_of
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
from llm_proxy_mw.translate import codec_for
from llm_proxy_mw.translate._codec import Codec
from llm_proxy_mw.wire import WireFormat

__all__ = ["NextAttempt", "Plan", "Route", "Router", "RoutingMiddleware"]

#: Where the retry of a failed attempt would go: ``"elsewhere"``, another deployment, at
#: once (it has its own limits and health); ``"same"``, the failed provider again, after a
#: wait, when nothing else can take it and its retry budget allows.
NextAttempt = Literal["elsewhere", "same"]


class Route:
    """Where one attempt goes: the provider, the model it is asked for (``None``: the one the
    client named), and the codec translating for it (``None``: it speaks the client's API)."""

    __slots__ = ("provider", "model", "codec", "key")

    def __init__(self, provider: Provider, model: str | None, codec: Codec | None) -> None:
        self.provider = provider
        self.model = model
        self.codec = codec
        #: What a plan leaves out once it moved away: this provider for this model.
        self.key = (provider.name, model)

    def __repr__(self) -> str:
        return f"Route({self.provider.name!r}, {self.model!r}, {type(self.codec).__name__})"


#: One model's routes: those speaking the client's API, then those translating.
_Group = tuple[tuple[Route, ...], tuple[Route, ...]]
#: The key of the endpoint a plan serves: an API, or the wire format of any other endpoint.
_Speaks = Api | WireFormat


class Router:
    """The deployments of every model, and their health; makes one ``Plan`` per request.

    ``health`` defaults to a registry with the default ``HealthPolicy`` for every provider.
    ``model_fallbacks`` names, per model, the models tried when all of its providers failed.
    Every route a request may take is computed here, once.
    """

    def __init__(
        self,
        providers: Sequence[Provider],
        *,
        health: HealthRegistry | None = None,
        model_fallbacks: Mapping[str, Sequence[str]] | None = None,
        random: Callable[[], float] = random.random,
    ) -> None:
        self.providers = list(providers)
        self._random = random
        self._by_name = {p.name: p for p in self.providers}
        self.health = HealthRegistry(self._by_name) if health is None else health
        missing = self._by_name.keys() - self.health.providers.keys()
        if missing:
            raise ValueError(f"the health registry lacks providers: {sorted(missing)}")
        fallbacks = dict(model_fallbacks or {})
        self._plans: dict[tuple[_Speaks, str], tuple[_Group, ...]] = {}
        self._wildcard: dict[_Speaks, tuple[_Group, ...]] = {}
        self._default: dict[_Speaks, Route] = {}
        self._provider_fallbacks: dict[tuple[_Speaks, str], tuple[Route, ...]] = {}
        for speaks in (*Api, *WireFormat):
            self._index(speaks, fallbacks)

    def _index(self, speaks: _Speaks, model_fallbacks: Mapping[str, Sequence[str]]) -> None:
        """Every route of requests to ``speaks``: per model, its groups of tiers."""
        serving = [p for p in self.providers if self._route(p, speaks, None) is not None]
        exact: dict[str, list[Provider]] = {}
        for provider in serving:
            for model in provider.config.models:
                if model != "*":
                    exact.setdefault(model, []).append(provider)
        wildcard = [p for p in serving if "*" in p.config.models]

        def group(candidates: list[Provider], model: str | None) -> _Group | None:
            routes = [r for p in candidates if (r := self._route(p, speaks, model)) is not None]
            if not routes:
                return None
            native = tuple(r for r in routes if r.codec is None)
            return native, tuple(r for r in routes if r.codec is not None)

        def groups(model: str) -> tuple[_Group, ...]:
            found = [group(exact.get(model) or wildcard, None)]
            if isinstance(speaks, Api):  # other endpoints are never translated: no fallback
                found += [
                    group(exact.get(f) or wildcard, f) for f in model_fallbacks.get(model, ())
                ]
            return tuple(g for g in found if g is not None)

        for model in exact.keys() | model_fallbacks.keys():
            if found := groups(model):
                self._plans[speaks, model] = found
        self._wildcard[speaks] = tuple(g for g in [group(wildcard, None)] if g is not None)
        native = [r for p in serving if (r := self._route(p, speaks, None)) and r.codec is None]
        if native:
            self._default[speaks] = native[0]
        for provider in self.providers:
            self._provider_fallbacks[speaks, provider.name] = tuple(
                route
                for f in provider.config.fallbacks
                if (route := self._route(self._by_name[f], speaks, None)) is not None
            )

    @staticmethod
    def _route(provider: Provider, speaks: _Speaks, model: str | None) -> Route | None:
        """How ``provider`` serves a request to ``speaks``, if it can."""
        if isinstance(speaks, WireFormat):
            return Route(provider, model, None) if speaks in provider.wire_formats else None
        if speaks in provider.apis:
            return Route(provider, model, None)
        codec = codec_for(speaks, provider.apis)
        return None if codec is None else Route(provider, model, codec)

    def models(self) -> list[tuple[str, str]]:
        """Every configured model name with the provider that serves it, in config order."""
        seen: dict[str, str] = {}
        for provider in self.providers:
            for model in provider.config.models:
                if model != "*":
                    seen.setdefault(model, provider.name)
        return list(seen.items())

    def plan(self, wire_format: WireFormat, model: str | None, api: Api | None = None) -> Plan:
        """The plan of one request to ``api`` (``None``: an endpoint of ``wire_format``
        without one); ``NotFoundError`` when nothing serves its model."""
        speaks: _Speaks = wire_format if api is None else api
        if model is None:
            default = self._default.get(speaks)
            if default is None:
                raise NotFoundError("No provider serves this API.")
            return Plan(self, speaks, ((default,), ()))
        groups = self._plans.get((speaks, model)) or self._wildcard[speaks]
        if not groups:
            raise ModelNotFoundError(f"The model {json.dumps(model)[:200]} does not exist.")
        return Plan(self, speaks, *groups)

    def _fallbacks(self, speaks: _Speaks, after: Route, out: frozenset[object]) -> list[Route]:
        """The failed route's provider's fallbacks, asked for the same model."""
        routes = self._provider_fallbacks[speaks, after.provider.name]
        if after.model is not None:
            routes = tuple(Route(r.provider, after.model, r.codec) for r in routes)
        return [r for r in routes if r.key not in out]

    def _weighted(self, pool: list[Route]) -> Route:
        if len(pool) == 1:
            return pool[0]
        total = sum(r.provider.config.weight for r in pool)
        point = self._random() * total
        for route in pool:
            point -= route.provider.config.weight
            if point < 0:
                return route
        return pool[-1]


class Plan:
    """Where each attempt of one request goes: the one answer to *where*, attempt after attempt.

    Routing asks ``next()`` for each attempt's deployment (its ``route`` is then the whole
    answer) and ``record``s how it ended (which feeds the provider's health); Retry asks
    ``after_failure()`` where a retry would go, and decides from that whether and when. Both
    walk the same tiers (``_tiers``): after a failure, the failed provider's fallbacks in
    order; then for the model and each of its fallback models in turn: its providers
    speaking the client's API, then those translating, each tier sharing the load by weight,
    then their fallbacks in order. Providers whose circuit is open are skipped; a route the
    plan moved away from stays out for the rest of the request.
    """

    __slots__ = ("_router", "_speaks", "_groups", "_excluded", "_last", "route")

    def __init__(self, router: Router, speaks: _Speaks, *groups: _Group) -> None:
        self._router = router
        self._speaks = speaks
        self._groups = groups
        self._excluded: frozenset[object] = frozenset()
        self._last: Attempt | None = None
        #: The route of the latest attempt, set by ``next``.
        self.route: Route | None = None

    def next(self) -> Provider:
        """The deployment of the next attempt, admitted by its circuit; ``route`` says how.

        ``ProviderUnavailableError`` (503, with ``retry-after``) when every deployment left
        has its circuit open.
        """
        last = self._last
        after = self.route if last is not None and last.outcome != "success" else None
        health = self._router.health
        for tier, weighted in self._tiers(after, self._excluded):
            while tier:
                route = self._router._weighted(tier) if weighted else tier[0]
                if health[route.provider.name].admit():
                    self.route = route
                    return route.provider
                tier.remove(route)
        names = {r.provider.name for group in self._groups for tier in group for r in tier}
        raise ProviderUnavailableError(
            "No provider serving this model is available right now.",
            headers={"retry-after": str(self._router.health.retry_after(names))},
        )

    def record(self, attempt: Attempt) -> None:
        """How an attempt ended: its provider's health learns it, and ``next`` follows it."""
        self._last = attempt
        self._router.health[attempt.provider].record(attempt.outcome)

    def after_failure(self) -> NextAttempt | None:
        """Where a retry of the last attempt would go; ``None`` when nowhere.

        Elsewhere when another deployment's circuit is not open (the failed route is then
        left out for the rest of the request); else the same provider while its retry budget
        allows and its circuit did not just open (the retry would only fail fast, and the
        client would get a 503 instead of the provider's own answer).
        """
        assert self._last is not None and self.route is not None, "no attempt was recorded"
        failed = self.route
        out = self._excluded | {failed.key}
        health = self._router.health
        for tier, _ in self._tiers(failed, out):
            if any(health[r.provider.name].current_state() is not CircuitState.OPEN for r in tier):
                self._excluded = out
                return "elsewhere"
        own = health[failed.provider.name]
        if own.can_retry() and own.current_state() is not CircuitState.OPEN:
            return "same"
        return None

    def _tiers(
        self, after: Route | None, out: frozenset[object]
    ) -> Iterator[tuple[list[Route], bool]]:
        """The routes the next attempt may take, tier by tier, each with whether it shares
        the load by weight (else its order is the preference)."""
        router, speaks = self._router, self._speaks
        if after is not None:
            yield router._fallbacks(speaks, after, out), False
        for native, translated in self._groups:
            yield [r for r in native if r.key not in out], True
            if translated:
                yield [r for r in translated if r.key not in out], True
            candidates = native + translated
            yield [f for c in candidates for f in router._fallbacks(speaks, c, out)], False


class RoutingMiddleware:
    """Plans the request's route, sets ``ctx.route`` (and ``ctx.provider``) for each attempt
    and records its outcome; answers ``GET /v1/models`` and ``/v1/models/{id}`` itself."""

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
            if ctx.route_path.startswith(MODELS_PATH) and scope["method"] == "GET":
                if ctx.route_path == MODELS_PATH:
                    await send_models(scope, send, self.router.models())
                    return
                if ctx.route_path.startswith("/v1/models/"):
                    model = ctx.route_path[len("/v1/models/") :]
                    await send_model(scope, send, self.router.models(), model, ctx.request_id)
                    return
            if ctx.model is None and scope["method"] not in ("GET", "HEAD", "DELETE"):
                await self._read_model(ctx, scope, receive)
            api = api_of(ctx.route_path)
            plan = ctx.plan = self.router.plan(ctx.wire_format, ctx.model, api)
        ctx.provider = plan.next().name
        ctx.route = plan.route
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
