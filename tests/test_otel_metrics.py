"""The GenAI OpenTelemetry metrics: values, attributes and buckets as the conventions define
them, for answers, streams and failures, through the whole stack; and none without a provider.

Each test passes its own SDK ``MeterProvider`` with an ``InMemoryMetricReader`` to
``GenAIMetrics`` and puts it on the ``MetricsMiddleware`` of a ``build_proxy`` stack; the
global provider is never set in this process. The builder's own wiring (it finds the host's
global provider, or imports nothing) runs in a fresh interpreter.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader

from llm_proxy_mw import HttpxTransport, LLMProxy, build_proxy
from llm_proxy_mw._otel_metrics import (
    CHUNK_BUCKETS,
    DURATION_BUCKETS,
    TOKEN_BUCKETS,
    GenAIMetrics,
    host_meter_provider,
)
from llm_proxy_mw.metrics import MetricsMiddleware

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
MESSAGES = [{"role": "user", "content": "hello world"}]
DURATION = "gen_ai.client.operation.duration"
TOKENS = "gen_ai.client.token.usage"
FIRST_CHUNK = "gen_ai.client.operation.time_to_first_chunk"
PER_CHUNK = "gen_ai.client.operation.time_per_output_chunk"
MOCK = {
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": "openai",
    "gen_ai.request.model": "gpt-mock",
    "gen_ai.response.model": "gpt-mock",
    "server.address": "mock.invalid",
    "server.port": 8443,
}
CONFIG = {
    "providers": {
        "echo": {"kind": "echo", "models": ["gpt-echo", "claude-echo"]},
        "mock": {
            "kind": "openai",
            "base_url": "https://mock.invalid:8443/v1",
            "models": ["gpt-mock"],
            "retry": {"max_attempts": 1},
        },
    },
    "store": {"url": "sqlite:///:memory:"},
}


class Meters:
    """The points each GenAI histogram received, read from an in-memory reader."""

    def __init__(self, reader: InMemoryMetricReader) -> None:
        self.by_name: dict[str, list[HistogramDataPoint]] = {}
        data = reader.get_metrics_data()
        for resource in data.resource_metrics if data is not None else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    points = [
                        p for p in metric.data.data_points if isinstance(p, HistogramDataPoint)
                    ]
                    self.by_name[metric.name] = points

    def points(self, name: str) -> list[HistogramDataPoint]:
        return self.by_name.get(name, [])

    def one(self, name: str, token_type: str | None = None) -> HistogramDataPoint:
        """The only point of ``name`` (of that ``gen_ai.token.type``)."""
        found = [
            p
            for p in self.points(name)
            if token_type is None or p.attributes.get("gen_ai.token.type") == token_type
        ]
        assert len(found) == 1, (name, token_type, self.points(name))
        return found[0]


class Recorded:
    """An SDK ``MeterProvider`` on an in-memory reader, and what it recorded."""

    def __init__(self) -> None:
        self.reader = InMemoryMetricReader()
        self.provider = MeterProvider(metric_readers=[self.reader])

    def meters(self) -> Meters:
        return Meters(self.reader)


@pytest.fixture
def recorded() -> Iterator[Recorded]:
    recorded = Recorded()
    yield recorded
    recorded.provider.shutdown()


def metered(recorded: Recorded, **transports: HttpxTransport) -> LLMProxy:
    """The proxy of ``CONFIG``, its metrics layer recording on ``recorded``'s provider."""
    proxy = build_proxy(CONFIG, transports=transports)
    app: Any = proxy.pipeline
    while not isinstance(app, MetricsMiddleware):
        app = app.app
    app.otel_metrics = GenAIMetrics(recorded.provider, models=["gpt-echo", "gpt-mock"])
    return proxy


def mock(*responses: httpx.Response) -> HttpxTransport:
    answers = list(responses)
    return HttpxTransport(httpx.MockTransport(lambda request: answers.pop(0)))


async def post(proxy: LLMProxy, path: str, body: dict[str, Any]) -> httpx.Response:
    transport = httpx.ASGITransport(app=proxy)
    async with (
        proxy.lifespan(),
        httpx.AsyncClient(transport=transport, base_url="http://proxy") as client,
    ):
        return await client.post(path, json=body)


