"""Routing: wire format and model choose the provider; bad requests never reach one."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import httpx
import pytest

from llm_proxy_mw import (
    EchoTransport,
    HealthPolicy,
    HealthRegistry,
    HttpxTransport,
    LLMProxy,
    Provider,
    Router,
    build_proxy,
)
from llm_proxy_mw.config import ProviderConfig
from llm_proxy_mw.context import Attempt
from llm_proxy_mw.errors import (
    ModelNotFoundError,
    NotFoundError,
    ProviderUnavailableError,
    UntranslatableError,
)
from llm_proxy_mw.routing import Plan
from llm_proxy_mw.wire import WireFormat
from tests.codec_double import registered

OPENAI = WireFormat.OPENAI
ANTHROPIC = WireFormat.ANTHROPIC


def provider(
    name: str, kind: str = "openai", models: list[str] | None = None, **kw: Any
) -> Provider:
    config = ProviderConfig(kind=kind, models=models or ["*"], **kw)  # type: ignore[arg-type]
    return Provider.from_config(name, config, EchoTransport())


def choose(router: Router, wire_format: WireFormat, model: str | None) -> str:
    """The deployment of a new request's first attempt."""
    return router.plan(wire_format, model).next().name


def fail(plan: Plan, name: str) -> None:
    """Tell the plan that an attempt on ``name`` failed."""
    plan.record(Attempt(name, "server_error", 503, 0.0))


def sequence(*values: float) -> Any:
    """A ``random`` that returns the given values in order."""
    it: Iterator[float] = iter(values)
    return lambda: next(it)


# -- Router ----------------------------------------------------------------------------------


def test_exact_model_beats_wildcard_whatever_the_order() -> None:
    router = Router([provider("any"), provider("exact", models=["gpt-4o"])])
    assert choose(router, OPENAI, "gpt-4o") == "exact"
    assert choose(router, OPENAI, "gpt-4o-mini") == "any"


def test_anthropic_provider_is_never_chosen_for_openai_paths() -> None:
    router = Router(
        [provider("claude", "anthropic", ["shared", "*"]), provider("gpt", "openai", ["gpt-4o"])]
    )
    assert choose(router, OPENAI, "gpt-4o") == "gpt"
    assert choose(router, ANTHROPIC, "shared") == "claude"
    assert choose(router, ANTHROPIC, "gpt-4o") == "claude"  # its wildcard
    # An endpoint without an API (embeddings) is never translated: a 400 naming the model.
    with pytest.raises(UntranslatableError) as info:
        router.plan(OPENAI, "shared")
    assert info.value.param == "model"
    with pytest.raises(NotFoundError):
        Router([provider("claude", "anthropic")]).plan(OPENAI, None)


def test_openai_provider_is_never_chosen_for_anthropic_paths() -> None:
    router = Router([provider("gpt", "openai"), provider("claude", "anthropic", ["claude-x"])])
    assert choose(router, ANTHROPIC, "claude-x") == "claude"
    with pytest.raises(ModelNotFoundError):
        router.plan(ANTHROPIC, "gpt-4o")


def test_echo_serves_both_wire_formats() -> None:
    router = Router([provider("demo", "echo")])
    assert choose(router, OPENAI, "anything") == "demo"
    assert choose(router, ANTHROPIC, "anything") == "demo"
    assert choose(router, OPENAI, None) == "demo"
    assert choose(router, ANTHROPIC, None) == "demo"


def test_weights_split_the_load() -> None:
    light = provider("light", models=["m"], weight=1)
    heavy = provider("heavy", models=["m"], weight=3)
    points = [i / 100 for i in range(100)]
    router = Router([light, heavy], random=sequence(*points))
    chosen = [choose(router, OPENAI, "m") for _ in points]
    assert chosen.count("light") == 25
    assert chosen.count("heavy") == 75
    # Low draws go to the first provider, high ones to the second: the split is by weight,
    # not by alternation.
    assert set(chosen[:25]) == {"light"}
    assert set(chosen[25:]) == {"heavy"}


