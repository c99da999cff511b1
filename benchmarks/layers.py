"""What each layer costs: CPU µs per request through each, in process, with no server or socket.

Each row drives an ASGI app with a pre-built scope, a receive that hands over the body once
(then waits, as a server does, for a disconnect that never comes) and a no-op send, so the
figure is the layer's own cost; a regression in one middleware shows up in its row alone. The
"minus harness" column subtracts the row of the harness driving a no-op app.

Layers that are not written yet are rows already: add an entry to ``LAYERS`` and it is found
by name when the package exports it, or reported as skipped.
"""

from __future__ import annotations

import asyncio
import cProfile
import gc
import importlib
import inspect
import io
import pstats
import statistics
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import llm_proxy_mw
from benchmarks._table import num, table
from benchmarks.fixtures import (
    CHAT,
    CHAT_SSE_EVENTS,
    CLIENT_KEY,
    N_STREAM_CHUNKS,
    UPSTREAM_KEY,
    request_body,
)
from llm_proxy_mw import (
    HealthRegistry,
    Provider,
    Router,
    UpstreamApp,
    UpstreamRequest,
    UpstreamResponse,
    build_proxy,
    mount,
)
from llm_proxy_mw.config import ProxyConfig, parse_config

__all__ = ["LAYERS", "Layer", "NoopTransport", "asgi_scope", "main"]

_DATE = b"Wed, 26 Nov 2025 10:00:00 GMT"
JSON_HEADERS = [
    (b"Server", b"nginx"),
    (b"Date", _DATE),
    (b"Content-Type", b"application/json"),
    (b"Content-Length", str(len(CHAT)).encode()),
    (b"Connection", b"keep-alive"),
]
SSE_HEADERS = [
    (b"Server", b"nginx"),
    (b"Date", _DATE),
    (b"Content-Type", b"text/event-stream"),
    (b"Transfer-Encoding", b"chunked"),
    (b"Connection", b"keep-alive"),
    (b"Cache-Control", b"no-cache"),
]
SSE_BYTES = sum(len(e) for e in CHAT_SSE_EVENTS)


class NoopTransport:
    """An ``UpstreamTransport`` that answers at once from memory, as the provider would.

    The JSON completion, or the 100-event stream (one chunk per event) when the request body
    asks for ``"stream":true``; so the rows measure the proxy, not a client library.
    """

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        if b'"stream":true' in request.body:
            chunks: Iterator[bytes] = iter(CHAT_SSE_EVENTS)
            headers = SSE_HEADERS
        else:
            chunks = iter((CHAT,))
            headers = JSON_HEADERS

        async def read_chunk() -> bytes:
            return next(chunks, b"")

        return UpstreamResponse(200, headers, read_chunk)

    async def aclose(self) -> None:
        return None


# -- the world the rows run in -------------------------------------------------------------


@dataclass(slots=True)
class Env:
    """Providers, router and config shared by every row (built once, outside the timing)."""

    config: ProxyConfig
    providers: list[Provider]
    router: Router
    health: HealthRegistry


def _config_data(store_dir: str) -> dict[str, Any]:
    """A few providers, as a real deployment has, plus auth and store settings for later."""

    def openai(models: list[str]) -> dict[str, Any]:
        return {
            "kind": "openai",
            "base_url": "http://127.0.0.1:9/v1",
            "api_key": UPSTREAM_KEY,
            "models": models,
        }

    return {
        "providers": {
            "openai": openai(["gpt-4o-mini", "gpt-4o"]),
            "azure": openai(["gpt-4.1", "gpt-4.1-mini"]),
            "anthropic": {
                "kind": "anthropic",
                "base_url": "http://127.0.0.1:9/v1",
                "api_key": UPSTREAM_KEY,
                "models": ["claude-sonnet-4-5", "claude-haiku-4-5"],
            },
            "echo": {"kind": "echo", "models": ["*"]},
        },
        "auth": {"api_keys": [{"name": "bench", "key": CLIENT_KEY}]},
        "store": {"url": f"sqlite:///{store_dir}/llm-proxy.db"},
    }


def _noop_transports(config: ProxyConfig) -> dict[str, NoopTransport]:
    return {name: NoopTransport() for name, p in config.providers.items() if p.kind != "echo"}


def make_env(store_dir: str) -> Env:
    config = parse_config(_config_data(store_dir))
    transports = _noop_transports(config)
    providers = [
        Provider.from_config(name, provider, transports.get(name))
        for name, provider in config.providers.items()
    ]
    router = Router(providers)
    return Env(config, providers, router, router.health)


