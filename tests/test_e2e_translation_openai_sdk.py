"""End to end: the official ``openai`` SDK's Chat Completions, through the example app on
uvicorn, to an ``anthropic`` provider (the scripted fake). Each test checks what the SDK
gives its user and what the provider received, translated."""

from __future__ import annotations

import json
from collections.abc import Iterator

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from pydantic import BaseModel

from tests.e2e_helpers import CLIENT_KEY, TIMEOUT, ProxyServer, RecordingTransport, openai_client
from tests.fakes.provider import Action, FakeProvider, FakeProviderServer, Turn
from tests.translation_e2e_helpers import (
    ANTHROPIC_MODEL,
    DOWN_MODEL,
    USAGE,
    WEATHER_SCHEMA,
    sent,
    serve_translation_proxy,
    weather_call,
)

pytestmark = pytest.mark.e2e

WEATHER_TOOL: openai.types.chat.ChatCompletionFunctionToolParam = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Today's weather",
        "parameters": WEATHER_SCHEMA,
    },
}
ASK: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Weather in Paris?"}]


@pytest.fixture(scope="module")
def down_server() -> Iterator[FakeProviderServer]:
    """The fake behind the only provider of ``DOWN_MODEL``."""
    with FakeProviderServer() as server:
        yield server


@pytest.fixture(scope="module")
def proxy(
    fake_server: FakeProviderServer,
    down_server: FakeProviderServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ProxyServer]:
    with serve_translation_proxy(
        fake_server.url, tmp_path_factory, down_url=down_server.url
    ) as served:
        yield served


@pytest.fixture
def oai(proxy: ProxyServer, recorder: RecordingTransport) -> Iterator[openai.OpenAI]:
    with openai_client(proxy.url, recorder) as client:
        yield client