def test_single_candidate_does_not_draw() -> None:
    def no_random() -> float:
        raise AssertionError("random drawn for a single candidate")

    router = Router([provider("only", models=["m"])], random=no_random)
    assert choose(router, OPENAI, "m") == "only"


@pytest.mark.parametrize(("draw", "first", "other"), [(0.0, "a", "b"), (0.99, "b", "a")])
def test_a_provider_the_plan_moved_away_from_is_skipped(
    draw: float, first: str, other: str
) -> None:
    router = Router([provider("a", models=["m"]), provider("b", models=["m"])], random=lambda: draw)
    plan = router.plan(OPENAI, "m")
    assert plan.next().name == first
    fail(plan, first)
    assert plan.after_failure() == "elsewhere"
    assert plan.next().name == other
    # Nothing else left: the same provider again, while its budget allows; never the first.
    fail(plan, other)
    assert plan.after_failure() == "same"
    assert plan.next().name == other


def test_nothing_left_to_admit_is_provider_unavailable() -> None:
    router = Router([provider("a", models=["m"]), provider("b", models=["m"])])
    plan = router.plan(OPENAI, "m")
    fail(plan, plan.next().name)
    assert plan.after_failure() == "elsewhere"
    left = plan.next().name
    for _ in range(HealthPolicy().min_calls):
        router.health[left].record("server_error")
    with pytest.raises(ProviderUnavailableError) as info:
        plan.next()
    assert info.value.status_code == 503


def test_the_health_registry_must_know_every_provider() -> None:
    with pytest.raises(ValueError, match="'b'"):
        Router([provider("a"), provider("b")], health=HealthRegistry(["a"]))


def test_unknown_model_names_the_model() -> None:
    router = Router([provider("a", models=["gpt-4o"])])
    with pytest.raises(ModelNotFoundError) as info:
        router.plan(OPENAI, "gpt-9-turbo")
    assert "gpt-9-turbo" in info.value.message
    assert info.value.status_code == 404


def test_unknown_model_message_is_bounded() -> None:
    router = Router([provider("a", models=["gpt-4o"])])
    with pytest.raises(ModelNotFoundError) as info:
        router.plan(OPENAI, "x" * 10_000)
    assert len(info.value.message) < 300


def test_no_model_goes_to_the_first_provider_of_the_wire_format() -> None:
    router = Router(
        [
            provider("claude", "anthropic", ["claude-x"]),
            provider("gpt", "openai", ["gpt-4o"]),
            provider("gpt2", "openai"),
        ],
        random=lambda: 0.99,
    )
    assert choose(router, OPENAI, None) == "gpt"
    assert choose(router, ANTHROPIC, None) == "claude"


def test_models_lists_configured_names_once_in_config_order() -> None:
    router = Router(
        [
            provider("a", models=["m1", "*"]),
            provider("b", "anthropic", ["m2", "m1"]),
        ]
    )
    assert router.models() == [("m1", "a"), ("m2", "b")]


# -- RoutingMiddleware through the whole stack -----------------------------------------------


