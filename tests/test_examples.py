"""The examples, the README and the docs, as a new user meets them.

The example config sets every option and loads; the example apps (Starlette and FastAPI) serve
the proxy under ``/llm`` with its lifespan, behind the host's middleware; and every snippet of
the README and of ``docs/`` marked ``# works against make demo`` runs, unchanged but for the
URL, against the example app under real uvicorn, while every one marked ``# runs as is`` runs
on its own.
"""

from __future__ import annotations

import gc
import importlib.util
import logging
import os
import re
import shutil
import subprocess
import sys
import typing
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from pydantic import BaseModel
from starlette.types import ASGIApp, Receive, Scope, Send

from llm_proxy_mw import build_proxy, load_config
from llm_proxy_mw.config import ConfigError, ProxyConfig
from llm_proxy_mw.gc_tuning import SERVING_THRESHOLD
from tests.fakes.servers import UvicornServer

ROOT = Path(__file__).resolve().parent.parent
#: The README and every page of the documentation site: their snippets run here.
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
EXAMPLE_TOML = ROOT / "examples" / "llm-proxy.toml"

DEMO_URL = "http://127.0.0.1:8000"
DEMO_MARK = "# works against make demo"
STANDALONE_MARK = "# runs as is"

#: What examples/llm-proxy.toml references; ALICE_KEY must be 16+ characters.
EXAMPLE_ENV = {
    "OPENAI_API_KEY": "sk-test-openai",
    "ANTHROPIC_API_KEY": "sk-ant-test",
    "ALICE_KEY": "alice-0123456789abcdef",
    "AZURE_CLIENT_SECRET": "azure-test-secret",
    # A throwaway Ed25519 private JWK, generated for this test only.
    "LLM_PROXY_SIGNING_KEY": '{"crv": "Ed25519", "kty": "OKP",'
    ' "x": "L1jcXqjNNDUW_tmlHmH0o2vrh42WCGQT_YEMtNxLLeI",'
    ' "d": "sKkNjo1p6oEGYV9mwROmr1Nth5q6KY-R_Ky19jhc7uw"}',
}
#: Variables that would send the examples or the snippets to a real provider.
PROVIDER_ENV = (
    "LLM_PROXY_CONFIG",
    "OPENAI_API_KEY",
    "ANTHROPIC_API_KEY",
    "OPENAI_BASE_URL",
    "ANTHROPIC_BASE_URL",
)


# ---- examples/llm-proxy.toml ---------------------------------------------------------------


def test_example_toml_loads_with_its_env_vars() -> None:
    config = load_config(EXAMPLE_TOML, env=EXAMPLE_ENV)

    openai = config.providers["openai"]
    assert openai.api_key is not None
    assert openai.api_key.get_secret_value() == EXAMPLE_ENV["OPENAI_API_KEY"]
    anthropic = config.providers["anthropic"]
    assert anthropic.api_key is not None
    assert anthropic.api_key.get_secret_value() == EXAMPLE_ENV["ANTHROPIC_API_KEY"]
    assert config.auth is not None
    alice = config.auth.api_keys[0].key
    assert alice is not None and alice.get_secret_value() == EXAMPLE_ENV["ALICE_KEY"]
    assert config.providers["echo"].kind == "echo"
    assert config.providers["echo"].models == ["*"]


@pytest.mark.parametrize("missing", sorted(EXAMPLE_ENV))
def test_example_toml_names_each_missing_env_var(missing: str) -> None:
    env = {k: v for k, v in EXAMPLE_ENV.items() if k != missing}
    with pytest.raises(ConfigError, match=missing):
        load_config(EXAMPLE_TOML, env=env)


