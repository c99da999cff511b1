"""Shared pieces of the translation end-to-end tests (``tests/test_e2e_translation_*.py``).

The example app on uvicorn (``tests.e2e_helpers``) with one provider of each kind on the
scripted fake provider, each listing its models, plus an OpenAI-compatible server without
the Responses API and, when asked, a model whose only provider is down and which falls back
to the anthropic provider's model. Retries are off (one attempt) so that each scripted
error reaches the client as it is.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e_helpers import (
    ANTHROPIC_MODEL,
    OPENAI_MODEL,
    ProxyServer,
    config_toml,
    provider_toml,
    serve_example_app,
)
from tests.fakes.provider import (
    FakeProvider,
    FakeProviderServer,
    RecordedRequest,
    ToolCall,
    TurnUsage,
)

__all__ = [
    "ANTHROPIC_MODEL",
    "CHAT_ONLY_MODEL",
    "DOWN_MODEL",
    "OPENAI_MODEL",
    "USAGE",
    "WEATHER_SCHEMA",
    "sent",
    "serve_translation_proxy",
    "translation_proxy",
    "weather_call",
]

#: Served by an ``openai`` provider with ``responses_api = false`` (vLLM, Ollama, ...).
CHAT_ONLY_MODEL = "gpt-chat-only-e2e"
#: Served only by a provider that is down; falls back to ``ANTHROPIC_MODEL``.
DOWN_MODEL = "gpt-down-e2e"

#: Anthropic's counts (cached tokens outside the input): OpenAI's prompt is 10 + 3 + 2.
USAGE = TurnUsage(input=10, output=5, cache_read=3, cache_write=2)

#: The one tool of these tests, as a JSON schema (OpenAI ``parameters``, Anthropic
#: ``input_schema``).
WEATHER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
    "required": ["city"],
}

_ONE_ATTEMPT: dict[str, float] = {"max_attempts": 1}
_TWO_ATTEMPTS: dict[str, float] = {"max_attempts": 2, "backoff_base": 0.0}


def weather_call(call_id: str) -> ToolCall:
    """A scripted call of the weather tool, its arguments long enough to stream in pieces."""
    return ToolCall("get_weather", '{"city": "Paris", "unit": "celsius"}', id=call_id)


def _config(fake_url: str, down_url: str | None) -> str:
    # (name, kind, its model, more options, where it is, its retry policy)
    tables = [
        ("openai", "openai", OPENAI_MODEL, "", fake_url, _ONE_ATTEMPT),
        ("openai-chat", "openai", CHAT_ONLY_MODEL, "responses_api = false", fake_url, _ONE_ATTEMPT),
        ("anthropic", "anthropic", ANTHROPIC_MODEL, "", fake_url, _ONE_ATTEMPT),
    ]
    models = []
    if down_url is not None:
        # Two attempts for the model, so that its fallback may take the second.
        tables.append(("openai-down", "openai", DOWN_MODEL, "", down_url, _TWO_ATTEMPTS))
        models.append(f'[models."{DOWN_MODEL}"]\nfallbacks = ["{ANTHROPIC_MODEL}"]\n')
    providers = [
        provider_toml(
            name,
            kind=kind,
            base_url=f"{url}/v1",
            key_var=f"FAKE_{kind.upper()}_KEY",
            models=[model],
            retry=retry,
            options=options,
        )
        for name, kind, model, options, url, retry in tables
    ]
    return config_toml(*providers, *models)


@contextlib.contextmanager
def serve_translation_proxy(
    fake_url: str, tmp: pytest.TempPathFactory, *, down_url: str | None = None
) -> Iterator[ProxyServer]:
    """The example app with the providers above on the fake at ``fake_url`` (and the down
    provider on ``down_url``)."""
    with serve_example_app(_config(fake_url, down_url), tmp.mktemp("e2e-translation")) as proxy:
        yield proxy


def translation_proxy(
    fake_server: FakeProviderServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxyServer]:
    """A module's ``proxy`` fixture, without the down provider:
    ``proxy = pytest.fixture(scope="module", name="proxy")(translation_proxy)``."""
    with serve_translation_proxy(fake_server.url, tmp_path_factory) as served:
        yield served


def sent(provider: FakeProvider, n: int = 1) -> RecordedRequest:
    """The ``n``-th request the fake provider received (waiting for it, bounded)."""
    return provider.wait_for_requests(n)[n - 1]
