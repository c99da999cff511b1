"""The built-in metrics dashboard: one offline HTML page and the JSON it draws from.

``DashboardApp`` answers two routes under the mount: ``GET /dashboard`` (the page) and
``GET /metrics/history?range=1h|24h|7d`` (the JSON). Both are read from the persisted
per-minute history, so they show every worker's and every replica's traffic when the store is
shared, and survive restarts. The page has no external assets: its CSS and script are inline
and pinned by hash in the content security policy, the charts are inline SVG, names enter the
DOM only as text, and it fetches ``./metrics/history`` relative to its own URL, so it works
under any mount path. Access control is the caller's job: the proxy serves it behind its
``AdminGate``.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.resources
import json
import math
import re
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol
from urllib.parse import parse_qs

from starlette.types import Receive, Scope, Send

from llm_proxy_mw.context import get_context
from llm_proxy_mw.errors import InvalidRequestError, NotFoundError
from llm_proxy_mw.health import HealthRegistry
from llm_proxy_mw.history import DURATION_BUCKETS, MinuteBucket
from llm_proxy_mw.ledger import UsageLedger
from llm_proxy_mw.usage_app import spend_payload
from llm_proxy_mw.wire import WireFormat, error_body

__all__ = ["RANGES", "DashboardApp", "HistorySource", "history_payload", "quantile"]

#: Range name -> (span, step) in seconds: about a hundred points per chart at most.
RANGES: dict[str, tuple[int, int]] = {
    "1h": (3600, 60),
    "24h": (86400, 900),
    "7d": (7 * 86400, 7200),
}

#: The provider and model label of requests that never reached a provider (auth rejections,
#: bad requests): counted in the totals, but not a provider or model that served traffic.
UNROUTED = "none"


class HistorySource(Protocol):
    """Where the buckets come from: the metrics ``HistoryRecorder`` (flushed plus pending)."""

    async def history(self, since_minute: int, until_minute: int) -> list[MinuteBucket]: ...


def quantile(q: float, counts: Sequence[int]) -> float | None:
    """The ``q`` quantile of a histogram given as per-slot (not cumulative) counts.

    The same estimate as Prometheus' ``histogram_quantile``, so the dashboard and Grafana
    agree: find the slot holding the rank ``q * total`` and interpolate linearly between its
    lower and upper bound (the first slot starts at 0), i.e. assume the requests of a slot are
    spread evenly across it. A rank in the +Inf slot returns the highest finite bound.
    ``None`` when the histogram is empty.
    """
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    cumulative = 0
    lower = 0.0
    for upper, count in zip(DURATION_BUCKETS, counts, strict=False):
        if count and cumulative + count >= rank:
            return lower + (upper - lower) * (rank - cumulative) / count
        cumulative += count
        lower = upper
    return DURATION_BUCKETS[-1]


def _percentiles(counts: Sequence[int]) -> dict[str, float | None]:
    return {name: _round(quantile(q, counts), 6) for name, q in (("p50", 0.5), ("p95", 0.95))}


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _ratio(ok: int, total: int) -> float | None:
    return round(ok / total, 4) if total else None


_MODEL_TOTALS = ("requests", "prompt_tokens", "completion_tokens")


def _add(into: list[int], counts: Sequence[int]) -> None:
    for index, count in enumerate(counts):
        into[index] += count


def history_payload(
    buckets: Sequence[MinuteBucket],
    *,
    since_minute: int,
    until_minute: int,
    health: dict[str, Any] | None,
    step_seconds: int = 60,
) -> dict[str, Any]:
    """The dashboard's JSON: the buckets of ``[since_minute, until_minute)`` in steps.

    Buckets are summed into steps of ``step_seconds`` starting at ``since_minute`` (the last
    step may be shorter). Rates are per minute of the step, so ranges compare. Per step:
    requests and errors per minute (an error is any status outside 2xx/3xx), p50/p95 latency
    per model (from the summed histogram slots, see ``quantile``; every status counts, like
    the Prometheus histogram), success rate per provider (2xx/3xx over all; ``None`` without
    traffic) and prompt/completion tokens per minute. ``circuits`` is the health snapshot.
    """
    if step_seconds <= 0 or step_seconds % 60:
        raise ValueError("step_seconds must be a positive multiple of 60")
    times = list(range(since_minute, until_minute, step_seconds))
    steps = len(times)
    slots = len(DURATION_BUCKETS) + 1
    requests, errors = [0] * steps, [0] * steps
    prompt, completion = [0] * steps, [0] * steps
    model_slots: dict[str, list[list[int]]] = {}
    model_totals: dict[str, dict[str, int]] = {}
    provider_ok: dict[str, list[int]] = {}
    provider_all: dict[str, list[int]] = {}
    all_slots = [0] * slots
    for bucket in buckets:
        key = bucket.key
        if not since_minute <= key.minute < until_minute or not bucket.count:
            continue
        i = (key.minute - since_minute) // step_seconds
        ok = bucket.count if 200 <= key.status < 400 else 0
        requests[i] += bucket.count
        errors[i] += bucket.count - ok
        prompt[i] += bucket.prompt_tokens
        completion[i] += bucket.completion_tokens
        _add(all_slots, bucket.duration_counts)
        if key.model != UNROUTED:
            per_step = model_slots.setdefault(key.model, [[0] * slots for _ in times])
            _add(per_step[i], bucket.duration_counts)
            totals = model_totals.setdefault(key.model, dict.fromkeys(_MODEL_TOTALS, 0))
            totals["requests"] += bucket.count
            totals["prompt_tokens"] += bucket.prompt_tokens
            totals["completion_tokens"] += bucket.completion_tokens
        if key.provider != UNROUTED:
            provider_ok.setdefault(key.provider, [0] * steps)[i] += ok
            provider_all.setdefault(key.provider, [0] * steps)[i] += bucket.count
    minutes = [min(step_seconds, until_minute - t) / 60 for t in times]

    def per_minute(counts: list[int]) -> list[float]:
        return [round(n / m, 3) for n, m in zip(counts, minutes, strict=True)]

    models = sorted(model_slots)
    providers = sorted(provider_all)
    latency = {
        model: {
            name: [p[name] for p in (_percentiles(c) for c in model_slots[model])]
            for name in ("p50", "p95")
        }
        for model in models
    }
    total_requests, total_errors = sum(requests), sum(errors)
    return {
        "since": since_minute,
        "until": until_minute,
        "step": step_seconds,
        "times": times,
        "providers": providers,
        "models": models,
        "requests_per_minute": per_minute(requests),
        "errors_per_minute": per_minute(errors),
        "latency": latency,
        "success_rate": {
            p: [_ratio(*pair) for pair in zip(provider_ok[p], provider_all[p], strict=True)]
            for p in providers
        },
        "tokens_per_minute": {"prompt": per_minute(prompt), "completion": per_minute(completion)},
        "totals": {
            "requests": total_requests,
            "errors": total_errors,
            "success_rate": _ratio(total_requests - total_errors, total_requests),
            "prompt_tokens": sum(prompt),
            "completion_tokens": sum(completion),
            **_percentiles(all_slots),
            "providers": {
                p: {
                    "requests": sum(provider_all[p]),
                    "success_rate": _ratio(sum(provider_ok[p]), sum(provider_all[p])),
                }
                for p in providers
            },
            "models": {
                m: {
                    **model_totals[m],
                    **_percentiles([sum(s) for s in zip(*model_slots[m], strict=True)]),
                }
                for m in models
            },
        },
        "circuits": {name: dict(state) for name, state in sorted((health or {}).items())},
    }


def _load_page() -> tuple[bytes, bytes]:
    """The page, and its content security policy with the inline script and style hashed."""
    page = importlib.resources.files("llm_proxy_mw").joinpath("_dashboard.html").read_text("utf-8")

    def digest(tag: str) -> str:
        match = re.search(rf"<{tag}>(.*?)</{tag}>", page, re.DOTALL)
        if match is None:  # pragma: no cover - the template ships with the package
            raise RuntimeError(f"dashboard template has no <{tag}>")
        hashed = hashlib.sha256(match.group(1).encode("utf-8")).digest()
        return f"'sha256-{base64.b64encode(hashed).decode()}'"

    policy = (
        f"default-src 'none'; script-src {digest('script')}; style-src {digest('style')}; "
        "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )
    return page.encode("utf-8"), policy.encode()


_PAGE, CONTENT_SECURITY_POLICY = _load_page()

_COMMON = [
    (b"x-content-type-options", b"nosniff"),
    (b"cache-control", b"no-store"),
    (b"referrer-policy", b"no-referrer"),
]
_JSON = [(b"content-type", b"application/json"), *_COMMON]
_HTML = [
    (b"content-type", b"text/html; charset=utf-8"),
    (b"content-security-policy", CONTENT_SECURITY_POLICY),
    (b"x-frame-options", b"DENY"),
    *_COMMON,
]


async def _respond(
    send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes, head: bool
) -> None:
    """A complete response; HEAD gets the headers (with GET's length) and no body."""
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})


