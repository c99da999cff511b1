"""OpenTelemetry: what tracing and the GenAI metrics cost per request, and a collector that
is down.

CPU: the full stack (``build_proxy`` over no-op transports, as ``layers`` times it) in three
configurations, each in a process of its own since global providers are set once per process:
*none* (no telemetry layer: ``[otel] enabled = false``), *off* (the layer, no provider) and
*on* (the SDK's ``TracerProvider`` with a ``BatchSpanProcessor`` and ``MeterProvider`` with a
periodic reader, both exporting OTLP/HTTP to a local sink). ``time.process_time`` counts every
thread, the exporters' too. Goals: *on* at most 30 µs over *off*; *off* within noise of *none*.

Collector down: the example app under ``opentelemetry-instrument`` and uvicorn, mixed load
(``_load_client.mixed``) for 60 s (``--quick``: 5 s) with its OTLP endpoint reachable, then
unreachable (nothing listens), then reachable again, so that drift of a shared machine shows.
Goals: p99 latency with the collector down at most 5% above the reachable runs' (it may well
be lower: nothing is exported); RSS stays bounded (the SDK's batch queue drops what it cannot
send).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from benchmarks._load_client import PREFIX, Tally, mixed
from benchmarks._procs import Processes, cpus, peak_rss_mb, rss_mb
from benchmarks._table import num, table
from benchmarks.fixtures import N_STREAM_CHUNKS
from benchmarks.layers import Case, _measure, _noop_transports, _run, make_env
from benchmarks.load_memory import write_config
from benchmarks.overhead import HOST, free_port, wait_ready

__all__ = ["main"]

ROOT = Path(__file__).resolve().parent.parent
CONFIGURATIONS = ("none", "off", "on")
ON_GOAL_US = 30.0
P99_GOAL = 0.05


class _Sink(BaseHTTPRequestHandler):
    """A collector that takes every export and keeps nothing."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802 (the http.server hook's name)
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


@contextmanager
def collector() -> Iterator[str]:
    """An OTLP/HTTP sink on loopback, in this process (not the measured one); its URL."""
    server = ThreadingHTTPServer((HOST, 0), _Sink)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="otlp-sink", daemon=True)
    thread.start()
    try:
        yield f"http://{HOST}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _configure(setting: str, endpoint: str) -> None:
    """Set this process's global providers for ``setting``: none, the API only, or the SDK."""
    if setting == "none":
        return
    from opentelemetry import metrics, trace

    if setting == "off":
        return
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    tracer_provider = TracerProvider()
    exporter = OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces")
    tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(tracer_provider)
    reader = PeriodicExportingMetricReader(
        OTLPMetricExporter(endpoint=f"{endpoint}/v1/metrics"), export_interval_millis=1000
    )
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))


async def _child_rows(setting: str, quick: bool) -> dict[str, float | None]:
    from llm_proxy_mw import build_proxy
    from llm_proxy_mw.config import OtelConfig

    rounds, seconds = (3, 0.05) if quick else (7, 0.3)
    with tempfile.TemporaryDirectory(prefix="llm-bench-otel-") as store_dir:
        env = make_env(store_dir)
        config = env.config
        if setting == "none":
            config = config.model_copy(update={"otel": OtelConfig(enabled=False)})
        proxy = build_proxy(config, transports=_noop_transports(config))
        async with proxy.lifespan(None):
            rows = {}
            for stream in (False, True):
                row = await _measure(Case("full stack", proxy, stream=stream), rounds, seconds)
                rows["sse" if stream else "json"] = row.median_us
    loaded = any(name.split(".")[0] == "opentelemetry" for name in sys.modules)
    return {**rows, "otel_loaded": float(loaded)}


def child(setting: str, endpoint: str, quick: bool) -> None:
    """The measured process: configure, time the full stack, print the figures as JSON."""
    _configure(setting, endpoint)
    print(json.dumps(_run(_child_rows(setting, quick))), flush=True)


def cpu_figures(quick: bool) -> dict[str, dict[str, Any]]:
    """Each configuration's µs per JSON request and per stream, from its own process."""
    figures = {}
    with collector() as endpoint:
        for setting in CONFIGURATIONS:
            argv = [sys.executable, "-m", "benchmarks.otel", "--child", setting, endpoint]
            argv += ["--quick"] if quick else []
            done = subprocess.run(
                argv, cwd=ROOT, capture_output=True, text=True, timeout=600, check=True
            )
            figures[setting] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def _instrumented_app(procs: Processes, workdir: Path, provider_port: int, endpoint: str) -> Any:
    """The example app under ``opentelemetry-instrument``, exporting to ``endpoint``."""
    port = free_port()
    instrument = str(Path(sys.executable).with_name("opentelemetry-instrument"))
    argv = [instrument, sys.executable, "-m", "uvicorn", "examples.app:app", "--host", HOST]
    argv += ["--port", str(port), "--no-access-log", "--workers", "1"]
    env = dict(
        os.environ,
        LLM_PROXY_CONFIG=str(write_config(workdir, provider_port)),
        OTEL_SERVICE_NAME="bench-host",
        OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_METRICS_EXPORTER="otlp",
        OTEL_LOGS_EXPORTER="none",
        OTEL_METRIC_EXPORT_INTERVAL="1000",
    )
    name = f"otel-app-{port}"
    proxy = procs.start(name, argv, cpu=cpus()[0], env=env, cwd=ROOT)
    if not wait_ready(proxy, port, PREFIX + "/v1/chat/completions", timeout=60):
        raise RuntimeError("the app did not become ready:\n" + procs.log_tail(name))
    return proxy, port


