"""Optional dependencies load only when the config needs them, and work when it does.

The import checks run in a fresh interpreter each (this one imported everything long ago):
a script builds the proxy, enters its lifespan, drives requests straight into the ASGI app
(``tests.asgi_helpers``, no httpx), and prints what it saw and which modules are loaded.
The on-demand token service is also checked in process, where coverage sees it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import httpx
import pytest

from llm_proxy_mw import build_proxy
from llm_proxy_mw.auth._tokens import TokenService

ROOT = Path(__file__).resolve().parent.parent
KEY = "lazy-imports-key-0123456789"

#: What a proxy on API keys and SQLite never needs: the JOSE and crypto libraries (proxy
#: tokens, external JWTs), Authlib, httpx2 and itsdangerous (OAuth login), httpx and its
#: adapter, the redis client.
OPTIONAL = [
    "authlib",
    "cryptography",
    "httpx",
    "httpx2",
    "itsdangerous",
    "joserfc",
    "llm_proxy_mw.auth._signing_key",
    "llm_proxy_mw.transports._httpx",
    "redis",
]

PRELUDE = """
import asyncio, json, sys

from tests.asgi_helpers import AsgiDriver, http_scope

from llm_proxy_mw import build_proxy

CHAT = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}).encode()


async def call(app, method, path, secret=None, body=None, content_type="application/json"):
    headers = [("content-type", content_type)]
    if secret is not None:
        headers.append(("authorization", "Bearer " + secret))
    scope = http_scope(path, method=method, headers=headers)
    async with AsgiDriver(app, scope, disconnect_when_complete=True) as driver:
        await driver.run(body or b"")
    return driver.status, driver.body


def loaded():
    names = {name for name in OPTIONAL if name in sys.modules}
    if "genai_prices" in sys.modules:
        names.discard("httpx2")  # the price table's own import (its updater, never started)
    return sorted(names)


def config(auth=None, url=None):
    return {
        "providers": {
            "openai": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1", "models": ["gpt"]},
            "echo": {"kind": "echo", "models": ["*"]},
        },
        **({"auth": auth} if auth is not None else {}),
        "store": {"url": url or STORE},
    }


async def main():
    seen = {}
{body}
    print(json.dumps(seen))


