"""The access record: one per proxied request on ``llm_proxy_mw.access``, every field right,
rendered as JSON by a standard formatter, nothing secret in it.

The stack is ``build_proxy`` over the echo provider and ``httpx.MockTransport`` upstreams (a
translated Anthropic provider, a failing one and its fallback), with auth and limits on.
"""

from __future__ import annotations

import importlib
import io
import json
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from types import ModuleType
from typing import Any

import httpx
import pytest
from pythonjsonlogger.json import JsonFormatter
from starlette.types import Receive, Scope, Send

from llm_proxy_mw import HttpxTransport, LLMProxy, build_proxy
from llm_proxy_mw import metrics as metrics_module
from llm_proxy_mw.access_log import ACCESS_FIELDS
from llm_proxy_mw.context import get_context
from llm_proxy_mw.wire import LOG_ESCAPES
from tests.asgi_helpers import (
    AsgiDriver,
    ScriptedResponse,
    ScriptedTransport,
    eventually,
    http_scope,
)

pytestmark = pytest.mark.anyio

USER_KEY = "user-key-0123456789abcdef"
LIMITED_KEY = "limited-key-0123456789abcdef"
UPSTREAM_KEY = "sk-upstream-0123456789abcdef"
AS_USER = {"authorization": f"Bearer {USER_KEY}"}
PROMPT = "hello world"
MESSAGES = [{"role": "user", "content": PROMPT}]
TRACE_ID, SPAN_ID = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
ANTHROPIC_ANSWER = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": "claude-x",
    "content": [{"type": "text", "text": "secret answer text"}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 10,
        "output_tokens": 3,
        "cache_read_input_tokens": 4,
        "cache_creation_input_tokens": 2,
    },
}


def config() -> dict[str, Any]:
    def remote(kind: str, name: str, models: list[str], **extra: Any) -> dict[str, Any]:
        url = f"http://{name}.invalid/v1"
        return {"kind": kind, "base_url": url, "api_key": UPSTREAM_KEY, "models": models, **extra}

    return {
        "providers": {
            "echo": {"kind": "echo", "models": ["gpt-echo"]},
            "claude": remote("anthropic", "claude", ["claude-x"]),
            "primary": remote("openai", "primary", ["gpt-fb"], fallbacks=["backup"]),
            "backup": remote("openai", "backup", ["gpt-backup"]),
        },
        "auth": {
            "api_keys": [
                {"name": "app-user", "key": USER_KEY},
                {"name": "limited", "key": LIMITED_KEY},
            ]
        },
        "limits": {"principals": {"api_key:limited": {"rpm": 1}}},
        "pricing": {"gpt-echo": {"input": 1.0, "output": 2.0}},
        "store": {"url": "sqlite:///:memory:"},
    }


def claude(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json=ANTHROPIC_ANSWER)


def primary(request: httpx.Request) -> httpx.Response:
    return httpx.Response(500, json={"error": {"message": "down"}})


def backup(request: httpx.Request) -> httpx.Response:
    answer = {"id": "b", "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 1}}
    return httpx.Response(200, json=answer, headers={"x-request-id": "upstream-7"})


def mocked(**handlers: Any) -> dict[str, Any]:
    return {name: HttpxTransport(httpx.MockTransport(h)) for name, h in handlers.items()}


@asynccontextmanager
async def client(app: Any = None) -> AsyncIterator[httpx.AsyncClient]:
    proxy = build_proxy(config(), transports=mocked(claude=claude, primary=primary, backup=backup))
    async with (
        proxy.lifespan(),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app(proxy) if app else proxy),
            base_url="http://proxy",
            headers=AS_USER,
        ) as http,
    ):
        yield http


@pytest.fixture
def records(caplog: pytest.LogCaptureFixture) -> Iterator[list[logging.LogRecord]]:
    """The access records of the test, as they are emitted."""
    caplog.set_level(logging.INFO, logger="llm_proxy_mw.access")
    kept: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            kept.append(record)

    handler = Keep()
    logger = logging.getLogger("llm_proxy_mw.access")
    logger.addHandler(handler)
    try:
        yield kept
    finally:
        logger.removeHandler(handler)


def fields(record: logging.LogRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in ACCESS_FIELDS}


def as_json(record: logging.LogRecord) -> dict[str, Any]:
    """The record through python-json-logger, parsed back."""
    parsed: dict[str, Any] = json.loads(JsonFormatter().format(record))
    return parsed


