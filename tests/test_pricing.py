"""Pricing: exact costs from the usage, cache-aware; ``[pricing]`` over the table; an unknown
price is ``None`` and logged once; the cost counter. The golden set is in
``test_pricing_goldens.py``."""

from __future__ import annotations

import logging
import sys
from datetime import date
from decimal import Decimal
from fractions import Fraction
from typing import Any

import genai_prices
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from llm_proxy_mw import pricing as pricing_module
from llm_proxy_mw._plan import Route
from llm_proxy_mw._price_table import _standard_prices
from llm_proxy_mw.config import ConfigError, ProviderConfig, parse_config
from llm_proxy_mw.context import RequestContext, Usage
from llm_proxy_mw.pricing import ModelPrice, Pricing, cost_of
from llm_proxy_mw.providers import Provider
from llm_proxy_mw.transports import EchoTransport
from llm_proxy_mw.wire import WireFormat

SONNET = ModelPrice(Decimal(3), Decimal(15), Decimal("0.3"), Decimal("3.75"))
OPENAI_URL = "https://api.openai.com/v1"
ANTHROPIC_URL = "https://api.anthropic.com/v1"


def provider(
    kind: str = "openai",
    base_url: str | None = None,
    name: str = "p",
    models: tuple[str, ...] = ("*",),
) -> Provider:
    config = ProviderConfig(kind=kind, base_url=base_url, models=list(models))
    return Provider.from_config(name, config, EchoTransport())


def request(
    model: str | None = "gpt-4o",
    answered_by: Provider | None = None,
    routed_model: str | None = None,
    **usage: int,
) -> RequestContext:
    ctx = RequestContext("r", "/v1/chat/completions", WireFormat.OPENAI)
    ctx.model = model
    if answered_by is not None:
        ctx.route = Route(answered_by, routed_model, None)
    ctx.usage = Usage(**usage)
    return ctx


# -- the arithmetic ------------------------------------------------------------------------


def test_the_fresh_input_is_the_prompt_less_cache_reads_and_writes() -> None:
    usage = Usage(1000, 100, cache_read_tokens=600, cache_write_tokens=300)
    # 100 fresh at 3, 600 read at 0.3, 300 written at 3.75, 100 out at 15, per million.
    assert cost_of(usage, SONNET) == Decimal("0.003105")


def test_without_a_cache_price_cached_tokens_cost_as_input() -> None:
    price = ModelPrice(Decimal("2.5"), Decimal(10))
    usage = Usage(1000, 0, cache_read_tokens=600, cache_write_tokens=300)
    assert cost_of(usage, price) == Decimal("0.0025")


def test_reasoning_costs_as_output_unless_it_has_its_own_price() -> None:
    usage = Usage(0, 1000, reasoning_tokens=800)
    assert cost_of(usage, ModelPrice(Decimal(1), Decimal(8))) == Decimal("0.008")
    own = ModelPrice(Decimal(1), Decimal(8), reasoning=Decimal(4))
    assert cost_of(usage, own) == Decimal("0.0048")


def test_contradictory_counts_are_clamped_never_negative() -> None:
    usage = Usage(100, 10, cache_read_tokens=500, cache_write_tokens=50, reasoning_tokens=99)
    assert cost_of(usage, SONNET) == Decimal("0.00018")  # 100 read at 0.3, 10 out at 15


def test_arithmetic_is_exact_decimal_whatever_the_thread_context() -> None:
    import decimal

    with decimal.localcontext(decimal.Context(prec=3)):
        cost = cost_of(Usage(123_456_789, 987_654_321), ModelPrice(Decimal("0.15"), Decimal("0.6")))
    assert cost == Decimal("611.11111095")


def test_a_tier_applies_to_every_token_once_the_whole_input_exceeds_it() -> None:
    long = ModelPrice(Decimal(6), Decimal("22.5"), Decimal("0.6"), Decimal("7.5"))
    price = ModelPrice(
        Decimal(3), Decimal(15), Decimal("0.3"), Decimal("3.75"), tiers=((200_000, long),)
    )
    at_threshold = Usage(200_000, 0, cache_read_tokens=100_000)
    assert cost_of(at_threshold, price) == Decimal("0.33")  # 100k at 3 + 100k at 0.3
    past = Usage(200_001, 1_000, cache_read_tokens=100_000)
    assert cost_of(past, price) == Decimal("0.682506")  # 100,001 at 6 + 100k at 0.6 + 1k at 22.5


