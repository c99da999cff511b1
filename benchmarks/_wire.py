"""The scripted fake provider's answers in the OpenAI and Anthropic wire formats.

Close enough to the real APIs that the official ``openai`` and ``anthropic`` SDKs parse them:
JSON bodies, SSE events, error envelopes. Each function returns the status, the body (JSON)
or the events (a stream); the server in ``_scripted`` frames them. Chat Completions,
Messages and Responses answers are a ``Turn`` (scripted, or the echo of the last user
message) rendered by ``_wire_chat``, ``_wire_messages`` and ``_wire_responses``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from dataclasses import dataclass
from typing import Any

from benchmarks._wire_chat import chat
from benchmarks._wire_messages import messages
from benchmarks._wire_responses import responses
from benchmarks._wire_turn import Reply, Turn, count_tokens, dumps

__all__ = ["ROUTES", "Reply", "Wording", "answer", "error_envelope"]

_OPENAI_ERR = {400: "invalid_request_error", 401: "invalid_request_error", 429: "requests"}
_ANTHROPIC_ERR = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}

#: The renderer of a ``Turn`` on each path that answers with one.
_TURNS = {"/v1/chat/completions": chat, "/v1/messages": messages, "/v1/responses": responses}


def error_envelope(status: int, anthropic: bool) -> bytes:
    """The error body the real API of that wire format sends with ``status``."""
    msg = "Overloaded" if anthropic and status == 529 else f"fake error {status}"
    if anthropic:
        kind = _ANTHROPIC_ERR.get(status, "api_error")
        return dumps({"type": "error", "error": {"type": kind, "message": msg}})
    kind = _OPENAI_ERR.get(status, "server_error")
    return dumps({"error": {"message": msg, "type": kind, "param": None, "code": None}})


#: The method each path answers.
ROUTES = {
    "/v1/chat/completions": "POST",
    "/v1/messages": "POST",
    "/v1/messages/count_tokens": "POST",
    "/v1/responses": "POST",
    "/v1/embeddings": "POST",
    "/v1/models": "GET",
}


@dataclass(frozen=True)
class Wording:
    """The echo's reply: ``text``, or ``prefix`` and the last user message; every text
    (tool arguments too) in ``chunks`` deltas."""

    text: str | None
    prefix: str
    chunks: int

    def turn(self, req: dict[str, Any]) -> Turn:
        if self.text is not None:
            return Turn(text=self.text)
        last = ""
        for m in reversed(_conversation(req)):
            if isinstance(m, dict) and m.get("role") == "user":
                last = _text(m.get("content"))
                break
        return Turn(text=self.prefix + last)


def answer(
    path: str,
    req: dict[str, Any],
    anthropic_version: bool,
    wording: Wording,
    turn: Turn | None = None,
    error_after: int | None = None,
) -> Reply:
    """The answer to a request on one of ``ROUTES``, with its method: ``turn`` (default: the
    echo), a stream failing after ``error_after`` events if that is set."""
    render = _TURNS.get(path)
    if render is not None:
        turn = turn if turn is not None else wording.turn(req)
        usage = turn.tokens(_prompt_tokens(req))
        return render(req, turn, usage, wording.chunks, error_after)
    if path == "/v1/models":
        return _models(anthropic_version)
    if path == "/v1/messages/count_tokens":
        return dumps({"input_tokens": _prompt_tokens(req)})
    return _embeddings(req)


def _conversation(req: dict[str, Any]) -> list[Any]:
    """The messages (Chat, Messages) or input items (Responses) of a request."""
    said = req.get("messages", req.get("input"))
    if isinstance(said, str):
        return [{"role": "user", "content": said}]
    return said if isinstance(said, list) else []


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def _prompt_tokens(req: dict[str, Any]) -> int:
    texts = [_text(req.get("system", req.get("instructions")))]
    texts += [_text(m.get("content")) for m in _conversation(req) if isinstance(m, dict)]
    return count_tokens(" ".join(texts))


def _embeddings(req: dict[str, Any]) -> bytes:
    inputs = req.get("input", "")
    if isinstance(inputs, str) or (inputs and isinstance(inputs[0], int)):
        inputs = [inputs]
    dims = int(req.get("dimensions") or 8)
    data = []
    for i, item in enumerate(inputs):
        seed = hashlib.sha256(json.dumps(item).encode()).digest()
        vector = [(seed[j % 32] - 128) / 128 for j in range(dims)]
        embedding: Any = vector
        if req.get("encoding_format") == "base64":  # the openai SDK's default!
            embedding = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode()
        data.append({"object": "embedding", "index": i, "embedding": embedding})
    n = sum(count_tokens(json.dumps(x)) for x in inputs)
    body = {"object": "list", "data": data, "model": req.get("model")}
    return dumps({**body, "usage": {"prompt_tokens": n, "total_tokens": n}})


def _models(anthropic: bool) -> bytes:
    ids = ["fake-gpt", "fake-claude"]
    if anthropic:  # Anthropic's list shape
        created = "2025-01-01T00:00:00Z"
        models = [dict(type="model", id=i, display_name=i, created_at=created) for i in ids]
        page = {"has_more": False, "first_id": ids[0], "last_id": ids[-1]}
        return dumps({"data": models, **page})
    data = [dict(id=i, object="model", created=1735689600, owned_by="fake") for i in ids]
    return dumps({"object": "list", "data": data})
