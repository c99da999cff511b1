"""Resilience run: the proxy with retries on and off against a provider with scripted faults.

Issue 3's four goals, each measured with real parts: ``build_proxy(config)`` entered with
``proxy.lifespan()`` and its default aiohttp transport, driven in this process through its
ASGI interface (``httpx.ASGITransport``), in front of a fake provider that is a real HTTP
server on loopback in a child process (the benchmarks' ``fake_provider``, with a fault mode
set over ``POST /control``).
The proxy runs pinned to one CPU and the provider to the other, so that the provider's clock
readings (``time.monotonic`` is the same clock in both processes) time the proxy's retries.

1. 25% transient 503s (seeded): client success rate and upstream attempts per request.
2. Provider hard down at a steady rate: attempts per request, and the share of requests
   failed fast locally once the circuit opened.
3. ``429`` with ``retry-after: 1`` to 20 concurrent requests: the delay between the 429 and
   the retry, as the provider saw it.
4. Provider recovery, right after the circuit (re)opened, so the whole cool-down is ahead:
   time from the recovery until every request goes through again.

Each row gets a fresh proxy (fresh health), so no row inherits another's circuit or budget.
Rows marked *previous defaults* set, through the provider's ``retry`` and ``health`` config,
the defaults the package had before (``max_attempts`` 3, ``budget_max_tokens`` 10,
``failure_rate`` 0.5), to show why they changed; every other figure names the defaults read
from ``RetryPolicy()`` and ``HealthPolicy()`` at run time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from benchmarks._faults import SEED
from benchmarks._procs import Processes, cpus
from benchmarks._table import num, table
from benchmarks.fixtures import CLIENT_KEY, UPSTREAM_KEY
from llm_proxy_mw import build_proxy
from llm_proxy_mw.builder import LLMProxy
from llm_proxy_mw.health import CircuitState, HealthPolicy, ProviderHealth
from llm_proxy_mw.retry import RetryPolicy

__all__ = ["main"]

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
NAME = "bench"
CHAT_PATH = "/v1/chat/completions"
FAIL_RATE = 0.25
#: A request counts as failed fast locally when answered by the proxy itself this quickly.
FAST_S = 0.020
#: Clients of scenario 1: enough that backoff sleeps do not limit the request rate.
CONCURRENCY = 200

# -- driving the proxy ----------------------------------------------------------------------


def _run(coro: Coroutine[Any, Any, Any]) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


@dataclass(frozen=True, slots=True)
class Result:
    """One client request: when it started, how long it took, what the client got."""

    started: float
    elapsed: float
    status: int
    #: Answered by the proxy itself: 503 ``provider_unavailable`` (open circuit).
    local: bool
    #: ``x-llm-proxy-attempts`` (0 when absent).
    attempts: int


class _Watch:
    """Polls one provider's breaker and budget every few ms (reads only, changes nothing).

    A re-open straight from a failed half-open probe can fall between two polls, so an open
    circuit whose ``retry_after()`` grew again also counts as an opening.
    """

    def __init__(self, proxy: LLMProxy) -> None:
        assert proxy.health is not None
        self._health = proxy.health
        self.opened: list[float] = []
        self.closed: list[float] = []
        self.min_tokens = math.inf
        self._opening = asyncio.Event()

    @property
    def provider(self) -> ProviderHealth:
        return self._health[NAME]

    async def openings(self, n: int) -> None:
        """Return once the circuit has opened ``n`` times."""
        while len(self.opened) < n:
            self._opening.clear()
            await self._opening.wait()

    async def run(self) -> None:
        last = CircuitState.CLOSED
        last_wait = 0.0
        while True:
            health = self.provider
            state = health.state
            wait = health.retry_after() if state is CircuitState.OPEN else 0.0
            now = time.monotonic()
            if state is CircuitState.OPEN and (last is not CircuitState.OPEN or wait > last_wait):
                self.opened.append(now)
                self._opening.set()
            elif state is CircuitState.CLOSED and last is not CircuitState.CLOSED:
                self.closed.append(now)
            self.min_tokens = min(self.min_tokens, health.tokens)
            last, last_wait = state, wait
            await asyncio.sleep(0.002)


@dataclass(slots=True)
class _Target:
    proxy: LLMProxy
    client: httpx.AsyncClient
    control: httpx.AsyncClient
    watch: _Watch

    async def call(self, tag: str) -> Result:
        started = time.monotonic()
        try:
            response = await self.client.post(CHAT_PATH, content=_body(tag))
        except Exception:  # any failure, the proxy raising included, is one failed request
            return Result(started, time.monotonic() - started, 0, False, 0)
        elapsed = time.monotonic() - started
        local = response.status_code == 503 and b"provider_unavailable" in response.content
        attempts = int(response.headers.get("x-llm-proxy-attempts", "0"))
        return Result(started, elapsed, response.status_code, local, attempts)

    async def provider(self, **command: Any) -> dict[str, Any]:
        reply = await self.control.post("/control", json=command)
        data: dict[str, Any] = reply.json()
        return data


def _body(tag: str) -> bytes:
    return json.dumps(
        {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": "Say one short sentence."}],
            "max_tokens": 16,
            "user": tag,
        }
    ).encode()


@contextlib.asynccontextmanager
async def _target(
    port: int, workdir: Path, retry: dict[str, Any], policy: HealthPolicy | None = None
) -> AsyncIterator[_Target]:
    """A fresh proxy (fresh health) over the fake provider, entered with its lifespan."""
    config = {
        "providers": {
            NAME: {
                "kind": "openai",
                "base_url": f"http://{HOST}:{port}/v1",
                "api_key": UPSTREAM_KEY,
                "models": ["*"],
                "retry": retry,
                **({"health": asdict(policy)} if policy is not None else {}),
            }
        },
        "auth": {"api_keys": [{"name": "bench", "key": CLIENT_KEY}]},
        "store": {"url": f"sqlite:///{workdir}/llm-proxy.db"},
        "request_deadline": 30.0,
    }
    proxy = build_proxy(config)
    assert proxy.health is not None
    headers = {"authorization": f"Bearer {CLIENT_KEY}", "content-type": "application/json"}
    async with (
        proxy.lifespan(),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=proxy),
            base_url="http://proxy.bench",
            headers=headers,
            timeout=60.0,
        ) as client,
        httpx.AsyncClient(base_url=f"http://{HOST}:{port}", timeout=10.0) as control,
    ):
        watch = _Watch(proxy)
        watcher = asyncio.create_task(watch.run())
        try:
            yield _Target(proxy, client, control, watch)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher


async def _closed_loop(
    target: _Target, prefix: str, n: int, concurrency: int, limit_s: float
) -> list[Result]:
    """``n`` requests from ``concurrency`` workers, each sending its next as one ends."""
    results: list[Result] = []
    counter = iter(range(n))
    deadline = time.monotonic() + limit_s

    async def worker() -> None:
        for i in counter:
            if time.monotonic() > deadline:
                return
            results.append(await target.call(f"{prefix}{i}"))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


async def _open_loop(
    target: _Target, prefix: str, rate: float, limit_s: float, stop: Callable[[], bool]
) -> list[Result]:
    """One request every ``1/rate`` s, whatever the answers, until ``stop()`` or the limit."""
    tasks: list[asyncio.Task[Result]] = []
    begin = time.monotonic()
    i = 0
    while not stop():
        due = begin + i / rate
        if due - begin >= limit_s:
            break
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        tasks.append(asyncio.create_task(target.call(f"{prefix}{i}")))
        i += 1
    done, pending = await asyncio.wait(tasks, timeout=45) if tasks else (set(), set())
    for task in pending:
        task.cancel()
    return [task.result() for task in done if not task.cancelled()]


def _progress(text: str) -> None:
    print(f"  resilience: {text}", file=sys.stderr, flush=True)


# -- the four scenarios ----------------------------------------------------------------------


@dataclass(slots=True)
class Flaky:
    label: str
    max_attempts: int
    requests: int = 0
    successes: int = 0
    upstream: int = 0
    local: int = 0
    #: Failed with fewer attempts than allowed: the budget (or the breaker) said no.
    refused: int = 0
    opened: int = 0
    min_tokens: float = 0.0
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.successes / self.requests if self.requests else 0.0


async def _flaky(
    port: int,
    workdir: Path,
    label: str,
    retry: dict[str, Any],
    plan: _Plan,
    policy: HealthPolicy | None,
) -> Flaky:
    async with _target(port, workdir, retry, policy) as target:
        await target.provider(mode="flaky", rate=FAIL_RATE, seed=SEED, reset=True)
        started = time.monotonic()
        results = await _closed_loop(
            target, "f", plan.flaky_requests, CONCURRENCY, plan.flaky_limit_s
        )
        seconds = time.monotonic() - started
        stats = await target.provider(mode="ok")
        max_attempts = retry.get("max_attempts", RetryPolicy().max_attempts)
        out = Flaky(
            label,
            max_attempts,
            requests=len(results),
            successes=sum(r.status == 200 for r in results),
            upstream=stats["requests"],
            local=sum(r.local for r in results),
            refused=sum(r.status != 200 and r.attempts < max_attempts for r in results),
            opened=len(target.watch.opened),
            min_tokens=target.watch.min_tokens,
            seconds=seconds,
        )
    _progress(
        f"25% 503s, {label}: {out.rate:.2%} of {out.requests} in {seconds:.1f} s, "
        f"{out.upstream / max(out.requests, 1):.3f} attempts/request"
    )
    return out


@dataclass(slots=True)
class Down:
    label: str
    seconds: float
    requests: int = 0
    upstream: int = 0
    opened_at: float | None = None
    openings: int = 0
    after: int = 0
    fast_local: int = 0
    local_total: int = 0
    p50_after_ms: float | None = None
    p99_after_ms: float | None = None
    max_before_ms: float | None = None
    #: This process's CPU (proxy and client) over the run, as a share of one core.
    cpu_share: float = 0.0


async def _down(
    port: int,
    workdir: Path,
    label: str,
    retry: dict[str, Any],
    rate: float,
    seconds: float,
    policy: HealthPolicy | None,
) -> Down:
    async with _target(port, workdir, retry, policy) as target:
        await target.provider(mode="down", reset=True)
        cpu, wall = time.process_time(), time.monotonic()
        results = await _open_loop(target, "d", rate, seconds, lambda: False)
        cpu, wall = time.process_time() - cpu, time.monotonic() - wall
        stats = await target.provider(mode="ok")
        watch = target.watch
    out = Down(label, seconds, requests=len(results), upstream=stats["requests"])
    out.cpu_share = cpu / wall
    out.openings = len(watch.opened)
    out.local_total = sum(r.local for r in results)
    if watch.opened:
        out.opened_at = watch.opened[0]
        after = [r for r in results if r.started >= watch.opened[0]]
        before = [r for r in results if r.started < watch.opened[0]]
        out.after = len(after)
        out.fast_local = sum(r.local and r.elapsed < FAST_S for r in after)
        out.p50_after_ms = _pct([r.elapsed for r in after], 50) * 1000
        out.p99_after_ms = _pct([r.elapsed for r in after], 99) * 1000
        out.max_before_ms = max((r.elapsed for r in before), default=0.0) * 1000
    _progress(
        f"hard down, {label}: {out.upstream} upstream attempts for {out.requests} requests, "
        f"{out.fast_local}/{out.after} failed fast after the circuit opened"
    )
    return out


def _pct(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, math.ceil(pct / 100 * len(ordered)) - 1)]


@dataclass(slots=True)
class RateLimited:
    label: str
    requests: int = 0
    retried: int = 0
    succeeded: int = 0
    passed_429: int = 0
    delays: list[float] = field(default_factory=list)


async def _rate_limited(
    port: int, workdir: Path, label: str, retry: dict[str, Any], policy: HealthPolicy | None
) -> RateLimited:
    async with _target(port, workdir, retry, policy) as target:
        await target.provider(mode="rate_limit_once", reset=True)
        results = await asyncio.gather(*(target.call(f"r{i}") for i in range(20)))
        stats = await target.provider(mode="ok", log=True)
    arrivals: dict[str, list[float]] = {}
    for tag, at, _status in stats["log"]:
        arrivals.setdefault(tag, []).append(at)
    out = RateLimited(label, requests=len(results))
    # The 429 leaves the provider the moment the attempt arrives (answered in the same
    # callback), so the provider's clock times the proxy's wait from "told" to "retried".
    out.delays = sorted(times[1] - times[0] for times in arrivals.values() if len(times) > 1)
    out.retried = len(out.delays)
    out.succeeded = sum(r.status == 200 for r in results)
    out.passed_429 = sum(r.status == 429 for r in results)
    _progress(
        f"429 retry-after 1, {label}: {out.retried}/20 retried, "
        f"delays {', '.join(f'{d:.3f}' for d in out.delays[:3])}…"
    )
    return out


@dataclass(slots=True)
class Recovery:
    label: str
    cooldown: float
    requests: int = 0
    opened_at: float | None = None
    recovered_at: float | None = None
    first_success: float | None = None
    closed_at: float | None = None
    full_at: float | None = None
    openings: int = 0
    upstream_down: int = 0


async def _recovery(
    port: int, workdir: Path, rate: float, openings: int, after_s: float, limit_s: float
) -> Recovery:
    """Down until the circuit has opened ``openings`` times, then healthy at once."""
    out = Recovery(
        f"retries on (defaults), recover right after opening #{openings}",
        HealthPolicy().cooldown_seconds,
    )
    async with _target(port, workdir, {}) as target:
        await target.provider(mode="down", reset=True)
        watch = target.watch

        async def recover() -> None:
            await watch.openings(openings)
            stats = await target.provider(mode="ok")
            out.recovered_at = stats["changed_at"]
            out.upstream_down = stats["requests"]

        def stop() -> bool:
            return bool(
                out.recovered_at is not None
                and watch.closed
                and watch.closed[-1] > out.recovered_at
                and time.monotonic() - watch.closed[-1] > after_s
            )

        recoverer = asyncio.create_task(recover())
        try:
            results = await _open_loop(target, "v", rate, limit_s, stop)
        finally:
            recoverer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await recoverer
    out.requests = len(results)
    out.openings = len(watch.opened)
    out.opened_at = watch.opened[0] if watch.opened else None
    recovered = out.recovered_at
    if recovered is not None:
        out.closed_at = next((t for t in watch.closed if t > recovered), None)
        ordered = sorted(results, key=lambda r: r.started)
        out.first_success = next(
            (r.started for r in ordered if r.started >= recovered and r.status == 200), None
        )
        failed = [i for i, r in enumerate(ordered) if r.status != 200]
        last = failed[-1] if failed else -1
        if last + 1 < len(ordered) and ordered[last + 1].started >= recovered:
            out.full_at = ordered[last + 1].started
    _progress(
        f"recovery: full traffic {_since(out.full_at, recovered)} s after recovery "
        f"({out.requests} requests)"
    )
    return out


def _since(t: float | None, origin: float | None) -> str:
    return "–" if t is None or origin is None else f"{t - origin:.2f}"


# -- the report ------------------------------------------------------------------------------


def _wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a success rate."""
    if n == 0:
        return 0.0, 0.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def _met(ok: bool | None) -> str:
    return "–" if ok is None else ("**yes**" if ok else "**no**")


