"""A provider's error response in the client's wire format, so that the client's SDK raises
its own typed exception (both SDKs pick the class by status; the body gives the message).

The status is kept, except Anthropic's 529 (overloaded), which OpenAI's clients do not know:
it becomes 503. The provider's message is kept; a body that is not JSON, or not an error of
either shape, still gives a well-formed error of the same status, quoting a bounded prefix.
"""

from __future__ import annotations

import json
from typing import Any

from llm_proxy_mw.translate._sse import compact_json
from llm_proxy_mw.wire import WireFormat

__all__ = ["translate_error"]

#: OpenAI's error ``type`` for a status (the SDK reads the status; the type is for people).
_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout",
    409: "conflict_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}

#: Anthropic's error ``type`` for a status, as its API documents them.
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}

#: The most of a body that is not an error object quoted as the message.
_QUOTED = 500


def translate_error(
    status: int, body: bytes, provider: WireFormat, client: WireFormat
) -> tuple[int, bytes]:
    """The status and body a ``client`` gets for a provider's error answer."""
    parsed = _parse(body)
    message, kind, code, param = _fields(parsed, body)
    if client is WireFormat.ANTHROPIC:
        if provider is WireFormat.ANTHROPIC and kind is not None:
            return status, body  # already what the client's SDK reads
        anthropic_type = _ANTHROPIC_TYPES.get(
            status, "api_error" if status >= 500 else "invalid_request_error"
        )
        payload: dict[str, Any] = {
            "type": "error",
            "error": {"type": anthropic_type, "message": message},
        }
        return status, compact_json(payload)
    if status == 529:
        status = 503
    if provider is WireFormat.OPENAI and kind is not None:
        openai_type = kind
    else:
        openai_type = _OPENAI_TYPES.get(
            status, "api_error" if status >= 500 else "invalid_request_error"
        )
        code = code if code is not None else kind
    error = {"message": message, "type": openai_type, "param": param, "code": code}
    return status, compact_json({"error": error})


def _parse(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


def _fields(parsed: Any, body: bytes) -> tuple[str, str | None, str | None, str | None]:
    """Message, type, code and param of an error of either shape (or of a bare
    ``{"error": "..."}`` / ``{"message": "..."}`` / ``{"detail": "..."}``)."""
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(error, dict):
        message = error.get("message")
        if isinstance(message, str):
            return (
                message,
                _str(error.get("type")),
                _str(error.get("code")),
                _str(error.get("param")),
            )
    if isinstance(parsed, dict):
        for key in ("error", "message", "detail"):
            value = parsed.get(key)
            if isinstance(value, str) and value:
                return value, None, None, None
    text = body[:_QUOTED].decode("utf-8", "replace").strip()
    return (
        (f"The provider answered: {text}" if text else "The provider answered with an error."),
        None,
        None,
        None,
    )


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None