def chat(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": MESSAGES, **extra}


async def one_chat(
    records: list[logging.LogRecord], model: str, status: int, headers: dict[str, str] = AS_USER
) -> tuple[httpx.Response, logging.LogRecord]:
    """A Chat request for ``model`` that gets ``status``, and its one access record."""
    async with client() as http:
        response = await http.post("/v1/chat/completions", json=chat(model), headers=headers)
    assert response.status_code == status
    [record] = records
    return response, record


NOT_TRACED = {"trace_id": None, "span_id": None}


async def test_a_chat_json_request_is_one_record_with_every_field(
    records: list[logging.LogRecord],
) -> None:
    response, record = await one_chat(records, "gpt-echo", 200)
    got = fields(record)
    assert got.pop("latency_ms") >= got.pop("ttfb_ms") > 0
    assert got == {
        "request_id": response.headers["x-request-id"],
        "upstream_request_id": None,
        "principal_id": "api_key:app-user",
        "method": "POST",
        "path": "/v1/chat/completions",
        "wire_format": "openai",
        "translated_to": None,
        "request_model": "gpt-echo",
        "response_model": "gpt-echo",
        "provider": "echo",
        "attempts": 1,
        "attempt_outcomes": ["echo:success"],
        "status": 200,
        "outcome": "success",
        "input_tokens": 2,
        "output_tokens": 3,
        "cache_read_tokens": 0,
        "cache_write_tokens": 0,
        "reasoning_tokens": 0,
        "cost_usd": 8e-06,  # 2 x $1 + 3 x $2 per million
        **NOT_TRACED,
    }
    assert record.levelno == logging.INFO
    assert record.getMessage() == (
        f"POST /v1/chat/completions 200 gpt-echo via echo {got_ms(record)} ms 5 tokens"
        f" $0.000008 req={response.headers['x-request-id']}"
    )
    rendered = as_json(record)
    assert {k: rendered[k] for k in ACCESS_FIELDS} == fields(record)
    assert rendered["message"] == record.getMessage()


def got_ms(record: logging.LogRecord) -> str:
    return f"{record.latency_ms:,.1f}"


async def test_a_stream_and_a_messages_request_are_one_record_each(
    records: list[logging.LogRecord],
) -> None:
    async with client() as http:
        stream = await http.post(
            "/v1/chat/completions",
            json=chat("gpt-echo", stream=True, stream_options={"include_usage": True}),
        )
        message = await http.post(
            "/v1/messages", json={"model": "gpt-echo", "max_tokens": 16, "messages": MESSAGES}
        )
    assert stream.status_code == message.status_code == 200
    assert [r.request_id for r in records] == [
        stream.headers["x-request-id"],
        message.headers["x-request-id"],
    ]
    for record, wire_format in zip(records, ["openai", "anthropic"], strict=True):
        got = fields(record)
        assert got["wire_format"] == wire_format
        assert (got["status"], got["outcome"], got["provider"]) == (200, "success", "echo")
        assert (got["input_tokens"], got["output_tokens"]) == (2, 3)
        assert got["ttfb_ms"] is not None and got["cost_usd"] == 8e-06
        assert json.loads(json.dumps(as_json(record)))["status"] == 200


async def test_a_translated_request_names_the_api_it_went_out_in(
    records: list[logging.LogRecord],
) -> None:
    _, record = await one_chat(records, "claude-x", 200)
    got = fields(record)
    assert (got["wire_format"], got["translated_to"]) == ("openai", "messages")
    assert (got["provider"], got["request_model"], got["response_model"]) == (
        "claude",
        "claude-x",
        "claude-x",
    )
    # Anthropic's cache reads and writes count in the input, as OpenAI counts them.
    assert (got["input_tokens"], got["output_tokens"]) == (16, 3)
    assert (got["cache_read_tokens"], got["cache_write_tokens"]) == (4, 2)
    assert got["cost_usd"] is None  # no price known for claude-x: null, never 0
    assert as_json(record)["cost_usd"] is None


async def test_a_fallen_back_request_shows_each_attempt_and_the_providers_id(
    records: list[logging.LogRecord],
) -> None:
    _, record = await one_chat(records, "gpt-fb", 200)
    got = fields(record)
    assert got["attempts"] == 2
    assert got["attempt_outcomes"] == ["primary:server_error", "backup:success"]
    assert (got["provider"], got["upstream_request_id"]) == ("backup", "upstream-7")
    assert (got["status"], got["outcome"], got["input_tokens"]) == (200, "success", 5)
    assert "via backup after 2 attempts" in record.getMessage()


async def test_a_request_refused_by_auth_is_one_record(
    records: list[logging.LogRecord],
) -> None:
    _, record = await one_chat(records, "gpt-echo", 401, {"authorization": "Bearer no"})
    got = fields(record)
    assert (got["status"], got["outcome"], got["principal_id"]) == (
        401,
        "authentication_error",
        "anonymous",
    )
    assert (got["attempts"], got["attempt_outcomes"], got["provider"]) == (0, [], None)
    assert (got["response_model"], got["ttfb_ms"], got["input_tokens"]) == (None, None, 0)
    assert " 401 authentication_error " in record.getMessage()


async def test_a_request_refused_by_limits_is_one_record(
    records: list[logging.LogRecord],
) -> None:
    limited = {"authorization": f"Bearer {LIMITED_KEY}"}
    async with client() as http:
        first = await http.post("/v1/chat/completions", json=chat("gpt-echo"), headers=limited)
        second = await http.post("/v1/chat/completions", json=chat("gpt-echo"), headers=limited)
    assert (first.status_code, second.status_code) == (200, 429)
    assert [(r.status, r.outcome, r.principal_id) for r in records] == [
        (200, "success", "api_key:limited"),
        (429, "rate_limit_exceeded", "api_key:limited"),
    ]
    assert records[1].attempts == 0


async def test_a_client_that_leaves_mid_stream_is_one_record_of_status_499(
    records: list[logging.LogRecord],
) -> None:
    transport = ScriptedTransport()
    proxy = build_proxy(
        {"providers": {"p": {"kind": "openai", "models": ["gpt-s"]}}}, transports={"p": transport}
    )
    response = ScriptedResponse(200, [("content-type", "text/event-stream")])
    transport.respond(response)
    response.feed(b'data: {"choices":[]}\n\n')
    body = json.dumps(chat("gpt-s", stream=True)).encode()
    async with proxy.lifespan(), AsgiDriver(proxy, http_scope(body=body)) as driver:
        driver.request(body)
        driver.start()
        await eventually(lambda: len(driver.body_messages) == 1 and response.waiting)
        driver.disconnect()
        await driver.finish()
    [record] = records
    got = fields(record)
    assert (got["status"], got["outcome"]) == (499, "client_closed")
    assert got["attempt_outcomes"] == ["p:success"] and got["ttfb_ms"] is not None
    assert got["principal_id"] == "anonymous"


def traced(proxy: LLMProxy) -> Any:
    """The proxy under a layer that sets the ids, as the telemetry layer does while it records."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            ctx = get_context(scope)
            ctx.trace_id, ctx.span_id = TRACE_ID, SPAN_ID
        await proxy(scope, receive, send)

    return app


async def test_the_trace_and_span_ids_are_in_the_record_when_the_request_is_traced(
    records: list[logging.LogRecord],
) -> None:
    async with client(traced) as http:
        response = await http.post("/v1/chat/completions", json=chat("gpt-echo"))
    assert response.status_code == 200
    [record] = records
    assert (record.trace_id, record.span_id) == (TRACE_ID, SPAN_ID)
    assert as_json(record)["trace_id"] == TRACE_ID


HOSTILE = ["gpt\r\n2026-01-01 INFO forged", "gpt\x1b]0;title\x07", "gpt\u2028forged"]


@pytest.mark.parametrize("model", HOSTILE)
async def test_a_hostile_model_name_is_escaped_in_the_message_and_kept_in_the_field(
    records: list[logging.LogRecord], model: str
) -> None:
    _, record = await one_chat(records, model, 404)
    message = record.getMessage()
    assert message.splitlines() == [message]
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in message)
    assert f" model_not_found {model.translate(LOG_ESCAPES)} " in message
    assert record.request_model == model  # the field is data: a JSON formatter escapes it
    line = JsonFormatter().format(record)
    assert "\n" not in line and json.loads(line)["request_model"] == model


async def test_a_hostile_path_is_escaped_in_the_message(
    records: list[logging.LogRecord],
) -> None:
    path = "/v1/files\r\n2026-01-01 INFO forged\x1b[2J"
    proxy = build_proxy(config())
    async with proxy.lifespan(), AsgiDriver(proxy, http_scope(path, method="GET")) as driver:
        await driver.run()
    assert driver.status == 401
    [record] = records
    assert f"GET {path.translate(LOG_ESCAPES)} " in record.getMessage()
    assert record.path == path


async def test_no_key_token_or_content_in_any_record(records: list[logging.LogRecord]) -> None:
    async with client() as http:
        for model in ("gpt-echo", "claude-x", "gpt-fb"):
            await http.post("/v1/chat/completions", json=chat(model))
        await http.post(
            "/v1/chat/completions", json=chat("gpt-echo"), headers={"authorization": "Bearer no"}
        )
        await http.post(
            "/v1/chat/completions?key=query-secret-1",
            json=chat("gpt-echo"),
            headers={"cookie": "session=cookie-secret-1"},
        )
    assert len(records) == 5
    for record in records:
        text = JsonFormatter().format(record) + repr(vars(record))
        for secret in (USER_KEY, UPSTREAM_KEY, "query-secret-1", "cookie-secret-1", "Bearer"):
            assert secret not in text
        for content in (PROMPT, "secret answer text"):
            assert content not in text


async def test_nothing_is_built_when_the_access_logger_is_not_enabled_for_info(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.WARNING, logger="llm_proxy_mw.access")
    built: list[str] = []
    monkeypatch.setattr(metrics_module, "log_access", lambda *args: built.append("record"))
    async with client() as http:
        response = await http.post("/v1/chat/completions", json=chat("gpt-echo"))
    assert response.status_code == 200
    assert built == []
    caplog.set_level(logging.INFO, logger="llm_proxy_mw.access")
    async with client() as http:
        await http.post("/v1/chat/completions", json=chat("gpt-echo"))
    assert built == ["record"]


def test_no_field_is_a_log_record_attribute() -> None:
    standard = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}
    assert not standard & set(ACCESS_FIELDS)
    assert len(set(ACCESS_FIELDS)) == len(ACCESS_FIELDS)


# -- the example app's JSON console ----------------------------------------------------------

LOGGERS = ("llm_proxy_mw", "uvicorn", "uvicorn.access")


@pytest.fixture
def example() -> Iterator[ModuleType]:
    """``examples.app``, with the loggers its ``configure_logging`` changes restored after."""
    saved = [(lg, lg.handlers[:], lg.level, lg.propagate) for lg in map(logging.getLogger, LOGGERS)]
    try:
        yield importlib.import_module("examples.app")
    finally:
        for logger, handlers, level, propagate in saved:
            logger.handlers[:] = handlers
            logger.setLevel(level)
            logger.propagate = propagate


async def test_the_examples_json_mode_writes_each_record_as_one_json_line(
    example: ModuleType,
) -> None:
    console, uvicorn_console = io.StringIO(), logging.StreamHandler(io.StringIO())
    logging.getLogger("uvicorn.access").addHandler(uvicorn_console)
    for _ in range(2):  # set up once, however often it is called
        example.configure_logging({"LLM_PROXY_LOG_FORMAT": "json"}, stream=console)
    assert isinstance(uvicorn_console.formatter, example.JsonLines)
    async with client() as http:
        ok = await http.post("/v1/chat/completions", json=chat("gpt-echo"))
        refused = await http.post(
            "/v1/chat/completions", json=chat("gpt-echo"), headers={"authorization": "Bearer no"}
        )
    lines = console.getvalue().splitlines()
    entries = [json.loads(line) for line in lines]
    assert all(isinstance(entry, dict) for entry in entries)
    access = [e for e in entries if e["logger"] == "llm_proxy_mw.access"]
    assert [e["request_id"] for e in access] == [
        ok.headers["x-request-id"],
        refused.headers["x-request-id"],
    ]
    assert set(ACCESS_FIELDS) <= access[0].keys()
    assert (access[0]["level"], access[0]["status"], access[0]["cost_usd"]) == ("INFO", 200, 8e-06)
    assert access[1]["outcome"] == "authentication_error"
    failure = [e for e in entries if e["logger"] == "llm_proxy_mw"]
    assert len(failure) == 1 and "failed: AuthenticationError" in failure[0]["message"]


def test_the_examples_text_mode_leaves_logging_as_it_is(example: ModuleType) -> None:
    before = logging.getLogger("llm_proxy_mw").handlers[:]
    example.configure_logging({})
    example.configure_logging({"LLM_PROXY_LOG_FORMAT": "text"})
    assert logging.getLogger("llm_proxy_mw").handlers == before