def _pct_str(value: float | None, digits: int = 1) -> str:
    return "–" if value is None or math.isnan(value) else f"{value * 100:.{digits}f}%"


@dataclass(slots=True)
class _Report:
    flaky: list[Flaky]
    down: list[Down]
    limited: list[RateLimited]
    recovery: Recovery
    header: str

    def render(self) -> str:
        text = [
            "## Resilience: retries on vs off against scripted provider faults",
            "",
            self.header,
        ]
        text += [
            "",
            table(
                ["scenario", "figure", "retries off", "retries on", "goal", "met"],
                self._summary(),
                "llrrll",
            ),
        ]
        text += ["", f"### 1. 25% transient 503s (seeded), {CONCURRENCY} concurrent clients", ""]
        text += [self._flaky_table(), "", *self._flaky_notes()]
        text += ["", "### 2. Provider hard down (503 to every call), steady rate", ""]
        text += [self._down_table()]
        text += ["", "### 3. 429 with `retry-after: 1`, 20 concurrent requests, 429 once each", ""]
        text += [self._limited_table()]
        text += ["", "### 4. Provider recovers", "", self._recovery_table()]
        return "\n".join(text)

    def _summary(self) -> list[list[str]]:
        rows = []
        by = {f.label: f for f in self.flaky}
        off, on = by["retries off"], by["retries on (defaults)"]
        prev, mixed = by[PREVIOUS], by[MIXED]
        attempts = RetryPolicy().max_attempts

        def ideal(n: int) -> str:
            return f"{1 - FAIL_RATE**n:.2%}"

        rows.append(
            [
                "1. 25% 503s",
                f"client success rate (defaults: {_defaults()}; ideal {ideal(attempts)})",
                _pct_str(off.rate, 2),
                _pct_str(on.rate, 2),
                "≥ 99.5%",
                _met(on.rate >= 0.995),
            ]
        )
        rows.append(
            [
                "1. 25% 503s",
                f"client success rate, {PREVIOUS}; ideal {ideal(PREVIOUS_ATTEMPTS)}",
                _pct_str(off.rate, 2),
                _pct_str(prev.rate, 2),
                "≥ 99.5%",
                _met(prev.rate >= 0.995),
            ]
        )
        rows.append(
            [
                "1. 25% 503s",
                f"client success rate, {MIXED}; ideal {ideal(attempts)}",
                _pct_str(off.rate, 2),
                _pct_str(mixed.rate, 2),
                "≥ 99.5%",
                _met(mixed.rate >= 0.995),
            ]
        )
        rows.append(
            [
                "1. 25% 503s",
                "upstream attempts per request (defaults / previous defaults)",
                num(off.upstream / max(off.requests, 1), 3),
                f"{on.upstream / max(on.requests, 1):.3f} / "
                f"{prev.upstream / max(prev.requests, 1):.3f}",
                "–",
                "–",
            ]
        )
        rows.append(
            [
                "1. 25% 503s",
                "circuit opened (defaults / previous defaults / previous health only)",
                f"{off.opened}×",
                f"{on.opened}× / {prev.opened}× / {mixed.opened}×",
                "stays closed (defaults)",
                _met(on.opened == 0),
            ]
        )
        d_off = next(d for d in self.down if d.label == "retries off")
        d_on = next(d for d in self.down if d.label == "retries on (defaults)")

        def per(d: Down) -> float:
            return d.upstream / max(d.requests, 1)

        def fast(d: Down) -> float | None:
            return d.fast_local / d.after if d.after else None

        on_fast = fast(d_on)
        rows.append(
            [
                f"2. hard down, {d_on.seconds:g} s (off: {d_off.seconds:g} s)",
                "upstream attempts per client request",
                num(per(d_off), 3),
                num(per(d_on), 3),
                "≤ 1.2",
                _met(per(d_on) <= 1.2),
            ]
        )
        rows.append(
            [
                "2. hard down",
                "failed fast locally in < 20 ms, once the circuit opened",
                _pct_str(fast(d_off)),
                _pct_str(on_fast),
                "≥ 90%",
                _met(on_fast is not None and on_fast >= 0.9),
            ]
        )
        l_on = next(x for x in self.limited if x.label == "retries on (defaults)")
        told, late = 1.0, 1.0 * 1.1 + 0.1
        rows.append(
            [
                "3. 429 retry-after: 1",
                "delay 429 → retry, min / median / max",
                "no retry",
                _delays(l_on.delays),
                f"{told:.1f} s ≤ d ≤ {late:.1f} s",
                _met(bool(l_on.delays) and min(l_on.delays) >= told and max(l_on.delays) <= late),
            ]
        )
        l_off = next(x for x in self.limited if x.label == "retries off")
        rows.append(
            [
                "3. 429 retry-after: 1",
                "requests retried (of 20)",
                str(l_off.retried),
                f"{l_on.retried} (previous defaults: {self.limited[-1].retried})",
                "20 (implied: all were told when)",
                _met(l_on.retried == l_on.requests),
            ]
        )
        r = self.recovery
        took = r.full_at - r.recovered_at if r.full_at and r.recovered_at else None
        goal = r.cooldown + 10
        rows.append(
            [
                "4. recovery",
                "recovery → full traffic (worst case: just after the circuit opened)",
                "not run",
                "–" if took is None else f"{took:.2f} s",
                f"≤ cool-down + 10 s = {goal:g} s",
                _met(took is not None and took <= goal),
            ]
        )
        return rows

    def _flaky_table(self) -> str:
        rows = []
        for f in self.flaky:
            low, high = _wilson(f.successes, f.requests)
            rows.append(
                [
                    f.label,
                    str(f.max_attempts),
                    num(f.requests),
                    _pct_str(f.rate, 2),
                    f"{low:.2%} – {high:.2%}",
                    f"{1 - FAIL_RATE**f.max_attempts:.2%}",
                    num(f.upstream / max(f.requests, 1), 3),
                    num(f.refused),
                    num(f.local),
                    f"{f.opened}×",
                    num(f.min_tokens, 1),
                    num(f.requests / f.seconds if f.seconds else None),
                ]
            )
        return table(
            [
                "config",
                "max_attempts",
                "requests",
                "success",
                "95% CI",
                "ideal 1 − 0.25^n",
                "attempts/req",
                "failed with attempts left",
                "failed locally",
                "circuit opened",
                "min budget tokens",
                "req/s",
            ],
            rows,
        )

    def _flaky_notes(self) -> list[str]:
        policy = HealthPolicy()
        drift = (1 - FAIL_RATE) * policy.budget_token_ratio - FAIL_RATE
        slack = policy.budget_max_tokens / 2
        old = PREVIOUS_HEALTH.budget_max_tokens
        return [
            f"Retry budget (defaults): {policy.budget_max_tokens:g} tokens, a failure takes 1, "
            f"a success gives back {policy.budget_token_ratio:g}, a retry needs more than "
            f"{slack:g} left. At 25% failures the bucket drifts up by {drift:+.3f} per attempt "
            f"(budget_token_ratio must exceed 0.25 / 0.75 = 0.333 for that), but the drift is "
            f"small beside the steps (−1 / +{policy.budget_token_ratio:g}), so the bucket is a "
            f"random walk held under its cap that often wanders {slack:g} tokens down: a few "
            "failures close together then refuse retries (*failed with attempts left*: failed "
            "requests whose `x-llm-proxy-attempts` is below max_attempts). The walk's typical "
            "dip is a few tokens, so a bucket of 40 or more (slack 20) makes the budget "
            f"invisible at 25% failures: hence the default of {policy.budget_max_tokens:g} "
            f"(slack {slack:g}), where the previous default of {old:g} (slack {old / 2:g}) "
            "refused retries (*previous* rows; the last row keeps max_attempts at its default "
            "to isolate the budget and breaker). "
            "*min budget tokens* is the lowest value seen by a 2 ms poll.",
        ]

    def _down_table(self) -> str:
        rows = []
        for d in self.down:
            rows.append(
                [
                    d.label,
                    f"{d.seconds:g} s",
                    num(d.requests),
                    num(d.upstream),
                    num(d.upstream / max(d.requests, 1), 3),
                    f"{d.openings}×" if d.openings else "never",
                    num(d.after),
                    _pct_str(d.fast_local / d.after if d.after else None),
                    num(d.p50_after_ms, 2),
                    num(d.p99_after_ms, 2),
                    num(d.max_before_ms, 0),
                    _pct_str(d.cpu_share, 0),
                ]
            )
        return table(
            [
                "config",
                "duration",
                "requests",
                "upstream attempts",
                "per request",
                "circuit opened",
                "requests after 1st open",
                "local < 20 ms",
                "p50 ms after",
                "p99 ms after",
                "slowest before open, ms",
                "proxy+client CPU",
            ],
            rows,
        )

    def _limited_table(self) -> str:
        rows = []
        for x in self.limited:
            rows.append(
                [
                    x.label,
                    str(x.retried),
                    str(x.succeeded),
                    str(x.passed_429),
                    _delays(x.delays),
                ]
            )
        return table(
            [
                "config",
                "retried",
                "client 200",
                "client 429 (not retried)",
                "delay 429 → retry: min / median / max",
            ],
            rows,
        )

    def _recovery_table(self) -> str:
        r = self.recovery
        origin = r.opened_at
        rows = [
            ["circuit first opened", _since(r.opened_at, origin), "–"],
            ["provider recovered", _since(r.recovered_at, origin), "0.00"],
            [
                "first upstream success",
                _since(r.first_success, origin),
                _since(r.first_success, r.recovered_at),
            ],
            ["circuit closed", _since(r.closed_at, origin), _since(r.closed_at, r.recovered_at)],
            [
                "full traffic resumed (every later request succeeds)",
                _since(r.full_at, origin),
                _since(r.full_at, r.recovered_at),
            ],
        ]
        return (
            f"{r.label}; {r.requests} requests, circuit opened {r.openings}×, "
            f"{r.upstream_down} upstream attempts while down; cool-down {r.cooldown:g} s.\n\n"
            + table(["event", "s after the circuit opened", "s after recovery"], rows)
        )


