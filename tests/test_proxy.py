"""``LLMProxy``'s lifespan: a start that fails fails loudly and leaves nothing open, a stop
closes everything whatever fails, and a server serving the proxy itself hears why.

The lifespan is driven in process here, as a host (``proxy.lifespan``) or as an ASGI server
(the lifespan protocol) would; ``test_lifecycle_signals.py`` runs it under real uvicorn.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.types import ASGIApp, Message

from llm_proxy_mw import LLMProxy, build_proxy
from llm_proxy_mw.auth._setup import AuthSetup, Lifecycle
from llm_proxy_mw.errors import StartupError
from llm_proxy_mw.history import HistoryRecorder, StoreError
from llm_proxy_mw.store import SqliteMetricsStore
from llm_proxy_mw.transports import UpstreamRequest, UpstreamResponse
from tests.fakes.servers import free_port

pytestmark = pytest.mark.anyio

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def broken_store_url(kind: str, tmp_path: Path) -> str:
    """A ``[store] url`` that cannot open: SQLite under a path that is a file, or Redis on a
    loopback port where nothing listens."""
    if kind == "sqlite":
        (tmp_path / "a-file").touch()
        return f"sqlite:///{tmp_path}/a-file/metrics.db"
    return f"redis://127.0.0.1:{free_port()}/0"


BROKEN_STORES = ["sqlite", "redis"]


def echo_config(store_url: str) -> dict[str, Any]:
    return {"providers": {"echo": {"kind": "echo"}}, "store": {"url": store_url}}


async def lifespan_messages(app: ASGIApp) -> list[Message]:
    """What ``app`` sends a server that starts it, then at once shuts it down."""
    incoming = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    sent: list[Message] = []

    async def receive() -> Message:
        return next(incoming)

    async def send(message: Message) -> None:
        sent.append(message)

    await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)
    return sent


# -- a store that does not open --------------------------------------------------------------


@pytest.mark.parametrize("kind", BROKEN_STORES)
async def test_a_store_that_does_not_open_keeps_the_host_from_starting(
    kind: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = broken_store_url(kind, tmp_path)
    proxy = build_proxy(echo_config(url))
    with pytest.raises(StartupError) as raised:
        async with proxy.lifespan():
            pytest.fail("the host started")
    [line] = str(raised.value).splitlines()
    assert line.startswith("llm_proxy_mw: cannot start: the [store] does not open (")
    assert url in line
    assert raised.value.__cause__ is None and raised.value.__suppress_context__
    # Neither the fallback to memory nor a retry at the next flush: one reason, raised.
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert [w for w in warnings if "store" in w] == []


@pytest.mark.parametrize("kind", BROKEN_STORES)
async def test_served_directly_a_store_that_does_not_open_sends_startup_failed(
    kind: str, tmp_path: Path
) -> None:
    url = broken_store_url(kind, tmp_path)
    [failed] = await lifespan_messages(build_proxy(echo_config(url)))
    assert failed["type"] == "lifespan.startup.failed"
    [line] = failed["message"].splitlines()
    assert line.startswith("llm_proxy_mw: cannot start:") and url in line


async def test_without_the_lifespan_a_store_that_does_not_open_is_tried_at_every_flush(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Requests are served already when the proxy starts on its first one: nothing can stop
    # that, so the history keeps what it records and retries the store, as in an outage.
    proxy = build_proxy(echo_config(broken_store_url("sqlite", tmp_path)))
    transport = httpx.ASGITransport(app=proxy)
    async with httpx.AsyncClient(transport=transport, base_url="http://h") as client:
        response = await client.post("/v1/chat/completions", json=CHAT)
    await proxy.aclose()  # waits for the lazy start; its failure was logged, not raised
    assert response.status_code == 200
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("lifespan was not entered" in w for w in warnings)
    assert any("metrics history open failed" in w for w in warnings)


# -- a start that fails part-way, a stop where something fails -------------------------------


class WatchedStore(SqliteMetricsStore):
    """A SQLite metrics store (never falling back to memory) that notes its opening and
    closing in ``events``."""

    def __init__(self, path: str, events: list[str]) -> None:
        super().__init__(path, memory_fallback=False)
        self.events = events

    async def open(self) -> None:
        self.events.append("open")
        await super().open()

    async def close(self) -> None:
        self.events.append("close")
        await super().close()


class Step:
    """A lifecycle (like a token store) that notes its start and stop in ``events``."""

    def __init__(self, name: str, events: list[str], *, fails: bool = False) -> None:
        self.name, self.events, self.fails = name, events, fails

    async def start(self) -> None:
        self.events.append(f"start {self.name}")
        if self.fails:
            raise RuntimeError(f"{self.name} does not start")

    async def stop(self) -> None:
        self.events.append(f"stop {self.name}")


class Pool:
    """A provider's transport that notes its closing in ``events``, and may fail to close."""

    def __init__(self, name: str, events: list[str], *, fails: bool = False) -> None:
        self.name, self.events, self.fails = name, events, fails

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        raise AssertionError("these tests send no request")

    async def aclose(self) -> None:
        self.events.append(f"close {self.name}")
        if self.fails:
            raise RuntimeError(f"pool {self.name} does not close")


