"""End to end: the official ``anthropic`` SDK's Messages API, through the example app on
uvicorn, to an ``openai`` provider (the scripted fake, answering Chat Completions). Each test
checks what the SDK gives its user and what the provider received, translated."""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import pytest
from anthropic.types import MessageParam, ToolParam
from pydantic import BaseModel

from tests.e2e_helpers import (
    CLIENT_KEY,
    TIMEOUT,
    ProxyServer,
    RecordingTransport,
    anthropic_client,
)
from tests.fakes.provider import Action, FakeProvider, Turn
from tests.translation_e2e_helpers import (
    OPENAI_MODEL,
    USAGE,
    WEATHER_SCHEMA,
    sent,
    translation_proxy,
    weather_call,
)

pytestmark = pytest.mark.e2e

WEATHER_TOOL: ToolParam = {
    "name": "get_weather",
    "description": "Today's weather",
    "input_schema": WEATHER_SCHEMA,
}
ASK: list[MessageParam] = [{"role": "user", "content": "Weather in Paris?"}]
THOUGHT = "The user wants the weather. I should answer briefly."


proxy = pytest.fixture(scope="module", name="proxy")(translation_proxy)


@pytest.fixture
def ant(proxy: ProxyServer, recorder: RecordingTransport) -> Iterator[anthropic.Anthropic]:
    with anthropic_client(proxy.url, recorder) as client:
        yield client


def test_json_with_system_stop_user_and_limit(
    ant: anthropic.Anthropic, provider: FakeProvider
) -> None:
    raw = ant.messages.with_raw_response.create(
        model=OPENAI_MODEL,
        max_tokens=100,
        system="Be brief.",
        messages=ASK,
        stop_sequences=["END"],
        metadata={"user_id": "alice"},
    )
    message = raw.parse()
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].text == "fake reply to: Weather in Paris?"  # type: ignore[union-attr]
    assert (message.stop_reason, message.model) == ("end_turn", OPENAI_MODEL)
    assert raw.headers["x-llm-proxy-provider"] == "openai"
    got = sent(provider)
    assert got.path == "/v1/chat/completions"
    assert got.json["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
    ]
    assert got.json["stop"] == ["END"]
    assert got.json["user"] == "alice"
    assert got.json["max_completion_tokens"] == 100


@pytest.mark.anyio
async def test_async_json_and_stream(proxy: ProxyServer, provider: FakeProvider) -> None:
    async with anthropic.AsyncAnthropic(
        base_url=proxy.url + "/llm", api_key=CLIENT_KEY, max_retries=0, timeout=TIMEOUT
    ) as client:
        message = await client.messages.create(model=OPENAI_MODEL, max_tokens=64, messages=ASK)
        async with client.messages.stream(
            model=OPENAI_MODEL, max_tokens=64, messages=ASK
        ) as stream:
            text = "".join([t async for t in stream.text_stream])
            final = await stream.get_final_message()
    assert message.content[0].text == text == "fake reply to: Weather in Paris?"  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn"
    first, second = provider.wait_for_requests(2)
    assert (first.path, "stream" in first.json) == ("/v1/chat/completions", False)
    assert second.json["stream"] is True


def test_usage_converted_in_json(ant: anthropic.Anthropic, provider: FakeProvider) -> None:
    provider.script(Action(turn=Turn(text="ok", usage=USAGE)))
    usage = ant.messages.create(model=OPENAI_MODEL, max_tokens=64, messages=ASK).usage
    # OpenAI's prompt_tokens (15) count the cached ones (3 read, 2 written): taken out.
    assert (usage.input_tokens, usage.output_tokens) == (10, 5)
    assert (usage.cache_read_input_tokens, usage.cache_creation_input_tokens) == (3, 2)
    assert sent(provider).path == "/v1/chat/completions"


def test_stream_final_message_with_real_usage(
    ant: anthropic.Anthropic, provider: FakeProvider
) -> None:
    provider.script(Action(turn=Turn(text="It is sunny in Paris today.", usage=USAGE)))
    with ant.messages.stream(model=OPENAI_MODEL, max_tokens=64, messages=ASK) as stream:
        texts = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(texts) > 1, "the text came in one piece: the stream was buffered"
    assert "".join(texts) == final.content[0].text == "It is sunny in Paris today."  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (10, 5)
    assert final.usage.cache_read_input_tokens == 3
    got = sent(provider).json
    assert got["stream"] is True
    assert got["stream_options"] == {"include_usage": True}


