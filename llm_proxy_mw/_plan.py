"""A request's ``Plan``: where each of its attempts goes, and where a retry would go.

The ``Router`` (``routing.py``) computes every ``Route`` once; a plan walks them for one
request, attempt after attempt, skipping open circuits and what it moved away from.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Literal

from llm_proxy_mw.apis import Api
from llm_proxy_mw.context import Attempt
from llm_proxy_mw.errors import ProviderUnavailableError
from llm_proxy_mw.health import CircuitState
from llm_proxy_mw.providers import Provider
from llm_proxy_mw.translate._codec import Codec
from llm_proxy_mw.wire import WireFormat

if TYPE_CHECKING:
    from llm_proxy_mw.routing import Router

__all__ = ["Group", "NextAttempt", "Plan", "Route", "Speaks"]

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
        codec = None if self.codec is None else type(self.codec).__name__
        return f"Route({self.provider.name!r}, model={self.model!r}, codec={codec})"


#: One model's routes: those speaking the client's API, then those translating.
Group = tuple[tuple[Route, ...], tuple[Route, ...]]
#: The key of the endpoint a plan serves: an API, or the wire format of any other endpoint.
Speaks = Api | WireFormat


class Plan:
    """Where each attempt of one request goes: the one answer to *where*, attempt after attempt.

    Routing asks ``next()`` for each attempt's deployment (its ``route`` is then the whole
    answer) and ``record``s how it ended (which feeds the provider's health); Retry asks
    ``after_failure()`` where a retry would go, and decides from that whether and when. Both
    walk the same tiers (``_tiers``): after a failure, the failed provider's fallbacks in
    order; then for the model and each of its fallback models in turn: its providers
    speaking the client's API, then those translating, each tier sharing the load by weight,
    then their fallbacks in order. Providers whose circuit is open are skipped; a route the
    plan moved away from stays out for the rest of the request. A plan without
    ``fallbacks`` (a pinned provider, the owner of an object) never leaves its groups.
    """

    __slots__ = ("_router", "_speaks", "_groups", "_fallbacks", "_excluded", "_last", "route")

    def __init__(
        self, router: Router, speaks: Speaks, *groups: Group, fallbacks: bool = True
    ) -> None:
        self._router = router
        self._speaks = speaks
        self._groups = groups
        self._fallbacks = fallbacks
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
        if after is not None and self._fallbacks:
            yield router._fallbacks(speaks, after, out), False
        for native, translated in self._groups:
            yield [r for r in native if r.key not in out], True
            if translated:
                yield [r for r in translated if r.key not in out], True
            if not self._fallbacks:
                continue
            candidates = native + translated
            yield [f for c in candidates for f in router._fallbacks(speaks, c, out)], False
