"""Test doubles of the ``Codec`` protocol: Chat Completions <-> Messages, text only.

They translate honestly what they cover (text, system prompt, max_tokens, finish reasons,
usage, streams with their terminal events), so the routing and exchange tests exercise the
real wiring; the real codecs live in ``llm_proxy_mw.translate`` and are tested there.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from llm_proxy_mw import translate
from llm_proxy_mw.apis import Api
from llm_proxy_mw.errors import ProxyError, UntranslatableError
from llm_proxy_mw.translate._codec import Codec, Json, StreamTranslator, Target, TokenUsage
from llm_proxy_mw.translate._mappings import (
    FINISH_TO_STOP,
    STOP_TO_FINISH,
    anthropic_usage,
    chat_usage,
    usage_from_anthropic,
    usage_from_chat,
)

__all__ = ["ChatToMessages", "MessagesToChat", "registered"]


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


class ChatToMessages:
    """A Chat Completions client served by a Messages provider."""

    client = Api.CHAT
    provider = Api.MESSAGES

    def request(self, body: Json, target: Target) -> Json:
        if body.get("n", 1) != 1:
            raise UntranslatableError(
                "Only one choice (n=1) can be asked of this model.", param="n"
            )
        messages = body.get("messages") or []
        system = "".join(_text(m.get("content")) for m in messages if m.get("role") == "system")
        out: Json = {
            "model": target.model,
            "max_tokens": body.get("max_tokens") or target.default_max_tokens,
            "messages": [
                {"role": m["role"], "content": _text(m.get("content"))}
                for m in messages
                if m.get("role") in ("user", "assistant")
            ],
        }
        if system:
            out["system"] = system
        if body.get("stream"):
            out["stream"] = True
        return out

    def response(self, body: Json, request: Json) -> tuple[Json, TokenUsage | None]:
        usage = usage_from_anthropic(body.get("usage"))
        message = {"role": "assistant", "content": _text(body.get("content")), "refusal": None}
        finish = STOP_TO_FINISH.get(body.get("stop_reason") or "end_turn", "stop")
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
        return {
            "id": body.get("id", "chatcmpl-x"),
            "object": "chat.completion",
            "created": 0,
            "model": body.get("model", ""),
            "choices": [choice],
            "usage": chat_usage(usage),
        }, usage

    def stream(self, request: Json) -> StreamTranslator:
        return _ChatFromMessages(bool((request.get("stream_options") or {}).get("include_usage")))


class _ChatFromMessages:
    def __init__(self, include_usage: bool) -> None:
        self.usage: TokenUsage | None = None
        self._include_usage = include_usage
        self._id = "chatcmpl-x"
        self._model = ""
        self._stopped = False

    def _chunk(self, delta: Json, finish: str | None = None) -> Json:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": 0,
            "model": self._model,
            "choices": [choice],
        }

    def feed(self, event: Json) -> list[Json]:
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message") or {}
            self._id, self._model = message.get("id", self._id), message.get("model", "")
            self.usage = usage_from_anthropic(message.get("usage"))
            return [self._chunk({"role": "assistant", "content": ""})]
        if kind == "content_block_delta":
            delta = event.get("delta") or {}
            if delta.get("type") == "text_delta":
                return [self._chunk({"content": delta.get("text", "")})]
        elif kind == "message_delta":
            if self.usage is not None:
                self.usage.completion_tokens = (event.get("usage") or {}).get("output_tokens", 0)
            stop = (event.get("delta") or {}).get("stop_reason") or "end_turn"
            return [self._chunk({}, STOP_TO_FINISH.get(stop, "stop"))]
        elif kind == "message_stop":
            self._stopped = True
        elif kind == "error":
            error = event.get("error") or {}
            return [{"error": {"message": error.get("message", ""), "type": error.get("type")}}]
        return []

    def finish(self) -> list[Json]:
        if not self._stopped:
            return [
                {"error": {"message": "The provider's stream ended early.", "type": "api_error"}}
            ]
        if self._include_usage and self.usage is not None:
            last = self._chunk({})
            last["choices"], last["usage"] = [], chat_usage(self.usage)
            return [last]
        return []

    def fail(self, error: ProxyError) -> list[Json]:
        return [
            {"error": {"message": error.message, "type": error.openai_type, "code": error.code}}
        ]


class MessagesToChat:
    """A Messages client served by a Chat Completions provider."""

    client = Api.MESSAGES
    provider = Api.CHAT

    def request(self, body: Json, target: Target) -> Json:
        messages = (
            [{"role": "system", "content": _text(body["system"])}] if body.get("system") else []
        )
        messages += [
            {"role": m["role"], "content": _text(m.get("content"))}
            for m in body.get("messages") or []
        ]
        out: Json = {"model": target.model, "messages": messages}
        if body.get("max_tokens"):
            out["max_completion_tokens"] = body["max_tokens"]
        if body.get("stream"):
            out["stream"], out["stream_options"] = True, {"include_usage": True}
        return out

    def response(self, body: Json, request: Json) -> tuple[Json, TokenUsage | None]:
        usage = usage_from_chat(body.get("usage"))
        choice = (body.get("choices") or [{}])[0]
        text = _text((choice.get("message") or {}).get("content"))
        return {
            "id": body.get("id", "msg_x"),
            "type": "message",
            "role": "assistant",
            "model": body.get("model", ""),
            "content": [{"type": "text", "text": text}],
            "stop_reason": FINISH_TO_STOP.get(choice.get("finish_reason") or "stop", "end_turn"),
            "stop_sequence": None,
            "usage": anthropic_usage(usage),
        }, usage

    def stream(self, request: Json) -> StreamTranslator:
        return _MessagesFromChat()


class _MessagesFromChat:
    def __init__(self) -> None:
        self.usage: TokenUsage | None = None
        self._started = False
        self._stop: str | None = None

    def feed(self, event: Json) -> list[Json]:
        out: list[Json] = []
        if not self._started:
            self._started = True
            message = {
                "id": event.get("id", "msg_x"),
                "type": "message",
                "role": "assistant",
                "model": event.get("model", ""),
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": 0, "output_tokens": 0},
            }
            out.append({"type": "message_start", "message": message})
            block = {"type": "text", "text": ""}
            out.append({"type": "content_block_start", "index": 0, "content_block": block})
        for choice in event.get("choices") or []:
            text = (choice.get("delta") or {}).get("content")
            if text:
                delta = {"type": "text_delta", "text": text}
                out.append({"type": "content_block_delta", "index": 0, "delta": delta})
            if choice.get("finish_reason"):
                self._stop = FINISH_TO_STOP.get(choice["finish_reason"], "end_turn")
        if event.get("usage"):
            self.usage = usage_from_chat(event["usage"])
        return out

    def finish(self) -> list[Json]:
        if self._stop is None:
            return self.fail_events("The provider's stream ended early.")
        usage = anthropic_usage(self.usage or TokenUsage())
        delta = {"stop_reason": self._stop, "stop_sequence": None}
        return [
            {"type": "content_block_stop", "index": 0},
            {"type": "message_delta", "delta": delta, "usage": usage},
            {"type": "message_stop"},
        ]

    def fail(self, error: ProxyError) -> list[Json]:
        return self.fail_events(error.message)

    @staticmethod
    def fail_events(message: str) -> list[Json]:
        return [{"type": "error", "error": {"type": "api_error", "message": message}}]


@contextmanager
def registered(*codecs: Codec) -> Iterator[None]:
    """``codecs`` in the registry while the block runs (Routers built inside see them)."""
    saved = dict(translate.CODECS)
    translate.CODECS.clear()
    translate.CODECS.update({(c.client, c.provider): c for c in codecs})
    try:
        yield
    finally:
        translate.CODECS.clear()
        translate.CODECS.update(saved)