asyncio.run(main())
"""


def run_isolated(body: str, tmp_path: Path, model: str = "any-model") -> dict[str, Any]:
    """Run ``body`` (the inside of ``async def main``, filling ``seen``) in a new interpreter."""
    script = (
        f"OPTIONAL = {OPTIONAL!r}\nKEY = {KEY!r}\nMODEL = {model!r}\n"
        f"STORE = {f'sqlite:///{tmp_path}/store.db'!r}\n"
        + PRELUDE.replace("{body}", textwrap.indent(textwrap.dedent(body), "    "))
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    seen: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return seen


def test_api_keys_and_sqlite_load_no_optional_dependency(tmp_path: Path) -> None:
    seen = run_isolated(
        """
        seen["imported"] = loaded()
        proxy = build_proxy(config({"api_keys": [{"name": "ci", "key": KEY}]}))
        async with proxy.lifespan():
            seen["chat"] = (await call(proxy, "POST", "/v1/chat/completions", KEY, CHAT))[0]
            seen["models"] = (await call(proxy, "GET", "/v1/models", KEY))[0]
            seen["wrong key"] = (await call(proxy, "GET", "/v1/models", "sk-wrong-key"))[0]
            seen["no key"] = (await call(proxy, "GET", "/v1/models"))[0]
            seen["served"] = loaded()
        """,
        tmp_path,
    )
    assert seen["imported"] == []
    assert (seen["chat"], seen["models"], seen["wrong key"], seen["no key"]) == (200, 200, 401, 401)
    assert seen["served"] == []


def test_configured_tokens_load_at_start_and_work(tmp_path: Path) -> None:
    seen = run_isolated(
        """
        proxy = build_proxy(config({"api_keys": [{"name": "ci", "key": KEY}], "tokens": {}}))
        async with proxy.lifespan():
            seen["started"] = loaded()
            minted = await call(proxy, "POST", "/auth/tokens", KEY, b'{"name": "ci"}')
            token = json.loads(minted[1])["access_token"]
            seen["mint"] = minted[0]
            seen["chat"] = (await call(proxy, "POST", "/v1/chat/completions", token, CHAT))[0]
        """,
        tmp_path,
    )
    assert seen["started"] == ["cryptography", "joserfc", "llm_proxy_mw.auth._signing_key"]
    assert (seen["mint"], seen["chat"]) == (201, 200)


def test_unconfigured_tokens_load_on_first_use_and_work(tmp_path: Path) -> None:
    # A token minted by another replica sharing the store: its first sight loads the key.
    minted = run_isolated(
        """
        proxy = build_proxy(config({"api_keys": [{"name": "ci", "key": KEY}], "tokens": {}}))
        async with proxy.lifespan():
            status, body = await call(proxy, "POST", "/auth/tokens", KEY, b'{"name": "ci"}')
            seen["token"] = json.loads(body)["access_token"]
        """,
        tmp_path,
    )
    seen = run_isolated(
        f"""
        proxy = build_proxy(config({{"api_keys": [{{"name": "ci", "key": KEY}}]}}))
        async with proxy.lifespan():
            seen["key"] = (await call(proxy, "POST", "/v1/chat/completions", KEY, CHAT))[0]
            seen["before"] = loaded()
            token = {minted["token"]!r}
            seen["token"] = (await call(proxy, "POST", "/v1/chat/completions", token, CHAT))[0]
            seen["after"] = loaded()
            minted = await call(proxy, "POST", "/auth/tokens", KEY, b'{{"name": "ci"}}')
            seen["mint"] = minted[0]
        """,
        tmp_path,
    )
    assert (seen["key"], seen["token"], seen["mint"]) == (200, 200, 201)
    assert seen["before"] == []
    assert seen["after"] == ["cryptography", "joserfc", "llm_proxy_mw.auth._signing_key"]


def test_the_httpx_adapter_loads_when_asked_for(tmp_path: Path) -> None:
    seen = run_isolated(
        """
        import llm_proxy_mw.transports

        seen["imported"] = loaded()
        from llm_proxy_mw import HttpxTransport
        from llm_proxy_mw.transports import HttpxTransport as same
        import httpx

        answer = {"id": "c", "object": "chat.completion", "choices": []}
        mock = httpx.MockTransport(lambda request: httpx.Response(200, json=answer))
        proxy = build_proxy(config(), transports={"openai": HttpxTransport(mock)})
        async with proxy.lifespan():
            status, body = await call(proxy, "POST", "/v1/chat/completions", None, CHAT)
        seen["same"] = HttpxTransport is same
        seen["chat"] = [status, json.loads(body)]
        seen["served"] = loaded()
        """,
        tmp_path,
        model="gpt",
    )
    assert seen["imported"] == []
    assert seen["same"] is True
    assert seen["chat"] == [200, {"id": "c", "object": "chat.completion", "choices": []}]
    assert "llm_proxy_mw.transports._httpx" in seen["served"]
    assert "joserfc" not in seen["served"] and "redis" not in seen["served"]


def test_a_redis_store_loads_the_redis_client(tmp_path: Path) -> None:
    seen = run_isolated(
        """
        build_proxy(config(url="redis://127.0.0.1:9/0"))
        seen["built"] = loaded()
        """,
        tmp_path,
    )
    assert "redis" in seen["built"]  # which imports cryptography itself
    assert not {"authlib", "httpx", "joserfc"} & set(seen["built"])


# -- the on-demand token service, in process ----------------------------------------------


def _config(tmp_path: Path, **auth: Any) -> dict[str, Any]:
    return {
        "providers": {"echo": {"kind": "echo"}},
        "auth": {"api_keys": [{"name": "ci", "key": KEY}], **auth},
        "store": {"url": f"sqlite:///{tmp_path}/store.db"},
    }


def _tokens(proxy: Any) -> TokenService:
    assert proxy.auth_setup is not None
    return next(x for x in proxy.auth_setup.lifecycles if isinstance(x, TokenService))


CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.anyio
async def test_on_demand_tokens_start_with_their_first_use(tmp_path: Path) -> None:
    issuer = build_proxy(_config(tmp_path, tokens={}))
    replica = build_proxy(_config(tmp_path))
    assert not _tokens(issuer).on_demand and _tokens(replica).on_demand
    key = {"authorization": f"Bearer {KEY}"}
    async with (
        issuer.lifespan(),
        replica.lifespan(),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=issuer), base_url="http://h") as a,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=replica), base_url="http://h") as b,
    ):
        service = _tokens(replica)
        assert (await b.post("/v1/chat/completions", json=CHAT, headers=key)).status_code == 200
        assert service.key is None and service.authenticator.keys == {}
        forged = {"authorization": "Bearer eyJhbGciOiJFZDI1NTE5In0.e30.c2ln"}
        assert (await b.post("/v1/chat/completions", json=CHAT, headers=forged)).status_code == 401
        assert service.key is not None  # loaded by the token-shaped secret, then refused
        minted = (await a.post("/auth/tokens", json={"name": "ci"}, headers=key)).json()
        token = {"authorization": f"Bearer {minted['access_token']}"}
        assert (await b.post("/v1/chat/completions", json=CHAT, headers=token)).status_code == 200
    # Once used, the service starts with the next lifespan like a configured one.
    async with replica.lifespan():
        assert service.key is not None
