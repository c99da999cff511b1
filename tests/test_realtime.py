"""Realtime websockets end to end: clients -> the proxy under uvicorn -> a fake provider.

The raw ``websockets`` client drives what an SDK hides (binary frames, close codes, the
browser's key subprotocol); the official ``openai`` SDK's realtime client shows it works as
users call it. The fake provider records what it received (tests/fakes/realtime_server.py).
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import openai
import pytest
from starlette.types import Message
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import Close

from llm_proxy_mw import LLMProxy, build_proxy
from tests.e2e_helpers import CLIENT_KEY as E2E_CLIENT_KEY
from tests.e2e_helpers import (
    OPENAI_CANARY,
    OPENAI_MODEL,
    config_toml,
    provider_toml,
    serve_example_app,
)
from tests.fakes.realtime_server import FakeRealtimeProvider, RealtimeSession, realtime_provider
from tests.fakes.servers import UvicornServer, free_port

pytestmark = pytest.mark.anyio

CLIENT_KEY = "sk-client-realtime-0123456789"
PROVIDER_KEY = "sk-provider-realtime-9876543210"
MODEL = "gpt-realtime"
TIMEOUT = 10.0


def config(fake: FakeRealtimeProvider, *, auth: bool = True) -> dict[str, Any]:
    return {
        "providers": {
            "rt": {
                "kind": "openai",
                "base_url": fake.base_url,
                "api_key": PROVIDER_KEY,
                "models": [MODEL, "refuse-me"],
            },
            "claude": {
                "kind": "anthropic",
                "base_url": "http://127.0.0.1:9/v1",
                "models": ["claude-sonnet-4-5"],
            },
            "demo": {"kind": "echo", "models": ["echo-1"]},
        },
        "store": {"url": "sqlite:///:memory:"},
        **(config_auth() if auth else {}),
    }


def config_auth() -> dict[str, Any]:
    return {"auth": {"api_keys": [{"name": "alice", "key": CLIENT_KEY}]}}


@pytest.fixture
async def fake() -> AsyncIterator[FakeRealtimeProvider]:
    async with realtime_provider(PROVIDER_KEY) as provider:
        yield provider


def serve(fake: FakeRealtimeProvider, *, auth: bool = True) -> tuple[UvicornServer, LLMProxy]:
    proxy = build_proxy(config(fake, auth=auth))
    return UvicornServer(proxy, lifespan="on"), proxy


@pytest.fixture
def proxy(fake: FakeRealtimeProvider) -> Iterator[tuple[str, LLMProxy]]:
    server, app = serve(fake)
    with server:
        yield server.url.replace("http://", "ws://"), app


def bearer(key: str = CLIENT_KEY) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def sdk_client(url: str, key: str) -> openai.AsyncOpenAI:
    """The SDK's client, its ``base_url`` the proxy's (it derives ``ws://`` from ``http://``)."""
    return openai.AsyncOpenAI(api_key=key, base_url=url.replace("ws://", "http://") + "/v1")


async def next_event(ws: ClientConnection) -> dict[str, Any]:
    with anyio.fail_after(TIMEOUT):
        event: dict[str, Any] = json.loads(await ws.recv())
    return event


async def ended(session: RealtimeSession) -> RealtimeSession:
    with anyio.fail_after(TIMEOUT):
        await session.ended.wait()
    return session


def sample(proxy: LLMProxy, name: str, labels: dict[str, str]) -> float | None:
    """A metric sample once it is recorded (after the session's last message, on the
    proxy's thread), or ``None`` after ``TIMEOUT``."""
    registry = proxy.parts.metrics.registry
    deadline = time.monotonic() + TIMEOUT
    while (value := registry.get_sample_value(name, labels)) is None:
        if time.monotonic() > deadline:
            return None
        time.sleep(0.005)
    return value


async def test_a_session_relays_text_and_binary_both_ways_with_the_providers_key(
    fake: FakeRealtimeProvider, proxy: tuple[str, LLMProxy]
) -> None:
    url, app = proxy
    audio = bytes(range(256)) * 64
    async with connect(f"{url}/v1/realtime?model={MODEL}", additional_headers=bearer()) as ws:
        assert (await next_event(ws))["type"] == "session.created"
        await ws.send(json.dumps({"type": "session.update", "session": {"voice": "alloy"}}))
        await ws.send(audio)
        echo = await next_event(ws)
        with anyio.fail_after(TIMEOUT):
            frame = await ws.recv()
        assert echo == {
            "type": "test.echo",
            "event": {"type": "session.update", "session": {"voice": "alloy"}},
        }
        assert frame == audio  # binary stays binary, byte for byte
        assert ws.response is not None
        assert ws.response.headers["x-llm-proxy-provider"] == "rt"
        assert ws.response.headers["x-request-id"]
        await ws.close(4000, "done")
    session = await ended(fake.sessions[0])
    assert session.path == f"/v1/realtime?model={MODEL}"
    assert session.received[1] == audio
    assert (session.close_code, session.close_reason) == (4000, "done")
    assert session.headers["authorization"] == f"Bearer {PROVIDER_KEY}"
    assert CLIENT_KEY not in json.dumps(session.headers)
    labels = {"provider": "rt", "model": MODEL}
    assert sample(app, "llm_proxy_realtime_sessions_total", {**labels, "status": "101"}) == 1
    assert sample(app, "llm_proxy_realtime_session_duration_seconds_count", labels) == 1
    assert sample(app, "llm_proxy_realtime_sessions_active", {}) == 0


async def close_sent_to_the_client(url: str, event: dict[str, Any]) -> Close:
    """The close the client gets after ``event`` made the provider end the session."""
    async with connect(f"{url}/v1/realtime?model={MODEL}", additional_headers=bearer()) as ws:
        await next_event(ws)
        await ws.send(json.dumps(event))
        with pytest.raises(ConnectionClosed) as closed, anyio.fail_after(TIMEOUT):
            await ws.recv()
    assert closed.value.rcvd is not None
    return closed.value.rcvd


async def test_the_providers_close_code_and_reason_reach_the_client(
    fake: FakeRealtimeProvider, proxy: tuple[str, LLMProxy]
) -> None:
    close = await close_sent_to_the_client(
        proxy[0], {"type": "test.close", "code": 4002, "reason": "bye"}
    )
    assert (close.code, close.reason) == (4002, "bye")


async def test_a_provider_that_drops_closes_the_client_with_1011(
    fake: FakeRealtimeProvider, proxy: tuple[str, LLMProxy]
) -> None:
    close = await close_sent_to_the_client(proxy[0], {"type": "test.drop"})
    assert close.code == 1011  # the SDKs reconnect after it


async def test_a_client_that_drops_closes_the_provider(
    fake: FakeRealtimeProvider, proxy: tuple[str, LLMProxy]
) -> None:
    url, _ = proxy
    async with connect(f"{url}/v1/realtime?model={MODEL}", additional_headers=bearer()) as ws:
        await next_event(ws)
        assert ws.transport is not None
        ws.transport.abort()
    session = await ended(fake.sessions[0])
    assert session.close_code == 1001  # going away


async def test_the_browsers_key_subprotocol_authenticates_and_is_not_forwarded(
    fake: FakeRealtimeProvider, proxy: tuple[str, LLMProxy]
) -> None:
    url, _ = proxy
    offered = ["realtime", f"openai-insecure-api-key.{CLIENT_KEY}", "openai-beta.realtime-v1"]
    async with connect(f"{url}/v1/realtime?model={MODEL}", subprotocols=offered) as ws:  # type: ignore[arg-type]
        assert (await next_event(ws))["type"] == "session.created"
        assert ws.subprotocol == "realtime"
    session = await ended(fake.sessions[0])
    assert session.offered == ["realtime", "openai-beta.realtime-v1"]
    assert session.headers["authorization"] == f"Bearer {PROVIDER_KEY}"
    assert CLIENT_KEY not in json.dumps(session.headers)


@pytest.mark.parametrize(
    ("headers", "subprotocols"),
    [
        ({}, None),
        (bearer("sk-wrong"), None),
        ({}, ["openai-insecure-api-key.sk-wrong"]),
    ],
    ids=["no key", "wrong key", "wrong subprotocol key"],
)
async def test_a_caller_without_a_valid_key_is_refused_at_the_handshake(
    fake: FakeRealtimeProvider,
    proxy: tuple[str, LLMProxy],
    headers: dict[str, str],
    subprotocols: list[str] | None,
) -> None:
    url, app = proxy
    with pytest.raises(InvalidStatus) as refused:
        await connect(
            f"{url}/v1/realtime?model={MODEL}",
            additional_headers=headers,
            subprotocols=subprotocols,  # type: ignore[arg-type]
        )
    response = refused.value.response
    assert response.status_code == 401
    assert json.loads(response.body)["error"]["code"] == "authentication_error"
    assert response.headers["x-request-id"]
    assert fake.sessions == []  # the provider never heard of it
    labels = {"provider": "none", "model": "none", "status": "401"}
    assert sample(app, "llm_proxy_realtime_sessions_total", labels) == 1


@pytest.mark.parametrize(
    ("model", "status", "code"),
    [
        ("claude-sonnet-4-5", 400, "unsupported_parameter"),
        ("echo-1", 400, "unsupported_parameter"),
        ("no-such-model", 404, "model_not_found"),
        ("refuse-me", 503, "protocol_error"),
    ],
)
async def test_a_model_without_a_realtime_provider_is_refused_with_a_reason(
    fake: FakeRealtimeProvider, proxy: tuple[str, LLMProxy], model: str, status: int, code: str
) -> None:
    url, _ = proxy
    with pytest.raises(InvalidStatus) as refused:
        await connect(f"{url}/v1/realtime?model={model}", additional_headers=bearer())
    response = refused.value.response
    assert response.status_code == status
    error = json.loads(response.body)["error"]
    assert error["code"] == code
    assert error["message"]


async def test_other_websocket_paths_are_refused(proxy: tuple[str, LLMProxy]) -> None:
    url, _ = proxy
    with pytest.raises(InvalidStatus) as refused:
        await connect(f"{url}/v1/chat/completions", additional_headers=bearer())
    assert refused.value.response.status_code == 403


async def test_without_auth_anyone_connects_and_the_clients_key_stays_home(
    fake: FakeRealtimeProvider,
) -> None:
    server, _ = serve(fake, auth=False)
    with server:
        url = server.url.replace("http://", "ws://")
        headers = bearer("sk-whatever-the-client-has")
        async with connect(f"{url}/v1/realtime?model={MODEL}", additional_headers=headers) as ws:
            await next_event(ws)
    session = await ended(fake.sessions[0])
    assert session.headers["authorization"] == f"Bearer {PROVIDER_KEY}"


async def test_the_openai_sdks_realtime_client_holds_a_session(
    fake: FakeRealtimeProvider, proxy: tuple[str, LLMProxy]
) -> None:
    url, _ = proxy
    client = openai.AsyncOpenAI(
        api_key=CLIENT_KEY, base_url=url.replace("ws://", "http://") + "/v1"
    )
    audio = base64.b64encode(b"\x00\x01" * 2400).decode()
    async with client.realtime.connect(model=MODEL) as connection:
        with anyio.fail_after(TIMEOUT):
            created = json.loads(await connection.recv_bytes())
            await connection.session.update(session={"type": "realtime", "instructions": "hi"})
            await connection.input_audio_buffer.append(audio=audio)
            echoes = [json.loads(await connection.recv_bytes()) for _ in range(2)]
    assert created["type"] == "session.created"
    assert [e["event"]["type"] for e in echoes] == ["session.update", "input_audio_buffer.append"]
    assert echoes[1]["event"]["audio"] == audio
    session = await ended(fake.sessions[0])
    assert session.close_code == 1000
    assert session.headers["authorization"] == f"Bearer {PROVIDER_KEY}"
    await client.close()


async def test_the_openai_sdk_sees_a_refused_key_as_401(proxy: tuple[str, LLMProxy]) -> None:
    url, _ = proxy
    client = openai.AsyncOpenAI(
        api_key="sk-wrong", base_url=url.replace("ws://", "http://") + "/v1"
    )
    with pytest.raises(InvalidStatus) as refused:
        async with client.realtime.connect(model=MODEL):
            pass
    assert refused.value.response.status_code == 401
    await client.close()


async def test_a_realtime_session_through_the_example_app(tmp_path: Path) -> None:
    async with realtime_provider(OPENAI_CANARY) as provider:
        openai_provider = provider_toml(
            "openai",
            kind="openai",
            base_url=provider.base_url,
            key_var="FAKE_OPENAI_KEY",
            models=[OPENAI_MODEL],
        )
        store = '[store]\nurl = "sqlite:///:memory:"\n'
        with serve_example_app(config_toml(openai_provider, store), tmp_path) as app:
            client = sdk_client(f"{app.url}/llm", E2E_CLIENT_KEY)
            audio = base64.b64encode(b"\x7f\x80" * 1200).decode()
            async with client.realtime.connect(model=OPENAI_MODEL) as connection:
                with anyio.fail_after(TIMEOUT):
                    created = json.loads(await connection.recv_bytes())
                    await connection.input_audio_buffer.append(audio=audio)
                    echo = json.loads(await connection.recv_bytes())
            await client.close()
        session = await ended(provider.sessions[0])
    assert created["type"] == "session.created"
    assert echo["event"] == {"type": "input_audio_buffer.append", "audio": audio}
    assert session.path == f"/v1/realtime?model={OPENAI_MODEL}"
    assert session.headers["authorization"] == f"Bearer {OPENAI_CANARY}"
    assert E2E_CLIENT_KEY not in json.dumps(session.headers)


async def test_a_server_without_denial_responses_refuses_with_a_plain_close() -> None:
    """Without the ``websocket.http.response`` extension, a refusal is the close the server
    turns into 403; nothing of the HTTP kind is sent."""
    config = {"providers": {"demo": {"kind": "echo"}}, "store": {"url": "sqlite:///:memory:"}}
    proxy = build_proxy({**config, **config_auth()})
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "websocket.connect"}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "websocket",
        "path": "/v1/realtime",
        "query_string": f"model={MODEL}".encode(),
        "headers": [],
        "subprotocols": [],
    }
    await proxy(scope, receive, send)
    assert sent == [{"type": "websocket.close", "code": 1008}]


async def test_a_provider_that_cannot_be_reached_gives_way_to_the_next(
    fake: FakeRealtimeProvider,
) -> None:
    settings = config(fake)
    rt = settings["providers"]["rt"]
    nowhere = f"http://127.0.0.1:{free_port()}/v1"
    # Only "down" serves the model, so it is tried first; "rt" is its fallback.
    settings["providers"] = {
        "down": {**rt, "base_url": nowhere, "fallbacks": ["rt"]},
        "rt": {**rt, "models": ["another-model"]},
    }
    proxy = build_proxy(settings)
    with UvicornServer(proxy, lifespan="on") as server:
        url = server.url.replace("http://", "ws://")
        async with connect(f"{url}/v1/realtime?model={MODEL}", additional_headers=bearer()) as ws:
            assert (await next_event(ws))["type"] == "session.created"
            assert ws.response is not None
            assert ws.response.headers["x-llm-proxy-provider"] == "rt"
    assert len(fake.sessions) == 1
    down = proxy.health_report()["providers"]["down"]
    assert down["window_calls"] == 1 and down["success_ratio"] == 0