class DashboardApp:
    """ASGI app serving ``/dashboard`` and ``/metrics/history`` (see ``paths``).

    ``history_source.history(since, until)`` supplies the buckets; ``health`` (optional)
    the current circuit states; ``usage`` (optional) the spend (``spend_payload``);
    ``clock`` (epoch seconds) is injectable for tests.
    """

    paths = frozenset({"/dashboard", "/metrics/history"})

    def __init__(
        self,
        history_source: HistorySource,
        *,
        health: HealthRegistry | None = None,
        usage: UsageLedger | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.history_source = history_source
        self.health = health
        self.usage = usage
        self.clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path = get_context(scope).route_path
        head = scope["method"] == "HEAD"
        if path not in self.paths:
            missing = NotFoundError(f"No such endpoint: {path[:200]}")
            await _respond(send, 404, _JSON, error_body(missing, WireFormat.OPENAI), head)
        elif scope["method"] not in ("GET", "HEAD"):
            error = InvalidRequestError("Only GET and HEAD are allowed here.")
            body = error_body(error, WireFormat.OPENAI)
            await _respond(send, 405, [*_JSON, (b"allow", b"GET, HEAD")], body, head)
        elif path == "/dashboard":
            await _respond(send, 200, _HTML, _PAGE, head)
        else:
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            name = query.get("range", ["1h"])[-1]
            if name not in RANGES:
                message = f"Unknown range {name[:20]!r}; use one of: {', '.join(RANGES)}."
                body = error_body(InvalidRequestError(message), WireFormat.OPENAI)
                await _respond(send, 400, _JSON, body, head)
                return
            body = json.dumps(await self.payload(name), separators=(",", ":")).encode()
            await _respond(send, 200, _JSON, body, head)

    async def payload(self, name: str) -> dict[str, Any]:
        """The history of range ``name``, ending with the current (partial) minute.

        The start is aligned down to a whole step, so steps do not shift between refreshes.
        """
        span, step = RANGES[name]
        now = self.clock()
        until = math.floor(now / 60) * 60 + 60
        since = (until - span) // step * step
        buckets = await self.history_source.history(since, until)
        health = self.health.snapshot() if self.health is not None else None
        payload = history_payload(
            buckets, since_minute=since, until_minute=until, health=health, step_seconds=step
        )
        if self.usage is not None:
            spent = await self.usage.usage(since, until, step=step)
            payload["spend"] = spend_payload(spent, since=since, until=until, step=step)
        return {"range": name, "generated_at": round(now, 3), **payload}