async def test_the_history_may_require_its_store(tmp_path: Path) -> None:
    (tmp_path / "a-file").touch()
    events: list[str] = []
    store = WatchedStore(str(tmp_path / "a-file" / "m.db"), events)
    with pytest.raises(StoreError, match="unable to open database file"):
        await HistoryRecorder(store).start(require_store=True)
    assert events == ["open", "close"]  # what the failed open began is closed again
    assert not store.in_memory


def watched_proxy(
    tmp_path: Path, events: list[str], lifecycles: list[Lifecycle], failing_pool: str = ""
) -> LLMProxy:
    """Providers ``a``, ``b``, ``c`` on ``Pool`` transports, the metrics history on a
    ``WatchedStore``, and ``lifecycles`` for auth's."""
    names = ["a", "b", "c"]
    built = build_proxy(
        {"providers": {name: {"kind": "echo"} for name in names}},
        transports={name: Pool(name, events, fails=name == failing_pool) for name in names},
    )
    history = HistoryRecorder(WatchedStore(str(tmp_path / "m.db"), events), flush_interval=3600)
    parts = dataclasses.replace(built.parts, history=history, auth=AuthSetup(lifecycles=lifecycles))
    return LLMProxy(built.pipeline, built.endpoints, parts)


async def test_a_start_that_fails_part_way_stops_what_started_in_reverse(tmp_path: Path) -> None:
    events: list[str] = []
    steps = [Step("tokens", events), Step("jwks", events, fails=True), Step("login", events)]
    proxy = watched_proxy(tmp_path, events, list(steps))
    with pytest.raises(RuntimeError, match="jwks does not start"):
        async with proxy.lifespan():
            pytest.fail("the host started")
    assert events == ["open", "start tokens", "start jwks", "stop tokens", "close"]
    # Nothing is left running: the next start starts everything afresh.
    steps[1].fails = False
    events.clear()
    async with proxy.lifespan():
        assert events == ["open", "start tokens", "start jwks", "start login"]


async def test_a_stop_closes_every_pool_even_when_one_fails_then_raises(tmp_path: Path) -> None:
    events: list[str] = []
    proxy = watched_proxy(
        tmp_path, events, [Step("tokens", events), Step("login", events)], failing_pool="b"
    )
    with pytest.raises(RuntimeError, match="pool b does not close"):
        async with proxy.lifespan():
            events.clear()
    # What started stops in reverse (the history flushed and closed after auth), then every
    # pool closes, the one after the failing one too.
    assert events[:3] == ["stop login", "stop tokens", "close"]
    assert sorted(events[3:]) == ["close a", "close b", "close c"]


async def test_served_directly_a_failing_stop_sends_shutdown_failed(tmp_path: Path) -> None:
    events: list[str] = []
    proxy = watched_proxy(tmp_path, events, [], failing_pool="a")
    started, failed = await lifespan_messages(proxy)
    assert started == {"type": "lifespan.startup.complete"}
    assert failed["type"] == "lifespan.shutdown.failed"
    assert "RuntimeError: pool a does not close" in failed["message"]  # a bug: its traceback
    assert {"close a", "close b", "close c"} <= set(events)


async def test_served_directly_a_start_that_fails_sends_its_traceback(tmp_path: Path) -> None:
    events: list[str] = []
    proxy = watched_proxy(tmp_path, events, [Step("tokens", events, fails=True)])
    [failed] = await lifespan_messages(proxy)
    assert failed["type"] == "lifespan.startup.failed"
    assert failed["message"].startswith("Traceback (most recent call last):")
    assert failed["message"].endswith("RuntimeError: tokens does not start")
    assert events == ["open", "start tokens", "close"]
