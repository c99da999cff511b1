"""Process lifecycle: the example app under a real ``uvicorn`` process, stopped by signals.

``python -m examples.serve examples.app:app`` (uvicorn's command line, exiting 0 after a
graceful stop) runs as a subprocess with ``LLM_PROXY_CONFIG`` naming
a TOML file: one provider on a ``FakeProvider`` (in this process, served from a thread)
whose streams are slow, and the metrics history in a SQLite file under the test's tmp dir.

- SIGTERM with streams in flight: uvicorn's graceful shutdown lets them finish (each ends
  with ``[DONE]``), the proxy's lifespan flushes the metrics, and the process exits 0.
- ``kill -9`` during traffic: the app starts again on the same SQLite file, and the restored
  ``llm_proxy_requests_total`` is never below what had been flushed before the kill (read
  from the file itself just before killing).
- A ``[store]`` that does not open (SQLite under a path that is a file, Redis on a loopback
  port where nothing listens), under plain ``uvicorn`` and its default ``--lifespan auto``,
  both for the example app and for the proxy served on its own: the process exits non-zero
  before it listens, and one line says why.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from llm_proxy_mw.config import MetricsConfig
from tests.fakes.provider import Action, FakeProvider, FakeProviderServer
from tests.fakes.servers import free_port

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parent.parent
MODEL = "gpt-life"
PROVIDER_KEY = "sk-canary-lifecycle-61d0c3b8e4"
#: Bounds every wait on the subprocess (startup, shutdown), only so a broken run fails.
PROCESS_GUARD = 20.0
#: A small flush interval, where the config has one (see ``MetricsConfig``).
FLUSH_INTERVAL = 0.2
HAS_FLUSH_INTERVAL = "flush_interval_seconds" in MetricsConfig.model_fields


@pytest.fixture(scope="module")
def provider() -> FakeProvider:
    return FakeProvider()


@pytest.fixture(scope="module")
def fake(provider: FakeProvider) -> Iterator[str]:
    with FakeProviderServer(provider) as server:
        yield server.url


def write_config(tmp_path: Path, fake_url: str) -> tuple[Path, Path]:
    db = tmp_path / "m.db"
    metrics = ["[metrics]", "public = true"]
    if HAS_FLUSH_INTERVAL:
        metrics.append(f"flush_interval_seconds = {FLUSH_INTERVAL}")
    text = "\n".join(
        [
            "[providers.openai]",
            'kind = "openai"',
            f'base_url = "{fake_url}/v1"',
            'api_key = "${LIFECYCLE_PROVIDER_KEY}"',
            f'models = ["{MODEL}"]',
            "",
            "[store]",
            f'url = "sqlite:///{db}"',
            "",
            *metrics,
            "",
        ]
    )
    path = tmp_path / "llm-proxy.toml"
    path.write_text(text, encoding="utf-8")
    return path, db


@dataclass
class App:
    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


def app_env(config: Path) -> dict[str, str]:
    """This process's environment, less what would change the app's config, plus ``config``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OPENAI_", "ANTHROPIC_", "LLM_PROXY_", "PROMETHEUS_"))
    }
    return env | {"LLM_PROXY_CONFIG": str(config), "LIFECYCLE_PROVIDER_KEY": PROVIDER_KEY}


