"""``HealthzApp``: ``/healthz``, the liveness probe, with each provider's health for admins.

Anyone gets ``{"status": "ok"}``, or 503 ``{"status": "unavailable"}`` when every provider's
circuit is open. Callers the ``AdminGate`` admits also get each provider's kind, models,
circuit, success rate and retry budget. Never 401 or 403: a probe needs no credentials, and
whoever presents wrong ones gets the short answer.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from starlette.types import Receive, Scope, Send

from llm_proxy_mw.admin import AdminGate
from llm_proxy_mw.health import CircuitState, HealthRegistry
from llm_proxy_mw.providers import Provider
from llm_proxy_mw.wire import send_json

__all__ = ["HealthzApp", "health_report", "serving_status"]


def serving_status(providers: Sequence[Provider], health: HealthRegistry | None) -> str:
    """``ok`` while some provider's circuit lets requests through, else ``unavailable``."""
    known = health.providers if health is not None else {}
    for provider in providers:
        state = known.get(provider.name)
        if state is None or state.current_state() is not CircuitState.OPEN:
            return "ok"
    return "unavailable"


def health_report(providers: Sequence[Provider], health: HealthRegistry | None) -> dict[str, Any]:
    """What an admin's ``/healthz`` shows: the status and each provider's health."""
    states = health.snapshot() if health is not None else {}
    return {
        "status": serving_status(providers, health),
        "providers": {
            p.name: {"kind": p.config.kind, "models": p.config.models, **states.get(p.name, {})}
            for p in providers
        },
    }


class HealthzApp:
    """ASGI app serving ``/healthz`` (any method) for ``providers``; ``gate`` decides who sees
    the detail (everyone without one)."""

    def __init__(
        self,
        providers: Sequence[Provider],
        *,
        health: HealthRegistry | None = None,
        gate: AdminGate | None = None,
    ) -> None:
        self.providers = providers
        self.health = health
        self.gate = gate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if self.gate is None or await self.gate.admits(scope):
            report = health_report(self.providers, self.health)
        else:
            report = {"status": serving_status(self.providers, self.health)}
        status = 200 if report["status"] == "ok" else 503
        await send_json(send, status, json.dumps(report).encode())