def _delays(delays: list[float]) -> str:
    if not delays:
        return "–"
    return f"{min(delays):.3f} / {statistics.median(delays):.3f} / {max(delays):.3f} s"


# -- the run ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Plan:
    #: Scenario 1: requests per row, unless the row's time limit ends it first.
    flaky_requests: int
    flaky_limit_s: float
    rate: float
    #: Hard down: seconds for the defaults row, and for the off and previous-defaults rows.
    down_s: float
    down_short_s: float
    recover_after_opening: int
    tail_s: float


def _plan(quick: bool) -> _Plan:
    if quick:
        return _Plan(400, 3.0, 50.0, 7.0, 2.0, 1, 0.5)
    return _Plan(4000, 12.0, 50.0, 60.0, 5.0, 2, 2.0)


#: The defaults before this run made the case for the current ones: three attempts, a
#: budget that 25% failures drain, a breaker that small samples of 25% failures trip.
PREVIOUS_ATTEMPTS = 3
PREVIOUS_HEALTH = HealthPolicy(budget_max_tokens=10.0, failure_rate=0.5)
PREVIOUS = (
    f"previous defaults (max_attempts {PREVIOUS_ATTEMPTS}, budget_max_tokens "
    f"{PREVIOUS_HEALTH.budget_max_tokens:g}, failure_rate {PREVIOUS_HEALTH.failure_rate:g})"
)
#: The previous health policy with today's default max_attempts: what the budget alone costs.
MIXED = (
    f"max_attempts {RetryPolicy().max_attempts} (default), previous budget_max_tokens "
    f"{PREVIOUS_HEALTH.budget_max_tokens:g} and failure_rate {PREVIOUS_HEALTH.failure_rate:g}"
)


