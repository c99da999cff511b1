"""Claude Code and Codex CLI, run non-interactively and offline against a base URL.

``make cli-agents`` installs both from npm into ``.cli-agents/`` (pinned there); a CLI on
``PATH`` is used otherwise. Each runs in a clean environment (none of the test process's
variables: no real key, no proxy) with a home directory of its own, every update check,
telemetry and plugin sync turned off, so that it reaches nothing but the base URL it is given:
recorded with strace, Claude Code then connects to nothing else and resolves no name, and
Codex neither.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

__all__ = ["PROMPT", "Agent", "AgentSession", "claude_code", "codex", "require_cli"]

#: Where ``make cli-agents`` installs the CLIs.
CLI_BIN = Path(__file__).resolve().parents[2] / ".cli-agents" / "node_modules" / ".bin"
#: A whole session (process start to exit) is bounded by this (seconds).
SESSION_TIMEOUT = 120.0
PROMPT = "Read note1.txt, note2.txt and note3.txt, one at a time, then say done."
#: The environment both start from: anything that escaped to another host than loopback
#: would meet a proxy where nothing listens (the discard port), and fail at once.
_BASE_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HTTPS_PROXY": "http://127.0.0.1:9",
    "HTTP_PROXY": "http://127.0.0.1:9",
    "NO_PROXY": "127.0.0.1,localhost",
}

#: What keeps Codex offline: no update check, analytics, OpenTelemetry export, plugin sync
#: (a git clone from GitHub, then its API), apps or tool suggestions; no tool a provider of
#: another kind cannot take (the built-in web search, the sub-agent tool namespace); and no
#: retries of its own, so that each model request is seen once.
_CODEX_CONFIG = """\
model = "{model}"
model_provider = "proxy"
check_for_update_on_startup = false
web_search = "disabled"

[analytics]
enabled = false

[otel]
exporter = "none"
metrics_exporter = "none"
trace_exporter = "none"

[features]
plugins = false
remote_plugin = false
apps = false
tool_suggest = false
image_generation = false
goals = false

[agents]
enabled = false

[model_providers.proxy]
name = "llm_proxy_mw"
base_url = "{base_url}"
env_key = "PROXY_API_KEY"
wire_api = "responses"
request_max_retries = 0
stream_max_retries = 0
"""


def require_cli(name: str) -> str:
    """The CLI's executable; skip locally when it is missing, fail in CI."""
    installed = CLI_BIN / name
    path = str(installed) if installed.exists() else shutil.which(name)
    if path is None or shutil.which("node") is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} (and node) are required in CI: run `make cli-agents`")
        pytest.skip(f"{name} is not installed (`make cli-agents` installs it)")
    return path


@dataclass(frozen=True)
class Agent:
    """How to run one session of a CLI agent, and what it printed."""

    argv: list[str]
    env: dict[str, str]

    def run(self, cwd: Path) -> AgentSession:
        """Run the session to its end, or fail the test once ``SESSION_TIMEOUT`` passed."""
        process = subprocess.Popen(
            self.argv,
            cwd=cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group: a timeout ends the tools it ran
        )
        try:
            stdout, stderr = process.communicate(timeout=SESSION_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
            pytest.fail(f"{self.argv[0]} ran past {SESSION_TIMEOUT} s\n{stderr[-2000:]}")
        return AgentSession(process.returncode, stdout, stderr)


@dataclass(frozen=True)
class AgentSession:
    returncode: int
    stdout: str
    stderr: str

    def tail(self) -> str:
        """The end of what it printed, for a failure's message."""
        return f"{self.stdout[-2000:]}\n{self.stderr[-2000:]}"

    def json_lines(self) -> list[Any]:
        return [json.loads(line) for line in self.stdout.splitlines() if line.startswith("{")]


def claude_code(executable: str, *, base_url: str, api_key: str, model: str, home: Path) -> Agent:
    """``claude -p`` with the file-reading tool allowed, its background model the same, and
    no retries of its own (each model request is seen once). Its non-streaming fallback
    (a stream that fails is asked again without ``stream``) stays on: the test is that it is
    never taken."""
    env = {
        **_BASE_ENV,
        "HOME": str(home),
        "ANTHROPIC_BASE_URL": base_url,
        "ANTHROPIC_API_KEY": api_key,
        "ANTHROPIC_DEFAULT_HAIKU_MODEL": model,
        "CLAUDE_CODE_MAX_RETRIES": "0",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_ERROR_REPORTING": "1",
    }
    argv = [executable, "-p", PROMPT, "--output-format", "json", "--model", model]
    return Agent([*argv, "--allowedTools", "Read", "--max-turns", "10"], env)


def codex(executable: str, *, base_url: str, api_key: str, model: str, home: Path) -> Agent:
    """``codex exec`` with a custom Responses provider at ``base_url``, events as JSON lines."""
    codex_home = home / ".codex"
    codex_home.mkdir(parents=True, exist_ok=True)
    config = _CODEX_CONFIG.format(model=model, base_url=base_url)
    (codex_home / "config.toml").write_text(config, encoding="utf-8")
    env = {**_BASE_ENV, "HOME": str(home), "CODEX_HOME": str(codex_home)}
    env["PROXY_API_KEY"] = api_key
    return Agent([executable, "exec", "--skip-git-repo-check", "--json", PROMPT], env)
