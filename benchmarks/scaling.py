"""Issue 6's two goals that the end-to-end run cannot measure: per-event streaming latency,
and how throughput scales from ``uvicorn --workers 1`` to ``--workers 2``.

**Streaming.** The fake provider's paced stream (``bench-paced``: ``PACED_EVENTS`` chunks
``PACE_MS`` apart, each stamped with the ``time.monotonic_ns()`` of its write) is read by
``_event_client`` straight from the provider (*direct*), through the aiohttp floor and
through the examples app, all served as ``overhead`` serves them (uvicorn, uvloop, httptools, one
worker, pinned to the first CPU; provider and client on the second). Per-event latency =
arrival − send; the added latency is the proxy's percentile minus direct's, at 1 and 16
concurrent streams.

**Workers.** The floor and the examples app, each with ``--workers 1`` and ``--workers 2``,
none pinned, under ``overhead``'s non-streaming load at 64 connections; the 2-worker examples app
with ``PROMETHEUS_MULTIPROC_DIR`` set to a fresh directory, as multiprocess deployments must.
Load generator and fake provider share the same cores, so their CPU is reported beside.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks._event_client import EventTally, check_splitter, paced_streams
from benchmarks._procs import Processes, cpus
from benchmarks._raw_http import run as run_async
from benchmarks._table import num, table
from benchmarks.fixtures import PACE_MS, PACED_EVENTS
from benchmarks.loadgen import percentile
from benchmarks.overhead import (
    CHAT_PATH,
    Load,
    Outcome,
    Run,
    Scenario,
    choose_tool,
    floor_contender,
    ours_contender,
    write_config,
)

__all__ = ["main"]

#: Who the paced streams are read through, in the order of the report's columns.
TARGETS = ("direct", "floor", "ours")
TARGET_TITLES = ("direct (no proxy)", "floor: aiohttp passthrough", "llm_proxy_mw")
#: Issue 6's goals.
ADDED_P99_GOAL_MS = 5.0
SCALING_GOAL = 1.7
#: The reference server: ours, one worker, multiprocess metrics.
MP = "ours-w1-mp"


@dataclass(frozen=True, slots=True)
class Plan:
    #: Rounds of the streaming part; in each, every target at every concurrency.
    rounds: int
    #: Recorded streams per connection and round, by number of concurrent streams.
    streams: dict[int, int]
    #: Unrecorded streams first on each connection.
    warmup_streams: int
    #: The workers part: its load and its rounds.
    load: Scenario
    load_rounds: int


def plan(quick: bool) -> Plan:
    if quick:
        return Plan(1, {1: 2, 16: 1}, 1, Scenario("ns64", "c64 JSON", 64, 2.0, 1.0), 1)
    return Plan(2, {1: 20, 16: 4}, 1, Scenario("ns64", "c64 JSON", 64, 6.0, 2.0), 3)


@dataclass(slots=True)
class Streaming:
    """Per (target, concurrency): the events of every round pooled, and each round's window
    (its run conditions, the proxy's CPU per stream)."""

    tallies: dict[tuple[str, int], EventTally] = field(default_factory=dict)
    windows: dict[tuple[str, int], list[Load]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def _progress(text: str) -> None:
    print(f"  scaling: {text}", file=sys.stderr, flush=True)


def _stream_window(
    run: Run, pid: int, port: int, path: str, connections: int, streams: int, warmup: int
) -> tuple[Load, EventTally]:
    """Unrecorded warm-up streams, then one measured batch of paced streams with the CPU
    and run conditions around it."""
    # Spread the connections over one pace, so that their events interleave.
    stagger = PACE_MS / 1000 / connections
    if warmup:
        run_async(
            paced_streams(port, path, connections=connections, streams=warmup, stagger=stagger)
        )
    tallies: list[EventTally] = []

    def work() -> Load:
        tally = run_async(
            paced_streams(port, path, connections=connections, streams=streams, stagger=stagger)
        )
        tallies.append(tally)
        return Load(
            requests=tally.streams,
            errors=sum(tally.errors.values()),
            rps=tally.streams / tally.seconds if tally.seconds else 0.0,
            detail=", ".join(f"{k} {v}" for k, v in tally.errors.items()),
        )

    load = run.watch(pid, work)
    return load, tallies[0]


def measure_streaming(
    procs: Processes, workdir: Path, p: Plan, tool: str, pins: tuple[int, int]
) -> Streaming:
    out = Streaming()
    if problem := check_splitter():
        out.problems.append(problem)
    run = Run(procs, workdir, tool, False, pins)
    provider_port = run.start_provider()
    config = write_config(workdir, provider_port, None)
    served: dict[str, tuple[int, int, str]] = {"direct": (0, provider_port, CHAT_PATH)}
    for contender in (floor_contender(provider_port), ours_contender(config)):
        outcome = Outcome()
        one = run.start(contender, outcome)
        out.problems += [f"{contender.key}: {x}" for x in outcome.problems]
        if one is not None:
            served[contender.key] = (one.proc.pid, one.port, one.path)
    for n in range(p.rounds):
        for connections, streams in p.streams.items():
            keys = [k for k in TARGETS if k in served]
            # Alternate who goes first, so that no target always follows another's load.
            for key in keys if n % 2 == 0 else keys[::-1]:
                pid, port, path = served[key]
                load, tally = _stream_window(
                    run, pid, port, path, connections, streams, p.warmup_streams
                )
                pooled = out.tallies.setdefault((key, connections), EventTally())
                pooled.latencies_ns += tally.latencies_ns
                pooled.streams += tally.streams
                pooled.errors.update(tally.errors)
                out.windows.setdefault((key, connections), []).append(load)
                ms = sorted(x / 1e6 for x in tally.latencies_ns)
                _progress(
                    f"round {n + 1} {key} c{connections}: {tally.streams} streams, "
                    f"p50 {num(percentile(ms, 50), 3)} ms, p99 {num(percentile(ms, 99), 3)} ms, "
                    f"errors {load.errors} {load.detail}"
                )
    return out


def measure_workers(
    procs: Processes, workdir: Path, p: Plan, tool: str, every: frozenset[int]
) -> dict[str, Outcome]:
    """Floor and ours with 1 and 2 workers, all on every CPU, with the load beside them;
    and, to tell the cost of multiprocess metrics from that of a second worker, ours with one
    worker in multiprocess mode."""
    run = Run(procs, workdir, tool, False, (every, every))
    provider_port = run.start_provider()
    contenders = [
        floor_contender(provider_port, key="floor-w1"),
        floor_contender(provider_port, key="floor-w2", workers=2),
    ]
    for key, workers, multiprocess in (("ours-w1", 1, False), ("ours-w2", 2, True), (MP, 1, True)):
        # Each its own store (and metrics directory), as separate deployments would have.
        (workdir / key / "prometheus").mkdir(parents=True)
        config = write_config(workdir / key, provider_port, None)
        env = {"PROMETHEUS_MULTIPROC_DIR": str(workdir / key / "prometheus")}
        contenders.append(
            ours_contender(config, key=key, workers=workers, env=env if multiprocess else None)
        )
    run.measure(contenders, [p.load], p.load_rounds)
    return run.outcomes


# -- the report ----------------------------------------------------------------------------


def _ms(tally: EventTally | None, pct: float) -> float | None:
    if tally is None:
        return None
    return percentile(sorted(x / 1e6 for x in tally.latencies_ns), pct)


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _verdict(ok: bool | None) -> str:
    return "" if ok is None else (" — meets" if ok else " — **misses**")


def _worst(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _streaming_table(s: Streaming, concurrency: list[int]) -> str:
    rows = []
    for c in concurrency:
        tallies = [s.tallies.get((key, c)) for key in TARGETS]
        direct = tallies[0]
        cpu = [s.windows.get((key, c)) for key in TARGETS]
        for label, pct in (("p50", 50), ("p99", 99), ("max", 100)):
            rows.append(
                [f"c{c}: per-event latency {label} ms"]
                + [num(_ms(t, pct), 3) for t in tallies]
                + [""]
            )
        for label, pct, goal in (("p50", 50, ""), ("p99", 99, f"≤ {ADDED_P99_GOAL_MS:g} ms")):
            added = [_minus(_ms(t, pct), _ms(direct, pct)) for t in tallies[1:]]
            rows.append(
                [f"c{c}: added {label} ms vs direct", "–", *(num(a, 3) for a in added), goal]
            )
        rows.append(
            [f"c{c}: proxy CPU µs/stream ({PACED_EVENTS} events)", "–"]
            + [num(_median([w.cpu_us for w in ws or []])) for ws in cpu[1:]]
            + [""]
        )
        rows.append(
            [f"c{c}: events measured (streams)"]
            + ["–" if t is None else f"{len(t.latencies_ns):,} ({t.streams:,})" for t in tallies]
            + [""]
        )
        rows.append(
            [f"c{c}: errors"]
            + ["–" if t is None else num(sum(t.errors.values())) for t in tallies]
            + [""]
        )
    return table(["metric", *TARGET_TITLES, "goal"], rows, "lrrrl")


def _streaming_conditions(s: Streaming) -> str:
    rows = []
    for (key, c), windows in s.windows.items():
        cells = [
            _worst([w.proxy_pct for w in windows]) if key != "direct" else None,
            _worst([w.others_pct for w in windows]),
            _worst([w.load_pct for w in windows]),
            _worst([w.load_others_pct for w in windows]),
        ]
        rows.append([f"c{c} {key}", *(num(x) for x in cells)])
    return table(
        [
            "window",
            "proxy on its CPU",
            "others on the proxy CPU",
            "provider + client on the load CPU",
            "others on the load CPU",
        ],
        rows,
    )


def _workers_table(outcomes: dict[str, Outcome], key: str) -> str:
    def load(name: str) -> Load | None:
        outcome = outcomes.get(name)
        return None if outcome is None else outcome.loads.get(key)

    def cell(name: str, attr: str, digits: int = 0) -> str:
        one = load(name)
        return num(None if one is None else getattr(one, attr), digits)

    def scaling(one_worker: str, two_workers: str) -> str:
        one, two = load(one_worker), load(two_workers)
        return "–" if one is None or two is None or not one.rps else f"{two.rps / one.rps:.2f}x"

    rows = []
    for workers in (1, 2):
        label = f"{workers} worker{'s' if workers > 1 else ''}"
        for metric, attr, digits in (
            ("requests/s", "rps", 0),
            ("latency p50 ms", "p50_ms", 2),
            ("latency p99 ms", "p99_ms", 2),
            ("proxy CPU µs/request", "cpu_us", 0),
            ("errors", "errors", 0),
        ):
            rows.append(
                [
                    f"{label}: {metric}",
                    cell(f"floor-w{workers}", attr, digits),
                    cell(f"ours-w{workers}", attr, digits),
                    "",
                ]
            )
    for metric, attr, digits in (("requests/s", "rps", 0), ("proxy CPU µs/request", "cpu_us", 0)):
        rows.append([f"1 worker, multiprocess metrics: {metric}", "–", cell(MP, attr, digits), ""])
    rows.append(
        [
            "requests/s, 2 workers ÷ 1 worker",
            scaling("floor-w1", "floor-w2"),
            scaling("ours-w1", "ours-w2"),
            f"≥ {SCALING_GOAL:g}x",
        ]
    )
    rows.append(
        [
            "requests/s, 2 workers ÷ 1 worker, both multiprocess metrics",
            "–",
            scaling(MP, "ours-w2"),
            "",
        ]
    )
    return table(["metric", "floor: aiohttp passthrough", "llm_proxy_mw", "goal"], rows, "lrrl")


def _workers_conditions(outcomes: dict[str, Outcome], key: str) -> str:
    rows = []
    for name, outcome in outcomes.items():
        one = outcome.loads.get(key)
        if one is None:
            continue
        cells = [one.proxy_pct, one.load_pct, one.others_pct]
        rows.append([name, *(num(x) for x in cells)])
    return table(
        [
            "window",
            "proxy, all its processes",
            "load generator + fake provider + orchestrator",
            "other processes",
        ],
        rows,
    )


def _goals(s: Streaming, outcomes: dict[str, Outcome], key: str, ncpu: int) -> list[str]:
    lines = []
    for c in sorted({c for _, c in s.tallies}):
        added = _minus(_ms(s.tallies.get(("ours", c)), 99), _ms(s.tallies.get(("direct", c)), 99))
        shown = "not measured" if added is None else f"{added:.3f} ms"
        ok = None if added is None else added <= ADDED_P99_GOAL_MS
        lines.append(
            f"- per-event added latency p99, {c} concurrent stream{'s' if c > 1 else ''}: "
            f"{shown} (goal ≤ {ADDED_P99_GOAL_MS:g} ms){_verdict(ok)}"
        )
    for name in ("ours", "floor"):
        w1, w2 = outcomes.get(f"{name}-w1"), outcomes.get(f"{name}-w2")
        one = None if w1 is None else w1.loads.get(key)
        two = None if w2 is None else w2.loads.get(key)
        ratio = None if one is None or two is None or not one.rps else two.rps / one.rps
        shown = "not measured" if ratio is None else f"{ratio:.2f}x"
        if name == "ours":
            ok = None if ratio is None or ncpu < 2 else ratio >= SCALING_GOAL
            lines.append(
                f"- `--workers 2` throughput vs `--workers 1` on {ncpu} cores: {shown} "
                f"(goal ≥ {SCALING_GOAL:g}x){_verdict(ok)}"
            )
        else:
            lines.append(f"- for reference, the floor's: {shown}")
    return lines


def report(
    s: Streaming, outcomes: dict[str, Outcome], p: Plan, tool: str, pins: tuple[int, int], ncpu: int
) -> str:
    proxy_cpu, load_cpu = pins
    load_text = "wrk, 1 thread" if tool == "wrk" else "benchmarks.loadgen (Python, httptools)"
    concurrency = list(p.streams)
    streams = ", ".join(f"c{c} {n} recorded streams" for c, n in p.streams.items())
    text = [
        "## Streaming per-event latency and `--workers 2` scaling",
        "",
        "### Per-event latency of a paced stream",
        "",
        f"The fake provider sends {PACED_EVENTS} chunks {PACE_MS:g} ms apart, each stamped "
        "with `time.monotonic_ns()` at its write; the client (raw asyncio + httptools, SSE "
        "events reassembled however TCP splits or merges them) takes arrival − send for every "
        "event. Proxies as in the end-to-end run: uvicorn, uvloop, httptools, 1 worker, "
        f"pinned to CPU {proxy_cpu}; fake provider and client pinned to CPU {load_cpu}. "
        f"{p.rounds} round(s); in each, per connection: {streams}, after "
        f"{p.warmup_streams} unrecorded warm-up stream(s); the connections' starts spread "
        "evenly over one pace. Events of all rounds pooled. "
        "Added = the proxy's percentile minus direct's. CPU µs/stream: median over rounds.",
        "",
        _streaming_table(s, concurrency),
        "",
        "Run conditions, worst % of each window over the rounds (100 = one CPU):",
        "",
        _streaming_conditions(s),
        "",
        "### Throughput with 1 and 2 uvicorn workers",
        "",
        f"Non-streaming, {p.load.connections} connections, {load_text}; every process unpinned "
        f"on the same {ncpu} CPU(s): the proxy's workers, the load generator, the fake provider "
        f"and this orchestrator share them, so the load side's CPU is part of the figure (see "
        f"the conditions below). {p.load_rounds} round(s) of {p.load.duration:g} s after a "
        f"{p.load.warmup:g} s warm-up, the five servers back to back; medians over rounds. "
        "The 2-worker llm_proxy_mw runs with `PROMETHEUS_MULTIPROC_DIR` set to a fresh "
        "directory (multiprocess metrics), the 1-worker one without, as each would be "
        "deployed; a second 1-worker one with it, for reference, tells what multiprocess "
        "metrics cost apart from the second worker. Each has its own SQLite store. CPU µs = "
        "all the server's processes' utime+stime over the window ÷ requests.",
        "",
        _workers_table(outcomes, p.load.key),
        "",
        f"Run conditions, % of each window (100 = one CPU; the {ncpu} CPUs make "
        f"{ncpu * 100}): the proxy's median over rounds, the others' worst round. Trust the "
        "ratio when other processes took ~0:",
        "",
        _workers_conditions(outcomes, p.load.key),
        "",
        "Goals (issue 6), llm_proxy_mw in this run:",
        *_goals(s, outcomes, p.load.key, ncpu),
    ]
    for problem in s.problems:
        text.append(f"\n**streaming**: {problem}")
    for name, outcome in outcomes.items():
        details = [f"{k}: {v.detail}" for k, v in outcome.loads.items() if v.detail]
        for problem in outcome.problems + details:
            text.append(f"\n**{name}**: {problem}")
    return "\n".join(text)


def main(*, quick: bool = False, load: str = "auto") -> str:
    """Run both parts and return their markdown report."""
    tool = choose_tool(load)
    p = plan(quick)
    proxy_cpu, load_cpu, _ = cpus()
    original = os.sched_getaffinity(0)
    every = frozenset(original)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="llm-bench-scaling-") as tmp:
        streaming_dir, workers_dir = Path(tmp) / "streaming", Path(tmp) / "workers"
        streaming_dir.mkdir()
        workers_dir.mkdir()
        # The client runs in this process: it stays on the load CPU with the provider.
        os.sched_setaffinity(0, {load_cpu})
        try:
            with Processes(streaming_dir) as procs:
                streaming = measure_streaming(procs, streaming_dir, p, tool, (proxy_cpu, load_cpu))
        finally:
            os.sched_setaffinity(0, original)
        with Processes(workers_dir) as procs:
            outcomes = measure_workers(procs, workers_dir, p, tool, every)
    text = report(streaming, outcomes, p, tool, (proxy_cpu, load_cpu), len(every))
    return text + f"\n\n_scaling took {time.monotonic() - started:.0f} s_"
