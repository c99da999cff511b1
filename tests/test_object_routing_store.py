"""Which provider owns which object: the stores (SQLite and Redis) forget after the TTL, a
store that fails never fails a request, and what the proxy reads to find the ids."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from llm_proxy_mw import HttpxTransport, LLMProxy, build_proxy
from llm_proxy_mw.errors import StoreError
from llm_proxy_mw.objects import ObjectOwners, ObjectRoutes
from llm_proxy_mw.store import SqliteMetricsStore, SqliteObjectOwners, open_object_owners
from llm_proxy_mw.store._owners_redis import RedisObjectOwners
from tests.fakes.clock import FakeClock
from tests.fakes.redis_server import RedisServer, redis_server

pytestmark = pytest.mark.anyio

DAY = 86_400.0
TTL = 30 * DAY


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


@pytest.fixture(params=["sqlite", "redis"])
def make_owners(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Callable[[FakeClock], ObjectOwners]:
    if request.param == "sqlite":
        return lambda clock: SqliteObjectOwners(str(tmp_path / "s.db"), ttl=TTL, clock=clock)
    server: RedisServer = request.getfixturevalue("redis")
    prefix = f"test:{request.node.name}:"
    return lambda clock: RedisObjectOwners(server.url, ttl=TTL, clock=clock, prefix=prefix)


async def test_an_owner_is_remembered_for_the_ttl_then_forgotten(
    make_owners: Callable[[FakeClock], ObjectOwners],
) -> None:
    clock = FakeClock(start=1_700_000_000.0)
    owners = make_owners(clock)
    await owners.open()
    try:
        await owners.record("file-1", "second")
        assert await owners.owner("file-1") == "second"
        assert await owners.owner("file-2") is None
        clock.advance(TTL - 1)
        assert await owners.owner("file-1") == "second"
        await owners.record("batch-1", "first")
        clock.advance(2)
        assert await owners.owner("file-1") is None
        assert await owners.owner("batch-1") == "first"
    finally:
        await owners.close()


async def test_sqlite_drops_expired_rows_as_it_records_new_ones(tmp_path: Path) -> None:
    clock = FakeClock(start=1_700_000_000.0)
    owners = SqliteObjectOwners(str(tmp_path / "s.db"), ttl=TTL, clock=clock)
    await owners.open()
    try:
        await owners.record("file-1", "first")
        clock.advance(TTL)
        await owners.record("file-2", "first")
    finally:
        await owners.close()
    with sqlite3.connect(tmp_path / "s.db") as conn:
        assert conn.execute("SELECT id FROM object_owners").fetchall() == [("file-2",)]


async def test_redis_lets_the_key_expire_with_the_ttl(redis: RedisServer) -> None:
    owners = RedisObjectOwners(redis.url, ttl=TTL, prefix="test:expiry:")
    await owners.open()
    try:
        await owners.record("file-1", "first")
        ttl = await owners._redis().ttl("test:expiry:file-1")
    finally:
        await owners.close()
    assert TTL - 60 < ttl <= TTL


def total_seen_by_another_process(path: Path) -> float:
    script = (
        "import sqlite3, sys\n"
        "print(sqlite3.connect(sys.argv[1]).execute('SELECT value FROM totals').fetchone()[0])"
    )
    run = [sys.executable, "-c", script, str(path)]
    return float(subprocess.run(run, capture_output=True, check=True, timeout=30).stdout)


async def test_the_history_beside_it_stays_visible_to_other_processes(tmp_path: Path) -> None:
    # Opening a second connection on the file must not drop the locks of the first (closing
    # any descriptor of a file drops them all): another process would then take the file for
    # unused, checkpoint and delete the WAL, and never see the history's later writes.
    path = tmp_path / "s.db"
    history = SqliteMetricsStore(str(path))
    owners = SqliteObjectOwners(str(path), ttl=TTL)
    await history.open()
    await owners.open()
    try:
        for expected in (1.0, 2.0):
            await history.add([], {"requests": 1.0})
            assert total_seen_by_another_process(path) == expected
    finally:
        await owners.close()
        await history.close()


def test_the_store_url_picks_the_backend(tmp_path: Path) -> None:
    assert isinstance(open_object_owners(f"sqlite:///{tmp_path}/s.db", ttl=1), SqliteObjectOwners)
    assert isinstance(open_object_owners("redis://127.0.0.1:1/0", ttl=1), RedisObjectOwners)
    with pytest.raises(ValueError, match="unsupported store URL"):
        open_object_owners("memcached://x", ttl=1)


# ---- through the proxy ---------------------------------------------------------------------


class Upstream:
    """A provider behind a mock transport: creates files named after it, and tells who
    answered every other request."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.paths: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        if request.method == "POST" and request.url.path == "/v1/files":
            return httpx.Response(200, json={"id": f"file-{self.name}", "object": "file"})
        return httpx.Response(200, json={"answered_by": self.name})


