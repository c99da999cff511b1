"""Responses to Chat Completions, requests and JSON responses: the golden cases (each object
validated by the official SDKs' own types, then compared exactly), odd client input (a clear
400, never a crash), odd provider answers (a valid Response, never a crash), and what a
translated request must keep: every message's text, every function call and output with its
call_id."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_proxy_mw.apis import Api
from llm_proxy_mw.errors import InvalidRequestError, UntranslatableError
from llm_proxy_mw.translate._codec import Json, Target
from llm_proxy_mw.translate._responses_request import responses_request_to_chat
from llm_proxy_mw.translate._responses_response import chat_response_to_responses
from tests.goldens import cases, validate_request, validate_response

DIRECTION = "responses_to_chat"
PROPERTIES = settings(max_examples=200, derandomize=True, database=None, deadline=None)


def _target(case: dict[str, Any]) -> Target:
    return Target(**case.get("target", {"model": case["client_request"]["model"]}))


def test_enough_json_cases() -> None:
    json_cases = [p for p in cases(DIRECTION, "client_request") if not p.id.startswith("stream_")]
    assert len(json_cases) >= 38


@pytest.mark.parametrize("case", cases(DIRECTION, "client_request", "provider_request"))
def test_golden_request(case: dict[str, Any]) -> None:
    validate_request(Api.RESPONSES, case["client_request"])
    validate_request(Api.CHAT, case["provider_request"])
    assert (
        responses_request_to_chat(case["client_request"], _target(case))
        == (case["provider_request"])
    )


@pytest.mark.parametrize("case", cases(DIRECTION, "provider_response", "client_response"))
def test_golden_response(case: dict[str, Any]) -> None:
    validate_response(Api.CHAT, case["provider_response"])
    validate_response(Api.RESPONSES, case["client_response"])
    response, _ = chat_response_to_responses(case["provider_response"], case["client_request"])
    assert response == case["client_response"]


@pytest.mark.parametrize("case", cases(DIRECTION, "error"))
def test_golden_refusal(case: dict[str, Any]) -> None:
    validate_request(Api.RESPONSES, case["client_request"])
    with pytest.raises(UntranslatableError) as raised:
        responses_request_to_chat(case["client_request"], _target(case))
    assert raised.value.param == case["error"]["param"]
    assert f"`{case['error']['param'].split('[')[0].split('.')[0]}" in raised.value.message
    assert (raised.value.status_code, raised.value.code) == (400, "unsupported_parameter")


def test_usage_is_the_providers() -> None:
    body = {
        "id": "c1",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "message": {"content": "hi"}, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": 100,
            "completion_tokens": 7,
            "prompt_tokens_details": {"cached_tokens": 60},
        },
    }
    response, usage = chat_response_to_responses(body, {"model": "m", "input": "x"})
    assert (usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens) == (100, 7, 60)
    assert response["usage"]["input_tokens"] == 100
    assert response["usage"]["input_tokens_details"]["cached_tokens"] == 60


def test_ids_are_deterministic() -> None:
    body = {"id": "chatcmpl-9", "created": 1, "model": "m", "choices": []}
    first, _ = chat_response_to_responses(body, {"model": "m", "input": "x"})
    again, _ = chat_response_to_responses(body, {"model": "m", "input": "x"})
    assert first == again and first["id"] == "resp_chatcmpl-9"


def test_an_answer_without_id_gets_a_fresh_one() -> None:
    first, _ = chat_response_to_responses({"choices": []}, {"model": "m", "input": "x"})
    again, _ = chat_response_to_responses({"choices": []}, {"model": "m", "input": "x"})
    assert first["id"].startswith("resp_") and first["id"] != again["id"]
    validate_response(Api.RESPONSES, first)


# Odd client bodies: each the parameter at fault, named in a 400 (never a crash).
def _items(*items: Any) -> Json:
    return {"input": list(items)}


def _user(*parts: Any) -> Json:
    return _items({"role": "user", "content": list(parts)})


def _call(**fields: Any) -> Json:
    return _items({"type": "function_call", **fields})


def _output(**fields: Any) -> Json:
    return _items({"type": "function_call_output", "call_id": "c", **fields})


def _reasoning(**fields: Any) -> Json:
    return _items({"type": "reasoning", **fields})


def _allowed(**fields: Any) -> Json:
    return {"input": "x", "tool_choice": {"type": "allowed_tools", **fields}}


ODD_REQUESTS = [
    ({}, "input"),
    ({"input": 5}, "input"),
    (_items(1), "input[0]"),
    ({"input": "x", "instructions": ["a"]}, "instructions"),
    (_items({"role": "user", "content": 3}), "input[0].content"),
    (_user({"type": "input_text"}), "input[0].content[0].text"),
    (_user("hi"), "input[0].content[0]"),
    (_user({"type": "output_audio"}), "input[0].content[0]"),
    (_user({"type": "input_image", "image_url": 5}), "input[0].content[0].image_url"),
    (_items({"role": "tool", "content": "x"}), "input[0].role"),
    (_items({"role": "assistant", "content": [{"type": "input_image"}]}), "input[0].content[0]"),
    (_items({"role": "assistant", "content": 7}), "input[0].content"),
    (_call(name="f", arguments="{}"), "input[0].call_id"),
    (_call(call_id=1, name="f"), "input[0].call_id"),
    (_call(call_id="c", name="f"), "input[0].arguments"),
    (_output(), "input[0].output"),
    (_output(output=[3]), "input[0].output[0]"),
    (_reasoning(summary="x"), "input[0].summary"),
    (_reasoning(summary=[], encrypted_content=5), "input[0].encrypted_content"),
    ({"input": "x", "tools": {"type": "function"}}, "tools"),
    ({"input": "x", "tools": ["f"]}, "tools[0]"),
    ({"input": "x", "tools": [{"type": "function"}]}, "tools[0].name"),
    ({"input": "x", "tool_choice": "sometimes"}, "tool_choice"),
    ({"input": "x", "tool_choice": {"type": "function"}}, "tool_choice.name"),
    (_allowed(mode="any", tools=[]), "tool_choice.mode"),
    (_allowed(mode="auto"), "tool_choice.tools"),
    ({"input": "x", "text": "json"}, "text"),
    ({"input": "x", "text": {"format": "json"}}, "text.format"),
    ({"input": "x", "text": {"format": {"type": "xml"}}}, "text.format.type"),
    ({"input": "x", "text": {"format": {"type": "json_schema", "schema": {}}}}, "text.format.name"),
    ({"input": "x", "reasoning": "high"}, "reasoning"),
    ({"input": "x", "stream": "yes"}, "stream"),
    ({"input": "x", "include": "all"}, "include"),
]


@pytest.mark.parametrize(("body", "param"), ODD_REQUESTS)
def test_odd_request_is_a_clear_400(body: Json, param: str) -> None:
    with pytest.raises(InvalidRequestError) as raised:
        responses_request_to_chat({"model": "m", **body}, Target("m"))
    assert raised.value.param == param
    assert raised.value.status_code == 400
    assert param.split("[")[0].split(".")[0] in raised.value.message


def test_unknown_parameter_is_refused_not_dropped() -> None:
    with pytest.raises(UntranslatableError) as raised:
        responses_request_to_chat({"model": "m", "input": "x", "novel_feature": 1}, Target("m"))
    assert raised.value.param == "novel_feature"


# Odd provider answers give a Response the SDK accepts.
JSON_LEAF = st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=5)
JSON = st.recursive(
    JSON_LEAF,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=12,
)
KEYS = st.sampled_from(
    ["content", "refusal", "tool_calls", "reasoning_content", "thinking_blocks", "annotations"]
)
#: Nested objects with the keys and type names a message's parts have, and odd values.
FIELDS = st.sampled_from(
    ["type", "thinking", "signature", "data", "id", "function", "name", "arguments"]
    + ["url_citation", "url", "title", "start_index", "end_index"]
)
PLAUSIBLE = st.recursive(
    JSON_LEAF | st.sampled_from(["thinking", "redacted_thinking", "url_citation"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(FIELDS, inner, max_size=5),
    max_leaves=20,
)
MESSAGE = st.dictionaries(KEYS, PLAUSIBLE, max_size=6)
CHOICE = st.fixed_dictionaries(
    {}, optional={"message": MESSAGE | JSON, "finish_reason": JSON | st.sampled_from(["length"])}
)
COMPLETION = st.fixed_dictionaries(
    {},
    optional={
        "id": JSON,
        "created": JSON,
        "model": JSON,
        "choices": st.lists(CHOICE | JSON, max_size=2) | JSON,
        "usage": st.dictionaries(st.sampled_from(["prompt_tokens", "completion_tokens"]), JSON)
        | JSON,
    },
)


@PROPERTIES
@given(COMPLETION)
def test_any_provider_answer_gives_a_valid_response(body: Json) -> None:
    response, _ = chat_response_to_responses(body, {"model": "m", "input": "x"})
    validate_response(Api.RESPONSES, response)


#: Request bodies with the keys and type names of Responses requests, and odd values.
REQUEST_FIELDS = st.sampled_from(
    ["input", "instructions", "tools", "tool_choice", "text", "reasoning", "include", "stream"]
    + ["type", "role", "content", "text", "call_id", "name", "arguments", "output", "summary"]
    + ["encrypted_content", "image_url", "file_url", "format", "schema", "mode", "effort"]
)
REQUEST_VALUES = st.recursive(
    JSON_LEAF
    | st.sampled_from(["message", "function_call", "function_call_output", "reasoning"])
    | st.sampled_from(["user", "assistant", "system", "input_text", "input_image", "function"])
    | st.sampled_from(["output_text", "refusal", "json_schema", "allowed_tools", "auto"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(REQUEST_FIELDS, inner, max_size=5),
    max_leaves=25,
)


@PROPERTIES
@given(st.dictionaries(REQUEST_FIELDS, REQUEST_VALUES, max_size=6))
def test_any_client_body_translates_or_is_a_400(body: Json) -> None:
    try:
        responses_request_to_chat(body, Target("m"))
    except InvalidRequestError as error:
        assert error.param and error.status_code == 400


# Responses -> Chat keeps every message's text, every call and output with its call_id.
TEXT = st.text(max_size=8)
PARTS = st.lists(TEXT, min_size=1, max_size=3)
INPUT_MESSAGE = st.builds(
    lambda role, texts, as_parts: {
        "role": role,
        "content": (
            [
                {"type": "output_text" if role == "assistant" else "input_text", "text": t}
                for t in texts
            ]
            if as_parts
            else "".join(texts)
        ),
    },
    st.sampled_from(["user", "system", "developer", "assistant"]),
    PARTS,
    st.booleans(),
)
CALL_ID = st.text("abc_0123", min_size=1, max_size=6)
FUNCTION_CALL = st.builds(
    lambda call_id, name, arguments: {
        "type": "function_call", "call_id": call_id, "name": name, "arguments": arguments
    },
    CALL_ID, st.text("fgh", min_size=1, max_size=3), TEXT,
)  # fmt: skip
OUTPUT = st.builds(
    lambda call_id, output: {"type": "function_call_output", "call_id": call_id, "output": output},
    CALL_ID,
    TEXT,
)
ITEMS = st.lists(INPUT_MESSAGE | FUNCTION_CALL | OUTPUT, min_size=1, max_size=10)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(part["text"] for part in content)


@PROPERTIES
@given(ITEMS)
def test_translation_keeps_texts_calls_and_outputs(items: list[Json]) -> None:
    chat = responses_request_to_chat({"model": "m", "input": items}, Target("m"))
    messages = chat["messages"]
    validate_request(Api.CHAT, chat)
    assert [_text(m["content"]) for m in messages if "content" in m and m["role"] != "tool"] == [
        _text(item["content"]) for item in items if "role" in item
    ]
    assert [
        (c["id"], c["function"]["name"], c["function"]["arguments"])
        for m in messages
        for c in m.get("tool_calls", [])
    ] == [
        (i["call_id"], i["name"], i["arguments"]) for i in items if i.get("type") == "function_call"
    ]
    assert [(m["tool_call_id"], m["content"]) for m in messages if m["role"] == "tool"] == [
        (i["call_id"], i["output"]) for i in items if i.get("type") == "function_call_output"
    ]


@pytest.mark.parametrize(
    "block",
    [
        {"type": "thinking", "thinking": "", "signature": "c2lnbmVk"},
        {"type": "thinking", "thinking": "weighing it", "signature": "c2lnbmVk"},
        {"type": "redacted_thinking", "data": "b3BhcXVl"},
    ],
    ids=["signed-without-text", "signed", "redacted"],
)
def test_thinking_blocks_come_back_as_they_went_out(block: Json) -> None:
    """A reasoning item the client sends back is the very block the provider gave: a signed
    block whose text is empty stays a signed block, never a redacted one."""
    completion = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": "done", "thinking_blocks": [block]},
            }
        ],
    }
    answer, _ = chat_response_to_responses(completion, {"model": "m", "input": "hi"})
    history = [
        {"role": "user", "content": "hi"},
        *answer["output"],
        {"role": "user", "content": "and?"},
    ]
    chat = responses_request_to_chat({"model": "m", "input": history}, Target("m"))
    assistant = next(m for m in chat["messages"] if m["role"] == "assistant")
    assert assistant["thinking_blocks"] == [block]
