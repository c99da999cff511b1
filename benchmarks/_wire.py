"""The scripted fake provider's answers in the OpenAI and Anthropic wire formats.

Close enough to the real APIs that the official ``openai`` and ``anthropic`` SDKs parse them:
JSON bodies, SSE events, error envelopes. Each function returns the status, the body (JSON)
or the events (a stream); the server in ``_scripted`` frames them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
import time
import uuid
from dataclasses import dataclass
from typing import Any

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

#: A JSON body (``bytes``) or the events of a stream (``list[bytes]``).
Reply = bytes | list[bytes]


def error_envelope(status: int, anthropic: bool) -> bytes:
    """The error body the real API of that wire format sends with ``status``."""
    msg = f"fake error {status}"
    if anthropic:
        kind = _ANTHROPIC_ERR.get(status, "api_error")
        return _dumps({"type": "error", "error": {"type": kind, "message": msg}})
    kind = _OPENAI_ERR.get(status, "server_error")
    return _dumps({"error": {"message": msg, "type": kind, "param": None, "code": None}})


#: The method each path answers.
ROUTES = {
    "/v1/chat/completions": "POST",
    "/v1/messages": "POST",
    "/v1/messages/count_tokens": "POST",
    "/v1/embeddings": "POST",
    "/v1/models": "GET",
}


@dataclass(frozen=True)
class Wording:
    """The reply text: ``text``, or ``prefix`` and the last user message; in ``chunks`` deltas."""

    text: str | None
    prefix: str
    chunks: int

    def split(self, messages: Any) -> tuple[str, list[str]]:
        text = self.text
        if text is None:
            last = ""
            for m in reversed(messages if isinstance(messages, list) else []):
                if isinstance(m, dict) and m.get("role") == "user":
                    last = _text(m.get("content"))
                    break
            text = self.prefix + last
        size = max(1, -(-len(text) // self.chunks))
        return text, [text[i : i + size] for i in range(0, len(text), size)] or [""]


def answer(path: str, req: dict[str, Any], anthropic_version: bool, wording: Wording) -> Reply:
    """The normal answer to a request on one of ``ROUTES``, with its method."""
    if path == "/v1/models":
        return _models(anthropic_version)
    if path == "/v1/chat/completions":
        return _chat(req, *wording.split(req.get("messages")))
    if path == "/v1/messages":
        return _messages(req, *wording.split(req.get("messages")))
    if path == "/v1/messages/count_tokens":
        return _dumps({"input_tokens": _prompt_tokens(req)})
    return _embeddings(req)


def _dumps(data: Any) -> bytes:
    return json.dumps(data).encode()


def _sse(data: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _event(kind: str, **fields: Any) -> bytes:
    return _sse({"type": kind, **fields}, kind)


def _block(text: str, kind: str = "text") -> dict[str, str]:
    return {"type": kind, "text": text}


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def _tokens(text: str) -> int:
    return max(1, len(text.split()))


def _prompt_tokens(req: dict[str, Any]) -> int:
    texts = [_text(req.get("system"))] + [
        _text(m.get("content")) for m in req.get("messages") or []
    ]
    return _tokens(" ".join(texts))


def _chat(req: dict[str, Any], text: str, parts: list[str]) -> Reply:
    prompt, completion = _prompt_tokens(req), _tokens(text)
    usage = dict(prompt_tokens=prompt, completion_tokens=completion)
    usage["total_tokens"] = prompt + completion
    base: dict[str, Any] = {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "created": int(time.time()),
    }
    base |= {"model": req.get("model", "fake-model"), "system_fingerprint": "fp_fake"}
    if not req.get("stream"):
        message = {"role": "assistant", "content": text, "refusal": None}
        choice = dict(index=0, message=message, logprobs=None, finish_reason="stop")
        return _dumps({**base, "object": "chat.completion", "choices": [choice], "usage": usage})
    base["object"] = "chat.completion.chunk"
    with_usage = bool((req.get("stream_options") or {}).get("include_usage"))
    if with_usage:
        base["usage"] = None  # like the real API: null on every chunk but the last one

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = dict(index=0, delta=delta, logprobs=None, finish_reason=finish)
        return _sse({**base, "choices": [choice]})

    events = [chunk({"role": "assistant", "content": "", "refusal": None})]
    events += [chunk({"content": p}) for p in parts] + [chunk({}, "stop")]
    if with_usage:
        events.append(_sse({**base, "choices": [], "usage": usage}))
    return [*events, b"data: [DONE]\n\n"]


def _messages(req: dict[str, Any], text: str, parts: list[str]) -> Reply:
    prompt, completion = _prompt_tokens(req), _tokens(text)
    msg: dict[str, Any] = {
        "id": f"msg_{uuid.uuid4().hex[:24]}",
        "type": "message",
        "role": "assistant",
    }
    msg |= {"model": req.get("model", "fake-model"), "content": [_block(text)]}
    msg |= {"stop_reason": "end_turn", "stop_sequence": None}
    msg["usage"] = {"input_tokens": prompt, "output_tokens": completion}
    if not req.get("stream"):
        return _dumps(msg)
    start: dict[str, Any] = {**msg, "content": [], "stop_reason": None}
    start["usage"] = {"input_tokens": prompt, "output_tokens": 1}
    end = {"stop_reason": "end_turn", "stop_sequence": None}
    return [
        _event("message_start", message=start),
        _event("content_block_start", index=0, content_block=_block("")),
        _event("ping"),
        *(_event("content_block_delta", index=0, delta=_block(p, "text_delta")) for p in parts),
        _event("content_block_stop", index=0),
        _event("message_delta", delta=end, usage={"output_tokens": completion}),
        _event("message_stop"),
    ]


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
    n = sum(_tokens(json.dumps(x)) for x in inputs)
    body = {"object": "list", "data": data, "model": req.get("model")}
    return _dumps({**body, "usage": {"prompt_tokens": n, "total_tokens": n}})


def _models(anthropic: bool) -> bytes:
    ids = ["fake-gpt", "fake-claude"]
    if anthropic:  # Anthropic's list shape
        created = "2025-01-01T00:00:00Z"
        models = [dict(type="model", id=i, display_name=i, created_at=created) for i in ids]
        page = {"has_more": False, "first_id": ids[0], "last_id": ids[-1]}
        return _dumps({"data": models, **page})
    data = [dict(id=i, object="model", created=1735689600, owned_by="fake") for i in ids]
    return _dumps({"object": "list", "data": data})
