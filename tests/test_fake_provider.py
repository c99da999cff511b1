"""The scripted fake provider itself (``benchmarks/_scripted_server.py``, served by
``tests.fakes.provider.FakeProviderServer``): what the end-to-end tests lean on unasserted."""

from __future__ import annotations

import gzip
import json
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from llm_proxy_mw.apis import Api
from tests.fakes.provider import Action, FakeProvider, FakeProviderServer, ToolCall, Turn, TurnUsage
from tests.goldens import validate_event, validate_response

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hello there"}]}


@pytest.fixture
def client(fake_server: FakeProviderServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fake_server.url, timeout=5.0) as http:
        yield http


def test_routes_answer_like_a_router(provider: FakeProvider, client: httpx.Client) -> None:
    assert client.get("/nowhere").status_code == 404
    assert client.get("/v1/chat/completions").status_code == 405
    assert client.post("/v1/models", json={}).status_code == 405
    assert client.post("/v1/chat/completions", content=b"not json").status_code == 400
    assert client.get("/v1/models").json()["object"] == "list"
    assert "has_more" in client.get("/v1/models", headers={"anthropic-version": "1"}).json()


def test_records_every_request(provider: FakeProvider, client: httpx.Client) -> None:
    client.post("/v1/chat/completions?x=1", json=CHAT, headers=[("x-a", "1"), ("x-a", "2")])
    request = provider.wait_for_requests(1)[0]
    assert (request.method, request.path, request.query) == ("POST", "/v1/chat/completions", "x=1")
    assert request.headers["x-a"] == "1, 2"
    assert [v for k, v in request.raw_headers if k == "x-a"] == ["1", "2"]
    assert request.json == CHAT and request.http_version == "1.1"


def test_headers_script_an_answer(provider: FakeProvider, client: httpx.Client) -> None:
    headers = {"x-fake-status": "429", "anthropic-version": "2023-06-01"}
    error = client.post("/v1/chat/completions", json=CHAT, headers=headers)
    assert error.status_code == 429
    assert error.json()["error"]["type"] == "rate_limit_error"
    reply = client.post("/v1/chat/completions", json=CHAT, headers={"x-fake-reply": "hi"})
    assert reply.json()["choices"][0]["message"]["content"] == "hi"


def test_the_reply_echoes_the_user(provider: FakeProvider, client: httpx.Client) -> None:
    answer = client.post("/v1/messages", json=CHAT).json()
    assert answer["content"][0]["text"] == "fake reply to: hello there"


def test_gzip_is_real(provider: FakeProvider, client: httpx.Client) -> None:
    provider.script(Action(gzip=True), Action(gzip=True))
    body = client.post("/v1/chat/completions", json=CHAT).json()
    assert body["object"] == "chat.completion"
    with client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as stream:
        assert stream.headers["content-encoding"] == "gzip"
        raw = b"".join(stream.iter_raw())
    assert gzip.decompress(raw).endswith(b"data: [DONE]\n\n")


def test_a_cut_stream_ends_mid_body(provider: FakeProvider, client: httpx.Client) -> None:
    provider.script(Action(cut_after=2))
    events: list[str] = []
    with (
        pytest.raises(httpx.RemoteProtocolError),
        client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as stream,
    ):
        events.extend(stream.iter_lines())
    assert len([e for e in events if e.startswith("data:")]) == 2  # and no [DONE]


def test_connection_close_is_honoured(fake_server: FakeProviderServer) -> None:
    request = (
        b"POST /v1/messages/count_tokens HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
    )
    body = json.dumps(CHAT).encode()
    with socket.create_connection(("127.0.0.1", fake_server.port), timeout=5) as sock:
        sock.sendall(request % (len(body), body))
        answer = b""
        while chunk := sock.recv(65536):  # ends because the server closes
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert answer.endswith(b'{"input_tokens": 2}')


