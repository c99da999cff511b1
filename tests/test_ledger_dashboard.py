"""The dashboard's spend over time, per model and per principal, from the usage ledger: its
JSON (exact totals, the principals that spent most) and the page in a real browser."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from llm_proxy_mw.auth import Principal
from llm_proxy_mw.dashboard import DashboardApp
from llm_proxy_mw.history import MinuteBucket
from llm_proxy_mw.ledger import UsageBucket, UsageKey, UsageLedger
from llm_proxy_mw.store import SqliteUsageStore
from llm_proxy_mw.usage_app import OTHERS, TOP_PRINCIPALS, spend_payload
from tests.conftest import require_binary
from tests.fakes.clock import FakeClock
from tests.fakes.servers import UvicornServer
from tests.test_dashboard import chromium
from tests.test_ledger import request

pytestmark = pytest.mark.anyio

T0 = 1_700_000_040


class NoHistory:
    async def history(self, since_minute: int, until_minute: int) -> list[MinuteBucket]:
        return []


def spent(minute: int, principal: str, model: str, cost: str, unpriced: int = 0) -> UsageBucket:
    key = UsageKey(minute, principal, model, "p")
    return UsageBucket(key, requests=1, cost_usd=Decimal(cost), unpriced=unpriced)


def test_spend_per_step_per_model_and_per_principal_with_exact_totals() -> None:
    buckets = [
        spent(T0, "alice", "gpt", "0.1"),
        spent(T0, "bob", "gpt", "0.2"),
        spent(T0 + 60, "alice", "claude", "0.000000001", unpriced=2),
        spent(T0 + 120, "alice", "gpt", "0.3"),
    ]
    found = spend_payload(buckets, since=T0, until=T0 + 180, step=60)
    assert found["models"] == {
        "series": {"claude": [0.0, 1e-09, 0.0], "gpt": [0.3, 0.0, 0.3]},
        "totals": {"claude": "0.000000001", "gpt": "0.6"},
    }
    assert found["principals"]["totals"] == {"alice": "0.400000001", "bob": "0.2"}
    assert found["unpriced"] == 2


def test_the_principals_that_spent_least_add_up_in_one_line() -> None:
    buckets = [spent(T0, f"user-{i:02}", "m", f"{i + 1}") for i in range(TOP_PRINCIPALS + 2)]
    totals = spend_payload(buckets, since=T0, until=T0 + 60, step=60)["principals"]["totals"]
    assert len(totals) == TOP_PRINCIPALS + 1
    assert totals[OTHERS] == "3"  # user-00 and user-01: 1 + 2
    assert "user-02" in totals


async def test_the_history_json_carries_spend_when_a_ledger_is_given() -> None:
    ledger = UsageLedger(SqliteUsageStore(":memory:"), clock=FakeClock(T0))
    await ledger.start()
    try:
        ledger.add(request(cost="0.5"))
        app = DashboardApp(NoHistory(), usage=ledger, clock=FakeClock(T0 + 1))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            payload = (await http.get("/metrics/history", params={"range": "1h"})).json()
            plain = DashboardApp(NoHistory(), clock=FakeClock(T0 + 1))
            transport = httpx.ASGITransport(app=plain)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            without = (await http.get("/metrics/history", params={"range": "1h"})).json()
    finally:
        await ledger.stop()
    assert payload["spend"]["principals"]["totals"] == {"api_key:alice": "0.5"}
    assert payload["spend"]["models"]["series"]["gpt-4o"][-1] == 0.5
    assert "spend" not in without


@pytest.mark.e2e
def test_spend_charts_render_in_headless_chromium(tmp_path: Path) -> None:
    require_binary("chromium")
    clock = FakeClock(math.floor(time.time() / 60) * 60 - 1800)
    ledger = UsageLedger(SqliteUsageStore(":memory:"), clock=clock)
    for minutes, principal, model, cost in (
        (0, "billing-team", "gpt-4o", "1.25"),
        (20, "billing-team", "claude-sonnet-4-5", "0.75"),
        (5, None, "gpt-4o", "0.0004"),
    ):
        clock.advance(minutes * 60)
        who = None if principal is None else Principal(name=principal, kind="api_key")
        ledger.add(request(principal=who, model=model, cost=cost))

    @contextlib.asynccontextmanager
    async def lifespan(app: object) -> AsyncIterator[None]:
        await ledger.start()
        yield
        await ledger.stop()

    dashboard = DashboardApp(NoHistory(), usage=ledger)
    app = Starlette(routes=[Mount("/llm", app=dashboard)], lifespan=lifespan)
    with UvicornServer(app) as server:
        dom = chromium(server.url + "/llm/dashboard", tmp_path / "dom", "--dump-dom").stdout
    assert 'id="panel-spend-models" hidden' not in dom
    for name in ("gpt-4o", "claude-sonnet-4-5", "api_key:billing-team", "anonymous"):
        assert f">{name}<" in dom, name
    assert "$2" in dom  # billing-team's total, exact: $2
