"""``GET /v1/models`` and ``GET /v1/models/{id}``, answered by the proxy from its config.

Every configured model is callable from either API (translated where needed), so both list
all of them, in the shape of the request's wire format: Anthropic's when it sends
``anthropic-version`` (as its SDK always does), OpenAI's otherwise. A model served only
through a provider's ``"*"`` is not known by name, so it is neither listed nor found (404).
"""

from __future__ import annotations

import json

from starlette.types import Send

from llm_proxy_mw.errors import ModelNotFoundError
from llm_proxy_mw.wire import WireFormat, send_error, send_json

__all__ = ["MODELS_PATH", "send_model", "send_models"]

MODELS_PATH = "/v1/models"
_EPOCH = "1970-01-01T00:00:00Z"


def _model(model: str, owner: str, wire_format: WireFormat) -> dict[str, object]:
    if wire_format is WireFormat.ANTHROPIC:
        return {"type": "model", "id": model, "display_name": model, "created_at": _EPOCH}
    return {"id": model, "object": "model", "created": 0, "owned_by": owner}


async def send_models(send: Send, models: list[tuple[str, str]], wire_format: WireFormat) -> None:
    """The list of ``models`` (name, owning provider) in the caller's shape."""
    data = [_model(m, p, wire_format) for m, p in models]
    if wire_format is WireFormat.ANTHROPIC:
        payload: dict[str, object] = {
            "data": data,
            "has_more": False,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
        }
    else:
        payload = {"object": "list", "data": data}
    await send_json(send, 200, json.dumps(payload).encode())


async def send_model(
    send: Send, models: list[tuple[str, str]], model: str, wire_format: WireFormat, request_id: str
) -> None:
    """The one configured ``model`` in the caller's shape, else a 404 in the caller's format."""
    for name, owner in models:
        if name == model:
            await send_json(send, 200, json.dumps(_model(name, owner, wire_format)).encode())
            return
    error = ModelNotFoundError(f"The model {json.dumps(model)[:200]} does not exist.")
    await send_error(send, error, wire_format, request_id)