def test_closing_the_server_drops_a_held_stream() -> None:
    with FakeProviderServer() as srv, httpx.Client(base_url=srv.url, timeout=5.0) as http:
        hold = srv.app.hold_stream(after=1)
        with http.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as stream:
            lines = stream.iter_lines()
            assert next(lines).startswith("data:")
            assert hold.wait_reached()
            srv.close()
            with pytest.raises(httpx.RemoteProtocolError):
                list(lines)


# ---- scripted turns, in each API's wire format ------------------------------------------------

CALLS = (
    ToolCall("get_weather", '{"city": "Paris", "unit": "celsius"}', id="toolu_w"),
    ToolCall("get_time", '{"tz": "Europe/Paris"}', id="toolu_t"),
)
TURN = Turn(
    text="Let me look.",
    thinking="The user wants the weather and the time.",
    signature="sig-1",
    tool_calls=CALLS,
    usage=TurnUsage(input=10, output=20, cache_read=3, cache_write=4),
)
MESSAGES = {**CHAT, "max_tokens": 100}
RESPONSES = {"model": "m", "input": "hello there"}


def events(
    client: httpx.Client, path: str, body: dict[str, Any], headers: dict[str, str] | None = None
) -> list[Any]:
    """The ``data`` of each event of a stream (``[DONE]`` as the string), checking that an
    ``event:`` line, when there is one, names the data's ``type``."""
    with client.stream("POST", path, json={**body, "stream": True}, headers=headers) as stream:
        assert stream.status_code == 200
        blocks = stream.read().decode().split("\n\n")
    assert blocks.pop() == ""
    found = []
    for block in blocks:
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        data: Any = lines["data"] if lines["data"] == "[DONE]" else json.loads(lines["data"])
        assert "event" not in lines or lines["event"] == data["type"]
        found.append(data)
    return found


def test_a_turn_as_a_message(provider: FakeProvider, client: httpx.Client) -> None:
    provider.script(Action(turn=TURN))
    message = client.post("/v1/messages", json=MESSAGES).json()
    validate_response(Api.MESSAGES, message)
    assert [b["type"] for b in message["content"]] == ["thinking", "text", "tool_use", "tool_use"]
    assert message["content"][0] == {
        "type": "thinking",
        "thinking": TURN.thinking,
        "signature": "sig-1",
    }
    assert message["content"][2]["input"] == {"city": "Paris", "unit": "celsius"}
    assert message["content"][3]["id"] == "toolu_t"
    assert message["stop_reason"] == "tool_use"
    assert message["usage"] == {
        "input_tokens": 10,
        "cache_creation_input_tokens": 4,
        "cache_read_input_tokens": 3,
        "output_tokens": 20,
    }


def test_a_turn_as_message_events(provider: FakeProvider, client: httpx.Client) -> None:
    provider.script(Action(turn=TURN))
    stream = events(client, "/v1/messages", MESSAGES)
    for event in stream:
        validate_event(Api.MESSAGES, event)
    kinds = [e["type"] for e in stream]
    assert kinds[:3] == ["message_start", "content_block_start", "ping"]
    assert kinds[-2:] == ["message_delta", "message_stop"]
    assert stream[0]["message"]["usage"]["input_tokens"] == 10
    assert stream[0]["message"]["usage"]["cache_read_input_tokens"] == 3
    deltas: dict[int, list[dict[str, Any]]] = {}
    for e in stream:
        if e["type"] == "content_block_delta":
            deltas.setdefault(e["index"], []).append(e["delta"])
    thinking = [d["type"] for d in deltas[0]]
    assert thinking[-1] == "signature_delta" and set(thinking[:-1]) == {"thinking_delta"}
    assert "".join(d.get("thinking", "") for d in deltas[0]) == TURN.thinking
    for index, call in ((2, CALLS[0]), (3, CALLS[1])):
        fragments = [d["partial_json"] for d in deltas[index]]
        assert fragments[0] == "" and len(fragments) > 2 and "".join(fragments) == call.arguments
    assert stream[-2]["delta"]["stop_reason"] == "tool_use"
    assert stream[-2]["usage"] == {"output_tokens": 20}


