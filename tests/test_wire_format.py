"""The wire format of a request follows its path and its headers, and so do its route and
the errors the proxy renders: Anthropic's SDKs send ``anthropic-version`` with every call, so
their files, models and batches calls reach a provider speaking Anthropic's format, never
an OpenAI one with the OpenAI key."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import anthropic
import httpx
import pytest

from llm_proxy_mw import HttpxTransport, build_proxy
from llm_proxy_mw.wire import WireFormat, wire_format_of
from tests.e2e_helpers import (
    ANTHROPIC_CANARY,
    ANTHROPIC_MODEL,
    RecordingTransport,
    anthropic_client,
    config_toml,
    serve_example_app,
    standard_providers,
)
from tests.fakes.provider import Action, FakeProvider, FakeProviderServer

OPENAI_KEY = "sk-openai-wire-canary"
ANTHROPIC_KEY = "sk-ant-wire-canary"
ANTHROPIC_HEADERS = {"anthropic-version": "2023-06-01"}


@pytest.mark.parametrize(
    ("path", "anthropic_version", "wire_format"),
    [
        ("/v1/messages", False, WireFormat.ANTHROPIC),
        ("/v1/messages/batches", False, WireFormat.ANTHROPIC),
        ("/v1/files", True, WireFormat.ANTHROPIC),
        ("/v1/files/file_1/content", True, WireFormat.ANTHROPIC),
        ("/v1/models/claude-x", True, WireFormat.ANTHROPIC),
        ("/v1/files", False, WireFormat.OPENAI),
        ("/v1/models", False, WireFormat.OPENAI),
        ("/v1/messagesx", False, WireFormat.OPENAI),
        # Outside the API: the proxy's own endpoints keep their one format.
        ("/healthz", True, WireFormat.OPENAI),
        ("/v1", True, WireFormat.OPENAI),
    ],
)
def test_wire_format_follows_the_path_and_anthropic_version(
    path: str, anthropic_version: bool, wire_format: WireFormat
) -> None:
    assert wire_format_of(path, anthropic_version=anthropic_version) is wire_format


class Providers:
    """Two recording mock providers: ``openai`` first in the config, then ``anthropic``."""

    def __init__(self) -> None:
        self.requests: dict[str, list[httpx.Request]] = {"openai": [], "anthropic": []}

    def handler(self, name: str) -> HttpxTransport:
        def respond(request: httpx.Request) -> httpx.Response:
            self.requests[name].append(request)
            return httpx.Response(200, json={"id": "file_1", "type": "file"})

        return HttpxTransport(httpx.MockTransport(respond))

    @contextlib.asynccontextmanager
    async def serve(self, *names: str) -> AsyncIterator[httpx.AsyncClient]:
        """A client of the proxy in front of the providers ``names``, in that order."""
        config = {
            "openai": {
                "kind": "openai",
                "base_url": "https://openai.example/v1",
                "api_key": OPENAI_KEY,
                "models": ["gpt-x"],
            },
            "anthropic": {
                "kind": "anthropic",
                "base_url": "https://anthropic.example/v1",
                "api_key": ANTHROPIC_KEY,
                "models": ["claude-x"],
            },
        }
        proxy = build_proxy(
            {"providers": {n: config[n] for n in names}},
            transports={n: self.handler(n) for n in names},
        )
        transport = httpx.ASGITransport(app=proxy)
        async with (
            proxy.lifespan(),
            httpx.AsyncClient(transport=transport, base_url="http://proxy") as client,
        ):
            yield client


@pytest.fixture
def providers() -> Providers:
    return Providers()


@pytest.fixture
async def client(providers: Providers) -> AsyncIterator[httpx.AsyncClient]:
    async with providers.serve("openai", "anthropic") as client:
        yield client


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/files"),
        ("GET", "/v1/files"),
        ("GET", "/v1/files/file_1"),
        ("DELETE", "/v1/files/file_1"),
        ("POST", "/v1/messages/batches"),
    ],
)
async def test_a_model_less_anthropic_request_reaches_the_anthropic_provider(
    client: httpx.AsyncClient, providers: Providers, method: str, path: str
) -> None:
    upload = {"file": ("a.txt", b"hello")} if (method, path) == ("POST", "/v1/files") else None
    headers = {**ANTHROPIC_HEADERS, "anthropic-beta": "files-api-2025-04-14"}
    response = await client.request(method, path, headers=headers, files=upload)

    assert response.status_code == 200, response.text
    assert response.headers["x-llm-proxy-provider"] == "anthropic"
    assert providers.requests["openai"] == []
    (sent,) = providers.requests["anthropic"]
    assert sent.url.path == path
    assert sent.headers["x-api-key"] == ANTHROPIC_KEY
    assert "authorization" not in sent.headers
    assert sent.headers["anthropic-beta"] == "files-api-2025-04-14"


@pytest.mark.anyio
async def test_without_anthropic_version_files_go_to_the_openai_provider(
    client: httpx.AsyncClient, providers: Providers
) -> None:
    response = await client.post("/v1/files", files={"file": ("a.txt", b"hello")})

    assert response.status_code == 200, response.text
    assert response.headers["x-llm-proxy-provider"] == "openai"
    (sent,) = providers.requests["openai"]
    assert sent.headers["authorization"] == f"Bearer {OPENAI_KEY}"
    assert providers.requests["anthropic"] == []


@pytest.mark.anyio
async def test_an_anthropic_request_nothing_serves_gets_an_anthropic_error(
    providers: Providers,
) -> None:
    async with providers.serve("openai") as client:
        response = await client.get("/v1/files", headers=ANTHROPIC_HEADERS)

        assert response.status_code == 404
        body = response.json()
        assert body["type"] == "error"
        assert body["error"]["type"] == "not_found_error"
        assert response.headers["request-id"] == response.headers["x-request-id"]
    assert providers.requests["openai"] == []


@pytest.mark.anyio
async def test_models_are_answered_in_the_shape_of_the_wire_format(
    client: httpx.AsyncClient, providers: Providers
) -> None:
    anthropic_list = (await client.get("/v1/models", headers=ANTHROPIC_HEADERS)).json()
    openai_list = (await client.get("/v1/models")).json()
    one = await client.get("/v1/models/claude-x", headers=ANTHROPIC_HEADERS)
    missing = await client.get("/v1/models/claude-none", headers=ANTHROPIC_HEADERS)

    assert {m["type"] for m in anthropic_list["data"]} == {"model"}
    assert openai_list["object"] == "list"
    assert one.json()["type"] == "model"
    assert one.json()["id"] == "claude-x"
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "not_found_error"
    assert missing.headers["request-id"] == missing.headers["x-request-id"]
    assert providers.requests == {"openai": [], "anthropic": []}


# ---- the official SDK, through the example app -----------------------------------------------


@pytest.mark.e2e
def test_anthropic_sdk_files_and_models_reach_the_anthropic_provider(
    fake_server: FakeProviderServer,
    provider: FakeProvider,
    recorder: RecordingTransport,
    tmp_path: Path,
) -> None:
    metadata = {
        "id": "file_011",
        "type": "file",
        "filename": "notes.txt",
        "mime_type": "text/plain",
        "size_bytes": 5,
        "created_at": "2025-01-01T00:00:00Z",
    }
    provider.script(Action(json_body=metadata))
    config = config_toml(*standard_providers(fake_server.url))  # openai first
    with (
        serve_example_app(config, tmp_path) as proxy,
        anthropic_client(proxy.url, recorder) as client,
    ):
        uploaded = client.beta.files.upload(file=("notes.txt", b"hello", "text/plain"))
        model = client.models.retrieve(ANTHROPIC_MODEL)
        with pytest.raises(anthropic.NotFoundError) as missing:
            client.models.retrieve("claude-none")

    assert uploaded.id == "file_011"
    (sent,) = provider.requests
    assert sent.path == "/v1/files"
    assert sent.headers["x-api-key"] == ANTHROPIC_CANARY
    assert "authorization" not in sent.headers
    assert model.id == ANTHROPIC_MODEL
    assert model.type == "model"
    assert json.loads(missing.value.response.text)["error"]["type"] == "not_found_error"