# -- optional layers: one entry each --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Layer:
    """A middleware row: found as ``llm_proxy_mw.<name>`` (or in ``module``), built over ``app``.

    ``build(cls, app, env)`` returns the layer; a signature it does not match makes the row
    a skip with the error, so fix the entry when the layer's constructor changes.
    """

    name: str
    module: str
    build: Callable[[Any, ASGIApp, Env], ASGIApp]


def _call(cls: Any, app: ASGIApp, **options: Any) -> ASGIApp:
    """``cls(app, **options)`` with only the options its constructor takes, so one entry
    keeps working while a layer's keywords settle; a missing required one still fails."""
    params = inspect.signature(cls).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        options = {k: v for k, v in options.items() if k in params}
    return cls(app, **options)  # type: ignore[no-any-return]


def _metrics(cls: Any, app: ASGIApp, env: Env) -> ASGIApp:
    from prometheus_client import CollectorRegistry

    from llm_proxy_mw.proxy_metrics import ProxyMetrics

    models = [m for p in env.config.providers.values() for m in p.models]
    metrics = ProxyMetrics(CollectorRegistry(), models=models, health=env.health)
    return _call(cls, app, metrics=metrics)


def _auth(cls: Any, app: ASGIApp, env: Env) -> ASGIApp:
    from llm_proxy_mw.auth import ApiKeyAuthenticator

    assert env.config.auth is not None
    return _call(cls, app, authenticators=[ApiKeyAuthenticator(env.config.auth.api_keys)])


def _retry(cls: Any, app: ASGIApp, env: Env) -> ASGIApp:
    policies = {n: p.retry.policy() for n, p in env.config.providers.items()}
    return _call(cls, app, policy=policies, max_body_bytes=env.config.max_body_bytes)


def _routing(cls: Any, app: ASGIApp, env: Env) -> ASGIApp:
    return _call(cls, app, router=env.router, max_body_bytes=env.config.max_body_bytes)


#: Outermost first, as in DESIGN.md's request flow. Each builds its layer as ``build_proxy``
#: does, over the no-op terminal app.
LAYERS: list[Layer] = [
    Layer("RequestContextMiddleware", "llm_proxy_mw.context", lambda cls, app, env: cls(app)),
    Layer("MetricsMiddleware", "llm_proxy_mw.metrics", _metrics),
    Layer("AuthMiddleware", "llm_proxy_mw.auth", _auth),
    Layer("RetryMiddleware", "llm_proxy_mw.retry", _retry),
    Layer("RoutingMiddleware", "llm_proxy_mw.routing", _routing),
]


def _find(layer: Layer) -> Any:
    found = getattr(llm_proxy_mw, layer.name, None)
    if found is not None:
        return found
    try:
        module = importlib.import_module(layer.module)
    except ImportError:
        return None
    return getattr(module, layer.name, None)


# -- the harness ---------------------------------------------------------------------------


def asgi_scope(path: str, body: bytes) -> Scope:
    """What uvicorn hands over for an OpenAI SDK-like POST."""
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 50123),
        "scheme": "http",
        "method": "POST",
        "root_path": "",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [
            (b"host", b"127.0.0.1:8000"),
            (b"accept-encoding", b"gzip, deflate"),
            (b"connection", b"keep-alive"),
            (b"accept", b"application/json"),
            (b"content-type", b"application/json"),
            (b"user-agent", b"OpenAI/Python 1.60.0"),
            (b"x-stainless-lang", b"python"),
            (b"authorization", b"Bearer " + CLIENT_KEY.encode()),
            (b"content-length", str(len(body)).encode()),
        ],
    }


class _Receive:
    """The request body once, then (like a server) a wait for a disconnect that never comes."""

    __slots__ = ("_message",)

    def __init__(self, message: Message) -> None:
        self._message: Message | None = message

    async def __call__(self) -> Message:
        message = self._message
        if message is None:
            await asyncio.get_running_loop().create_future()
            raise AssertionError("unreachable")
        self._message = None
        return message


async def _discard(message: Message) -> None:
    return None


async def _noop_app(scope: Scope, receive: Receive, send: Send) -> None:
    """The terminal app under each layer alone: the canned completion, no upstream."""
    await send({"type": "http.response.start", "status": 200, "headers": JSON_HEADERS[2:4]})
    await send({"type": "http.response.body", "body": CHAT})


