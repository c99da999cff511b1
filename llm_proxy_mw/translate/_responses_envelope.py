"""The Response object a translated Responses request answers with, JSON and in a stream's
``response.created``, ``response.in_progress``, ``response.completed`` and
``response.failed`` events: the provider's output, with the client's parameters echoed back
as the Responses API does."""

from __future__ import annotations

from typing import Any, Literal

from llm_proxy_mw.translate._codec import Json

__all__ = ["REDACTED", "ResponseStatus", "response_object"]

#: How a reasoning item's ``encrypted_content`` carries a redacted thinking block (its
#: ``data`` follows) rather than a thinking block's signature. A signature is base64, which
#: never holds a colon, so the two cannot be confused when the client sends the item back,
#: even for a signed block whose text is empty.
REDACTED = "redacted:"

ResponseStatus = Literal["in_progress", "completed", "incomplete", "failed"]

#: Client parameters a Response echoes, with the value it shows when the client sent none.
_ECHOED: dict[str, Any] = {
    "instructions": None,
    "max_output_tokens": None,
    "metadata": {},
    "parallel_tool_calls": True,
    "previous_response_id": None,
    "reasoning": {"effort": None, "summary": None},
    "temperature": 1.0,
    "text": {"format": {"type": "text"}},
    "tool_choice": "auto",
    "tools": [],
    "top_p": 1.0,
    "truncation": "disabled",
    "user": None,
}


def response_object(
    request: Json,
    *,
    id: str,
    created_at: int,
    model: str,
    status: ResponseStatus,
    output: list[Json],
    usage: Json | None = None,
    incomplete_reason: str | None = None,
    error: Json | None = None,
) -> Json:
    """A Response for the client's ``request`` (its body, as sent): ``output`` items, and
    ``usage`` in the Responses shape (``_mappings.responses_usage``) once known.
    ``incomplete_reason`` (``max_output_tokens``, ``content_filter``) goes with status
    ``incomplete``; ``error`` (``{"code", "message"}``) with ``failed``."""
    echoed = {
        key: request[key] if request.get(key) is not None else default
        for key, default in _ECHOED.items()
    }
    return {
        "id": id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "error": error,
        "incomplete_details": (
            {"reason": incomplete_reason} if incomplete_reason is not None else None
        ),
        "model": model,
        "output": output,
        "usage": usage,
        "store": False,
        **echoed,
    }
