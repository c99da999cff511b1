"""End to end: LangChain's ``ChatOpenAI`` (Chat Completions and Responses) against an
``anthropic`` provider and ``ChatAnthropic`` against an ``openai`` one, through the example
app on uvicorn to the scripted fake. Each test checks what LangChain gives its user and
what the provider received, translated."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_anthropic import ChatAnthropic
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, SecretStr

from tests.e2e_helpers import CLIENT_KEY, TIMEOUT, ProxyServer
from tests.fakes.provider import Action, FakeProvider, ToolCall, Turn
from tests.translation_e2e_helpers import (
    ANTHROPIC_MODEL,
    OPENAI_MODEL,
    WEATHER_SCHEMA,
    sent,
    translation_proxy,
    weather_call,
)

pytestmark = pytest.mark.e2e

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Today's weather",
        "parameters": WEATHER_SCHEMA,
    },
}
ASK = "Weather in Paris?"


proxy = pytest.fixture(scope="module", name="proxy")(translation_proxy)


def chat_openai(proxy: ProxyServer, **options: Any) -> ChatOpenAI:
    return ChatOpenAI(
        base_url=proxy.url + "/llm/v1",
        api_key=SecretStr(CLIENT_KEY),
        model=ANTHROPIC_MODEL,
        max_retries=0,
        timeout=TIMEOUT,
        **options,
    )


def chat_anthropic(proxy: ProxyServer) -> ChatAnthropic:
    return ChatAnthropic(
        base_url=proxy.url + "/llm",
        api_key=SecretStr(CLIENT_KEY),
        model=OPENAI_MODEL,
        max_tokens=256,
        max_retries=0,
        timeout=TIMEOUT,
    )


#: Each LangChain model, the path its provider is called on, and that provider's name.
MODELS = [
    pytest.param(chat_openai, "/v1/messages", id="ChatOpenAI"),
    pytest.param(
        lambda proxy: chat_openai(proxy, use_responses_api=True),
        "/v1/messages",
        id="ChatOpenAI-responses",
    ),
    pytest.param(chat_anthropic, "/v1/chat/completions", id="ChatAnthropic"),
]


@pytest.mark.parametrize(("make", "path"), MODELS)
def test_invoke(proxy: ProxyServer, provider: FakeProvider, make: Any, path: str) -> None:
    model: BaseChatModel = make(proxy)
    provider.script(Action(turn=Turn(text="Sunny, 18 degrees.")))
    answer = model.invoke(ASK)
    assert isinstance(answer, AIMessage)
    assert answer.text == "Sunny, 18 degrees."
    assert answer.usage_metadata is not None
    assert answer.usage_metadata["output_tokens"] == 3
    got = sent(provider)
    assert got.path == path
    assert got.json["messages"][-1]["content"] in (ASK, [{"type": "text", "text": ASK}])


@pytest.mark.parametrize(("make", "path"), MODELS)
def test_stream(proxy: ProxyServer, provider: FakeProvider, make: Any, path: str) -> None:
    model: BaseChatModel = make(proxy)
    provider.script(Action(turn=Turn(text="It is sunny in Paris today.")))
    texts = [chunk.text for chunk in model.stream(ASK)]
    assert len([t for t in texts if t]) > 1, "the text came in one piece: it was buffered"
    assert "".join(texts) == "It is sunny in Paris today."
    got = sent(provider)
    assert (got.path, got.json["stream"]) == (path, True)


@pytest.mark.parametrize(("make", "path"), MODELS)
def test_bind_tools_then_the_tool_result(
    proxy: ProxyServer, provider: FakeProvider, make: Any, path: str
) -> None:
    model = make(proxy).bind_tools([WEATHER_TOOL])
    call = weather_call("toolu_e2e_lc" if path == "/v1/messages" else "call_e2e_lc")
    provider.script(Action(turn=Turn(tool_calls=[call])))
    asked = HumanMessage(ASK)
    answer = model.invoke([asked])
    assert isinstance(answer, AIMessage)
    assert answer.tool_calls == [
        {"name": "get_weather", "args": call.input, "id": call.id, "type": "tool_call"}
    ]
    first = sent(provider).json
    names = [t.get("name") or t["function"]["name"] for t in first["tools"]]
    assert names == ["get_weather"]

    result = ToolMessage("18 C, sunny", tool_call_id=call.id)
    final = model.invoke([asked, answer, result])
    assert final.text.startswith("fake reply to: ")
    said = sent(provider, 2).json["messages"]
    if path == "/v1/messages":
        (tool_use,) = [b for b in said[1]["content"] if b["type"] == "tool_use"]
        assert (tool_use["id"], tool_use["input"]) == (call.id, call.input)
        (tool_result,) = said[2]["content"]
        assert (tool_result["type"], tool_result["tool_use_id"]) == ("tool_result", call.id)
    else:
        assert [c["id"] for c in said[1]["tool_calls"]] == [call.id]
        assert (said[2]["role"], said[2]["tool_call_id"]) == ("tool", call.id)


class City(BaseModel):
    """A city and how many people live there."""

    name: str
    population: int


@pytest.mark.parametrize(("make", "path"), MODELS)
def test_with_structured_output(
    proxy: ProxyServer, provider: FakeProvider, make: Any, path: str
) -> None:
    answer = City(name="Paris", population=2102650)
    text = answer.model_dump_json()
    if path == "/v1/messages":  # ChatOpenAI: a JSON schema response format
        provider.script(Action(turn=Turn(text=text)))
    else:  # ChatAnthropic: a forced tool, by default
        provider.script(Action(turn=Turn(tool_calls=[ToolCall("City", text)])))
    assert make(proxy).with_structured_output(City).invoke(ASK) == answer
    got = sent(provider).json
    if path == "/v1/messages":
        assert got["output_config"]["format"]["schema"]["required"] == ["name", "population"]
    else:
        assert got["tool_choice"] == {"type": "function", "function": {"name": "City"}}
        assert got["tools"][0]["function"]["parameters"]["required"] == ["name", "population"]