def test_json_with_system_stop_user_and_limit(oai: openai.OpenAI, provider: FakeProvider) -> None:
    raw = oai.chat.completions.with_raw_response.create(
        model=ANTHROPIC_MODEL,
        messages=[{"role": "system", "content": "Be brief."}, *ASK],
        stop=["END"],
        user="alice",
        max_completion_tokens=100,
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "fake reply to: Weather in Paris?"
    assert completion.choices[0].finish_reason == "stop"
    assert (completion.model, raw.headers["x-llm-proxy-provider"]) == (ANTHROPIC_MODEL, "anthropic")
    got = sent(provider)
    assert got.path == "/v1/messages"
    assert got.headers["x-api-key"] != CLIENT_KEY
    assert got.json["system"] == "Be brief."
    assert got.json["messages"] == [{"role": "user", "content": "Weather in Paris?"}]
    assert got.json["stop_sequences"] == ["END"]
    assert got.json["metadata"] == {"user_id": "alice"}
    assert got.json["max_tokens"] == 100


@pytest.mark.anyio
async def test_async_json_and_stream(proxy: ProxyServer, provider: FakeProvider) -> None:
    async with openai.AsyncOpenAI(
        base_url=proxy.url + "/llm/v1", api_key=CLIENT_KEY, max_retries=0, timeout=TIMEOUT
    ) as client:
        completion = await client.chat.completions.create(model=ANTHROPIC_MODEL, messages=ASK)
        stream = await client.chat.completions.create(
            model=ANTHROPIC_MODEL, messages=ASK, stream=True
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert completion.choices[0].message.content == text == "fake reply to: Weather in Paris?"
    first, second = provider.wait_for_requests(2)
    assert (first.path, "stream" in first.json) == ("/v1/messages", False)
    assert (second.path, second.json["stream"]) == ("/v1/messages", True)


def test_usage_converted_in_json(oai: openai.OpenAI, provider: FakeProvider) -> None:
    provider.script(Action(turn=Turn(text="ok", usage=USAGE)))
    usage = oai.chat.completions.create(model=ANTHROPIC_MODEL, messages=ASK).usage
    assert usage is not None
    # Anthropic counts cache reads and writes outside the input; OpenAI inside the prompt.
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (15, 5, 20)
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 3
    assert sent(provider).path == "/v1/messages"


def test_stream_with_include_usage(oai: openai.OpenAI, provider: FakeProvider) -> None:
    provider.script(Action(turn=Turn(text="It is sunny in Paris today.", usage=USAGE)))
    chunks = list(
        oai.chat.completions.create(
            model=ANTHROPIC_MODEL,
            messages=ASK,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    deltas = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert len(deltas) > 1, "the text came in one piece: the stream was buffered"
    assert "".join(deltas) == "It is sunny in Paris today."
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (15, 5)
    assert chunks[-1].usage.prompt_tokens_details is not None
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens == 3
    assert all(c.usage is None for c in chunks[:-1])
    assert sent(provider).json["stream"] is True


def test_stream_helper_final_completion(oai: openai.OpenAI, provider: FakeProvider) -> None:
    with oai.chat.completions.stream(model=ANTHROPIC_MODEL, messages=ASK) as stream:
        text = "".join(e.delta for e in stream if e.type == "content.delta")
        final = stream.get_final_completion()
    assert text == final.choices[0].message.content == "fake reply to: Weather in Paris?"
    assert final.choices[0].finish_reason == "stop"
    assert sent(provider).json["stream"] is True


def test_a_streamed_tool_call_then_its_result(oai: openai.OpenAI, provider: FakeProvider) -> None:
    call = weather_call("toolu_e2e_weather_1")
    provider.script(Action(turn=Turn(tool_calls=[call])))
    with oai.chat.completions.stream(
        model=ANTHROPIC_MODEL, messages=ASK, tools=[WEATHER_TOOL]
    ) as stream:
        fragments = [
            e.arguments_delta for e in stream if e.type == "tool_calls.function.arguments.delta"
        ]
        final = stream.get_final_completion()
    assert len(fragments) > 1 and "".join(fragments) == call.arguments
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    (tool_call,) = choice.message.tool_calls
    assert tool_call.id == call.id
    assert tool_call.type == "function"
    assert (tool_call.function.name, tool_call.function.arguments) == (
        "get_weather",
        call.arguments,
    )
    first = sent(provider)
    tool = {"name": "get_weather", "description": "Today's weather", "input_schema": WEATHER_SCHEMA}
    assert first.json["tools"] == [tool]

    second = oai.chat.completions.create(
        model=ANTHROPIC_MODEL,
        tools=[WEATHER_TOOL],
        messages=[
            *ASK,
            choice.message.model_dump(exclude_none=True),  # type: ignore[list-item]
            {"role": "tool", "tool_call_id": tool_call.id, "content": "18 C, sunny"},
        ],
    )
    assert second.choices[0].message.content == "fake reply to: "
    assistant, results = sent(provider, 2).json["messages"][1:]
    assert assistant["role"] == "assistant"
    assert assistant["content"] == [
        {"type": "tool_use", "id": call.id, "name": "get_weather", "input": call.input}
    ]
    assert results["role"] == "user"
    assert results["content"] == [
        {"type": "tool_result", "tool_use_id": call.id, "content": "18 C, sunny"}
    ]


def test_a_json_tool_call(oai: openai.OpenAI, provider: FakeProvider) -> None:
    call = weather_call("toolu_e2e_weather_2")
    provider.script(Action(turn=Turn(text="Let me look.", tool_calls=[call])))
    completion = oai.chat.completions.create(
        model=ANTHROPIC_MODEL, messages=ASK, tools=[WEATHER_TOOL], tool_choice="required"
    )
    message = completion.choices[0].message
    assert message.content == "Let me look."
    assert message.tool_calls is not None
    assert [(c.id, c.function.arguments) for c in message.tool_calls] == [(call.id, call.arguments)]  # type: ignore[union-attr]
    assert completion.choices[0].finish_reason == "tool_calls"
    assert sent(provider).json["tool_choice"] == {"type": "any"}


class City(BaseModel):
    name: str
    population: int


def test_structured_output_with_parse(oai: openai.OpenAI, provider: FakeProvider) -> None:
    answer = City(name="Paris", population=2102650)
    provider.script(Action(turn=Turn(text=answer.model_dump_json())))
    completion = oai.chat.completions.parse(
        model=ANTHROPIC_MODEL, messages=ASK, response_format=City
    )
    assert completion.choices[0].message.parsed == answer
    form = sent(provider).json["output_config"]["format"]
    assert form["type"] == "json_schema"
    assert form["schema"]["properties"] == {
        "name": {"title": "Name", "type": "string"},
        "population": {"title": "Population", "type": "integer"},
    }


THOUGHT = "The user wants the weather. I should answer briefly."


def test_thinking_json(oai: openai.OpenAI, provider: FakeProvider) -> None:
    provider.script(Action(turn=Turn(thinking=THOUGHT, text="Sunny.")))
    completion = oai.chat.completions.create(
        model=ANTHROPIC_MODEL, messages=ASK, reasoning_effort="low"
    )
    message = completion.choices[0].message
    assert message.content == "Sunny."
    assert message.model_extra is not None
    assert message.model_extra["reasoning_content"] == THOUGHT
    got = sent(provider).json
    assert got["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert got["max_tokens"] > 2048


def test_thinking_stream_keeps_the_text_after_it(
    oai: openai.OpenAI, provider: FakeProvider
) -> None:
    provider.script(Action(turn=Turn(thinking=THOUGHT, text="Sunny, 18 degrees.")))
    reasoning, text = [], []
    for chunk in oai.chat.completions.create(
        model=ANTHROPIC_MODEL, messages=ASK, reasoning_effort="medium", stream=True
    ):
        if chunk.choices:
            delta = chunk.choices[0].delta
            reasoning.append((delta.model_extra or {}).get("reasoning_content") or "")
            text.append(delta.content or "")
    assert "".join(reasoning) == THOUGHT
    assert "".join(text) == "Sunny, 18 degrees."
    assert sent(provider).json["thinking"] == {"type": "enabled", "budget_tokens": 8192}


@pytest.mark.parametrize(
    ("status", "error", "seen"),
    [
        (429, openai.RateLimitError, 429),
        (529, openai.InternalServerError, 503),
        (400, openai.BadRequestError, 400),
    ],
)
def test_provider_errors_typed(
    oai: openai.OpenAI,
    provider: FakeProvider,
    status: int,
    error: type[openai.APIStatusError],
    seen: int,
) -> None:
    provider.script(Action(status=status))
    with pytest.raises(error) as raised:
        oai.chat.completions.create(model=ANTHROPIC_MODEL, messages=ASK)
    assert raised.value.status_code == seen
    message = "Overloaded" if status == 529 else f"fake error {status}"
    assert message in raised.value.message
    assert len(provider.wait_for_requests(1)) == 1


def test_untranslatable_n_is_refused_before_sending(
    oai: openai.OpenAI, provider: FakeProvider
) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        oai.chat.completions.create(model=ANTHROPIC_MODEL, messages=ASK, n=2)
    assert raised.value.param == "n"
    assert raised.value.code == "unsupported_parameter"
    assert "n" in raised.value.message
    assert provider.requests == []


def test_a_mid_stream_error_raises_in_the_stream(
    oai: openai.OpenAI, provider: FakeProvider
) -> None:
    provider.script(Action(error_after=4))
    stream = oai.chat.completions.create(model=ANTHROPIC_MODEL, messages=ASK, stream=True)
    seen = []
    with pytest.raises(openai.APIError) as raised:
        for chunk in stream:
            seen.append(chunk)
    assert "Overloaded" in raised.value.message
    assert seen, "the error came before any chunk: the stream was not passed on as it came"
    assert sent(provider).json["stream"] is True


def test_a_model_fallback_across_kinds(
    oai: openai.OpenAI, provider: FakeProvider, down_server: FakeProviderServer
) -> None:
    down = down_server.app
    down.reset()
    down.script(*[Action(status=500)] * 4)
    raw = oai.chat.completions.with_raw_response.create(model=DOWN_MODEL, messages=ASK)
    completion = raw.parse()
    assert completion.choices[0].message.content == "fake reply to: Weather in Paris?"
    assert completion.model == ANTHROPIC_MODEL
    assert raw.headers["x-llm-proxy-provider"] == "anthropic"
    assert [r.json["model"] for r in down.wait_for_requests(1)] == [DOWN_MODEL]
    got = sent(provider)
    assert (got.path, got.json["model"]) == ("/v1/messages", ANTHROPIC_MODEL)
    assert json.loads(got.body)["messages"] == ASK
    down.reset()
