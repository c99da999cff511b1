"""Wire formats: which paths speak which, and how errors look in each, JSON and SSE."""

from __future__ import annotations

import inspect
import json
import logging
from typing import Any

import anthropic
import httpx
import httpx2
import openai
import pytest
from starlette.types import Message, Receive, Scope, Send

from llm_proxy_mw import errors
from llm_proxy_mw.errors import ProxyError
from llm_proxy_mw.wire import (
    WireFormat,
    error_body,
    error_event,
    log_error,
    send_error,
    send_json,
    wire_format_of,
)

ERROR_CLASSES: list[type[ProxyError]] = [
    obj
    for name in errors.__all__
    if inspect.isclass(obj := getattr(errors, name)) and issubclass(obj, ProxyError)
]


@pytest.mark.parametrize(
    ("path", "wire_format"),
    [
        ("/v1/messages", WireFormat.ANTHROPIC),
        ("/v1/messages/count_tokens", WireFormat.ANTHROPIC),
        ("/v1/messages/batches/b1", WireFormat.ANTHROPIC),
        ("/v1/chat/completions", WireFormat.OPENAI),
        ("/v1/completions", WireFormat.OPENAI),
        ("/v1/embeddings", WireFormat.OPENAI),
        ("/v1/models", WireFormat.OPENAI),
        ("/v1/messagesx", WireFormat.OPENAI),
        ("/v1/files", WireFormat.OPENAI),
        ("/healthz", WireFormat.OPENAI),
    ],
)
def test_wire_format_follows_the_path(path: str, wire_format: WireFormat) -> None:
    assert wire_format_of(path) is wire_format


# -- JSON error bodies -----------------------------------------------------------------------


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_openai_error_body(cls: type[ProxyError]) -> None:
    body = json.loads(error_body(cls('The "model" is <bad>.'), WireFormat.OPENAI))
    assert body == {
        "error": {
            "message": 'The "model" is <bad>.',
            "type": cls.openai_type,
            "param": None,
            "code": cls.code,
        }
    }


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_anthropic_error_body(cls: type[ProxyError]) -> None:
    body = json.loads(error_body(cls("Nope \u2013 caf\u00e9."), WireFormat.ANTHROPIC))
    assert body == {
        "type": "error",
        "error": {"type": cls.anthropic_type, "message": "Nope \u2013 caf\u00e9."},
    }


@pytest.mark.parametrize(
    ("error", "openai_type", "anthropic_type"),
    [
        (errors.InvalidRequestError("x"), "invalid_request_error", "invalid_request_error"),
        (errors.AuthenticationError("x"), "authentication_error", "authentication_error"),
        (errors.PermissionDeniedError("x"), "permission_error", "permission_error"),
        (errors.ModelNotFoundError("x"), "not_found_error", "not_found_error"),
        (errors.RequestTooLargeError("x"), "invalid_request_error", "request_too_large"),
        (errors.UpstreamReadTimeout("x"), "timeout", "timeout_error"),
        (errors.ProviderUnavailableError("x"), "api_error", "overloaded_error"),
        (errors.UpstreamConnectError("x"), "api_error", "api_error"),
    ],
)
def test_error_types_match_what_each_sdk_expects(
    error: ProxyError, openai_type: str, anthropic_type: str
) -> None:
    assert json.loads(error_body(error, WireFormat.OPENAI))["error"]["type"] == openai_type
    assert json.loads(error_body(error, WireFormat.ANTHROPIC))["error"]["type"] == anthropic_type


def test_error_body_is_one_compact_line() -> None:
    body = error_body(errors.InvalidRequestError("line one\nline two"), WireFormat.OPENAI)
    assert b"\n" not in body
    assert b": " not in body


# -- SSE error events ------------------------------------------------------------------------


def parse_sse(raw: bytes) -> list[dict[str, str]]:
    """Events as an SSE client sees them: blank-line separated, ``field: value`` lines."""
    events = []
    for block in raw.decode().replace("\r\n", "\n").split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            if line and not line.startswith(":"):
                name, _, value = line.partition(":")
                fields[name] = fields.get(name, "") + value.removeprefix(" ")
        if fields:
            events.append(fields)
    return events


def test_openai_error_event_shape() -> None:
    error = errors.UpstreamProtocolError("The provider broke off.")
    raw = error_event(error, WireFormat.OPENAI)
    assert raw.endswith(b"\n\n")
    [event] = parse_sse(raw)
    assert "event" not in event
    assert json.loads(event["data"]) == json.loads(error_body(error, WireFormat.OPENAI))
    assert json.loads(event["data"])["error"]["code"] == "protocol_error"


def test_anthropic_error_event_shape() -> None:
    error = errors.UpstreamReadTimeout("The provider went quiet.")
    raw = error_event(error, WireFormat.ANTHROPIC)
    assert raw.endswith(b"\n\n")
    [event] = parse_sse(raw)
    assert event["event"] == "error"
    data = json.loads(event["data"])
    assert data == {
        "type": "error",
        "error": {"type": "timeout_error", "message": "The provider went quiet."},
    }


