"""What translation costs: a translated request beside the same request passed through, in
process, through the whole ``build_proxy()`` stack.

Each route is a client API and a model whose provider speaks that API (passthrough) or not
(translated). Every provider answers the same text with the same usage, in its own API
(``_translation_answers``), at once from memory; so a translated row and its passthrough
row differ only by the translation, and the figure is the proxy's own CPU. Rounds
interleave the two rows of each pair, in alternating order, so that both meet the same
machine. The per-event rows time each upstream event from the transport's read to the
``send`` that carries it on (ASGI's ``send`` is where it leaves the proxy).
"""

from __future__ import annotations

import asyncio
import cProfile
import gc
import io
import pstats
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.types import ASGIApp, Message, Scope

from benchmarks import _translation_e2e
from benchmarks._raw_http import run
from benchmarks._translation_answers import MemoryTransport, client_request, provider_data
from benchmarks._translation_report import report
from benchmarks.fixtures import CLIENT_KEY
from benchmarks.layers import asgi_scope
from llm_proxy_mw import build_proxy
from llm_proxy_mw.apis import API_PATHS, Api
from llm_proxy_mw.config import ProxyConfig, parse_config

__all__ = ["Latency", "ROUTES", "Route", "main"]

_PATH_OF = {api: path for path, api in API_PATHS.items()}
#: How a well-ended answer of each client API ends, JSON or stream.
_ENDS = {Api.CHAT: b"data: [DONE]\n\n", Api.MESSAGES: b"message_stop", Api.RESPONSES: b"completed"}
_TEXT_END = b"Nothing here depends on the request."
_LAST_DELTA = b"tok098"
_OPENAI_SDK_HEADERS = frozenset({b"user-agent", b"x-stainless-lang", b"authorization"})
_ANTHROPIC_SDK_HEADERS = [
    (b"user-agent", b"Anthropic/Python 0.40.0"),
    (b"anthropic-version", b"2023-06-01"),
    (b"x-api-key", CLIENT_KEY.encode()),
]


@dataclass(frozen=True, slots=True)
class Route:
    """A client API calling ``model``, which ``provider`` serves; ``baseline``: the label of
    the passthrough route this one is compared with (none for a passthrough)."""

    label: str
    client: Api
    model: str
    provider: str
    baseline: str = ""


_CHAT_PASS = "Chat → openai (passthrough)"
_MESSAGES_PASS = "Messages → anthropic (passthrough)"
_RESPONSES_PASS = "Responses → openai (passthrough)"
_GOAL_ROUTE = "Chat → anthropic"
#: The first pair is the one the issue's goals are about: a Chat client, an openai or an
#: anthropic provider.
ROUTES: list[Route] = [
    Route(_CHAT_PASS, Api.CHAT, "gpt-4o-mini", "openai"),
    Route(_GOAL_ROUTE, Api.CHAT, "claude-sonnet-4-5", "anthropic", _CHAT_PASS),
    Route(_MESSAGES_PASS, Api.MESSAGES, "claude-sonnet-4-5", "anthropic"),
    Route("Messages → openai", Api.MESSAGES, "gpt-4o-mini", "openai", _MESSAGES_PASS),
    Route(_RESPONSES_PASS, Api.RESPONSES, "gpt-4o-mini", "openai"),
    Route(
        "Responses → anthropic", Api.RESPONSES, "claude-sonnet-4-5", "anthropic", _RESPONSES_PASS
    ),
    Route("Responses → chat-only openai", Api.RESPONSES, "local-llama", "vllm", _RESPONSES_PASS),
]


def _config(store_dir: str) -> ProxyConfig:
    return parse_config(
        {
            "providers": {
                "openai": provider_data("openai", ["gpt-4o-mini"]),
                "anthropic": provider_data("anthropic", ["claude-sonnet-4-5"]),
                "vllm": provider_data("openai", ["local-llama"], responses_api=False),
            },
            "auth": {"api_keys": [{"name": "bench", "key": CLIENT_KEY}]},
            "store": {"url": f"sqlite:///{store_dir}/llm-proxy.db"},
        }
    )


def _scope(client: Api, body: bytes) -> Scope:
    """What uvicorn hands over for the client API's SDK posting ``body``."""
    scope = asgi_scope(_PATH_OF[client], body)  # an OpenAI SDK's
    if client is Api.MESSAGES:
        headers = [h for h in scope["headers"] if h[0] not in _OPENAI_SDK_HEADERS]
        scope["headers"] = headers + _ANTHROPIC_SDK_HEADERS
    return scope


class _Receive:
    """The request body once, then (like a server) a wait for a disconnect that never comes."""

    __slots__ = ("_message",)

    def __init__(self, message: Message) -> None:
        self._message: Message | None = message

    async def __call__(self) -> Message:
        message, self._message = self._message, None
        if message is None:
            await asyncio.get_running_loop().create_future()
        assert message is not None
        return message


async def _discard(message: Message) -> None:
    return None


