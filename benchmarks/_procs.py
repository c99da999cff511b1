"""Processes the end-to-end run starts: pinned, logged, measured from ``/proc``, always stopped.

Every child gets its own session (so a Ctrl-C in the terminal reaches only us, and we stop
them in order) and is stopped by its process-group id, which is its own pid, never by name.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Any

__all__ = [
    "Pin",
    "Processes",
    "cpu_busy_seconds",
    "cpu_seconds",
    "cpus",
    "peak_rss_mb",
    "rss_mb",
]

_TICKS = os.sysconf("SC_CLK_TCK")

#: Where a process may run: one CPU, or a set of them (every CPU = not pinned).
Pin = int | frozenset[int]


def _cpu_set(pin: Pin) -> frozenset[int]:
    return frozenset((pin,)) if isinstance(pin, int) else pin


def cpus() -> tuple[int, int, str]:
    """(proxy CPU, load CPU, note): 0 and 1 on a 2-core box, shared on a 1-core one."""
    available = sorted(os.sched_getaffinity(0))
    if len(available) >= 2:
        return available[0], available[1], ""
    return available[0], available[0], "only one CPU: proxy and load share it"


def _tree(pid: int) -> list[int]:
    pids = [pid]
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return pids
    for tid in tasks:
        try:
            children = Path(f"/proc/{pid}/task/{tid}/children").read_text().split()
        except OSError:
            continue
        for child in children:
            pids.extend(_tree(int(child)))
    return pids


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process and its descendants (10 ms resolution)."""
    ticks = 0
    for p in _tree(pid):
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        ticks += int(fields[11]) + int(fields[12])
    return ticks / _TICKS


def cpu_busy_seconds(cpu: Pin) -> float:
    """Time CPU ``cpu`` (or, summed, a set of CPUs) spent running anything (``/proc/stat``),
    to see who else used it."""
    wanted = {f"cpu{n}" for n in _cpu_set(cpu)}
    ticks = 0
    for line in Path("/proc/stat").read_text().splitlines():
        name, _, values = line.partition(" ")
        if name in wanted:
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, values.split()[:8])
            ticks += user + nice + system + irq + softirq + steal
    return ticks / _TICKS


def _status_kb(pid: int, key: str) -> int:
    total = 0
    for p in _tree(pid):
        try:
            lines = Path(f"/proc/{p}/status").read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            if line.startswith(key + ":"):
                total += int(line.split()[1])
    return total


def peak_rss_mb(pid: int) -> float:
    """Sum of ``VmHWM`` over the process tree."""
    return _status_kb(pid, "VmHWM") / 1024


def rss_mb(pid: int) -> float:
    return _status_kb(pid, "VmRSS") / 1024


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that ``finally`` blocks stop what we started."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise _Terminated


class Processes:
    """``with Processes(log_dir) as procs:``; everything started is stopped on the way out."""

    def __init__(self, log_dir: Path) -> None:
        self._log_dir = log_dir
        self._running: list[subprocess.Popen[bytes]] = []
        self._logs: list[IO[bytes]] = []
        self._previous_sigterm: Any = None
        self._previous_sigint: Any = None

    def __enter__(self) -> Processes:
        self._previous_sigterm = signal.signal(signal.SIGTERM, _on_sigterm)
        # Ctrl-C must reach our cleanup even where the shell started us with SIGINT ignored.
        self._previous_sigint = signal.signal(signal.SIGINT, signal.default_int_handler)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for proc in reversed(self._running[:]):
            self.stop(proc)
        for log in self._logs:
            log.close()
        signal.signal(signal.SIGTERM, self._previous_sigterm)
        signal.signal(signal.SIGINT, self._previous_sigint)

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        cpu: Pin,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        stdout_pipe: bool = False,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` pinned to ``cpu`` (one, or a set); stderr (and stdout unless piped)
        go to a log."""
        allowed = _cpu_set(cpu)
        log = (self._log_dir / f"{name}.log").open("ab")
        self._logs.append(log)
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout_pipe else log,
            stderr=log,
            env=env,
            cwd=cwd,
            start_new_session=True,
            # Pinned before exec, so every thread and child inherits the CPU.
            preexec_fn=lambda: os.sched_setaffinity(0, allowed),
        )
        self._running.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
        """SIGTERM the child's own process group, then SIGKILL it if it lingers."""
        if proc in self._running:
            self._running.remove(proc)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if proc.poll() is not None:
                break
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                continue
        if proc.stdout is not None:
            proc.stdout.close()

    def log(self, name: str) -> str:
        """Everything the child ``name`` logged so far (``""`` if nothing)."""
        try:
            return (self._log_dir / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, name: str, lines: int = 15) -> str:
        return "\n".join(self.log(name).splitlines()[-lines:])

    @staticmethod
    def wait_line(proc: subprocess.Popen[bytes], timeout: float) -> str:
        """The child's first stdout line (a port), or ``""`` if it died or took too long."""
        assert proc.stdout is not None
        deadline = time.monotonic() + timeout
        os.set_blocking(proc.stdout.fileno(), False)
        buffer = b""
        while time.monotonic() < deadline and proc.poll() is None:
            chunk = proc.stdout.read()
            if chunk:
                buffer += chunk
                if b"\n" in buffer:
                    return buffer.split(b"\n", 1)[0].decode()
            time.sleep(0.02)
        return ""
