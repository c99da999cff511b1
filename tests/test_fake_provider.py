"""The scripted fake provider itself (``benchmarks/_scripted_server.py``, served by
``tests.fakes.provider.FakeProviderServer``): what the end-to-end tests lean on unasserted."""

from __future__ import annotations

import gzip
import json
import socket
from collections.abc import Iterator

import httpx
import pytest

from tests.fakes.provider import Action, FakeProvider, FakeProviderServer

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
