"""Chat Completions <-> Messages: the golden cases (each side valid by its SDK's own types,
then the translation exactly as recorded), and odd or hostile client bodies."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from llm_proxy_mw.apis import Api
from llm_proxy_mw.errors import InvalidRequestError, UntranslatableError
from llm_proxy_mw.translate import _chat_messages_response
from llm_proxy_mw.translate._chat_messages_request import (
    chat_request_to_messages,
    messages_request_to_chat,
)
from llm_proxy_mw.translate._chat_messages_response import (
    chat_response_to_messages,
    messages_response_to_chat,
)
from llm_proxy_mw.translate._codec import Target
from tests.goldens import cases, validate_request, validate_response

#: The ``created`` time the goldens' translated ChatCompletions were recorded with.
CREATED = 1767225600

DIRECTIONS = {
    "chat_to_messages": (
        Api.CHAT,
        Api.MESSAGES,
        chat_request_to_messages,
        messages_response_to_chat,
    ),
    "messages_to_chat": (
        Api.MESSAGES,
        Api.CHAT,
        messages_request_to_chat,
        chat_response_to_messages,
    ),
}


@pytest.fixture(autouse=True)
def _fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_chat_messages_response, "time", lambda: CREATED)


def _target(case: dict[str, Any]) -> Target:
    return Target(**case.get("target", {"model": case["client_request"]["model"]}))


def _request_cases(*keys: str) -> list[Any]:
    return [
        pytest.param(direction, case.values[0], id=f"{direction}/{case.id}")
        for direction in DIRECTIONS
        for case in cases(direction, "client_request", *keys)
    ]


@pytest.mark.parametrize(("direction", "case"), _request_cases("provider_request"))
def test_request(direction: str, case: dict[str, Any]) -> None:
    client, provider, translate, _ = DIRECTIONS[direction]
    validate_request(client, case["client_request"])
    validate_request(provider, case["provider_request"])
    body = copy.deepcopy(case["client_request"])
    assert translate(body, _target(case)) == case["provider_request"]
    assert body == case["client_request"], "the client's body was changed"


@pytest.mark.parametrize(("direction", "case"), _request_cases("error"))
def test_untranslatable(direction: str, case: dict[str, Any]) -> None:
    client, _, translate, _ = DIRECTIONS[direction]
    validate_request(client, case["client_request"])
    with pytest.raises(UntranslatableError) as raised:
        translate(copy.deepcopy(case["client_request"]), _target(case))
    assert raised.value.param == case["error"]["param"]
    assert raised.value.status_code == 400
    assert case["error"]["param"] in raised.value.message


@pytest.mark.parametrize(
    ("direction", "case"),
    [
        pytest.param(direction, case.values[0], id=f"{direction}/{case.id}")
        for direction in DIRECTIONS
        for case in cases(direction, "provider_response", "client_response")
    ],
)
def test_response(direction: str, case: dict[str, Any]) -> None:
    client, provider, _, translate = DIRECTIONS[direction]
    validate_response(provider, case["provider_response"])
    validate_response(client, case["client_response"])
    translated, usage = translate(copy.deepcopy(case["provider_response"]))
    assert translated == case["client_response"]
    total = usage.prompt_tokens + usage.completion_tokens
    if client is Api.CHAT:
        assert translated["usage"]["total_tokens"] == total
    else:
        assert sum(v for k, v in translated["usage"].items() if k.endswith("_tokens")) == total


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_enough_cases(direction: str) -> None:
    names = [p.id for p in cases(direction) if not p.id.startswith("stream_")]
    assert len(names) >= 38


def _chat(**body: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], **body}


def _messages(**body: Any) -> dict[str, Any]:
    return {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}], **body}


def _calling(arguments: str) -> dict[str, Any]:
    """A Chat body whose assistant called a tool with ``arguments``."""
    call = {"id": "c", "function": {"name": "f", "arguments": arguments}}
    return _chat(messages=[{"role": "assistant", "tool_calls": [call]}])


def _turn(role: str, block: dict[str, Any]) -> dict[str, Any]:
    """A Messages body of one turn holding ``block``."""
    return _messages(messages=[{"role": role, "content": [block]}])


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "m"}, "messages"),
        (_chat(messages="hi"), "messages"),
        (_chat(messages=["hi"]), "messages[0]"),
        (_chat(messages=[{"role": "wizard", "content": "x"}]), "messages[0].role"),
        (_chat(messages=[{"role": "user", "content": 3}]), "messages[0].content"),
        (_chat(messages=[{"role": "system", "content": None}]), "messages[0].content"),
        (
            _chat(messages=[{"role": "user", "content": [{"type": "text", "text": 3}]}]),
            "messages[0].content[0].text",
        ),
        (
            _chat(
                messages=[
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "ftp://x"}}],
                    }
                ]
            ),
            "messages[0].content[0].image_url.url",
        ),
        (_chat(max_tokens="10"), "max_tokens"),
        (_chat(max_tokens=-1), "max_tokens"),
        (_chat(max_tokens=True), "max_tokens"),
        (_chat(stop=[1]), "stop[0]"),
        (_chat(user=5), "user"),
        (_chat(user="u", safety_identifier=5), "safety_identifier"),
        (_chat(tools={"a": 1}), "tools"),
        (
            _chat(tools=[{"type": "function", "function": {"parameters": {}}}]),
            "tools[0].function.name",
        ),
        (
            _chat(tools=[{"type": "function", "function": {"name": "f"}}], tool_choice="sometimes"),
            "tool_choice",
        ),
        (_chat(response_format={"type": "yaml"}), "response_format.type"),
        (
            _chat(response_format={"type": "json_schema", "json_schema": {"name": "x"}}),
            "response_format.json_schema.schema",
        ),
        (_chat(reasoning_effort="extreme"), "reasoning_effort"),
        (_calling("[1]"), "messages[0].tool_calls[0].function.arguments"),
        (_calling("{"), "messages[0].tool_calls[0].function.arguments"),
        (_chat(messages=[{"role": "tool", "content": "x"}]), "messages[0].tool_call_id"),
        (
            _chat(messages=[{"role": "assistant", "content": "x", "thinking_blocks": "x"}]),
            "messages[0].thinking_blocks",
        ),
    ],
)
def test_chat_request_of_wrong_shape(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequestError) as raised:
        chat_request_to_messages(body, Target("claude"))
    assert raised.value.param == param
    assert raised.value.message.startswith(param)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "m", "max_tokens": 1}, "messages"),
        (_messages(messages=[{"role": "user", "content": None}]), "messages[0].content"),
        (_messages(messages=[{"role": "bot", "content": "x"}]), "messages[0].role"),
        (_messages(max_tokens=1.5), "max_tokens"),
        (_messages(system=7), "system"),
        (_messages(system=[{"type": "image"}]), "system[0].type"),
        (_messages(metadata="u"), "metadata"),
        (_messages(stop_sequences="END"), "stop_sequences"),
        (_messages(tools=[{"name": "f"}]), "tools[0].input_schema"),
        (
            _messages(tools=[{"name": "f", "input_schema": {}}], tool_choice={"type": "maybe"}),
            "tool_choice.type",
        ),
        (_messages(thinking={"type": "enabled"}), "thinking.budget_tokens"),
        (
            _messages(output_config={"format": {"type": "json_schema"}}),
            "output_config.format.schema",
        ),
        (
            _turn("assistant", {"type": "tool_use", "id": "t", "name": "f", "input": "x"}),
            "messages[0].content[0].input",
        ),
        (
            _turn("user", {"type": "image", "source": {"type": "base64", "data": "x"}}),
            "messages[0].content[0].source.media_type",
        ),
    ],
)
def test_messages_request_of_wrong_shape(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequestError) as raised:
        messages_request_to_chat(body, Target("gpt"))
    assert raised.value.param == param


@pytest.mark.parametrize("param", ["top_k", "mcp_servers"])
def test_messages_parameters_without_equivalent(param: str) -> None:
    with pytest.raises(UntranslatableError) as raised:
        messages_request_to_chat(_messages(**{param: 5}), Target("gpt"))
    assert raised.value.param == param


def test_older_messages_clients_sampling_parameters_pass() -> None:
    """Clients on older Anthropic SDKs still send temperature and top_p: same meaning, and
    Anthropic's 0..1 range lies inside OpenAI's 0..2."""
    body = messages_request_to_chat(_messages(temperature=0.3, top_p=0.8), Target("gpt"))
    assert (body["temperature"], body["top_p"]) == (0.3, 0.8)


def test_unknown_chat_parameter_is_refused_not_dropped() -> None:
    with pytest.raises(UntranslatableError) as raised:
        chat_request_to_messages(_chat(some_future_knob=1), Target("claude"))
    assert raised.value.param == "some_future_knob"


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"choices": None, "usage": "many"},
        {"choices": [None]},
        {"choices": [{"message": {"content": 5, "tool_calls": [None, {"function": 3}]}}]},
        {"choices": [{"message": {"thinking_blocks": [1, {"type": "x"}], "reasoning_content": 3}}]},
        {
            "choices": [{"finish_reason": ["stop"], "message": {"refusal": 2}}],
            "usage": {"prompt_tokens": -3},
        },
    ],
)
def test_odd_chat_response_never_raises(body: dict[str, Any]) -> None:
    message, usage = chat_response_to_messages(body)
    validate_response(Api.MESSAGES, message)
    assert usage.prompt_tokens >= 0


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"content": "text", "stop_reason": 5, "usage": None},
        {"content": [None, 3, {"type": "tool_use", "input": "x"}, {"type": "thinking"}]},
        {"content": [{"type": "server_tool_use", "id": "s", "name": "web_search", "input": {}}]},
        {
            "content": [],
            "usage": {"input_tokens": "9", "output_tokens_details": {"thinking_tokens": 10**12}},
        },
    ],
)
def test_odd_messages_response_never_raises(body: dict[str, Any]) -> None:
    completion, usage = messages_response_to_chat(body)
    validate_response(Api.CHAT, completion)
    assert usage.completion_tokens >= 0
