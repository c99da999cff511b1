"""``ProxyTokenAuth``: refresh before expiry and on a 401, exactly once under concurrency.

The proxy's own token endpoint lives in another module; here a small fake of it (RFC 6749
refresh with rotation on every use, reuse revokes the family) and a fake protected API run
under real uvicorn, driven by the official SDKs. Unit tests use ``httpx.MockTransport``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import parse_qs

import anthropic
import httpx
import httpx2
import openai
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from llm_proxy_mw.client import InvalidGrantError, ProxyTokenAuth, ProxyTokens, TokenRefreshError
from tests.fakes.servers import UvicornServer

TTL = 100.0
MARGIN = 10.0
CONCURRENCY = 20
CHAT = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 0,
    "model": "m",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
    ],
}
MESSAGE = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": "m",
    "content": [{"type": "text", "text": "ok"}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 1, "output_tokens": 1},
}


class Clock:
    """Wall-clock seconds that a test moves; shared by the fake server and the client."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


class FakeProxy:
    """The proxy's token endpoint and a protected API, as RFC 6749 and the design say."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.lock = threading.Lock()
        self.reset()
        self.app = Starlette(
            routes=[
                Route("/auth/token", self.token, methods=["POST"]),
                Route("/v1/chat/completions", self.chat, methods=["POST"]),
                Route("/v1/messages", self.messages, methods=["POST"]),
            ]
        )

    def reset(self) -> None:
        self.access: dict[str, float] = {}
        self.refresh: dict[str, bool] = {}  # refresh token -> still unused
        self.refresh_calls = 0
        self.api_calls = 0
        self.refresh_delay = 0.0
        self.reject_all = False
        self.api_headers: list[dict[str, str]] = []

    def mint(self) -> dict[str, Any]:
        access, refresh = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
        self.access[access] = self.clock() + TTL
        self.refresh[refresh] = True
        return {
            "access_token": access,
            "refresh_token": refresh,
            "token_type": "Bearer",
            "expires_in": int(TTL),
        }

    def revoke_family(self) -> None:
        self.access.clear()
        self.refresh = dict.fromkeys(self.refresh, False)

    async def token(self, request: Request) -> Response:
        assert request.headers["content-type"] == "application/x-www-form-urlencoded"
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
        with self.lock:
            self.refresh_calls += 1
        if self.refresh_delay:
            await asyncio.sleep(self.refresh_delay)  # widens the window for racing requests
        if form.get("grant_type") != "refresh_token":
            return JSONResponse({"error": "unsupported_grant_type"}, 400)
        with self.lock:
            live = self.refresh.get(form.get("refresh_token", ""))
            if not live:
                if live is False:  # reuse of a rotated token: treated as theft
                    self.revoke_family()
                return JSONResponse({"error": "invalid_grant"}, 400)
            self.refresh[form["refresh_token"]] = False
            pair = self.mint()
        return JSONResponse(pair, headers={"cache-control": "no-store", "pragma": "no-cache"})

    def authorized(self, request: Request) -> bool:
        with self.lock:
            self.api_calls += 1
            self.api_headers.append(dict(request.headers))
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        expires = self.access.get(token)
        return (
            scheme == "Bearer"
            and expires is not None
            and self.clock() < expires
            and not self.reject_all
        )

    async def chat(self, request: Request) -> Response:
        if not self.authorized(request):
            error = {"message": "bad token", "type": "authentication_error", "code": "invalid"}
            return JSONResponse({"error": error}, 401, headers={"www-authenticate": "Bearer"})
        return JSONResponse(CHAT)

    async def messages(self, request: Request) -> Response:
        if not self.authorized(request):
            error = {"type": "authentication_error", "message": "bad token"}
            return JSONResponse({"type": "error", "error": error}, 401)
        return JSONResponse(MESSAGE)


@pytest.fixture(scope="module")
def clock() -> Clock:
    return Clock()


@pytest.fixture(scope="module")
def fake(clock: Clock) -> FakeProxy:
    return FakeProxy(clock)


@pytest.fixture(scope="module")
def server(fake: FakeProxy) -> Iterator[UvicornServer]:
    with UvicornServer(fake.app) as served:
        yield served


@pytest.fixture
def auth(fake: FakeProxy, clock: Clock, server: UvicornServer) -> ProxyTokenAuth:
    fake.reset()
    return ProxyTokenAuth.from_token_response(
        server.url + "/auth/token", fake.mint(), refresh_margin=MARGIN, clock=clock
    )


def ask(client: openai.OpenAI) -> str | None:
    reply = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    return reply.choices[0].message.content


async def ask_async(client: openai.AsyncOpenAI) -> str | None:
    reply = await client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}]
    )
    return reply.choices[0].message.content


def concurrently(n: int, call: Callable[[], str | None]) -> list[str | None]:
    """``n`` calls from ``n`` threads released together."""
    barrier = threading.Barrier(n)

    def run() -> str | None:
        barrier.wait()
        return call()

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(lambda _: run(), range(n)))


# ---- the openai SDK through an expiry and a 401 --------------------------------------------


def test_openai_sync_refreshes_once_for_twenty_threads(
    auth: ProxyTokenAuth, fake: FakeProxy, clock: Clock, server: UvicornServer
) -> None:
    with httpx.Client(auth=auth) as http:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", http_client=http)
        assert ask(client) == "ok"
        first = auth.tokens
        clock.now += TTL - MARGIN / 2  # inside the margin: refreshed before it expires
        fake.refresh_delay = 0.1
        assert concurrently(CONCURRENCY, lambda: ask(client)) == ["ok"] * CONCURRENCY
        clock.now += TTL  # well past expiry: the caller still notices nothing
        assert concurrently(CONCURRENCY, lambda: ask(client)) == ["ok"] * CONCURRENCY
    assert fake.refresh_calls == 2
    assert fake.api_calls == 1 + 2 * CONCURRENCY  # no request was rejected and retried
    assert auth.tokens.refresh_token != first.refresh_token


@pytest.mark.anyio
async def test_openai_async_refreshes_once_for_twenty_tasks(
    auth: ProxyTokenAuth, fake: FakeProxy, clock: Clock, server: UvicornServer
) -> None:
    async with httpx.AsyncClient(auth=auth) as http:
        client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", http_client=http)
        assert await ask_async(client) == "ok"
        clock.now += TTL + 1  # expired
        fake.refresh_delay = 0.1
        replies = await asyncio.gather(*(ask_async(client) for _ in range(CONCURRENCY)))
    assert replies == ["ok"] * CONCURRENCY
    assert fake.refresh_calls == 1
    assert fake.api_calls == 1 + CONCURRENCY


def test_a_401_refreshes_once_and_retries_once_for_all_threads(
    auth: ProxyTokenAuth, fake: FakeProxy, server: UvicornServer
) -> None:
    with httpx.Client(auth=auth) as http:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", http_client=http)
        assert ask(client) == "ok"
        fake.access.clear()  # the server forgot the access token: the client cannot know
        fake.refresh_delay = 0.1
        assert concurrently(CONCURRENCY, lambda: ask(client)) == ["ok"] * CONCURRENCY
    assert fake.refresh_calls == 1
    assert fake.api_calls == 1 + 2 * CONCURRENCY


@pytest.mark.anyio
async def test_a_401_refreshes_once_and_retries_once_for_all_tasks(
    auth: ProxyTokenAuth, fake: FakeProxy, server: UvicornServer
) -> None:
    async with httpx.AsyncClient(auth=auth) as http:
        client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", http_client=http)
        fake.access.clear()
        replies = await asyncio.gather(*(ask_async(client) for _ in range(CONCURRENCY)))
    assert replies == ["ok"] * CONCURRENCY
    assert fake.refresh_calls == 1


def test_a_second_401_is_the_answer_not_a_loop(
    auth: ProxyTokenAuth, fake: FakeProxy, server: UvicornServer
) -> None:
    fake.reject_all = True
    with httpx.Client(auth=auth) as http:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", http_client=http)
        with pytest.raises(openai.AuthenticationError):
            ask(client)
    assert (fake.refresh_calls, fake.api_calls) == (1, 2)


@pytest.mark.anyio
async def test_a_second_401_is_the_answer_not_a_loop_async(
    auth: ProxyTokenAuth, fake: FakeProxy, server: UvicornServer
) -> None:
    fake.reject_all = True
    async with httpx.AsyncClient(auth=auth) as http:
        client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", http_client=http)
        with pytest.raises(openai.AuthenticationError):
            await ask_async(client)
    assert (fake.refresh_calls, fake.api_calls) == (1, 2)


def test_a_revoked_pair_raises_invalid_grant_and_stops_asking(
    auth: ProxyTokenAuth, fake: FakeProxy, clock: Clock, server: UvicornServer
) -> None:
    fake.revoke_family()
    clock.now += TTL + 1
    with httpx.Client(auth=auth) as http:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", http_client=http)
        # The SDK wraps only transport errors: ours reaches the caller as it is, unretried.
        with pytest.raises(InvalidGrantError, match="invalid_grant"):
            ask(client)
        with pytest.raises(InvalidGrantError):
            http.get(server.url + "/v1/models")
    assert fake.refresh_calls == 1  # the SDK's own retries did not spend it again
    assert fake.api_calls == 0


def test_rotated_pairs_are_persisted_and_the_old_refresh_token_is_dead(
    fake: FakeProxy, clock: Clock, server: UvicornServer
) -> None:
    fake.reset()
    saved: list[ProxyTokens] = []
    auth = ProxyTokenAuth.from_token_response(
        server.url + "/auth/token", fake.mint(), on_refresh=saved.append, clock=clock
    )
    old = auth.tokens.refresh_token
    with httpx.Client(auth=auth) as http:
        for _ in range(3):
            clock.now += TTL
            assert http.post(server.url + "/v1/chat/completions").status_code == 200
    assert len(saved) == 3
    assert len({t.refresh_token for t in saved} | {old}) == 4
    assert saved[-1] == auth.tokens
    assert saved[-1].expires_at == clock.now + TTL
    # Reusing a rotated refresh token is theft: the server revokes the family.
    reused = httpx.post(
        server.url + "/auth/token", data={"grant_type": "refresh_token", "refresh_token": old}
    )
    assert (reused.status_code, reused.json()) == (400, {"error": "invalid_grant"})
    assert fake.access == {}


def test_sync_and_async_clients_sharing_one_pair_refresh_once(
    auth: ProxyTokenAuth, fake: FakeProxy, clock: Clock, server: UvicornServer
) -> None:
    clock.now += TTL + 1
    fake.refresh_delay = 0.1
    url = server.url + "/v1/chat/completions"

    async def many() -> list[int]:
        async with httpx.AsyncClient(auth=auth) as http:
            responses = await asyncio.gather(*(http.post(url) for _ in range(10)))
        return [r.status_code for r in responses]

    with httpx.Client(auth=auth) as http, ThreadPoolExecutor(1) as pool:
        in_thread = pool.submit(lambda: [http.post(url).status_code for _ in range(3)])
        assert asyncio.run(many()) == [200] * 10
        assert in_thread.result() == [200] * 3
    assert fake.refresh_calls == 1


# ---- the anthropic SDK, through the httpx2 face --------------------------------------------


def test_anthropic_sync_through_an_expiry(
    auth: ProxyTokenAuth, fake: FakeProxy, clock: Clock, server: UvicornServer
) -> None:
    with httpx2.Client(auth=auth.for_httpx2()) as http:
        client = anthropic.Anthropic(base_url=server.url, api_key="unused", http_client=http)
        for _ in range(2):
            reply = client.messages.create(
                model="m", max_tokens=8, messages=[{"role": "user", "content": "hi"}]
            )
            assert reply.content[0].type == "text"
            clock.now += TTL
    assert fake.refresh_calls == 1
    # Only the proxy token is sent, never the SDK's placeholder key.
    assert all("x-api-key" not in headers for headers in fake.api_headers)


@pytest.mark.anyio
async def test_anthropic_async_refreshes_once_for_twenty_tasks(
    auth: ProxyTokenAuth, fake: FakeProxy, clock: Clock, server: UvicornServer
) -> None:
    clock.now += TTL + 1
    fake.refresh_delay = 0.1
    async with httpx2.AsyncClient(auth=auth.for_httpx2()) as http:
        client = anthropic.AsyncAnthropic(base_url=server.url, api_key="unused", http_client=http)
        replies = await asyncio.gather(
            *(
                client.messages.create(
                    model="m", max_tokens=8, messages=[{"role": "user", "content": "hi"}]
                )
                for _ in range(CONCURRENCY)
            )
        )
    assert len(replies) == CONCURRENCY
    assert fake.refresh_calls == 1


def test_openai_through_the_httpx2_face_for_typed_code(
    auth: ProxyTokenAuth, fake: FakeProxy, clock: Clock, server: UvicornServer
) -> None:
    # The SDK's signature says httpx2.Client; mypy refuses an httpx.Client there.
    with httpx2.Client(auth=auth.for_httpx2()) as http:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", http_client=http)
        assert ask(client) == "ok"
        clock.now += TTL
        assert ask(client) == "ok"
    assert fake.refresh_calls == 1


# ---- unit: the flow against httpx.MockTransport --------------------------------------------


class Endpoint:
    """A scripted token endpoint and API behind one MockTransport."""

    def __init__(self, *answers: httpx.Response) -> None:
        self.answers = list(answers)
        self.forms: list[dict[str, str]] = []
        self.api: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/auth/token":
            self.forms.append({k: v[0] for k, v in parse_qs(request.content.decode()).items()})
            return self.answers.pop(0)
        self.api.append(request)
        return httpx.Response(200, json={"ok": True})


def pair(access: str = "a2", refresh: str = "r2", **extra: Any) -> httpx.Response:
    return httpx.Response(
        200,
        json={"access_token": access, "refresh_token": refresh, "token_type": "Bearer", **extra},
    )


def jwt(claims: dict[str, Any]) -> str:
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"eyJhbGciOiJFZERTQSJ9.{body}.c2ln"


def test_without_an_access_token_the_first_request_refreshes() -> None:
    endpoint = Endpoint(pair(expires_in=60))
    auth = ProxyTokenAuth("http://p/auth/token", refresh_token="r1", clock=lambda: 1000.0)
    with httpx.Client(auth=auth, transport=httpx.MockTransport(endpoint)) as http:
        http.post("http://p/v1/x", headers={"x-api-key": "placeholder"}, content=b"{}")
        http.post("http://p/v1/x")
    assert endpoint.forms == [{"grant_type": "refresh_token", "refresh_token": "r1"}]
    assert [r.headers["authorization"] for r in endpoint.api] == ["Bearer a2"] * 2
    assert "x-api-key" not in endpoint.api[0].headers
    assert auth.tokens == ProxyTokens("r2", "a2", 1060.0)


def test_a_missing_refresh_token_keeps_the_old_one_and_jwt_exp_sets_the_expiry() -> None:
    endpoint = Endpoint(pair(access=jwt({"exp": 5000}), refresh=""))
    auth = ProxyTokenAuth("http://p/auth/token", refresh_token="r1", clock=lambda: 1000.0)
    with httpx.Client(auth=auth, transport=httpx.MockTransport(endpoint)) as http:
        http.get("http://p/v1/x")
    assert (auth.tokens.refresh_token, auth.tokens.expires_at) == ("r1", 5000.0)


@pytest.mark.parametrize(
    ("token", "expiry"),
    [
        (jwt({"exp": 1234}), 1234.0),
        (jwt({"exp": "soon"}), None),
        (jwt({"exp": True}), None),
        ("a.!!!.c", None),
        ("a.bm90IGpzb24.c", None),
        ("opaque", None),
    ],
)
def test_the_expiry_is_read_from_a_jwt_when_not_given(token: str, expiry: float | None) -> None:
    auth = ProxyTokenAuth("http://p/auth/token", refresh_token="r", access_token=token)
    assert auth.tokens.expires_at == expiry


def test_the_margin_is_at_most_half_the_lifetime() -> None:
    now = [1000.0]
    endpoint = Endpoint(pair(expires_in=30))
    auth = ProxyTokenAuth(
        "http://p/auth/token",
        refresh_token="r1",
        access_token="a1",
        expires_at=1020.0,
        refresh_margin=60.0,
        clock=lambda: now[0],
    )
    with httpx.Client(auth=auth, transport=httpx.MockTransport(endpoint)) as http:
        http.get("http://p/v1/x")  # 20 s left: refresh at 10 s before expiry, not 60
        now[0] = 1011.0
        http.get("http://p/v1/x")
    assert [r.headers["authorization"] for r in endpoint.api] == ["Bearer a1", "Bearer a2"]


def test_an_unknown_lifetime_refreshes_on_a_401_only() -> None:
    auth = ProxyTokenAuth("http://p/auth/token", refresh_token="r1", access_token="opaque")
    endpoint = Endpoint()
    with httpx.Client(auth=auth, transport=httpx.MockTransport(endpoint)) as http:
        http.get("http://p/v1/x")
    assert endpoint.forms == []


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (httpx.Response(503, text="down"), "HTTP 503"),
        (httpx.Response(400, json={"error": "invalid_request"}), r"HTTP 400 \(invalid_request\)"),
        (httpx.Response(400, json={"error": "not a code: r1"}), r"HTTP 400\.$"),
        (httpx.Response(200, json={"token_type": "Bearer"}), "no access token"),
        (httpx.Response(200, json={"access_token": "a", "token_type": "mac"}), "no bearer"),
    ],
)
def test_a_failed_refresh_is_transient(answer: httpx.Response, message: str) -> None:
    endpoint = Endpoint(answer, pair())
    auth = ProxyTokenAuth("http://p/auth/token", refresh_token="r1")
    with httpx.Client(auth=auth, transport=httpx.MockTransport(endpoint)) as http:
        with pytest.raises(TokenRefreshError, match=message) as caught:
            http.get("http://p/v1/x")
        assert not isinstance(caught.value, InvalidGrantError)
        assert http.get("http://p/v1/x").status_code == 200  # the next request tries again
    assert len(endpoint.forms) == 2


def test_invalid_grant_is_final() -> None:
    endpoint = Endpoint(httpx.Response(400, json={"error": "invalid_grant"}))
    auth = ProxyTokenAuth("http://p/auth/token", refresh_token="r1")
    with httpx.Client(auth=auth, transport=httpx.MockTransport(endpoint)) as http:
        for _ in range(3):
            with pytest.raises(InvalidGrantError) as caught:
                http.get("http://p/v1/x")
            assert (caught.value.status_code, caught.value.error) == (400, "invalid_grant")
    assert len(endpoint.forms) == 1


@pytest.mark.anyio
async def test_an_async_client_awaits_an_async_callback() -> None:
    saved: list[ProxyTokens] = []

    async def save(tokens: ProxyTokens) -> None:
        await asyncio.sleep(0)
        saved.append(tokens)

    endpoint = Endpoint(pair())
    auth = ProxyTokenAuth("http://p/auth/token", refresh_token="r1", on_refresh=save)
    async with httpx.AsyncClient(auth=auth, transport=httpx.MockTransport(endpoint)) as http:
        await http.get("http://p/v1/x")
    assert [t.access_token for t in saved] == ["a2"]


def test_a_sync_client_refuses_an_async_callback() -> None:
    async def save(tokens: ProxyTokens) -> None:
        pass

    auth = ProxyTokenAuth("http://p/auth/token", refresh_token="r1", on_refresh=save)
    with httpx.Client(auth=auth, transport=httpx.MockTransport(Endpoint(pair()))) as http:
        with pytest.raises(TypeError, match="sync"):
            http.get("http://p/v1/x")


def test_one_auth_serves_successive_event_loops() -> None:
    endpoint = Endpoint(pair(expires_in=60), pair(access="a3", expires_in=60))
    now = [1000.0]
    auth = ProxyTokenAuth("http://p/auth/token", refresh_token="r1", clock=lambda: now[0])

    async def call() -> None:
        transport = httpx.MockTransport(endpoint)
        async with httpx.AsyncClient(auth=auth, transport=transport) as http:
            await asyncio.gather(http.get("http://p/v1/x"), http.get("http://p/v1/x"))

    asyncio.run(call())
    now[0] += 120
    asyncio.run(call())
    assert len(endpoint.forms) == 2


def test_saved_pairs_round_trip_and_secrets_stay_out_of_reprs() -> None:
    tokens = ProxyTokens("refresh-secret", "access-secret", 99.0)
    auth = ProxyTokenAuth.from_token_response("http://p/auth/token", tokens.to_dict())
    assert auth.tokens == tokens
    for text in (repr(tokens), repr(auth), repr(auth.for_httpx2())):
        assert "secret" not in text
    fresh = ProxyTokens.from_response(
        {"access_token": "a", "refresh_token": "r", "expires_in": 10}, now=5.0
    )
    assert fresh.expires_at == 15.0
