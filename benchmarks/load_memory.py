"""Load and memory (issue 7): nothing lost, nothing mixed up, memory flat, streams paced.

The examples app under uvicorn (uvloop, httptools, one worker, pinned to the first CPU) with
an API key and two providers, one per wire format, both pointing at ``fake_provider`` (pinned
to the second CPU with this process, which is the client). In order, on one proxy process:

1. mixed: JSON and streams, OpenAI and Anthropic, at concurrency 64; every answer checked;
2. markers: 200 streams open at once, each with its own marker echoed in every event;
3. soak: rounds of mixed requests, the proxy's RSS after each;
4. a huge stream read as fast as possible, the proxy's RSS sampled meanwhile;
5. the same stream read at 100 KB/s for 5 s, then abandoned: how far the provider got, and
   where the bytes in between are (client, kernel socket queues, the proxy itself);
6. a last round of mixed requests: the proxy is unharmed.
"""

from __future__ import annotations

import asyncio
import os
import resource
import secrets
import sys
import tempfile
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from benchmarks._load_big import RssWatch, SlowRead, Transfer, read_fast, read_slowly
from benchmarks._load_client import KINDS, PREFIX, PROVIDERS, Tally, concurrent_streams, mixed
from benchmarks._procs import Processes, cpu_busy_seconds, cpu_seconds, cpus, rss_mb
from benchmarks._table import num, table
from benchmarks.fixtures import CLIENT_KEY, UPSTREAM_KEY
from benchmarks.overhead import free_port, wait_ready

__all__ = ["main"]

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
MIB = 1 << 20
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Plan:
    mixed: int
    concurrency: int
    rounds: int
    round_size: int
    big: int
    streams: int
    slow_seconds: float


def plan(quick: bool) -> Plan:
    if quick:
        return Plan(1_000, 64, 4, 300, 64 * MIB, 200, 5.0)
    return Plan(10_000, 64, 10, 2_000, 256 * MIB, 200, 5.0)


@dataclass(slots=True)
class Results:
    idle_rss: float = 0.0
    mixed: Tally | None = None
    #: During the mixed load, % of the wall time: the proxy's CPU, other processes on the
    #: proxy's CPU, the client's + provider's.
    mixed_cpu: tuple[float, float, float] | None = None
    streams: Tally | None = None
    soak: list[Tally] = field(default_factory=list)
    soak_rss: list[float] = field(default_factory=list)
    fast: Transfer | None = None
    fast_rss: RssWatch | None = None
    slow: SlowRead | None = None
    slow_rss: RssWatch | None = None
    after: Tally | None = None
    final_rss: float = 0.0
    problems: list[str] = field(default_factory=list)


def write_config(workdir: Path, provider_port: int) -> Path:
    """An OpenAI-kind and an Anthropic-kind provider, both the fake one, and an API key.
    The pools take 256 connections, so that 200 streams are really open at once."""
    blocks = []
    for kind, name in PROVIDERS.items():
        blocks.append(
            f"""[providers.{name}]
kind = "{kind}"
base_url = "http://{HOST}:{provider_port}/v1"
api_key = "{UPSTREAM_KEY}"
models = ["*"]

[providers.{name}.pool]
max_connections = 256
"""
        )
    path = workdir / "llm-proxy.toml"
    path.write_text(
        "# Written by benchmarks/load_memory.py for one run.\n"
        + "\n".join(blocks)
        + f"""
[auth]
api_keys = [{{ name = "bench", key = "{CLIENT_KEY}" }}]

[store]
url = "sqlite:///{workdir}/llm-proxy.db"
"""
    )
    return path


def _run(coro: Coroutine[Any, Any, _T]) -> _T:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def _progress(text: str) -> None:
    print(f"  load: {text}", file=sys.stderr, flush=True)


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _tally_line(t: Tally) -> str:
    rate = t.issued / t.seconds if t.seconds else 0.0
    return (
        f"{sum(t.ok.values()):,}/{t.total:,} ok, lost {t.lost}, problems {dict(t.problems)}, "
        f"{rate:,.0f} req/s"
    )


