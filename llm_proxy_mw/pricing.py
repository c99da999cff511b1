"""Prices: what one request cost, in exact decimal USD, from the usage its provider reported.

A model's price comes from ``[pricing."<model>"]`` when configured, else from the maintained
price table of the ``pricing`` extra (``_price_table.py``, read offline); a model priced by
neither costs ``None``, never 0, and is logged once. Each (provider, model) is looked up
once: a request then costs two dict lookups and a few ``Decimal`` operations.

Cache-aware: ``Usage`` counts as OpenAI does (cache reads and writes inside
``prompt_tokens``, reasoning inside ``completion_tokens``), so the fresh input is
``prompt - cache_read - cache_write`` whichever provider answered (Anthropic's own counts,
outside the input, were added in when the usage was read).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from llm_proxy_mw._cost import ModelPrice, Rates, cost_of
from llm_proxy_mw._price_table import load_table, table_price
from llm_proxy_mw.context import Usage

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter

    from llm_proxy_mw.context import RequestContext
    from llm_proxy_mw.providers import Provider

__all__ = ["ModelPrice", "Pricing", "cost_of"]

logger = logging.getLogger("llm_proxy_mw.pricing")

#: Bounds on what clients' model names can grow (a wildcard provider takes any name): the
#: prices found per provider, and the models warned about (then one last warning).
_MAX_ENTRIES = 4096
_MAX_WARNINGS = 100


class _Entry:
    """One (provider, model)'s price and its cost counter, found once."""

    __slots__ = ("rates", "counter")

    def __init__(self, price: ModelPrice | None, counter: Any) -> None:
        self.rates = None if price is None else Rates(price)
        self.counter = counter


class Pricing:
    """Prices requests: ``price(ctx)`` sets ``ctx.usage.cost_usd`` and counts it in
    ``llm_proxy_cost_usd_total{provider,model}`` when a ``registry`` is given.

    ``prices`` (``[pricing]``) win over the table; ``table=False`` leaves the table out.
    ``models`` bound the metric's model label as the other metrics do (any other is
    ``other``). The table is consulted only for the model that answered on a provider of kind
    ``openai`` or ``anthropic`` (matched by its ``base_url`` first, so that an
    OpenAI-compatible DeepSeek or Azure gets its own prices, then by its kind); a model on
    ``echo``, or without Routing's route, is priced by ``prices`` only. ``providers`` are the
    deployments ``estimate`` considers for a model not yet routed.
    """

    def __init__(
        self,
        prices: Mapping[str, ModelPrice] | None = None,
        *,
        models: Iterable[str] = (),
        registry: CollectorRegistry | None = None,
        table: bool = True,
        providers: Iterable[Provider] = (),
    ) -> None:
        self.prices = dict(prices or {})
        self.providers = tuple(providers)
        self.table = table
        self.models = frozenset(m for m in models if m != "*")
        self.cost: Counter | None = None
        if registry is not None:
            from prometheus_client import Counter  # here: config.py imports ModelPrice

            self.cost = Counter(
                "llm_proxy_cost_usd",
                "Cost of the requests in USD, from the provider's usage and the price table.",
                ["provider", "model"],
                registry=registry,
            )
        self._entries: dict[str | None, dict[str, _Entry]] = {}
        self._estimates: dict[str, Rates | None] = {}
        self._warned: set[str] = set()

    def warm(self) -> None:
        """Load the price table now (a third of a second, best in a thread at start-up)
        rather than in the first request that needs it; not when no provider could use it."""
        if self.table and (
            not self.providers or any(p.config.kind != "echo" for p in self.providers)
        ):
            load_table()

    def price(self, ctx: RequestContext) -> None:
        """Price the request from its usage and the model that answered (the route's, else
        the one the client named); ``cost_usd`` stays ``None`` for an unknown price."""
        route = ctx.route
        if route is not None:
            provider: Provider | None = route.provider
            provider_name: str | None = route.provider.name
            model = route.model or ctx.model
        else:
            provider, provider_name, model = None, ctx.provider, ctx.model
        if model is None or provider_name is None:
            return  # no provider answered (the proxy refused it): nothing was used
        by_model = self._entries.get(provider_name)
        if by_model is None:
            by_model = self._entries[provider_name] = {}
        entry = by_model.get(model)
        if entry is None:
            if len(by_model) >= _MAX_ENTRIES:
                by_model.clear()
            entry = by_model[model] = self._entry(model, provider, provider_name)
        rates = entry.rates
        if rates is None:
            return
        ctx.usage.cost_usd, cost = rates.cost(ctx.usage)
        if entry.counter is not None and cost:
            # The value object, as the other metrics' hot path does (test_third_party_internals).
            entry.counter._value.inc(cost)

    def lookup(self, model: str, provider: Provider | None = None) -> ModelPrice | None:
        """The price of ``model`` answered by ``provider``: configured, else the table's."""
        configured = self.prices.get(model)
        if configured is not None or not self.table or provider is None:
            return configured
        kind = provider.config.kind
        if kind == "echo":
            return None
        return table_price(model, kind, provider.base_url)

    def estimate(self, model: str, input_tokens: int, output_tokens: int) -> Decimal | None:
        """What a request for ``model`` may cost before it is routed (a budget's
        reservation): at its configured price, else at the dearest price of the providers
        that serve it, every input token fresh; ``None`` when none is known."""
        if model not in self._estimates:
            if len(self._estimates) >= _MAX_ENTRIES:
                self._estimates.clear()
            self._estimates[model] = self._dearest(model)
        rates = self._estimates[model]
        if rates is None:
            return None
        return rates.cost(Usage(input_tokens, output_tokens))[0]

    def _dearest(self, model: str) -> Rates | None:
        prices = [self.prices[model]] if model in self.prices else []
        if not prices and self.table:
            for provider in self.providers:
                if model in provider.config.models or "*" in provider.config.models:
                    price = self.lookup(model, provider)
                    if price is not None:
                        prices.append(price)
        candidates = [Rates(price) for price in prices]
        if not candidates:
            return None
        probe = Usage(1_000_000, 1_000_000)
        return max(candidates, key=lambda rates: rates.cost(probe)[0])

    def _entry(self, model: str, provider: Provider | None, provider_name: str | None) -> _Entry:
        price = self.lookup(model, provider)
        if price is None and model not in self._warned and len(self._warned) < _MAX_WARNINGS:
            self._warned.add(model)
            logger.warning(
                "No price known for model %r (provider %r): its cost is null. "
                'Set [pricing."%s"] or install llm-proxy-mw[pricing].%s',
                model,
                provider_name,
                model,
                " (Further unpriced models are not logged.)"
                if len(self._warned) == _MAX_WARNINGS
                else "",
            )
        counter = None
        if self.cost is not None and price is not None:
            label = model if model in self.models else "other"
            counter = self.cost.labels(provider_name or "none", label)
        return _Entry(price, counter)
