"""``AdminGate`` and the operator endpoints composed by hand, as a host without
``build_proxy`` would: ``/healthz`` for everyone (its detail for admins), ``/metrics`` for
admins, both resolving the caller through one ``AuthenticatorChain``.

``test_metrics.py`` and ``test_builder.py`` check the same rules through ``build_proxy``.
"""

from __future__ import annotations

import httpx
import pytest
from prometheus_client import CollectorRegistry
from starlette.types import ASGIApp, Scope

from llm_proxy_mw.admin import AdminGate
from llm_proxy_mw.auth import AuthenticatorChain, AuthMiddleware, Principal
from llm_proxy_mw.config import parse_config
from llm_proxy_mw.context import RequestContextMiddleware
from llm_proxy_mw.healthz import HealthzApp
from llm_proxy_mw.metrics import ProxyMetrics
from llm_proxy_mw.metrics_app import MetricsApp
from llm_proxy_mw.providers import Provider
from llm_proxy_mw.proxy import Endpoints

pytestmark = pytest.mark.anyio

ADMIN = {"authorization": "Bearer admin-key-9c1f"}
USER = {"x-api-key": "user-key-41d2"}


class Keys:
    """Two fixed keys, an admin's and a user's; counts how often it is asked."""

    def __init__(self) -> None:
        self.asked = 0
        self._principals = {
            "admin-key-9c1f": Principal(name="ops", kind="api_key", admin=True),
            "user-key-41d2": Principal(name="app", kind="api_key"),
        }

    async def authenticate(self, scope: Scope, secret: str | None) -> Principal | None:
        self.asked += 1
        return self._principals.get(secret or "")


def operator_endpoints(gate: AdminGate, *, authenticated_by: Keys | None = None) -> ASGIApp:
    """``/healthz`` and ``/metrics`` of one echo provider, behind ``AuthMiddleware`` when
    ``authenticated_by`` is given."""
    config = parse_config({"providers": {"echo": {"kind": "echo", "models": ["m"]}}})
    providers = [Provider.from_config("echo", config.providers["echo"])]
    routes: dict[str, ASGIApp] = {
        "/healthz": HealthzApp(providers, gate=gate),
        "/metrics": gate.guard(MetricsApp(ProxyMetrics(CollectorRegistry(), models=["m"]))),
    }
    app: ASGIApp = Endpoints(routes)
    if authenticated_by is not None:
        app = AuthMiddleware(app, authenticators=[authenticated_by])
    return RequestContextMiddleware(app)


def client_for(app: ASGIApp) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://h")


async def test_an_admin_sees_everything_others_only_liveness() -> None:
    keys = Keys()
    app = operator_endpoints(AdminGate(AuthenticatorChain([keys])))
    async with client_for(app) as client:
        anonymous = await client.get("/metrics")
        user = await client.get("/metrics", headers=USER)
        admin = await client.get("/metrics", headers=ADMIN)
        user_health = await client.get("/healthz", headers=USER)
        admin_health = await client.get("/healthz", headers=ADMIN)
        wrong_health = await client.get("/healthz", headers={"x-api-key": "wrong"})
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"] == 'Bearer realm="llm-proxy"'
    assert user.status_code == 403
    assert user.json()["error"]["code"] == "permission_denied"
    assert admin.status_code == 200
    assert admin.headers["content-type"].startswith("text/plain")
    assert "llm_proxy_requests_total" in admin.text
    assert user_health.json() == wrong_health.json() == {"status": "ok"}
    assert admin_health.json()["providers"]["echo"]["models"] == ["m"]


@pytest.mark.parametrize("public", [True, False], ids=["public", "no-auth"])
async def test_public_or_without_authenticators_the_gate_admits_everyone(public: bool) -> None:
    keys = Keys()
    gate = AdminGate(AuthenticatorChain([keys]) if public else None, public=public)
    async with client_for(operator_endpoints(gate)) as client:
        metrics = await client.get("/metrics")
        health = await client.get("/healthz")
    assert metrics.status_code == 200
    assert "providers" in health.json()
    assert keys.asked == 0


async def test_a_caller_resolved_in_front_is_not_resolved_again() -> None:
    keys = Keys()
    app = operator_endpoints(AdminGate(AuthenticatorChain([keys])), authenticated_by=keys)
    async with client_for(app) as client:
        response = await client.get("/metrics", headers=ADMIN)
    assert response.status_code == 200
    assert keys.asked == 1


async def test_an_unknown_path_is_404() -> None:
    async with client_for(operator_endpoints(AdminGate(None))) as client:
        response = await client.get("/nope")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
