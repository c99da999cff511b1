"""Request ids: every response carries the proxy's id as ``x-request-id``, and in Anthropic's
format also as ``request-id`` (errors and streams included), the header Anthropic's SDKs read;
the provider's own id is kept as ``x-llm-proxy-upstream-request-id`` and in the log line."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.e2e_helpers import (
    ANTHROPIC_MODEL,
    OPENAI_MODEL,
    ProxyServer,
    RecordingTransport,
    anthropic_client,
    config_toml,
    openai_client,
    serve_example_app,
    standard_providers,
)
from tests.fakes.provider import Action, FakeProvider, FakeProviderServer
from tests.retry_helpers import (
    ANTHROPIC_PATH,
    OPENAI_PATH,
    BrokenStream,
    Stack,
    build_stack,
    ok,
    provider_config,
    status,
)

UPSTREAM = "x-llm-proxy-upstream-request-id"


def stack_of(kind: str = "openai") -> Stack:
    return build_stack({"a": provider_config(kind)})


# ---- on the stack ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_anthropic_format_responses_carry_request_id_too() -> None:
    stack = stack_of("anthropic")
    stack.script("a", ok())

    response = await stack.post(path=ANTHROPIC_PATH)

    assert response.headers.get_list("x-request-id") == [stack.contexts[-1].request_id]
    assert response.headers.get_list("request-id") == [stack.contexts[-1].request_id]


@pytest.mark.anyio
async def test_anthropic_version_on_another_path_gets_request_id() -> None:
    stack = stack_of("anthropic")
    stack.script("a", ok())

    response = await stack.post(b"", path="/v1/files", headers={"anthropic-version": "2023-06-01"})

    assert response.status_code == 200
    assert response.headers["request-id"] == response.headers["x-request-id"]


@pytest.mark.anyio
async def test_openai_format_responses_carry_x_request_id_only() -> None:
    stack = stack_of()
    stack.script("a", ok(**{"request-id": "up-1"}))

    response = await stack.post()

    assert response.headers.get_list("x-request-id") == [stack.contexts[-1].request_id]
    assert "request-id" not in response.headers
    assert response.headers[UPSTREAM] == "up-1"


@pytest.mark.anyio
async def test_the_proxys_own_anthropic_error_carries_request_id() -> None:
    stack = build_stack({"a": provider_config("anthropic", models=["claude-x"])})

    response = await stack.post(path=ANTHROPIC_PATH, body=b'{"model": "claude-none"}')

    assert response.status_code == 404
    assert response.json()["type"] == "error"
    assert response.headers["request-id"] == response.headers["x-request-id"]
    assert UPSTREAM not in response.headers


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("kind", "path", "header"),
    [
        ("openai", OPENAI_PATH, "x-request-id"),
        ("anthropic", ANTHROPIC_PATH, "request-id"),
    ],
)
async def test_the_providers_id_is_kept_under_its_own_name(
    kind: str, path: str, header: str
) -> None:
    stack = stack_of(kind)
    stack.script("a", ok(**{header: "req_provider_42"}))

    response = await stack.post(path=path)

    assert response.headers[UPSTREAM] == "req_provider_42"
    assert "req_provider_42" not in response.headers.get_list("x-request-id")
    assert "req_provider_42" not in response.headers.get_list("request-id")
    assert stack.attempts[-1].upstream_request_id == "req_provider_42"


@pytest.mark.anyio
async def test_a_retried_request_reports_the_id_of_the_answer_it_returns() -> None:
    stack = stack_of()
    stack.script("a", status(503, x_request_id="up-failed"), ok(**{"x-request-id": "up-ok"}))

    response = await stack.post()

    assert response.status_code == 200
    assert response.headers.get_list(UPSTREAM) == ["up-ok"]


@pytest.mark.anyio
async def test_a_given_up_error_keeps_the_providers_id() -> None:
    stack = stack_of()
    stack.script("a", status(400, x_request_id="up-bad"))

    response = await stack.post()

    assert response.status_code == 400
    assert response.headers[UPSTREAM] == "up-bad"


@pytest.mark.anyio
async def test_the_log_line_of_a_failed_request_names_the_providers_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stack = stack_of()
    broken = httpx.Response(
        200,
        headers={"content-type": "text/event-stream", "x-request-id": "up-broke"},
        stream=BrokenStream(b'data: {"id": "c1"}\n\n'),
    )
    stack.script("a", broken)

    with caplog.at_level(logging.INFO, logger="llm_proxy_mw"):
        response = await stack.post()

    assert response.headers[UPSTREAM] == "up-broke"

    (record,) = [r for r in caplog.records if "failed" in r.getMessage()]
    message = record.getMessage()
    assert stack.contexts[-1].request_id in message
    assert "upstream_request_id=up-broke" in message


# ---- the official SDKs, through the example app ------------------------------------------------


@pytest.fixture
def proxy(fake_server: FakeProviderServer, tmp_path: Path) -> Iterator[ProxyServer]:
    config = config_toml(*standard_providers(fake_server.url))
    with serve_example_app(config, tmp_path) as proxy:
        yield proxy


#: A Messages call of the Anthropic SDK.
ASK: dict[str, Any] = {
    "model": ANTHROPIC_MODEL,
    "max_tokens": 16,
    "messages": [{"role": "user", "content": "hi"}],
}


@pytest.mark.e2e
def test_anthropic_sdk_sees_the_proxys_request_id(
    proxy: ProxyServer, provider: FakeProvider, recorder: RecordingTransport
) -> None:
    provider.script(Action(headers={"request-id": "req_upstream_1"}))
    with anthropic_client(proxy.url, recorder) as client:
        raw = client.messages.with_raw_response.create(**ASK)
        message = raw.parse()
        with client.messages.stream(**ASK) as stream:
            stream.until_done()
            stream_id = stream.request_id

    assert message._request_id == raw.headers["x-request-id"]
    assert raw.headers[UPSTREAM] == "req_upstream_1"
    assert stream_id is not None
    assert stream_id != message._request_id


@pytest.mark.e2e
def test_anthropic_sdk_errors_carry_the_proxys_request_id(
    proxy: ProxyServer, provider: FakeProvider, recorder: RecordingTransport
) -> None:
    provider.script(Action(status=400, headers={"request-id": "req_upstream_bad"}))
    with anthropic_client(proxy.url, recorder) as client:
        with pytest.raises(anthropic.NotFoundError) as own:
            client.messages.create(**{**ASK, "model": "claude-none"})  # the proxy's own 404
        with pytest.raises(anthropic.BadRequestError) as passed:
            client.messages.create(**ASK)  # the provider's 400, passed through

    assert own.value.request_id is not None
    assert own.value.request_id == own.value.response.headers["x-request-id"]
    assert passed.value.request_id is not None
    assert passed.value.request_id == passed.value.response.headers["x-request-id"]
    assert passed.value.response.headers[UPSTREAM] == "req_upstream_bad"


@pytest.mark.e2e
def test_openai_sdk_sees_the_proxys_request_id(
    proxy: ProxyServer, provider: FakeProvider, recorder: RecordingTransport
) -> None:
    provider.script(Action(headers={"x-request-id": "req_openai_up"}))
    with openai_client(proxy.url, recorder) as client:
        raw = client.chat.completions.with_raw_response.create(
            model=OPENAI_MODEL, messages=[{"role": "user", "content": "hi"}]
        )
        completion = raw.parse()
        with pytest.raises(openai.NotFoundError) as own:
            client.chat.completions.create(
                model="gpt-none", messages=[{"role": "user", "content": "hi"}]
            )

    assert completion._request_id == raw.headers["x-request-id"]
    assert completion._request_id != "req_openai_up"
    assert raw.headers[UPSTREAM] == "req_openai_up"
    assert "request-id" not in raw.headers
    assert own.value.request_id == own.value.response.headers["x-request-id"]