# -- Pricing -------------------------------------------------------------------------------


def test_configured_prices_win_over_the_table() -> None:
    ctx = request(answered_by=provider(), prompt_tokens=1_000_000)
    Pricing({"gpt-4o": ModelPrice(Decimal(1), Decimal(2))}).price(ctx)
    assert ctx.usage.cost_usd == Decimal(1)


def test_the_table_prices_the_model_that_answered() -> None:
    ctx = request(
        "my-alias", provider(), routed_model="gpt-4o", prompt_tokens=1_000, completion_tokens=100
    )
    Pricing().price(ctx)
    assert ctx.usage.cost_usd == Decimal("0.0035")  # 1k at 2.5 + 100 at 10, per million


def test_the_table_keeps_long_context_tiers() -> None:
    sonnet = provider("anthropic", ANTHROPIC_URL)
    for prompt in (200_000, 250_000):
        ctx = request("claude-sonnet-4-5", sonnet, prompt_tokens=prompt, completion_tokens=900)
        ctx.usage.cache_read_tokens = 50_000
        Pricing().price(ctx)
        usage = genai_prices.Usage(input_tokens=prompt, cache_read_tokens=50_000, output_tokens=900)
        expected = genai_prices.calc_price(usage, "claude-sonnet-4-5", provider_id="anthropic")
        assert ctx.usage.cost_usd == expected.total_price


def test_the_table_knows_providers_by_base_url_then_by_kind() -> None:
    deepseek = request("deepseek-chat", provider(base_url="https://api.deepseek.com/v1"))
    deepseek.usage.prompt_tokens = 1_000_000
    gateway = request("gpt-4o", provider(base_url="https://llm-gateway.example/v1"))
    gateway.usage.prompt_tokens = 1_000_000
    local = request("llama3", provider(base_url="http://127.0.0.1:11434/v1"), prompt_tokens=1)
    for ctx in (deepseek, gateway, local):
        Pricing().price(ctx)
    # DeepSeek's off-peak discount is not applied: its full price holds, whatever the hour.
    assert deepseek.usage.cost_usd == Decimal("0.27")
    assert gateway.usage.cost_usd == Decimal("2.5")
    assert local.usage.cost_usd is None


def test_a_model_the_table_prices_by_something_else_than_tokens_has_no_price() -> None:
    ctx = request("whisper-1", provider(), prompt_tokens=10)  # priced by the hour of audio
    Pricing().price(ctx)
    assert ctx.usage.cost_usd is None


def test_before_any_of_its_dated_prices_holds_a_model_has_its_first() -> None:
    from genai_prices.types import (
        ClauseEquals,
        ConditionalPrice,
        ModelInfo,
        StartDateConstraint,
    )
    from genai_prices.types import ModelPrice as TablePrice

    later = StartDateConstraint(start_date=date(2999, 1, 1))
    first, second = TablePrice(input_mtok=Decimal(1)), TablePrice(input_mtok=Decimal(2))
    info = ModelInfo(
        id="m",
        match=ClauseEquals(equals="m"),
        prices=[
            ConditionalPrice(constraint=later, prices=first),
            ConditionalPrice(constraint=later, prices=second),
        ],
    )
    assert _standard_prices(info) is first


def test_echo_and_unrouted_requests_are_priced_by_configuration_only() -> None:
    echo = request(answered_by=provider("echo"), prompt_tokens=10)
    unrouted = request(prompt_tokens=10)
    unrouted.provider = "p"
    Pricing().price(echo)
    Pricing().price(unrouted)
    assert echo.usage.cost_usd is None and unrouted.usage.cost_usd is None
    configured = Pricing({"gpt-4o": ModelPrice(Decimal(1), Decimal(1))})
    configured.price(unrouted)
    assert unrouted.usage.cost_usd == Decimal("0.00001")