def test_a_turn_as_a_chat_completion(provider: FakeProvider, client: httpx.Client) -> None:
    provider.script(Action(turn=TURN))
    body = client.post("/v1/chat/completions", json=CHAT).json()
    validate_response(Api.CHAT, body)
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Let me look."
    assert choice["message"]["reasoning_content"] == TURN.thinking
    calls = [
        (c["id"], c["function"]["name"], c["function"]["arguments"])
        for c in choice["message"]["tool_calls"]
    ]
    assert calls == [(c.id, c.name, c.arguments) for c in CALLS]
    assert body["usage"]["prompt_tokens"] == 17  # Anthropic's 10 + 3 read + 4 written
    assert body["usage"]["prompt_tokens_details"] == {"cached_tokens": 3, "cache_write_tokens": 4}


@pytest.mark.parametrize("include_usage", [False, True])
def test_a_turn_as_chat_chunks(
    provider: FakeProvider, client: httpx.Client, include_usage: bool
) -> None:
    provider.script(Action(turn=TURN))
    body = {**CHAT, "stream_options": {"include_usage": include_usage}}
    *chunks, done = events(client, "/v1/chat/completions", body)
    assert done == "[DONE]"
    for chunk in chunks:
        validate_event(Api.CHAT, chunk)
    usage = [c["usage"] for c in chunks if c.get("usage")]
    assert usage == ([chunks[-1]["usage"]] if include_usage else [])
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert deltas[0]["role"] == "assistant"
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "tool_calls"
    calls = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    for n, call in enumerate(CALLS):
        first, *rest = [c for c in calls if c["index"] == n]
        assert first["id"] == call.id and first["function"] == {"name": call.name, "arguments": ""}
        assert len(rest) > 1 and "".join(c["function"]["arguments"] for c in rest) == call.arguments
        assert all("id" not in c and "name" not in c["function"] for c in rest)


def test_a_turn_as_a_response(provider: FakeProvider, client: httpx.Client) -> None:
    provider.script(Action(turn=TURN), Action(turn=TURN))
    plain = client.post("/v1/responses", json=RESPONSES).json()
    assert "encrypted_content" not in plain["output"][0]
    asked = {**RESPONSES, "include": ["reasoning.encrypted_content"]}
    body = client.post("/v1/responses", json=asked).json()
    validate_response(Api.RESPONSES, body)
    kinds = [item["type"] for item in body["output"]]
    assert kinds == ["reasoning", "message", "function_call", "function_call"]
    assert body["output"][0]["encrypted_content"] == "sig-1"
    assert body["output"][0]["summary"] == [{"type": "summary_text", "text": TURN.thinking}]
    assert body["output"][2]["call_id"] == "toolu_w"
    assert body["status"] == "completed"
    assert body["usage"]["input_tokens"] == 17
    assert body["usage"]["input_tokens_details"] == {"cached_tokens": 3, "cache_write_tokens": 4}