def chat(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": MESSAGES, **extra}


async def test_an_answer_records_its_duration_and_tokens_with_the_conventions_attributes(
    recorded: Recorded,
) -> None:
    answer = httpx.Response(
        200, json={"id": "a", "usage": {"prompt_tokens": 11, "completion_tokens": 5}}
    )
    proxy = metered(recorded, mock=mock(answer))
    response = await post(proxy, "/v1/chat/completions", chat("gpt-mock"))
    assert response.status_code == 200
    meters = recorded.meters()
    duration = meters.one(DURATION)
    assert dict(duration.attributes) == MOCK
    assert duration.count == 1 and 0 < duration.sum < 10
    assert tuple(duration.explicit_bounds) == DURATION_BUCKETS
    input_tokens = meters.one(TOKENS, token_type="input")
    output_tokens = meters.one(TOKENS, token_type="output")
    assert dict(input_tokens.attributes) == {**MOCK, "gen_ai.token.type": "input"}
    assert (input_tokens.count, input_tokens.sum) == (1, 11)
    assert (output_tokens.count, output_tokens.sum) == (1, 5)
    assert tuple(input_tokens.explicit_bounds) == TOKEN_BUCKETS
    # 11 tokens fall in (4, 16], 5 in (4, 16] too: the third bucket.
    assert input_tokens.bucket_counts[2] == 1 and sum(input_tokens.bucket_counts) == 1
    assert meters.points(FIRST_CHUNK) == [] and meters.points(PER_CHUNK) == []


async def test_a_stream_records_its_first_chunk_and_time_per_chunk(recorded: Recorded) -> None:
    proxy = metered(recorded)
    body = chat("gpt-echo", stream=True, stream_options={"include_usage": True})
    response = await post(proxy, "/v1/chat/completions", body)
    assert response.status_code == 200 and response.text.endswith("data: [DONE]\n\n")
    meters = recorded.meters()
    echo = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "llm_proxy_mw.echo",
        "gen_ai.request.model": "gpt-echo",
        "gen_ai.response.model": "gpt-echo",
        "server.address": "echo.invalid",
        "server.port": 80,
    }
    first = meters.one(FIRST_CHUNK)
    assert dict(first.attributes) == echo
    assert tuple(first.explicit_bounds) == DURATION_BUCKETS
    duration = meters.one(DURATION)
    assert first.count == 1 and 0 <= first.sum <= duration.sum
    per_chunk = meters.one(PER_CHUNK)
    assert dict(per_chunk.attributes) == echo
    assert tuple(per_chunk.explicit_bounds) == CHUNK_BUCKETS
    assert per_chunk.count == 1 and 0 <= per_chunk.sum <= duration.sum - first.sum
    # The echo counts "hello world" as 2 tokens and answers "echo: hello world", 3.
    assert meters.one(TOKENS, token_type="input").sum == 2
    assert meters.one(TOKENS, token_type="output").sum == 3


async def test_anthropic_messages_are_chat_operations(recorded: Recorded) -> None:
    proxy = metered(recorded)
    body = {"model": "claude-echo", "max_tokens": 32, "messages": MESSAGES}
    assert (await post(proxy, "/v1/messages", body)).status_code == 200
    duration = recorded.meters().one(DURATION)
    assert duration.attributes["gen_ai.operation.name"] == "chat"
    assert duration.attributes["gen_ai.request.model"] == "claude-echo"


async def test_a_failed_request_records_its_error_type_and_no_tokens(recorded: Recorded) -> None:
    down = httpx.Response(500, json={"error": {"message": "down"}})
    proxy = metered(recorded, mock=mock(down))
    response = await post(proxy, "/v1/chat/completions", chat("gpt-mock"))
    assert response.status_code >= 500
    meters = recorded.meters()
    duration = meters.one(DURATION)
    assert dict(duration.attributes) == {**MOCK, "error.type": "server_error"}
    assert meters.points(TOKENS) == []


async def test_a_model_no_provider_serves_is_other_without_a_provider(recorded: Recorded) -> None:
    proxy = metered(recorded)
    response = await post(proxy, "/v1/chat/completions", chat("someone-typed-this"))
    assert response.status_code >= 400
    duration = recorded.meters().one(DURATION)
    assert dict(duration.attributes) == {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "other",
        "error.type": str(response.status_code),
    }


async def test_endpoints_that_are_no_genai_operation_record_nothing(recorded: Recorded) -> None:
    proxy = metered(recorded)
    transport = httpx.ASGITransport(app=proxy)
    async with (
        proxy.lifespan(),
        httpx.AsyncClient(transport=transport, base_url="http://proxy") as client,
    ):
        assert (await client.get("/v1/models")).status_code == 200
    assert recorded.meters().by_name == {}


def test_without_a_host_provider_nothing_is_built() -> None:
    # This process never sets the global provider: the API's stand-in is no provider.
    assert host_meter_provider() is None
    proxy = build_proxy(CONFIG)
    app: Any = proxy.pipeline
    while not isinstance(app, MetricsMiddleware):
        app = app.app
    assert app.otel_metrics is None


WIRING = """
import asyncio, json, sys

from tests.asgi_helpers import AsgiDriver, http_scope

CONFIG = {"providers": {"echo": {"kind": "echo", "models": ["gpt-echo"]}},
          "store": {"url": "sqlite:///:memory:"}}
BODY = json.dumps({"model": "gpt-echo", "messages": [{"role": "user", "content": "hi"}]})


async def main(with_provider):
    if with_provider:
        from opentelemetry import metrics
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader

        reader = InMemoryMetricReader()
        metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    from llm_proxy_mw import build_proxy

    proxy = build_proxy(CONFIG)
    scope = http_scope("/v1/chat/completions", method="POST",
                       headers=[("content-type", "application/json")])
    async with proxy.lifespan():
        async with AsgiDriver(proxy, scope, disconnect_when_complete=True) as driver:
            await driver.run(BODY.encode())
    names = []
    if with_provider:
        data = reader.get_metrics_data()
        names = sorted(m.name for r in data.resource_metrics for s in r.scope_metrics
                       for m in s.metrics)
    loaded = "opentelemetry.metrics" in sys.modules
    print(json.dumps({"status": driver.status, "names": names, "metrics_loaded": loaded}))


asyncio.run(main(sys.argv[1] == "on"))
"""


@pytest.mark.parametrize("setting", ["off", "on"])
def test_the_builder_records_on_the_hosts_global_provider_only(setting: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(WIRING), setting],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["status"] == 200
    if setting == "off":
        # No provider, no instrument: the core never loads the metrics API by itself (the
        # span layer loads the tracing API, to see a provider the host sets later).
        assert seen == {"status": 200, "names": [], "metrics_loaded": False}
    else:
        assert seen["names"] == [DURATION, TOKENS]