def measure(procs: Processes, workdir: Path, p: Plan, pins: tuple[int, int]) -> Results:
    proxy_cpu, load_cpu = pins
    out = Results()
    argv = [sys.executable, "-m", "benchmarks.fake_provider", "--port", "0"]
    provider = procs.start("provider", argv, cpu=load_cpu, cwd=ROOT, stdout_pipe=True)
    line = procs.wait_line(provider, timeout=20)
    if not line:
        raise RuntimeError("fake provider did not start:\n" + procs.log_tail("provider"))
    provider_port = int(line)
    port = free_port()
    argv = [sys.executable, "-m", "uvicorn", "examples.app:app", "--host", HOST]
    argv += ["--port", str(port), "--loop", "uvloop", "--http", "httptools"]
    argv += ["--no-access-log", "--workers", "1"]
    env = dict(os.environ, LLM_PROXY_CONFIG=str(write_config(workdir, provider_port)))
    proxy = procs.start("load-proxy", argv, cpu=proxy_cpu, env=env, cwd=ROOT)
    if not wait_ready(proxy, port, PREFIX + "/v1/chat/completions", timeout=60):
        raise RuntimeError("proxy did not become ready:\n" + procs.log_tail("load-proxy"))
    pid = proxy.pid
    out.idle_rss = rss_mb(pid)

    busy = cpu_busy_seconds(proxy_cpu)
    before = cpu_seconds(pid), cpu_seconds(provider.pid) + _own_cpu(), time.monotonic()
    out.mixed = _run(mixed(port, total=p.mixed, concurrency=p.concurrency))
    wall = time.monotonic() - before[2]
    proxy_cpu_s = cpu_seconds(pid) - before[0]
    others = max(0.0, cpu_busy_seconds(proxy_cpu) - busy - proxy_cpu_s)
    load_cpu_s = cpu_seconds(provider.pid) + _own_cpu() - before[1]
    out.mixed_cpu = (proxy_cpu_s / wall * 100, others / wall * 100, load_cpu_s / wall * 100)
    _progress(f"mixed {_tally_line(out.mixed)}")
    out.streams = _run(concurrent_streams(port, n=p.streams))
    _progress(f"streams {_tally_line(out.streams)}, peak open {out.streams.peak_open}")
    for n in range(p.rounds):
        out.soak.append(_run(mixed(port, total=p.round_size, concurrency=p.concurrency)))
        out.soak_rss.append(rss_mb(pid))
        _progress(f"soak round {n + 1}: {_tally_line(out.soak[-1])}, RSS {out.soak_rss[-1]:.1f}")
    with RssWatch(pid) as out.fast_rss:
        out.fast = read_fast(port, p.big, f"mk{secrets.token_hex(6)}")
    _progress(f"fast stream: {out.fast.received:,} bytes, RSS +{out.fast_rss.growth:.1f} MiB")
    with RssWatch(pid) as out.slow_rss:
        out.slow = read_slowly(
            port, provider_port, p.big, f"mk{secrets.token_hex(6)}", seconds=p.slow_seconds
        )
        time.sleep(0.5)  # the abandoned stream's teardown is part of the figure
    _progress(
        f"slow stream: read {out.slow.client_read:,}, provider sent {out.slow.upstream_sent:,} "
        f"bytes, queues {out.slow.queues}, RSS +{out.slow_rss.growth:.1f} MiB"
    )
    out.after = _run(mixed(port, total=200, concurrency=16))
    out.final_rss = rss_mb(pid)
    if proxy.poll() is not None:
        out.problems.append(
            f"the proxy exited ({proxy.returncode}):\n{procs.log_tail('load-proxy')}"
        )
    return out


# -- the report ----------------------------------------------------------------------------


def _verdict(ok: bool | None) -> str:
    return "" if ok is None else ("meets" if ok else "**misses**")


