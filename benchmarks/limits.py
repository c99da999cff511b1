"""Limits: how exact they are across replicas, and what they cost per request.

Accuracy: two replicas of the example app (uvicorn processes) share one ``redis-server``; 64
clients offer three times a principal's rpm (and 64 more, as another principal, its tpm).
Counting starts at the first refusal (the bucket's initial burst spent, after 30 s) and goes
on for two minutes (``--quick``: 15 s): admitted requests and tokens per minute must land
within [0.95, 1.01] of the limit.
Budget: 64 tasks on two Redis backends reserve and settle against one budget; what is spent
past it must be at most one request's reservation. CPU: the layer in process, local and on
Redis, beside the 60 µs goal (the round trips are counted: one to reserve, one to settle).
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

from benchmarks._procs import Processes, cpus
from benchmarks._raw_http import run
from benchmarks._table import num, table
from benchmarks.layers import Case, _measure
from benchmarks.overhead import free_port
from llm_proxy_mw._limits_policy import Grant, Limit
from llm_proxy_mw._limits_redis import RedisLimits
from llm_proxy_mw.context import RequestContextMiddleware, get_context, read_body
from llm_proxy_mw.limits import LimitsBackend, LimitsMiddleware, LimitsPolicy, LocalLimits

__all__ = ["main"]

ROOT = Path(__file__).resolve().parent.parent
CLIENTS = 64
RPM_KEY, TPM_KEY = "bench-rpm-key-0123456789", "bench-tpm-key-0123456789"
#: About 1,000 tokens used by the echo provider's count.
LONG = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "word " * 1000}]}
SHORT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
CPU_GOAL_US = 60.0


@dataclass
class Offered:
    """What one principal's clients saw: when each answer came, its status and tokens."""

    answers: list[tuple[float, int, int]] = field(default_factory=list)

    def rate(self, *, tokens: bool) -> float | None:
        """Admitted per minute from the first refusal on."""
        refused = [t for t, status, _ in self.answers if status == 429]
        if not refused:
            return None
        start, end = refused[0], max(t for t, _, _ in self.answers)
        admitted = [n for t, s, n in self.answers if s == 200 and t > start]
        count = sum(admitted) if tokens else len(admitted)
        return count * 60 / (end - start) if end > start else None


def _config(redis_url: str, rpm: int, tpm: int) -> str:
    return (
        '[providers.echo]\nkind = "echo"\n\n'
        "[auth]\napi_keys = [\n"
        f'  {{ name = "rpm", key = "{RPM_KEY}" }},\n  {{ name = "tpm", key = "{TPM_KEY}" }},\n]\n\n'
        f'[store]\nurl = "{redis_url}"\n\n'
        f'[limits.principals."api_key:rpm"]\nrpm = {rpm}\n\n'
        f'[limits.principals."api_key:tpm"]\ntpm = {tpm}\n'
    )


async def _offer(
    urls: list[str], key: str, body: dict[str, Any], per_second: float, seconds: float
) -> Offered:
    """``CLIENTS`` clients, alternating replicas, together offering ``per_second``."""
    offered = Offered()
    started = time.monotonic()
    gap = CLIENTS / per_second

    async def client(i: int, http: httpx.AsyncClient) -> None:
        await asyncio.sleep(gap * i / CLIENTS)
        while (now := time.monotonic()) - started < seconds:
            url = urls[i % len(urls)]
            headers = {"authorization": f"Bearer {key}"}
            response = await http.post(f"{url}/llm/v1/chat/completions", json=body, headers=headers)
            used = response.json()["usage"]["total_tokens"] if response.status_code == 200 else 0
            offered.answers.append((time.monotonic(), response.status_code, used))
            await asyncio.sleep(max(0.0, gap - (time.monotonic() - now)))

    limits = httpx.Limits(max_connections=CLIENTS)
    async with httpx.AsyncClient(timeout=30, limits=limits) as http:
        await asyncio.gather(*(client(i, http) for i in range(CLIENTS)))
    return offered


def _wait_ready(url: str) -> None:
    """Until the replica answers: connection refusals are retried with a backoff."""
    with httpx.Client(transport=httpx.HTTPTransport(retries=8)) as client:
        if client.get(f"{url}/llm/healthz", timeout=5.0).status_code != 200:
            raise RuntimeError(f"{url} did not start")


