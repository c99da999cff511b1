"""``python -m benchmarks [layers|translation|overhead|resilience|load|scaling|limits|otel]
[--quick]``: print the benchmark tables.

Without a target all eight run (about 20 minutes on the 2-core box); ``--quick`` is a smoke test
of a few seconds each, for checking that everything works, not for figures.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

from benchmarks import (
    layers,
    limits,
    load_memory,
    otel,
    overhead,
    resilience,
    scaling,
    translation,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument(
        "target",
        nargs="?",
        choices=(
            "all",
            "layers",
            "translation",
            "overhead",
            "resilience",
            "load",
            "scaling",
            "limits",
            "otel",
        ),
        default="all",
    )
    parser.add_argument("--quick", action="store_true", help="smoke test, seconds not minutes")
    parser.add_argument(
        "--load",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="overhead, translation and scaling load generator: wrk when installed (auto), or "
        "the Python one",
    )
    parser.add_argument(
        "--pool-max",
        type=int,
        default=None,
        metavar="N",
        help="overhead: set the provider's pool max_connections (default: the config's default)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="add profiles: cProfile of the full stack (layers, translation), py-spy under load "
        "(overhead)",
    )
    args = parser.parse_args(argv)
    started = time.monotonic()
    print(
        f"# llm_proxy_mw benchmarks{' (--quick: smoke test, not figures)' if args.quick else ''}"
        f"\n\nPython {platform.python_version()}, {platform.machine()}, "
        f"{len(os.sched_getaffinity(0))} CPUs available.\n",
        flush=True,
    )
    busy = _load_average()
    if busy > 0.5:
        print(
            f"**Warning**: load average {busy:.2f} before the run: other processes compete for "
            "the CPUs, so figures will be noisy (see the run-conditions table).\n",
            flush=True,
        )
    try:
        if args.target in ("all", "layers"):
            print(layers.main(quick=args.quick, profile=args.profile) + "\n", flush=True)
        if args.target in ("all", "translation"):
            text = translation.main(quick=args.quick, profile=args.profile, load=args.load)
            print(text + "\n", flush=True)
        if args.target in ("all", "overhead"):
            text = overhead.main(
                quick=args.quick, load=args.load, pool_max=args.pool_max, profile=args.profile
            )
            print(text + "\n", flush=True)
        if args.target in ("all", "resilience"):
            print(resilience.main(quick=args.quick) + "\n", flush=True)
        if args.target in ("all", "load"):
            print(load_memory.main(quick=args.quick) + "\n", flush=True)
        if args.target in ("all", "scaling"):
            print(scaling.main(quick=args.quick, load=args.load) + "\n", flush=True)
        if args.target in ("all", "limits"):
            print(limits.main(quick=args.quick) + "\n", flush=True)
        if args.target in ("all", "otel"):
            print(otel.main(quick=args.quick) + "\n", flush=True)
    except KeyboardInterrupt:
        print("interrupted; every process this run started was stopped", file=sys.stderr)
        return 130
    print(f"_took {time.monotonic() - started:.0f} s_")
    return 0


def _load_average() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return 0.0


if __name__ == "__main__":
    sys.exit(main())
