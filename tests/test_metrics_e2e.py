"""Metrics end to end: a real Prometheus server, a real Redis shared by two app processes, and
``uvicorn --workers 2`` in Prometheus multiprocess mode.

Every server is a real process on loopback that the test starts and stops: Prometheus
(Debian ``prometheus``) scraping the example app every second; ``redis-server``; and the
example app (``examples/app.py``) under ``python -m uvicorn``, configured through
``LLM_PROXY_CONFIG``. The app processes get a socket the test bound already (``--fd``), so
the port is known before they start and no other process can take it. Every wait is a
bounded poll; every process is stopped in a ``finally``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import require_binary
from tests.e2e_helpers import serve_example_app
from tests.fakes.redis_server import redis_server
from tests.fakes.servers import free_port
from tests.test_dashboard import ARTIFACTS, chromium

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"
#: The longest any poll below waits (seconds).
DEADLINE = 30.0
#: Variables that would point the example app at a real provider, or at other metric files.
FOREIGN_ENV = (
    "OPENAI_API_KEY",
    "ANTHROPIC_API_KEY",
    "OPENAI_BASE_URL",
    "ANTHROPIC_BASE_URL",
    "PROMETHEUS_MULTIPROC_DIR",
)

T = TypeVar("T")


def poll(what: str, check: Callable[[], T | None], *, interval: float = 0.2) -> T:
    """Call ``check`` until it returns something other than ``None``; at most ``DEADLINE``."""
    deadline = time.monotonic() + DEADLINE
    last: Any = None
    while True:
        try:
            result = check()
        except (httpx.HTTPError, ValueError) as exc:  # not up yet, or half-written JSON
            result, last = None, exc
        if result is not None:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {DEADLINE} s (last error: {last!r})")
        time.sleep(interval)


def client(base_url: str) -> httpx.Client:
    return httpx.Client(base_url=base_url, timeout=10.0, trust_env=False)


def proxy_config(path: Path, *, store_url: str, extra: str = "") -> Path:
    """Two echo providers, each serving one named model; public metrics; the given store."""
    path.write_text(
        f"""
[providers.echo-a]
kind = "echo"
models = ["gpt-alpha"]

[providers.echo-b]
kind = "echo"
models = ["claude-beta"]

[store]
url = "{store_url}"

[metrics]
public = true
{extra}
""",
        encoding="utf-8",
    )
    return path


def chat(http: httpx.Client, model: str = "gpt-alpha") -> None:
    body = {"model": model, "messages": [{"role": "user", "content": "hello world"}]}
    response = http.post("/llm/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text


def messages(http: httpx.Client, model: str = "claude-beta", *, stream: bool = False) -> None:
    body = {
        "model": model,
        "max_tokens": 16,
        "stream": stream,
        "messages": [{"role": "user", "content": "hello world"}],
    }
    response = http.post("/llm/v1/messages", json=body)
    assert response.status_code == 200, response.text


def requests_by_model(exposition: str) -> dict[str, float]:
    """``llm_proxy_requests_total`` of one exposition, summed per model label."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == "llm_proxy_requests_total":
                model = sample.labels["model"]
                found[model] = found.get(model, 0.0) + sample.value
    return found


# -- processes -------------------------------------------------------------------------------


