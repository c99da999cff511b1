"""OpenTelemetry end to end: the example app under ``opentelemetry-instrument``, exporting
OTLP/HTTP to a receiver in the test, joins the host's traces and metrics.

The app (``examples/app.py``) runs as ``opentelemetry-instrument python -m uvicorn
examples.app:app`` (``test_metrics_e2e.app_process``), its provider pointed at the fake
provider, its exporters at ``tests.fakes.otlp_receiver``. The official openai SDK sends a chat
and a stream through ``/llm/v1``. The trace must start at the host's SERVER span (Starlette's
instrumentation), hold the proxy's GenAI CLIENT span ``chat <model>`` below it and an attempt
span below that, and reach the provider as a ``traceparent`` whose parent is the attempt span;
the GenAI metrics arrive on the host's meters. With the collector down (nothing listening,
or 503), requests go on unharmed. Every wait is bounded; every process is stopped.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import require_binary
from tests.fakes.otlp_receiver import OtlpReceiver, ReceivedSpan, unreachable_endpoint
from tests.fakes.provider import FakeProviderServer
from tests.test_metrics_e2e import app_process, client

pytestmark = pytest.mark.e2e

MODEL = "gpt-otel"
#: Seconds to wait for an export: the app exports spans every 0.1 s and metrics every 0.5 s.
EXPORT_WAIT = 20.0
CHAT_PATH = "/llm/v1/chat/completions"


def instrument() -> str:
    """``opentelemetry-instrument`` of this interpreter's environment (the ``dev`` extra);
    skipped locally when missing, a failure in CI."""
    beside = Path(sys.executable).with_name("opentelemetry-instrument")
    return str(beside) if beside.exists() else require_binary("opentelemetry-instrument")


def write_config(tmp: Path, provider_url: str) -> Path:
    path = tmp / "proxy.toml"
    path.write_text(
        f"""
[providers.openai]
kind = "openai"
base_url = "{provider_url}/v1"
api_key = "sk-otel-e2e-provider-key"
models = ["{MODEL}"]

[providers.openai.retry]
max_attempts = 1

[store]
url = "sqlite:///{tmp / "store.db"}"
""",
        encoding="utf-8",
    )
    return path


def otel_env(endpoint: str) -> dict[str, str]:
    return {
        "OTEL_SERVICE_NAME": "otel-e2e-host",
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_METRICS_EXPORTER": "otlp",
        "OTEL_LOGS_EXPORTER": "none",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_METRIC_EXPORT_INTERVAL": "500",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "2",
        "OTEL_SEMCONV_STABILITY_OPT_IN": "gen_ai_latest_experimental",
    }


def sdk(url: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{url}/llm/v1",
        api_key="client-key",
        max_retries=0,
        http_client=httpx.Client(timeout=10.0, trust_env=False),
    )


@dataclass
class Run:
    """What one instrumented app run produced: the receiver and the provider's requests."""

    receiver: OtlpReceiver
    provider: FakeProviderServer
    streamed_text: str


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    """The instrumented example app served one chat and one stream; the receiver and the
    fake provider stay up for the module's assertions."""
    launcher = instrument()
    tmp = tmp_path_factory.mktemp("otel-e2e")
    with OtlpReceiver(timeout=EXPORT_WAIT) as receiver, FakeProviderServer() as provider:
        config = write_config(tmp, provider.url)
        env = otel_env(receiver.url)
        with app_process(config, tmp / "app.log", env=env, launcher=[launcher]) as url:
            with sdk(url) as llm:
                answer = llm.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": "hello world"}]
                )
                assert answer.choices[0].message.content
                stream = llm.chat.completions.create(
                    model=MODEL,
                    messages=[{"role": "user", "content": "hello stream"}],
                    stream=True,
                    stream_options={"include_usage": True},
                )
                text = "".join(
                    chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices
                )
            yield Run(receiver, provider, text)


def is_proxied_server_span(span: ReceivedSpan) -> bool:
    target = span.attributes.get("url.path") or span.attributes.get("http.target") or ""
    return span.kind == "SERVER" and str(target).startswith(CHAT_PATH)


def genai_span_below(run: Run, server: ReceivedSpan) -> ReceivedSpan:
    """The proxy's ``chat <model>`` CLIENT span of ``server``'s trace."""
    return run.receiver.wait_for_span(
        lambda s: s.trace_id == server.trace_id and s.name == f"chat {MODEL}" and s.kind == "CLIENT"
    )


