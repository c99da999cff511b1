"""Routing across kinds: which route (provider, model, codec) each attempt takes.

A request of one of the three APIs reaches every provider serving its model: those
speaking its API first (weighted), then those translating (weighted), then the provider
fallbacks, then the model's fallbacks, each a further group of the same tiers.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from llm_proxy_mw import EchoTransport, HealthPolicy, Provider, Router, translate
from llm_proxy_mw.apis import Api
from llm_proxy_mw.config import ProviderConfig
from llm_proxy_mw.context import Attempt
from llm_proxy_mw.errors import ModelNotFoundError, ProviderUnavailableError, UntranslatableError
from llm_proxy_mw.routing import Plan, Route
from llm_proxy_mw.translate import codec_for
from llm_proxy_mw.wire import WireFormat
from tests.codec_double import ChatToMessages, MessagesToChat, registered

OPENAI = WireFormat.OPENAI
ANTHROPIC = WireFormat.ANTHROPIC
CHAT_TO_MESSAGES = ChatToMessages()
MESSAGES_TO_CHAT = MessagesToChat()


@pytest.fixture(autouse=True)
def codecs() -> Iterator[None]:
    with registered(CHAT_TO_MESSAGES, MESSAGES_TO_CHAT):
        yield


def provider(
    name: str, kind: str = "openai", models: list[str] | None = None, **kw: Any
) -> Provider:
    config = ProviderConfig(kind=kind, models=models or ["*"], **kw)  # type: ignore[arg-type]
    return Provider.from_config(name, config, EchoTransport())


def first(router: Router, api: Api, model: str) -> Route:
    plan = router.plan(OPENAI if api is not Api.MESSAGES else ANTHROPIC, model, api)
    plan.next()
    assert plan.route is not None
    return plan.route


def walk(plan: Plan, limit: int = 10) -> list[tuple[str, str | None]]:
    """Every route the plan takes while each attempt fails, until it has nowhere to go."""
    taken = []
    for _ in range(limit):
        plan.next()
        assert plan.route is not None
        taken.append(plan.route.key)
        plan.record(Attempt(plan.route.provider.name, "server_error", 503, 0.0))
        if plan.after_failure() != "elsewhere":
            break
    return taken


def test_each_kind_speaks_its_apis() -> None:
    assert provider("o").apis == {Api.CHAT, Api.RESPONSES}
    assert provider("v", responses_api=False).apis == {Api.CHAT}
    assert provider("a", "anthropic").apis == {Api.MESSAGES}
    assert provider("e", "echo").apis == set(Api)


def test_codec_for_prefers_native_then_chat_then_messages() -> None:
    assert codec_for(Api.CHAT, frozenset({Api.CHAT, Api.RESPONSES})) is None
    assert codec_for(Api.CHAT, frozenset({Api.MESSAGES})) is CHAT_TO_MESSAGES
    assert codec_for(Api.MESSAGES, frozenset({Api.CHAT})) is MESSAGES_TO_CHAT
    assert codec_for(Api.RESPONSES, frozenset({Api.MESSAGES})) is None  # none registered


def test_codec_for_takes_chat_before_messages() -> None:
    via_chat, via_messages = MessagesToChat(), ChatToMessages()
    registry = {(Api.RESPONSES, Api.CHAT): via_chat, (Api.RESPONSES, Api.MESSAGES): via_messages}
    with registered():
        translate.CODECS.update(registry)
        assert codec_for(Api.RESPONSES, frozenset({Api.MESSAGES, Api.CHAT})) is via_chat
        assert codec_for(Api.RESPONSES, frozenset({Api.MESSAGES})) is via_messages


def test_a_model_of_the_other_kind_is_served_translated() -> None:
    router = Router(
        [provider("claude", "anthropic", ["claude-x"]), provider("gpt", models=["gpt-4o"])]
    )
    route = first(router, Api.CHAT, "claude-x")
    assert (route.provider.name, route.model, route.codec) == ("claude", None, CHAT_TO_MESSAGES)
    route = first(router, Api.MESSAGES, "gpt-4o")
    assert (route.provider.name, route.codec) == ("gpt", MESSAGES_TO_CHAT)
    route = first(router, Api.CHAT, "gpt-4o")
    assert (route.provider.name, route.codec) == ("gpt", None)


def test_endpoints_without_an_api_stay_native() -> None:
    router = Router([provider("claude", "anthropic", ["claude-x"]), provider("any", "anthropic")])
    with pytest.raises(UntranslatableError) as info:
        router.plan(OPENAI, "claude-x")  # embeddings and the like: never translated
    assert info.value.status_code == 400 and info.value.param == "model"
    with pytest.raises(ModelNotFoundError):
        router.plan(OPENAI, "unlisted")


def test_without_a_codec_a_model_of_the_other_kind_is_404() -> None:
    with registered():
        router = Router([provider("claude", "anthropic", ["claude-x"])])
        with pytest.raises(ModelNotFoundError):
            router.plan(OPENAI, "claude-x", Api.CHAT)


def test_native_providers_come_before_translating_ones_whatever_the_weights() -> None:
    router = Router(
        [
            provider("claude", "anthropic", ["m"], weight=100),
            provider("gpt", models=["m"], weight=1),
        ],
        random=lambda: 0.0,
    )
    plan = router.plan(OPENAI, "m", Api.CHAT)
    assert walk(plan) == [("gpt", None), ("claude", None)]
    assert plan.route is not None and plan.route.codec is CHAT_TO_MESSAGES


def test_translating_providers_share_their_tier_by_weight() -> None:
    router = Router(
        [
            provider("a1", "anthropic", ["m"], weight=1),
            provider("a3", "anthropic", ["m"], weight=3),
        ],
        random=iter([i / 100 for i in range(100)]).__next__,
    )
    chosen = [first(router, Api.CHAT, "m").provider.name for _ in range(100)]
    assert (chosen.count("a1"), chosen.count("a3")) == (25, 75)


def test_exact_names_beat_the_wildcard_across_kinds() -> None:
    router = Router([provider("any"), provider("claude", "anthropic", ["claude-x"])])
    assert first(router, Api.CHAT, "claude-x").provider.name == "claude"
    assert first(router, Api.CHAT, "other").provider.name == "any"


def test_responses_go_natively_to_openai_and_translated_to_chat_only_servers() -> None:
    via_chat = MessagesToChat()
    via_chat.client = Api.RESPONSES  # type: ignore[misc]
    with registered(via_chat):
        router = Router(
            [provider("vllm", models=["m"], responses_api=False), provider("oai", models=["m"])]
        )
        plan = router.plan(OPENAI, "m", Api.RESPONSES)
        assert walk(plan) == [("oai", None), ("vllm", None)]
        assert plan.route is not None and plan.route.codec is via_chat


def test_a_provider_fallback_of_another_kind_is_translated() -> None:
    router = Router(
        [
            provider("gpt", models=["m"], fallbacks=["claude"]),
            provider("claude", "anthropic", ["x"]),
        ]
    )
    plan = router.plan(OPENAI, "m", Api.CHAT)
    assert walk(plan) == [("gpt", None), ("claude", None)]
    assert plan.route is not None and plan.route.codec is CHAT_TO_MESSAGES


def test_a_provider_fallback_no_codec_reaches_is_skipped() -> None:
    with registered():
        router = Router(
            [provider("gpt", models=["m"], fallbacks=["claude"]), provider("claude", "anthropic")]
        )
        assert walk(router.plan(OPENAI, "m", Api.CHAT)) == [("gpt", None)]
        assert walk(router.plan(OPENAI, "m")) == [("gpt", None)]  # embeddings: native only


def test_model_fallbacks_come_after_every_provider_of_the_model() -> None:
    router = Router(
        [
            provider("gpt", models=["gpt-4o"], fallbacks=["gpt-backup"]),
            provider("gpt-backup", models=["other"]),
            provider("claude", "anthropic", ["claude-x", "claude-y"]),
            provider("mini", models=["gpt-mini"]),
        ],
        model_fallbacks={"gpt-4o": ["claude-x", "gpt-mini"]},
    )
    plan = router.plan(OPENAI, "gpt-4o", Api.CHAT)
    assert walk(plan) == [
        ("gpt", None),
        ("gpt-backup", None),
        ("claude", "claude-x"),
        ("mini", "gpt-mini"),
    ]


def test_a_model_fallback_may_use_the_same_provider() -> None:
    router = Router(
        [provider("claude", "anthropic", ["opus", "sonnet"])], model_fallbacks={"opus": ["sonnet"]}
    )
    plan = router.plan(ANTHROPIC, "opus", Api.MESSAGES)
    assert walk(plan) == [("claude", None), ("claude", "sonnet")]
    assert plan.route is not None and plan.route.codec is None


def test_a_model_fallback_keeps_the_failed_providers_fallbacks_for_its_model() -> None:
    router = Router(
        [
            provider("claude", "anthropic", ["sonnet"], fallbacks=["claude-eu"]),
            provider("claude-eu", "anthropic", ["eu-only"]),
            provider("gpt", models=["gpt-4o"]),
        ],
        model_fallbacks={"gpt-4o": ["sonnet"]},
    )
    plan = router.plan(OPENAI, "gpt-4o", Api.CHAT)
    assert walk(plan) == [("gpt", None), ("claude", "sonnet"), ("claude-eu", "sonnet")]


def test_model_fallbacks_skip_open_circuits_and_end_unavailable() -> None:
    router = Router(
        [provider("gpt", models=["gpt-4o"]), provider("claude", "anthropic", ["claude-x"])],
        model_fallbacks={"gpt-4o": ["claude-x"]},
    )
    for _ in range(HealthPolicy().min_calls):
        router.health["gpt"].record("server_error")
    assert first(router, Api.CHAT, "gpt-4o").key == ("claude", "claude-x")
    for _ in range(HealthPolicy().min_calls):
        router.health["claude"].record("server_error")
    with pytest.raises(ProviderUnavailableError) as info:
        router.plan(OPENAI, "gpt-4o", Api.CHAT).next()
    assert info.value.status_code == 503
    assert "retry-after" in info.value.headers


def test_model_fallbacks_are_not_transitive_nor_for_endpoints_without_an_api() -> None:
    router = Router(
        [provider("p", models=["a", "b", "c"])], model_fallbacks={"a": ["b"], "b": ["c"]}
    )
    assert walk(router.plan(OPENAI, "a", Api.CHAT)) == [("p", None), ("p", "b")]
    assert walk(router.plan(OPENAI, "a")) == [("p", None)]


def test_a_model_served_nowhere_but_with_served_fallbacks_takes_them() -> None:
    with registered():
        router = Router(
            [provider("claude", "anthropic", ["claude-x"]), provider("gpt", models=["gpt-4o"])],
            model_fallbacks={"claude-x": ["gpt-4o"]},
        )
        assert first(router, Api.CHAT, "claude-x").key == ("gpt", "gpt-4o")


def test_no_model_goes_to_the_first_native_provider_of_the_api() -> None:
    router = Router(
        [provider("claude", "anthropic"), provider("vllm", responses_api=False), provider("oai")]
    )
    for api, name in [(Api.CHAT, "vllm"), (Api.MESSAGES, "claude"), (Api.RESPONSES, "oai")]:
        plan = router.plan(OPENAI, None, api)
        assert plan.next().name == name
        assert plan.route is not None and plan.route.codec is None
