"""The official SDKs as clients of the scripted fake provider, straight (no proxy): what
their stream helpers accumulate is the scripted turn, and its failures raise their errors."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest

from tests.fakes.provider import Action, FakeProvider, FakeProviderServer, ToolCall, Turn, TurnUsage

CALL = ToolCall("get_weather", '{"city": "Paris", "days": [1, 2]}', id="call_w")
TURN = Turn(
    text="Checking.",
    thinking="Weather for Paris.",
    signature="sig-9",
    tool_calls=[CALL],
    usage=TurnUsage(input=12, output=30, cache_read=5, cache_write=2),
)
USER: Any = [{"role": "user", "content": "weather in Paris?"}]


@pytest.fixture
def claude(fake_server: FakeProviderServer) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=fake_server.url, api_key="k", max_retries=0) as client:
        yield client


@pytest.fixture
def gpt(fake_server: FakeProviderServer) -> Iterator[openai.OpenAI]:
    url = f"{fake_server.url}/v1"
    with openai.OpenAI(base_url=url, api_key="k", max_retries=0) as client:
        yield client


def test_anthropic_stream_accumulates_the_turn(
    provider: FakeProvider, claude: anthropic.Anthropic
) -> None:
    provider.script(Action(turn=TURN), Action(turn=TURN))
    with claude.messages.stream(model="m", max_tokens=100, messages=USER) as stream:
        final = stream.get_final_message()
    created = claude.messages.create(model="m", max_tokens=100, messages=USER)
    assert final.model_dump(exclude={"id"}) == created.model_dump(exclude={"id"})
    thinking, text, tool = final.content
    assert thinking.type == "thinking" and thinking.signature == "sig-9"
    assert thinking.thinking == "Weather for Paris." and text.type == "text"
    assert tool.type == "tool_use" and tool.input == {"city": "Paris", "days": [1, 2]}
    assert final.stop_reason == "tool_use"
    usage = final.usage
    assert (usage.input_tokens, usage.output_tokens) == (12, 30)
    assert (usage.cache_read_input_tokens, usage.cache_creation_input_tokens) == (5, 2)


def test_openai_chat_stream_accumulates_the_turn(
    provider: FakeProvider, gpt: openai.OpenAI
) -> None:
    provider.script(Action(turn=TURN))
    with gpt.chat.completions.stream(
        model="m",
        messages=USER,
        stream_options={"include_usage": True},
    ) as stream:
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "Checking."
    (call,) = choice.message.tool_calls or []
    assert call.type == "function"
    assert (call.id, call.function.name, call.function.arguments) == (
        "call_w",
        CALL.name,
        CALL.arguments,
    )
    assert final.usage is not None and final.usage.prompt_tokens == 19


def test_openai_responses_stream_accumulates_the_turn(
    provider: FakeProvider, gpt: openai.OpenAI
) -> None:
    provider.script(Action(turn=TURN))
    with gpt.responses.stream(model="m", input="weather in Paris?") as stream:
        final = stream.get_final_response()
    assert [item.type for item in final.output] == ["reasoning", "message", "function_call"]
    assert final.output_text == "Checking."
    call = final.output[2]
    assert call.type == "function_call"
    assert (call.call_id, call.arguments) == ("call_w", CALL.arguments)
    assert final.usage is not None and final.usage.input_tokens == 19


def test_stream_failures_raise_in_each_sdk(
    provider: FakeProvider, claude: anthropic.Anthropic, gpt: openai.OpenAI
) -> None:
    provider.script(*[Action(turn=TURN, error_after=4)] * 3)
    with (
        pytest.raises(anthropic.APIStatusError, match="overloaded_error"),
        claude.messages.stream(model="m", max_tokens=100, messages=USER) as messages,
    ):
        messages.get_final_message()
    with (
        pytest.raises(openai.APIError, match="Overloaded"),
        gpt.chat.completions.stream(model="m", messages=USER) as chat,
    ):
        chat.get_final_completion()
    with gpt.responses.stream(model="m", input="hi") as responses:
        failed = [e for e in responses if e.type == "response.failed"]
    assert failed[0].response.error is not None
    assert failed[0].response.error.code == "server_error"


def test_overloaded_is_the_anthropic_sdks_overloaded_error(
    provider: FakeProvider, claude: anthropic.Anthropic
) -> None:
    provider.script(Action(status=529))
    with pytest.raises(anthropic.OverloadedError, match="Overloaded"):
        claude.messages.create(model="m", max_tokens=10, messages=USER)
