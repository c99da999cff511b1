"""Where the telemetry layer sits and when: ``[otel]``, the ``otel`` extra, the global
``TracerProvider`` (set in a fresh interpreter: it can be set once per process), and the
API internal the layer's zero-cost check reads."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from opentelemetry import trace

from llm_proxy_mw import build_proxy
from llm_proxy_mw._otel_names import add_request_attributes, latest_experimental, span_name
from llm_proxy_mw.config import ConfigError, parse_config
from tests.test_builder import layers

ROOT = Path(__file__).resolve().parent.parent
ECHO = {"providers": {"demo": {"kind": "echo"}}}


def test_the_layer_sits_inside_the_request_context_when_the_extra_is_installed() -> None:
    assert layers(build_proxy(ECHO).pipeline)[:3] == [
        "RequestContextMiddleware",
        "TelemetryMiddleware",
        "MetricsMiddleware",
    ]


def test_otel_enabled_false_leaves_the_layer_out() -> None:
    proxy = build_proxy({**ECHO, "otel": {"enabled": False}})
    assert "TelemetryMiddleware" not in layers(proxy.pipeline)


def test_without_the_extra_the_layer_is_left_out_and_otel_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.trace", None)
    assert "TelemetryMiddleware" not in layers(build_proxy(ECHO).pipeline)
    with pytest.raises(ConfigError) as caught:
        parse_config({**ECHO, "otel": {"capture_content": True}})
    assert "[otel] needs the otel extra: pip install 'llm-proxy-mw[otel]'" in str(caught.value)
    parse_config({**ECHO, "otel": {"enabled": False}})  # nothing to trace: nothing needed


def test_the_zero_cost_check_reads_the_apis_global_provider() -> None:
    """``TelemetryMiddleware._recording_tracer`` reads ``trace._TRACER_PROVIDER``: ``None``
    until a provider is set, then the one set (checked in the subprocess test below)."""
    assert "_TRACER_PROVIDER" in vars(trace)


SCRIPT = """
import asyncio, json

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from llm_proxy_mw import build_proxy
from tests.asgi_helpers import AsgiDriver, http_scope

CHAT = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()


async def call(app):
    scope = http_scope("/v1/chat/completions", method="POST",
                       headers=[("content-type", "application/json")])
    async with AsgiDriver(app, scope, disconnect_when_complete=True) as driver:
        await driver.run(CHAT)
    return driver.status


async def main():
    proxy = build_proxy({"providers": {"demo": {"kind": "echo"}}})
    async with proxy.lifespan():
        before = await call(proxy)
        # The host sets its provider after the proxy was built (in its own startup).
        spans = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(spans))
        trace.set_tracer_provider(provider)
        assert trace._TRACER_PROVIDER is provider
        after = await call(proxy)
    names = [s.name for s in spans.get_finished_spans()]
    print(json.dumps({"statuses": [before, after], "spans": names}))


asyncio.run(main())
"""


def test_a_global_provider_set_after_the_build_is_used_from_then_on() -> None:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SCRIPT)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.splitlines()[-1])
    assert seen == {"statuses": [200, 200], "spans": ["POST", "chat m"]}


# -- names -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "method", "model", "name"),
    [
        ("/v1/chat/completions", "POST", "gpt-4o", "chat gpt-4o"),
        ("/v1/completions", "POST", "davinci", "text_completion davinci"),
        ("/v1/embeddings", "POST", None, "embeddings"),
        ("/v1/files/file-abc", "GET", None, "GET files"),
        ("/v1/messages/count_tokens", "POST", "c", "POST messages"),
        ("/v1/made-up-by-a-client", "POST", "m", "POST other"),
        ("/", "GET", None, "GET other"),
    ],
)
def test_span_names_are_bounded(path: str, method: str, model: str | None, name: str) -> None:
    assert span_name(path, method, model) == name


def request_attributes(body: dict[str, object]) -> dict[str, object]:
    attributes: dict[str, object] = {}
    add_request_attributes(body, attributes)
    return attributes


def test_request_attributes_take_numbers_only() -> None:
    assert request_attributes({"max_tokens": True, "temperature": "hot", "top_p": 0.9}) == {
        "gen_ai.request.top_p": 0.9
    }
    assert request_attributes({"max_output_tokens": 7}) == {"gen_ai.request.max_tokens": 7}
    assert request_attributes(
        {"max_completion_tokens": "9", "max_tokens": 8, "temperature": 0}
    ) == {
        "gen_ai.request.max_tokens": 8,
        "gen_ai.request.temperature": 0,
    }


def test_the_stability_opt_in_is_a_comma_separated_list() -> None:
    assert latest_experimental({"OTEL_SEMCONV_STABILITY_OPT_IN": "http,gen_ai_latest_experimental"})
    assert not latest_experimental({"OTEL_SEMCONV_STABILITY_OPT_IN": "http"})
    assert not latest_experimental({})