def _defaults() -> str:
    """The defaults this run measures, read from the package."""
    health = HealthPolicy()
    return (
        f"max_attempts {RetryPolicy().max_attempts}, budget_max_tokens "
        f"{health.budget_max_tokens:g}, failure_rate {health.failure_rate:g}"
    )


async def _bench(
    port: int, workdir: Path, plan: _Plan
) -> tuple[list[Flaky], list[Down], list[RateLimited], Recovery]:
    off = {"max_attempts": 1}
    old = {"max_attempts": PREVIOUS_ATTEMPTS}
    flaky = [
        await _flaky(port, workdir, "retries off", off, plan, None),
        await _flaky(port, workdir, "retries on (defaults)", {}, plan, None),
        await _flaky(port, workdir, PREVIOUS, old, plan, PREVIOUS_HEALTH),
        await _flaky(port, workdir, MIXED, {}, plan, PREVIOUS_HEALTH),
    ]
    limited = [
        await _rate_limited(port, workdir, "retries off", off, None),
        await _rate_limited(port, workdir, "retries on (defaults)", {}, None),
        await _rate_limited(port, workdir, PREVIOUS, old, PREVIOUS_HEALTH),
    ]
    down = [
        await _down(port, workdir, "retries off", off, plan.rate, plan.down_short_s, None),
        await _down(port, workdir, "retries on (defaults)", {}, plan.rate, plan.down_s, None),
    ]
    if plan.down_s >= 30:
        down.append(
            await _down(port, workdir, PREVIOUS, old, plan.rate, plan.down_short_s, PREVIOUS_HEALTH)
        )
    limit = HealthPolicy().cooldown_seconds * (plan.recover_after_opening + 1) + 15
    recovery = await _recovery(
        port, workdir, plan.rate, plan.recover_after_opening, plan.tail_s, limit
    )
    return flaky, down, limited, recovery