@dataclass(slots=True)
class Case:
    """One route, JSON or a stream: its request, and its CPU samples (µs per request)."""

    route: Route
    stream: bool
    scope: Scope = field(init=False)
    body: Message = field(init=False)
    samples: list[float] = field(default_factory=list)
    iterations: int = 0
    problem: str = ""

    def __post_init__(self) -> None:
        body = client_request(self.route.client, self.route.model, stream=self.stream)
        self.scope = _scope(self.route.client, body)
        self.body = {"type": "http.request", "body": body, "more_body": False}

    async def drive(self, app: ASGIApp, n: int, send: Any = _discard) -> None:
        template, body = self.scope, self.body
        for _ in range(n):
            scope = template.copy()
            scope["state"] = {}
            await app(scope, _Receive(body), send)
            # A server yields between requests; here it also lets cancelled watchers finish.
            await asyncio.sleep(0)

    async def check(self, app: ASGIApp) -> None:
        """One recorded request: a 200 from the route's provider with the whole answer, in
        the client's API; anything else is the row's ``problem``."""
        sent: list[Message] = []

        async def record(message: Message) -> None:
            sent.append(message)

        await self.drive(app, 1, record)
        start = next((m for m in sent if m["type"] == "http.response.start"), {})
        provider = dict(start.get("headers", [])).get(b"x-llm-proxy-provider", b"").decode()
        body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
        whole = _LAST_DELTA in body and _ENDS[self.route.client] in body
        if not self.stream:
            whole = _TEXT_END in body
        if start.get("status") != 200 or provider != self.route.provider or not whole:
            self.problem = (
                f"check failed: status {start.get('status')} from {provider!r}, "
                f"{len(body)} bytes: {body[:200]!r}"
            )


async def _calibrate(case: Case, app: ASGIApp, round_seconds: float) -> None:
    await case.drive(app, 50)
    start = time.process_time()
    await case.drive(app, 200)
    per = max((time.process_time() - start) / 200, 1e-7)
    case.iterations = max(50, min(200_000, int(round_seconds / per)))


async def _cpu(cases: list[Case], app: ASGIApp, rounds: int, round_seconds: float) -> None:
    """Rounds of every case; within a round each passthrough sits beside its translations,
    the order reversed every other round."""
    timed = [c for c in cases if not c.problem]
    for case in timed:
        await _calibrate(case, app, round_seconds)
    for n in range(rounds):
        for case in timed if n % 2 == 0 else timed[::-1]:
            gc.collect()
            start = time.process_time()
            await case.drive(app, case.iterations)
            case.samples.append((time.process_time() - start) / case.iterations * 1e6)


@dataclass(slots=True)
class Latency:
    """Per upstream event: ns from the transport's read to the ``send`` carrying it on."""

    ns: list[int] = field(default_factory=list)
    sends_per_stream: float = 0.0


async def _latency(case: Case, app: ASGIApp, transport: MemoryTransport, streams: int) -> Latency:
    out = Latency()
    clock = time.perf_counter_ns

    async def stamp(message: Message) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            out.ns.append(clock() - transport.read_ns)

    await case.drive(app, 5, stamp)
    out.ns.clear()
    gc.collect()
    await case.drive(app, streams, stamp)
    out.sends_per_stream = len(out.ns) / streams
    return out


@dataclass(slots=True)
class Results:
    cases: list[Case]
    latency: dict[str, Latency]
    profile: str = ""


async def _bench(rounds: int, round_seconds: float, streams: int, profile: bool) -> Results:
    cases = [Case(route, stream) for route in ROUTES for stream in (False, True)]
    latency: dict[str, Latency] = {}
    with tempfile.TemporaryDirectory(prefix="llm-bench-translation-") as store_dir:
        config = _config(store_dir)
        proxy = build_proxy(config, transports={n: MemoryTransport() for n in config.providers})
        async with proxy.lifespan(None):
            for case in cases:
                await case.check(proxy)
            await _cpu(cases, proxy, rounds, round_seconds)
        stamping = {n: MemoryTransport(stamp=True) for n in config.providers}
        proxy = build_proxy(config, transports=stamping)
        async with proxy.lifespan(None):
            for case in cases:
                if case.stream and not case.problem:
                    transport = stamping[case.route.provider]
                    latency[case.route.label] = await _latency(case, proxy, transport, streams)
            text = await _profile(proxy, 500 if streams < 100 else 3000) if profile else ""
    return Results(cases, latency, text)


async def _profile(app: ASGIApp, n: int) -> str:
    """cProfile of the goal route, JSON and stream, by own time."""
    out = []
    route = next(r for r in ROUTES if r.label == _GOAL_ROUTE)
    for stream in (False, True):
        case = Case(route, stream)
        await case.drive(app, 200)
        profiler = cProfile.Profile(time.process_time)
        profiler.enable()
        await case.drive(app, n)
        profiler.disable()
        buffer = io.StringIO()
        pstats.Stats(profiler, stream=buffer).sort_stats("tottime").print_stats(20)
        kind = "stream" if stream else "JSON"
        out.append(f"### cProfile: {_GOAL_ROUTE}, {kind}, {n} requests (by own time)")
        out.append("```\n" + buffer.getvalue().strip() + "\n```")
    return "\n\n".join(out)


def main(*, quick: bool = False, profile: bool = False, load: str = "auto") -> str:
    """Run the translation benchmark, in process then end to end, and return its report."""
    rounds, round_seconds, streams = (3, 0.03, 20) if quick else (7, 0.3, 500)
    results = run(_bench(rounds, round_seconds, streams, profile))
    cpu = {
        (c.route.label, c.stream): statistics.median(c.samples) for c in results.cases if c.samples
    }
    problems = {(c.route.label, c.stream): c.problem for c in results.cases if c.problem}
    end_to_end = _translation_e2e.measure(quick=quick, load=load)
    text = report(ROUTES, cpu, problems, results.latency, rounds, end_to_end)
    return text + ("\n\n" + results.profile if results.profile else "")
