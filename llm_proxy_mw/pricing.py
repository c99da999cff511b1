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
from dataclasses import dataclass
from decimal import Context, Decimal
from typing import TYPE_CHECKING, Any

from llm_proxy_mw._price_table import table_price

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter

    from llm_proxy_mw.context import RequestContext, Usage
    from llm_proxy_mw.providers import Provider

__all__ = ["ModelPrice", "Pricing", "cost_of"]

logger = logging.getLogger("llm_proxy_mw.pricing")

#: Enough digits that no sum of token counts times prices is ever rounded.
_EXACT = Context(prec=60)
_MILLION = Decimal(1_000_000)


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """USD per million tokens. A cache price of ``None`` bills those tokens as input (they
    are part of it); a reasoning price of ``None`` bills them as output. ``tiers`` are the
    prices that replace this one for every token once a request's whole input (cache
    included) exceeds their threshold, ascending: ``((200_000, ModelPrice(...)),)``."""

    input: Decimal
    output: Decimal
    cache_read: Decimal | None = None
    cache_write: Decimal | None = None
    reasoning: Decimal | None = None
    tiers: tuple[tuple[int, ModelPrice], ...] = ()


def cost_of(usage: Usage, price: ModelPrice) -> Decimal:
    """The exact cost of ``usage`` at ``price``, in USD. Counts that contradict each other
    (more cached tokens than input) are clamped, so that a cost is never negative."""
    prompt = usage.prompt_tokens
    for threshold, tier in reversed(price.tiers):
        if prompt > threshold:
            price = tier
            break
    cache_read = min(usage.cache_read_tokens, prompt)
    cache_write = min(usage.cache_write_tokens, prompt - cache_read)
    reasoning = min(usage.reasoning_tokens, usage.completion_tokens)
    fresh = prompt - cache_read - cache_write
    if price.cache_read is None:
        fresh, cache_read = fresh + cache_read, 0
    if price.cache_write is None:
        fresh, cache_write = fresh + cache_write, 0
    output = usage.completion_tokens - reasoning
    if price.reasoning is None:
        output, reasoning = output + reasoning, 0
    total = _EXACT.multiply(price.input, fresh)
    total = _EXACT.add(total, _EXACT.multiply(price.output, output))
    if cache_read:
        total = _EXACT.add(total, _EXACT.multiply(price.cache_read or 0, cache_read))
    if cache_write:
        total = _EXACT.add(total, _EXACT.multiply(price.cache_write or 0, cache_write))
    if reasoning:
        total = _EXACT.add(total, _EXACT.multiply(price.reasoning or 0, reasoning))
    return _EXACT.divide(total, _MILLION)


class _Entry:
    """One (provider, model)'s price and its cost counter, found once."""

    __slots__ = ("price", "counter")

    def __init__(self, price: ModelPrice | None, counter: Any) -> None:
        self.price = price
        self.counter = counter


class Pricing:
    """Prices requests: ``price(ctx)`` sets ``ctx.usage.cost_usd`` and counts it in
    ``llm_proxy_cost_usd_total{provider,model}`` when a ``registry`` is given.

    ``prices`` (``[pricing]``) win over the table; ``table=False`` leaves the table out.
    ``models`` bound the metric's model label as the other metrics do (any other is
    ``other``). The table is consulted only for the model that answered on a provider of kind
    ``openai`` or ``anthropic`` (matched by its ``base_url`` first, so that an
    OpenAI-compatible DeepSeek or Azure gets its own prices, then by its kind); a model on
    ``echo``, or without Routing's route, is priced by ``prices`` only.
    """

    def __init__(
        self,
        prices: Mapping[str, ModelPrice] | None = None,
        *,
        models: Iterable[str] = (),
        registry: CollectorRegistry | None = None,
        table: bool = True,
    ) -> None:
        self.prices = dict(prices or {})
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
        self._warned: set[str] = set()

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
        if model is None:
            return
        by_model = self._entries.get(provider_name)
        if by_model is None:
            by_model = self._entries[provider_name] = {}
        entry = by_model.get(model)
        if entry is None:
            entry = by_model[model] = self._entry(model, provider, provider_name)
        if entry.price is None:
            return
        cost = cost_of(ctx.usage, entry.price)
        ctx.usage.cost_usd = cost
        if entry.counter is not None and cost:
            # The value object, as the other metrics' hot path does (test_third_party_internals).
            entry.counter._value.inc(float(cost))

    def lookup(self, model: str, provider: Provider | None = None) -> ModelPrice | None:
        """The price of ``model`` answered by ``provider``: configured, else the table's."""
        configured = self.prices.get(model)
        if configured is not None or not self.table or provider is None:
            return configured
        kind = provider.config.kind
        if kind == "echo":
            return None
        return table_price(model, kind, provider.base_url)

    def _entry(self, model: str, provider: Provider | None, provider_name: str | None) -> _Entry:
        price = self.lookup(model, provider)
        if price is None and model not in self._warned:
            self._warned.add(model)
            logger.warning(
                "No price known for model %r (provider %r): its cost is null. "
                'Set [pricing."%s"] or install llm-proxy-mw[pricing].',
                model,
                provider_name,
                model,
            )
        counter = None
        if self.cost is not None and price is not None:
            label = model if model in self.models else "other"
            counter = self.cost.labels(provider_name or "none", label)
        return _Entry(price, counter)
