"""A provider's usage numbers are untrusted input, end to end into the metrics history.

The proxy is ``build_proxy`` with two providers on ``httpx.MockTransport``: ``good``
reports 3 prompt and 4 completion tokens, ``absurd`` the same but a prompt count no store
or float can hold (10**20, 10**400, or 5,000 digits), in JSON or in SSE. The history store
is a SQLite file or a real ``redis-server``. The client must get the provider's bytes
untouched, the absurd count must be ignored, and every other number must be stored exactly
once however many flushes follow.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from llm_proxy_mw import HttpxTransport, build_proxy
from llm_proxy_mw.store import open_metrics_store
from tests.fakes.redis_server import redis_server

pytestmark = pytest.mark.anyio

ABSURD = {"1e20": b"1" + b"0" * 20, "1e400": b"1" + b"0" * 400, "5000 digits": b"9" * 5000}
SSE = "text/event-stream"


def usage_body(prompt: bytes, *, sse: bool) -> bytes:
    usage = b'"usage":{"prompt_tokens":' + prompt + b',"completion_tokens":4}'
    if sse:
        return b'data: {"id":"c","choices":[],' + usage + b"}\n\ndata: [DONE]\n\n"
    return b'{"id":"c","object":"chat.completion","choices":[],' + usage + b"}"


def answering(body: bytes, *, sse: bool) -> HttpxTransport:
    content_type = SSE if sse else "application/json"
    return HttpxTransport(
        httpx.MockTransport(
            lambda request: httpx.Response(
                200, headers={"content-type": content_type}, content=body
            )
        )
    )


def provider(name: str) -> dict[str, object]:
    return {"kind": "openai", "base_url": f"http://{name}.invalid/v1", "models": [f"{name}-model"]}


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/s.db"
    else:
        with redis_server() as server:
            yield server.url


@pytest.mark.parametrize("number", ABSURD.values(), ids=ABSURD.keys())
@pytest.mark.parametrize("sse", [False, True], ids=["json", "sse"])
async def test_an_absurd_usage_count_is_ignored_and_everything_else_is_stored_once(
    store_url: str, number: bytes, sse: bool
) -> None:
    good, absurd = usage_body(b"3", sse=sse), usage_body(number, sse=sse)
    proxy = build_proxy(
        {
            "providers": {"good": provider("good"), "absurd": provider("absurd")},
            "store": {"url": store_url},
        },
        transports={"good": answering(good, sse=sse), "absurd": answering(absurd, sse=sse)},
    )
    transport = httpx.ASGITransport(app=proxy)
    async with proxy.lifespan(), httpx.AsyncClient(transport=transport, base_url="http://h") as c:
        bodies = []
        for model in ("good-model", "absurd-model", "good-model"):
            chat = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": sse}
            if sse:  # asked for, the usage chunk reaches the client as the provider sent it
                chat["stream_options"] = {"include_usage": True}
            response = await c.post("/v1/chat/completions", json=chat)
            assert response.status_code == 200
            bodies.append(response.content)
        assert proxy.history is not None
        for _ in range(3):  # nothing is kept back to be written again
            assert await proxy.history.flush()
        exposed = (await c.get("/metrics")).text
    assert bodies == [good, absurd, good]
    tokens = {
        line.partition("{")[2]
        for line in exposed.splitlines()
        if line.startswith("llm_proxy_tokens_total{")
    }
    assert tokens == {
        'kind="prompt",model="good-model",provider="good"} 6.0',
        'kind="completion",model="good-model",provider="good"} 8.0',
        'kind="completion",model="absurd-model",provider="absurd"} 4.0',
    }
    store = open_metrics_store(store_url)
    await store.open()
    try:
        stored = await store.buckets(0, 2**40)
        totals = await store.totals()
    finally:
        await store.close()
    # Summed over buckets: the requests may straddle a minute boundary.
    found: dict[str, tuple[int, int, int]] = {}
    for b in stored:
        count, prompt, completion = found.get(b.key.provider, (0, 0, 0))
        found[b.key.provider] = (
            count + b.count,
            prompt + b.prompt_tokens,
            completion + b.completion_tokens,
        )
    assert found == {"good": (2, 6, 8), "absurd": (1, 0, 4)}
    assert {key: value for key, value in totals.items() if key.startswith('["tokens"')} == {
        '["tokens","good","good-model","prompt"]': 6.0,
        '["tokens","good","good-model","completion"]': 8.0,
        '["tokens","absurd","absurd-model","completion"]': 4.0,
    }