def _model_classes(annotation: Any, found: set[type[BaseModel]]) -> set[type[BaseModel]]:
    """Every pydantic model class reachable from ``annotation``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        if annotation not in found:
            found.add(annotation)
            for field in annotation.model_fields.values():
                _model_classes(field.annotation, found)
    for arg in typing.get_args(annotation):
        _model_classes(arg, found)
    return found


def _options_set(value: Any, found: dict[type[BaseModel], set[str]]) -> None:
    """Per model class, the union of the fields some instance in ``value`` set explicitly."""
    if isinstance(value, BaseModel):
        found.setdefault(type(value), set()).update(value.model_fields_set)
        for name in type(value).model_fields:
            _options_set(getattr(value, name), found)
    elif isinstance(value, dict):
        for item in value.values():
            _options_set(item, found)
    elif isinstance(value, list):
        for item in value:
            _options_set(item, found)


def test_example_toml_sets_every_option() -> None:
    """A new config option fails here until examples/llm-proxy.toml documents it."""
    found: dict[type[BaseModel], set[str]] = {}
    _options_set(load_config(EXAMPLE_TOML, env=EXAMPLE_ENV), found)

    missing = {
        f"{cls.__name__}.{name}"
        for cls in _model_classes(ProxyConfig, set())
        for name in cls.model_fields
        if name not in found.get(cls, set())
    }
    assert not missing, f"examples/llm-proxy.toml does not set: {sorted(missing)}"


#: The key whose SHA-256 is bob's ``key_sha256`` in examples/llm-proxy.toml.
BOB_KEY = "bob-example-key-not-a-secret"


@pytest.mark.anyio
async def test_example_toml_serves_offline_through_echo_with_its_keys() -> None:
    proxy = build_proxy(load_config(EXAMPLE_TOML, env=EXAMPLE_ENV))
    alice = {"authorization": f"Bearer {EXAMPLE_ENV['ALICE_KEY']}"}
    bob = {"x-api-key": BOB_KEY}
    message = {
        "model": "any-unlisted-model",
        "max_tokens": 32,
        "messages": [{"role": "user", "content": "offline"}],
    }
    async with proxy.lifespan():
        transport = httpx.ASGITransport(app=proxy)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            anonymous = await client.post("/v1/messages", json=message)
            by_alice = await client.post("/v1/messages", json=message, headers=alice)
            by_bob = await client.post("/v1/messages", json=message, headers=bob)
            models = await client.get("/v1/models", headers=alice)
            metrics_for_bob = await client.get("/metrics", headers=bob)
            metrics_for_alice = await client.get("/metrics", headers=alice)

    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["type"] == "authentication_error"
    for response in (by_alice, by_bob):
        assert response.status_code == 200, response.text
        assert response.headers["x-llm-proxy-provider"] == "echo"
        assert response.json()["content"][0]["text"] == "echo: offline"
    listed = {m["id"] for m in models.json()["data"]}
    assert {"gpt-4o-mini", "claude-haiku-4-5", "meta-llama/Llama-3.1-8B-Instruct"} <= listed
    assert metrics_for_bob.status_code == 403  # bob is no admin
    assert metrics_for_alice.status_code == 200
    assert "llm_proxy_requests_total" in metrics_for_alice.text


# ---- examples/app.py -------------------------------------------------------------------------


def test_default_config_is_echo_alone_without_keys() -> None:
    from examples.app import default_config

    assert list(default_config({})["providers"]) == ["echo"]
    assert list(default_config({"OPENAI_API_KEY": "", "ANTHROPIC_API_KEY": ""})["providers"]) == [
        "echo"
    ]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"OPENAI_API_KEY": "sk-o"}, ["openai", "echo"]),
        ({"ANTHROPIC_API_KEY": "sk-a"}, ["anthropic", "echo"]),
        ({"OPENAI_API_KEY": "sk-o", "ANTHROPIC_API_KEY": "sk-a"}, ["openai", "anthropic", "echo"]),
    ],
)
def test_default_config_adds_providers_whose_keys_are_set(
    env: dict[str, str], expected: list[str]
) -> None:
    from examples.app import default_config, make_proxy

    config = default_config(env)
    assert list(config["providers"]) == expected
    for name in ("openai", "anthropic"):
        if name in expected:
            assert config["providers"][name]["kind"] == name
            assert config["providers"][name]["api_key"] == env[f"{name.upper()}_API_KEY"]
    # The echo provider comes last, so the real providers keep their models.
    proxy = make_proxy(env)
    assert [p.name for p in proxy.providers] == expected


def test_make_proxy_honours_llm_proxy_config(tmp_path: Path) -> None:
    from examples.app import make_proxy

    path = tmp_path / "proxy.toml"
    path.write_text('[providers.only-echo]\nkind = "echo"\n', encoding="utf-8")
    proxy = make_proxy({"LLM_PROXY_CONFIG": str(path), "OPENAI_API_KEY": "sk-ignored"})
    assert [p.name for p in proxy.providers] == ["only-echo"]


def test_make_proxy_loads_the_example_toml(monkeypatch: pytest.MonkeyPatch) -> None:
    from examples.app import make_proxy

    # make_proxy expands ${VARS} of the file from os.environ, whatever env it was given.
    for name, value in EXAMPLE_ENV.items():
        monkeypatch.setenv(name, value)
    proxy = make_proxy({"LLM_PROXY_CONFIG": str(EXAMPLE_TOML), **EXAMPLE_ENV})
    expected = ["openai", "anthropic", "vllm-a", "vllm-b", "azure", "echo"]
    assert [p.name for p in proxy.providers] == expected


# ---- the example apps under real uvicorn ---------------------------------------------------


def _load_example(name: str) -> ModuleType:
    """A fresh copy of ``examples.<name>``, so its module-level proxy reads today's env."""
    spec = importlib.util.find_spec(f"examples.{name}")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def demo_server() -> Iterator[UvicornServer]:
    """The example app, as ``make demo`` serves it with no keys set."""
    with pytest.MonkeyPatch.context() as patch:
        for name in PROVIDER_ENV:
            patch.delenv(name, raising=False)
        module = _load_example("app")
    with UvicornServer(module.app) as server:
        yield server


