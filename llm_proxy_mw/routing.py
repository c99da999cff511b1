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

Two things come before the model: the ``x-llm-proxy-provider`` header, which pins one
configured provider (``_pin.py``), then the owner of an object the request names
(``objects.py``); neither has fallbacks.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from llm_proxy_mw._json_body import declares_json, takes_other_bodies
from llm_proxy_mw._model_list import MODELS_PATH, send_model, send_models
from llm_proxy_mw._pin import anyone, pinned_plan
from llm_proxy_mw._plan import Group, NextAttempt, Plan, Route, Speaks
from llm_proxy_mw.apis import Api, api_of
from llm_proxy_mw.context import RequestContext, get_context, read_body
from llm_proxy_mw.errors import (
    InvalidRequestError,
    ModelNotFoundError,
    NotFoundError,
    UnsupportedMediaTypeError,
    UntranslatableError,
)
from llm_proxy_mw.health import HealthRegistry
from llm_proxy_mw.objects import ObjectRoutes
from llm_proxy_mw.providers import Provider
from llm_proxy_mw.translate import codec_for
from llm_proxy_mw.wire import WireFormat

__all__ = ["NextAttempt", "Plan", "Route", "Router", "RoutingMiddleware"]


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
        self._plans: dict[tuple[Speaks, str], tuple[Group, ...]] = {}
        self._wildcard: dict[Speaks, tuple[Group, ...]] = {}
        self._default: dict[Speaks, Route] = {}
        self._keeps_objects: dict[Speaks, Route] = {}
        self._provider_fallbacks: dict[tuple[Speaks, str], tuple[Route, ...]] = {}
        self._listed = frozenset(m for p in self.providers for m in p.config.models if m != "*")
        for speaks in (*Api, *WireFormat):
            self._index(speaks, fallbacks)

    def _index(self, speaks: Speaks, model_fallbacks: Mapping[str, Sequence[str]]) -> None:
        """Every route of requests to ``speaks``: per model, its groups of tiers."""
        serving = [p for p in self.providers if self._route(p, speaks, None) is not None]
        exact: dict[str, list[Provider]] = {}
        for provider in serving:
            for model in provider.config.models:
                if model != "*":
                    exact.setdefault(model, []).append(provider)
        wildcard = [p for p in serving if "*" in p.config.models]

        def group(candidates: list[Provider], model: str | None) -> Group | None:
            routes = [r for p in candidates if (r := self._route(p, speaks, model)) is not None]
            if not routes:
                return None
            native = tuple(r for r in routes if r.codec is None)
            return native, tuple(r for r in routes if r.codec is not None)

        def groups(model: str) -> tuple[Group, ...]:
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
            # echo keeps no files or batches: the first provider that does, if any.
            keeping = [r for r in native if r.provider.config.kind != "echo"]
            self._keeps_objects[speaks] = (keeping or native)[0]
        for provider in self.providers:
            self._provider_fallbacks[speaks, provider.name] = tuple(
                route
                for f in provider.config.fallbacks
                if (route := self._route(self._by_name[f], speaks, None)) is not None
            )

    @staticmethod
    def _route(provider: Provider, speaks: Speaks, model: str | None) -> Route | None:
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
        without one); ``NotFoundError`` when nothing serves its model, and
        ``UntranslatableError`` when only providers that cannot take the endpoint list it
        (``/v1/embeddings`` for a model of an ``anthropic`` provider)."""
        speaks: Speaks = wire_format if api is None else api
        if model is None:
            default = self._default.get(speaks)
            if default is None:
                raise NotFoundError("No provider serves this API.")
            return Plan(self, speaks, ((default,), ()))
        groups = self._plans.get((speaks, model)) or self._wildcard[speaks]
        if not groups:
            name = json.dumps(model)[:200]
            if api is None and model in self._listed:
                raise UntranslatableError(
                    f"No provider of the model {name} serves this endpoint, and it cannot be "
                    "translated.",
                    param="model",
                )
            raise ModelNotFoundError(f"The model {name} does not exist.")
        return Plan(self, speaks, *groups)

    def objects_plan(self, wire_format: WireFormat) -> Plan:
        """The plan of a model-less request on objects no provider is known to own (a list,
        an unknown id): the first provider speaking ``wire_format`` that keeps objects (any
        kind but ``echo``), else the first speaking it."""
        route = self._keeps_objects.get(wire_format)
        if route is None:
            raise NotFoundError("No provider serves this API.")
        return Plan(self, wire_format, ((route,), ()))

    def single(self, name: str, wire_format: WireFormat, api: Api | None = None) -> Plan | None:
        """The plan of a request only the provider ``name`` may serve (a pin, an object's
        owner), translated if it speaks another API, without fallbacks; ``None`` when no
        provider has that name, ``UntranslatableError`` when it cannot take the endpoint."""
        provider = self._by_name.get(name)
        if provider is None:
            return None
        speaks: Speaks = wire_format if api is None else api
        route = self._route(provider, speaks, None)
        if route is None:
            raise UntranslatableError(
                f"The provider {name} cannot serve this endpoint, and it cannot be translated."
            )
        group: Group = ((route,), ()) if route.codec is None else ((), (route,))
        return Plan(self, speaks, group, fallbacks=False)

    def _fallbacks(self, speaks: Speaks, after: Route, out: frozenset[object]) -> list[Route]:
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


class RoutingMiddleware:
    """Plans the request's route, sets ``ctx.route`` (and ``ctx.provider``) for each attempt
    and records its outcome; answers ``GET /v1/models`` and ``/v1/models/{id}`` itself.

    With ``objects``, a request naming an object goes to the provider that created it, and
    the ids of objects created are recorded. ``may_pin(principal)`` says who may pin a
    provider with the ``x-llm-proxy-provider`` header besides admins (default: anyone).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        router: Router,
        max_body_bytes: int | None = None,  # None: the request context's limit
        objects: ObjectRoutes | None = None,
        may_pin: Callable[[Any], bool] = anyone,
    ) -> None:
        self.app = app
        self.router = router
        self.max_body_bytes = max_body_bytes
        self.objects = objects
        self.may_pin = may_pin

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ctx = get_context(scope)
        plan: Plan | None = ctx.plan
        if plan is None:  # the first attempt; Retry calls again for each retry
            if ctx.route_path.startswith(MODELS_PATH) and scope["method"] == "GET":
                if ctx.route_path == MODELS_PATH:
                    await send_models(send, self.router.models(), ctx.wire_format)
                    return
                if ctx.route_path.startswith("/v1/models/"):
                    model = ctx.route_path[len("/v1/models/") :]
                    models = self.router.models()
                    await send_model(send, models, model, ctx.wire_format, ctx.request_id)
                    return
            if ctx.model is None and scope["method"] not in ("GET", "HEAD", "DELETE"):
                await self._read_model(ctx, scope, receive)
            api = api_of(ctx.route_path)
            plan = pinned_plan(self.router, ctx, api, self.may_pin)
            if plan is None and self.objects is not None and self.objects.concerns(ctx.route_path):
                plan = await self.objects.plan(self.router, ctx, api)
            if plan is None:
                plan = self.router.plan(ctx.wire_format, ctx.model, api)
            ctx.plan = plan
        ctx.provider = plan.next().name
        route = ctx.route = plan.route
        objects = self.objects
        if (
            objects is not None
            and scope["method"] == "POST"
            and route is not None
            and route.codec is None  # a translated answer's id means nothing to its provider
            and objects.records(ctx.route_path)
        ):
            send = objects.answer_reader(send, ctx).send
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
        if ctx.upload is not None:  # streamed: a form's model is read as it goes by
            ctx.model = await ctx.upload.read_model()
            return
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