def ancestors(span: ReceivedSpan, spans: list[ReceivedSpan]) -> list[str]:
    """The span ids above ``span`` in its trace, nearest first (bounded by the span count)."""
    by_id = {s.span_id: s for s in spans if s.trace_id == span.trace_id}
    found: list[str] = []
    parent = span.parent_id
    while parent and parent in by_id and len(found) <= len(by_id):
        found.append(parent)
        parent = by_id[parent].parent_id
    return found


def test_the_hosts_server_span_traces_the_proxied_request(run: Run) -> None:
    server = run.receiver.wait_for_span(is_proxied_server_span)
    assert server.resource["service.name"] == "otel-e2e-host"
    assert server.scope.startswith("opentelemetry.instrumentation")
    assert run.streamed_text


def test_the_genai_metrics_arrive_on_the_hosts_meters(run: Run) -> None:
    receiver = run.receiver
    for token_type in ("input", "output"):
        # Both requests' tokens, once an export holds them (points are cumulative).
        point = receiver.wait_for_points(
            "gen_ai.client.token.usage",
            lambda p, kind=token_type: p.attributes["gen_ai.token.type"] == kind and p.count == 2,
        )[-1]
        assert point.unit == "{token}" and point.sum > 0
        assert point.attributes == {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "openai",
            "gen_ai.request.model": MODEL,
            "gen_ai.response.model": MODEL,
            "gen_ai.token.type": token_type,
            "server.address": "127.0.0.1",
            "server.port": run.provider.port,
        }
    duration = receiver.wait_for_points("gen_ai.client.operation.duration", lambda p: p.count == 2)
    assert duration[-1].unit == "s" and "error.type" not in duration[-1].attributes
    first = receiver.wait_for_points("gen_ai.client.operation.time_to_first_chunk")
    assert first[-1].count == 1 and first[-1].sum <= duration[-1].sum


def test_the_genai_span_descends_from_the_hosts_server_span(run: Run) -> None:
    server = run.receiver.wait_for_span(is_proxied_server_span)
    genai = genai_span_below(run, server)
    assert server.span_id in ancestors(genai, run.receiver.spans)
    assert genai.attributes["gen_ai.operation.name"] == "chat"
    assert genai.attributes["gen_ai.provider.name"] == "openai"
    assert genai.attributes["gen_ai.request.model"] == MODEL


def test_an_attempt_span_under_the_genai_span_reaches_the_provider(run: Run) -> None:
    server = run.receiver.wait_for_span(is_proxied_server_span)
    genai = genai_span_below(run, server)
    # The host's ASGI instrumentation also traces each ``send`` (INTERNAL spans) in the
    # context current at the time, the GenAI span's: the attempt is the CLIENT child.
    attempt = run.receiver.wait_for_span(
        lambda s: (
            s.trace_id == genai.trace_id and s.parent_id == genai.span_id and s.kind == "CLIENT"
        )
    )
    assert attempt.name == "POST"
    received = run.provider.app.wait_for_requests(2)
    parents = {r.headers.get("traceparent", "") for r in received}
    sent = [p for p in parents if p.startswith(f"00-{genai.trace_id}-{attempt.span_id}-")]
    assert len(sent) == 1
    assert int(sent[0].rsplit("-", 1)[1], 16) & 1  # sampled (the SDK may add its random bit)


@pytest.mark.parametrize("collector", ["unreachable", "answers 503"])
def test_a_collector_that_is_down_never_reaches_a_request(collector: str, tmp_path: Path) -> None:
    launcher = instrument()
    with OtlpReceiver() as receiver, FakeProviderServer() as provider:
        receiver.refuse = 503
        endpoint = unreachable_endpoint() if collector == "unreachable" else receiver.url
        config = write_config(tmp_path, provider.url)
        env = otel_env(endpoint)
        with app_process(config, tmp_path / "app.log", env=env, launcher=[launcher]) as url:
            with sdk(url) as llm:
                for _ in range(3):
                    answer = llm.chat.completions.create(
                        model=MODEL, messages=[{"role": "user", "content": "hello"}]
                    )
                    assert answer.choices[0].message.content
            with client(url) as http:
                assert http.get("/").status_code == 200
        if collector == "answers 503":
            assert receiver.requests("/v1/traces") + receiver.requests("/v1/metrics") >= 1
            assert receiver.spans == [] and receiver.points == []
