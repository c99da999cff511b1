"""CPU instructions per request, counted by valgrind's cachegrind: a figure free of noise.

On a shared machine µs per request move by ±20% from one run to the next; the instructions a
process executes do not (under 1%), so they compare configurations where time cannot. The
child (``python -m benchmarks.otel --instructions-child SETTING N [--sse]``) builds the
stack, warms it up and drives N requests; it runs twice, with a small and a large N, and the
difference of the two totals over the difference of the Ns is the instructions per request,
with everything else (interpreter start-up, imports, building the proxy, the warm-up) counted
the same in both runs and so cancelled. The two runs of a configuration go concurrently
(the machine has two cores); cachegrind serializes a process's threads, so each count is the
whole process's.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

__all__ = ["instructions_per_request", "valgrind"]

ROOT = Path(__file__).resolve().parent.parent
#: Requests in the small and the large run (``--quick``: a smoke test, not figures).
COUNTS = (100, 600)
QUICK_COUNTS = (50, 250)
#: Counting slows the interpreter some 50-fold: a run takes tens of seconds.
TIMEOUT_S = 1800
#: ``==1234== I   refs:      2,425,896,239``, cachegrind's total on stderr.
_REFS = re.compile(r"^==\d+==\s+I\s+refs:\s+([\d,]+)\s*$", re.MULTILINE)


def valgrind() -> str | None:
    """The ``valgrind`` on PATH, or None."""
    return shutil.which("valgrind")


def instructions_per_request(setting: str, *, stream: bool, quick: bool) -> float | None:
    """Instructions per request of ``setting`` (a name ``benchmarks.otel``'s child knows), JSON
    or SSE; None when valgrind is not installed."""
    program = valgrind()
    if program is None:
        return None
    small, large = QUICK_COUNTS if quick else COUNTS
    with ThreadPoolExecutor(2) as pool:
        runs = [pool.submit(_refs, program, setting, n, stream) for n in (small, large)]
        refs_small, refs_large = (run.result() for run in runs)
    return (refs_large - refs_small) / (large - small)


def _refs(program: str, setting: str, requests: int, stream: bool) -> int:
    """The instructions the child executes for ``requests`` requests, start-up included."""
    argv = [program, "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null"]
    argv += [sys.executable, "-m", "benchmarks.otel", "--instructions-child", setting]
    argv += [str(requests)] + (["--sse"] if stream else [])
    # A fixed hash seed: the same dict and set layouts, so the same probes, in every run.
    env = dict(os.environ, PYTHONHASHSEED="0")
    done = subprocess.run(
        argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S
    )
    found = _REFS.search(done.stderr)
    if done.returncode != 0 or found is None:
        tail = "\n".join(done.stderr.strip().splitlines()[-20:])
        raise RuntimeError(f"counting {setting} ({requests} requests) failed:\n{tail}")
    return int(found.group(1).replace(",", ""))
