"""``UsageApp``: ``GET /usage``, what each principal used and spent, from the usage ledger.

``GET <mount>/usage?range=1h|24h|7d|30d[&principal=<id>]`` answers
``{"range": "24h", "rows": [...]}``, one row per principal, model and provider over the
range (ending with the current minute, what is not yet flushed included). An admin sees
everyone and may filter by ``principal``; anyone else sees only their own rows (another's
``principal``: 403); unknown credentials: 401. Without ``[auth]`` every request is
``anonymous`` and the endpoint is open, like the rest of the proxy.

``cost_usd`` is the exact sum as a decimal string (``"0.0123"``), never a float: a float
would round, and sums of rounded figures drift from the invoice. ``null`` when no request of
the row could be priced; ``unpriced_requests`` counts the requests of the row with tokens but
no known price (their cost is not in ``cost_usd``).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs

from starlette.types import Receive, Scope, Send

from llm_proxy_mw.auth import AuthenticatorChain
from llm_proxy_mw.context import get_context, principal_id
from llm_proxy_mw.errors import InvalidRequestError, PermissionDeniedError
from llm_proxy_mw.ledger import UsageBucket, UsageLedger
from llm_proxy_mw.wire import send_json

__all__ = ["USAGE_RANGES", "UsageApp", "decimal_text", "spend_payload", "usage_rows"]

#: Range name -> span in seconds.
USAGE_RANGES: dict[str, int] = {"1h": 3600, "24h": 86_400, "7d": 7 * 86_400, "30d": 30 * 86_400}
#: The dashboard draws the principals that spent most; the rest add up in one line.
TOP_PRINCIPALS = 10
OTHERS = "(others)"
_ZERO = Decimal(0)
_HEADERS = [(b"cache-control", b"no-store"), (b"x-content-type-options", b"nosniff")]


def decimal_text(value: Decimal) -> str:
    """A ``Decimal`` as plain decimal text without trailing zeros: ``"0.0000025"``."""
    text = format(value.normalize(), "f")
    return "0" if text in ("-0", "0") else text


def usage_rows(buckets: Sequence[UsageBucket]) -> list[dict[str, Any]]:
    """The JSON rows of buckets that span the whole range (one per principal, model and
    provider)."""
    return [
        {
            "principal": b.key.principal,
            "model": b.key.model,
            "provider": b.key.provider,
            "requests": b.requests,
            "input_tokens": b.input_tokens,
            "output_tokens": b.output_tokens,
            "cache_read_tokens": b.cache_read_tokens,
            "cache_write_tokens": b.cache_write_tokens,
            "reasoning_tokens": b.reasoning_tokens,
            "cost_usd": None if _unpriced(b) else decimal_text(b.cost_usd),
            "unpriced_requests": b.unpriced,
        }
        for b in buckets
    ]


def spend_payload(
    buckets: Sequence[UsageBucket], *, since: int, until: int, step: int
) -> dict[str, Any]:
    """The dashboard's spend over time: USD per step of ``[since, until)`` per model and per
    principal (the ``TOP_PRINCIPALS`` that spent most, the rest as ``OTHERS``), as floats
    rounded to 1e-9 for drawing, and each one's exact total as a decimal string."""
    steps = len(range(since, until, step))
    models: dict[str, list[Decimal]] = {}
    principals: dict[str, list[Decimal]] = {}
    unpriced = 0
    for bucket in buckets:
        i = (bucket.key.start - since) // step
        if 0 <= i < steps:
            models.setdefault(bucket.key.model, [_ZERO] * steps)[i] += bucket.cost_usd
            principals.setdefault(bucket.key.principal, [_ZERO] * steps)[i] += bucket.cost_usd
            unpriced += bucket.unpriced
    ranked = sorted(principals, key=lambda p: (-sum(principals[p]), p))
    if len(ranked) > TOP_PRINCIPALS:
        rest = [principals.pop(p) for p in ranked[TOP_PRINCIPALS:]]
        principals[OTHERS] = [sum(column, _ZERO) for column in zip(*rest, strict=True)]

    def drawn(series: dict[str, list[Decimal]]) -> dict[str, Any]:
        return {
            "series": {
                name: [round(float(v), 9) for v in values] for name, values in series.items()
            },
            "totals": {name: decimal_text(sum(values, _ZERO)) for name, values in series.items()},
        }

    return {"models": drawn(models), "principals": drawn(principals), "unpriced": unpriced}


def _unpriced(bucket: UsageBucket) -> bool:
    # Only requests without a price (none priced, some unpriced): a cost of "0" would lie.
    return bucket.unpriced > 0 and not bucket.cost_usd


class UsageApp:
    """ASGI app serving ``/usage`` (GET) from ``ledger``; ``authenticators`` tell who asks
    (``None``: no ``[auth]``, everyone is an admin of the anonymous ledger)."""

    def __init__(
        self,
        ledger: UsageLedger,
        *,
        authenticators: AuthenticatorChain | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ledger = ledger
        self.authenticators = authenticators
        self.clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] != "GET":
            raise InvalidRequestError("Only GET is allowed here.")
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        name = query.get("range", ["24h"])[-1]
        if name not in USAGE_RANGES:
            raise InvalidRequestError(
                f"Unknown range {name[:20]!r}; use one of: {', '.join(USAGE_RANGES)}."
            )
        principal = await self._principal_filter(scope, query.get("principal", [None])[-1])
        until = math.floor(self.clock() / 60) * 60 + 60
        since = until - USAGE_RANGES[name]
        buckets = await self.ledger.usage(since, until, step=until - since, principal=principal)
        body = json.dumps({"range": name, "rows": usage_rows(buckets)}).encode()
        await send_json(send, 200, body, _HEADERS)

    async def _principal_filter(self, scope: Scope, asked: str | None) -> str | None:
        """Whose rows the caller gets: ``asked`` (``None``: all) for an admin, else its own."""
        if self.authenticators is None:
            return asked
        ctx = get_context(scope)
        if ctx.principal is None:
            ctx.principal = await self.authenticators.authenticate(scope)  # 401 if unknown
        if ctx.principal.admin:
            return asked
        own = principal_id(ctx)
        if asked is not None and asked != own:
            raise PermissionDeniedError("Only an admin may see another principal's usage.")
        return own
