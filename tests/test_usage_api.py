"""``GET /usage``: through the example app with API keys (an admin sees everyone, another
key only itself), and without ``[auth]`` (everything is ``anonymous``, open to all)."""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from llm_proxy_mw import build_proxy
from llm_proxy_mw.ledger import UsageBucket, UsageKey
from llm_proxy_mw.usage_app import decimal_text, usage_rows
from tests.e2e_helpers import TIMEOUT, serve_example_app

pytestmark = pytest.mark.anyio

ADMIN_KEY = "usage-admin-key-0b7d2e41"
USER_KEY = "usage-user-key-5c93fa10"
CONFIG = f"""
[providers.echo]
kind = "echo"
models = ["*"]

[auth]
api_keys = [
  {{ name = "ops", key = "{ADMIN_KEY}", admin = true }},
  {{ name = "app", key = "{USER_KEY}" }},
]
"""


def store_table(path: Path) -> str:
    return f'\n[store]\nurl = "sqlite:///{path}"\n'


def chat(http: httpx.Client, key: str, model: str, *, stream: bool = False) -> None:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    response = http.post(
        "/llm/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}
    )
    assert response.status_code == 200, response.text


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """The example app with two keys, after ops made one request and app two (one streamed)."""
    directory = tmp_path_factory.mktemp("usage-api")
    config = CONFIG + store_table(directory / "store.db")
    with (
        serve_example_app(config, directory) as app,
        httpx.Client(base_url=app.url, timeout=TIMEOUT) as http,
    ):
        chat(http, ADMIN_KEY, "model-a")
        chat(http, USER_KEY, "model-a")
        chat(http, USER_KEY, "model-b", stream=True)
        yield http


def usage(http: httpx.Client, key: str | None, **params: str) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return http.get("/llm/usage", params=params, headers=headers)


def owners(response: httpx.Response) -> list[tuple[str, str, int]]:
    assert response.status_code == 200, response.text
    return [(r["principal"], r["model"], r["requests"]) for r in response.json()["rows"]]


def test_an_admin_sees_every_principal_and_may_filter(served: httpx.Client) -> None:
    everyone = usage(served, ADMIN_KEY, range="1h")
    assert everyone.json()["range"] == "1h"
    assert owners(everyone) == [
        ("api_key:app", "model-a", 1),
        ("api_key:app", "model-b", 1),
        ("api_key:ops", "model-a", 1),
    ]
    row, streamed = everyone.json()["rows"][:2]
    assert row["provider"] == streamed["provider"] == "echo"
    assert row["input_tokens"] > 0 and row["output_tokens"] > 0
    assert streamed["input_tokens"] > 0 and streamed["output_tokens"] > 0
    assert set(row) >= {"cache_read_tokens", "cache_write_tokens", "reasoning_tokens"}
    assert row["cost_usd"] is None  # no price known for model-a: null, never "0"
    assert row["unpriced_requests"] == 1
    filtered = usage(served, ADMIN_KEY, range="30d", principal="api_key:ops")
    assert owners(filtered) == [("api_key:ops", "model-a", 1)]


def test_another_principal_sees_only_its_own_rows(served: httpx.Client) -> None:
    mine = [("api_key:app", "model-a", 1), ("api_key:app", "model-b", 1)]
    assert owners(usage(served, USER_KEY)) == mine  # range defaults to 24h
    assert owners(usage(served, USER_KEY, range="7d", principal="api_key:app")) == mine
    refused = usage(served, USER_KEY, principal="api_key:ops")
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "permission_denied"


def test_no_credentials_or_a_bad_range_are_refused(served: httpx.Client) -> None:
    assert usage(served, None).status_code == 401
    assert usage(served, "not-a-key-at-all-0000").status_code == 401
    bad = usage(served, ADMIN_KEY, range="2h")
    assert bad.status_code == 400
    assert "1h, 24h, 7d, 30d" in bad.json()["error"]["message"]
    assert served.post("/llm/usage", headers={"authorization": f"Bearer {ADMIN_KEY}"}).is_error


async def test_without_auth_everything_is_anonymous_and_open(tmp_path: Path) -> None:
    config = CONFIG.split("[auth]")[0] + store_table(tmp_path / "store.db")
    proxy = build_proxy(tomllib.loads(config))
    transport = httpx.ASGITransport(app=proxy)
    async with (
        proxy.lifespan(),
        httpx.AsyncClient(transport=transport, base_url="http://proxy") as http,
    ):
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        assert (await http.post("/v1/chat/completions", json=body)).status_code == 200
        found = await http.get("/usage", params={"range": "1h"})
    assert found.status_code == 200
    assert [(r["principal"], r["model"]) for r in found.json()["rows"]] == [("anonymous", "m")]


def test_cost_is_an_exact_decimal_string_and_null_only_when_nothing_was_priced() -> None:
    key = UsageKey(0, "p", "m", "x")
    priced = UsageBucket(key, requests=3, cost_usd=Decimal("0.000002500000"), unpriced=1)
    free = UsageBucket(key, requests=1)
    unpriced = UsageBucket(key, requests=1, unpriced=1)
    costs = [row["cost_usd"] for row in usage_rows([priced, free, unpriced])]
    assert costs == ["0.0000025", "0", None]
    assert decimal_text(Decimal("1E+3")) == "1000"
    assert decimal_text(Decimal("12.3400")) == "12.34"
