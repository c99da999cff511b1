"""The built-in offline ``echo`` provider: real wire formats, no network, no keys.

It answers OpenAI chat completions, completions, embeddings and Anthropic messages (JSON and
SSE, with usage) by echoing the last user message, so the demo and the tests exercise the
whole stack, down to a transport, without a provider. Answers are deterministic: the same
request gives the same text, ids and token counts.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from llm_proxy_mw.transports._base import UpstreamRequest, UpstreamResponse

__all__ = ["EchoTransport"]

_JSON = [(b"content-type", b"application/json")]
_SSE = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _text_of(content: Any) -> str:
    """Text of an OpenAI or Anthropic message content: a string or a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = (part.get("text") for part in content if isinstance(part, dict))
        return " ".join(text for text in texts if isinstance(text, str)).strip()
    return ""


def _count(text: str) -> int:
    return len(text.split())


class _Reply:
    """The deterministic answer to one request."""

    def __init__(self, body: dict[str, Any], raw: bytes) -> None:
        messages = body.get("messages")
        messages = messages if isinstance(messages, list) else []
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            said = prompt
        else:
            said = next(
                (
                    _text_of(m.get("content"))
                    for m in reversed(messages)
                    if isinstance(m, dict) and m.get("role") == "user"
                ),
                "",
            )
        words = f"echo: {said}".split()
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        self.truncated = isinstance(limit, int) and 0 < limit < len(words)
        if self.truncated:
            words = words[:limit]
        self.words = words
        self.text = " ".join(words)
        all_text = " ".join(_text_of(m.get("content")) for m in messages if isinstance(m, dict))
        system = body.get("system")
        self.prompt_tokens = (
            _count(all_text) + _count(said if not messages else "") + _count(_text_of(system))
        )
        self.completion_tokens = len(words)
        model = body.get("model")
        self.model = model if isinstance(model, str) else "echo"
        self.id = hashlib.sha256(raw).hexdigest()[:24]
        self.stream = body.get("stream") is True
        options = body.get("stream_options")
        self.include_usage = isinstance(options, dict) and options.get("include_usage") is True


def _chat(reply: _Reply) -> tuple[list[tuple[bytes, bytes]], list[bytes]]:
    created = int(time.time())
    finish = "length" if reply.truncated else "stop"
    usage = {
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens,
        "total_tokens": reply.prompt_tokens + reply.completion_tokens,
    }
    base = {"id": f"chatcmpl-{reply.id}", "created": created, "model": reply.model}
    if not reply.stream:
        message = {"role": "assistant", "content": reply.text, "refusal": None}
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
        return _JSON, [
            _dumps({**base, "object": "chat.completion", "choices": [choice], "usage": usage})
        ]

    def chunk(delta: dict[str, Any], finish_reason: str | None, **extra: Any) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        payload = {**base, "object": "chat.completion.chunk", "choices": [choice], **extra}
        return b"data: " + _dumps(payload) + b"\n\n"

    events = [chunk({"role": "assistant", "content": ""}, None)]
    events += [
        chunk({"content": w if i == 0 else " " + w}, None) for i, w in enumerate(reply.words)
    ]
    events.append(chunk({}, finish))
    if reply.include_usage:
        payload = {**base, "object": "chat.completion.chunk", "choices": [], "usage": usage}
        events.append(b"data: " + _dumps(payload) + b"\n\n")
    events.append(b"data: [DONE]\n\n")
    return _SSE, events


def _completion(reply: _Reply) -> tuple[list[tuple[bytes, bytes]], list[bytes]]:
    choice = {
        "index": 0,
        "text": reply.text,
        "logprobs": None,
        "finish_reason": "length" if reply.truncated else "stop",
    }
    usage = {
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens,
        "total_tokens": reply.prompt_tokens + reply.completion_tokens,
    }
    payload = {
        "id": f"cmpl-{reply.id}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": reply.model,
        "choices": [choice],
        "usage": usage,
    }
    return _JSON, [_dumps(payload)]