def start_app(config: Path, log: Path) -> App:
    """Start uvicorn on the example app and wait until it answers ``/healthz``."""
    port = free_port()
    env = app_env(config)
    command = [
        sys.executable,
        "-m",
        "examples.serve",
        "examples.app:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--timeout-graceful-shutdown",
        "5",
        "--log-level",
        "info",
        "--no-access-log",
    ]
    with log.open("ab") as sink:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=sink, stderr=sink)
    app = App(process, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + PROCESS_GUARD
    with httpx.Client(timeout=1.0, trust_env=False) as client:
        while True:
            if process.poll() is not None:
                raise AssertionError(f"the app exited at start:\n{app.output()}")
            with contextlib.suppress(httpx.TransportError):
                if client.get(app.url + "/llm/healthz").status_code == 200:
                    return app
            if time.monotonic() > deadline:
                stop(app, signal.SIGKILL)
                raise AssertionError(f"the app did not start:\n{app.output()}")
            time.sleep(0.05)


def assert_clean_exit(app: App, code: int) -> None:
    """Exit code 0 after a graceful shutdown.

    uvicorn (since 0.29) re-raises the signal it caught once it has shut down gracefully;
    ``examples.serve`` turns that into a normal exit. The log shows the shutdown was graceful.
    """
    output = app.output()
    assert code == 0, output
    assert "Application shutdown complete." in output, output
    assert "Finished server process" in output, output
    assert "Traceback" not in output, output


def stop(app: App, sig: signal.Signals) -> int:
    if app.process.poll() is None:
        app.process.send_signal(sig)
    try:
        return app.process.wait(PROCESS_GUARD)
    except subprocess.TimeoutExpired:
        app.process.kill()
        app.process.wait(PROCESS_GUARD)
        raise AssertionError(f"the app did not exit after {sig.name}:\n{app.output()}") from None


@pytest.fixture
def apps() -> Iterator[list[App]]:
    """Every app a test starts; whatever is still running at the end is killed."""
    started: list[App] = []
    yield started
    for app in started:
        if app.process.poll() is None:
            app.process.kill()
            app.process.wait(PROCESS_GUARD)


def flushed_requests(db: Path) -> float:
    """``llm_proxy_requests_total`` as the store holds it: every ``requests`` total summed."""
    if not db.exists():
        return 0.0
    connection = sqlite3.connect(db, timeout=5.0)
    try:
        rows = connection.execute("SELECT key, value FROM totals").fetchall()
    except sqlite3.OperationalError:  # the schema is not created yet
        return 0.0
    finally:
        connection.close()
    return sum(value for key, value in rows if json.loads(key)[0] == "requests")


def exposed_requests(app: App) -> float:
    """``llm_proxy_requests_total`` as the running app exposes it on ``/metrics``."""
    text = httpx.get(app.url + "/llm/metrics", timeout=5.0, trust_env=False).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("llm_proxy_requests_total{")
    )


def chat_body(*, stream: bool = False) -> dict[str, object]:
    body: dict[str, object] = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    return body | ({"stream": True} if stream else {})


def json_request(client: httpx.Client, app: App) -> None:
    response = client.post(app.url + "/llm/v1/chat/completions", json=chat_body())
    assert response.status_code == 200, response.text


def slow_stream(app: App, first_bytes: threading.Event) -> bytes:
    """A stream; the test scripts the provider to send its events 0.25 s apart (about 2 s)."""
    received = b""
    with (
        httpx.Client(timeout=10.0, trust_env=False) as client,
        client.stream(
            "POST",
            app.url + "/llm/v1/chat/completions",
            json=chat_body(stream=True),
        ) as response,
    ):
        assert response.status_code == 200
        for chunk in response.iter_raw():
            received += chunk
            first_bytes.set()
    return received


def test_sigterm_with_streams_in_flight_finishes_them_flushes_metrics_and_exits_cleanly(
    provider: FakeProvider, fake: str, tmp_path: Path, apps: list[App]
) -> None:
    config, db = write_config(tmp_path, fake)
    app = start_app(config, tmp_path / "app.log")
    apps.append(app)
    with httpx.Client(timeout=10.0, trust_env=False) as client:
        json_request(client, app)
    streams = 3
    provider.script(*[Action(event_delay=0.25)] * streams)
    with concurrent.futures.ThreadPoolExecutor(streams) as pool:
        started = [threading.Event() for _ in range(streams)]
        futures = [pool.submit(slow_stream, app, event) for event in started]
        for event in started:
            assert event.wait(10.0), "a stream did not start"
        assert not any(future.done() for future in futures)  # all in flight
        code = stop(app, signal.SIGTERM)
        bodies = [future.result(timeout=10.0) for future in futures]
    assert_clean_exit(app, code)
    for body in bodies:
        assert body.endswith(b"data: [DONE]\n\n"), body[-200:]
        assert b'"error"' not in body
    assert flushed_requests(db) == 1 + streams
    assert PROVIDER_KEY not in app.output()