@dataclass(slots=True)
class Case:
    label: str
    app: ASGIApp
    stream: bool = False
    path: str = "/v1/chat/completions"
    note: str = ""
    scope: Scope = field(init=False)
    body: Message = field(init=False)

    def __post_init__(self) -> None:
        body = request_body(stream=self.stream)
        self.scope = asgi_scope(self.path, body)
        self.body = {"type": "http.request", "body": body, "more_body": False}

    async def once(self, send: Send = _discard) -> None:
        scope = self.scope.copy()
        scope["state"] = {}
        await self.app(scope, _Receive(self.body), send)

    async def drive(self, n: int) -> None:
        app, template, body = self.app, self.scope, self.body
        for _ in range(n):
            scope = template.copy()
            scope["state"] = {}
            await app(scope, _Receive(body), _discard)
            # A server yields between requests; here it also lets cancelled watchers finish.
            await asyncio.sleep(0)

    async def check(self) -> tuple[str, bool]:
        """One recorded request: anything but a 200 with the whole body is reported; an
        exception also makes the row untimeable."""
        sent: list[Message] = []

        async def record(message: Message) -> None:
            sent.append(message)

        try:
            await self.once(record)
        except Exception as exc:  # reported in the row, the run goes on
            return f"check failed: {type(exc).__name__}: {exc}", True
        status = next((m["status"] for m in sent if m["type"] == "http.response.start"), None)
        size = sum(len(m.get("body", b"")) for m in sent if m["type"] == "http.response.body")
        expected = SSE_BYTES if self.stream else len(CHAT)
        if status != 200 or size != expected:
            return f"check failed: status {status}, {size} body bytes (expected {expected})", False
        return "", False


@dataclass(slots=True)
class Row:
    label: str
    median_us: float | None = None
    low_us: float = 0.0
    high_us: float = 0.0
    iterations: int = 0
    note: str = ""


async def _measure(
    case: Case,
    rounds: int,
    round_seconds: float,
    clock: Callable[[], float] = time.process_time,
) -> Row:
    """µs of ``clock`` per request: the median of ``rounds`` rounds of about ``round_seconds``
    each (``time.process_time``: every thread of the process; ``time.thread_time``: the
    calling thread's alone, the event loop's)."""
    row = Row(case.label, note=case.note)
    problem, fatal = await case.check()
    if problem:
        row.note = "; ".join(filter(None, [row.note, problem]))
        if fatal:
            return row
    await case.drive(50)
    start = clock()
    await case.drive(200)
    per = max((clock() - start) / 200, 1e-7)
    n = max(100, min(500_000, int(round_seconds / per)))
    samples = []
    for _ in range(rounds):
        gc.collect()
        start = clock()
        await case.drive(n)
        samples.append((clock() - start) / n * 1e6)
    row.median_us = statistics.median(samples)
    row.low_us, row.high_us = min(samples), max(samples)
    row.iterations = n
    return row


def _chain(app: Any) -> str:
    names = []
    while app is not None and len(names) < 20:
        names.append(type(app).__name__)
        app = getattr(app, "app", None)
    return " → ".join(names)


async def _cases(env: Env) -> tuple[list[Case], list[str], Any]:
    """Every row to time, the skip notes, and the full-stack proxy (its lifespan is entered)."""
    cases = [Case("harness: no-op app alone (baseline)", _noop_app)]
    skipped: list[str] = []
    for layer in LAYERS:
        cls = _find(layer)
        if cls is None:
            skipped.append(f"{layer.name}: not in llm_proxy_mw yet (row skipped)")
            continue
        try:
            app = layer.build(cls, _noop_app, env)
        except Exception as exc:  # a constructor that changed: say so, keep the other rows
            skipped.append(f"{layer.name}: found but not built ({type(exc).__name__}: {exc})")
            continue
        cases.append(Case(f"{layer.name} alone", app))
    openai = next(p for p in env.providers if p.name == "openai")
    upstream = UpstreamApp([openai], max_body_bytes=env.config.max_body_bytes)
    cases.append(Case("UpstreamApp + no-op transport, JSON", upstream))
    cases.append(
        Case(
            f"UpstreamApp + no-op transport, SSE ({N_STREAM_CHUNKS} chunks)",
            upstream,
            stream=True,
            note="per stream",
        )
    )
    proxy = build_proxy(env.config, transports=_noop_transports(env.config))
    stack = f"LLMProxy → {_chain(proxy.pipeline)}"
    cases.append(Case("full stack build_proxy(), JSON", proxy, note=stack))
    cases.append(
        Case(
            f"full stack build_proxy(), SSE ({N_STREAM_CHUNKS} chunks)",
            proxy,
            stream=True,
            note="per stream",
        )
    )
    host = Starlette(routes=[Mount("/llm", app=proxy)])
    cases.append(
        Case(
            "host app: Starlette Mount('/llm') + full stack, JSON",
            host,
            path="/llm/v1/chat/completions",
            note="the proxy in the host's route table, as the examples app serves it",
        )
    )
    cases.append(
        Case(
            "host app: mount(host, '/llm', proxy) + full stack, JSON",
            mount(host, "/llm", proxy),
            path="/llm/v1/chat/completions",
            note="in front of the host's router, past its middleware",
        )
    )
    return cases, skipped, proxy