def stop(process: subprocess.Popen[bytes]) -> None:
    """Terminate, wait, kill if it will not go: never leave a process behind."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(15)


def log_tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:] if log.exists() else "(no log)"


@contextlib.contextmanager
def app_process(
    config: Path,
    log: Path,
    *,
    workers: int = 1,
    env: Mapping[str, str] | None = None,
    launcher: Sequence[str] = (),
) -> Iterator[str]:
    """``python -m uvicorn examples.app:app`` on a socket bound here, run by ``launcher``
    (``opentelemetry-instrument``) if given; yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((LOOPBACK, 0))
        sock.listen(128)
        url = f"http://{LOOPBACK}:{sock.getsockname()[1]}"
        command = [*launcher, sys.executable, "-m", "uvicorn", "examples.app:app"]
        command += ["--fd", str(sock.fileno()), "--log-level", "warning", "--no-access-log"]
        if workers > 1:
            command += ["--workers", str(workers)]
        child_env = {k: v for k, v in os.environ.items() if k not in FOREIGN_ENV}
        child_env.update({"LLM_PROXY_CONFIG": str(config), **(env or {})})
        with log.open("wb") as out:
            process = subprocess.Popen(
                command,
                cwd=ROOT,
                env=child_env,
                pass_fds=[sock.fileno()],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
    finally:
        sock.close()  # the child holds its own copy
    try:
        with client(url) as http:

            def up() -> bool | None:
                if process.poll() is not None:
                    pytest.fail(f"the app exited with {process.returncode}:\n{log_tail(log)}")
                return True if http.get("/").status_code == 200 else None

            poll(f"the app at {url}", up)
        yield url
    finally:
        stop(process)


@contextlib.contextmanager
def prometheus_server(tmp: Path, target: str) -> Iterator[str]:
    """A real Prometheus scraping ``target``'s ``/llm/metrics`` every second."""
    binary = require_binary("prometheus")
    config = tmp / "prometheus.yml"
    config.write_text(
        f"""
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: llm-proxy
    metrics_path: /llm/metrics
    static_configs:
      - targets: ["{target}"]
""",
        encoding="utf-8",
    )
    port = free_port()
    log = tmp / "prometheus.log"
    command = [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp / 'tsdb'}",
        f"--web.listen-address={LOOPBACK}:{port}",
        "--log.level=warn",
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=tmp, stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"http://{LOOPBACK}:{port}"
        with client(url) as http:

            def ready() -> bool | None:
                if process.poll() is not None:
                    pytest.fail(f"prometheus exited with {process.returncode}:\n{log_tail(log)}")
                return True if http.get("/-/ready").status_code == 200 else None

            poll("prometheus ready", ready)
        yield url
    finally:
        stop(process)


# -- (a) a real Prometheus scrapes the example app -------------------------------------------


def query(http: httpx.Client, promql: str) -> list[dict[str, Any]]:
    response = http.get("/api/v1/query", params={"query": promql})
    response.raise_for_status()
    payload = response.json()
    assert payload["status"] == "success", payload
    result: list[dict[str, Any]] = payload["data"]["result"]
    return result


def scraped_requests(prom: httpx.Client) -> dict[tuple[str, str, str], float]:
    """``llm_proxy_requests_total`` as Prometheus has it now, by provider, model, status."""
    found = {}
    for series in query(prom, "llm_proxy_requests_total"):
        labels = series["metric"]
        assert labels["job"] == "llm-proxy", labels
        found[(labels["provider"], labels["model"], labels["status"])] = float(series["value"][1])
    return found


def test_prometheus_scrapes_the_example_app(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'store.db'}"
    config = proxy_config(tmp_path / "proxy.toml", store_url=store).read_text()
    with (
        serve_example_app(config, tmp_path) as app,
        prometheus_server(tmp_path, app.url.removeprefix("http://")) as prometheus,
        client(app.url) as http,
        client(prometheus) as prom,
    ):

        def scraped_once() -> bool | None:
            series = query(prom, 'up{job="llm-proxy"}')
            return True if [s["value"][1] for s in series] == ["1"] else None

        poll("a first successful scrape", scraped_once)

        def seen(expected: dict[tuple[str, str, str], float]) -> Callable[[], bool | None]:
            return lambda: True if scraped_requests(prom) == expected else None

        for _ in range(3):
            chat(http)
        messages(http, stream=True)
        first = {("echo-a", "gpt-alpha", "200"): 3, ("echo-b", "claude-beta", "200"): 1}
        poll("the first requests in Prometheus", seen(first))

        chat(http)
        messages(http)
        later = {("echo-a", "gpt-alpha", "200"): 4, ("echo-b", "claude-beta", "200"): 2}
        poll("the later requests in Prometheus", seen(later))
        tokens = query(prom, 'sum by (kind) (llm_proxy_tokens_total{provider="echo-b"})')
        assert {s["metric"]["kind"]: s["value"][1] for s in tokens} == {
            "prompt": "4",
            "completion": "6",
        }
        latency = query(prom, "sum(llm_proxy_request_duration_seconds_count)")
        assert [s["value"][1] for s in latency] == ["6"]


# -- (b) two app processes share one Redis: history and dashboard show both -----------------


def test_two_processes_share_history_and_dashboard_through_redis(tmp_path: Path) -> None:
    require_binary("chromium")
    with redis_server() as redis:
        config = proxy_config(
            tmp_path / "proxy.toml",
            store_url=redis.url,
            extra="flush_interval_seconds = 0.2",
        )
        with (
            app_process(config, tmp_path / "app-1.log") as first,
            app_process(config, tmp_path / "app-2.log") as second,
            client(first) as one,
            client(second) as two,
        ):
            for _ in range(3):
                chat(one)
            messages(two)
            messages(two, stream=True)

            # Each process' Prometheus counters are its own...
            assert requests_by_model(one.get("/llm/metrics").text) == {"gpt-alpha": 3}
            assert requests_by_model(two.get("/llm/metrics").text) == {"claude-beta": 2}

            # ...while the history both write to Redis shows all the traffic, from either one.
            def shared_history(http: httpx.Client) -> Callable[[], dict[str, Any] | None]:
                def check() -> dict[str, Any] | None:
                    payload: dict[str, Any] = http.get("/llm/metrics/history?range=1h").json()
                    return payload if payload["totals"]["requests"] == 5 else None

                return check

            for http in (one, two):
                payload = poll("both processes' traffic in the history", shared_history(http))
                totals = payload["totals"]
                assert payload["providers"] == ["echo-a", "echo-b"]
                assert payload["models"] == ["claude-beta", "gpt-alpha"]
                assert totals["errors"] == 0
                assert {p: v["requests"] for p, v in totals["providers"].items()} == {
                    "echo-a": 3,
                    "echo-b": 2,
                }
                assert {m: v["requests"] for m, v in totals["models"].items()} == {
                    "gpt-alpha": 3,
                    "claude-beta": 2,
                }
                assert (totals["prompt_tokens"], totals["completion_tokens"]) == (10, 15)

            ARTIFACTS.mkdir(exist_ok=True)
            screenshot = ARTIFACTS / "dashboard-two-processes.png"
            screenshot.unlink(missing_ok=True)
            page = first + "/llm/dashboard"
            dom = chromium(page, tmp_path / "dom", "--dump-dom").stdout
            chromium(
                page, tmp_path / "shot", f"--screenshot={screenshot}", "--window-size=1280,1600"
            )
    for name in ("echo-a", "echo-b", "gpt-alpha", "claude-beta"):
        assert f">{name}<" in dom, name  # a text node of its own, in a legend or the table
    assert "<svg" in dom and "Updated " in dom
    assert screenshot.stat().st_size > 10_000


# -- (c) uvicorn --workers 2 in multiprocess mode --------------------------------------------


def worker_pids(directory: Path) -> set[str]:
    """The workers that counted a request: prometheus_client writes ``counter_<pid>.db``."""
    return {path.stem.rpartition("_")[2] for path in directory.glob("counter_*.db")}


def test_workers_share_counters_in_multiprocess_mode(tmp_path: Path) -> None:
    multiproc = tmp_path / "prometheus-multiproc"
    multiproc.mkdir()  # empty at start, as prometheus_client requires; and no store in it
    config = proxy_config(tmp_path / "proxy.toml", store_url=f"sqlite:///{tmp_path / 'store.db'}")
    env = {"PROMETHEUS_MULTIPROC_DIR": str(multiproc)}
    sent = 0
    with app_process(config, tmp_path / "app.log", workers=2, env=env) as url:
        # A new connection per request, so that the kernel hands them to either worker;
        # in batches until both workers counted some (bounded: 20 batches at most).
        for _ in range(20):
            for _ in range(10):
                with client(url) as http:
                    chat(http)
                sent += 1
            if len(worker_pids(multiproc)) == 2:
                break
        assert len(worker_pids(multiproc)) == 2, f"one worker took all {sent} requests"

        labels = {"provider": "echo-a", "model": "gpt-alpha"}
        for _ in range(6):  # whichever worker answers, it reports the sum of both
            with client(url) as http:
                exposition = http.get("/llm/metrics").text
            values = samples(exposition)
            assert values[("llm_proxy_requests_total", (*labels.values(), "200"))] == sent
            assert (
                values[("llm_proxy_request_duration_seconds_count", tuple(labels.values()))] == sent
            )
            assert values[("llm_proxy_tokens_total", (*labels.values(), "prompt"))] == 2 * sent
            assert values[("llm_proxy_requests_in_flight", ())] == 0
            assert values[("llm_proxy_circuit_state", ("echo-a",))] == 0  # this worker's view


def samples(exposition: str) -> dict[tuple[str, tuple[str, ...]], float]:
    """Every sample but histogram buckets, by name and its provider, model, status, kind."""
    found: dict[tuple[str, tuple[str, ...]], float] = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            order = [k for k in ("provider", "model", "status", "kind") if k in sample.labels]
            if "le" in sample.labels:
                continue
            found[(sample.name, tuple(sample.labels[k] for k in order))] = sample.value
    return found