def proxy_with(
    owners: ObjectOwners | None, upstreams: dict[str, Upstream], *, echo_first: bool = False
) -> LLMProxy:
    providers: dict[str, Any] = {"echo": {"kind": "echo"}} if echo_first else {}
    for name in upstreams:
        providers[name] = {"kind": "openai", "base_url": f"https://{name}.example/v1"}
    config = {"providers": providers, "store": {"url": "sqlite:///:memory:"}}
    transports = {n: HttpxTransport(httpx.MockTransport(u)) for n, u in upstreams.items()}
    proxy = build_proxy(config, transports=transports)
    if owners is not None:  # the builder's store, replaced by one with a fake clock
        assert proxy.parts.objects is not None
        proxy.parts.objects.owners = owners
    return proxy


@pytest.fixture
def upstreams() -> dict[str, Upstream]:
    return {"first": Upstream("first"), "second": Upstream("second")}


@contextlib.asynccontextmanager
async def serving(proxy: LLMProxy) -> AsyncIterator[httpx.AsyncClient]:
    """A client of ``proxy``, started with its lifespan."""
    transport = httpx.ASGITransport(app=proxy)
    async with proxy.lifespan(), httpx.AsyncClient(transport=transport, base_url="http://p") as c:
        yield c


async def create_and_read_back(client: httpx.AsyncClient) -> httpx.Response:
    created = await client.post(
        "/v1/files",
        files={"file": ("a.jsonl", b"{}\n")},
        data={"purpose": "batch"},
        headers={"x-llm-proxy-provider": "second"},
    )
    assert created.json() == {"id": "file-second", "object": "file"}
    return await client.get("/v1/files/file-second")


async def test_an_object_past_its_ttl_goes_to_the_first_provider(
    upstreams: dict[str, Upstream],
) -> None:
    clock = FakeClock(start=1_700_000_000.0)
    proxy = proxy_with(SqliteObjectOwners(":memory:", ttl=TTL, clock=clock), upstreams)
    async with serving(proxy) as client:
        assert (await create_and_read_back(client)).json() == {"answered_by": "second"}
        clock.advance(TTL)
        answer = await client.get("/v1/files/file-second/content")
        assert answer.json() == {"answered_by": "first"}


async def test_the_owner_is_known_before_the_answers_last_bytes_go_out(
    upstreams: dict[str, Upstream],
) -> None:
    """A client may use the object the moment it has the answer (it did, racing the record
    written after the answer, on a busy CI box): the record comes first."""
    owners = SqliteObjectOwners(":memory:", ttl=TTL)
    proxy = proxy_with(owners, upstreams)
    known_at_the_end: list[str | None] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        async def watched(message: Any) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body"):
                known_at_the_end.append(await owners.owner("file-second"))
            await send(message)

        await proxy(scope, receive, watched)

    transport = httpx.ASGITransport(app=app)
    async with proxy.lifespan(), httpx.AsyncClient(transport=transport, base_url="http://p") as c:
        assert (await create_and_read_back(c)).json() == {"answered_by": "second"}
    assert known_at_the_end == ["second", "second"]


async def test_lists_and_unknown_ids_skip_a_provider_that_keeps_no_objects(
    upstreams: dict[str, Upstream],
) -> None:
    async with serving(proxy_with(None, upstreams, echo_first=True)) as client:
        listed = await client.get("/v1/files")
        unknown = await client.get("/v1/batches/batch-unknown")
    assert listed.json() == unknown.json() == {"answered_by": "first"}