@pytest.mark.parametrize("name", ["app", "fastapi_app"])
def test_example_app_serves_the_proxy_under_llm(
    name: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for var in PROVIDER_ENV:
        monkeypatch.delenv(var, raising=False)
    module = _load_example(name)
    caplog.set_level(logging.WARNING, logger="llm_proxy_mw")

    with UvicornServer(module.app) as server, httpx.Client(base_url=server.url) as client:
        home = client.get("/")
        health = client.get("/llm/healthz")
        chat = client.post(
            "/llm/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi there"}]},
            headers={"x-request-id": "examples-test-1"},
        )
        missing = client.get("/llm/no-such-endpoint")

    assert home.status_code == 200
    assert home.json() == {"app": "host", "llm_proxy": f"{server.url}/llm/v1"}
    assert health.status_code == 200
    assert list(health.json()["providers"]) == ["echo"]
    assert chat.status_code == 200, chat.text
    assert chat.json()["choices"][0]["message"]["content"] == "echo: hi there"
    assert chat.headers["x-request-id"] == "examples-test-1"
    assert chat.headers["x-llm-proxy-provider"] == "echo"
    assert chat.headers["x-llm-proxy-attempts"] == "1"
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    # The host passed proxy.lifespan on, so the proxy never warns that it was forgotten.
    assert not [r for r in caplog.records if "lifespan was not entered" in r.getMessage()]


class PathRecorder:
    """Host middleware, where CORS, request logging or tracing would sit: notes each path."""

    def __init__(self, app: ASGIApp, *, seen: list[str]) -> None:
        self.app = app
        self.seen = seen

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.seen.append(scope["path"])
        await self.app(scope, receive, send)


