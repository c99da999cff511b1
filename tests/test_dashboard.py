"""The dashboard: payload math, the ASGI routes, the Grafana example, and the page in Chromium.

The math tests use hand-made buckets whose percentiles can be worked out on paper. The page
is checked the only way that shows it works: served by real uvicorn under a mount path and
rendered by headless Chromium, whose DOM must hold the names of the providers and models
that served traffic; the screenshot is kept in ``test-artifacts/`` for a human to look at.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import random
import re
import subprocess
import time
from collections.abc import Iterable
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.routing import Mount

from llm_proxy_mw.context import Attempt, RequestContext, Usage
from llm_proxy_mw.dashboard import (
    CONTENT_SECURITY_POLICY,
    RANGES,
    DashboardApp,
    history_payload,
    quantile,
)
from llm_proxy_mw.health import HealthRegistry
from llm_proxy_mw.history import DURATION_BUCKETS, BucketKey, MinuteBucket
from llm_proxy_mw.metrics import ProxyMetrics
from llm_proxy_mw.wire import WireFormat
from tests.conftest import require_binary
from tests.fakes.servers import UvicornServer

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
GRAFANA = ROOT / "examples" / "grafana-dashboard.json"
NOW = 1_750_000_000.0  # a fixed "now", 20 s into a minute
T0 = 1_749_996_420  # NOW's minute minus 59 minutes: the first minute of the 1 h range


def slot(seconds: float) -> int:
    """The histogram slot of a duration (upper bounds are inclusive)."""
    return next((i for i, b in enumerate(DURATION_BUCKETS) if seconds <= b), len(DURATION_BUCKETS))


def bucket(
    minute: int,
    provider: str = "openai",
    model: str = "gpt-4o",
    status: int = 200,
    *,
    durations: Iterable[float] = (),
    prompt: int = 0,
    completion: int = 0,
) -> MinuteBucket:
    made = MinuteBucket(BucketKey(minute, provider, model, status))
    for seconds in durations:
        made.count += 1
        made.duration_sum += seconds
        made.duration_counts[slot(seconds)] += 1
    made.errors = 0 if 200 <= status < 400 else made.count
    made.prompt_tokens, made.completion_tokens = prompt, completion
    return made


class FakeHistory:
    """A history source holding fixed buckets; records the ranges asked for."""

    def __init__(self, buckets: list[MinuteBucket]) -> None:
        self.buckets = buckets
        self.calls: list[tuple[int, int]] = []

    async def history(self, since_minute: int, until_minute: int) -> list[MinuteBucket]:
        self.calls.append((since_minute, until_minute))
        return [b for b in self.buckets if since_minute <= b.key.minute < until_minute]


# -- quantiles -----------------------------------------------------------------------------


def test_quantile_interpolates_within_the_slot_like_histogram_quantile() -> None:
    counts = [0] * (len(DURATION_BUCKETS) + 1)
    counts[slot(0.7)] = 4  # (0.5, 1.0]
    counts[slot(2.0)] = 4  # (1.0, 2.5]
    assert quantile(0.5, counts) == pytest.approx(1.0)  # rank 4: the top of (0.5, 1.0]
    assert quantile(0.95, counts) == pytest.approx(1.0 + 1.5 * (7.6 - 4) / 4)  # 2.35
    assert quantile(0.25, counts) == pytest.approx(0.75)


def test_quantile_edges() -> None:
    empty = [0] * (len(DURATION_BUCKETS) + 1)
    assert quantile(0.5, empty) is None
    first = [10, *empty[1:]]
    assert quantile(0.5, first) == pytest.approx(0.005)  # the first slot starts at 0
    overflow = [*empty[:-1], 3]
    assert quantile(0.95, overflow) == DURATION_BUCKETS[-1]  # +Inf: the highest finite bound


# -- the payload ---------------------------------------------------------------------------


def test_one_hour_payload_per_minute() -> None:
    until = T0 + 3600
    buckets = [
        bucket(T0, durations=[0.7] * 4 + [2.0] * 4, prompt=100, completion=40),
        bucket(T0, status=500, durations=[0.3, 0.3]),
        bucket(T0, "anthropic", "claude", 200, durations=[0.04] * 3, prompt=9, completion=3),
        bucket(T0 + 120, "anthropic", "claude", 429, durations=[0.02]),
        bucket(T0 + 120, "none", "none", 401, durations=[0.001] * 5),
        bucket(T0 - 60, durations=[1.0] * 50),  # before the range
        bucket(until, durations=[1.0] * 50),  # after it
    ]
    health = {
        "openai": {"circuit": "closed", "success_ratio": 0.8},
        "anthropic": {"circuit": "open"},
    }
    data = history_payload(buckets, since_minute=T0, until_minute=until, health=health)

    assert data["times"] == list(range(T0, until, 60))
    assert data["providers"] == ["anthropic", "openai"]  # "none" never reached a provider
    assert data["models"] == ["claude", "gpt-4o"]
    assert data["requests_per_minute"][:3] == [13, 0, 6]
    assert data["errors_per_minute"][:3] == [2, 0, 6]
    assert data["success_rate"]["openai"][:2] == [0.8, None]  # 8 of 10; no traffic: None
    assert data["success_rate"]["anthropic"][:3] == [1.0, None, 0.0]
    # openai's minute: 4 in (0.5, 1], 4 in (1, 2.5] plus the two 500s at 0.3 s
    gpt = data["latency"]["gpt-4o"]
    assert gpt["p50"][0] == pytest.approx(0.5 + 0.5 * 3 / 4)
    assert gpt["p95"][0] == pytest.approx(1.0 + 1.5 * (9.5 - 6) / 4)
    assert gpt["p50"][1] is None
    assert data["latency"]["claude"]["p50"][2] == pytest.approx(0.01 + 0.015 * 0.5)
    assert data["tokens_per_minute"]["prompt"][0] == 109
    assert data["tokens_per_minute"]["completion"][0] == 43
    totals = data["totals"]
    assert totals["requests"] == 19 and totals["errors"] == 8
    assert totals["success_rate"] == round(11 / 19, 4)
    assert totals["prompt_tokens"] == 109 and totals["completion_tokens"] == 43
    assert totals["providers"]["anthropic"] == {"requests": 4, "success_rate": 0.75}
    assert totals["models"]["gpt-4o"]["requests"] == 10
    assert totals["models"]["gpt-4o"]["prompt_tokens"] == 100
    assert totals["p50"] is not None
    assert data["circuits"] == {"anthropic": {"circuit": "open"}, "openai": health["openai"]}
    json.dumps(data, allow_nan=False)  # JSON-ready


def test_24h_steps_sum_the_minutes_of_a_step() -> None:
    span, step = RANGES["24h"]
    since = 1_749_916_800  # a multiple of 900
    until = since + span - 600  # the last step holds 5 minutes only
    buckets = [
        bucket(since, durations=[0.7] * 4, prompt=30),
        bucket(since + 5 * 60, durations=[2.0] * 4, prompt=30),
        bucket(since + 14 * 60, status=503, durations=[2.0] * 7),
        bucket(since + 15 * 60, durations=[0.2] * 15),  # the next step
        bucket(until - 60, durations=[0.2] * 10),
    ]
    data = history_payload(
        buckets, since_minute=since, until_minute=until, health=None, step_seconds=step
    )
    assert len(data["times"]) == 96
    assert data["times"][1] - data["times"][0] == 900
    assert data["requests_per_minute"][:2] == [1.0, 1.0]  # 15 per 15 minutes
    assert data["errors_per_minute"][0] == round(7 / 15, 3)
    assert data["success_rate"]["openai"][:2] == [round(8 / 15, 4), 1.0]
    assert data["tokens_per_minute"]["prompt"][0] == 4.0
    # step 0 sums three minutes: 4 in (0.5, 1], 11 in (1, 2.5]; rank 7.5 in the second slot
    assert data["latency"]["gpt-4o"]["p50"][0] == pytest.approx(1.0 + 1.5 * 3.5 / 11)
    assert data["requests_per_minute"][-1] == 2.0  # 10 in a 5-minute step
    assert data["circuits"] == {}


def test_7d_steps_are_two_hours() -> None:
    span, step = RANGES["7d"]
    since = 1_749_168_000  # a multiple of 7200
    buckets = [bucket(since + m * 60, durations=[0.1]) for m in range(0, 240, 10)]
    data = history_payload(
        buckets, since_minute=since, until_minute=since + span, health=None, step_seconds=step
    )
    assert len(data["times"]) == 84
    assert data["requests_per_minute"][:3] == [0.1, 0.1, 0.0]  # 12 requests per 120 minutes
    assert data["totals"]["requests"] == 24


def test_step_must_be_whole_minutes() -> None:
    with pytest.raises(ValueError, match="multiple of 60"):
        history_payload([], since_minute=0, until_minute=60, health=None, step_seconds=90)


# -- the ASGI app --------------------------------------------------------------------------


def client_for(app: Any, base: str = "http://proxy") -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base)


def inline(tag: str, html: str) -> str:
    match = re.search(rf"<{tag}>(.*?)</{tag}>", html, re.DOTALL)
    assert match is not None
    digest = hashlib.sha256(match.group(1).encode()).digest()
    return f"'sha256-{base64.b64encode(digest).decode()}'"


@pytest.mark.anyio
async def test_page_is_served_with_a_strict_policy() -> None:
    app = DashboardApp(FakeHistory([]))
    async with client_for(app) as client:
        response = await client.get("/dashboard")
        head = await client.head("/dashboard")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["x-content-type-options"] == "nosniff"
    policy = response.headers["content-security-policy"]
    assert policy == CONTENT_SECURITY_POLICY.decode()
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["connect-src"] == "'self'"
    assert directives["script-src"] == inline("script", response.text)  # no 'unsafe-inline'
    assert directives["style-src"] == inline("style", response.text)
    assert 'fetch("./metrics/history?range=' in response.text  # relative: any mount path
    assert not re.search(r"(src|href)=\"(https?:)?//", response.text)  # no external assets
    assert "innerHTML" not in response.text
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(len(response.content))


@pytest.mark.anyio
async def test_history_json_for_each_range() -> None:
    now_minute = math.floor(NOW / 60) * 60
    source = FakeHistory([bucket(now_minute, durations=[0.5], prompt=3)])
    health = HealthRegistry(["openai"])
    app = DashboardApp(source, health=health, clock=lambda: NOW)
    async with client_for(app) as client:
        default = await client.get("/metrics/history")
        day = await client.get("/metrics/history", params={"range": "24h"})
        week = await client.get("/metrics/history", params={"range": "7d"})
    assert default.status_code == 200
    assert default.headers["content-type"] == "application/json"
    assert default.headers["cache-control"] == "no-store"
    data = default.json()
    assert data["range"] == "1h" and data["generated_at"] == NOW
    assert source.calls[0] == (now_minute + 60 - 3600, now_minute + 60)
    assert len(data["times"]) == 60 and data["times"][-1] == now_minute  # ends with this minute
    assert data["requests_per_minute"][-1] == 1
    assert data["providers"] == ["openai"] and data["models"] == ["gpt-4o"]
    assert data["circuits"]["openai"]["circuit"] == "closed"
    assert set(data) >= {"latency", "success_rate", "tokens_per_minute", "totals", "step"}
    for response, (span, step) in ((day, RANGES["24h"]), (week, RANGES["7d"])):
        body = response.json()
        assert body["step"] == step and body["since"] % step == 0
        assert body["until"] - span - step < body["since"] <= body["until"] - span
        assert body["totals"]["requests"] == 1


@pytest.mark.anyio
async def test_bad_requests_get_json_errors() -> None:
    app = DashboardApp(FakeHistory([]))
    async with client_for(app) as client:
        bad_range = await client.get("/metrics/history", params={"range": "1y"})
        post = await client.post("/dashboard")
        other = await client.get("/elsewhere")
    assert bad_range.status_code == 400
    assert bad_range.json()["error"]["code"] == "invalid_request"
    assert "1h, 24h, 7d" in bad_range.json()["error"]["message"]
    assert post.status_code == 405 and post.headers["allow"] == "GET, HEAD"
    assert other.status_code == 404 and other.json()["error"]["code"] == "not_found"


@pytest.mark.anyio
async def test_other_scopes_are_ignored() -> None:
    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        raise AssertionError("not read")

    async def send(message: Any) -> None:
        sent.append(message)

    await DashboardApp(FakeHistory([]))({"type": "lifespan"}, receive, send)
    assert sent == []


@pytest.mark.anyio
async def test_works_under_a_starlette_mount() -> None:
    app = Starlette(routes=[Mount("/llm", app=DashboardApp(FakeHistory([])))])
    async with client_for(app) as client:
        page = await client.get("/llm/dashboard")
        history = await client.get("/llm/metrics/history?range=7d")
    assert page.status_code == 200 and "<svg" not in page.text  # charts are drawn client-side
    assert history.status_code == 200 and history.json()["range"] == "7d"


# -- the Grafana example -------------------------------------------------------------------


def exposed_series() -> dict[str, set[str]]:
    """Every sample name the proxy exposes, with its label names, from the real families.

    One observed request (with a retry and token usage) gives every family a sample.
    """
    registry = CollectorRegistry()
    metrics = ProxyMetrics(registry, models=["m"], health=HealthRegistry(["p"]))
    ctx = RequestContext("id", "/v1/chat/completions", WireFormat.OPENAI, provider="p", model="m")
    ctx.ttfb = 0.1
    ctx.usage = Usage(prompt_tokens=3, completion_tokens=2, cost_usd=Decimal("0.001"))
    ctx.attempts = [Attempt("p", "server_error", 500, 0.1), Attempt("p", "success", 200, 0.1)]
    metrics.observe(ctx, 200, 0.2)
    names: dict[str, set[str]] = {}
    for family in registry.collect():
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    return names


def test_grafana_dashboard_uses_only_exposed_metrics() -> None:
    board = json.loads(GRAFANA.read_text())
    assert board["schemaVersion"] >= 36
    assert [i["name"] for i in board["__inputs"]] == ["DS_PROMETHEUS"]
    series = exposed_series()
    assert {"llm_proxy_requests_total", "llm_proxy_request_duration_seconds_bucket"} <= set(series)
    panels = [p for p in board["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in board["panels"]}) == len(board["panels"])
    expressions = [t["expr"] for p in panels for t in p["targets"]]
    for variable in board["templating"]["list"]:
        query = variable["query"]
        expressions.append(query["query"] if isinstance(query, dict) else query)
    assert len(expressions) >= 10
    used: set[str] = set()
    for expr in expressions:
        names = set(re.findall(r"\bllm_proxy_\w+", expr))
        assert names, expr
        assert names <= set(series), (expr, names - set(series))
        used |= names
        known = set().union(*(series[n] for n in names))
        for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
            grouped = {g.strip() for g in group.split(",") if g.strip()}
            assert grouped <= known, (expr, grouped - known)
        for label in re.findall(r"(\w+)\s*=~?\s*\"", expr):
            assert label in known, (expr, label)
    assert {
        "llm_proxy_time_to_first_byte_seconds_bucket",
        "llm_proxy_upstream_attempts_total",
        "llm_proxy_provider_success_ratio",
        "llm_proxy_circuit_state",
        "llm_proxy_tokens_total",
        "llm_proxy_retries_total",
        "llm_proxy_requests_in_flight",
        "llm_proxy_cost_usd_total",
    } <= used
    for panel in panels:
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}"
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"])


# -- the page in a real browser ------------------------------------------------------------


def traffic(now: float) -> list[MinuteBucket]:
    """A plausible last 26 hours: two providers, one model each, some errors and retries."""
    rng = random.Random(7)
    end = math.floor(now / 60) * 60
    made = []
    for minute in range(end - 26 * 3600, end + 60, 60):
        wave = 1 + 0.5 * math.sin(minute / 1800)
        for provider, model, base, typical in (
            ("openai-prod", "gpt-4o-mini", 14, 0.9),
            ("anthropic-prod", "claude-sonnet-4", 8, 2.4),
        ):
            count = max(1, int(base * wave + rng.randint(-3, 3)))
            ok = [typical * rng.lognormvariate(0, 0.45) for _ in range(count)]
            made.append(
                bucket(
                    minute,
                    provider,
                    model,
                    200,
                    durations=ok,
                    prompt=count * 420,
                    completion=count * rng.randint(90, 160),
                )
            )
            failures = rng.choice([0, 0, 0, 0, 1, 2]) + (
                6 if provider == "anthropic-prod" and end - 1500 < minute < end - 900 else 0
            )
            if failures:
                made.append(bucket(minute, provider, model, 503, durations=[0.05] * failures))
    return made


def chromium(url: str, tmp: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    binary = require_binary("chromium")
    command = [
        binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", "--hide-scrollbars", f"--user-data-dir={tmp}",
        "--virtual-time-budget=5000", *flags, url,
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=90, check=True)


@pytest.mark.e2e
def test_dashboard_renders_in_headless_chromium(tmp_path: Path) -> None:
    require_binary("chromium")
    health = HealthRegistry(["anthropic-prod", "openai-prod"])
    for _ in range(12):  # enough failures to open anthropic-prod's circuit
        health["anthropic-prod"].record("server_error")
    for _ in range(40):
        health["openai-prod"].record("success")
    evil = "<img src=x onerror=document.title='owned'>"
    evil_source = FakeHistory([bucket(math.floor(time.time() / 60) * 60, evil, evil, 200,
                                      durations=[0.3])])  # fmt: skip
    app = Starlette(
        routes=[
            Mount("/llm", app=DashboardApp(FakeHistory(traffic(time.time())), health=health)),
            Mount("/evil", app=DashboardApp(evil_source)),
        ]
    )
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "dashboard.png"
    screenshot.unlink(missing_ok=True)
    with UvicornServer(app, lifespan="off") as server:
        url = server.url + "/llm/dashboard"
        dom = chromium(url, tmp_path / "dom", "--dump-dom").stdout
        chromium(url, tmp_path / "shot", f"--screenshot={screenshot}", "--window-size=1280,1600")
        evil_dom = chromium(server.url + "/evil/dashboard", tmp_path / "evil", "--dump-dom").stdout

    assert "<svg" in dom and "<path" in dom
    for name in ("openai-prod", "anthropic-prod", "gpt-4o-mini", "claude-sonnet-4"):
        assert f">{name}<" in dom, name  # a text node of its own, in a legend or the table
    assert re.search(r'<span id="status" role="status"( class="")?>Updated ', dom)
    assert 'data-provider="anthropic-prod"' in dom and ">open<" in dom
    assert screenshot.stat().st_size > 10_000
    # a name full of markup stays text: escaped in the DOM, never an element, never run
    assert "&lt;img src=x onerror=document.title='owned'&gt;" in evil_dom
    assert "<img" not in evil_dom and "<title>owned</title>" not in evil_dom