def collector_down(quick: bool) -> dict[str, tuple[Tally, float, float]]:
    """Mixed load with the collector reachable, unreachable, then reachable again: the
    tally, the RSS after a warm-up and at the end (MiB), each on a fresh app process."""
    seconds = 5.0 if quick else 60.0
    results = {}
    with (
        tempfile.TemporaryDirectory(prefix="bench-otel-") as directory,
        Processes(Path(directory)) as procs,
        collector() as reachable,
    ):
        argv = [sys.executable, "-m", "benchmarks.fake_provider", "--port", "0"]
        provider = procs.start("provider", argv, cpu=cpus()[1], cwd=ROOT, stdout_pipe=True)
        line = procs.wait_line(provider, timeout=20)
        if not line:
            raise RuntimeError("fake provider did not start:\n" + procs.log_tail("provider"))
        unreachable = f"http://{HOST}:{free_port()}"
        runs = (
            ("reachable", reachable),
            ("unreachable", unreachable),
            ("reachable again", reachable),
        )
        for label, endpoint in runs:
            app, port = _instrumented_app(procs, Path(directory), int(line), endpoint)
            _run(mixed(port, total=2_000, concurrency=16))  # warm-up
            warm = rss_mb(app.pid)
            tally = _run(mixed(port, total=10**7, concurrency=16, deadline=seconds))
            results[label] = (tally, warm, peak_rss_mb(app.pid))
            procs.stop(app)
    return results


def report(cpu: dict[str, dict[str, Any]], down: dict[str, tuple[Tally, float, float]]) -> str:
    none, off, on = (cpu[s] for s in CONFIGURATIONS)
    cost = on["json"] - off["json"] if on["json"] and off["json"] else None
    noise = off["json"] - none["json"] if off["json"] and none["json"] else None
    rows = [
        [
            setting,
            num(cpu[setting]["json"], 1),
            num(cpu[setting]["sse"], 1),
            "yes" if cpu[setting]["otel_loaded"] else "no",
        ]
        for setting in CONFIGURATIONS
    ]
    verdict = "meets" if cost is not None and cost <= ON_GOAL_US else "**misses**"
    text = [
        "## OpenTelemetry: CPU per request, and a collector that is down",
        "",
        "Full stack `build_proxy()` over no-op transports, µs of CPU per request (every "
        "thread of the process, the exporters' included); each configuration in its own "
        "process. *none*: no telemetry layer (`[otel] enabled = false`); *off*: the layer, "
        "no provider; "
        "*on*: SDK TracerProvider + BatchSpanProcessor + MeterProvider with a periodic reader, "
        "OTLP/HTTP to a local sink.",
        "",
        table(
            ["configuration", "JSON µs", f"SSE ({N_STREAM_CHUNKS} chunks) µs", "otel loaded"],
            rows,
        ),
        "",
        f"- on − off: {num(cost, 1)} µs per JSON request (goal ≤ {ON_GOAL_US:g}): {verdict}",
        f"- off − none: {num(noise, 1)} µs (goal: within noise)",
    ]
    if down:
        reach, warm_a, peak_a = down["reachable"]
        cut, warm_b, peak_b = down["unreachable"]
        again = down["reachable again"][0]
        p99s = [p for p in (reach.percentile_ms(99), again.percentile_ms(99)) if p]
        p99_b = cut.percentile_ms(99)
        p99_a = sum(p99s) / len(p99s) if len(p99s) == 2 else None
        moved = (p99_b / p99_a - 1) if p99_a and p99_b else None
        rows = [
            [
                label,
                f"{sum(t.ok.values()):,}",
                str(dict(t.problems)),
                num(t.percentile_ms(50), 2),
                num(t.percentile_ms(99), 2),
                f"{warm:.0f} → {peak:.0f}",
            ]
            for label, (t, warm, peak) in down.items()
        ]
        ok = moved is not None and moved < P99_GOAL
        text += [
            "",
            "Collector down: the example app under `opentelemetry-instrument`, mixed load at "
            "concurrency 16, the OTLP endpoint reachable, then with nothing listening, then "
            "reachable again.",
            "",
            table(
                ["collector", "ok", "problems", "p50 ms", "p99 ms", "RSS MiB (warm → peak)"], rows
            ),
            "",
            f"- p99 with the collector down vs the reachable runs' mean: "
            f"{num(None if moved is None else moved * 100, 1)}% "
            f"(goal: under +{P99_GOAL * 100:g}%): {'meets' if ok else '**misses**'}; peak RSS "
            f"{peak_b - warm_b:+.0f} MiB over warm-up with the collector down "
            f"({peak_a - warm_a:+.0f} MiB reachable)",
        ]
    return "\n".join(text)


def main(*, quick: bool = False) -> str:
    """Run both parts and return the markdown report."""
    return report(cpu_figures(quick), collector_down(quick))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], sys.argv[3], quick="--quick" in sys.argv)