def _run(coro: Coroutine[Any, Any, Any]) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def loop_name() -> str:
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    return f"uvloop {uvloop.__version__}"


async def _bench(rounds: int, round_seconds: float) -> tuple[list[Row], list[str]]:
    with tempfile.TemporaryDirectory(prefix="llm-bench-layers-") as store_dir:
        env = make_env(store_dir)
        cases, skipped, proxy = await _cases(env)
        async with proxy.lifespan(None):
            rows = [await _measure(case, rounds, round_seconds) for case in cases]
        return rows, skipped


def report(rows: list[Row], skipped: list[str], rounds: int) -> str:
    base = rows[0].median_us or 0.0
    by_label = {r.label: r for r in rows}
    out = []
    for row in rows:
        note = row.note
        if row.label.endswith(f"SSE ({N_STREAM_CHUNKS} chunks)") and row.median_us is not None:
            json_row = by_label.get(row.label.replace(f"SSE ({N_STREAM_CHUNKS} chunks)", "JSON"))
            if json_row and json_row.median_us is not None:
                per_chunk = (row.median_us - json_row.median_us) / (N_STREAM_CHUNKS - 1)
                note = f"per {N_STREAM_CHUNKS}-chunk stream; {per_chunk:.1f} µs per extra chunk"
        out.append(
            [
                row.label,
                num(row.median_us, 1),
                num(None if row.median_us is None else row.median_us - base, 1),
                f"{row.low_us:.1f}–{row.high_us:.1f}" if row.median_us is not None else "–",
                note,
            ]
        )
    text = [
        "## What each layer costs (CPU µs per request, in process, no server, no socket)",
        "",
        f"{loop_name()}; `time.process_time()`; median of {rounds} rounds; each row's "
        "iterations sized to its cost; full stack = `build_proxy(config, transports={name: "
        "no-op})` with 4 providers.",
        "",
        table(
            ["row", "µs/request", "minus harness", "rounds min–max", "note"],
            out,
            "lrrrl",
        ),
    ]
    if skipped:
        text += ["", "Skipped layers (add or fix their entry in `benchmarks/layers.py` LAYERS):"]
        text += [f"- {s}" for s in skipped]
    return "\n".join(text)


async def _profile(n: int, top: int) -> str:
    with tempfile.TemporaryDirectory(prefix="llm-bench-layers-") as store_dir:
        env = make_env(store_dir)
        proxy = build_proxy(env.config, transports=_noop_transports(env.config))
        out = []
        async with proxy.lifespan(None):
            for stream in (False, True):
                case = Case("full stack", proxy, stream=stream)
                await case.drive(200)
                profiler = cProfile.Profile(time.process_time)
                profiler.enable()
                await case.drive(n)
                profiler.disable()
                buffer = io.StringIO()
                stats = pstats.Stats(profiler, stream=buffer)
                stats.sort_stats("tottime").print_stats(top)
                kind = "SSE stream" if stream else "JSON"
                out.append(f"### cProfile: full stack, {kind}, {n} requests (by own time)")
                out.append("```\n" + buffer.getvalue().strip() + "\n```")
        return "\n\n".join(out)


def main(*, quick: bool = False, profile: bool = False) -> str:
    """Run the per-layer benchmark and return its markdown report."""
    rounds, round_seconds = (3, 0.05) if quick else (5, 0.3)
    rows, skipped = _run(_bench(rounds, round_seconds))
    text = report(rows, skipped, rounds)
    if profile:
        text += "\n\n" + _run(_profile(500 if quick else 3000, 25))
    return text
