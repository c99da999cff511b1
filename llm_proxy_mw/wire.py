"""The two client wire formats, and how an error looks in each.

A request's wire format follows from its path and its headers: ``/v1/messages`` and below
speak Anthropic's API, and so does any other ``/v1/*`` request carrying ``anthropic-version``
(which Anthropic's SDKs send with every call: files, models, what comes next); the rest speak
OpenAI's. Errors are rendered in the caller's format, so the official SDKs raise their own
typed exceptions for them.
"""

from __future__ import annotations

import enum
import json
import logging
from typing import Any

from starlette.types import Send

from llm_proxy_mw.errors import ProxyError

__all__ = [
    "LOG_ESCAPES",
    "WireFormat",
    "error_body",
    "error_event",
    "error_json",
    "log_error",
    "send_error",
    "send_json",
    "wire_format_of",
]

logger = logging.getLogger("llm_proxy_mw")


class WireFormat(enum.Enum):
    OPENAI = "openai"
    ANTHROPIC = "anthropic"


def wire_format_of(route_path: str, *, anthropic_version: bool = False) -> WireFormat:
    """Anthropic for ``/v1/messages`` and below, and for any other ``/v1/*`` request that
    carries ``anthropic-version`` (``anthropic_version``); OpenAI otherwise."""
    if route_path.startswith("/v1/"):
        if anthropic_version or route_path == "/v1/messages":
            return WireFormat.ANTHROPIC
        if route_path.startswith("/v1/messages/"):
            return WireFormat.ANTHROPIC
    return WireFormat.OPENAI


def error_json(error: ProxyError, wire_format: WireFormat) -> dict[str, Any]:
    """The error object the caller's SDK expects, as a body or as a stream's last event."""
    if wire_format is WireFormat.ANTHROPIC:
        return {
            "type": "error",
            "error": {"type": error.anthropic_type, "message": error.message},
        }
    return {
        "error": {
            "message": error.message,
            "type": error.openai_type,
            "param": error.param,
            "code": error.code,
        }
    }


def error_body(error: ProxyError, wire_format: WireFormat) -> bytes:
    """The JSON error body the caller's SDK expects."""
    return json.dumps(error_json(error, wire_format), separators=(",", ":")).encode()


def error_event(error: ProxyError, wire_format: WireFormat) -> bytes:
    """A terminal SSE event that makes the caller's SDK raise, for a stream that broke.

    The leading blank line ends whatever partial event the upstream left behind, so the
    error is parsed as an event of its own.
    """
    body = error_body(error, wire_format)
    if wire_format is WireFormat.ANTHROPIC:
        return b"\n\nevent: error\ndata: " + body + b"\n\n"
    return b"\n\ndata: " + body + b"\n\n"


async def send_json(
    send: Send,
    status: int,
    body: bytes,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """Send a complete JSON response."""
    raw = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if headers:
        raw.extend(headers)
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body, "more_body": False})


#: C0 and C1 controls, DEL and the Unicode line separators, as escapes: a message may quote
#: the client (a path, a model name), which must not forge a log line or drive a terminal.
LOG_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))} | {
    0x2028: "\\u2028",
    0x2029: "\\u2029",
}


def log_error(error: ProxyError, request_id: str, upstream_request_id: str | None = None) -> None:
    """One log record per failed request: id, class, provider, and the provider's own id of
    its answer when it gave one (what its support asks for); messages carry no secrets.

    The record is one line, whatever the message quotes: control characters are escaped.
    """
    level = logging.WARNING if error.status_code >= 500 else logging.INFO
    if logger.isEnabledFor(level):
        logger.log(
            level,
            "request %s failed: %s (%s) provider=%s status=%d upstream_request_id=%s",
            request_id,
            type(error).__name__,
            error.message.translate(LOG_ESCAPES),
            error.provider or "-",
            error.status_code,
            (upstream_request_id or "-").translate(LOG_ESCAPES),
        )


async def send_error(
    send: Send,
    error: ProxyError,
    wire_format: WireFormat,
    request_id: str = "-",
    upstream_request_id: str | None = None,
) -> None:
    """Log the error once and send it in the caller's wire format."""
    log_error(error, request_id, upstream_request_id)
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in error.headers.items()]
    await send_json(send, error.status_code, error_body(error, wire_format), headers)
