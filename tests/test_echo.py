"""The offline echo provider: real wire formats through the whole stack and the official SDKs."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import httpx
import httpx2
import openai
import pytest

from tests.echo_helpers import EchoClients, echo_clients, sse_data

MESSAGES = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "first question"},
    {"role": "assistant", "content": "an answer"},
    {"role": "user", "content": "tell me about the weather"},
]


@pytest.fixture
async def echo() -> AsyncIterator[EchoClients]:
    async with echo_clients() as clients:
        yield clients


@pytest.fixture
def client(echo: EchoClients) -> httpx.AsyncClient:
    return echo.http


@pytest.fixture
def openai_client(echo: EchoClients) -> openai.AsyncOpenAI:
    return echo.openai


@pytest.fixture
def anthropic_client(echo: EchoClients) -> anthropic.AsyncAnthropic:
    return echo.anthropic


def sse_events(text: str) -> list[str]:
    return [line[len("event: ") :] for line in text.splitlines() if line.startswith("event: ")]


# -- raw HTTP through the stack --------------------------------------------------------------


@pytest.mark.anyio
async def test_chat_completion_echoes_the_last_user_message(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/chat/completions", json={"model": "echo-1", "messages": MESSAGES}
    )
    assert response.status_code == 200
    assert response.headers["x-llm-proxy-provider"] == "demo"
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == "echo-1"
    assert body["choices"][0]["message"] == {
        "role": "assistant",
        "content": "echo: tell me about the weather",
        "refusal": None,
    }
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] == 6
    assert body["usage"]["total_tokens"] == (
        body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    )


@pytest.mark.anyio
async def test_same_request_same_answer(client: httpx.AsyncClient) -> None:
    request = {"model": "echo-1", "messages": MESSAGES}
    first = (await client.post("/v1/chat/completions", json=request)).json()
    second = (await client.post("/v1/chat/completions", json=request)).json()
    other = (
        await client.post(
            "/v1/chat/completions",
            json={"model": "echo-1", "messages": [{"role": "user", "content": "else"}]},
        )
    ).json()
    for answer in (first, second, other):
        del answer["created"]  # a clock, by design
    assert first == second
    assert other["id"] != first["id"]
    assert other["choices"] != first["choices"]


@pytest.mark.anyio
async def test_max_tokens_truncates_with_finish_reason_length(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/chat/completions", json={"model": "echo-1", "messages": MESSAGES, "max_tokens": 3}
    )
    choice = response.json()["choices"][0]
    assert choice["message"]["content"] == "echo: tell me"
    assert choice["finish_reason"] == "length"
    assert response.json()["usage"]["completion_tokens"] == 3

    response = await client.post(
        "/v1/chat/completions",
        json={"model": "echo-1", "messages": MESSAGES, "max_completion_tokens": 2},
    )
    assert response.json()["choices"][0]["finish_reason"] == "length"


@pytest.mark.anyio
async def test_chat_stream_is_sse_with_usage_only_when_asked(client: httpx.AsyncClient) -> None:
    request: dict[str, Any] = {"model": "echo-1", "messages": MESSAGES, "stream": True}
    response = await client.post("/v1/chat/completions", json=request)
    assert response.headers["content-type"].startswith("text/event-stream")
    data = sse_data(response.text)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == "echo: tell me about the weather"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert all("usage" not in c for c in chunks)

    request["stream_options"] = {"include_usage": True}
    response = await client.post("/v1/chat/completions", json=request)
    chunks = [json.loads(d) for d in sse_data(response.text)[:-1]]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 6


@pytest.mark.anyio
async def test_anthropic_stream_has_the_event_sequence(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/messages",
        json={
            "model": "echo-2",
            "max_tokens": 100,
            "stream": True,
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi there"}]}],
        },
    )
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    assert events[:3] == ["message_start", "content_block_start", "ping"]
    assert events[3:-3] == ["content_block_delta"] * 3
    assert events[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    for event, data in zip(events, sse_data(response.text), strict=True):
        assert json.loads(data)["type"] == event


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("POST", "/v1/audio/speech", 404),
        ("POST", "/v1/images/generations", 404),
        ("GET", "/v1/files", 404),
        ("DELETE", "/v1/files/f1", 404),
    ],
)
async def test_unknown_endpoint_is_404_in_openai_shape(
    client: httpx.AsyncClient, method: str, path: str, status: int
) -> None:
    response = await client.request(method, path, json={"model": "echo-1"})
    assert response.status_code == status
    error = response.json()["error"]
    assert path.removeprefix("/v1") in error["message"]


@pytest.mark.anyio
@pytest.mark.parametrize("body", [b"hello", b"[1, 2]"])
async def test_non_json_body_is_415_before_any_provider(
    client: httpx.AsyncClient, body: bytes
) -> None:
    # Not declared as JSON: refused by the proxy, never left for a provider to interpret.
    response = await client.post(
        "/v1/chat/completions", content=body, headers={"content-type": "text/plain"}
    )
    assert response.status_code == 415
    assert "x-llm-proxy-provider" not in response.headers
    assert "JSON" in response.json()["error"]["message"]


@pytest.mark.anyio
async def test_content_parts_whose_text_is_not_a_string_are_skipped(
    client: httpx.AsyncClient,
) -> None:
    parts = [{"type": "text", "text": 5}, {"type": "text", "text": None}, {"type": "text"}]
    parts.append({"type": "text", "text": "kept"})
    body = {"model": "echo-1", "messages": [{"role": "user", "content": parts}]}
    response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "echo: kept"


@pytest.mark.anyio
async def test_an_upload_nested_too_deeply_for_json_is_a_400(client: httpx.AsyncClient) -> None:
    # Uploads reach the provider unparsed; the echo provider reads every body as JSON.
    body = b"[" * 100_000 + b"]" * 100_000
    response = await client.post(
        "/v1/files", content=body, headers={"content-type": "multipart/form-data; boundary=x"}
    )
    assert response.status_code == 400
    assert response.headers["x-llm-proxy-provider"] == "demo"


# -- the official openai SDK -----------------------------------------------------------------


@pytest.mark.anyio
async def test_openai_sdk_chat_completion(openai_client: openai.AsyncOpenAI) -> None:
    completion = await openai_client.chat.completions.create(
        model="echo-1", messages=[{"role": "user", "content": "hello proxy"}]
    )
    assert completion.choices[0].message.content == "echo: hello proxy"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 3


@pytest.mark.anyio
async def test_openai_sdk_chat_stream_with_usage(openai_client: openai.AsyncOpenAI) -> None:
    stream = await openai_client.chat.completions.create(
        model="echo-1",
        messages=[{"role": "user", "content": "stream me please"}],
        stream=True,
        stream_options={"include_usage": True},
        max_tokens=3,
    )
    text, finish, usage = "", None, None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage is not None:
            usage = chunk.usage
    assert text == "echo: stream me"
    assert finish == "length"
    assert usage is not None
    assert usage.completion_tokens == 3
    assert usage.prompt_tokens == 3


@pytest.mark.anyio
async def test_openai_sdk_embeddings(openai_client: openai.AsyncOpenAI) -> None:
    result = await openai_client.embeddings.create(model="echo-1", input=["a b", "c"])
    assert [d.index for d in result.data] == [0, 1]
    assert all(len(d.embedding) == 16 for d in result.data)
    assert result.data[0].embedding != result.data[1].embedding
    again = await openai_client.embeddings.create(model="echo-1", input=["a b"])
    assert again.data[0].embedding == result.data[0].embedding
    assert result.usage.prompt_tokens == 3


@pytest.mark.anyio
async def test_openai_sdk_completions(openai_client: openai.AsyncOpenAI) -> None:
    completion = await openai_client.completions.create(
        model="echo-2", prompt="say this back", max_tokens=2
    )
    assert completion.choices[0].text == "echo: say"
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.prompt_tokens == 3


@pytest.mark.anyio
async def test_openai_sdk_lists_the_configured_models(openai_client: openai.AsyncOpenAI) -> None:
    models = [m.id async for m in openai_client.models.list()]
    assert models == ["echo-1", "echo-2"]


@pytest.mark.anyio
async def test_openai_sdk_raises_not_found_for_an_unknown_model(
    openai_client: openai.AsyncOpenAI,
) -> None:
    with pytest.raises(openai.NotFoundError, match="gpt-nope") as info:
        await openai_client.chat.completions.create(
            model="gpt-nope", messages=[{"role": "user", "content": "hi"}]
        )
    assert info.value.code == "model_not_found"
    assert info.value.request_id  # our x-request-id, read by the SDK


# -- the official anthropic SDK --------------------------------------------------------------


@pytest.mark.anyio
async def test_anthropic_sdk_message(anthropic_client: anthropic.AsyncAnthropic) -> None:
    message = await anthropic_client.messages.create(
        model="echo-2",
        max_tokens=100,
        system="be brief",
        messages=[{"role": "user", "content": "hello claude"}],
    )
    assert message.content[0].type == "text"
    assert message.content[0].text == "echo: hello claude"
    assert message.stop_reason == "end_turn"
    assert message.usage.output_tokens == 3
    assert message.usage.input_tokens == 4


@pytest.mark.anyio
async def test_anthropic_sdk_stream_and_final_usage(
    anthropic_client: anthropic.AsyncAnthropic,
) -> None:
    async with anthropic_client.messages.stream(
        model="echo-2", max_tokens=3, messages=[{"role": "user", "content": "a b c d e"}]
    ) as stream:
        text = "".join([t async for t in stream.text_stream])
        final = await stream.get_final_message()
    assert text == "echo: a b"
    assert final.content[0].type == "text"
    assert final.content[0].text == "echo: a b"
    assert final.stop_reason == "max_tokens"
    assert final.usage.output_tokens == 3
    assert final.usage.input_tokens == 5


@pytest.mark.anyio
async def test_anthropic_sdk_count_tokens(anthropic_client: anthropic.AsyncAnthropic) -> None:
    count = await anthropic_client.messages.count_tokens(
        model="echo-2", messages=[{"role": "user", "content": "one two three"}]
    )
    assert count.input_tokens == 3


@pytest.mark.anyio
async def test_anthropic_sdk_lists_the_configured_models(
    anthropic_client: anthropic.AsyncAnthropic,
) -> None:
    models = [m.id async for m in anthropic_client.models.list()]
    assert models == ["echo-1", "echo-2"]


@pytest.mark.anyio
async def test_anthropic_sdk_raises_not_found_for_an_unknown_model(
    anthropic_client: anthropic.AsyncAnthropic,
) -> None:
    with pytest.raises(anthropic.NotFoundError, match="claude-nope"):
        await anthropic_client.messages.create(
            model="claude-nope", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
        )


# -- errors in the caller's format -----------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "echo-1"}, "messages"),
        ({"model": "echo-1", "messages": ["hi"]}, "messages"),
        ({"model": "echo-1", "messages": [], "response_format": "json"}, "response_format"),
    ],
)
async def test_a_chat_body_of_the_wrong_shape_is_an_openai_400(
    openai_client: openai.AsyncOpenAI, body: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await openai_client.post("/chat/completions", body=body, cast_to=httpx.Response)
    assert info.value.param == param
    assert info.value.type == "invalid_request_error"


@pytest.mark.anyio
@pytest.mark.parametrize(
    "body",
    [
        {"model": "echo-2", "max_tokens": 5},
        {"model": "echo-2", "max_tokens": 5, "messages": {}},
        {"model": "echo-2", "max_tokens": 5, "messages": [], "tools": "all"},
        {"model": "echo-2", "max_tokens": 5, "messages": [], "output_config": []},
    ],
)
async def test_a_messages_body_of_the_wrong_shape_is_an_anthropic_400(
    anthropic_client: anthropic.AsyncAnthropic, body: dict[str, Any]
) -> None:
    with pytest.raises(anthropic.BadRequestError) as info:
        await anthropic_client.post("/v1/messages", body=body, cast_to=httpx2.Response)
    assert isinstance(info.value.body, dict) and info.value.body["type"] == "error"
    assert info.value.body["error"]["type"] == "invalid_request_error"


@pytest.mark.anyio
async def test_an_unknown_messages_endpoint_is_an_anthropic_404(
    anthropic_client: anthropic.AsyncAnthropic,
) -> None:
    with pytest.raises(anthropic.NotFoundError) as info:
        await anthropic_client.post(
            "/v1/messages/nothing", body={"model": "echo-2"}, cast_to=httpx2.Response
        )
    assert isinstance(info.value.body, dict) and info.value.body["type"] == "error"
