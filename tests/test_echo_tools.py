"""The echo provider's tool calls and structured output in Chat Completions and Messages,
checked by the SDKs' own types and stream accumulators."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from enum import StrEnum
from typing import Any

import anthropic
import pytest
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam
from pydantic import BaseModel

from llm_proxy_mw.apis import Api
from tests.echo_helpers import EchoClients, echo_clients, sse_data
from tests.goldens import validate_event, validate_request, validate_response

SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "days": {"type": "integer"},
        "metric": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "where": {
            "type": "object",
            "properties": {"lat": {"type": "number"}, "note": {"type": "string"}},
            "required": ["lat"],
        },
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "optional": {"type": "string"},
    },
    "required": ["city", "days", "metric", "tags", "where", "unit"],
}
ARGUMENTS = {
    "city": "Paris",
    "days": 0,
    "metric": False,
    "tags": [],
    "where": {"lat": 0},
    "unit": "celsius",
}
CHAT_TOOLS: list[ChatCompletionToolParam] = [
    {"type": "function", "function": {"name": "get_weather", "parameters": SCHEMA}},
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}},
]
ANTHROPIC_TOOLS: list[anthropic.types.ToolParam] = [
    {"name": "get_weather", "input_schema": SCHEMA},  # type: ignore[typeddict-item]
    {"name": "get_time", "input_schema": {"type": "object"}},
]
USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Paris"}]


@pytest.fixture
async def echo() -> AsyncIterator[EchoClients]:
    async with echo_clients() as clients:
        yield clients


# -- Chat Completions ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_chat_calls_the_first_tool_with_schema_arguments(echo: EchoClients) -> None:
    body = {"model": "echo-1", "messages": USER, "tools": CHAT_TOOLS}
    answer = (await echo.http.post("/v1/chat/completions", json=body)).json()
    validate_response(Api.CHAT, answer)
    choice = answer["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    [call] = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == ARGUMENTS


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("tool_choice", "called"),
    [
        ("auto", "get_weather"),
        ("required", "get_weather"),
        ({"type": "function", "function": {"name": "get_time"}}, "get_time"),
        ("none", None),
    ],
)
async def test_chat_tool_choice(echo: EchoClients, tool_choice: Any, called: str | None) -> None:
    completion = await echo.openai.chat.completions.create(
        model="echo-1", messages=USER, tools=CHAT_TOOLS, tool_choice=tool_choice
    )
    message = completion.choices[0].message
    if called is None:
        assert message.content == "echo: Paris" and not message.tool_calls
    else:
        assert message.tool_calls and message.tool_calls[0].type == "function"
        assert message.tool_calls[0].function.name == called


@pytest.mark.anyio
async def test_chat_stream_sends_the_arguments_in_fragments(echo: EchoClients) -> None:
    body = {"model": "echo-1", "messages": USER, "tools": CHAT_TOOLS, "stream": True}
    response = await echo.http.post("/v1/chat/completions", json=body)
    chunks = [json.loads(d) for d in sse_data(response.text)[:-1]]
    for chunk in chunks:
        validate_event(Api.CHAT, chunk)
    fragments = [
        c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"] for c in chunks[1:-1]
    ]
    assert len(fragments) > 1 and json.loads("".join(fragments)) == ARGUMENTS

    async with echo.openai.chat.completions.stream(
        model="echo-1", messages=USER, tools=CHAT_TOOLS
    ) as stream:
        final = await stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls
    call = choice.message.tool_calls[0]
    assert call.type == "function" and json.loads(call.function.arguments) == ARGUMENTS


@pytest.mark.anyio
async def test_chat_agent_loop_ends_on_the_tool_result(echo: EchoClients) -> None:
    messages: list[ChatCompletionMessageParam] = list(USER)
    first = await echo.openai.chat.completions.create(
        model="echo-1", messages=messages, tools=CHAT_TOOLS
    )
    calls = first.choices[0].message.tool_calls
    assert calls and calls[0].type == "function"
    messages.append(first.choices[0].message.model_dump(exclude_none=True))  # type: ignore[arg-type]
    messages.append({"role": "tool", "tool_call_id": calls[0].id, "content": "sunny, 21 C"})
    second = await echo.openai.chat.completions.create(
        model="echo-1", messages=messages, tools=CHAT_TOOLS
    )
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content == "echo: sunny, 21 C"


class Unit(StrEnum):
    CELSIUS = "celsius"
    FAHRENHEIT = "fahrenheit"


class Place(BaseModel):
    lat: float
    label: str | None


class Forecast(BaseModel):
    city: str
    days: int
    unit: Unit
    place: Place
    alerts: list[str]


@pytest.mark.anyio
async def test_chat_structured_output_parses_into_the_model(
    echo: EchoClients,
) -> None:
    completion = await echo.openai.chat.completions.parse(
        model="echo-1", messages=USER, response_format=Forecast
    )
    assert completion.choices[0].message.parsed == Forecast(
        city="Paris", days=0, unit=Unit.CELSIUS, place=Place(lat=0, label="Paris"), alerts=[]
    )
    json_object = await echo.openai.chat.completions.create(
        model="echo-1", messages=USER, response_format={"type": "json_object"}
    )
    assert json_object.choices[0].message.content == "{}"


# -- Messages --------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_messages_tool_use_json_and_stream(echo: EchoClients) -> None:
    body = {"model": "echo-2", "max_tokens": 50, "messages": USER, "tools": ANTHROPIC_TOOLS}
    answer = (await echo.http.post("/v1/messages", json=body)).json()
    validate_response(Api.MESSAGES, answer)
    assert answer["stop_reason"] == "tool_use"
    [block] = answer["content"]
    assert block["type"] == "tool_use" and block["name"] == "get_weather"
    assert block["input"] == ARGUMENTS

    response = await echo.http.post("/v1/messages", json={**body, "stream": True})
    events = [json.loads(d) for d in sse_data(response.text)]
    for event in events:
        validate_event(Api.MESSAGES, event)
    partial = [e["delta"]["partial_json"] for e in events if e["type"] == "content_block_delta"]
    assert len(partial) > 1

    async with echo.anthropic.messages.stream(
        model="echo-2",
        max_tokens=50,
        messages=[{"role": "user", "content": "Paris"}],
        tools=ANTHROPIC_TOOLS,
    ) as stream:
        final = await stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert final.content[0].type == "tool_use" and final.content[0].input == ARGUMENTS
    assert final.usage.output_tokens == len(partial)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("tool_choice", "called"),
    [
        ({"type": "any"}, "get_weather"),
        ({"type": "tool", "name": "get_time"}, "get_time"),
        ({"type": "none"}, None),
    ],
)
async def test_messages_tool_choice(
    echo: EchoClients, tool_choice: Any, called: str | None
) -> None:
    message = await echo.anthropic.messages.create(
        model="echo-2",
        max_tokens=50,
        messages=[{"role": "user", "content": "Paris"}],
        tools=ANTHROPIC_TOOLS,
        tool_choice=tool_choice,
    )
    block = message.content[0]
    if called is None:
        assert block.type == "text" and block.text == "echo: Paris"
    else:
        assert block.type == "tool_use" and block.name == called


@pytest.mark.anyio
async def test_messages_tool_result_ends_the_loop(
    echo: EchoClients,
) -> None:
    first = await echo.anthropic.messages.create(
        model="echo-2",
        max_tokens=50,
        messages=[{"role": "user", "content": "Paris"}],
        tools=ANTHROPIC_TOOLS,
    )
    call = first.content[0]
    assert call.type == "tool_use"
    result: anthropic.types.ToolResultBlockParam = {
        "type": "tool_result",
        "tool_use_id": call.id,
        "content": [{"type": "text", "text": "rain"}],
    }
    second = await echo.anthropic.messages.create(
        model="echo-2",
        max_tokens=50,
        tools=ANTHROPIC_TOOLS,
        messages=[
            {"role": "user", "content": "Paris"},
            {"role": "assistant", "content": [call.model_dump()]},  # type: ignore[list-item]
            {"role": "user", "content": [result]},
        ],
    )
    assert second.stop_reason == "end_turn"
    assert second.content[0].type == "text" and second.content[0].text == "echo: rain"


@pytest.mark.anyio
async def test_messages_structured_output(echo: EchoClients) -> None:
    message = await echo.anthropic.messages.create(
        model="echo-2",
        max_tokens=50,
        messages=[{"role": "user", "content": "Paris"}],
        output_config={"format": {"type": "json_schema", "schema": SCHEMA}},
    )
    assert message.content[0].type == "text"
    assert json.loads(message.content[0].text) == ARGUMENTS
    async with echo.anthropic.messages.stream(
        model="echo-2",
        max_tokens=50,
        messages=[{"role": "user", "content": "Paris"}],
        output_format=Forecast,
    ) as stream:
        final = await stream.get_final_message()
    assert final.parsed_output == Forecast(
        city="Paris", days=0, unit=Unit.CELSIUS, place=Place(lat=0, label="Paris"), alerts=[]
    )


# -- every answer shape, by the SDKs' own types ----------------------------------------------

PATHS = {
    Api.CHAT: "/v1/chat/completions",
    Api.MESSAGES: "/v1/messages",
    Api.RESPONSES: "/v1/responses",
}
BASES: dict[Api, dict[str, Any]] = {
    Api.CHAT: {"model": "echo-1", "messages": USER},
    Api.MESSAGES: {"model": "echo-2", "max_tokens": 50, "messages": USER},
    Api.RESPONSES: {"model": "echo-1", "input": "Paris"},
}
VARIANTS: dict[str, dict[Api, dict[str, Any]]] = {
    "text": {api: {} for api in Api},
    "tool": {
        Api.CHAT: {"tools": CHAT_TOOLS},
        Api.MESSAGES: {"tools": ANTHROPIC_TOOLS},
        Api.RESPONSES: {
            "tools": [{"type": "function", "name": "get_weather", "parameters": SCHEMA}]
        },
    },
    "schema": {
        Api.CHAT: {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "w", "schema": SCHEMA},
            }
        },
        Api.MESSAGES: {"output_config": {"format": {"type": "json_schema", "schema": SCHEMA}}},
        Api.RESPONSES: {"text": {"format": {"type": "json_schema", "name": "w", "schema": SCHEMA}}},
    },
    "truncated": {
        Api.CHAT: {"max_tokens": 1},
        Api.MESSAGES: {"max_tokens": 1},
        Api.RESPONSES: {"max_output_tokens": 1},
    },
}


@pytest.mark.anyio
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("api", Api)
async def test_every_answer_is_valid_json_and_sse(
    echo: EchoClients, api: Api, variant: str
) -> None:
    body = {**BASES[api], **VARIANTS[variant][api]}
    validate_request(api, body)
    answer = (await echo.http.post(PATHS[api], json=body)).json()
    validate_response(api, answer)
    response = await echo.http.post(PATHS[api], json={**body, "stream": True})
    data = sse_data(response.text)
    if api is Api.CHAT:
        assert data.pop() == "[DONE]"
    events = [json.loads(d) for d in data]
    for event in events:
        validate_event(api, event)
    assert len(events) >= 3  # opening, content, closing
