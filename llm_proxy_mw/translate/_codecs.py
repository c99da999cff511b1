"""The codecs: each pair of a client's API and a provider's API that the proxy translates
between, assembled from the request, response and stream translators.

Chat Completions is the hub: Responses reaches a Messages provider through it, its
extensions (``reasoning_content``, ``thinking_blocks``, ``cache_control``) carrying what
Chat Completions itself has no field for. A real Chat Completions provider never sees
them.
"""

from __future__ import annotations

from typing import Any

from llm_proxy_mw.apis import Api
from llm_proxy_mw.errors import ProxyError
from llm_proxy_mw.translate._chat_messages_request import (
    chat_request_to_messages,
    messages_request_to_chat,
)
from llm_proxy_mw.translate._chat_messages_response import (
    chat_response_to_messages,
    messages_response_to_chat,
)
from llm_proxy_mw.translate._chat_messages_stream import (
    ChatChunksToMessages,
    MessagesEventsToChat,
)
from llm_proxy_mw.translate._codec import Codec, Json, StreamTranslator, Target, TokenUsage
from llm_proxy_mw.translate._responses_request import responses_request_to_chat
from llm_proxy_mw.translate._responses_response import chat_response_to_responses
from llm_proxy_mw.translate._responses_stream import ChatChunksToResponses

__all__ = ["BUILT_IN_CODECS"]


class ChatToMessages:
    """A Chat Completions client served by a Messages provider."""

    client = Api.CHAT
    provider = Api.MESSAGES

    def request(self, body: Json, target: Target) -> Json:
        return chat_request_to_messages(body, target)

    def response(self, body: Json, request: Json) -> tuple[Json, TokenUsage | None]:
        return messages_response_to_chat(body)

    def stream(self, request: Json) -> StreamTranslator:
        return MessagesEventsToChat(request)


class MessagesToChat:
    """A Messages client served by a Chat Completions provider."""

    client = Api.MESSAGES
    provider = Api.CHAT

    def request(self, body: Json, target: Target) -> Json:
        return messages_request_to_chat(body, target)

    def response(self, body: Json, request: Json) -> tuple[Json, TokenUsage | None]:
        return chat_response_to_messages(body)

    def stream(self, request: Json) -> StreamTranslator:
        return ChatChunksToMessages(request)


class ResponsesToChat:
    """A Responses client served by a Chat Completions provider (stateless)."""

    client = Api.RESPONSES
    provider = Api.CHAT

    def request(self, body: Json, target: Target) -> Json:
        return without_hub_extensions(responses_request_to_chat(body, target))

    def response(self, body: Json, request: Json) -> tuple[Json, TokenUsage | None]:
        return chat_response_to_responses(body, request)

    def stream(self, request: Json) -> StreamTranslator:
        return ChatChunksToResponses(request)


class ResponsesToMessages:
    """A Responses client served by a Messages provider: Responses to Chat, then Chat to
    Messages, each way."""

    client = Api.RESPONSES
    provider = Api.MESSAGES

    def request(self, body: Json, target: Target) -> Json:
        return chat_request_to_messages(responses_request_to_chat(body, target), target)

    def response(self, body: Json, request: Json) -> tuple[Json, TokenUsage | None]:
        chat, usage = messages_response_to_chat(body)
        answer, _ = chat_response_to_responses(chat, request)
        return answer, usage

    def stream(self, request: Json) -> StreamTranslator:
        # The hub stream always carries usage: the Response's completed event shows it.
        hub_request = {"model": request.get("model"), "stream_options": {"include_usage": True}}
        return _Chained(MessagesEventsToChat(hub_request), ChatChunksToResponses(request))


class _Chained:
    """Two stream translators in a row: what the first emits, the second is fed."""

    __slots__ = ("_first", "_second")

    def __init__(self, first: StreamTranslator, second: StreamTranslator) -> None:
        self._first = first
        self._second = second

    @property
    def usage(self) -> TokenUsage | None:
        return self._first.usage

    def feed(self, event: Json) -> list[Json]:
        out: list[Json] = []
        for hub_event in self._first.feed(event):
            out += self._second.feed(hub_event)
        return out

    def finish(self) -> list[Json]:
        out: list[Json] = []
        for hub_event in self._first.finish():
            out += self._second.feed(hub_event)
        return out + self._second.finish()

    def fail(self, error: ProxyError) -> list[Json]:
        return self._second.fail(error)


_MESSAGE_EXTENSIONS = ("reasoning_content", "thinking_blocks")


def without_hub_extensions(body: Json) -> Json:
    """``body`` for a real Chat Completions provider, which would refuse the hub's
    extensions: thinking on assistant messages, ``cache_control`` on content parts. Only
    the messages that carry one are copied."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return body
    kept = [_plain_message(m) if isinstance(m, dict) else m for m in messages]
    return {**body, "messages": kept}


def _plain_message(message: Json) -> Json:
    if any(key in message for key in _MESSAGE_EXTENSIONS):
        message = {k: v for k, v in message.items() if k not in _MESSAGE_EXTENSIONS}
    content = message.get("content")
    if isinstance(content, list) and any(
        isinstance(part, dict) and "cache_control" in part for part in content
    ):
        parts = [_without_cache_control(part) for part in content]
        message = {**message, "content": parts}
    return message


def _without_cache_control(part: Any) -> Any:
    if isinstance(part, dict) and "cache_control" in part:
        return {k: v for k, v in part.items() if k != "cache_control"}
    return part


BUILT_IN_CODECS: tuple[Codec, ...] = (
    ChatToMessages(),
    MessagesToChat(),
    ResponsesToChat(),
    ResponsesToMessages(),
)
