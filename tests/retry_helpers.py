"""Helpers for the retry and health tests: a fake clock and sleep, and the stack composed by hand.

``build_stack`` composes ``RequestContext -> Retry -> Routing -> Upstream`` (or the same
without Retry) over one respx ``MockRouter(using=None)`` per provider (no global patching),
each plugged into its provider through ``HttpxTransport(httpx.MockTransport(...))``. A
provider's ``route`` takes a ``side_effect`` list that scripts each upstream attempt.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio.lowlevel
import httpx
import respx
from starlette.types import ASGIApp, Receive, Scope, Send

from llm_proxy_mw.config import ProviderConfig
from llm_proxy_mw.context import Attempt, RequestContext, RequestContextMiddleware, get_context
from llm_proxy_mw.health import HealthPolicy, HealthRegistry
from llm_proxy_mw.providers import Provider
from llm_proxy_mw.retry import RetryMiddleware, RetryPolicy
from llm_proxy_mw.routing import Router, RoutingMiddleware
from llm_proxy_mw.transports import HttpxTransport
from llm_proxy_mw.upstream import UpstreamApp
from tests.fakes.clock import FakeClock

OPENAI_PATH = "/v1/chat/completions"
ANTHROPIC_PATH = "/v1/messages"

#: A request body with odd spacing and non-ASCII text: a replay must be byte-identical.
BODY = b'{"model": "gpt-x",  "messages": [{"role": "user", "content": "h\xc3\xa9llo"}], "n": 1}'

#: A fixed wall-clock time, for HTTP-dates and RFC 3339 reset times.
WALL_NOW = 1_700_000_000.0


class FakeSleep:
    """Records every wait and moves the fake clock instead of sleeping."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.clock.advance(seconds)
        await anyio.lowlevel.checkpoint()


def no_jitter(value: float) -> float:
    """A jitter that returns its argument, so backoff waits are exact."""
    return value


def provider_config(
    kind: str = "openai",
    *,
    models: Iterable[str] = ("*",),
    weight: float = 1.0,
    fallbacks: Iterable[str] = (),
    base_url: str | None = None,
) -> ProviderConfig:
    return ProviderConfig(
        kind=kind,  # type: ignore[arg-type]
        base_url=base_url,
        models=list(models),
        weight=weight,
        fallbacks=list(fallbacks),
    )


def openai_body(model: str = "gpt-x", *, stream: bool = False) -> bytes:
    payload: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    if stream:
        payload["stream"] = True
    return json.dumps(payload).encode()


def anthropic_body(model: str = "claude-x") -> bytes:
    payload = {
        "model": model,
        "max_tokens": 16,
        "messages": [{"role": "user", "content": "hi"}],
    }
    return json.dumps(payload).encode()


class BrokenStream(httpx.AsyncByteStream):
    """A response body that yields some chunks, then breaks off."""

    def __init__(self, *chunks: bytes) -> None:
        self.chunks = chunks

    async def __aiter__(self) -> Any:
        for chunk in self.chunks:
            yield chunk
        raise httpx.ReadError("connection reset mid-body")


class ChunkedStream(httpx.AsyncByteStream):
    """A response body that arrives in the given chunks."""

    def __init__(self, *chunks: bytes) -> None:
        self.chunks = chunks

    async def __aiter__(self) -> Any:
        for chunk in self.chunks:
            yield chunk


def ok(body: dict[str, Any] | None = None, **headers: str) -> httpx.Response:
    return httpx.Response(200, json=body or {"id": "ok"}, headers=headers)


def status(code: int, body: dict[str, Any] | None = None, **headers: str) -> httpx.Response:
    """An error response; header names use ``_`` for ``-`` (``retry_after="1"``)."""
    named = {name.replace("_", "-"): value for name, value in headers.items()}
    return httpx.Response(code, json=body or {"error": {"code": code}}, headers=named)


@dataclass
class Stack:
    """The hand-composed stack, its fakes, and what it saw."""

    app: ASGIApp
    clock: FakeClock
    sleep: FakeSleep
    health: HealthRegistry
    router: Router
    routes: dict[str, respx.Route]
    contexts: list[RequestContext] = field(default_factory=list)

    def script(self, name: str, *effects: Any) -> None:
        """The outcome of each attempt on ``name``: responses or exception types, in order."""
        self.routes[name].side_effect = list(effects)

    def calls(self, name: str) -> int:
        return self.routes[name].call_count

    def bodies(self, name: str) -> list[bytes]:
        return [call.request.content for call in self.routes[name].calls]

    @property
    def attempts(self) -> list[Attempt]:
        """The attempts of the last request."""
        return self.contexts[-1].attempts

    def trail(self) -> list[str]:
        """Which provider each attempt of the last request went to."""
        return [attempt.provider for attempt in self.attempts]

    async def post(
        self,
        body: bytes | None = None,
        *,
        path: str = OPENAI_PATH,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        # The transport alone, without a client around it: fast, and nothing to close.
        if body is None:
            body = anthropic_body() if path == ANTHROPIC_PATH else openai_body()
        request = httpx.Request(
            "POST",
            "http://proxy" + path,
            content=body,
            headers={"content-type": "application/json", **(headers or {})},
        )
        response = await httpx.ASGITransport(app=self.app).handle_async_request(request)
        await response.aread()
        return response


def _capture(app: ASGIApp, contexts: list[RequestContext]) -> ASGIApp:
    async def capture(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            contexts.append(get_context(scope))
        await app(scope, receive, send)

    return capture


def build_stack(
    providers: Mapping[str, ProviderConfig],
    *,
    policy: RetryPolicy | Mapping[str, RetryPolicy] | None = None,
    health_policy: HealthPolicy | None = None,
    deadline: float = 600.0,
    jitter: Callable[[float], float] = no_jitter,
    random: Callable[[], float] = lambda: 0.0,
    transports: Mapping[str, httpx.AsyncBaseTransport] | None = None,
    sleep: Callable[[float], Any] | None = None,
    clock: Callable[[], float] | None = None,
    with_retry: bool = True,
    max_body_bytes: int = 32 * 1024 * 1024,
) -> Stack:
    """Compose the stack by hand, every provider on its own respx mock.

    ``transports`` replaces a provider's mock by another httpx transport; ``sleep`` and
    ``clock`` replace the fakes (a test of real cancellation or a real deadline).
    ``with_retry=False`` leaves Retry out: Routing over Upstream.
    """
    fake_clock = FakeClock()
    fake_sleep = FakeSleep(fake_clock)
    health = HealthRegistry(providers, health_policy, clock=fake_clock)
    routes: dict[str, respx.Route] = {}
    built = []
    for name, config in providers.items():
        transport = (transports or {}).get(name)
        if transport is None:
            mock = respx.MockRouter(using=None)
            routes[name] = mock.route()
            transport = httpx.MockTransport(mock.async_handler)
        built.append(Provider.from_config(name, config, HttpxTransport(transport)))
    router = Router(built, health=health, random=random)
    contexts: list[RequestContext] = []
    app: ASGIApp = UpstreamApp(built)
    app = RoutingMiddleware(app, router=router, max_body_bytes=max_body_bytes)
    if with_retry:
        app = RetryMiddleware(
            app,
            policy=policy,
            deadline=deadline,
            sleep=sleep or fake_sleep,
            clock=clock or fake_clock,
            wall_clock=lambda: WALL_NOW,
            jitter=jitter,
            max_body_bytes=max_body_bytes,
        )
    app = RequestContextMiddleware(_capture(app, contexts))
    return Stack(app, fake_clock, fake_sleep, health, router, routes, contexts)