class Upstream:
    """An ``httpx.MockTransport`` handler that records every request it got."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return httpx.Response(200, json={"served_by": self.name})


@pytest.fixture
def upstreams() -> dict[str, Upstream]:
    return {name: Upstream(name) for name in ("gpt", "gpt-any", "claude")}


@pytest.fixture
def proxy(upstreams: dict[str, Upstream]) -> LLMProxy:
    config = {
        "providers": {
            "gpt": {"kind": "openai", "base_url": "https://gpt.example/v1", "models": ["gpt-4o"]},
            "claude": {
                "kind": "anthropic",
                "base_url": "https://claude.example/v1",
                "models": ["claude-x"],
            },
            "gpt-any": {
                "kind": "openai",
                "base_url": "https://gpt-any.example/v1",
                "models": ["gpt-4o-mini"],
            },
        },
        "max_body_bytes": 4096,
    }
    transports = {n: HttpxTransport(httpx.MockTransport(u)) for n, u in upstreams.items()}
    return build_proxy(config, transports=transports)


@pytest.fixture
async def client(proxy: LLMProxy) -> AsyncIterator[httpx.AsyncClient]:
    async with proxy.lifespan():
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=proxy), base_url="http://proxy"
        ) as client:
            yield client


def total_calls(upstreams: dict[str, Upstream]) -> int:
    return sum(len(u.requests) for u in upstreams.values())


def assert_openai_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert {"message", "type", "code"} <= set(error)
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    return error


def assert_anthropic_error(response: httpx.Response, status: int, type_: str) -> dict[str, Any]:
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["type"] == "error"
    assert set(body["error"]) == {"type", "message"}
    assert body["error"]["type"] == type_
    return body["error"]


BAD_BODIES = {
    "malformed json": b'{"model": "gpt-4o", ',
    "invalid utf-8": b'{"model": "gpt-4o", "x": "\xff\xfe"}',
    "non-object": b'["gpt-4o"]',
    "string": b'"gpt-4o"',
    "numeric model": b'{"model": 123}',
    "empty model": b'{"model": ""}',
    "list model": b'{"model": ["gpt-4o"]}',
}


@pytest.mark.anyio
@pytest.mark.parametrize("body", BAD_BODIES.values(), ids=BAD_BODIES.keys())
async def test_bad_body_is_400_in_openai_shape_and_never_reaches_a_provider(
    client: httpx.AsyncClient, upstreams: dict[str, Upstream], body: bytes
) -> None:
    response = await client.post(
        "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
    )
    error = assert_openai_error(response, 400, "invalid_request")
    assert error["type"] == "invalid_request_error"
    assert total_calls(upstreams) == 0


@pytest.mark.anyio
@pytest.mark.parametrize("body", BAD_BODIES.values(), ids=BAD_BODIES.keys())
async def test_bad_body_is_400_in_anthropic_shape_and_never_reaches_a_provider(
    client: httpx.AsyncClient, upstreams: dict[str, Upstream], body: bytes
) -> None:
    response = await client.post(
        "/v1/messages", content=body, headers={"content-type": "application/json"}
    )
    assert_anthropic_error(response, 400, "invalid_request_error")
    assert total_calls(upstreams) == 0


@pytest.mark.anyio
async def test_body_over_the_limit_is_413_and_never_reaches_a_provider(
    client: httpx.AsyncClient, upstreams: dict[str, Upstream]
) -> None:
    body = json.dumps({"model": "gpt-4o", "pad": "x" * 5000}).encode()
    response = await client.post(
        "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
    )
    assert_openai_error(response, 413, "request_too_large")
    response = await client.post(
        "/v1/messages", content=body, headers={"content-type": "application/json"}
    )
    assert_anthropic_error(response, 413, "request_too_large")
    assert total_calls(upstreams) == 0


@pytest.mark.anyio
async def test_requests_reach_the_provider_serving_their_model(
    client: httpx.AsyncClient, upstreams: dict[str, Upstream]
) -> None:
    response = await client.post("/v1/chat/completions", json={"model": "gpt-4o-mini"})
    assert response.json() == {"served_by": "gpt-any"}
    assert response.headers["x-llm-proxy-provider"] == "gpt-any"
    response = await client.post("/v1/messages", json={"model": "claude-x"})
    assert response.json() == {"served_by": "claude"}
    assert [len(upstreams[n].requests) for n in ("gpt", "gpt-any", "claude")] == [0, 1, 1]
    # The body reaches the provider byte for byte, though routing parsed it.
    assert json.loads(upstreams["claude"].requests[0].content) == {"model": "claude-x"}


@pytest.mark.anyio
async def test_unknown_model_is_404_naming_it(
    client: httpx.AsyncClient, upstreams: dict[str, Upstream]
) -> None:
    response = await client.post("/v1/chat/completions", json={"model": "gpt-9"})
    error = assert_openai_error(response, 404, "model_not_found")
    assert "gpt-9" in error["message"]
    response = await client.post("/v1/messages", json={"model": "claude-9"})
    error = assert_anthropic_error(response, 404, "not_found_error")
    assert "claude-9" in error["message"]
    assert total_calls(upstreams) == 0


@pytest.fixture
def no_codecs() -> Iterator[None]:
    """No codec registered while the proxy is built: no model crosses kinds."""
    with registered():
        yield


@pytest.mark.anyio
async def test_model_of_the_other_wire_format_is_404_without_a_codec(
    no_codecs: None, client: httpx.AsyncClient, upstreams: dict[str, Upstream]
) -> None:
    response = await client.post("/v1/messages", json={"model": "gpt-4o"})
    assert_anthropic_error(response, 404, "not_found_error")
    response = await client.post("/v1/chat/completions", json={"model": "claude-x"})
    assert_openai_error(response, 404, "model_not_found")
    assert total_calls(upstreams) == 0


@pytest.mark.anyio
async def test_models_list_in_openai_shape(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/models")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "object": "list",
        "data": [
            {"id": "gpt-4o", "object": "model", "created": 0, "owned_by": "gpt"},
            {"id": "claude-x", "object": "model", "created": 0, "owned_by": "claude"},
            {"id": "gpt-4o-mini", "object": "model", "created": 0, "owned_by": "gpt-any"},
        ],
    }


@pytest.mark.anyio
async def test_models_list_in_anthropic_shape_with_anthropic_version(
    client: httpx.AsyncClient, upstreams: dict[str, Upstream]
) -> None:
    response = await client.get("/v1/models", headers={"anthropic-version": "2023-06-01"})
    assert response.status_code == 200
    body = response.json()
    assert [m["id"] for m in body["data"]] == ["gpt-4o", "claude-x", "gpt-4o-mini"]
    for model in body["data"]:
        assert model["type"] == "model"
        assert set(model) == {"type", "id", "display_name", "created_at"}
    assert body["has_more"] is False
    assert body["first_id"] == "gpt-4o"
    assert body["last_id"] == "gpt-4o-mini"
    assert total_calls(upstreams) == 0


@pytest.mark.anyio
async def test_a_configured_model_is_answered_by_the_proxy(
    client: httpx.AsyncClient, upstreams: dict[str, Upstream]
) -> None:
    response = await client.get("/v1/models/claude-x")
    assert response.status_code == 200
    assert response.json() == {
        "id": "claude-x",
        "object": "model",
        "created": 0,
        "owned_by": "claude",
    }
    response = await client.get("/v1/models/gpt-4o", headers={"anthropic-version": "2023-06-01"})
    assert response.json() == {
        "type": "model",
        "id": "gpt-4o",
        "display_name": "gpt-4o",
        "created_at": "1970-01-01T00:00:00Z",
    }
    assert total_calls(upstreams) == 0


@pytest.mark.anyio
async def test_an_unknown_model_is_404_in_the_callers_format(
    client: httpx.AsyncClient, upstreams: dict[str, Upstream]
) -> None:
    error = assert_openai_error(await client.get("/v1/models/gpt-9"), 404, "model_not_found")
    assert "gpt-9" in error["message"]
    response = await client.get("/v1/models/org/gpt-9", headers={"anthropic-version": "2023-06-01"})
    assert "org/gpt-9" in assert_anthropic_error(response, 404, "not_found_error")["message"]
    assert total_calls(upstreams) == 0


@pytest.mark.anyio
async def test_request_without_model_goes_to_the_first_provider(
    client: httpx.AsyncClient, upstreams: dict[str, Upstream]
) -> None:
    response = await client.get("/v1/files", params={"purpose": "batch"})
    assert response.status_code == 200
    assert response.headers["x-llm-proxy-provider"] == "gpt"
    assert str(upstreams["gpt"].requests[0].url) == "https://gpt.example/v1/files?purpose=batch"

    response = await client.post("/v1/chat/completions", json={"messages": []})
    assert response.headers["x-llm-proxy-provider"] == "gpt"
    response = await client.post("/v1/messages", json={"messages": []})
    assert response.headers["x-llm-proxy-provider"] == "claude"
    response = await client.post("/v1/chat/completions", json={"model": None})
    assert response.headers["x-llm-proxy-provider"] == "gpt"


@pytest.mark.anyio
async def test_non_json_body_is_not_parsed_and_goes_to_the_first_provider(
    client: httpx.AsyncClient, upstreams: dict[str, Upstream]
) -> None:
    response = await client.post(
        "/v1/files", content=b"\xff not json", headers={"content-type": "multipart/form-data"}
    )
    assert response.status_code == 200
    assert response.headers["x-llm-proxy-provider"] == "gpt"
    assert upstreams["gpt"].requests[0].content == b"\xff not json"


@pytest.mark.anyio
async def test_echo_serves_both_paths_end_to_end() -> None:
    proxy = build_proxy({"providers": {"demo": {"kind": "echo"}}})
    async with proxy.lifespan():
        transport = httpx.ASGITransport(app=proxy)
        async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as client:
            openai = await client.post(
                "/v1/chat/completions",
                json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
            )
            anthropic = await client.post(
                "/v1/messages",
                json={
                    "model": "m",
                    "max_tokens": 10,
                    "messages": [{"role": "user", "content": "hi"}],
                },
            )
    assert openai.status_code == anthropic.status_code == 200
    assert openai.json()["object"] == "chat.completion"
    assert anthropic.json()["type"] == "message"


# -- request bodies as a server delivers them -----------------------------------------------


async def call(
    app: Any, path: str, chunks: list[bytes], headers: list[tuple[bytes, bytes]]
) -> tuple[int, bytes]:
    """Drive the app with a hand-made scope and a body in several ``http.request`` messages."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), *headers],
    }
    messages = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
        for i, c in enumerate(chunks)
    ]
    done = anyio.Event()
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            done.set()

    await app(scope, receive, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


@pytest.mark.anyio
async def test_body_in_several_messages_reaches_the_provider_whole(
    proxy: LLMProxy, upstreams: dict[str, Upstream]
) -> None:
    async with proxy.lifespan():
        status, _ = await call(
            proxy, "/v1/chat/completions", [b'{"mod', b'el": "gpt', b'-4o"}'], []
        )
    assert status == 200
    assert upstreams["gpt"].requests[0].content == b'{"model": "gpt-4o"}'


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("headers", "chunks", "status"),
    [
        ([(b"content-length", b"abc")], [b"{}"], 400),
        ([(b"content-length", b"-1")], [b"{}"], 400),
        ([(b"content-length", b"999999")], [b"{}"], 413),  # refused before reading
        ([], [b"x" * 3000, b"x" * 3000], 413),  # no length declared: counted as it arrives
        ([], [b'{"a":' + b"[" * 1500 + b"]" * 1500 + b"}"], 400),  # too deep to parse
    ],
    ids=[
        "length not a number",
        "negative length",
        "declared too large",
        "streamed too large",
        "nested too deeply",
    ],
)
async def test_bad_bodies_as_a_server_delivers_them_never_reach_a_provider(
    proxy: LLMProxy,
    upstreams: dict[str, Upstream],
    headers: list[tuple[bytes, bytes]],
    chunks: list[bytes],
    status: int,
) -> None:
    async with proxy.lifespan():
        got, body = await call(proxy, "/v1/messages", chunks, headers)
    assert got == status
    assert json.loads(body)["type"] == "error"
    assert total_calls(upstreams) == 0


@pytest.mark.anyio
async def test_empty_post_body_goes_to_the_first_provider(
    client: httpx.AsyncClient, upstreams: dict[str, Upstream]
) -> None:
    response = await client.post("/v1/chat/completions", content=b"")
    assert response.status_code == 200
    assert response.headers["x-llm-proxy-provider"] == "gpt"


def test_weighted_choice_never_falls_off_the_end() -> None:
    router = Router([provider("a", models=["m"]), provider("b", models=["m"])], random=lambda: 1.0)
    assert choose(router, OPENAI, "m") == "b"