@pytest.mark.anyio
@pytest.mark.parametrize("name", ["app", "fastapi_app"])
async def test_host_middleware_sees_the_proxied_requests(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in PROVIDER_ENV:
        monkeypatch.delenv(var, raising=False)
    module = _load_example(name)
    seen: list[str] = []
    module.app.add_middleware(PathRecorder, seen=seen)
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "seen?"}]}

    async with module.app.router.lifespan_context(module.app):
        transport = httpx.ASGITransport(app=module.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://host") as client:
            home = await client.get("/")
            proxied = await client.post("/llm/v1/chat/completions", json=chat)

    assert home.status_code == 200
    assert proxied.status_code == 200, proxied.text
    assert proxied.headers["x-llm-proxy-provider"] == "echo"
    assert seen == ["/", "/llm/v1/chat/completions"]


@pytest.mark.anyio
async def test_the_example_app_serves_with_the_collector_tuned(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for var in PROVIDER_ENV:
        monkeypatch.delenv(var, raising=False)
    module = _load_example("app")
    before = gc.get_threshold()

    async with module.app.router.lifespan_context(module.app):
        serving = gc.get_threshold()

    assert serving == (SERVING_THRESHOLD, *before[1:])
    assert gc.get_threshold() == before


# ---- README and docs snippets ---------------------------------------------------------------

_FENCE = re.compile(r"^```(\w*)[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def _doc_blocks(language: str) -> list[tuple[str, str]]:
    """(``file:line``, code) of every fenced block in ``language`` in the README and docs."""
    blocks = []
    for path in DOCUMENTS:
        text = path.read_text(encoding="utf-8")
        for m in _FENCE.finditer(text):
            if m.group(1) == language:
                line = text.count("\n", 0, m.start()) + 1
                blocks.append((f"{path.relative_to(ROOT).as_posix()}:{line}", m.group(2)))
    return blocks


def _marked(language: str, mark: str) -> list[Any]:
    return [
        pytest.param(code, id=where)
        for where, code in _doc_blocks(language)
        if code.startswith(mark + "\n")
    ]


def _snippet_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in PROVIDER_ENV}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env["PYTHONPATH"] = ""
    return env


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        argv, cwd=cwd, env=_snippet_env(), capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, (
        f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    )
    return result


def test_every_python_snippet_in_the_docs_is_marked() -> None:
    """So that none goes untested: each one runs against the demo or on its own."""
    blocks = _doc_blocks("python")
    unmarked = [
        where for where, code in blocks if not code.startswith((DEMO_MARK + "\n", STANDALONE_MARK))
    ]
    assert not unmarked, f"python blocks without a mark, at {unmarked}"
    demo = [code for _, code in blocks if code.startswith(DEMO_MARK)]
    assert len(demo) >= 4
    assert any("openai" in code and "stream=True" in code for code in demo)
    assert any("anthropic" in code and ".stream(" in code for code in demo)


@pytest.mark.e2e
@pytest.mark.parametrize("code", _marked("python", DEMO_MARK))
def test_readme_python_snippet_works_against_the_demo(
    code: str, demo_server: UvicornServer, tmp_path: Path
) -> None:
    assert DEMO_URL in code
    script = tmp_path / "snippet.py"
    script.write_text(code.replace(DEMO_URL, demo_server.url), encoding="utf-8")
    result = _run([sys.executable, str(script)], tmp_path)
    assert "echo:" in result.stdout or "400" in result.stdout


@pytest.mark.e2e
@pytest.mark.parametrize("code", _marked("bash", DEMO_MARK))
def test_readme_curl_snippet_works_against_the_demo(
    code: str, demo_server: UvicornServer, tmp_path: Path
) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    assert DEMO_URL in code
    # --fail-with-body turns an HTTP error into a failing exit status.
    script = code.replace(DEMO_URL, demo_server.url).replace("curl ", "curl --fail-with-body ")
    result = _run(["bash", "-euo", "pipefail", "-c", script], tmp_path)
    assert "echo:" in result.stdout


@pytest.mark.parametrize("code", _marked("python", STANDALONE_MARK))
def test_readme_python_snippet_runs_as_is(code: str, tmp_path: Path) -> None:
    script = tmp_path / "snippet.py"
    script.write_text(code, encoding="utf-8")
    _run([sys.executable, str(script)], tmp_path)
