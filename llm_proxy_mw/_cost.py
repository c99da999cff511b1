"""A request's cost: its usage at a model's price, in exact decimal USD (see ``pricing``)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Context, Decimal
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llm_proxy_mw.context import Usage

__all__ = ["ModelPrice", "cost_of"]

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