def test_a_streamed_tool_use_then_its_result(
    ant: anthropic.Anthropic, provider: FakeProvider
) -> None:
    call = weather_call("call_e2e_weather_1")
    provider.script(Action(turn=Turn(tool_calls=[call])))
    with ant.messages.stream(
        model=OPENAI_MODEL, max_tokens=64, messages=ASK, tools=[WEATHER_TOOL]
    ) as stream:
        fragments = [e.partial_json for e in stream if e.type == "input_json"]
        final = stream.get_final_message()
    assert len(fragments) > 1 and "".join(fragments) == call.arguments
    assert final.stop_reason == "tool_use"
    (tool_use,) = final.content
    assert tool_use.type == "tool_use"
    assert (tool_use.id, tool_use.name, tool_use.input) == (call.id, "get_weather", call.input)
    function = {"name": "get_weather", "description": "Today's weather"}
    tool = {"type": "function", "function": {**function, "parameters": WEATHER_SCHEMA}}
    assert sent(provider).json["tools"] == [tool]

    result = "18 C, sunny"
    second = ant.messages.create(
        model=OPENAI_MODEL,
        max_tokens=64,
        tools=[WEATHER_TOOL],
        messages=[
            *ASK,
            {"role": "assistant", "content": final.content},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": tool_use.id, "content": result}],
            },
        ],
    )
    assert second.stop_reason == "end_turn"
    assistant, tool_message = sent(provider, 2).json["messages"][1:]
    assert assistant["tool_calls"] == [
        {
            "id": call.id,
            "type": "function",
            "function": {"name": "get_weather", "arguments": call.arguments},
        }
    ]
    assert tool_message == {"role": "tool", "tool_call_id": call.id, "content": result}


def test_a_json_tool_use(ant: anthropic.Anthropic, provider: FakeProvider) -> None:
    call = weather_call("call_e2e_weather_2")
    provider.script(Action(turn=Turn(text="Let me look.", tool_calls=[call])))
    message = ant.messages.create(
        model=OPENAI_MODEL,
        max_tokens=64,
        messages=ASK,
        tools=[WEATHER_TOOL],
        tool_choice={"type": "tool", "name": "get_weather"},
    )
    assert [b.type for b in message.content] == ["text", "tool_use"]
    assert message.content[1].id == call.id  # type: ignore[union-attr]
    assert message.content[1].input == call.input  # type: ignore[union-attr]
    assert message.stop_reason == "tool_use"
    choice = {"type": "function", "function": {"name": "get_weather"}}
    assert sent(provider).json["tool_choice"] == choice


class City(BaseModel):
    name: str
    population: int


def test_structured_output_with_parse(ant: anthropic.Anthropic, provider: FakeProvider) -> None:
    answer = City(name="Paris", population=2102650)
    provider.script(Action(turn=Turn(text=answer.model_dump_json())))
    message = ant.messages.parse(
        model=OPENAI_MODEL, max_tokens=64, messages=ASK, output_format=City
    )
    assert message.parsed_output == answer
    form = sent(provider).json["response_format"]
    assert form["type"] == "json_schema"
    assert form["json_schema"]["schema"]["required"] == ["name", "population"]


def test_thinking_budget_and_thinking_back(
    ant: anthropic.Anthropic, provider: FakeProvider
) -> None:
    provider.script(Action(turn=Turn(thinking=THOUGHT, text="Sunny.")))
    with ant.messages.stream(
        model=OPENAI_MODEL,
        max_tokens=4096,
        messages=ASK,
        thinking={"type": "enabled", "budget_tokens": 2048},
    ) as stream:
        final = stream.get_final_message()
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert final.content[0].thinking == THOUGHT  # type: ignore[union-attr]
    assert final.content[1].text == "Sunny."  # type: ignore[union-attr]
    assert sent(provider).json["reasoning_effort"] == "low"


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (429, anthropic.RateLimitError),
        (400, anthropic.BadRequestError),
        (503, anthropic.InternalServerError),
    ],
)
def test_provider_errors_typed(
    ant: anthropic.Anthropic,
    provider: FakeProvider,
    status: int,
    error: type[anthropic.APIStatusError],
) -> None:
    provider.script(Action(status=status))
    with pytest.raises(error) as raised:
        ant.messages.create(model=OPENAI_MODEL, max_tokens=64, messages=ASK)
    assert raised.value.status_code == status
    assert f"fake error {status}" in raised.value.message
    assert len(provider.wait_for_requests(1)) == 1


def test_untranslatable_top_k_is_refused_before_sending(
    ant: anthropic.Anthropic, provider: FakeProvider
) -> None:
    with pytest.raises(anthropic.BadRequestError) as raised:
        ant.messages.create(
            model=OPENAI_MODEL, max_tokens=64, messages=ASK, extra_body={"top_k": 5}
        )
    assert "top_k" in raised.value.message
    assert provider.requests == []


def test_a_mid_stream_error_raises_in_the_stream(
    ant: anthropic.Anthropic, provider: FakeProvider
) -> None:
    provider.script(Action(error_after=4))
    texts: list[str] = []
    with (
        pytest.raises(anthropic.APIStatusError) as raised,
        ant.messages.stream(model=OPENAI_MODEL, max_tokens=64, messages=ASK) as stream,
    ):
        texts.extend(stream.text_stream)
    assert "Overloaded" in raised.value.message
    assert texts, "the error came before any text: the stream was not passed on as it came"
    assert sent(provider).json["stream"] is True
