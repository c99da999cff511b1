"""The translation goals end to end: the examples app's CPU per request, over loopback, for
a Chat client whose model an openai provider serves (passthrough) or an anthropic one
(translated).

Served and loaded as ``overhead.py`` serves and loads it (uvicorn, uvloop, httptools, one
worker pinned to the first CPU; the load and the fake provider on the second), in front of
``_translation_provider``, which answers the same text in each API. Each round runs the
passthrough and the translated load back to back, in alternating order.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks._translation_answers import provider_data
from benchmarks.fixtures import CLIENT_KEY, request_body
from benchmarks.overhead import (
    Load,
    Outcome,
    Run,
    Scenario,
    choose_tool,
    ours_contender,
    pinned_run,
    post,
)

__all__ = ["EndToEnd", "PASSTHROUGH_MODEL", "TRANSLATED_MODEL", "measure"]

PASSTHROUGH_MODEL = "gpt-4o-mini"
TRANSLATED_MODEL = "claude-sonnet-4-5"


@dataclass(slots=True)
class EndToEnd:
    """CPU µs per request (median over rounds) by (model, stream), and what went wrong."""

    cpu_us: dict[tuple[str, bool], float] = field(default_factory=dict)
    rounds: int = 0
    connections: int = 0
    #: The most that other processes took of the proxy's CPU in a window, % (~0: trust it).
    others_pct: float = 0.0
    problems: list[str] = field(default_factory=list)


def _config(workdir: Path, port: int) -> Path:
    base = f"http://127.0.0.1:{port}/v1"
    openai = provider_data("openai", [PASSTHROUGH_MODEL], base_url=base)
    anthropic = provider_data("anthropic", [TRANSLATED_MODEL], base_url=base)
    lines = ["# Written by benchmarks/translation.py for one run."]
    for name, data in (("openai", openai), ("anthropic", anthropic)):
        lines.append(f"[providers.{name}]")
        lines += [f"{key} = {_toml(value)}" for key, value in data.items()]
    lines += ["[auth]", f'api_keys = [{{ name = "bench", key = "{CLIENT_KEY}" }}]']
    lines += ["[store]", f'url = "sqlite:///{workdir}/llm-proxy.db"']
    path = workdir / "llm-proxy.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _toml(value: object) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(f'"{v}"' for v in value) + "]"
    return f'"{value}"'


def _check(port: int, path: str) -> list[str]:
    """Both models answer 200 with the whole text, JSON and stream."""
    problems = []
    for model in (PASSTHROUGH_MODEL, TRANSLATED_MODEL):
        for stream in (False, True):
            status, body = post(port, path, request_body(model, stream=stream))
            end = b"data: [DONE]" if stream else b"Nothing here depends on the request."
            if status != 200 or end not in body:
                problems.append(f"{model} stream={stream}: status {status}, {body[:200]!r}")
    return problems


def measure(*, quick: bool, load: str = "auto") -> EndToEnd:
    """Run the passthrough and translated loads, interleaved, and return their CPU."""
    duration, warmup, rounds = (1.0, 0.5, 1) if quick else (5.0, 1.0, 3)
    out = EndToEnd(rounds=rounds, connections=32)
    scenarios = [
        Scenario(f"{model} {stream}", model, out.connections, duration, warmup, stream, model)
        for stream in (False, True)
        for model in (PASSTHROUGH_MODEL, TRANSLATED_MODEL)
    ]
    samples: dict[tuple[str, bool], list[float]] = {}
    with pinned_run("llm-bench-translation-", choose_tool(load)) as run:
        port = run.start_provider("benchmarks._translation_provider")
        outcome = Outcome()
        served = run.start(ours_contender(_config(run.workdir, port)), outcome)
        if served is None:
            out.problems += outcome.problems
            return out
        out.problems += outcome.problems + _check(served.port, served.path)
        try:
            for n in range(rounds):
                for sc in scenarios if n % 2 == 0 else scenarios[::-1]:
                    run.load(served.port, served.path, sc, sc.warmup)
                    window = run.watch(served.proc.pid, _loader(run, served.port, served.path, sc))
                    if window.errors:
                        out.problems.append(f"{sc.key}: {window.errors} errors {window.detail}")
                    out.others_pct = max(out.others_pct, window.others_pct or 0.0)
                    if window.cpu_us is not None:
                        samples.setdefault((sc.model, sc.stream), []).append(window.cpu_us)
        finally:
            run.procs.stop(served.proc)
    out.cpu_us = {key: statistics.median(values) for key, values in samples.items()}
    return out


def _loader(run: Run, port: int, path: str, sc: Scenario) -> Callable[[], Load]:
    return lambda: run.load(port, path, sc, sc.duration)