def traffic(app: App, stop_flag: threading.Event, done: list[int]) -> None:
    """JSON requests, one after another, until told to stop or the app is gone."""
    with httpx.Client(timeout=5.0, trust_env=False) as client:
        while not stop_flag.is_set():
            try:
                json_request(client, app)
            except httpx.TransportError:
                return
            done.append(1)


def test_kill_9_during_traffic_restarts_on_the_same_store_never_below_the_last_flush(
    fake: str, tmp_path: Path, apps: list[App]
) -> None:
    config, db = write_config(tmp_path, fake)

    # A clean run first: everything it counted is flushed when it stops.
    first = start_app(config, tmp_path / "first.log")
    apps.append(first)
    with httpx.Client(timeout=10.0, trust_env=False) as client:
        for _ in range(5):
            json_request(client, first)
    assert_clean_exit(first, stop(first, signal.SIGTERM))
    assert flushed_requests(db) == 5

    # The second run continues the counters, then dies in the middle of traffic.
    second = start_app(config, tmp_path / "second.log")
    apps.append(second)
    assert exposed_requests(second) == 5
    stop_flag, done = threading.Event(), []
    worker = threading.Thread(target=traffic, args=(second, stop_flag, done))
    worker.start()
    try:
        deadline = time.monotonic() + 10.0
        # With a flush interval in the config, wait for a periodic flush of this run's own
        # traffic to land; without one, at least let some traffic through.
        while len(done) < 20 or (HAS_FLUSH_INTERVAL and flushed_requests(db) <= 5):
            assert time.monotonic() < deadline, "no traffic was served or flushed"
            time.sleep(0.02)
        before_kill = flushed_requests(db)
        assert stop(second, signal.SIGKILL) == -signal.SIGKILL
    finally:
        stop_flag.set()
        worker.join(10.0)
    if HAS_FLUSH_INTERVAL:
        assert before_kill > 5

    # The store opens again, and nothing that had been flushed is lost.
    third = start_app(config, tmp_path / "third.log")
    apps.append(third)
    restored = exposed_requests(third)
    assert restored >= before_kill >= 5
    with httpx.Client(timeout=10.0, trust_env=False) as client:
        json_request(client, third)
    assert exposed_requests(third) == restored + 1
    assert_clean_exit(third, stop(third, signal.SIGTERM))
    assert flushed_requests(db) >= restored + 1


# -- a store that does not open --------------------------------------------------------------

#: The proxy served on its own, as ``uvicorn served:proxy --app-dir <dir>``.
SERVED_ALONE = """\
import os

from llm_proxy_mw import build_proxy

proxy = build_proxy(os.environ["LLM_PROXY_CONFIG"])
"""


@pytest.mark.parametrize("store", ["sqlite", "redis"])
@pytest.mark.parametrize("app", ["examples.app:app", "served:proxy"])
def test_a_store_that_does_not_open_exits_non_zero_with_one_line_and_serves_nothing(
    app: str, store: str, tmp_path: Path
) -> None:
    if store == "sqlite":
        (tmp_path / "a-file").touch()
        url = f"sqlite:///{tmp_path}/a-file/metrics.db"
    else:
        url = f"redis://127.0.0.1:{free_port()}/0"
    config = tmp_path / "llm-proxy.toml"
    config.write_text(f'[providers.echo]\nkind = "echo"\n\n[store]\nurl = "{url}"\n')
    (tmp_path / "served.py").write_text(SERVED_ALONE)
    command = [sys.executable, "-m", "uvicorn", app, "--app-dir", str(tmp_path)]
    command += ["--host", "127.0.0.1", "--port", str(free_port()), "--log-level", "info"]
    result = subprocess.run(
        command, cwd=REPO, env=app_env(config), capture_output=True, timeout=PROCESS_GUARD
    )
    output = (result.stdout + result.stderr).decode(errors="replace")
    assert result.returncode != 0, output
    [reason] = [line for line in output.splitlines() if "cannot start" in line]
    assert "llm_proxy_mw: cannot start: the [store] does not open (" in reason, output
    assert url in reason, output
    assert "Application startup failed. Exiting." in output
    assert "Traceback" not in output, output
    # Not taken for a lifespan uvicorn does not support, and never listening.
    assert "unsupported" not in output and "Uvicorn running" not in output, output