def test_without_the_table_or_its_extra_only_configuration_prices(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ctx = request(answered_by=provider(), prompt_tokens=10)
    Pricing(table=False).price(ctx)
    assert ctx.usage.cost_usd is None
    monkeypatch.setitem(sys.modules, "genai_prices", None)
    pricing = Pricing()
    pricing.warm()
    pricing.price(ctx)
    assert ctx.usage.cost_usd is None


def test_warming_loads_the_table_before_any_request() -> None:
    from genai_prices.data_snapshot import get_snapshot

    Pricing(table=False).warm()
    Pricing().warm()
    assert get_snapshot().providers


def test_an_unknown_price_is_null_never_zero_and_logged_once_per_model(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pricing = Pricing(table=False)
    with caplog.at_level(logging.WARNING, logger="llm_proxy_mw.pricing"):
        for name in ("a", "b"):
            for _ in range(3):
                ctx = request("mystery", provider(name=name), prompt_tokens=5)
                pricing.price(ctx)
                assert ctx.usage.cost_usd is None
    assert [r.getMessage() for r in caplog.records] == [
        "No price known for model 'mystery' (provider 'a'): its cost is null. "
        'Set [pricing."mystery"] or install llm-proxy-mw[pricing].'
    ]


def test_a_request_without_a_model_is_not_priced() -> None:
    ctx = request(None, prompt_tokens=5)
    Pricing({"gpt-4o": SONNET}).price(ctx)
    assert ctx.usage.cost_usd is None


def test_each_model_is_looked_up_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Any, ...]] = []

    def table_price(*args: Any) -> ModelPrice:
        calls.append(args)
        return SONNET

    monkeypatch.setattr(pricing_module, "table_price", table_price)
    pricing = Pricing()
    answered_by = provider()
    for _ in range(5):
        pricing.price(request("gpt-4o", answered_by, prompt_tokens=1))
    assert calls == [("gpt-4o", "openai", OPENAI_URL)]


def test_the_cost_counter_by_provider_and_configured_model() -> None:
    registry = CollectorRegistry()
    prices = {"gpt-4o": ModelPrice(Decimal(1), Decimal(2)), "other-model": SONNET}
    pricing = Pricing(prices, models=["gpt-4o", "*"], registry=registry, table=False)
    for model, prompt in (("gpt-4o", 250_000), ("gpt-4o", 250_000), ("other-model", 0)):
        pricing.price(request(model, provider(name="openai"), prompt_tokens=prompt))
    pricing.price(request("unpriced", provider(name="openai"), prompt_tokens=9))

    def cost(model: str) -> float | None:
        labels = {"provider": "openai", "model": model}
        return registry.get_sample_value("llm_proxy_cost_usd_total", labels)

    assert cost("gpt-4o") == 0.5
    assert cost("other") == 0.0  # a zero cost counts nothing
    assert pricing.cost is not None and len(list(registry.collect())) == 1


def test_an_unanswered_request_is_not_priced_nor_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ctx = request("no-such-model")  # refused by the proxy: no provider, no usage
    with caplog.at_level(logging.WARNING, logger="llm_proxy_mw.pricing"):
        Pricing(table=False).price(ctx)
    assert ctx.usage.cost_usd is None and caplog.records == []


