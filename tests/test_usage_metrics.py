"""Where usage lands: ``MetricsMiddleware`` makes ``ctx.usage`` final when a request ends,
then prices it (``pricing.price(ctx)``), counts it (the token kinds, the cost) and records
it (``ledger.add(ctx)``), in that order."""

from __future__ import annotations

from decimal import Decimal

import pytest
from prometheus_client import CollectorRegistry
from starlette.types import Message, Receive, Scope, Send

from llm_proxy_mw._usage import BYTES_PER_TOKEN
from llm_proxy_mw.context import Attempt, ClientDisconnected, RequestContext, Usage, get_context
from llm_proxy_mw.history import total_key
from llm_proxy_mw.metrics import CLIENT_CLOSED, MetricsMiddleware, ProxyMetrics
from tests.asgi_helpers import http_scope

pytestmark = pytest.mark.anyio

SSE = [(b"content-type", b"text/event-stream")]
ANTHROPIC_STREAM = [
    b'event: message_start\ndata: {"type":"message_start","message":{"usage":'
    b'{"input_tokens":400,"cache_creation_input_tokens":100,"cache_read_input_tokens":500,'
    b'"output_tokens":1}}}\n\n',
    b'event: content_block_delta\ndata: {"type":"content_block_delta","delta":{"text":"a"}}\n\n',
    b'event: content_block_delta\ndata: {"type":"content_block_delta","delta":{"text":"b"}}\n\n',
    b'event: message_delta\ndata: {"type":"message_delta","usage":{"output_tokens":42}}\n\n',
]
BODY = b'{"model":"claude-x","max_tokens":64,"stream":true,"messages":[]}' + b" " * 200


class Answering:
    """Sends ``chunks`` as a 200 stream after one successful attempt; then, if ``cut``,
    the client is gone (or the provider failed: ``failed``)."""

    def __init__(self, chunks: list[bytes], *, cut: bool = False, failed: bool = False) -> None:
        self.chunks = chunks
        self.cut = cut
        self.failed = failed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ctx = get_context(scope)
        ctx.body, ctx.provider, ctx.model = BODY, "up", "claude-x"
        attempt = Attempt("up", "success", 200, 0.01)
        ctx.attempts.append(attempt)
        await send({"type": "http.response.start", "status": 200, "headers": SSE})
        for chunk in self.chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        if self.cut:
            raise ClientDisconnected
        if self.failed:
            attempt.outcome = "upstream_protocol_error"
        await send({"type": "http.response.body", "body": b""})


class Pricing:
    def __init__(self, seen: list[str]) -> None:
        self.seen = seen

    def price(self, ctx: RequestContext) -> None:
        self.seen.append("price")
        ctx.usage.cost_usd = Decimal(ctx.usage.prompt_tokens) / Decimal(10**6)


class Ledger:
    def __init__(self, seen: list[str], metrics: ProxyMetrics) -> None:
        self.seen = seen
        self.metrics = metrics
        self.usage: list[Usage] = []

    def add(self, ctx: RequestContext) -> None:
        # The metrics counted the request already.
        assert cost(self.metrics) == float(ctx.usage.cost_usd or 0)
        self.seen.append("add")
        self.usage.append(ctx.usage)


def tokens(metrics: ProxyMetrics, kind: str) -> float:
    labels = {"provider": "up", "model": "claude-x", "kind": kind}
    return metrics.registry.get_sample_value("llm_proxy_tokens_total", labels) or 0.0


def cost(metrics: ProxyMetrics) -> float:
    labels = {"provider": "up", "model": "claude-x"}
    return metrics.registry.get_sample_value("llm_proxy_cost_usd_total", labels) or 0.0


async def run(app: Answering, metrics: ProxyMetrics, **hooks: object) -> RequestContext:
    scope = http_scope("/v1/messages", headers=[("anthropic-version", "2023-06-01")])
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    middleware = MetricsMiddleware(app, metrics=metrics, **hooks)  # type: ignore[arg-type]
    try:
        await middleware(scope, receive, send)
    except ClientDisconnected:
        pass
    return get_context(scope)


def fresh() -> ProxyMetrics:
    return ProxyMetrics(CollectorRegistry(), models=["claude-x"])


async def test_usage_is_final_then_priced_counted_and_recorded() -> None:
    metrics, seen = fresh(), []
    ledger = Ledger(seen, metrics)
    ctx = await run(Answering(ANTHROPIC_STREAM), metrics, pricing=Pricing(seen), ledger=ledger)
    assert ctx.usage == Usage(1000, 42, 500, 100, 0, Decimal("0.001"))
    assert seen == ["price", "add"] and ledger.usage == [ctx.usage]
    counted = {kind: tokens(metrics, kind) for kind in ("prompt", "cache_read", "cache_write")}
    assert counted == {"prompt": 1000, "cache_read": 500, "cache_write": 100}
    assert (tokens(metrics, "completion"), tokens(metrics, "reasoning")) == (42, 0)
    assert cost(metrics) == 0.001


async def test_without_a_price_there_is_no_cost() -> None:
    metrics = fresh()
    ctx = await run(Answering(ANTHROPIC_STREAM), metrics)
    assert ctx.usage.cost_usd is None
    assert cost(metrics) == 0


async def test_a_stream_whose_client_left_is_charged() -> None:
    metrics = fresh()
    ctx = await run(Answering(ANTHROPIC_STREAM[:3], cut=True), metrics)
    labels = {"provider": "up", "model": "claude-x", "status": str(CLIENT_CLOSED)}
    assert metrics.registry.get_sample_value("llm_proxy_requests_total", labels) == 1
    # message_start said the input; three reads of output so far (more than its 1).
    assert (ctx.usage.prompt_tokens, ctx.usage.completion_tokens) == (1000, 3)


async def test_a_stream_the_provider_broke_without_usage_is_charged_an_estimate() -> None:
    metrics = fresh()
    chunks = ANTHROPIC_STREAM[1:3]
    ctx = await run(Answering(chunks, failed=True), metrics)
    assert (ctx.usage.prompt_tokens, ctx.usage.completion_tokens) == (
        len(BODY) // BYTES_PER_TOKEN,
        2,
    )


async def test_a_whole_stream_is_charged_what_the_provider_said() -> None:
    metrics = fresh()
    ctx = await run(Answering(ANTHROPIC_STREAM[1:]), metrics)  # no message_start
    assert (ctx.usage.prompt_tokens, ctx.usage.completion_tokens) == (0, 42)


def test_new_kinds_and_the_cost_continue_after_a_restart() -> None:
    metrics = fresh()
    restored = metrics.restore(
        {
            total_key("tokens", "up", "claude-x", "cache_read"): 7.0,
            total_key("cost", "up", "claude-x"): 1.25,
        }
    )
    assert restored == 2
    assert (tokens(metrics, "cache_read"), cost(metrics)) == (7.0, 1.25)


@pytest.mark.parametrize("path", ["/v1/messages/count_tokens", "/v1/responses/input_tokens"])
async def test_counting_a_requests_tokens_uses_none(path: str) -> None:
    metrics = fresh()
    scope = http_scope(path)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        ctx = get_context(scope)
        ctx.provider, ctx.model = "up", "claude-x"
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b'{"input_tokens":1234}'})

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        pass

    await MetricsMiddleware(app, metrics=metrics)(scope, receive, send)
    assert get_context(scope).usage == Usage()
    assert tokens(metrics, "prompt") == 0
