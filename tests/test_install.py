"""The light core install, for real: the wheel in a fresh virtual environment, no extras.

It installs from the package index (about 20 seconds), then a script run by that
environment's Python serves an API-key request into the ASGI app (``tests/asgi_helpers.py``
copied beside it: the environment has neither httpx's test client nor this checkout).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
KEY = "install-test-key-0123456789"

#: What only the extras install.
OPTIONAL = ["authlib", "httpx2", "itsdangerous", "joserfc", "redis"]

SCRIPT = """
import asyncio, importlib.metadata, json, sys

import llm_proxy_mw
from asgi_helpers import AsgiDriver, http_scope
from llm_proxy_mw import build_proxy
from llm_proxy_mw.config import ConfigError

CHAT = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()


async def call(app, method, path, secret, body=b""):
    headers = [("content-type", "application/json"), ("authorization", "Bearer " + secret)]
    scope = http_scope(path, method=method, headers=headers)
    async with AsgiDriver(app, scope, disconnect_when_complete=True) as driver:
        await driver.run(body)
    return driver.status


def installed(name):
    try:
        importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


async def main():
    seen = {"package": llm_proxy_mw.__file__}
    seen["installed"] = [name for name in OPTIONAL if installed(name)]
    proxy = build_proxy(CONFIG)
    async with proxy.lifespan():
        seen["chat"] = await call(proxy, "POST", "/v1/chat/completions", KEY, CHAT)
        seen["wrong key"] = await call(proxy, "POST", "/v1/chat/completions", "sk-" + KEY, CHAT)
        seen["metrics"] = await call(proxy, "GET", "/metrics", KEY)
        seen["history"] = await call(proxy, "GET", "/metrics/history", KEY)
        seen["token endpoint"] = await call(proxy, "POST", "/auth/tokens", KEY, b"{}")
    try:
        build_proxy({**CONFIG, "auth": {**CONFIG["auth"], "tokens": {}}})
    except ConfigError as exc:
        seen["with tokens"] = str(exc).splitlines()[-1].strip()
    print(json.dumps(seen))


asyncio.run(main())
"""


def run(*command: str | Path, cwd: Path) -> str:
    done = subprocess.run(
        [str(part) for part in command], cwd=cwd, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.install
def test_the_core_install_serves_api_keys_metrics_and_sqlite_without_any_extra(
    tmp_path: Path,
) -> None:
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", tmp_path, ROOT, cwd=ROOT)
    (wheel,) = tmp_path.glob("llm_proxy_mw-*.whl")
    run(sys.executable, "-m", "venv", tmp_path / "venv", cwd=tmp_path)
    python = tmp_path / "venv" / "bin" / "python"
    run(python, "-m", "pip", "install", "-q", wheel, cwd=tmp_path)

    config: dict[str, Any] = {
        "providers": {"echo": {"kind": "echo"}},
        "auth": {"api_keys": [{"name": "ci", "key": KEY, "admin": True}]},
        "store": {"url": f"sqlite:///{tmp_path}/store.db"},
    }
    shutil.copy(ROOT / "tests" / "asgi_helpers.py", tmp_path / "asgi_helpers.py")
    prelude = f"OPTIONAL = {OPTIONAL!r}\nKEY = {KEY!r}\nCONFIG = {config!r}\n"
    (tmp_path / "serve.py").write_text(prelude + SCRIPT, encoding="utf-8")
    seen = json.loads(run(python, "-E", "-s", "serve.py", cwd=tmp_path).splitlines()[-1])

    assert seen["package"].startswith(str(tmp_path / "venv"))  # the wheel, not this checkout
    assert seen["installed"] == []
    assert (seen["chat"], seen["wrong key"]) == (200, 401)
    assert (seen["metrics"], seen["history"]) == (200, 200)
    assert seen["token endpoint"] == 404
    assert seen["with tokens"].endswith(
        "[auth.tokens] needs the tokens extra: pip install 'llm-proxy-mw[tokens]'"
    )
    assert (tmp_path / "store.db").is_file()
