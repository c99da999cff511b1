"""Routing: wire format and ``model`` choose the provider deployment.

The model is read from the JSON body, parsed once into the request context; a body of
another content type is refused (415), except on the upload endpoints. Among the
providers that speak the request's wire format and serve the model, exact model names win
over ``"*"``; several candidates share the load by ``weight``. Providers a request already
excluded (the retry layer excludes failed ones) are skipped.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence

from starlette.types import ASGIApp, Receive, Scope, Send

from llm_proxy_mw._json_body import declares_json, takes_other_bodies
from llm_proxy_mw.context import RequestContext, get_context, read_body
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

__all__ = ["Router", "RoutingMiddleware"]


class Router:
    """Chooses a provider for a wire format and model; pure, no I/O."""

    def __init__(
        self, providers: Sequence[Provider], *, random: Callable[[], float] = random.random
    ) -> None:
        self.providers = list(providers)
        self._random = random
        self._exact: dict[tuple[WireFormat, str], list[Provider]] = {}
        self._wildcard: dict[WireFormat, list[Provider]] = {wf: [] for wf in WireFormat}
        self._default: dict[WireFormat, Provider] = {}
        self._by_name = {p.name: p for p in self.providers}
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

    def candidates(self, wire_format: WireFormat, model: str | None) -> list[Provider]:
        if model is None:
            default = self._default.get(wire_format)
            return [default] if default else []
        return self._exact.get((wire_format, model)) or self._wildcard[wire_format]

    def choose(
        self,
        wire_format: WireFormat,
        model: str | None,
        exclude: set[str] | frozenset[str] = frozenset(),
        *,
        after: str | None = None,
        health: HealthRegistry | None = None,
    ) -> Provider:
        """The provider for the next attempt.

        After a failure on ``after``, its ``fallbacks`` come first, in order. Otherwise the
        candidates share the load by weight. Excluded providers and open circuits are
        skipped; when every candidate is out, the candidates' own fallbacks are tried.
        """
        candidates = self.candidates(wire_format, model)
        if not candidates:
            if model is None:
                raise NotFoundError("No provider serves this API.")
            raise ModelNotFoundError(f"The model {json.dumps(model)[:200]} does not exist.")
        if after is not None and after in self._by_name:
            chosen = self._first_admitted(self._fallbacks(after, exclude), health)
            if chosen is not None:
                return chosen
        pool = [p for p in candidates if p.name not in exclude]
        while pool:
            provider = self._weighted(pool)
            if health is None or health[provider.name].admit():
                return provider
            pool.remove(provider)
        fallbacks = [f for c in candidates for f in self._fallbacks(c.name, exclude)]
        chosen = self._first_admitted(fallbacks, health)
        if chosen is not None:
            return chosen
        headers = {}
        if health is not None:
            headers["retry-after"] = str(health.retry_after(p.name for p in candidates))
        raise ProviderUnavailableError(
            "No provider serving this model is available right now.", headers=headers
        )

    def _fallbacks(self, name: str, exclude: set[str] | frozenset[str]) -> list[Provider]:
        return [self._by_name[f] for f in self._by_name[name].config.fallbacks if f not in exclude]

    @staticmethod
    def _first_admitted(
        providers: list[Provider], health: HealthRegistry | None
    ) -> Provider | None:
        for provider in providers:
            if health is None or health[provider.name].admit():
                return provider
        return None

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

    def has_alternative(
        self,
        wire_format: WireFormat,
        model: str | None,
        failed: str,
        exclude: set[str] | frozenset[str],
        *,
        health: HealthRegistry | None = None,
    ) -> bool:
        """Whether another deployment than ``failed`` could take the next attempt.

        The same deployments ``choose`` would try (``failed``'s fallbacks, the other
        candidates, the candidates' fallbacks), minus those whose circuit is open.
        """
        out = exclude | {failed}
        candidates = self.candidates(wire_format, model)
        others = [p for p in candidates if p.name not in out]
        if failed in self._by_name:
            others += self._fallbacks(failed, out)
        others += [f for c in candidates for f in self._fallbacks(c.name, out)]
        return any(
            health is None or health[p.name].current_state() is not CircuitState.OPEN
            for p in others
        )


class RoutingMiddleware:
    """Sets ``ctx.model`` and ``ctx.provider``; answers ``GET /v1/models`` itself."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        router: Router,
        health: HealthRegistry | None = None,
        max_body_bytes: int | None = None,  # None: the request context's limit
    ) -> None:
        self.app = app
        self.router = router
        self.health = health
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ctx = get_context(scope)
        if ctx.route_path == "/v1/models" and scope["method"] == "GET":
            await self._list_models(scope, send)
            return
        if ctx.model is None and scope["method"] not in ("GET", "HEAD", "DELETE"):
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
        after = None
        if ctx.attempts and ctx.attempts[-1].outcome != "success":
            after = ctx.attempts[-1].provider
        ctx.provider = self.router.choose(
            ctx.wire_format, ctx.model, ctx.excluded, after=after, health=self.health
        ).name
        await self.app(scope, receive, send)

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
