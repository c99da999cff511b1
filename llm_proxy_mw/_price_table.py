"""The maintained price table: the ``genai-prices`` package (MIT), read offline.

Its bundled snapshot is used as installed: nothing is downloaded at run time (its optional
auto-update is never started). It is imported on the first lookup (a third of a second:
``Pricing`` looks each model up once), and only with the ``pricing`` extra installed.

Its prices are reduced to what ``Usage`` counts: input, output, cache read, cache write (the
5-minute write where it tells them apart) and reasoning. A price that changes on a date is
taken as it is at the lookup; a time-of-day discount (DeepSeek's off-peak hours) is not
applied, so that a budget errs on the safe side; request variants (OpenAI's priority and
flex tiers, batch) are not applied either. Input-size tiers (Anthropic's and Google's
long-context prices) are kept, as ``ModelPrice.tiers``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from llm_proxy_mw._cost import ModelPrice
from llm_proxy_mw._extras import installed

__all__ = ["load_table", "table_available", "table_price"]

#: Our field, then the table's keys for it in order of preference.
_KEYS = {
    "input": ("input_mtok",),
    "output": ("output_mtok",),
    "cache_read": ("cache_read_mtok",),
    "cache_write": ("cache_write_mtok", "cache_write_5m_mtok"),
    "reasoning": ("output_reasoning_mtok",),
}


def table_available() -> bool:
    """Whether the ``pricing`` extra is installed (checked without importing it)."""
    return installed("pricing")


def load_table() -> Any:
    """The table's snapshot (loaded once, then cached by genai-prices); ``None`` without it."""
    if not table_available():
        return None
    from genai_prices.data_snapshot import get_snapshot

    return get_snapshot()


def table_price(model: str, kind: str, base_url: str) -> ModelPrice | None:
    """The table's price of ``model`` at the provider whose API is at ``base_url`` (else the
    one named like ``kind``: a gateway in front of OpenAI); ``None`` when it has none."""
    snapshot = load_table()
    if snapshot is None:
        return None
    for provider_id, api_url in ((None, base_url), (kind, None)):
        try:
            _, info = snapshot.find_provider_model(model, None, provider_id, api_url)
        except LookupError:
            continue
        return _model_price(_standard_prices(info))
    return None


def _standard_prices(info: Any) -> Any:
    """The model's prices now, ignoring time-of-day constraints (the full price holds)."""
    from genai_prices.types import ModelPrice as TablePrice
    from genai_prices.types import TimeOfDateConstraint

    if isinstance(info.prices, TablePrice):
        return info.prices
    now = datetime.now(tz=UTC)
    for conditional in reversed(info.prices):
        constraint = conditional.constraint
        if (
            constraint is None
            or isinstance(constraint, TimeOfDateConstraint)
            or constraint.active(now)
        ):
            return conditional.prices
    return info.prices[0].prices


def _model_price(table: Any) -> ModelPrice | None:
    from genai_prices.types import TieredPrices

    values: dict[str, Any] = {}
    for field, keys in _KEYS.items():
        values[field] = next(
            (v for key in keys if (v := getattr(table, key, None)) is not None), None
        )
    if values["input"] is None or values["output"] is None:
        return None  # priced by something else than tokens (images, seconds of audio)
    starts = sorted(
        {t.start for v in values.values() if isinstance(v, TieredPrices) for t in v.tiers}
    )

    def at(threshold: int | None) -> dict[str, Any]:
        rates: dict[str, Any] = {}
        for field, value in values.items():
            if isinstance(value, TieredPrices):
                rate = value.base
                for tier in value.tiers:
                    if threshold is not None and tier.start <= threshold:
                        rate = tier.price
                value = rate
            rates[field] = value
        return rates

    tiers = tuple((start, ModelPrice(**at(start))) for start in starts)
    return ModelPrice(**at(None), tiers=tiers)
