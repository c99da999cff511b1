"""What the proxy costs over a bare passthrough: the examples app under uvicorn against the
aiohttp passthrough floor, through real servers and sockets.

Both proxies are served the same way (uvicorn, uvloop, httptools, one worker, pinned to the
first CPU) in front of the same fast fake provider, and driven by the same load (``wrk`` when
installed, else ``benchmarks.loadgen``), both pinned to the second CPU. The proxy's CPU per
request comes from ``/proc`` around each measured window; it is the steadiest figure, and the
one issue 6 budgets as a ratio to the floor measured in the same run.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import _pyspy
from benchmarks._procs import (
    Pin,
    Processes,
    cpu_busy_seconds,
    cpu_seconds,
    cpus,
    peak_rss_mb,
    rss_mb,
)
from benchmarks._table import num, ratio, table
from benchmarks.fixtures import (
    CHAT,
    CHAT_SSE_EVENTS,
    CLIENT_KEY,
    UPSTREAM_KEY,
    request_body,
)

__all__ = [
    "CHAT_PATH",
    "HOST",
    "ROOT",
    "Contender",
    "Load",
    "Outcome",
    "Run",
    "Scenario",
    "choose_tool",
    "floor_contender",
    "free_port",
    "main",
    "ours_contender",
    "pinned_run",
    "write_config",
]

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
CHAT_PATH = "/v1/chat/completions"
SSE_BODY = b"".join(CHAT_SSE_EVENTS)


@dataclass(frozen=True, slots=True)
class Scenario:
    key: str
    title: str
    connections: int
    duration: float
    warmup: float
    stream: bool = False
    model: str = "gpt-4o-mini"


SCENARIO_ORDER = ("ns32", "st32", "ns1", "delay256")


def scenarios(quick: bool) -> tuple[list[Scenario], int]:
    """Issue 6's four loads and the number of rounds; ``quick`` only checks that it works."""
    warm, long, short = (1.0, 2.0, 2.0) if quick else (1.0, 6.0, 5.0)
    return [
        Scenario("ns32", "c32 JSON", 32, long, warm),
        Scenario("st32", "c32 SSE", 32, long, warm, stream=True),
        Scenario("ns1", "c1 JSON", 1, short, warm),
        Scenario("delay256", "c256 100 ms provider", 256, short, warm, model="bench-delay"),
    ], (1 if quick else 3)


@dataclass(slots=True)
class Load:
    """One measured window. ``cpu_us`` is the proxy's CPU per completed request."""

    requests: int = 0
    errors: int = 0
    rps: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    ttfb_p50_ms: float | None = None
    detail: str = ""
    cpu_us: float | None = None
    #: % of the window (100 = one CPU): the proxy (all its processes); other processes on
    #: the proxy's CPU; our load generator and fake provider on theirs; other processes there.
    #: When proxy and load share their CPUs, ``others_pct`` counts every other process on
    #: them and ``load_others_pct`` stays empty.
    proxy_pct: float | None = None
    others_pct: float | None = None
    load_pct: float | None = None
    load_others_pct: float | None = None


@dataclass(frozen=True, slots=True)
class Contender:
    """A proxy to serve under uvicorn: its import string, URL prefix and environment."""

    key: str
    app: str
    prefix: str
    env: dict[str, str]
    workers: int = 1
    #: A proxy that is no ASGI app of ours (LiteLLM's): the command that serves it, with
    #: ``{port}`` in place of the port, and how to check its answers (default: byte for byte).
    command: tuple[str, ...] = ()
    check: Callable[[int, str], list[str]] | None = None


def floor_contender(provider_port: int, *, key: str = "floor", workers: int = 1) -> Contender:
    """The aiohttp passthrough in front of the fake provider."""
    env = dict(os.environ, UPSTREAM=f"http://{HOST}:{provider_port}")
    return Contender(key, "benchmarks.floor_aiohttp:app", "", env, workers)


def ours_contender(
    config: Path, *, key: str = "ours", workers: int = 1, env: dict[str, str] | None = None
) -> Contender:
    """The examples app (the proxy mounted at ``/llm``) serving ``config``; in multiprocess
    metrics mode only if ``env`` sets ``PROMETHEUS_MULTIPROC_DIR`` (not from the shell)."""
    base = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    full = {**base, **(env or {}), "LLM_PROXY_CONFIG": str(config)}
    return Contender(key, "examples.app:app", "/llm", full, workers)


