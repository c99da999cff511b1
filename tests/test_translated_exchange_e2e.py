"""End to end across kinds: the official SDKs through the example app on uvicorn to the fake
provider of the other kind, through the built-in codecs: JSON and streams, errors in each
SDK's types, a stream cut midway, usage in the metrics, and a model fallback answering with
its own model."""

from __future__ import annotations

import time
from collections.abc import Iterator

import anthropic
import openai
import pytest

from tests.e2e_helpers import (
    ANTHROPIC_MODEL,
    OPENAI_MODEL,
    ProxyServer,
    RecordingTransport,
    anthropic_client,
    config_toml,
    openai_client,
    serve_example_app,
    standard_providers,
)
from tests.fakes.provider import Action, FakeProvider, FakeProviderServer

pytestmark = pytest.mark.e2e

FALLBACK_FROM = "gpt-retired"


@pytest.fixture(scope="module")
def proxy(
    fake_server: FakeProviderServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxyServer]:
    providers = standard_providers(fake_server.url)
    # A model only the openai provider lists, falling back to the anthropic provider's model.
    providers[0] = providers[0].replace(
        f'models = ["{OPENAI_MODEL}"]', f'models = ["{OPENAI_MODEL}", "{FALLBACK_FROM}"]'
    )
    models = f'[models."{FALLBACK_FROM}"]\nfallbacks = ["{ANTHROPIC_MODEL}"]\n'
    config = config_toml(*providers, models)
    with serve_example_app(config, tmp_path_factory.mktemp("e2e-translated")) as served:
        yield served


@pytest.fixture
def oai(proxy: ProxyServer, recorder: RecordingTransport) -> Iterator[openai.OpenAI]:
    with openai_client(proxy.url, recorder) as client:
        yield client


@pytest.fixture
def ant(proxy: ProxyServer, recorder: RecordingTransport) -> Iterator[anthropic.Anthropic]:
    with anthropic_client(proxy.url, recorder) as client:
        yield client


def tokens(proxy: ProxyServer, provider: str, model: str, kind: str, *, above: float) -> float:
    """The proxy's token counter once the request is recorded, which happens after its last
    byte reached the client: the counter is read again until it passes ``above`` (its value
    before the request), or for at most 5 s."""
    registry = proxy.proxy.parts.metrics.registry
    labels = {"provider": provider, "model": model, "kind": kind}
    deadline = time.monotonic() + 5
    while (value := registry.get_sample_value("llm_proxy_tokens_total", labels) or 0.0) <= above:
        if time.monotonic() >= deadline:
            break
        time.sleep(0.005)
    return value


def test_openai_sdk_to_an_anthropic_provider(oai: openai.OpenAI, provider: FakeProvider) -> None:
    raw = oai.chat.completions.with_raw_response.create(
        model=ANTHROPIC_MODEL, messages=[{"role": "user", "content": "hello"}]
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "fake reply to: hello"
    assert completion.model == ANTHROPIC_MODEL
    assert raw.headers["x-llm-proxy-provider"] == "anthropic"
    sent = provider.wait_for_requests(1)[0]
    assert sent.path == "/v1/messages"
    assert sent.json["max_tokens"] == 4096


def test_openai_sdk_streams_from_an_anthropic_provider(
    oai: openai.OpenAI, provider: FakeProvider, proxy: ProxyServer
) -> None:
    before = _tokens_or_zero(proxy, "anthropic", ANTHROPIC_MODEL, "completion")
    chunks = list(
        oai.chat.completions.create(
            model=ANTHROPIC_MODEL, messages=[{"role": "user", "content": "hello"}], stream=True
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "fake reply to: hello"
    assert chunks[-1].choices[0].finish_reason == "stop"
    # No include_usage asked: the client sees none, the metrics count it all the same.
    assert all(c.usage is None for c in chunks)
    assert tokens(proxy, "anthropic", ANTHROPIC_MODEL, "completion", above=before) > before


def _tokens_or_zero(proxy: ProxyServer, provider: str, model: str, kind: str) -> float:
    registry = proxy.proxy.parts.metrics.registry
    labels = {"provider": provider, "model": model, "kind": kind}
    return registry.get_sample_value("llm_proxy_tokens_total", labels) or 0.0


def test_anthropic_sdk_to_an_openai_provider(
    ant: anthropic.Anthropic, provider: FakeProvider
) -> None:
    message = ant.messages.create(
        model=OPENAI_MODEL, max_tokens=32, messages=[{"role": "user", "content": "hello"}]
    )
    assert message.content[0].text == "fake reply to: hello"  # type: ignore[union-attr]
    assert message.usage.output_tokens > 0
    assert provider.wait_for_requests(1)[0].path == "/v1/chat/completions"


def test_anthropic_sdk_streams_from_an_openai_provider(ant: anthropic.Anthropic) -> None:
    with ant.messages.stream(
        model=OPENAI_MODEL, max_tokens=32, messages=[{"role": "user", "content": "hello"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "fake reply to: hello"
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens > 0


def test_provider_errors_raise_each_sdks_own_types(
    oai: openai.OpenAI, ant: anthropic.Anthropic, provider: FakeProvider
) -> None:
    provider.script(Action(status=400))
    with pytest.raises(openai.BadRequestError) as oai_error:
        oai.chat.completions.create(
            model=ANTHROPIC_MODEL, messages=[{"role": "user", "content": "x"}]
        )
    assert "fake error 400" in oai_error.value.message
    provider.script(Action(status=429, headers={"retry-after": "100"}))
    with pytest.raises(anthropic.RateLimitError) as ant_error:
        ant.messages.create(
            model=OPENAI_MODEL, max_tokens=8, messages=[{"role": "user", "content": "x"}]
        )
    assert "fake error 429" in str(ant_error.value)


def test_a_stream_cut_midway_raises_in_the_sdk(oai: openai.OpenAI, provider: FakeProvider) -> None:
    provider.script(Action(cut_after=3))
    stream = oai.chat.completions.create(
        model=ANTHROPIC_MODEL, messages=[{"role": "user", "content": "hello"}], stream=True
    )
    with pytest.raises(openai.APIError):
        for _ in stream:
            pass


def test_a_model_fallback_answers_with_its_own_model(
    oai: openai.OpenAI, provider: FakeProvider
) -> None:
    provider.script(Action(status=500))
    raw = oai.chat.completions.with_raw_response.create(
        model=FALLBACK_FROM, messages=[{"role": "user", "content": "hello"}]
    )
    completion = raw.parse()
    assert completion.model == ANTHROPIC_MODEL
    assert raw.headers["x-llm-proxy-provider"] == "anthropic"
    assert raw.headers["x-llm-proxy-attempts"] == "2"
    first, second = provider.wait_for_requests(2)
    assert (first.path, first.json["model"]) == ("/v1/chat/completions", FALLBACK_FROM)
    assert (second.path, second.json["model"]) == ("/v1/messages", ANTHROPIC_MODEL)