def test_clients_model_names_cannot_grow_the_warnings_without_bound(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pricing = Pricing(table=False)
    with caplog.at_level(logging.WARNING, logger="llm_proxy_mw.pricing"):
        for i in range(pricing_module._MAX_WARNINGS + 50):
            pricing.price(request(f"made-up-{i}", provider(), prompt_tokens=1))
    assert len(caplog.records) == pricing_module._MAX_WARNINGS
    assert caplog.records[-1].getMessage().endswith("(Further unpriced models are not logged.)")


# -- estimates, for budgets before a request is routed ----------------------------------------


def test_an_estimate_prices_every_input_token_fresh_at_the_configured_price() -> None:
    pricing = Pricing({"m": ModelPrice(Decimal(1), Decimal(4), cache_read=Decimal("0.1"))})
    assert pricing.estimate("m", 1_000_000, 250_000) == Decimal(2)
    assert pricing.estimate("unknown", 1, 1) is None


def test_an_estimate_takes_the_dearest_provider_that_serves_the_model(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    by_url = {
        "https://cheap.example/v1": ModelPrice(Decimal(1), Decimal(1)),
        "https://dear.example/v1": ModelPrice(Decimal(3), Decimal(9)),
    }
    monkeypatch.setattr(pricing_module, "table_price", lambda m, kind, url: by_url.get(url))
    providers = [
        provider(base_url="https://cheap.example/v1", name="cheap", models=("m",)),
        provider(base_url="https://dear.example/v1", name="dear", models=("*",)),
        provider(base_url="https://dearer.example/v1", name="other", models=("not-m",)),
    ]
    pricing = Pricing(providers=providers)
    assert pricing.estimate("m", 1_000_000, 1_000_000) == Decimal(12)
    assert Pricing(providers=providers[:1]).estimate("m", 1_000_000, 0) == Decimal(1)
    assert Pricing(providers=providers[2:]).estimate("m", 1, 1) is None
    assert Pricing(providers=providers, table=False).estimate("m", 1, 1) is None


def test_an_estimate_from_the_table_matches_its_price() -> None:
    pricing = Pricing(providers=[provider(models=("gpt-4o",))])
    assert pricing.estimate("gpt-4o", 1_000, 100) == Decimal("0.0035")  # 2.5 and 10 per million


def test_warming_skips_the_table_when_only_echo_providers_could_use_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loads: list[None] = []
    monkeypatch.setattr(pricing_module, "load_table", lambda: loads.append(None))
    Pricing(providers=[provider("echo")]).warm()
    assert loads == []
    Pricing(providers=[provider("echo"), provider()]).warm()
    assert loads == [None]


# -- configuration -------------------------------------------------------------------------

PROVIDERS = {"providers": {"e": {"kind": "echo"}}}


def test_pricing_tables_are_read_as_exact_decimals() -> None:
    config = parse_config(
        {**PROVIDERS, "pricing": {"gpt-4o": {"input": 0.075, "output": "0.3", "cache_read": 1}}}
    )
    assert config.pricing["gpt-4o"].price() == ModelPrice(
        Decimal("0.075"), Decimal("0.3"), Decimal(1), None
    )


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"input": -1, "output": 1}, "pricing.m.input: Input should be greater than or equal to 0"),
        ({"input": 1, "output": "nan"}, "pricing.m.output: Input should be a finite number"),
        ({"input": 1}, "pricing.m.output: Field required"),
        ({"input": 1, "output": 1, "cache_reads": 1}, "pricing.m.cache_reads: Extra inputs"),
    ],
)
def test_a_bad_price_is_a_config_error_naming_it(entry: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        parse_config({**PROVIDERS, "pricing": {"m": entry}})


# -- property ------------------------------------------------------------------------------

prices = st.decimals(min_value=0, max_value=1000, places=4)
tokens = st.integers(min_value=0, max_value=10**9)


@given(
    rates=st.tuples(prices, prices, st.none() | prices, st.none() | prices, st.none() | prices),
    counts=st.tuples(tokens, tokens, tokens, tokens, tokens),
)
def test_any_cost_is_the_exact_sum_of_its_parts(
    rates: tuple[Decimal, Decimal, Decimal | None, Decimal | None, Decimal | None],
    counts: tuple[int, int, int, int, int],
) -> None:
    price = ModelPrice(*rates)
    prompt, completion, read, write, reasoning = counts
    usage = Usage(prompt, completion, read, write, reasoning)
    read = min(read, prompt)
    write = min(write, prompt - read)
    reasoning = min(reasoning, completion)
    parts = [
        (prompt - read - write, price.input),
        (read, price.input if price.cache_read is None else price.cache_read),
        (write, price.input if price.cache_write is None else price.cache_write),
        (completion - reasoning, price.output),
        (reasoning, price.output if price.reasoning is None else price.reasoning),
    ]
    expected = sum(Fraction(n) * Fraction(rate) for n, rate in parts) / 1_000_000
    cost = cost_of(usage, price)
    assert Fraction(cost) == expected >= 0