@dataclass(slots=True)
class Outcome:
    startup_s: float | None = None
    idle_rss_mb: float | None = None
    peak_rss_mb: float | None = None
    #: The median over rounds of each load; every round's own figures.
    loads: dict[str, Load] = field(default_factory=dict)
    rounds: dict[str, list[Load]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    #: Per profiled load: py-spy's tables, package shares, and CPU µs/request meanwhile.
    profiles: dict[str, tuple[str, dict[str, float], float | None]] = field(default_factory=dict)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def post(port: int, path: str, body: bytes, timeout: float = 5.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        headers = {"content-type": "application/json", "authorization": f"Bearer {CLIENT_KEY}"}
        conn.request("POST", path, body, headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def wait_ready(proc: subprocess.Popen[bytes], port: int, path: str, timeout: float) -> bool:
    """Ready = the first 200 on the proxied path, as the shared harness defines it."""
    deadline = time.monotonic() + timeout
    body = request_body()
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if post(port, path, body, timeout=2.0)[0] == 200:
                return True
        except OSError:
            pass
        time.sleep(0.01)
    return False


def check_bodies(port: int, path: str) -> list[str]:
    """Both answers must pass through byte for byte: nothing re-serialised, nothing lost."""
    problems = []
    status, body = post(port, path, request_body())
    if status != 200 or body != CHAT:
        problems.append(f"JSON answer: status {status}, {len(body)} bytes, not the provider's")
    status, body = post(port, path, request_body(stream=True))
    if status != 200 or body != SSE_BODY:
        done = body.rstrip().endswith(b"data: [DONE]")
        problems.append(
            f"SSE answer: status {status}, {len(body)} bytes (provider sent {len(SSE_BODY)}), "
            f"ends with [DONE]: {done}"
        )
    return problems


def write_config(workdir: Path, provider_port: int, pool_max: int | None) -> Path:
    """One OpenAI-kind provider for any model, and an API key, as a deployment would have."""
    pool = f"\n[providers.bench.pool]\nmax_connections = {pool_max}\n" if pool_max else ""
    path = workdir / "llm-proxy.toml"
    path.write_text(
        f"""# Written by benchmarks/overhead.py for one run.
[providers.bench]
kind = "openai"
base_url = "http://{HOST}:{provider_port}/v1"
api_key = "{UPSTREAM_KEY}"
models = ["*"]
{pool}
[auth]
api_keys = [{{ name = "bench", key = "{CLIENT_KEY}" }}]

[store]
url = "sqlite:///{workdir}/llm-proxy.db"
"""
    )
    return path


class Run:
    """The processes of one run, and how to load a proxy. ``pins`` = (proxy CPU, load CPU):
    two CPUs, or one CPU or set of CPUs that both share."""

    def __init__(
        self, procs: Processes, workdir: Path, tool: str, profile: bool, pins: tuple[Pin, Pin]
    ) -> None:
        self.procs = procs
        self.workdir = workdir
        self.tool = tool
        self.py_spy = _pyspy.find() if profile else None
        self.proxy_cpu, self.load_cpu = pins
        self.provider_pid = 0
        self.outcomes: dict[str, Outcome] = {}

    def load(self, port: int, path: str, sc: Scenario, duration: float) -> Load:
        if self.tool == "wrk":
            return self._wrk(port, path, sc, duration)
        return self._python(port, path, sc, duration)

    def _python(self, port: int, path: str, sc: Scenario, duration: float) -> Load:
        argv = [sys.executable, "-m", "benchmarks.loadgen", "--port", str(port), "--path", path]
        argv += ["--connections", str(sc.connections), "--duration", str(duration)]
        argv += ["--model", sc.model, "--auth", CLIENT_KEY, "--grace", "15"]
        argv += ["--stream"] if sc.stream else []
        proc = self.procs.start("loadgen", argv, cpu=self.load_cpu, cwd=ROOT, stdout_pipe=True)
        try:
            out, _ = proc.communicate(timeout=duration + 45)
        except subprocess.TimeoutExpired:
            return Load(errors=1, detail="load generator did not finish")
        finally:
            self.procs.stop(proc)
        lines = out.decode().strip().splitlines()
        if not lines:
            return Load(errors=1, detail="load generator failed: " + self.procs.log_tail("loadgen"))
        data = json.loads(lines[-1])
        kinds = data["error_kinds"]
        return Load(
            requests=data["requests"],
            errors=data["errors"],
            rps=data["rps"],
            p50_ms=data["p50_ms"],
            p99_ms=data["p99_ms"],
            ttfb_p50_ms=data["ttfb_p50_ms"],
            detail=", ".join(f"{k} {v}" for k, v in kinds.items()),
        )

    def _wrk(self, port: int, path: str, sc: Scenario, duration: float) -> Load:
        out = self.workdir / "wrk.json"
        out.unlink(missing_ok=True)
        seconds = max(1, round(duration))
        argv = ["wrk", "-t1", f"-c{sc.connections}", f"-d{seconds}s", "--timeout", "10s"]
        argv += ["-s", str(Path(__file__).with_name("chat.lua")), f"http://{HOST}:{port}"]
        env = dict(os.environ, BENCH_PATH=path, BENCH_MODEL=sc.model, BENCH_OUT=str(out))
        env.update(BENCH_STREAM="1" if sc.stream else "0", BENCH_AUTH=CLIENT_KEY)
        proc = self.procs.start("wrk", argv, cpu=self.load_cpu, env=env)
        try:
            proc.wait(timeout=seconds + 30)
        except subprocess.TimeoutExpired:
            return Load(errors=1, detail="wrk did not finish")
        finally:
            self.procs.stop(proc)
        if not out.exists():
            return Load(errors=1, detail="wrk failed: " + self.procs.log_tail("wrk"))
        data = json.loads(out.read_text())
        kinds = {k[4:]: data[k] for k in data if k.startswith("err_") and data[k]}
        return Load(
            requests=data["requests"] - data["err_status"],
            errors=sum(kinds.values()),
            rps=data["requests"] / (data["duration_us"] / 1e6),
            p50_ms=data["lat_p50_us"] / 1000,
            p99_ms=data["lat_p99_us"] / 1000,
            detail=", ".join(f"{k} {v}" for k, v in kinds.items()),
        )

    def _window(self, pid: int, port: int, path: str, sc: Scenario) -> Load:
        """One measured load, with the proxy's CPU and who else used the CPUs meanwhile."""
        return self.watch(pid, lambda: self.load(port, path, sc, sc.duration))

    def watch(self, pid: int, work: Callable[[], Load]) -> Load:
        """Run ``work`` (a load against the proxy ``pid``, 0 for none) and add to what it
        returns the proxy's CPU per request and who used the CPUs meanwhile."""
        started = time.monotonic()
        proxy_before = cpu_seconds(pid)
        load_before = self._load_side_seconds()
        busy_before = cpu_busy_seconds(self.proxy_cpu), cpu_busy_seconds(self.load_cpu)
        load = work()
        spent = cpu_seconds(pid) - proxy_before
        load_side = self._load_side_seconds() - load_before
        wall = time.monotonic() - started
        load.cpu_us = spent / load.requests * 1e6 if load.requests else None
        load.proxy_pct = spent / wall * 100
        load.load_pct = load_side / wall * 100
        proxy_busy = cpu_busy_seconds(self.proxy_cpu) - busy_before[0]
        if self.proxy_cpu != self.load_cpu:
            load_busy = cpu_busy_seconds(self.load_cpu) - busy_before[1]
            load.others_pct = max(0.0, proxy_busy - spent) / wall * 100
            load.load_others_pct = max(0.0, load_busy - load_side) / wall * 100
        else:
            load.others_pct = max(0.0, proxy_busy - spent - load_side) / wall * 100
        return load

    def _load_side_seconds(self) -> float:
        """CPU of the load side: finished load generators (reaped children), the fake
        provider, and this orchestrator."""
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        me = resource.getrusage(resource.RUSAGE_SELF)
        total = children.ru_utime + children.ru_stime + me.ru_utime + me.ru_stime
        return total + (cpu_seconds(self.provider_pid) if self.provider_pid else 0.0)

    def _profile(
        self, pid: int, port: int, path: str, sc: Scenario
    ) -> tuple[str, dict[str, float], float | None]:
        """An extra window under py-spy (after the measured ones, so they stay unperturbed)."""
        assert self.py_spy is not None
        out = self.workdir / f"py-spy-{pid}-{sc.key}.txt"
        seconds = max(1, int(sc.duration) - 1)
        argv = [self.py_spy, "record", "--pid", str(pid), "--duration", str(seconds)]
        argv += ["--rate", "250", "--nonblocking", "--format", "raw", "--output", str(out)]
        spy = self.procs.start("py-spy", argv, cpu=self.load_cpu)
        try:
            load = self._window(pid, port, path, sc)
            spy.wait(timeout=30)
        except subprocess.TimeoutExpired:
            load = Load()
        finally:
            self.procs.stop(spy)
        if not out.exists():
            return "py-spy failed: " + self.procs.log_tail("py-spy", 5), {}, None
        return _pyspy.summarize(out), _pyspy.package_shares(out), load.cpu_us

    def start_provider(self, module: str = "benchmarks.fake_provider") -> int:
        """Serve the fake provider ``module`` on the load CPU; its port."""
        argv = [sys.executable, "-m", module, "--port", "0"]
        proc = self.procs.start("provider", argv, cpu=self.load_cpu, cwd=ROOT, stdout_pipe=True)
        line = self.procs.wait_line(proc, timeout=20)
        if not line:
            raise RuntimeError("fake provider did not start:\n" + self.procs.log_tail("provider"))
        self.provider_pid = proc.pid
        return int(line)

    def start(self, contender: Contender, outcome: Outcome) -> Served | None:
        """Serve one proxy; ``None`` (and a problem noted) if it never answers."""
        port = free_port()
        argv = [arg.replace("{port}", str(port)) for arg in contender.command]
        if not argv:
            argv = [sys.executable, "-m", "uvicorn", contender.app, "--host", HOST]
            argv += ["--port", str(port), "--loop", "uvloop", "--http", "httptools"]
            # The benchmark opens no websockets: --ws none spares uvicorn importing a websocket
            # library at start (~40 ms when one is installed, as uvicorn[standard] does).
            argv += ["--no-access-log", "--ws", "none", "--workers", str(contender.workers)]
        path = contender.prefix + CHAT_PATH
        started = time.perf_counter()
        proc = self.procs.start(
            contender.key, argv, cpu=self.proxy_cpu, env=contender.env, cwd=ROOT
        )
        ready = wait_ready(proc, port, path, timeout=60)
        if ready and contender.workers > 1:
            ready = self._workers_started(contender.key, contender.workers, timeout=60)
        if not ready:
            tail = self.procs.log_tail(contender.key)
            outcome.problems.append(f"did not become ready:\n```\n{tail}\n```")
            self.procs.stop(proc)
            return None
        outcome.startup_s = time.perf_counter() - started
        outcome.problems += (contender.check or check_bodies)(port, path)
        outcome.idle_rss_mb = rss_mb(proc.pid)
        return Served(contender.key, proc, port, path, outcome)

    def _workers_started(self, key: str, workers: int, timeout: float) -> bool:
        """The first 200 came from one worker: wait until uvicorn logged every worker's
        start-up, so that the measured windows meet all of them."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.procs.log(key).count("Application startup complete") >= workers:
                return True
            time.sleep(0.05)
        return False

    def measure(self, contenders: list[Contender], runs: list[Scenario], rounds: int) -> None:
        """Both proxies stay up (the idle one costs nothing); each load runs on one, then
        straight away on the other, round after round, so that both meet the same machine."""
        served = []
        for contender in contenders:
            outcome = Outcome()
            self.outcomes[contender.key] = outcome
            one = self.start(contender, outcome)
            if one is not None:
                served.append(one)
        try:
            for n in range(rounds):
                for sc in runs:
                    # Alternate who goes first, so neither always follows the other's load.
                    for one in served if n % 2 == 0 else served[::-1]:
                        self.load(one.port, one.path, sc, sc.warmup)
                        load = self._window(one.proc.pid, one.port, one.path, sc)
                        one.outcome.rounds.setdefault(sc.key, []).append(load)
                        _progress(f"round {n + 1} {one.key} {sc.key}", load)
            for one in served:
                one.outcome.peak_rss_mb = peak_rss_mb(one.proc.pid)
                one.outcome.loads = {k: median(v) for k, v in one.outcome.rounds.items()}
            if self.py_spy:
                for sc in runs:
                    if sc.key in ("ns32", "st32", "delay256"):
                        for one in served:
                            profile = self._profile(one.proc.pid, one.port, one.path, sc)
                            one.outcome.profiles[sc.key] = profile
        finally:
            for one in served:
                self.procs.stop(one.proc)


@dataclass(frozen=True, slots=True)
class Served:
    key: str
    proc: subprocess.Popen[bytes]
    port: int
    path: str
    outcome: Outcome


def median(loads: list[Load]) -> Load:
    """Per figure, the median over rounds; errors add up; run conditions keep the worst."""

    def med(values: list[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return statistics.median(present) if present else None

    def worst(values: list[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return max(present) if present else None

    return Load(
        requests=sum(x.requests for x in loads),
        errors=sum(x.errors for x in loads),
        rps=statistics.median(x.rps for x in loads),
        p50_ms=med([x.p50_ms for x in loads]),
        p99_ms=med([x.p99_ms for x in loads]),
        ttfb_p50_ms=med([x.ttfb_p50_ms for x in loads]),
        detail="; ".join(x.detail for x in loads if x.detail),
        cpu_us=med([x.cpu_us for x in loads]),
        proxy_pct=med([x.proxy_pct for x in loads]),
        others_pct=worst([x.others_pct for x in loads]),
        load_pct=worst([x.load_pct for x in loads]),
        load_others_pct=worst([x.load_others_pct for x in loads]),
    )


def _progress(what: str, load: Load) -> None:
    print(
        f"  {what}: {load.rps:,.0f} req/s, CPU {num(load.cpu_us)} µs/req, "
        f"errors {load.errors} {load.detail}",
        file=sys.stderr,
        flush=True,
    )


# -- the report ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Metric:
    label: str
    value: Callable[[Outcome], float | None]
    digits: int = 0
    goal: str = ""


def _of(key: str, attr: str) -> Callable[[Outcome], float | None]:
    def value(o: Outcome) -> float | None:
        load = o.loads.get(key)
        return None if load is None else getattr(load, attr)

    return value


def _added(attr: str, direct: Load | None) -> Callable[[Outcome], float | None]:
    def value(o: Outcome) -> float | None:
        load = o.loads.get("ns1")
        base = None if direct is None else getattr(direct, attr)
        mine = None if load is None else getattr(load, attr)
        return None if mine is None or base is None else mine - base

    return value


def _metrics(direct: Load | None, python_load: bool) -> list[_Metric]:
    rows = [
        _Metric("c32 JSON: requests/s", _of("ns32", "rps")),
        _Metric("c32 JSON: latency p50 ms", _of("ns32", "p50_ms"), 2),
        _Metric("c32 JSON: latency p99 ms", _of("ns32", "p99_ms"), 2),
        _Metric("c32 JSON: CPU µs/request", _of("ns32", "cpu_us"), 0, "≤ 1.5x floor"),
        _Metric("c32 JSON: errors", _of("ns32", "errors")),
        _Metric("c32 SSE: streams/s", _of("st32", "rps")),
        _Metric("c32 SSE: stream p50 ms", _of("st32", "p50_ms"), 2),
        _Metric("c32 SSE: stream p99 ms", _of("st32", "p99_ms"), 2),
    ]
    if python_load:
        rows.append(_Metric("c32 SSE: first byte p50 ms", _of("st32", "ttfb_p50_ms"), 2))
    rows += [
        _Metric("c32 SSE: CPU µs/stream", _of("st32", "cpu_us"), 0, "≤ 1.5x floor"),
        _Metric("c32 SSE: errors", _of("st32", "errors")),
        _Metric("c1 JSON: requests/s", _of("ns1", "rps")),
        _Metric("c1 JSON: latency p50 ms", _of("ns1", "p50_ms"), 3),
        _Metric("c1 JSON: latency p99 ms", _of("ns1", "p99_ms"), 3),
        _Metric("c1 JSON: added p50 ms vs direct", _added("p50_ms", direct), 3, "≤ 0.5 ms"),
        _Metric("c1 JSON: added p99 ms vs direct", _added("p99_ms", direct), 3, "≤ 2 ms"),
        _Metric("c1 JSON: CPU µs/request", _of("ns1", "cpu_us")),
        _Metric("c1 JSON: errors", _of("ns1", "errors")),
        _Metric("c256 100 ms: requests/s (ideal 2,560)", _of("delay256", "rps"), 0, "≥ 0.9x floor"),
        _Metric("c256 100 ms: latency p50 ms", _of("delay256", "p50_ms"), 1),
        _Metric("c256 100 ms: latency p99 ms", _of("delay256", "p99_ms"), 1),
        _Metric("c256 100 ms: CPU µs/request", _of("delay256", "cpu_us")),
        _Metric("c256 100 ms: errors", _of("delay256", "errors")),
        _Metric("startup s (spawn to first 200)", lambda o: o.startup_s, 2, "< 1 s"),
        _Metric("idle RSS MB", lambda o: o.idle_rss_mb, 1),
        _Metric("peak RSS MB (VmHWM)", lambda o: o.peak_rss_mb, 1, "≤ 80 MB"),
    ]
    return rows


def _goals(floor: Outcome, ours: Outcome, direct: Load | None) -> list[str]:
    """Issue 6's goals beside what this run measured for llm_proxy_mw."""

    def share(key: str, attr: str) -> float | None:
        a, b = _of(key, attr)(ours), _of(key, attr)(floor)
        return None if a is None or not b else a / b

    def line(name: str, value: float | None, fmt: str, goal: str, ok: bool | None) -> str:
        shown = "not measured" if value is None else fmt.format(value)
        verdict = "" if ok is None or value is None else (" — meets" if ok else " — misses")
        return f"- {name}: {shown} (goal {goal}){verdict}"

    cpu, stream = share("ns32", "cpu_us"), share("st32", "cpu_us")
    p50, p99 = _added("p50_ms", direct)(ours), _added("p99_ms", direct)(ours)
    c256 = share("delay256", "rps")
    rss, startup = ours.peak_rss_mb, ours.startup_s
    return [
        line("CPU/request vs floor (c32 JSON)", cpu, "{:.2f}x", "≤ 1.5x", cpu and cpu <= 1.5),
        line(
            "CPU/stream vs floor (c32 SSE)", stream, "{:.2f}x", "≤ 1.5x", stream and stream <= 1.5
        ),
        line("added latency p50, 1 connection", p50, "{:.3f} ms", "≤ 0.5 ms", p50 and p50 <= 0.5),
        line("added latency p99, 1 connection", p99, "{:.3f} ms", "≤ 2 ms", p99 and p99 <= 2),
        line("c256 on a 100 ms provider vs floor", c256, "{:.2f}x", "≥ 0.9x", c256 and c256 >= 0.9),
        line("peak RSS under load", rss, "{:.1f} MB", "≤ 80 MB", rss and rss <= 80),
        line("start-up", startup, "{:.2f} s", "< 1 s", startup and startup < 1),
        "- measured by `python -m benchmarks scaling` instead (they need the cores this run "
        "gives to the load): per-event added latency p99 ≤ 5 ms; `--workers 2` scaling ≥ 1.7x.",
    ]


def _conditions(floor: Outcome, ours: Outcome) -> str:
    """Was the run clean? Other processes on the proxy's CPU, or a saturated load CPU, skew it."""
    rows = []
    for key in SCENARIO_ORDER:
        for name, outcome in (("floor", floor), ("ours", ours)):
            load = outcome.loads.get(key)
            if load is None or load.others_pct is None:
                continue
            cells = [load.others_pct, load.load_pct, load.load_others_pct]
            rows.append([f"{key} {name}", *(num(c) for c in cells)])
    if not rows:
        return ""
    return "\n".join(
        [
            "Run conditions, % of each measured window. Trust the figures when other processes "
            "took ~0 of either CPU and the load CPU was not saturated (load + others < ~90):",
            "",
            table(
                [
                    "window",
                    "others on the proxy CPU",
                    "load + fake provider on the load CPU",
                    "others on the load CPU",
                ],
                rows,
            ),
        ]
    )


def _by_package(
    key: str,
    floor: tuple[str, dict[str, float], float | None],
    ours: tuple[str, dict[str, float], float | None],
) -> str:
    """CPU µs per request by package of the running frame, floor beside ours (C code and
    syscalls count towards the Python frame that called them)."""
    _, floor_shares, floor_cpu = floor
    _, our_shares, our_cpu = ours
    names = sorted(
        floor_shares.keys() | our_shares.keys(),
        key=lambda n: -max(our_shares.get(n, 0) * (our_cpu or 0), 0),
    )
    rows = []
    for name in names[:12]:
        a = floor_shares.get(name, 0.0) * (floor_cpu or 0)
        b = our_shares.get(name, 0.0) * (our_cpu or 0)
        rows.append([name, num(a), num(b), f"{b - a:+,.0f}"])
    rows.append(["total (CPU µs/request in this window)", num(floor_cpu), num(our_cpu), ""])
    return table(["package of the running frame", "floor µs/req", "ours µs/req", "Δ µs"], rows)


def report(floor: Outcome, ours: Outcome, direct: Load | None, header: str, tool: str) -> str:
    python_load = tool == "python"
    rows = []
    for metric in _metrics(direct, python_load):
        a, b = metric.value(floor), metric.value(ours)
        rows.append(
            [metric.label, num(a, metric.digits), num(b, metric.digits), ratio(b, a), metric.goal]
        )
    text = [
        "## End-to-end: examples app vs the aiohttp passthrough floor",
        "",
        header,
        "",
        table(
            ["metric", "floor: aiohttp passthrough", "llm_proxy_mw", "ours / floor", "goal"],
            rows,
            "lrrrl",
        ),
    ]
    if direct is not None:
        text += [
            "",
            f"Direct (load → fake provider, no proxy), 1 connection: p50 "
            f"{num(direct.p50_ms, 3)} ms, p99 {num(direct.p99_ms, 3)} ms.",
        ]
    text += ["", "Goals (issue 6), llm_proxy_mw in this run:", *_goals(floor, ours, direct)]
    text += ["", _conditions(floor, ours)]
    for key, (summary, _, _) in ours.profiles.items():
        text += ["", f"### py-spy: where llm_proxy_mw's CPU goes under the {key} load", ""]
        if key in floor.profiles:
            text += [_by_package(key, floor.profiles[key], ours.profiles[key]), ""]
        text += [summary]
    for name, outcome in (("floor", floor), ("llm_proxy_mw", ours)):
        details = [f"{k}: {v.detail}" for k, v in outcome.loads.items() if v.detail]
        for problem in outcome.problems + details:
            text.append(f"\n**{name}**: {problem}")
    return "\n".join(text)


def choose_tool(requested: str) -> str:
    if requested == "auto":
        return "wrk" if shutil.which("wrk") else "python"
    if requested == "wrk" and not shutil.which("wrk"):
        raise SystemExit("--load wrk: wrk is not installed")
    return requested


@contextlib.contextmanager
def pinned_run(prefix: str, tool: str, profile: bool = False) -> Iterator[Run]:
    """A run in a fresh work directory, its processes stopped on the way out. The orchestrator
    sleeps while loads run; meanwhile it stays on the load CPU, off the proxies'."""
    proxy_cpu, load_cpu, _ = cpus()
    original = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {load_cpu})
    try:
        with tempfile.TemporaryDirectory(prefix=prefix) as tmp, Processes(Path(tmp)) as procs:
            yield Run(procs, Path(tmp), tool, profile, (proxy_cpu, load_cpu))
    finally:
        os.sched_setaffinity(0, original)


def main(
    *, quick: bool = False, load: str = "auto", pool_max: int | None = None, profile: bool = False
) -> str:
    """Run the end-to-end comparison and return its markdown report."""
    tool = choose_tool(load)
    runs, rounds = scenarios(quick)
    proxy_cpu, load_cpu, cpu_note = cpus()
    with pinned_run("llm-bench-overhead-", tool, profile) as run:
        provider_port = run.start_provider()
        config = write_config(run.workdir, provider_port, pool_max)
        contenders = [floor_contender(provider_port), ours_contender(config)]
        ns1 = next(sc for sc in runs if sc.key == "ns1")
        run.load(provider_port, CHAT_PATH, ns1, ns1.warmup)
        direct = run.load(provider_port, CHAT_PATH, ns1, ns1.duration)
        _progress("direct ns1", direct)
        run.measure(contenders, runs, rounds)
        floor, ours = run.outcomes["floor"], run.outcomes["ours"]
    load_text = "wrk 1 thread" if tool == "wrk" else "benchmarks.loadgen (Python, httptools)"
    durations = ", ".join(f"{sc.key} {sc.duration:g} s" for sc in runs)
    header = (
        f"Proxies: uvicorn, uvloop, httptools, 1 worker, pinned to CPU {proxy_cpu}. Load: "
        f"{load_text} and the fake provider, pinned to CPU {load_cpu}. {rounds} round(s), "
        f"floor and ours back to back for each load, each after a {runs[0].warmup:g} s "
        f"warm-up: {durations}; medians over rounds. Pool: "
        + (f"max_connections = {pool_max}" if pool_max else "config defaults")
        + ". CPU µs = the proxy's utime+stime over the window ÷ completed requests."
        + (f" ({cpu_note})" if cpu_note else "")
    )
    return report(floor, ours, direct, header, tool)
