"""End to end: the official ``openai`` SDK's Responses API, through the example app on
uvicorn, to an ``anthropic`` provider and to an ``openai`` provider without the Responses API
(``responses_api = false``, answering Chat Completions), both on the scripted fake. Each test
checks what the SDK gives its user and what the provider received, translated."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest
from openai.types.responses import FunctionToolParam
from pydantic import BaseModel

from tests.e2e_helpers import ProxyServer, RecordingTransport, openai_client
from tests.fakes.provider import Action, FakeProvider, Turn
from tests.translation_e2e_helpers import (
    ANTHROPIC_MODEL,
    CHAT_ONLY_MODEL,
    USAGE,
    WEATHER_SCHEMA,
    sent,
    translation_proxy,
    weather_call,
)

pytestmark = pytest.mark.e2e

WEATHER_TOOL: FunctionToolParam = {
    "type": "function",
    "name": "get_weather",
    "description": "Today's weather",
    "parameters": WEATHER_SCHEMA,
    "strict": False,
}
ASK = "Weather in Paris?"

#: Each target model, the path its provider was called on, and its provider's name.
TARGETS = [
    pytest.param(ANTHROPIC_MODEL, "/v1/messages", "anthropic", id="anthropic"),
    pytest.param(CHAT_ONLY_MODEL, "/v1/chat/completions", "openai-chat", id="chat-only"),
]


proxy = pytest.fixture(scope="module", name="proxy")(translation_proxy)


@pytest.fixture
def oai(proxy: ProxyServer, recorder: RecordingTransport) -> Iterator[openai.OpenAI]:
    with openai_client(proxy.url, recorder) as client:
        yield client


def _system(got: dict[str, Any]) -> Any:
    """The system prompt the provider got, in either API."""
    if "system" in got:
        return got["system"]
    first = got["messages"][0]
    return first["content"] if first["role"] == "system" else None


@pytest.mark.parametrize(("model", "path", "name"), TARGETS)
def test_json(oai: openai.OpenAI, provider: FakeProvider, model: str, path: str, name: str) -> None:
    provider.script(Action(turn=Turn(text="Sunny.", usage=USAGE)))
    raw = oai.responses.with_raw_response.create(
        model=model, input=ASK, instructions="Be brief.", max_output_tokens=200, store=False
    )
    response = raw.parse()
    assert response.output_text == "Sunny."
    assert (response.status, response.model) == ("completed", model)
    assert raw.headers["x-llm-proxy-provider"] == name
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == (15, 5)
    assert response.usage.input_tokens_details.cached_tokens == 3
    got = sent(provider)
    assert got.path == path
    assert _system(got.json) == "Be brief."
    assert got.json.get("max_tokens", got.json.get("max_completion_tokens")) == 200


@pytest.mark.parametrize(("model", "path", "name"), TARGETS)
def test_stream_final_response(
    oai: openai.OpenAI, provider: FakeProvider, model: str, path: str, name: str
) -> None:
    provider.script(Action(turn=Turn(text="It is sunny in Paris today.")))
    with oai.responses.stream(model=model, input=ASK, store=False) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) > 1, "the text came in one piece: the stream was buffered"
    assert "".join(deltas) == final.output_text == "It is sunny in Paris today."
    assert [e.sequence_number for e in events] == list(range(len(events)))
    got = sent(provider)
    assert (got.path, got.json["stream"]) == (path, True)


@pytest.mark.parametrize(("model", "path", "name"), TARGETS)
def test_a_function_call_then_its_output(
    oai: openai.OpenAI, provider: FakeProvider, model: str, path: str, name: str
) -> None:
    call = weather_call("call_e2e_weather_r1")
    provider.script(Action(turn=Turn(tool_calls=[call])))
    with oai.responses.stream(model=model, input=ASK, tools=[WEATHER_TOOL], store=False) as stream:
        fragments = [e.delta for e in stream if e.type == "response.function_call_arguments.delta"]
        first = stream.get_final_response()
    assert len(fragments) > 1 and "".join(fragments) == call.arguments
    (item,) = first.output
    assert item.type == "function_call"
    assert (item.call_id, item.name, item.arguments) == (call.id, "get_weather", call.arguments)
    tools = sent(provider).json["tools"]
    assert [t.get("name", t.get("function", {}).get("name")) for t in tools] == ["get_weather"]

    second = oai.responses.create(
        model=model,
        tools=[WEATHER_TOOL],
        store=False,
        input=[
            {"role": "user", "content": ASK},
            item.model_dump(exclude_none=True),  # type: ignore[list-item]
            {"type": "function_call_output", "call_id": item.call_id, "output": "18 C"},
        ],
    )
    assert second.status == "completed"
    messages = sent(provider, 2).json["messages"]
    if path == "/v1/messages":
        assert messages[1]["content"] == [
            {"type": "tool_use", "id": call.id, "name": "get_weather", "input": call.input}
        ]
        result = {"type": "tool_result", "tool_use_id": call.id, "content": "18 C"}
        assert messages[2] == {"role": "user", "content": [result]}
    else:
        assert [c["id"] for c in messages[1]["tool_calls"]] == [call.id]
        assert messages[2] == {"role": "tool", "tool_call_id": call.id, "content": "18 C"}


class City(BaseModel):
    name: str
    population: int


@pytest.mark.parametrize(("model", "path", "name"), TARGETS)
def test_structured_output_with_parse(
    oai: openai.OpenAI, provider: FakeProvider, model: str, path: str, name: str
) -> None:
    answer = City(name="Paris", population=2102650)
    provider.script(Action(turn=Turn(text=answer.model_dump_json())))
    response = oai.responses.parse(model=model, input=ASK, text_format=City, store=False)
    assert response.output_parsed == answer
    got = sent(provider).json
    if path == "/v1/messages":
        schema = got["output_config"]["format"]["schema"]
    else:
        schema = got["response_format"]["json_schema"]["schema"]
    assert schema["required"] == ["name", "population"]


@pytest.mark.parametrize(("model", "path", "name"), TARGETS)
def test_a_mid_stream_error_is_response_failed(
    oai: openai.OpenAI, provider: FakeProvider, model: str, path: str, name: str
) -> None:
    provider.script(Action(error_after=4))
    with oai.responses.stream(model=model, input=ASK, store=False) as stream:
        kinds = [e.type for e in stream]
    assert kinds[0] == "response.created"
    assert kinds[-1] == "response.failed"
    assert "response.completed" not in kinds
    got = sent(provider)
    assert (got.path, got.json["stream"]) == (path, True)


REFUSED = [
    pytest.param({"previous_response_id": "resp_123"}, "previous_response_id", id="previous"),
    pytest.param({"store": True}, "store", id="store"),
    pytest.param({"tools": [{"type": "web_search"}]}, "tools", id="web_search"),
]


@pytest.mark.parametrize(("model", "path", "name"), TARGETS)
@pytest.mark.parametrize(("extra", "field"), REFUSED)
def test_stateful_and_built_in_fields_are_refused_before_sending(
    oai: openai.OpenAI,
    provider: FakeProvider,
    model: str,
    path: str,
    name: str,
    extra: dict[str, Any],
    field: str,
) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        oai.responses.create(model=model, input=ASK, **extra)
    assert raised.value.code == "unsupported_parameter"
    assert field in raised.value.message
    assert (raised.value.param or "").startswith(field)
    assert provider.requests == []
