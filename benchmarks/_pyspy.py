"""Where the proxy's CPU goes under load: a py-spy recording, summarised as tables.

py-spy samples the live process from outside (``--nonblocking``: it never pauses it), so it
profiles the real server, sockets and all, which the in-process microbenchmark cannot. It is
optional: ``pip install py-spy`` into the venv to get these tables.
"""

from __future__ import annotations

import re
import shutil
import sys
from collections import Counter
from pathlib import Path

from benchmarks._table import table

__all__ = ["find", "package_shares", "summarize"]

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^():]*)(?::\d+)?\)$")


def find() -> str | None:
    """py-spy from the venv running us, or from the PATH."""
    local = Path(sys.executable).with_name("py-spy")
    return str(local) if local.exists() else shutil.which("py-spy")


def _parse(path: Path) -> tuple[list[tuple[list[str], int]], int]:
    stacks = []
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        frames_text, _, count = line.rpartition(" ")
        if not frames_text or not count.isdigit():
            continue
        stacks.append((frames_text.split(";"), int(count)))
        total += int(count)
    return stacks, total


def _package(file: str) -> str:
    """The top-level package of a frame's file, as py-spy shortens it (``aiohttp/client.py``)."""
    head = file.split("/", 1)[0] if "/" in file else file.removesuffix(".py")
    return head or "?"


def package_shares(path: Path) -> dict[str, float]:
    """Fraction of samples by the top-level package of the running (innermost) frame."""
    stacks, total = _parse(path)
    shares: Counter[str] = Counter()
    for frames, count in stacks:
        match = _FRAME.match(frames[-1])
        shares[_package(match["file"]) if match else frames[-1]] += count
    return {name: n / total for name, n in shares.items()} if total else {}


def summarize(path: Path, top: int = 20) -> str:
    """Two tables: the top functions by own time, and llm_proxy_mw's by inclusive time."""
    stacks, total = _parse(path)
    if not total:
        return "(py-spy recorded no samples)"
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for frames, count in stacks:
        names = []
        for frame in frames:
            match = _FRAME.match(frame)
            names.append(f"{match['func']} ({match['file']})" if match else frame)
        own[names[-1]] += count
        for name in set(names):
            inclusive[name] += count

    def pct(n: int) -> str:
        return f"{100 * n / total:.1f}"

    by_function = table(
        ["function (file)", "own %", "incl. %"],
        [[f"`{name}`", pct(n), pct(inclusive[name])] for name, n in own.most_common(top)],
    )
    ours = [
        [f"`{name}`", pct(own[name]), pct(n)]
        for name, n in inclusive.most_common()
        if "(llm_proxy_mw/" in name
    ][:top]
    by_ours = table(["llm_proxy_mw function (file)", "own %", "incl. %"], ours)
    return "\n\n".join([f"{total} samples.", by_function, by_ours])