class _Rows:
    def __init__(self) -> None:
        self.rows: list[list[str]] = []
        self.missed: list[str] = []

    def add(self, check: str, figure: str, goal: str = "", ok: bool | None = None) -> None:
        self.rows.append([check, figure, goal, _verdict(ok)])
        if ok is False:
            self.missed.append(f"{check}: {figure} (goal {goal})")

    def tally(self, name: str, t: Tally | None, *, speed: bool = True) -> None:
        if t is None:
            self.add(f"{name}: not run", "–")
            return
        ok = sum(t.ok.values())
        kinds = ", ".join(f"{k} {t.ok[k]:,}" for k in KINDS if t.ok[k])
        self.add(
            f"{name}: complete, own answers",
            f"{ok:,} of {t.total:,} ({kinds})",
            "all",
            ok == t.total,
        )
        self.add(f"{name}: lost", num(t.lost), "0", t.lost == 0)
        statuses = {k: v for k, v in t.problems.items() if k.startswith("status")}
        shown = ", ".join(f"{k[7:]}: {v}" for k, v in statuses.items()) or "0"
        self.add(f"{name}: unexpected status codes", shown, "0", not statuses)
        wrong = t.count("cross-talk") + t.count("malformed")
        self.add(f"{name}: cross-talk or malformed", num(wrong), "0", wrong == 0)
        if speed and t.seconds:
            self.add(
                f"{name}: rate, latency p50 / p99",
                f"{t.issued / t.seconds:,.0f} req/s, {num(t.percentile_ms(50), 1)} / "
                f"{num(t.percentile_ms(99), 1)} ms",
            )


def report(r: Results, p: Plan, header: str) -> str:
    rows = _Rows()
    rows.tally(f"{p.mixed:,} mixed, c{p.concurrency}", r.mixed)
    if r.mixed_cpu is not None:
        rows.add(
            f"{p.mixed:,} mixed: CPU busy, proxy / others on its CPU / client + provider",
            "{:.0f}% / {:.0f}% / {:.0f}%".format(*r.mixed_cpu),
        )
    if r.streams is not None:
        rows.tally(f"{p.streams} streams at once", r.streams, speed=False)
        rows.add(
            f"{p.streams} streams at once: streaming at the same moment (peak)",
            num(r.streams.peak_open),
            f"all {p.streams} (else the check above covers fewer at once)",
            r.streams.peak_open == p.streams,
        )
    if r.soak:
        soak = Tally()
        for t in r.soak:
            soak.merge(t)
        rows.tally(f"soak {p.rounds} x {p.round_size:,}", soak, speed=False)
        rss = ", ".join(f"{x:.2f}" for x in r.soak_rss)
        rows.add("soak: proxy RSS after each round, MiB", rss)
        if len(r.soak_rss) >= 2:
            base = r.soak_rss[1]
            grown = max(r.soak_rss[1:]) - base
            drift = grown / base * 100
            # The growth spread over the requests since round 2: a bound on any per-request leak.
            per_request = grown * MIB / (p.round_size * (len(r.soak_rss) - 1))
            rows.add(
                "soak: RSS growth from round 2 (max − round 2)",
                f"{drift:+.1f}% ({grown * 1024:+,.0f} KiB, {per_request:,.0f} B/request)",
                "≤ 10%",
                drift <= 10,
            )
    big = f"{p.big // MIB} MiB stream"
    if r.fast is not None and r.fast_rss is not None:
        f = r.fast
        rate = f.received / MIB / f.seconds if f.seconds else 0
        figure = f"{f.received / MIB:,.1f} MiB in {f.seconds:.1f} s ({rate:,.0f} MiB/s)"
        rows.add(
            f"{big}, fast client: delivered whole",
            figure + (f", {f.error}" if f.error else ""),
            "whole, ends with [DONE]",
            f.whole,
        )
        rows.add(
            f"{big}, fast client: proxy RSS growth (peak − before)",
            f"{r.fast_rss.growth:.1f} MiB ({r.fast_rss.before:.1f} → {r.fast_rss.peak:.1f})",
            "< 32 MiB",
            r.fast_rss.growth < 32,
        )
    if r.slow is not None and r.slow_rss is not None:
        _slow_rows(rows, r.slow, r.slow_rss, big)
    rows.tally("afterwards, 200 mixed", r.after, speed=False)
    rows.add("proxy RSS: idle → end, MiB", f"{r.idle_rss:.1f} → {r.final_rss:.1f}")
    text = [
        "## Load and memory: examples app under uvicorn, both wire formats",
        "",
        header,
        "",
        table(["check", "measured", "goal", "verdict"], rows.rows, "llll"),
        "",
        "Goals missed: none." if not rows.missed else "Goals missed:\n",
        *(f"- {m}" for m in rows.missed),
    ]
    examples = [
        (name, t)
        for name, t in (("mixed", r.mixed), ("streams", r.streams), ("afterwards", r.after))
        if t is not None
    ]
    examples += [(f"soak round {i + 1}", t) for i, t in enumerate(r.soak)]
    seen = [f"- {name}: {e}" for name, t in examples for e in t.examples[:3]]
    if seen:
        text += ["", "Problems seen (the first few of each run):", "", *seen]
    text += [f"\n**problem**: {problem}" for problem in r.problems]
    return "\n".join(text)