def _embeddings(body: dict[str, Any]) -> tuple[list[tuple[bytes, bytes]], list[bytes]]:
    inputs = body.get("input")
    texts = inputs if isinstance(inputs, list) else [inputs]
    data = []
    for index, text in enumerate(texts):
        digest = hashlib.sha256(str(text).encode()).digest()
        vector = [round(b / 255 - 0.5, 6) for b in digest[:16]]
        data.append({"object": "embedding", "index": index, "embedding": vector})
    tokens = sum(_count(str(t)) for t in texts)
    payload = {
        "object": "list",
        "data": data,
        "model": body.get("model", "echo"),
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    return _JSON, [_dumps(payload)]


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + _dumps({"type": event, **data}) + b"\n\n"


def _messages(reply: _Reply) -> tuple[list[tuple[bytes, bytes]], list[bytes]]:
    stop = "max_tokens" if reply.truncated else "end_turn"
    message: dict[str, Any] = {
        "id": f"msg_{reply.id}",
        "type": "message",
        "role": "assistant",
        "model": reply.model,
        "content": [{"type": "text", "text": reply.text}],
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": {"input_tokens": reply.prompt_tokens, "output_tokens": reply.completion_tokens},
    }
    if not reply.stream:
        return _JSON, [_dumps(message)]
    start = {
        **message,
        "content": [],
        "stop_reason": None,
        "usage": {"input_tokens": reply.prompt_tokens, "output_tokens": 1},
    }
    events = [
        _sse("message_start", {"message": start}),
        _sse("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
        _sse("ping", {}),
    ]
    for i, word in enumerate(reply.words):
        delta = {"type": "text_delta", "text": word if i == 0 else " " + word}
        events.append(_sse("content_block_delta", {"index": 0, "delta": delta}))
    events += [
        _sse("content_block_stop", {"index": 0}),
        _sse(
            "message_delta",
            {
                "delta": {"stop_reason": stop, "stop_sequence": None},
                "usage": {"output_tokens": reply.completion_tokens},
            },
        ),
        _sse("message_stop", {}),
    ]
    return _SSE, events


def _error(status: int, message: str) -> UpstreamResponse:
    body = _dumps({"error": {"message": message, "type": "invalid_request_error", "code": None}})
    return _response(status, _JSON, [body])


def _response(
    status: int, headers: list[tuple[bytes, bytes]], chunks: list[bytes]
) -> UpstreamResponse:
    parts: Iterator[bytes] = iter(chunks)
    if len(chunks) == 1:
        headers = [*headers, (b"content-length", str(len(chunks[0])).encode())]

    async def read_chunk() -> bytes:
        return next(parts, b"")

    return UpstreamResponse(status, headers, read_chunk)


class EchoTransport:
    """``UpstreamTransport`` that answers locally; it serves both wire formats."""

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        path = urlsplit(request.url).path
        endpoint = path.rsplit("/v1/", 1)[-1] if "/v1/" in path else path.lstrip("/")
        if request.method != "POST":
            return _error(404, f"The echo provider does not serve {request.method} /{endpoint}.")
        try:
            body = json.loads(request.body or b"{}")
        except (ValueError, RecursionError):  # an upload's body reaches here unparsed
            return _error(400, "The echo provider expects a JSON body.")
        if not isinstance(body, dict):
            return _error(400, "The echo provider expects a JSON object.")
        if endpoint == "chat/completions":
            headers, chunks = _chat(_Reply(body, request.body))
        elif endpoint == "completions":
            headers, chunks = _completion(_Reply(body, request.body))
        elif endpoint == "embeddings":
            headers, chunks = _embeddings(body)
        elif endpoint == "messages":
            headers, chunks = _messages(_Reply(body, request.body))
        elif endpoint == "messages/count_tokens":
            headers, chunks = _JSON, [_dumps({"input_tokens": _Reply(body, b"").prompt_tokens})]
        else:
            return _error(404, f"The echo provider does not serve /{endpoint}.")
        return _response(200, headers, chunks)

    async def aclose(self) -> None:
        return None