@pytest.mark.parametrize("wire_format", list(WireFormat))
def test_error_event_stands_alone_after_a_partial_event(wire_format: WireFormat) -> None:
    partial = b'event: content_block_delta\ndata: {"type": "content_bl'
    error = errors.UpstreamProtocolError("cut")
    events = parse_sse(partial + error_event(error, wire_format))
    last = events[-1]
    assert json.loads(last["data"]) == json.loads(error_body(error, wire_format))
    assert last.get("event") == ("error" if wire_format is WireFormat.ANTHROPIC else None)


# -- sending ---------------------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def __call__(self, message: Message) -> None:
        self.messages.append(message)


@pytest.mark.anyio
async def test_send_json_sends_a_complete_response() -> None:
    send = Recorder()
    await send_json(send, 201, b'{"a":1}', [(b"x-extra", b"1")])
    start, body = send.messages
    assert start["type"] == "http.response.start"
    assert start["status"] == 201
    assert (b"content-type", b"application/json") in start["headers"]
    assert (b"content-length", b"7") in start["headers"]
    assert (b"x-extra", b"1") in start["headers"]
    assert body == {"type": "http.response.body", "body": b'{"a":1}', "more_body": False}


@pytest.mark.anyio
async def test_send_error_uses_status_headers_and_wire_format(
    caplog: pytest.LogCaptureFixture,
) -> None:
    send = Recorder()
    error = errors.ProviderUnavailableError("Try later.", headers={"retry-after": "7"})
    caplog.set_level(logging.INFO, logger="llm_proxy_mw")
    await send_error(send, error, WireFormat.ANTHROPIC, "req-1")
    start, body = send.messages
    assert start["status"] == 503
    assert (b"retry-after", b"7") in start["headers"]
    length = dict(start["headers"])[b"content-length"]
    assert int(length) == len(body["body"])
    assert json.loads(body["body"])["error"]["type"] == "overloaded_error"
    [record] = caplog.records
    assert "req-1" in record.getMessage()


def test_log_error_levels_and_content(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="llm_proxy_mw")
    log_error(errors.ModelNotFoundError("No model m."), "req-4xx")
    log_error(errors.UpstreamConnectError("Down.", provider="gpt"), "req-5xx")
    client, upstream = caplog.records
    assert client.levelno == logging.INFO
    assert upstream.levelno == logging.WARNING
    assert "req-4xx" in client.getMessage() and "ModelNotFoundError" in client.getMessage()
    assert "provider=-" in client.getMessage()
    assert "provider=gpt" in upstream.getMessage()
    assert "status=502" in upstream.getMessage()


def test_log_error_is_silent_when_the_level_is_off(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="llm_proxy_mw")
    log_error(errors.UpstreamConnectError("Down."), "req")
    assert caplog.records == []


# -- the official SDKs raise on our error events ---------------------------------------------


def sse_app(payload: bytes) -> Any:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        while (await receive()).get("more_body", False):
            pass
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    return app


OPENAI_CHUNK = {
    "id": "c1",
    "object": "chat.completion.chunk",
    "created": 0,
    "model": "m",
    "choices": [{"index": 0, "delta": {"content": "Hel"}, "finish_reason": None}],
}


@pytest.mark.anyio
async def test_openai_sdk_raises_on_the_error_event() -> None:
    error = errors.UpstreamProtocolError("The provider broke off mid-stream.")
    payload = b"data: " + json.dumps(OPENAI_CHUNK).encode() + b"\n\n"
    payload += error_event(error, WireFormat.OPENAI)
    http_client = httpx.AsyncClient(transport=httpx.ASGITransport(app=sse_app(payload)))
    async with openai.AsyncOpenAI(
        base_url="http://proxy/v1", api_key="x", http_client=http_client, max_retries=0
    ) as client:
        stream = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        seen = []
        with pytest.raises(openai.APIError, match="broke off mid-stream"):
            async for chunk in stream:
                seen.append(chunk.choices[0].delta.content)
    assert seen == ["Hel"]


@pytest.mark.anyio
async def test_anthropic_sdk_raises_on_the_error_event() -> None:
    error = errors.UpstreamReadTimeout("The provider went quiet.")
    start = {
        "type": "message_start",
        "message": {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "m",
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 1, "output_tokens": 1},
        },
    }
    payload = b"event: message_start\ndata: " + json.dumps(start).encode() + b"\n\n"
    payload += error_event(error, WireFormat.ANTHROPIC)
    http_client = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=sse_app(payload)))
    async with anthropic.AsyncAnthropic(
        base_url="http://proxy", api_key="x", http_client=http_client, max_retries=0
    ) as client:
        with pytest.raises(anthropic.APIStatusError, match="went quiet"):
            async with client.messages.stream(
                model="m", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
            ) as stream:
                async for _ in stream:
                    pass
