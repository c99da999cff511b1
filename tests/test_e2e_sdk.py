"""End to end: the official SDKs through the example app's ``/llm`` mount to a fake provider.

Both servers are real uvicorn servers on loopback sockets (see ``e2e_helpers``): real chunked
framing, keep-alive and connection aborts. What is checked here is what a user of the core
issue sees: JSON and SSE answers parsed by the SDKs, credentials swapped (the provider's
injected, the client's never forwarded, the provider's never returned), the proxy's response
headers, errors in each SDK's own types, streams that break visibly, no buffering, and
content-encoding passed through untouched.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator, Mapping

import anthropic
import httpx
import openai
import pytest

from tests.e2e_helpers import (
    ANTHROPIC_CANARY,
    ANTHROPIC_MODEL,
    CLIENT_KEY,
    OPENAI_CANARY,
    OPENAI_MODEL,
    ProxyServer,
    RecordingTransport,
    anthropic_client,
    chat_body,
    config_toml,
    openai_client,
    raw_client,
    serve_example_app,
    standard_providers,
)
from tests.fakes.provider import Action, FakeProvider, FakeProviderServer, RecordedRequest

pytestmark = pytest.mark.e2e

REPLY = "fake reply to: hello"


# ---- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def proxy(
    fake_server: FakeProviderServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxyServer]:
    config = config_toml(*standard_providers(fake_server.url))
    with serve_example_app(config, tmp_path_factory.mktemp("e2e-sdk")) as served:
        yield served


@pytest.fixture
def recorder(recorder: RecordingTransport) -> Iterator[RecordingTransport]:
    """The shared recorder; every test here makes its requests through it."""
    yield recorder
    assert recorder.received, "the test made no request through the recorder"


@pytest.fixture
def oai(proxy: ProxyServer, recorder: RecordingTransport) -> Iterator[openai.OpenAI]:
    with openai_client(proxy.url, recorder) as client:
        yield client


@pytest.fixture
def ant(proxy: ProxyServer, recorder: RecordingTransport) -> Iterator[anthropic.Anthropic]:
    with anthropic_client(proxy.url, recorder) as client:
        yield client


# ---- assertions ------------------------------------------------------------------------------


def only_request(provider: FakeProvider) -> RecordedRequest:
    requests = provider.wait_for_requests(1)
    assert len(requests) == 1, [r.path for r in requests]
    return requests[0]


def assert_openai_credentials(request: RecordedRequest) -> None:
    assert request.headers["authorization"] == f"Bearer {OPENAI_CANARY}"
    assert "x-api-key" not in request.headers
    assert_client_key_not_forwarded(request)


def assert_anthropic_credentials(request: RecordedRequest) -> None:
    assert request.headers["x-api-key"] == ANTHROPIC_CANARY
    # The SDK sent the client key as a bearer token: it is dropped, not passed along.
    assert "authorization" not in request.headers
    assert request.headers.get("anthropic-version")
    assert_client_key_not_forwarded(request)


def assert_client_key_not_forwarded(request: RecordedRequest) -> None:
    for name, value in request.raw_headers:
        assert CLIENT_KEY not in value, f"the client's key was forwarded in {name}"
    assert CLIENT_KEY.encode() not in request.body


def assert_proxy_headers(headers: Mapping[str, str], provider: str, attempts: int = 1) -> None:
    assert headers.get("x-request-id")
    assert headers.get("x-llm-proxy-provider") == provider
    assert headers.get("x-llm-proxy-attempts") == str(attempts)


# ---- OpenAI SDK ------------------------------------------------------------------------------


def test_openai_json(oai: openai.OpenAI, provider: FakeProvider) -> None:
    raw = oai.chat.completions.with_raw_response.create(
        model=OPENAI_MODEL,
        messages=[{"role": "user", "content": "hello"}],
        extra_headers={"x-request-id": "e2e-openai-json-1"},
    )
    completion = raw.parse()

    assert completion.choices[0].message.content == REPLY
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.total_tokens > 0
    assert_proxy_headers(raw.headers, "openai")
    assert raw.headers["x-request-id"] == "e2e-openai-json-1"
    request = only_request(provider)
    assert (request.method, request.path) == ("POST", "/v1/chat/completions")
    assert request.json["model"] == OPENAI_MODEL
    assert_openai_credentials(request)


def test_openai_stream_with_usage(oai: openai.OpenAI, provider: FakeProvider) -> None:
    raw = oai.chat.completions.with_raw_response.create(
        model=OPENAI_MODEL,
        messages=[{"role": "user", "content": "hello"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert_proxy_headers(raw.headers, "openai")
    chunks = list(raw.parse())

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == REPLY
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    request = only_request(provider)
    assert request.json["stream"] is True
    assert request.json["stream_options"] == {"include_usage": True}
    assert_openai_credentials(request)


# ---- Anthropic SDK ---------------------------------------------------------------------------


def test_anthropic_json(ant: anthropic.Anthropic, provider: FakeProvider) -> None:
    raw = ant.messages.with_raw_response.create(
        model=ANTHROPIC_MODEL, max_tokens=64, messages=[{"role": "user", "content": "hello"}]
    )
    message = raw.parse()

    assert message.content[0].type == "text"
    assert message.content[0].text == REPLY
    assert message.stop_reason == "end_turn"
    assert message.usage.output_tokens > 0
    assert_proxy_headers(raw.headers, "anthropic")
    request = only_request(provider)
    assert (request.method, request.path) == ("POST", "/v1/messages")
    assert_anthropic_credentials(request)


def test_anthropic_messages_stream(ant: anthropic.Anthropic, provider: FakeProvider) -> None:
    with ant.messages.stream(
        model=ANTHROPIC_MODEL, max_tokens=64, messages=[{"role": "user", "content": "hello"}]
    ) as stream:
        assert_proxy_headers(stream.response.headers, "anthropic")
        text = "".join(stream.text_stream)
        final = stream.get_final_message()

    assert text == REPLY
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens > 0
    request = only_request(provider)
    assert request.json["stream"] is True
    assert_anthropic_credentials(request)


def test_anthropic_stream_true(ant: anthropic.Anthropic, provider: FakeProvider) -> None:
    raw = ant.messages.with_raw_response.create(
        model=ANTHROPIC_MODEL,
        max_tokens=64,
        messages=[{"role": "user", "content": "hello"}],
        stream=True,
    )
    assert_proxy_headers(raw.headers, "anthropic")
    events = list(raw.parse())

    types = [e.type for e in events]
    assert types[0] == "message_start"
    assert types[-1] == "message_stop"
    deltas = [e.delta for e in events if e.type == "content_block_delta"]
    assert "".join(d.text for d in deltas if d.type == "text_delta") == REPLY
    assert_anthropic_credentials(only_request(provider))


# ---- errors in each SDK's own types ----------------------------------------------------------


def test_wrong_client_key_is_401_in_both_formats(
    proxy: ProxyServer, recorder: RecordingTransport, provider: FakeProvider
) -> None:
    wrong = "e2e-wrong-key-0000000000000"
    with openai_client(proxy.url, recorder, api_key=wrong) as client:
        with pytest.raises(openai.AuthenticationError) as oai_error:
            client.chat.completions.create(
                model=OPENAI_MODEL, messages=[{"role": "user", "content": "hello"}]
            )
    with anthropic_client(proxy.url, recorder, api_key=wrong) as client:
        with pytest.raises(anthropic.AuthenticationError) as ant_error:
            client.messages.create(
                model=ANTHROPIC_MODEL, max_tokens=64, messages=[{"role": "user", "content": "x"}]
            )

    assert oai_error.value.status_code == 401
    assert oai_error.value.response.json()["error"]["type"] == "authentication_error"
    assert oai_error.value.response.headers["x-request-id"]
    assert ant_error.value.status_code == 401
    body = ant_error.value.response.json()
    assert body["type"] == "error" and body["error"]["type"] == "authentication_error"
    assert wrong.encode() not in b"".join(recorder.received)
    assert provider.requests == []


def test_unknown_model_is_404_naming_it(
    oai: openai.OpenAI, ant: anthropic.Anthropic, provider: FakeProvider
) -> None:
    with pytest.raises(openai.NotFoundError) as oai_error:
        oai.chat.completions.create(
            model="gpt-nobody-serves", messages=[{"role": "user", "content": "hello"}]
        )
    with pytest.raises(anthropic.NotFoundError) as ant_error:
        ant.messages.create(
            model="claude-nobody-serves",
            max_tokens=64,
            messages=[{"role": "user", "content": "hello"}],
        )

    assert oai_error.value.status_code == 404
    assert "gpt-nobody-serves" in oai_error.value.message
    assert ant_error.value.status_code == 404
    assert ant_error.value.response.json()["error"]["type"] == "not_found_error"
    assert "claude-nobody-serves" in ant_error.value.message
    assert provider.requests == []


def test_upstream_400_passes_through_unchanged(
    oai: openai.OpenAI, ant: anthropic.Anthropic, provider: FakeProvider
) -> None:
    openai_error = {
        "error": {
            "message": "Provider says: 'temperature' is out of range.",
            "type": "invalid_request_error",
            "param": "temperature",
            "code": "invalid_value",
        }
    }
    anthropic_error = {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "Provider says: max_tokens: 0"},
    }
    provider.script(
        Action(status=400, json_body=openai_error, headers={"x-provider-trace": "t-1"}),
        Action(status=400, json_body=anthropic_error),
    )

    with pytest.raises(openai.BadRequestError) as oai_raised:
        oai.chat.completions.create(
            model=OPENAI_MODEL, messages=[{"role": "user", "content": "hello"}], temperature=9
        )
    with pytest.raises(anthropic.BadRequestError) as ant_raised:
        ant.messages.create(
            model=ANTHROPIC_MODEL, max_tokens=0, messages=[{"role": "user", "content": "hello"}]
        )

    assert oai_raised.value.status_code == 400
    assert "Provider says: 'temperature' is out of range." in oai_raised.value.message
    assert oai_raised.value.code == "invalid_value"
    assert oai_raised.value.response.content == json.dumps(openai_error).encode()
    assert oai_raised.value.response.headers["x-provider-trace"] == "t-1"
    assert_proxy_headers(oai_raised.value.response.headers, "openai")
    assert ant_raised.value.status_code == 400
    assert ant_raised.value.response.content == json.dumps(anthropic_error).encode()
    assert "Provider says: max_tokens: 0" in ant_raised.value.message
    assert len(provider.wait_for_requests(2)) == 2  # never retried


# ---- streams that break, and streams that flow -----------------------------------------------


def test_openai_stream_cut_by_provider_raises(oai: openai.OpenAI, provider: FakeProvider) -> None:
    provider.script(Action(cut_after=2))
    received = []
    stream = oai.chat.completions.create(
        model=OPENAI_MODEL, messages=[{"role": "user", "content": "hello"}], stream=True
    )
    with pytest.raises(openai.APIError) as raised:
        for chunk in stream:
            received.append(chunk)

    assert not isinstance(raised.value, openai.APIStatusError)  # an in-stream error event
    assert len(received) == 2
    assert all(c.choices[0].finish_reason is None for c in received)
    assert only_request(provider).path == "/v1/chat/completions"


@pytest.mark.parametrize("api", ["messages.stream", "stream=True"])
def test_anthropic_stream_cut_by_provider_raises(
    api: str, ant: anthropic.Anthropic, provider: FakeProvider
) -> None:
    provider.script(Action(cut_after=2))
    kwargs = dict(
        model=ANTHROPIC_MODEL, max_tokens=64, messages=[{"role": "user", "content": "hello"}]
    )
    types: list[str] = []
    with pytest.raises(anthropic.APIError) as raised:
        if api == "messages.stream":
            with ant.messages.stream(**kwargs) as stream:  # type: ignore[arg-type]
                types.extend(event.type for event in stream)
        else:
            types.extend(e.type for e in ant.messages.create(**kwargs, stream=True))  # type: ignore[call-overload]

    body = raised.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert types[:2] == ["message_start", "content_block_start"]
    assert "message_stop" not in types
    assert only_request(provider).path == "/v1/messages"


def test_cut_stream_ends_with_a_terminal_error_event_on_the_wire(
    proxy: ProxyServer, provider: FakeProvider
) -> None:
    provider.script(Action(cut_after=2))
    with raw_client(proxy.url) as client:
        with client.stream("POST", "/v1/chat/completions", json=chat_body(stream=True)) as response:
            assert response.status_code == 200
            body = b"".join(response.iter_raw())

    events = [e for e in body.split(b"\n\n") if e.strip()]
    assert len(events) == 3
    assert b"[DONE]" not in body
    last = events[-1].strip()
    assert last.startswith(b"data: ")
    error = json.loads(last.removeprefix(b"data: "))["error"]
    assert error["code"] == "protocol_error"
    assert OPENAI_CANARY.encode() not in body


def test_first_event_reaches_the_client_before_the_provider_sends_the_last(
    proxy: ProxyServer, provider: FakeProvider
) -> None:
    """No buffering: the provider parks before its last event until the client saw the first.

    A buffering proxy would hold the first event until the park timed out (8 s), and the
    client's 4 s read timeout would fail the test.
    """
    with provider.hold_stream(timeout=8.0) as hold, raw_client(proxy.url, timeout=4.0) as client:
        with client.stream("POST", "/v1/chat/completions", json=chat_body(stream=True)) as response:
            lines = response.iter_lines()
            first = next(line for line in lines if line)
            assert first.startswith("data: ")
            assert json.loads(first.removeprefix("data: "))["choices"][0]["delta"]["role"]
            assert not hold.released.is_set()
            assert hold.wait_reached(4.0)  # the provider is parked before its last event
            hold.release()
            rest = [line for line in lines if line]
    assert rest[-1] == "data: [DONE]"


def test_anthropic_sdk_sees_each_event_as_the_provider_sends_it(
    ant: anthropic.Anthropic, provider: FakeProvider
) -> None:
    # Parked right after the first event: the proxy must pass events on one by one.
    with provider.hold_stream(after=1, timeout=8.0) as hold:
        with ant.with_options(timeout=4.0).messages.stream(
            model=ANTHROPIC_MODEL, max_tokens=64, messages=[{"role": "user", "content": "hello"}]
        ) as stream:
            events = iter(stream)
            assert next(events).type == "message_start"
            assert hold.wait_reached(4.0)
            assert not hold.released.is_set()
            hold.release()
            types = [event.type for event in events]
    assert types[-1] == "message_stop"


def test_gzip_reaches_the_client_byte_identical(proxy: ProxyServer, provider: FakeProvider) -> None:
    payload = json.dumps(
        {
            "id": "chatcmpl-gzip",
            "object": "chat.completion",
            "created": 1735689600,
            "model": OPENAI_MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "zipped " * 200},
                    "finish_reason": "stop",
                }
            ],
        }
    ).encode()
    compressed = gzip.compress(payload, mtime=0)
    provider.script(Action(body=compressed, headers={"content-encoding": "gzip"}))

    with raw_client(proxy.url) as client:
        with client.stream("POST", "/v1/chat/completions", json=chat_body()) as response:
            raw = b"".join(response.iter_raw())

    assert response.status_code == 200
    assert response.headers["content-encoding"] == "gzip"
    assert raw == compressed
    assert gzip.decompress(raw) == payload


def test_gzipped_stream_is_parsed_by_the_sdk(oai: openai.OpenAI, provider: FakeProvider) -> None:
    provider.script(Action(gzip=True))
    # The fake compresses even where the proxy asked it not to (for the usage it asks for
    # when a client did not): this client asks for the usage chunk itself.
    raw = oai.chat.completions.with_raw_response.create(
        model=OPENAI_MODEL,
        messages=[{"role": "user", "content": "hello"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    assert raw.headers["content-encoding"] == "gzip"
    *chunks, last = list(raw.parse())
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == REPLY
    assert last.choices == [] and last.usage is not None


# ---- the mount's own endpoints and the host app ----------------------------------------------


def test_healthz_tells_clients_only_that_it_is_up(
    proxy: ProxyServer, provider: FakeProvider
) -> None:
    with httpx.Client(base_url=proxy.url, timeout=5.0, trust_env=False) as client:
        anonymous = client.get("/llm/healthz")
        as_client = client.get("/llm/healthz", headers={"authorization": f"Bearer {CLIENT_KEY}"})

    for response in (anonymous, as_client):
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        assert response.headers["x-request-id"]
        assert response.json() == {"status": "ok"}
    assert provider.requests == []
    # What an admin's /healthz shows (this config has no admin key).
    health = proxy.proxy.health_report()
    assert health["status"] == "ok"
    assert set(health["providers"]) == {"openai", "anthropic"}
    assert health["providers"]["openai"]["kind"] == "openai"
    assert health["providers"]["openai"]["models"] == [OPENAI_MODEL]
    assert health["providers"]["anthropic"]["models"] == [ANTHROPIC_MODEL]
    assert {p["circuit"] for p in health["providers"].values()} == {"closed"}
    assert not any(c in json.dumps(health) for c in (OPENAI_CANARY, ANTHROPIC_CANARY))


def test_host_app_keeps_its_own_routes(proxy: ProxyServer) -> None:
    with httpx.Client(base_url=proxy.url, timeout=5.0, trust_env=False) as client:
        response = client.get("/")
    assert response.status_code == 200
    assert response.json() == {"app": "host", "llm_proxy": f"{proxy.url}/llm/v1"}


def test_no_provider_key_in_any_answer(
    oai: openai.OpenAI, ant: anthropic.Anthropic, recorder: RecordingTransport
) -> None:
    """Success, stream and error answers of both formats; the recorder saw every byte."""
    oai.chat.completions.create(model=OPENAI_MODEL, messages=[{"role": "user", "content": "x"}])
    list(
        oai.chat.completions.create(
            model=OPENAI_MODEL, messages=[{"role": "user", "content": "x"}], stream=True
        )
    )
    ant.messages.create(
        model=ANTHROPIC_MODEL, max_tokens=8, messages=[{"role": "user", "content": "x"}]
    )
    with ant.messages.stream(
        model=ANTHROPIC_MODEL, max_tokens=8, messages=[{"role": "user", "content": "x"}]
    ) as stream:
        stream.until_done()
    with pytest.raises(openai.NotFoundError):
        oai.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert len(recorder.received) > 20
    assert recorder.leaked() == []
    assert CLIENT_KEY.encode() not in b"".join(recorder.received)


def test_proxied_response_has_one_date_and_one_server_header(proxy: ProxyServer) -> None:
    with raw_client(proxy.url) as client:
        response = client.post("/v1/chat/completions", json=chat_body())
    assert response.status_code == 200
    names = [name.lower() for name, _ in response.headers.raw]
    assert names.count(b"date") == 1
    assert names.count(b"server") <= 1
