"""The access record: one structured log record per proxied request, once it ended.

``MetricsMiddleware`` emits it on the ``llm_proxy_mw.access`` logger at INFO, for every request
it saw (answered, failed, refused by Auth or Limits, or left by its client), after pricing, and
only when that logger is enabled for INFO: with logging left at its default (WARNING) nothing
is built. The facts are flat attributes of the record (``ACCESS_FIELDS``, passed as
``extra``), so that a JSON formatter (python-json-logger, structlog's ``ProcessorFormatter``,
the host's own) renders each as a key; the message is one readable line for a text console.

Nothing secret goes in: no key, no token, no header, no content, no query string. What a
client chose (the path, the model) is escaped in the message as ``wire.log_error`` escapes it,
so that it cannot forge a line; JSON formatters escape the fields themselves.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.types import Scope

from llm_proxy_mw._usage import token_count
from llm_proxy_mw.context import RequestContext, principal_id
from llm_proxy_mw.errors import OUTCOMES, outcome_for_status
from llm_proxy_mw.wire import LOG_ESCAPES

__all__ = ["ACCESS_FIELDS", "CLIENT_CLOSED_OUTCOME", "access_logger", "log_access"]

access_logger = logging.getLogger("llm_proxy_mw.access")

#: The outcome of a request whose client left before its end (status 499).
CLIENT_CLOSED_OUTCOME = "client_closed"

#: The attributes every access record carries (``None`` where a fact is unknown), in order.
#: None of them is a ``LogRecord`` attribute, which ``extra`` may not override.
ACCESS_FIELDS = (
    "request_id",
    "upstream_request_id",
    "principal_id",
    "method",
    "path",
    "wire_format",
    "translated_to",
    "request_model",
    "response_model",
    "provider",
    "attempts",
    "attempt_outcomes",
    "status",
    "outcome",
    "latency_ms",
    "ttfb_ms",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "cost_usd",
    "trace_id",
    "span_id",
)


def log_access(
    scope: Scope, ctx: RequestContext, status: int, duration: float, error_code: str | None
) -> None:
    """Emit the access record of a finished request; the caller checked that
    ``access_logger`` is enabled for INFO.

    ``status`` is the one the client saw (499: it left), ``duration`` seconds to the end,
    ``error_code`` the code of the ``ProxyError`` that ended the request, if one did.
    """
    fields = _fields(scope, ctx, status, duration, error_code)
    access_logger.info(_message(fields), extra=fields)


def _fields(
    scope: Scope, ctx: RequestContext, status: int, duration: float, error_code: str | None
) -> dict[str, Any]:
    """The record's attributes (``ACCESS_FIELDS``): plain JSON values, the cost a float."""
    attempts = ctx.attempts
    last = attempts[-1] if attempts else None
    route = ctx.route
    codec = route.codec if route is not None else None
    usage = ctx.usage
    served = route.model if route is not None and route.model else ctx.model
    return {
        "request_id": ctx.request_id,
        "upstream_request_id": last.upstream_request_id if last else None,
        "principal_id": principal_id(ctx),
        "method": scope.get("method"),
        "path": scope.get("path"),
        "wire_format": ctx.wire_format.value,
        "translated_to": codec.provider.value if codec is not None else None,
        "request_model": ctx.model,
        "response_model": served if last else None,
        "provider": last.provider if last else ctx.provider,
        "attempts": len(attempts),
        "attempt_outcomes": [f"{a.provider}:{a.outcome}" for a in attempts],
        "status": status,
        "outcome": _outcome(ctx, status, error_code),
        "latency_ms": round(duration * 1000, 3),
        "ttfb_ms": None if ctx.ttfb is None else round(ctx.ttfb * 1000, 3),
        "input_tokens": token_count(usage.prompt_tokens),
        "output_tokens": token_count(usage.completion_tokens),
        "cache_read_tokens": token_count(usage.cache_read_tokens),
        "cache_write_tokens": token_count(usage.cache_write_tokens),
        "reasoning_tokens": token_count(usage.reasoning_tokens),
        # A float: ``json.dumps`` refuses a Decimal, python-json-logger makes it a string.
        "cost_usd": None if usage.cost_usd is None else float(usage.cost_usd),
        "trace_id": ctx.trace_id,
        "span_id": ctx.span_id,
    }


def _outcome(ctx: RequestContext, status: int, error_code: str | None) -> str:
    """A metrics ``outcome`` label (``errors.OUTCOMES``), or ``client_closed``: the error that
    ended the request, else how its last attempt ended, else what its status says."""
    if status == 499:
        return CLIENT_CLOSED_OUTCOME
    if error_code is not None:
        outcome = error_code
    elif ctx.attempts:
        outcome = ctx.attempts[-1].outcome
    else:
        outcome = outcome_for_status(status)
    return outcome if outcome in OUTCOMES else "other"


def _message(fields: dict[str, Any]) -> str:
    """``POST /llm/v1/chat/completions 200 gpt-4o via openai 812 ms 1,234 tokens $0.0021
    req=...``, the outcome after a failed status, escaped to one line."""
    parts = [f"{fields['method']} {fields['path']} {fields['status']}"]
    if fields["outcome"] != "success":
        parts.append(fields["outcome"])
    if fields["request_model"]:
        parts.append(fields["request_model"])
    if fields["provider"]:
        parts.append(f"via {fields['provider']}")
    if fields["attempts"] > 1:
        parts.append(f"after {fields['attempts']} attempts")
    parts.append(f"{fields['latency_ms']:,.1f} ms")
    tokens = fields["input_tokens"] + fields["output_tokens"]
    if tokens:
        parts.append(f"{tokens:,} tokens")
    if fields["cost_usd"] is not None:
        parts.append(f"${fields['cost_usd']:.6f}".rstrip("0").rstrip("."))
    parts.append(f"req={fields['request_id']}")
    return " ".join(parts).translate(LOG_ESCAPES)