def _slow_rows(rows: _Rows, s: SlowRead, watch: RssWatch, big: str) -> None:
    name = f"{big}, slow client"
    rows.add(
        f"{name}: read",
        f"{s.client_read / 1000:,.0f} KB in {s.seconds:.1f} s ({s.client_rate() / 1000:,.0f} KB/s)"
        + (f", {s.error}" if s.error else ""),
        "~100 KB/s",
    )
    held = s.held_by_proxy
    rows.add(
        f"{name}: the provider got to write",
        f"{s.upstream_sent / MIB:,.2f} MiB of {s.size / MIB:,.0f} MiB",
        "read + socket queues + ≤ 4 MiB",
        held <= 4 * MIB and s.upstream_sent < s.size,
    )
    queues = ", ".join(
        f"{where} {(tx + rx) / MIB:,.2f}" for where, (tx, rx) in s.queues.items() if tx + rx
    )
    rows.add(
        f"{name}: of which in kernel socket queues",
        f"{s.kernel_queued / MIB:,.2f} MiB ({queues or 'none'})",
    )
    rows.add(
        f"{name}: of which held inside the proxy (written − read − queued)",
        f"{held / MIB:,.2f} MiB",
        "≤ 4 MiB",
        held <= 4 * MIB,
    )
    late = s.late_rate()
    client = s.client_rate()
    rows.add(
        f"{name}: upstream write rate, second half of the read",
        "–" if late is None else f"{late / 1000:,.0f} KB/s (client {client / 1000:,.0f} KB/s)",
        "≤ 2x the client's rate",
        None if late is None else late <= 2 * client,
    )
    rows.add(
        f"{name}: proxy RSS growth (peak − before)",
        f"{watch.growth:.1f} MiB ({watch.before:.1f} → {watch.peak:.1f})",
        "< 32 MiB",
        watch.growth < 32,
    )
    after = s.upstream_closed_after
    rows.add(
        f"{name}: upstream closed after the client left",
        "never"
        if after is None
        else f"{after * 1000:,.0f} ms, {s.upstream_sent_final / MIB:,.2f} MiB written by then",
        "≤ 1 s",
        after is not None and after <= 1,
    )


def main(*, quick: bool = False) -> str:
    """Run the load and memory checks and return their markdown report."""
    p = plan(quick)
    proxy_cpu, load_cpu, cpu_note = cpus()
    original = os.sched_getaffinity(0)
    # This process is the client: it shares the second CPU with the fake provider.
    os.sched_setaffinity(0, {load_cpu})
    started = time.monotonic()
    try:
        with (
            tempfile.TemporaryDirectory(prefix="llm-bench-load-") as tmp,
            Processes(Path(tmp)) as procs,
        ):
            results = measure(procs, Path(tmp), p, (proxy_cpu, load_cpu))
    finally:
        os.sched_setaffinity(0, original)
    header = (
        f"`examples.app` under uvicorn (uvloop, httptools, 1 worker) pinned to CPU {proxy_cpu}, "
        f"API key auth, an OpenAI-kind and an Anthropic-kind provider (pools of 256) on "
        f"`benchmarks/fake_provider.py`; it and the checking client pinned to CPU {load_cpu}"
        + (f" ({cpu_note})" if cpu_note else "")
        + ". Mixed = OpenAI and Anthropic, JSON and SSE (22/25 events) in equal shares, "
        "closed loop; every answer must be complete (JSON parsed, stream with every event and "
        "its end), status 200, and carry its own marker (echoed in every event) and no other. "
        "RSS = the proxy's VmRSS from /proc, sampled every 10 ms during the huge streams. "
        f"Took {time.monotonic() - started:.0f} s."
    )
    return report(results, p, header)