def accuracy(
    procs: Processes, directory: Path, redis_url: str, quick: bool
) -> tuple[Offered, Offered, int, int, float]:
    """Two replicas, one Redis; the rpm principal, then the tpm one, offered 3x their limit."""
    # At 3x the rate, a full bucket (one minute's worth) is spent after 30 s: counting starts
    # there, and goes on for two minutes (``--quick``: 15 s).
    seconds = 45.0 if quick else 150.0
    # Many requests a minute either way, so that one more or less is well under 1%.
    rpm, tpm = (600, 120_000) if quick else (1200, 300_000)
    config = directory / "llm-proxy.toml"
    config.write_text(_config(redis_url, rpm, tpm))
    env = {**os.environ, "LLM_PROXY_CONFIG": str(config)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    urls = []
    for i in range(2):
        port = free_port()
        argv = [sys.executable, "-m", "uvicorn", "examples.app:app", "--port", str(port)]
        argv += ["--host", "127.0.0.1", "--log-level", "warning", "--no-access-log"]
        procs.start(f"replica-{i}", argv, cpu=cpus()[0], env=env, cwd=ROOT)
        urls.append(f"http://127.0.0.1:{port}")
    for url in urls:
        _wait_ready(url)
    by_rpm, by_tpm = asyncio.run(_both(urls, rpm, tpm, seconds))
    return by_rpm, by_tpm, rpm, tpm, seconds


async def _both(urls: list[str], rpm: int, tpm: int, seconds: float) -> tuple[Offered, Offered]:
    by_rpm = _offer(urls, RPM_KEY, SHORT, 3 * rpm / 60, seconds)
    by_tpm = _offer(urls, TPM_KEY, LONG, 3 * tpm / 1010 / 60, seconds)
    return await asyncio.gather(by_rpm, by_tpm)


async def budget_overshoot(redis_url: str) -> tuple[int, int, int]:
    """(spent past the budget, one reservation, requests admitted), in nano-USD: 64 tasks on
    two backends, each reserving 1,000 and spending up to that."""
    replicas = [RedisLimits(redis_url, prefix="bench:budget:") for _ in range(2)]
    limit = Limit(budget_usd=Decimal("0.0002"), budget_period="total")  # 200,000 nano-USD
    reserved, spent, admitted = 1_000, [0], [0]
    rng = random.Random(19)

    async def task(i: int) -> None:
        backend = replicas[i % 2]
        while isinstance(grant := await backend.reserve("p", limit, 0, reserved), Grant):
            admitted[0] += 1
            await asyncio.sleep(rng.random() / 1000)
            cost = rng.randint(reserved // 2, reserved)
            spent[0] += cost
            await backend.settle(
                grant.reservation, tokens=0, cost_nano=cost, give_back_request=False
            )

    await asyncio.gather(*(task(i) for i in range(CLIENTS)))
    for backend in replicas:
        await backend.aclose()
    return spent[0] - limit.budget_nano, reserved, admitted[0]


async def _reading_app(scope: Any, receive: Any, send: Any) -> None:
    """The canned answer after reading and parsing the body, as Retry and Routing below the
    layer would anyway (the limits' estimate shares that one parse)."""
    ctx = get_context(scope)
    await read_body(ctx, scope, receive)
    ctx.json()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b'{"usage":{}}'})


def _limited(backend: LimitsBackend) -> Any:
    huge = Limit(rpm=10**9, tpm=10**12, budget_usd=Decimal(10**9))
    policy = LimitsPolicy(default=huge)
    limits = LimitsMiddleware(_reading_app, policy=policy, backend=backend)
    return RequestContextMiddleware(limits)


async def cpu_rows(redis_url: str, quick: bool) -> list[list[str]]:
    rounds, seconds = (3, 0.2) if quick else (7, 1.0)
    cases = [
        Case("context + body read and parsed (baseline)", RequestContextMiddleware(_reading_app)),
        Case("+ limits, in process", _limited(LocalLimits())),
        Case("+ limits, Redis (client CPU, 2 round trips)", _limited(RedisLimits(redis_url))),
    ]
    rows = [await _measure(case, rounds, seconds) for case in cases]
    base = rows[0].median_us or 0.0
    return [
        [row.label, num(row.median_us, 1), num((row.median_us or base) - base, 1) if i else "–"]
        for i, row in enumerate(rows)
    ]


def main(*, quick: bool = False) -> str:
    redis_binary = shutil.which("redis-server")
    if redis_binary is None:
        return "## Limits\n\nnot run: redis-server is not installed"
    with (
        tempfile.TemporaryDirectory(prefix="bench-limits-") as directory,
        Processes(Path(directory)) as procs,
    ):
        port = free_port()
        argv = [redis_binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        procs.start("redis", [*argv, "--appendonly", "no"], cpu=cpus()[1])
        url = f"redis://127.0.0.1:{port}/0"
        _wait_redis(port)
        by_rpm, by_tpm, rpm, tpm, seconds = accuracy(procs, Path(directory), url, quick)
        overshoot, reservation, admitted = asyncio.run(budget_overshoot(url))
        cpu = run(cpu_rows(url, quick))  # on uvloop, as the micro benchmark and uvicorn
    rows = []
    for name, offered, limit, tokens in (("rpm", by_rpm, rpm, False), ("tpm", by_tpm, tpm, True)):
        rate = offered.rate(tokens=tokens)
        ratio = None if rate is None else rate / limit
        ok = ratio is not None and 0.95 <= ratio <= 1.01
        rows.append([name, num(limit), num(rate), f"{ratio:.3f}" if ratio else "–", _ok(ok)])
    lines = [
        f"## Limits{' (--quick)' if quick else ''}",
        "",
        f"Two replicas on one Redis, {CLIENTS} clients per principal offering 3x its limit for "
        f"{seconds:g} s; admitted per minute counted from the first refusal (about 30 s in).",
        "",
        table(["limit", "configured", "admitted / min", "ratio", "goal [0.95, 1.01]"], rows),
        "",
        f"- budget: {admitted} requests admitted by {CLIENTS} tasks on two replicas; spent "
        f"{num(overshoot)} nano-USD past the budget, one reservation is {num(reservation)} "
        f"(goal: at most one reservation) — {_ok(overshoot <= reservation)}",
        "",
        table(["CPU per request (in process)", "µs", "added µs"], cpu),
        "",
        f"- goal: limits add at most {CPU_GOAL_US:g} µs of CPU per request and one Redis round "
        "trip before forwarding (a second settles after the answer, off the client's path)",
    ]
    return "\n".join(lines)


def _wait_redis(port: int) -> None:
    import socket

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError("redis-server did not start")


def _ok(ok: bool) -> str:
    return "ok" if ok else "**missed**"
