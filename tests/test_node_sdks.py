"""The official Node SDKs through the proxy: ``openai`` and ``@anthropic-ai/sdk``, pinned in
``tests/node/package-lock.json`` (``make node-sdks`` runs ``npm ci`` there), against the example
app on uvicorn in front of the fake provider. Each scenario is a small script run by node as
a subprocess; it prints one JSON line of what the SDK gave back, which the test asserts on
with what the provider received. Without node or the packages the tests skip locally, and
fail under ``CI=true``.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require_binary
from tests.e2e_helpers import (
    ANTHROPIC_CANARY,
    ANTHROPIC_MODEL,
    CANARIES,
    CLIENT_KEY,
    OPENAI_MODEL,
    ProxyServer,
    config_toml,
    serve_example_app,
    standard_providers,
)
from tests.fakes.object_provider import two_providers
from tests.fakes.provider import Action, FakeProvider, FakeProviderServer, ToolCall, Turn

pytestmark = pytest.mark.e2e

NODE_DIR = Path(__file__).parent / "node"
#: One script, node's start included, is bounded by this (seconds).
SCRIPT_TIMEOUT = 60.0
UPSTREAM_ID = "x-llm-proxy-upstream-request-id"
MAX_ATTEMPTS = 3
FAST_RETRY = {"max_attempts": MAX_ATTEMPTS, "backoff_base": 0.01, "backoff_max": 0.05}


@pytest.fixture(scope="module")
def node() -> str:
    """The node executable, once ``make node-sdks`` installed the SDKs."""
    executable = require_binary("node")
    packages = NODE_DIR / "node_modules"
    if not all((packages / name).is_dir() for name in ("openai", "@anthropic-ai/sdk")):
        reason = "the Node SDKs are not installed: run `make node-sdks`"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return executable


def run_node(node: str, proxy: ProxyServer, script: str, *args: str) -> Any:
    """Run ``tests/node/<script>.mjs <args>`` against the proxy's mount; what it printed."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PROXY_URL": proxy.url + "/llm",
        "PROXY_KEY": CLIENT_KEY,
        "PROXY_OPENAI_MODEL": OPENAI_MODEL,
        "PROXY_ANTHROPIC_MODEL": ANTHROPIC_MODEL,
    }
    done = subprocess.run(
        [node, f"{script}.mjs", *args],
        cwd=NODE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert [c for c in CANARIES if c in done.stdout] == [], "a provider key reached a client"
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def proxy(
    fake_server: FakeProviderServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxyServer]:
    config = config_toml(*standard_providers(fake_server.url))
    with serve_example_app(config, tmp_path_factory.mktemp("node-sdks")) as server:
        yield server


# ---- openai ------------------------------------------------------------------------------------


def test_openai_chat_carries_the_proxys_request_id(
    node: str, proxy: ProxyServer, provider: FakeProvider
) -> None:
    provider.script(Action(reply="from the fake", headers={"x-request-id": "req_openai_up"}))

    result = run_node(node, proxy, "openai", "chat")

    assert result["content"] == "from the fake"
    own_id = result["headers"]["x-request-id"]
    assert result["_request_id"] == result["request_id"] == own_id
    assert own_id != "req_openai_up"
    assert result["headers"][UPSTREAM_ID] == "req_openai_up"
    assert "request-id" not in result["headers"]
    assert provider.last.path == "/v1/chat/completions"


def test_openai_chat_stream(node: str, proxy: ProxyServer, provider: FakeProvider) -> None:
    provider.script(Action(reply="one two three four five"))

    result = run_node(node, proxy, "openai", "stream")

    assert "".join(result["deltas"]) == "one two three four five"
    assert len(result["deltas"]) > 1
    assert result["finish_reason"] == "stop"
    assert provider.last.json["stream"] is True


def test_openai_tools(node: str, proxy: ProxyServer, provider: FakeProvider) -> None:
    call = ToolCall("get_weather", '{"city": "Paris"}', id="call_weather_1")
    provider.script(Action(turn=Turn(tool_calls=[call])))

    result = run_node(node, proxy, "openai", "tools")

    assert result == {
        "finish_reason": "tool_calls",
        "tool_calls": [
            {"id": "call_weather_1", "name": "get_weather", "arguments": {"city": "Paris"}}
        ],
    }
    assert provider.last.json["tools"][0]["function"]["name"] == "get_weather"


def test_openai_typed_errors_carry_the_request_id(
    node: str, proxy: ProxyServer, provider: FakeProvider
) -> None:
    provider.script(Action(status=400, headers={"x-request-id": "req_up_bad"}))

    own = run_node(node, proxy, "openai", "error", "gpt-none")  # the proxy's own 404
    passed = run_node(node, proxy, "openai", "error", OPENAI_MODEL)  # the provider's 400

    assert own["class"] == "NotFoundError"
    assert own["status"] == 404
    assert own["error"]["code"] == "model_not_found"
    assert own["requestID"] == own["headers"]["x-request-id"]
    assert passed["class"] == "BadRequestError"
    assert passed["status"] == 400
    assert passed["requestID"] == passed["headers"]["x-request-id"] != "req_up_bad"
    assert passed["headers"][UPSTREAM_ID] == "req_up_bad"
    assert len(provider.requests) == 1


def test_openai_responses_create(node: str, proxy: ProxyServer, provider: FakeProvider) -> None:
    provider.script(Action(reply="a response"))

    result = run_node(node, proxy, "openai", "responses")

    assert result["object"] == "response"
    assert result["output_text"] == "a response"
    assert result["request_id"]
    assert provider.last.path == "/v1/responses"


def test_openai_files_follow_their_object_id(node: str, tmp_path: Path) -> None:
    with (
        two_providers() as fakes,
        serve_example_app(config_toml(*fakes.tables()), tmp_path) as proxy,
    ):
        result = run_node(node, proxy, "openai", "files", "second")

    assert result["created"].startswith("file-second-")
    assert result["retrieved"] == {"id": result["created"], "filename": "in.jsonl"}
    assert fakes.first.seen == []
    assert fakes.second.seen == [("POST", "/v1/files"), ("GET", f"/v1/files/{result['created']}")]


def test_openai_default_retries_cost_at_most_max_attempts(
    node: str, fake_server: FakeProviderServer, provider: FakeProvider, tmp_path: Path
) -> None:
    provider.script(*[Action(status=503)] * 20)  # every attempt fails, whoever makes it
    config = config_toml(*standard_providers(fake_server.url, retry=FAST_RETRY))
    with serve_example_app(config, tmp_path) as proxy:
        result = run_node(node, proxy, "openai", "defaultRetries")

    assert result["max_retries"] == 2
    assert result["status"] == 503
    assert result["headers"]["x-should-retry"] == "false"
    calls = len(provider.requests)
    assert 1 <= calls <= MAX_ATTEMPTS
    assert result["headers"]["x-llm-proxy-attempts"] == str(calls)


# ---- anthropic ---------------------------------------------------------------------------------


def test_anthropic_messages_carry_the_proxys_request_id(
    node: str, proxy: ProxyServer, provider: FakeProvider
) -> None:
    provider.script(Action(reply="from the fake", headers={"request-id": "req_anthropic_up"}))

    result = run_node(node, proxy, "anthropic", "messages")

    assert result["text"] == "from the fake"
    assert result["stop_reason"] == "end_turn"
    own_id = result["headers"]["x-request-id"]
    assert result["_request_id"] == result["request_id"] == result["headers"]["request-id"]
    assert result["_request_id"] == own_id != "req_anthropic_up"
    assert result["headers"][UPSTREAM_ID] == "req_anthropic_up"
    assert provider.last.path == "/v1/messages"


def test_anthropic_stream_final_message(
    node: str, proxy: ProxyServer, provider: FakeProvider
) -> None:
    provider.script(Action(reply="one two three four five"))

    result = run_node(node, proxy, "anthropic", "stream")

    assert result["text"] == "".join(result["deltas"]) == "one two three four five"
    assert len(result["deltas"]) > 1
    assert result["stop_reason"] == "end_turn"
    assert result["request_id"] == result["headers"]["request-id"]
    assert result["request_id"] == result["headers"]["x-request-id"]
    assert provider.last.json["stream"] is True


def test_anthropic_proxys_own_error_carries_the_request_id(
    node: str, proxy: ProxyServer, provider: FakeProvider
) -> None:
    result = run_node(node, proxy, "anthropic", "error", "claude-none")

    assert result["class"] == "NotFoundError"
    assert result["status"] == 404
    assert result["error"]["type"] == "error"
    assert result["error"]["error"]["type"] == "not_found_error"
    assert result["requestID"] == result["headers"]["request-id"]
    assert result["requestID"] == result["headers"]["x-request-id"]
    assert provider.requests == []


def test_anthropic_files_and_models_reach_the_anthropic_provider(
    node: str, proxy: ProxyServer, provider: FakeProvider
) -> None:
    provider.script(
        Action(json_body={"id": "file_node_1", "type": "file", "filename": "notes.txt"})
    )

    result = run_node(node, proxy, "anthropic", "filesAndModels")

    assert result["file"]["id"] == "file_node_1"
    assert result["file"]["filename"] == "notes.txt"
    assert result["file"]["_request_id"]
    # The upload goes to the Anthropic provider (the OpenAI one is first in the config) with
    # its key; the model is answered by the proxy from its config, in Anthropic's shape.
    (sent,) = provider.requests
    assert (sent.method, sent.path) == ("POST", "/v1/files")
    assert sent.headers["x-api-key"] == ANTHROPIC_CANARY
    assert "authorization" not in sent.headers
    assert sent.headers["content-type"].startswith("multipart/form-data")
    assert b'filename="notes.txt"' in sent.body
    assert b"\r\n\r\nhello\r\n" in sent.body
    assert result["model"] == {"id": ANTHROPIC_MODEL, "type": "model"}


def test_anthropic_sdk_reaches_an_openai_served_model(
    node: str, proxy: ProxyServer, provider: FakeProvider
) -> None:
    provider.script(Action(reply="translated"))

    result = run_node(node, proxy, "anthropic", "messages", OPENAI_MODEL)

    assert result["text"] == "translated"
    assert result["model"] == OPENAI_MODEL
    assert result["stop_reason"] == "end_turn"
    assert result["_request_id"] == result["headers"]["request-id"]
    assert provider.last.path == "/v1/chat/completions"
    assert provider.last.json["messages"][-1]["content"] == "hi"
