"""``python -m benchmarks.compare [--quick] [--litellm PATH]``: print the side-by-side table.

The examples app (llm_proxy_mw under a standard ``Mount`` at ``/llm``, API-key auth on) and
the aiohttp passthrough floor, and LiteLLM's proxy when ``--litellm`` names its executable
(``make bench-compare LITELLM=1`` installs it into ``.bench/litellm-venv``), each served alone
on the first CPU, in front of the same fake provider, under the same loads on the second CPU.
About 3 minutes, 5 with LiteLLM; ``--quick`` is a smoke test of about a minute, not figures.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from benchmarks._procs import cpus
from benchmarks._table import num, ratio, table
from benchmarks.compare._litellm import LITELLM, litellm_contender
from benchmarks.overhead import (
    CHAT_PATH,
    Load,
    Outcome,
    choose_tool,
    floor_contender,
    ours_contender,
    pinned_run,
    report,
    scenarios,
    write_config,
)

TITLES = {"floor": "floor: aiohttp passthrough", "ours": "llm_proxy_mw", LITELLM: "LiteLLM proxy"}


def _load(key: str, attr: str) -> Callable[[Outcome], float | None]:
    def value(outcome: Outcome) -> float | None:
        load = outcome.loads.get(key)
        return None if load is None else getattr(load, attr)

    return value


#: The rows of the table: label, figure, decimals, and whether a ratio to the floor means
#: something (costs and throughputs do; latencies minus direct are shown as they are).
ROWS: list[tuple[str, Callable[[Outcome], float | None], int, bool]] = [
    ("c32 JSON: requests/s", _load("ns32", "rps"), 0, True),
    ("c32 JSON: CPU µs/request", _load("ns32", "cpu_us"), 0, True),
    ("c32 SSE (100 chunks): streams/s", _load("st32", "rps"), 0, True),
    ("c32 SSE (100 chunks): CPU µs/stream", _load("st32", "cpu_us"), 0, True),
    ("c1 JSON: latency p50 ms", _load("ns1", "p50_ms"), 3, False),
    ("c1 JSON: latency p99 ms", _load("ns1", "p99_ms"), 3, False),
    ("c256 on a 100 ms provider: requests/s", _load("delay256", "rps"), 0, True),
    ("peak RSS MB", lambda o: o.peak_rss_mb, 1, True),
    ("start-up s (spawn to first 200)", lambda o: o.startup_s, 2, True),
    ("errors, all loads", lambda o: sum(load.errors for load in o.loads.values()), 0, False),
]


def side_by_side(outcomes: dict[str, Outcome], direct: Load) -> str:
    """One column per contender, each beside its ratio to the floor measured in the run."""
    floor = outcomes["floor"]
    others = [key for key in outcomes if key != "floor"]
    headers = [TITLES["floor"]]
    for key in others:
        headers += [TITLES[key], f"{TITLES[key]} / floor"]
    rows = []
    for label, value, digits, comparable in ROWS:
        row = [label, num(value(floor), digits)]
        for key in others:
            mine = value(outcomes[key])
            row += [num(mine, digits), ratio(mine, value(floor)) if comparable else ""]
        rows.append(row)
    direct_line = (
        f"Direct (load → fake provider, no proxy), 1 connection: p50 {num(direct.p50_ms, 3)} "
        f"ms, p99 {num(direct.p99_ms, 3)} ms."
    )
    return table(["metric", *headers], rows) + "\n\n" + direct_line


def main(*, quick: bool = False, load: str = "auto", litellm: Path | None = None) -> str:
    """Serve every contender, run the loads round after round, return the markdown report."""
    tool = choose_tool(load)
    runs, rounds = scenarios(quick)
    proxy_cpu, load_cpu, cpu_note = cpus()
    with pinned_run("llm-bench-compare-", tool) as run:
        provider_port = run.start_provider()
        contenders = [
            floor_contender(provider_port),
            ours_contender(write_config(run.workdir, provider_port, None)),
        ]
        if litellm is not None:
            contenders.append(litellm_contender(litellm, run.workdir, provider_port))
        ns1 = next(sc for sc in runs if sc.key == "ns1")
        run.load(provider_port, CHAT_PATH, ns1, ns1.warmup)
        direct = run.load(provider_port, CHAT_PATH, ns1, ns1.duration)
        run.measure(contenders, runs, rounds)
    header = (
        f"Each proxy served alone by uvicorn (uvloop, httptools, 1 worker; LiteLLM by its own "
        f"command, 1 worker), pinned to CPU {proxy_cpu}; load ({tool}) and fake provider on "
        f"CPU {load_cpu}. {rounds} round(s), the contenders back to back for each load; "
        "medians over rounds. CPU µs = the proxy's utime+stime over the window ÷ completed "
        "requests." + (f" ({cpu_note})" if cpu_note else "")
    )
    outcomes = run.outcomes
    names = ", ".join(TITLES[key] for key in outcomes)
    text = [f"## Side by side: {names}", "", header, "", side_by_side(outcomes, direct)]
    if LITELLM not in outcomes:
        text.append("\nLiteLLM's proxy joins with `make bench-compare LITELLM=1`.")
    for key, outcome in outcomes.items():
        text += [f"\n**{TITLES[key]}**: {problem}" for problem in outcome.problems]
    text += ["", report(outcomes["floor"], outcomes["ours"], direct, header, tool)]
    return "\n".join(text)


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smoke test, not figures")
    parser.add_argument(
        "--litellm",
        type=Path,
        metavar="PATH",
        help="LiteLLM's `litellm` executable (.bench/litellm-venv/bin/litellm)",
    )
    parser.add_argument(
        "--load",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="load generator: wrk when installed (auto), or the Python one",
    )
    args = parser.parse_args(argv)
    try:
        print(main(quick=args.quick, load=args.load, litellm=args.litellm), flush=True)
    except KeyboardInterrupt:
        print("interrupted; every process this run started was stopped", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(cli())
