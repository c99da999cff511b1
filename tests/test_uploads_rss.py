"""A 200 MB upload through the example app raises the proxy's peak memory by less than 64 MB.

The app runs in a process of its own (``python -m examples.serve``), so its peak resident
set (``VmHWM`` in ``/proc/<pid>/status``) is the proxy's alone; the ``openai`` SDK uploads a
file from disk with ``client.files.create`` to an ``UploadSink`` provider that counts the
bytes and keeps none.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.fakes.processes import stop_process
from tests.fakes.servers import UvicornServer, free_port
from tests.fakes.upload_sink import UploadSink

REPO = Path(__file__).resolve().parent.parent
MB = 1000 * 1000
UPLOAD = 200 * MB
#: What the upload may add to the proxy's peak memory.
BUDGET = 64 * 1024 * 1024
#: Bounds the wait for the app to start.
START_GUARD = 20.0

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/status").exists(), reason="VmHWM is read from Linux's /proc"
)


def peak_rss(pid: int) -> int:
    """The process's peak resident set, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM line")


@contextlib.contextmanager
def example_app(config: Path, log: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """The example app under uvicorn in its own process, once it answers."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "ANTHROPIC_"))}
    command = [sys.executable, "-m", "examples.serve", "examples.app:app"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    with log.open("ab") as sink:
        process = subprocess.Popen(
            command, cwd=REPO, env=env | {"LLM_PROXY_CONFIG": str(config)}, stdout=sink, stderr=sink
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_GUARD
        with httpx.Client(timeout=1.0, trust_env=False) as client:
            while True:
                assert process.poll() is None, log.read_text()
                with contextlib.suppress(httpx.TransportError):
                    if client.get(f"{url}/llm/healthz").status_code == 200:
                        break
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
        yield process, url
    finally:
        stop_process(process)


def test_a_200_mb_files_create_raises_the_proxys_peak_rss_by_less_than_64_mb(
    tmp_path: Path,
) -> None:
    big = tmp_path / "big.jsonl"
    with big.open("wb") as out:
        line = b'{"custom_id": "x"}\n' * 1000
        for _ in range(UPLOAD // len(line) + 1):
            out.write(line)
    sink = UploadSink("openai", keep_bytes=0)
    with UvicornServer(sink, lifespan="off", http="httptools") as provider:
        config = tmp_path / "llm-proxy.toml"
        config.write_text(
            "[providers.openai]\n"
            'kind = "openai"\n'
            f'base_url = "{provider.url}/v1"\n'
            'api_key = "sk-rss"\n'
            'models = ["*"]\n\n'
            "[store]\n"
            f'url = "sqlite:///{tmp_path / "store.db"}"\n',
            encoding="utf-8",
        )
        with example_app(config, tmp_path / "app.log") as (process, url):
            client = openai.OpenAI(base_url=f"{url}/llm/v1", api_key="k", max_retries=0)
            with client:
                client.files.create(file=("warm.jsonl", b"{}\n"), purpose="batch")
                before = peak_rss(process.pid)
                with big.open("rb") as file:
                    created = client.files.create(file=file, purpose="batch")
                after = peak_rss(process.pid)
    assert created.bytes > big.stat().st_size  # the whole form reached the provider
    assert sink.requests[-1].complete
    assert after - before < BUDGET, f"peak RSS grew by {(after - before) / 2**20:.1f} MiB"
