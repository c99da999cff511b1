"""The translation benchmark's report: its tables, and each goal beside this run's figures."""

from __future__ import annotations

from typing import TYPE_CHECKING

from benchmarks._table import num, ratio, table
from benchmarks._translation_e2e import PASSTHROUGH_MODEL, TRANSLATED_MODEL, EndToEnd
from benchmarks.layers import loop_name

if TYPE_CHECKING:
    from benchmarks.translation import Latency, Route

__all__ = ["report"]

#: Median CPU µs per request by (route label, stream).
Cpu = dict[tuple[str, bool], float]


def _quantile(values: list[int], q: float) -> float:
    """The ``q`` quantile of nanosecond ``values``, in µs."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000


def _share(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _cpu_rows(
    routes: list[Route], cpu: Cpu, problems: dict[tuple[str, bool], str]
) -> list[list[str]]:
    rows = []
    for route in routes:
        cells = [route.label]
        for stream in (False, True):
            us = cpu.get((route.label, stream))
            base = cpu.get((route.baseline, stream))
            cells += [num(us, 1), ratio(us, base) if route.baseline else ""]
        notes = (problems.get((route.label, s), "") for s in (False, True))
        rows.append([*cells, "; ".join(filter(None, notes))])
    return rows


def _added_p99(route: Route, latency: dict[str, Latency]) -> float | None:
    lat, base = latency.get(route.label), latency.get(route.baseline)
    if not (route.baseline and lat and lat.ns and base and base.ns):
        return None
    return _quantile(lat.ns, 0.99) - _quantile(base.ns, 0.99)


def _latency_rows(routes: list[Route], latency: dict[str, Latency]) -> list[list[str]]:
    rows = []
    for route in routes:
        lat = latency.get(route.label)
        if lat is None or not lat.ns:
            continue
        added = _added_p99(route, latency)
        rows.append(
            [
                route.label,
                f"{lat.sends_per_stream:.0f}",
                num(_quantile(lat.ns, 0.5), 1),
                num(_quantile(lat.ns, 0.99), 1),
                num(max(lat.ns) / 1000, 1),
                "" if added is None else f"{added:+.1f}",
            ]
        )
    return rows


def _end_to_end(e2e: EndToEnd) -> list[str]:
    rows = []
    for stream in (False, True):
        base = e2e.cpu_us.get((PASSTHROUGH_MODEL, stream))
        mine = e2e.cpu_us.get((TRANSLATED_MODEL, stream))
        kind = "100-chunk stream" if stream else "JSON"
        rows.append([kind, num(base), num(mine), ratio(mine, base)])
    text = [
        "End to end: the examples app's CPU µs per request (utime+stime from `/proc` over each "
        f"window ÷ requests), uvicorn as `overhead` serves it, {e2e.connections} connections, "
        f"{e2e.rounds} interleaved round(s), medians; a Chat client asking for "
        f"`{PASSTHROUGH_MODEL}` (an openai provider: passthrough) or `{TRANSLATED_MODEL}` (an "
        "anthropic provider: translated), the fake provider answering the same text in each API.",
        "",
        table(["Chat client", "→ openai µs", "→ anthropic µs", "translated ÷ passthrough"], rows),
        "",
        f"Other processes took up to {e2e.others_pct:.0f}% of the proxy's CPU in a measured "
        "window (trust the figures when that is ~0).",
    ]
    return text + [f"\n**end to end**: {problem}" for problem in e2e.problems]


def _goal(name: str, figures: list[tuple[str, float | None]], fmt: str, limit: float) -> str:
    shown = [
        f"{where} {fmt.format(value)} — {'meets' if value <= limit else 'misses'}"
        for where, value in figures
        if value is not None
    ]
    goal = fmt.format(limit)
    return f"- {name} (goal ≤ {goal}): " + ("; ".join(shown) or "not measured")


def report(
    routes: list[Route],
    cpu: Cpu,
    problems: dict[tuple[str, bool], str],
    latency: dict[str, Latency],
    rounds: int,
    e2e: EndToEnd,
) -> str:
    """The markdown report; the goals' route is the first translated one of ``routes``."""
    goal = next(route for route in routes if route.baseline)

    def in_process(stream: bool) -> float | None:
        return _share(cpu.get((goal.label, stream)), cpu.get((goal.baseline, stream)))

    def end_to_end(stream: bool) -> float | None:
        by_model = e2e.cpu_us
        return _share(
            by_model.get((TRANSLATED_MODEL, stream)), by_model.get((PASSTHROUGH_MODEL, stream))
        )

    added = [a for r in routes if (a := _added_p99(r, latency)) is not None]
    worst = max(added) / 1000 if added else None
    return "\n".join(
        [
            "## What translation costs (CPU µs per request, in process, full stack)",
            "",
            f"{loop_name()}; `time.process_time()`; median of {rounds} interleaved rounds; "
            "full stack = `build_proxy()` with API-key auth and an openai, an anthropic and a "
            "chat-only openai provider (`responses_api = false`), each answering from memory "
            "the same 678-byte completion or 100-chunk stream in its own API. Ratios are to "
            "the client API's passthrough route.",
            "",
            table(
                ["route", "JSON µs", "× passthrough", "stream µs", "× passthrough", "note"],
                _cpu_rows(routes, cpu, problems),
                "lrrrrl",
            ),
            "",
            "Per event, in process: µs from the transport's read of an upstream event to the "
            "proxy's `send` of what it became (one send per upstream read at most; a read that "
            "translates to nothing sends none).",
            "",
            table(
                ["stream route", "sends/stream", "p50 µs", "p99 µs", "max µs", "p99 added µs"],
                _latency_rows(routes, latency),
                "lrrrrr",
            ),
            "",
            *_end_to_end(e2e),
            "",
            f"Goals (issue 17): {goal.label} vs {goal.baseline}; latency: the worst route.",
            _goal(
                "translated JSON request CPU",
                [("in process", in_process(False)), ("end to end", end_to_end(False))],
                "{:.2f}x",
                1.3,
            ),
            _goal(
                "translated 100-chunk stream CPU",
                [("in process", in_process(True)), ("end to end", end_to_end(True))],
                "{:.2f}x",
                1.5,
            ),
            _goal("per-event added latency p99", [("in process", worst)], "{:.3f} ms", 1.0),
        ]
    )
