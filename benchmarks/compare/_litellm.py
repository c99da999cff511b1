"""LiteLLM's proxy as a contender: its own executable, from its own venv, never imported here."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from benchmarks._procs import rss_mb
from benchmarks.e2e import HOST, Contender, Outcome, Run, Served, free_port, post, wait_ready
from benchmarks.fixtures import CLIENT_KEY, request_body

__all__ = ["LITELLM", "CompareRun", "litellm_contender"]

LITELLM = "litellm"
CONFIG_TEMPLATE = Path(__file__).with_name("litellm_config.yaml")
#: LiteLLM takes 10-15 s to start on the 2-core machine.
STARTUP_TIMEOUT = 180.0


def litellm_contender(executable: Path, workdir: Path, provider_port: int) -> Contender:
    """LiteLLM's proxy in front of the fake provider, checking the client key as its master
    key (as llm_proxy_mw checks it as an API key), quiet and offline."""
    if not os.access(executable, os.X_OK):
        raise SystemExit(
            f"{executable} is not an executable: `make bench-compare LITELLM=1` installs "
            "LiteLLM into .bench/litellm-venv"
        )
    config = workdir / "litellm_config.yaml"
    upstream = f"http://{HOST}:{provider_port}"
    config.write_text(CONFIG_TEMPLATE.read_text().replace("{UPSTREAM}", upstream))
    env = dict(
        os.environ,
        LITELLM_MASTER_KEY=CLIENT_KEY,
        LITELLM_LOG="ERROR",
        LITELLM_LOCAL_MODEL_COST_MAP="True",
        LITELLM_TELEMETRY="False",
    )
    return Contender(LITELLM, str(executable), "", env)


class CompareRun(Run):
    """The end-to-end run, able to serve LiteLLM too: a contender keyed ``litellm`` names
    LiteLLM's executable in place of an ASGI app for uvicorn."""

    def start(self, contender: Contender, outcome: Outcome) -> Served | None:
        if contender.key != LITELLM:
            return super().start(contender, outcome)
        port = free_port()
        argv = [contender.app, "--config", str(self.workdir / "litellm_config.yaml")]
        argv += ["--host", HOST, "--port", str(port), "--num_workers", "1"]
        started = time.perf_counter()
        proc = self.procs.start(
            LITELLM, argv, cpu=self.proxy_cpu, env=contender.env, cwd=self.workdir
        )
        path = contender.prefix + "/v1/chat/completions"
        if not wait_ready(proc, port, path, timeout=STARTUP_TIMEOUT):
            tail = self.procs.log_tail(LITELLM)
            outcome.problems.append(f"did not become ready:\n```\n{tail}\n```")
            self.procs.stop(proc)
            return None
        outcome.startup_s = time.perf_counter() - started
        outcome.problems += _check_answers(port, path)
        outcome.idle_rss_mb = rss_mb(proc.pid)
        return Served(LITELLM, proc, port, path, outcome)


def _check_answers(port: int, path: str) -> list[str]:
    """LiteLLM re-serialises what it forwards, so its answers cannot match the provider's byte
    for byte: a chat completion with usage, and a stream that ends with ``[DONE]``."""
    problems = []
    status, body = post(port, path, request_body())
    try:
        answer = json.loads(body)
        complete = bool(answer["choices"][0]["message"]["content"]) and "usage" in answer
    except (ValueError, KeyError, IndexError, TypeError):
        complete = False
    if status != 200 or not complete:
        problems.append(f"JSON answer: status {status}, {body[:200]!r}")
    status, body = post(port, path, request_body(stream=True))
    if status != 200 or not body.rstrip().endswith(b"data: [DONE]"):
        problems.append(f"SSE answer: status {status}, ends with {body[-200:]!r}")
    return problems