def test_a_turn_as_response_events(provider: FakeProvider, client: httpx.Client) -> None:
    provider.script(Action(turn=TURN))
    stream = events(client, "/v1/responses", RESPONSES)
    for event in stream:
        validate_event(Api.RESPONSES, event)
    assert [e["sequence_number"] for e in stream] == list(range(len(stream)))
    kinds = [e["type"] for e in stream]
    assert kinds[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert kinds[-1] == "response.completed"
    assert kinds.count("response.output_item.done") == 4
    text = [e["delta"] for e in stream if e["type"] == "response.output_text.delta"]
    assert len(text) > 1 and "".join(text) == "Let me look."
    arguments = [e for e in stream if e["type"].startswith("response.function_call_arguments.")]
    assert (
        "".join(e.get("delta", "") for e in arguments[: len(arguments) // 2]) == CALLS[0].arguments
    )
    assert stream[-1]["response"]["id"] == stream[0]["response"]["id"]


def test_responses_echo_by_default(provider: FakeProvider, client: httpx.Client) -> None:
    items = [{"role": "user", "content": [{"type": "input_text", "text": "hi there"}]}]
    for given in ("hi there", items):
        body = client.post("/v1/responses", json={"model": "m", "input": given}).json()
        validate_response(Api.RESPONSES, body)
        assert body["output"][0]["content"][0]["text"] == "fake reply to: hi there"


@pytest.mark.parametrize(
    ("stop", "stop_reason", "finish_reason", "incomplete"),
    [
        ("max_tokens", "max_tokens", "length", "max_output_tokens"),
        ("length", "max_tokens", "length", "max_output_tokens"),
        ("stop_sequence", "stop_sequence", "stop", None),
        ("end_turn", "end_turn", "stop", None),
        ("refusal", "refusal", "content_filter", "content_filter"),
    ],
)
def test_stop_reasons_in_each_api(
    provider: FakeProvider,
    client: httpx.Client,
    stop: str,
    stop_reason: str,
    finish_reason: str,
    incomplete: str | None,
) -> None:
    turn = Turn(text="cut", stop=stop, stop_sequence="###" if stop == "stop_sequence" else None)
    provider.script(*[Action(turn=turn)] * 3)
    message = client.post("/v1/messages", json=MESSAGES).json()
    assert (message["stop_reason"], message["stop_sequence"]) == (stop_reason, turn.stop_sequence)
    chat = client.post("/v1/chat/completions", json=CHAT).json()
    assert chat["choices"][0]["finish_reason"] == finish_reason
    response = client.post("/v1/responses", json=RESPONSES).json()
    assert response["status"] == ("incomplete" if incomplete else "completed")
    assert response["incomplete_details"] == ({"reason": incomplete} if incomplete else None)


def test_a_refusal_in_each_api(provider: FakeProvider, client: httpx.Client) -> None:
    provider.script(*[Action(turn=Turn(refusal="I can't help with that."))] * 3)
    message = client.post("/v1/messages", json=MESSAGES).json()
    assert message["stop_reason"] == "refusal"
    assert message["content"] == [{"type": "text", "text": "I can't help with that."}]
    chat = client.post("/v1/chat/completions", json=CHAT).json()["choices"][0]
    assert (chat["finish_reason"], chat["message"]["content"]) == ("stop", None)
    assert chat["message"]["refusal"] == "I can't help with that."
    response = client.post("/v1/responses", json=RESPONSES).json()
    validate_response(Api.RESPONSES, response)
    assert response["output"][0]["content"] == [
        {"type": "refusal", "refusal": "I can't help with that."}
    ]


# ---- errors ----------------------------------------------------------------------------------


def test_streams_fail_mid_way_in_each_format(provider: FakeProvider, client: httpx.Client) -> None:
    provider.script(*[Action(error_after=3)] * 2)
    messages = events(client, "/v1/messages", MESSAGES)
    assert len(messages) == 4
    assert messages[-1] == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"},
    }
    responses = events(client, "/v1/responses", RESPONSES)
    validate_event(Api.RESPONSES, responses[-1])
    assert [e["type"] for e in responses][2:] == ["response.output_item.added", "response.failed"]
    assert responses[-1]["response"]["error"]["code"] == "server_error"
    assert responses[-1]["response"]["id"] == responses[0]["response"]["id"]
    chat = events(client, "/v1/chat/completions", CHAT, {"x-fake-error-after": "3"})
    assert len(chat) == 4 and chat[-1]["error"]["type"] == "server_error"  # and no [DONE]


def test_overloaded_is_anthropics_529(provider: FakeProvider, client: httpx.Client) -> None:
    provider.script(Action(status=529))
    answer = client.post("/v1/messages", json=MESSAGES)
    assert answer.status_code == 529
    assert answer.json() == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"},
    }
