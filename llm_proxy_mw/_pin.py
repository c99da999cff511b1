"""Pinning a provider: the ``x-llm-proxy-provider: <name>`` request header sends every
attempt of the request to that configured provider, translated if it speaks another API.

Admins may always pin; other principals when ``may_pin`` admits them (by default everyone:
the proxy has no per-principal model limits of its own for a pin to get around). An unknown
name is a 400, a principal not allowed a 403.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from llm_proxy_mw.apis import Api
from llm_proxy_mw.context import RequestContext
from llm_proxy_mw.errors import InvalidRequestError, PermissionDeniedError

if TYPE_CHECKING:
    from llm_proxy_mw._plan import Plan
    from llm_proxy_mw.routing import Router

__all__ = ["PIN_HEADER", "anyone", "pinned_plan"]

PIN_HEADER = b"x-llm-proxy-provider"


def anyone(principal: Any) -> bool:
    """The default ``may_pin``: every principal may pin a provider."""
    return True


def pinned_plan(
    router: Router,
    ctx: RequestContext,
    api: Api | None,
    may_pin: Callable[[Any], bool],
) -> Plan | None:
    """The plan of a request that pins a provider (the context read its header, in the
    one pass over the headers); ``None`` when it pins none."""
    provider = ctx.pinned_provider
    if provider is None:
        return None
    principal = ctx.principal  # None without Auth in front
    if not getattr(principal, "admin", False) and not may_pin(principal):
        raise PermissionDeniedError("This principal may not pin a provider.")
    plan = router.single(provider, ctx.wire_format, api)
    if plan is None:
        raise InvalidRequestError(
            f"No provider is named {json.dumps(provider)[:200]} (the {PIN_HEADER.decode()} header)."
        )
    return plan