async def test_the_ttl_comes_from_the_config() -> None:
    config = {"providers": {"echo": {"kind": "echo"}}, "store": {"object_ttl_days": 2}}
    objects = build_proxy(config).parts.objects
    assert objects is not None and isinstance(objects.owners, SqliteObjectOwners)
    assert objects.owners.ttl == 2 * DAY


class BrokenOwners:
    """A store that fails every call, as Redis does while it is down."""

    url = "redis://down"

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def owner(self, object_id: str) -> str | None:
        raise StoreError("redis://down: connection refused")

    async def record(self, object_id: str, provider: str) -> None:
        raise StoreError("redis://down: connection refused")


async def test_a_failing_store_is_logged_and_never_fails_a_request(
    upstreams: dict[str, Upstream], caplog: pytest.LogCaptureFixture
) -> None:
    proxy = proxy_with(BrokenOwners(), upstreams)
    with caplog.at_level(logging.WARNING, logger="llm_proxy_mw"):
        async with serving(proxy) as client:
            answer = await create_and_read_back(client)
    assert answer.status_code == 200
    assert answer.json() == {"answered_by": "first"}  # where an unknown id goes
    messages = [r.getMessage() for r in caplog.records]
    assert any("cannot record that second owns an object" in m for m in messages)
    assert any("cannot read which provider owns an object" in m for m in messages)


async def test_streams_and_errors_are_not_recorded(upstreams: dict[str, Upstream]) -> None:
    recorded: list[tuple[str, str]] = []

    class Owners(BrokenOwners):
        async def owner(self, object_id: str) -> str | None:
            return None

        async def record(self, object_id: str, provider: str) -> None:
            recorded.append((object_id, provider))

    def answer(request: httpx.Request) -> httpx.Response:
        if b'"stream":true' in request.content:
            sse = b'data: {"id": "resp-streamed"}\n\n'
            return httpx.Response(200, content=sse, headers={"content-type": "text/event-stream"})
        return httpx.Response(400, json={"id": "resp-failed", "error": {"message": "no"}})

    transport = HttpxTransport(httpx.MockTransport(answer))
    proxy = build_proxy(
        {"providers": {"p": {"kind": "openai"}}, "store": {"url": "sqlite:///:memory:"}},
        transports={"p": transport},
    )
    assert proxy.parts.objects is not None
    proxy.parts.objects.owners = Owners()
    async with serving(proxy) as client:
        body = {"model": "m", "input": "hi"}
        assert (await client.post("/v1/responses", json={**body, "stream": True})).is_success
        assert (await client.post("/v1/responses", json=body)).status_code == 400
    assert recorded == []


def ids_of(path: str, body: dict[str, Any] | None = None) -> tuple[str, ...]:
    from llm_proxy_mw.context import RequestContext
    from llm_proxy_mw.wire import WireFormat

    ctx = RequestContext("r", path, WireFormat.OPENAI)
    if body is not None:
        ctx.body = httpx.Request("POST", "http://x", json=body).content
        ctx.body_is_json = True
    return ObjectRoutes(BrokenOwners()).ids(ctx)


def test_the_ids_a_request_names() -> None:
    assert ids_of("/v1/files/file-1") == ("file-1",)
    assert ids_of("/v1/files/file-1/content") == ("file-1",)
    assert ids_of("/v1/batches/batch_1/cancel") == ("batch_1",)
    assert ids_of("/v1/messages/batches/msgbatch_1/results") == ("msgbatch_1",)
    assert ids_of("/v1/fine_tuning/jobs/ftjob-1/events") == ("ftjob-1",)
    assert ids_of("/v1/vector_stores/vs_1/files/file-2") == ("vs_1",)
    assert ids_of("/v1/responses", {"model": "m", "previous_response_id": "resp_1"}) == ("resp_1",)
    assert ids_of("/v1/batches", {"input_file_id": "file-1", "endpoint": "/v1/x"}) == ("file-1",)
    assert ids_of("/v1/fine_tuning/jobs", {"training_file": "file-1", "model": "m"}) == ("file-1",)
    assert ids_of("/v1/files") == ()
    assert ids_of("/v1/chat/completions", {"model": "m"}) == ()
    assert ids_of("/v1/messages/count_tokens") == ()
    assert ids_of("/v1/responses", {"model": "m", "previous_response_id": 7}) == ()
