"""The echo provider's Responses API, checked by the openai SDK's own types and its stream
accumulator (which checks the event grammar: identities, indices, the final event)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
from pydantic import BaseModel

from llm_proxy_mw.apis import Api
from tests.echo_helpers import EchoClients, echo_clients, sse_data
from tests.goldens import validate_event, validate_response

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city", "days"],
    },
}


@pytest.fixture
async def echo() -> AsyncIterator[EchoClients]:
    async with echo_clients() as clients:
        yield clients


async def stream_events(http: httpx.AsyncClient, body: dict[str, Any]) -> list[dict[str, Any]]:
    response = await http.post("/v1/responses", json={**body, "stream": True})
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(data) for data in sse_data(response.text)]
    for event in events:
        validate_event(Api.RESPONSES, event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events


@pytest.mark.anyio
async def test_text_answer_is_a_valid_response(echo: EchoClients) -> None:
    body = {"model": "echo-1", "input": "hello there", "instructions": "be brief"}
    response = await echo.http.post("/v1/responses", json=body)
    assert response.status_code == 200
    answer = response.json()
    validate_response(Api.RESPONSES, answer)
    assert answer["status"] == "completed"
    assert answer["instructions"] == "be brief"
    [message] = answer["output"]
    assert message["content"][0]["text"] == "echo: hello there"
    assert answer["usage"]["input_tokens"] == 4  # instructions counted with the input
    assert answer["usage"]["output_tokens"] == 3
    again = (await echo.http.post("/v1/responses", json=body)).json()
    assert again["id"] == answer["id"] and again["output"] == answer["output"]


@pytest.mark.anyio
async def test_sdk_create_reads_input_items(echo: EchoClients) -> None:
    response = await echo.openai.responses.create(
        model="echo-1",
        input=[
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "an answer"},
            {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "last"}],
            },
        ],
    )
    assert response.output_text == "echo: last"
    assert response.usage is not None and response.usage.input_tokens == 4


@pytest.mark.anyio
async def test_text_stream_has_the_full_event_grammar(echo: EchoClients) -> None:
    events = await stream_events(echo.http, {"model": "echo-1", "input": "a b c"})
    types = [e["type"] for e in events]
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types[4:-4] == ["response.output_text.delta"] * 4
    assert types[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert events[-1]["response"]["usage"]["output_tokens"] == 4

    async with echo.openai.responses.stream(model="echo-1", input="a b c") as stream:
        deltas = [e.delta async for e in stream if e.type == "response.output_text.delta"]
        final = await stream.get_final_response()
    assert "".join(deltas) == final.output_text == "echo: a b c"
    assert final.status == "completed"


@pytest.mark.anyio
async def test_max_output_tokens_makes_the_response_incomplete(echo: EchoClients) -> None:
    response = await echo.openai.responses.create(
        model="echo-1", input="one two three four", max_output_tokens=2
    )
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output_text == "echo: one"
    events = await stream_events(
        echo.http, {"model": "echo-1", "input": "one two three", "max_output_tokens": 2}
    )
    assert events[-1]["type"] == "response.incomplete"


@pytest.mark.anyio
async def test_function_call_from_the_tool_schema(echo: EchoClients) -> None:
    body: dict[str, Any] = {"model": "echo-1", "input": "Paris", "tools": [WEATHER]}
    answer = (await echo.http.post("/v1/responses", json=body)).json()
    validate_response(Api.RESPONSES, answer)
    [call] = answer["output"]
    assert call["type"] == "function_call" and call["name"] == "get_weather"
    assert json.loads(call["arguments"]) == {"city": "Paris", "days": 0}

    events = await stream_events(echo.http, body)
    deltas = [e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta"]
    assert len(deltas) > 1
    done = next(e for e in events if e["type"] == "response.function_call_arguments.done")
    assert "".join(deltas) == done["arguments"] == call["arguments"]

    async with echo.openai.responses.stream(
        model="echo-1", input="Paris", tools=[WEATHER]
    ) as stream:
        final = await stream.get_final_response()
    [item] = final.output
    assert item.type == "function_call" and item.arguments == call["arguments"]


@pytest.mark.anyio
async def test_tool_choice_none_answers_with_text(echo: EchoClients) -> None:
    response = await echo.openai.responses.create(
        model="echo-1", input="Paris", tools=[WEATHER], tool_choice="none"
    )
    assert response.output_text == "echo: Paris"


@pytest.mark.anyio
async def test_function_call_output_ends_the_loop(echo: EchoClients) -> None:
    first = await echo.openai.responses.create(model="echo-1", input="Paris", tools=[WEATHER])
    call = first.output[0]
    assert call.type == "function_call"
    second = await echo.openai.responses.create(
        model="echo-1",
        tools=[WEATHER],
        input=[
            {"role": "user", "content": "Paris"},
            {
                "type": "function_call",
                "call_id": call.call_id,
                "name": call.name,
                "arguments": call.arguments,
            },
            {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},
        ],
    )
    assert second.output_text == "echo: sunny"


class City(BaseModel):
    name: str
    population: int
    capital: bool
    districts: list[str]


@pytest.mark.anyio
async def test_text_format_json_schema_is_satisfied(echo: EchoClients) -> None:
    parsed = await echo.openai.responses.parse(model="echo-1", input="Lyon", text_format=City)
    assert parsed.output_parsed == City(name="Lyon", population=0, capital=False, districts=[])


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "echo-1"}, "input"),
        ({"model": "echo-1", "input": 5}, "input"),
        ({"model": "echo-1", "input": "x", "tools": {}}, "tools"),
        (
            {
                "model": "echo-1",
                "input": "x",
                "tools": [WEATHER],
                "tool_choice": {"type": "function", "name": "nope"},
            },
            "tool_choice",
        ),
    ],
)
async def test_a_body_of_the_wrong_shape_is_an_openai_400(
    echo: EchoClients, body: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await echo.openai.post("/responses", body=body, cast_to=httpx.Response)
    assert info.value.param == param