def main(*, quick: bool = False) -> str:
    """Run the resilience scenarios and return their markdown report."""
    plan = _plan(quick)
    proxy_cpu, load_cpu, cpu_note = cpus()
    original = os.sched_getaffinity(0)
    quiet = logging.getLogger("llm_proxy_mw")
    level = quiet.level
    # One warning per failed request is the proxy's job in production, noise here.
    quiet.setLevel(logging.ERROR)
    started = time.monotonic()
    try:
        with (
            tempfile.TemporaryDirectory(prefix="llm-bench-resilience-") as tmp,
            Processes(Path(tmp)) as procs,
        ):
            argv = [sys.executable, "-m", "benchmarks.fake_provider", "--port", "0"]
            proc = procs.start("provider", argv, cpu=load_cpu, cwd=ROOT, stdout_pipe=True)
            line = procs.wait_line(proc, timeout=20)
            if not line:
                raise RuntimeError("fake provider did not start:\n" + procs.log_tail("provider"))
            os.sched_setaffinity(0, {proxy_cpu})
            flaky, down, limited, recovery = _run(_bench(int(line), Path(tmp), plan))
    finally:
        os.sched_setaffinity(0, original)
        quiet.setLevel(level)
    load = os.getloadavg()[0]
    header = (
        f"Proxy: `build_proxy()` with its aiohttp transport, driven in-process over "
        f"`httpx.ASGITransport`, pinned to CPU {proxy_cpu}; fake provider: a loopback HTTP "
        f"server in a child process pinned to CPU {load_cpu}"
        + (f" ({cpu_note})" if cpu_note else "")
        + f". A fresh proxy per row. Steady rate {plan.rate:g} req/s in scenarios 2 and 4. Took "
        f"{time.monotonic() - started:.0f} s; load average {load:.2f} at the end."
        + (" **--quick: short runs, rough figures.**" if quick else "")
    )
    return _Report(flaky, down, limited, recovery, header).render()
