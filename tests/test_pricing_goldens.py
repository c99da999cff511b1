"""The pricing goldens (``tests/goldens_pricing/``, written by ``make_pricing_goldens.py``):
recorded Chat, Responses and Messages answers, JSON and SSE, each with the usage read out of
it and its hand-computed cost.

- Priced as ``[pricing]`` sets it, each costs its hand-computed figure (within 1e-9 USD; in
  fact exactly), and a model without a price costs ``None``.
- A stream costs exactly what the same request costs as JSON.
- Each case's usage is what its body says, read here with a small reader of each format (the
  proxy's own capture replaces it once it reads cache and reasoning tokens).
- Priced by the table, each costs what genai-prices' own ``calc_price`` says, long-context
  tiers included: the reduction of its prices to ``ModelPrice`` loses nothing.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import genai_prices
import pytest

from llm_proxy_mw._plan import Route
from llm_proxy_mw.config import ProviderConfig
from llm_proxy_mw.context import RequestContext, Usage
from llm_proxy_mw.pricing import ModelPrice, Pricing
from llm_proxy_mw.providers import Provider
from llm_proxy_mw.transports import EchoTransport
from llm_proxy_mw.wire import WireFormat

GOLDENS = Path(__file__).resolve().parent / "goldens_pricing"
CASES: list[dict[str, Any]] = [
    case for path in sorted(GOLDENS.glob("*.json")) for case in json.loads(path.read_text())
]


def ids(cases: list[dict[str, Any]]) -> list[str]:
    return [case["name"] + ("-sse" if "events" in case else "") for case in cases]


def context(case: dict[str, Any], usage: Usage | None = None) -> RequestContext:
    ctx = RequestContext("golden", "/v1/x", WireFormat.OPENAI)
    config = ProviderConfig(kind=case["provider"]["kind"], base_url=case["provider"]["base_url"])
    provider = Provider.from_config("p", config, EchoTransport())
    ctx.route = Route(provider, case["model"], None)
    ctx.usage = usage or Usage(**case["usage"])
    return ctx


def configured(case: dict[str, Any]) -> Pricing:
    price = case["price"]
    prices = (
        {}
        if price is None
        else {case["model"]: ModelPrice(**{k: Decimal(v) for k, v in price.items()})}
    )
    return Pricing(prices, table=False)


def test_the_golden_set_covers_every_api_both_ways_with_cache_and_reasoning() -> None:
    assert len(CASES) >= 100
    kinds = {(c["api"], "events" in c) for c in CASES}
    assert kinds == {(api, sse) for api in ("chat", "responses", "messages") for sse in (0, 1)}
    for field in ("cache_read_tokens", "cache_write_tokens", "reasoning_tokens"):
        assert sum(1 for c in CASES if c["usage"][field]) >= 10, field


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_each_golden_costs_its_hand_computed_figure(case: dict[str, Any]) -> None:
    ctx = context(case)
    configured(case).price(ctx)
    if case["cost_usd"] is None:
        assert ctx.usage.cost_usd is None
    else:
        assert ctx.usage.cost_usd is not None
        assert abs(ctx.usage.cost_usd - Decimal(case["cost_usd"])) <= Decimal("1e-9")
        assert ctx.usage.cost_usd == Decimal(case["cost_usd"])


def read_usage(case: dict[str, Any]) -> Usage:
    """The usage a recorded answer reports, as ``Usage`` counts it."""
    if "body" in case:
        objects = [case["body"]]
    else:
        lines = case["events"].splitlines()
        data = [line[6:] for line in lines if line.startswith("data: ")]
        objects = [json.loads(d) for d in data if d != "[DONE]"]
    usage = Usage()
    for obj in objects:
        for raw in (obj.get("usage"), (obj.get("response") or {}).get("usage")):
            if raw:
                read(case["api"], raw, usage)
        if obj.get("type") == "message_start":
            read("messages", obj["message"]["usage"], usage)
    return usage


def read(api: str, raw: dict[str, Any], usage: Usage) -> None:
    if api == "messages":
        if "input_tokens" in raw:
            usage.cache_read_tokens = raw.get("cache_read_input_tokens", 0)
            usage.cache_write_tokens = raw.get("cache_creation_input_tokens", 0)
            usage.prompt_tokens = (
                raw["input_tokens"] + usage.cache_read_tokens + usage.cache_write_tokens
            )
        usage.completion_tokens = raw["output_tokens"]  # cumulative: the last one holds
        return
    prompt, completion = ("prompt", "completion") if api == "chat" else ("input", "output")
    usage.prompt_tokens = raw[f"{prompt}_tokens"]
    usage.completion_tokens = raw[f"{completion}_tokens"]
    details = raw.get(f"{prompt}_tokens_details") or {}
    usage.cache_read_tokens = details.get("cached_tokens", 0)
    usage.cache_write_tokens = details.get("cache_write_tokens", 0)
    usage.reasoning_tokens = (raw.get(f"{completion}_tokens_details") or {}).get(
        "reasoning_tokens", 0
    )


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_each_golden_usage_is_what_its_body_reports(case: dict[str, Any]) -> None:
    assert read_usage(case) == Usage(**case["usage"])


PAIRS = [
    (case, other)
    for case in CASES
    if "body" in case
    for other in CASES
    if "events" in other and other["name"] == case["name"]
]


@pytest.mark.parametrize(("answer", "stream"), PAIRS, ids=[c["name"] for c, _ in PAIRS])
def test_a_stream_costs_exactly_what_the_same_request_costs_as_json(
    answer: dict[str, Any], stream: dict[str, Any]
) -> None:
    as_json, as_stream = context(answer, read_usage(answer)), context(stream, read_usage(stream))
    pricing = configured(answer)
    pricing.price(as_json)
    pricing.price(as_stream)
    assert as_stream.usage.cost_usd == as_json.usage.cost_usd


TABLE = [c for c in CASES if c["provider"]["base_url"] != "http://127.0.0.1:8000/v1"]


@pytest.mark.parametrize("case", TABLE, ids=ids(TABLE))
def test_priced_by_the_table_each_costs_what_genai_prices_computes(case: dict[str, Any]) -> None:
    u = case["usage"]
    expected = genai_prices.calc_price(
        genai_prices.Usage(
            input_tokens=u["prompt_tokens"],
            cache_read_tokens=u["cache_read_tokens"],
            cache_write_tokens=u["cache_write_tokens"],
            output_tokens=u["completion_tokens"],
        ),
        case["model"],
        provider_id=case["provider"]["kind"],
    ).total_price
    ctx = context(case)
    Pricing().price(ctx)
    assert ctx.usage.cost_usd == expected
