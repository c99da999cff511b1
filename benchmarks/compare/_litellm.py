"""LiteLLM's proxy as a contender: its own executable, from its own venv, never imported here."""

from __future__ import annotations

import json
import os
from pathlib import Path

from benchmarks.fixtures import CLIENT_KEY, request_body
from benchmarks.overhead import HOST, Contender, post

__all__ = ["LITELLM", "litellm_contender"]

LITELLM = "litellm"
CONFIG_TEMPLATE = Path(__file__).with_name("litellm_config.yaml")


def litellm_contender(executable: Path, workdir: Path, provider_port: int) -> Contender:
    """LiteLLM's proxy in front of the fake provider, one worker, quiet and offline, checking
    the client key as its master key (as llm_proxy_mw checks it as an API key)."""
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
    command = [str(executable), "--config", str(config), "--host", HOST, "--port", "{port}"]
    command += ["--num_workers", "1"]
    return Contender(LITELLM, "", "", env, command=tuple(command), check=check_answers)


def check_answers(port: int, path: str) -> list[str]:
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
