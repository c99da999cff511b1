"""A request's cost: its usage at a model's price, in exact decimal USD (see ``pricing``)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Context, Decimal
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llm_proxy_mw.context import Usage

__all__ = ["ModelPrice", "Rates", "cost_of"]

#: Enough digits that no sum of token counts times prices is ever rounded.
_EXACT = Context(prec=60)


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
    """The exact cost of ``usage`` at ``price``, in USD (``Rates`` spares the conversion
    when one price serves many requests)."""
    return Rates(price).cost(usage)[0]


class Rates:
    """A ``ModelPrice`` as integers: each price times ``10**scale``, a missing cache or
    reasoning price replaced by the one that bills those tokens. A cost is then a few
    integer products and one ``Decimal`` (about a microsecond, against four for the same
    sum in ``Decimal`` operations), exact all the same."""

    __slots__ = (
        "input",
        "output",
        "cache_read",
        "cache_write",
        "reasoning",
        "exp",
        "per",
        "tiers",
    )

    def __init__(self, price: ModelPrice) -> None:
        values = (price.input, price.output, price.cache_read, price.cache_write, price.reasoning)
        exponents = [v.as_tuple().exponent for v in values if v is not None]
        scale = max([0, *(-e for e in exponents if isinstance(e, int))])

        def scaled(value: Decimal | None, default: int) -> int:
            return default if value is None else int(value.scaleb(scale, _EXACT))

        self.input = scaled(price.input, 0)
        self.output = scaled(price.output, 0)
        self.cache_read = scaled(price.cache_read, self.input)
        self.cache_write = scaled(price.cache_write, self.input)
        self.reasoning = scaled(price.reasoning, self.output)
        #: The exponent of the unit of the integer sums: per million tokens, scaled.
        self.exp = -6 - scale
        self.per = 10 ** (6 + scale)
        self.tiers = tuple((threshold, Rates(tier)) for threshold, tier in price.tiers)

    def cost(self, usage: Usage) -> tuple[Decimal, float]:
        """The exact cost of ``usage``, and the same as a float (for a metric). Counts that
        contradict each other (more cached tokens than input) are clamped, so that a cost
        is never negative."""
        rates = self
        prompt = usage.prompt_tokens
        for threshold, tier in reversed(self.tiers):
            if prompt > threshold:
                rates = tier
                break
        cache_read = min(usage.cache_read_tokens, prompt)
        cache_write = min(usage.cache_write_tokens, prompt - cache_read)
        completion = usage.completion_tokens
        reasoning = min(usage.reasoning_tokens, completion)
        total = (
            (prompt - cache_read - cache_write) * rates.input
            + cache_read * rates.cache_read
            + cache_write * rates.cache_write
            + (completion - reasoning) * rates.output
            + reasoning * rates.reasoning
        )
        return _EXACT.scaleb(Decimal(total), rates.exp), total / rates.per
