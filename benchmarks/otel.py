"""OpenTelemetry: what tracing and the GenAI metrics cost per request, and a collector that
is down.

CPU: the full stack (``build_proxy`` over no-op transports, as ``layers`` times it) in four
configurations, each in a process of its own since global providers are set once per process:
*none* (no telemetry layer: ``[otel] enabled = false``), *off* (the layer, no provider),
*traces* (the SDK's ``TracerProvider`` with a ``BatchSpanProcessor`` exporting OTLP/HTTP to a
local sink; no ``MeterProvider``) and *traces+metrics* (the same plus a ``MeterProvider`` with a
periodic OTLP reader, so the GenAI metrics are recorded). Each configuration's µs per JSON
request and per SSE stream are timed twice: with ``time.thread_time`` on the request's thread
(the event loop's, where the proxy's work and the SDK's span creation and ending happen) and
with ``time.process_time`` for the whole process (every thread: the span exporter's, the metric
reader's and the proxy's own store-flush thread too), in runs of their own. Requests run in
bursts of ``PACED_BURST`` (``_paced``), each followed by a flush of the span processors: the
exporter keeps up, as in a service that is not overloaded, and never wakes during a burst. The
flush exports on the calling thread: ``process_time`` counts it, ``thread_time`` does not.
*traces* is also timed back to back on the request's thread (``layers._measure``): the batch
queue then overflows (the SDK drops spans) and the request's thread takes turns on the
interpreter with the saturated exporter's, a figure reported beside the goal's. The four
configurations run ``REPEATS`` times, in turn, in an order that turns around each time: each
figure is the median of the repetitions, and a difference (*traces* − *off*) is taken within
each repetition, then the median of those, printed with each repetition's (µs on a shared
machine drift by more than the goal's margin between two runs minutes apart).

The goal (tracing on with a batch exporter at most 30 µs of CPU per request over tracing off)
is read on the request's thread: *traces* − *off* there is what tracing adds to a request. The
exporter's thread is reported apart because its work is the SDK exporter's own protobuf
serialization, the same for every span of any instrumented Python service and off the
request's path. It is in the *traces* process column, and measured directly too: in
the *traces* process, the spans of a few real proxied requests (JSON and SSE) are captured by a
second proxy built with ``tracer_provider=`` a ``TracerProvider`` with a
``SimpleSpanProcessor(InMemorySpanExporter())``, and ``encode_spans(batch).SerializeToString()``
is timed on a batch of 512 spans (the batch processor's default batch) made of those spans
repeated: µs per span × spans per request. The GenAI metrics' cost is *traces+metrics* −
*traces* on the request's thread. Goals: *traces* − *off* on the request's thread at most
30 µs per JSON request; *off* within noise of *none*.

Instructions (when valgrind is installed): µs on a shared machine move by ±20% from run to
run, CPU instructions by under 1%, so the same full stack is also counted by cachegrind
(``benchmarks._instructions``), per JSON request and per stream, each configuration in a
child of its own (``--instructions-child``) with its provider passed to ``build_proxy``:
*none*, *off*, *sampled out* (``ALWAYS_OFF``), *traces* (a ``BatchSpanProcessor`` whose
exporter never runs during the count: the request's own work, with the proxy's direct spans)
and *traces* through the SDK's span objects (a subclass of that processor, which the direct
path leaves to the SDK). No goal of its own: the noise-free comparison beside the µs above.

Collector down: the example app under ``opentelemetry-instrument`` and uvicorn, mixed load
(``_load_client.mixed``) for 60 s (``--quick``: 5 s) with its OTLP endpoint reachable, then
unreachable (nothing listens), then reachable again, so that drift of a shared machine shows.
Goals: p99 latency with the collector down at most 5% above the reachable runs' (it may well
be lower: nothing is exported); RSS stays bounded (the SDK's batch queue drops what it cannot
send).
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import cycle, islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks._instructions import instructions_per_request, valgrind
from benchmarks._load_client import PREFIX, Tally, mixed
from benchmarks._procs import Processes, cpus, peak_rss_mb, rss_mb
from benchmarks._table import num, table
from benchmarks.fixtures import N_STREAM_CHUNKS
from benchmarks.layers import Case, _measure, _noop_transports, _run, make_env
from benchmarks.load_memory import write_config
from benchmarks.overhead import HOST, free_port, wait_ready
from llm_proxy_mw.config import ProxyConfig

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

__all__ = ["main"]

ROOT = Path(__file__).resolve().parent.parent
CONFIGURATIONS = ("none", "off", "traces", "traces+metrics")
#: Times the four configurations are run, in turn (``cpu_figures``; ``--quick``: once).
REPEATS = 3
ON_GOAL_US = 30.0
#: The spans one encode serializes: the ``BatchSpanProcessor``'s default export batch.
EXPORT_BATCH = 512
#: Requests per timed burst (``_paced``): their spans, two each, stay under that batch, so
#: the exporter's thread does not wake during a burst but at the flush after it.
PACED_BURST = 200
#: Proxied requests whose spans make that batch, per kind (JSON, SSE).
CAPTURED_REQUESTS = 4
P99_GOAL = 0.05
#: The configurations whose instructions per request cachegrind counts, and their rows.
INSTRUCTION_SETTINGS = {
    "none": "none",
    "off": "off",
    "sampled-out": "sampled out",
    "traces": "traces (direct spans)",
    "sdk-spans": "traces through the SDK's spans",
}
#: Requests each counted child drives before the counted ones (in both runs: cancelled).
INSTRUCTIONS_WARM_UP = 50


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
    """Set this process's global providers for ``setting``: none, the API only, the SDK's
    tracer provider, or that and its meter provider."""
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
    if setting == "traces":
        return
    reader = PeriodicExportingMetricReader(
        OTLPMetricExporter(endpoint=f"{endpoint}/v1/metrics"), export_interval_millis=1000
    )
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))


async def _child_rows(setting: str, quick: bool) -> dict[str, float | None]:
    from llm_proxy_mw import build_proxy
    from llm_proxy_mw.config import OtelConfig

    rounds, seconds = (3, 0.05) if quick else (7, 0.3)
    clocks = {"thread": time.thread_time, "process": time.process_time}
    rows: dict[str, float | None] = {}
    with tempfile.TemporaryDirectory(prefix="llm-bench-otel-") as store_dir:
        env = make_env(store_dir)
        config = env.config
        if setting == "none":
            config = config.model_copy(update={"otel": OtelConfig(enabled=False)})
        proxy = build_proxy(config, transports=_noop_transports(config))
        async with proxy.lifespan(None):
            for stream in (False, True):
                case = Case("full stack", proxy, stream=stream)
                for name, clock in clocks.items():
                    kind = "sse" if stream else "json"
                    rows[f"{kind}_{name}"] = await _paced(case, rounds, seconds, clock)
                    if setting == "traces" and name == "thread":
                        # The same back to back: the exporter's thread, saturated, takes
                        # turns on the interpreter with the request's.
                        row = await _measure(case, rounds, seconds, clock)
                        rows[f"{kind}_thread_saturated"] = row.median_us
        loaded = any(name.split(".")[0] == "opentelemetry" for name in sys.modules)
        rows["otel_loaded"] = float(loaded)
        if setting == "traces":
            rows |= await _exporter_cost(config, quick)
    return rows


async def _paced(
    case: Case, rounds: int, round_seconds: float, clock: Callable[[], float]
) -> float:
    """µs of ``clock`` per request, as ``layers._measure`` times them, in bursts of
    ``PACED_BURST`` requests, each followed by a flush of the global tracer provider's span
    processors, when it has any: the batch exporter keeps up, as in a service whose exporter
    is not overloaded. The flush exports on the calling thread: counted in ``process_time``
    (every thread's work), not in ``thread_time`` (the request's thread's)."""
    trace = sys.modules.get("opentelemetry.trace")  # not imported by *none*
    flush = getattr(trace.get_tracer_provider(), "force_flush", None) if trace else None
    flush_counts = clock is time.process_time

    async def burst() -> float:
        start = clock()
        await case.drive(PACED_BURST)
        spent = clock() - start
        if flush is not None:
            start = clock()
            flush()
            if flush_counts:
                spent += clock() - start
        return spent

    await burst()
    per = max(await burst() / PACED_BURST, 1e-7)
    bursts = max(1, round(round_seconds / per / PACED_BURST))
    samples = []
    for _ in range(rounds):
        gc.collect()
        spent = sum([await burst() for _ in range(bursts)])
        samples.append(spent / (bursts * PACED_BURST) * 1e6)
    return statistics.median(samples)


async def _exporter_cost(config: ProxyConfig, quick: bool) -> dict[str, float | None]:
    """What the OTLP exporter's thread spends serializing each request's spans: the spans of
    a few real requests (captured in memory through a proxy of their own), repeated into one
    batch, timed through the exporter's encoder. µs per request and spans per request."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from llm_proxy_mw import build_proxy

    captured = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(captured))
    proxy = build_proxy(config, transports=_noop_transports(config), tracer_provider=provider)
    figures: dict[str, float | None] = {}
    async with proxy.lifespan(None):
        for stream in (False, True):
            kind = "sse" if stream else "json"
            case = Case("capture", proxy, stream=stream)
            problem, _ = await case.check()
            if problem:
                raise RuntimeError(f"capturing the {kind} spans: {problem}")
            captured.clear()
            await case.drive(CAPTURED_REQUESTS)
            spans = captured.get_finished_spans()
            per_request = len(spans) / CAPTURED_REQUESTS
            figures[f"spans_{kind}"] = per_request
            if not spans:
                figures[f"export_{kind}"] = 0.0
                continue
            batch = list(islice(cycle(spans), EXPORT_BATCH))
            encode_spans(batch).SerializeToString()  # warm-up
            samples = []
            for _ in range(3 if quick else 15):
                start = time.thread_time()
                encode_spans(batch).SerializeToString()
                samples.append((time.thread_time() - start) / EXPORT_BATCH * 1e6)
            figures[f"export_{kind}"] = statistics.median(samples) * per_request
    provider.shutdown()
    return figures


def child(setting: str, endpoint: str, quick: bool) -> None:
    """The measured process: configure, time the full stack, print the figures as JSON."""
    _configure(setting, endpoint)
    print(json.dumps(_run(_child_rows(setting, quick))), flush=True)


def _instructions_provider(setting: str) -> TracerProvider | None:
    """The tracer provider ``setting`` passes to ``build_proxy``: none (the global, the API's
    no-op), one that samples nothing, or the SDK's with a batch processor (exactly that type:
    the direct spans; a subclass: the SDK's own span objects)."""
    if setting in ("none", "off"):
        return None
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    if setting == "sampled-out":
        return TracerProvider(sampler=ALWAYS_OFF)
    if setting not in ("traces", "sdk-spans"):
        raise ValueError(f"unknown setting {setting!r}")

    class _Discard(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    class _Hooked(BatchSpanProcessor):
        """Not the exact type the proxy's direct path takes: the SDK's spans, as a host's
        processor of its own gets them."""

    # A queue and a batch no run fills and a delay no run reaches: the exporter's thread
    # never wakes while the child counts, so the count is the request's own work (queueing
    # its spans included; serializing them is the exporter's, measured apart).
    kind = _Hooked if setting == "sdk-spans" else BatchSpanProcessor
    processor = kind(
        _Discard(),
        max_queue_size=10**6,
        max_export_batch_size=10**6,
        schedule_delay_millis=10**8,
    )
    provider = TracerProvider()
    provider.add_span_processor(processor)
    return provider


async def _instructions_drive(setting: str, requests: int, stream: bool) -> None:
    """Build the full stack for ``setting``, check one request, warm up, drive ``requests``,
    and leave at once: what shutting down costs is no request's."""
    from llm_proxy_mw import build_proxy
    from llm_proxy_mw.config import OtelConfig

    provider = _instructions_provider(setting)
    with tempfile.TemporaryDirectory(prefix="llm-bench-otel-") as store_dir:
        config = make_env(store_dir).config
        if setting == "none":
            config = config.model_copy(update={"otel": OtelConfig(enabled=False)})
        transports = _noop_transports(config)
        proxy = build_proxy(config, transports=transports, tracer_provider=provider)
        async with proxy.lifespan(None):
            case = Case("x", proxy, stream=stream)
            problem, _ = await case.check()
            if problem:
                print(f"{setting}: {problem}", file=sys.stderr, flush=True)
            else:
                await case.drive(INSTRUCTIONS_WARM_UP)
                await case.drive(requests)
            shutil.rmtree(store_dir, ignore_errors=True)
            os._exit(1 if problem else 0)


def instructions_child(setting: str, requests: int, stream: bool) -> None:
    """The process cachegrind counts (``benchmarks._instructions``), on the loop ``child``
    runs on."""
    _run(_instructions_drive(setting, requests, stream))


def instruction_figures(quick: bool) -> dict[str, dict[str, float | None]] | None:
    """Each setting's instructions per JSON request and per stream, counted by cachegrind;
    None when valgrind is not installed."""
    if valgrind() is None:
        return None
    return {
        setting: {
            "sse" if stream else "json": instructions_per_request(
                setting, stream=stream, quick=quick
            )
            for stream in (False, True)
        }
        for setting in INSTRUCTION_SETTINGS
    }


def cpu_figures(quick: bool) -> list[dict[str, dict[str, Any]]]:
    """Each configuration's µs per JSON request and per stream, on the request's thread and
    for the whole process, from its own process; with the exporter's cost from *traces*.

    One dict per repetition (``REPEATS``), in an order that turns around at each: a drift of
    a shared machine then weighs on every configuration alike, and a difference is read
    within each repetition (``_paired``)."""
    runs = []
    with collector() as endpoint:
        for repetition in range(1 if quick else REPEATS):
            order = CONFIGURATIONS[:: -1 if repetition % 2 else 1]
            figures = {}
            for setting in order:
                argv = [sys.executable, "-m", "benchmarks.otel", "--child", setting, endpoint]
                argv += ["--quick"] if quick else []
                done = subprocess.run(
                    argv, cwd=ROOT, capture_output=True, text=True, timeout=600, check=True
                )
                figures[setting] = json.loads(done.stdout.strip().splitlines()[-1])
            runs.append(figures)
    return runs


def _medians(runs: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Each configuration's figures, each the median of the repetitions that have it."""
    medians: dict[str, dict[str, Any]] = {}
    for setting in CONFIGURATIONS:
        keys = {key for run in runs for key in run[setting]}
        medians[setting] = {}
        for key in keys:
            values = [run[setting][key] for run in runs if run[setting].get(key) is not None]
            medians[setting][key] = _median(values)
    return medians


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _paired(
    runs: list[dict[str, dict[str, Any]]], minuend: str, subtrahend: str, key: str
) -> list[float]:
    """``minuend`` − ``subtrahend`` on ``key`` in each repetition that has both."""
    return [
        a - b
        for run in runs
        if (a := run[minuend].get(key)) is not None and (b := run[subtrahend].get(key)) is not None
    ]


def _spread(values: list[float]) -> str:
    """Each repetition's value, for the report: ``(repetitions: 31.2, 35.0, 33.4)``."""
    return f"(repetitions: {', '.join(f'{v:.1f}' for v in values)})" if values else ""


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


def _minus(a: float | None, b: float | None) -> float | None:
    return a - b if a is not None and b is not None else None


def _over(count: float | None, base: float | None) -> str:
    """A count and, when there is a base, its difference over it: ``591,509 (+34.5%)``."""
    if count is None or not base:
        return num(count, 0)
    return f"{count:,.0f} ({(count / base - 1) * 100:+.1f}%)"


def _signed(value: float | None, digits: int = 0) -> str:
    return "–" if value is None else f"{value:+,.{digits}f}"


def instructions_report(counts: dict[str, dict[str, float | None]] | None) -> list[str]:
    """The cachegrind section: one line when valgrind is missing."""
    if counts is None:
        return [
            "",
            "Instructions per request (cachegrind): skipped, valgrind is not installed.",
        ]
    off = counts["off"]
    rows = [
        [label]
        + [
            _over(counts[setting][kind], None if setting == "off" else off[kind])
            for kind in ("json", "sse")
        ]
        for setting, label in INSTRUCTION_SETTINGS.items()
    ]
    added = _minus(counts["traces"]["json"], off["json"])
    share = None if added is None or not off["json"] else added / off["json"] * 100
    return [
        "",
        "The same full stack counted in CPU instructions, which unlike µs do not move with "
        "the machine's load (under 1% run to run): each configuration in its own process "
        "under `valgrind --tool=cachegrind`, run for two numbers of requests, the difference "
        "of the totals over the difference of the counts (start-up cancelled). *sampled "
        "out*: the SDK's TracerProvider with the `ALWAYS_OFF` sampler; *traces*: the SDK's "
        "TracerProvider + BatchSpanProcessor, whose exporter never runs during the count, so "
        "the count is the request's own work; *traces through the SDK's spans*: the same with "
        "a subclass of BatchSpanProcessor, for which the proxy takes the SDK's own span "
        "objects instead of its direct path. In parentheses: over *off*.",
        "",
        table(
            [
                "instructions per request (cachegrind)",
                "JSON",
                f"SSE ({N_STREAM_CHUNKS} chunks)",
            ],
            rows,
        ),
        "",
        f"- traces − off: {_signed(added)} instructions per JSON request, "
        f"{_signed(share, 1)}% of the untraced stack; the µs goal is read from the "
        "thread-time table above, this table being the noise-free comparison",
    ]


def report(
    runs: list[dict[str, dict[str, Any]]],
    down: dict[str, tuple[Tally, float, float]],
    instructions: dict[str, dict[str, float | None]] | None,
) -> str:
    cpu = _medians(runs)
    none, off, traces, both = (cpu[s] for s in CONFIGURATIONS)
    costs = _paired(runs, "traces", "off", "json_thread")
    cost = _median(costs)
    sse_costs = _paired(runs, "traces", "off", "sse_thread")
    saturated = _minus(traces.get("json_thread_saturated"), off["json_thread"])
    metrics = _minus(both["json_thread"], traces["json_thread"])
    noise = _minus(off["json_thread"], none["json_thread"])
    noise_process = _minus(off["json_process"], none["json_process"])
    rows = [
        [
            setting,
            num(cpu[setting]["json_thread"], 1),
            num(cpu[setting]["json_process"], 1),
            num(cpu[setting]["sse_thread"], 1),
            num(cpu[setting]["sse_process"], 1),
            "yes" if cpu[setting]["otel_loaded"] else "no",
        ]
        for setting in CONFIGURATIONS
    ]
    verdict = "meets" if cost is not None and cost <= ON_GOAL_US else "**misses**"
    spans_json, spans_sse = traces.get("spans_json"), traces.get("spans_sse")
    text = [
        "## OpenTelemetry: CPU per request, and a collector that is down",
        "",
        "Full stack `build_proxy()` over no-op transports, µs of CPU per request, each "
        "configuration in its own process: on the request's thread (`time.thread_time()`, the "
        "event loop's) and for the whole process (`time.process_time()`, every thread: the "
        "exporters', and the proxy's own store flushes), each the median of its own rounds "
        f"(so process − thread is only indicative), then the median of {len(runs)} "
        "repetition(s) of the four, run in turn. *none*: no telemetry layer "
        "(`[otel] enabled = false`); *off*: the layer, no provider; *traces*: SDK "
        "TracerProvider + BatchSpanProcessor, OTLP/HTTP to a local sink; *traces+metrics*: the "
        "same + MeterProvider with a periodic OTLP reader (the GenAI metrics). Requests run in "
        f"bursts of {PACED_BURST}, each followed by a flush of the span processors, so that "
        "the batch exporter keeps up as in a service that is not overloaded: the process "
        "columns include exporting the spans, the thread columns do not (the flush exports on "
        "the calling thread, outside their timing).",
        "",
        table(
            [
                "configuration",
                "JSON thread µs",
                "JSON process µs",
                f"SSE ({N_STREAM_CHUNKS} chunks) thread µs",
                "SSE process µs",
                "otel loaded",
            ],
            rows,
        ),
        "",
        f"- traces − off on the request's thread: {num(cost, 1)} µs per JSON request, the "
        f"median of each repetition's difference {_spread(costs)} (goal ≤ {ON_GOAL_US:g}): "
        f"{verdict}; read on the request's thread since the exporter's thread, off the "
        "request's path, is reported apart; per SSE stream: "
        f"{num(_median(sse_costs), 1)} µs {_spread(sse_costs)}",
        f"- the same back to back, the exporter saturated (its queue overflows, the SDK drops "
        f"spans): {num(saturated, 1)} µs over off on the request's thread, which then takes "
        "turns on the interpreter with the exporter's",
        f"- the OTLP exporter's thread: {num(traces.get('export_json'), 1)} µs per JSON "
        f"request ({num(spans_json, 0)} spans) serializing them, off the request's path "
        f"(SSE: {num(traces.get('export_sse'), 1)} µs, {num(spans_sse, 0)} spans; "
        f"`encode_spans(batch).SerializeToString()` over {EXPORT_BATCH} spans)",
        f"- the GenAI metrics: {num(metrics, 1)} µs per JSON request on the request's thread "
        "(traces+metrics − traces)",
        f"- off − none: {num(noise, 1)} µs on the request's thread, {num(noise_process, 1)} µs "
        "for the whole process (goal: within noise)",
    ]
    text += instructions_report(instructions)
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
    """Run the three parts and return the markdown report."""
    runs = cpu_figures(quick)
    instructions = instruction_figures(quick)
    return report(runs, collector_down(quick), instructions)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], sys.argv[3], quick="--quick" in sys.argv)
    if sys.argv[1:2] == ["--instructions-child"]:
        instructions_child(sys.argv[2], int(sys.argv[3]), stream="--sse" in sys.argv)
