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
from llm_proxy_mw.errors import InvalidRequestError, ProxyError
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
from llm_proxy_mw.translate._mappings import responses_usage
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
    Messages, each way. What the Chat hub cannot say is taken from the Messages side: an
    error names the Responses field the client sent, and the usage is Anthropic's own
    (the hub's Chat usage has no place for cache writes)."""

    client = Api.RESPONSES
    provider = Api.MESSAGES

    def request(self, body: Json, target: Target) -> Json:
        hub = responses_request_to_chat(body, target)
        try:
            return chat_request_to_messages(hub, target)
        except InvalidRequestError as error:
            raise _in_responses_terms(error) from None

    def response(self, body: Json, request: Json) -> tuple[Json, TokenUsage | None]:
        chat, usage = messages_response_to_chat(body)
        answer, _ = chat_response_to_responses(chat, request)
        answer["usage"] = responses_usage(usage)
        return answer, usage

    def stream(self, request: Json) -> StreamTranslator:
        return _Chained(request)


class _Chained:
    """Anthropic's events to Chat chunks, and those to Responses events. The Response's
    usage is the first stage's (Anthropic's counts, cache writes included), so the hub
    stream carries no usage chunk. Once the second stage has sent its terminal event it
    sends nothing more, so whatever the first stage emits at its end (an error chunk for a
    cut stream), the client gets exactly one terminal event."""

    __slots__ = ("_first", "_second")

    def __init__(self, request: Json) -> None:
        self._first = MessagesEventsToChat({"model": request.get("model")})
        self._second = ChatChunksToResponses(request)

    @property
    def usage(self) -> TokenUsage | None:
        return self._first.usage

    def feed_raw(self, data: bytes) -> bytes | None:
        """A raw delta event, when both stages take their fast path; an event the first
        stage is quiet about."""
        delta = self._first.hub_delta(data)
        if delta is None:
            return b"" if self._first.quiet(data) else None
        # The first stage's state is as feed leaves it: if the second declines, feed does it.
        return self._second.feed_delta(delta)

    def feed(self, event: Json) -> list[Json]:
        hub_events = self._first.feed(event)
        if len(hub_events) != 1:  # none, or (never yet) several
            return self._relay(hub_events) if hub_events else hub_events
        second = self._second
        second.usage = self._first.usage
        return second.feed(hub_events[0])

    def finish(self) -> list[Json]:
        out = self._relay(self._first.finish())
        return out + self._second.finish()

    def fail(self, error: ProxyError) -> list[Json]:
        self._second.usage = self._first.usage
        return self._second.fail(error)

    def _relay(self, hub_events: list[Json]) -> list[Json]:
        second = self._second
        second.usage = self._first.usage
        out: list[Json] = []
        for hub_event in hub_events:
            out += second.feed(hub_event)
        return out


#: The hub's Chat Completions names of what a Responses client sent, by prefix.
_RESPONSES_NAMES = (
    ("reasoning_effort", "reasoning.effort"),
    ("max_completion_tokens", "max_output_tokens"),
    ("max_tokens", "max_output_tokens"),
    ("response_format.json_schema", "text.format"),
    ("response_format", "text.format"),
)


def _in_responses_terms(error: InvalidRequestError) -> InvalidRequestError:
    """``error``, raised by Chat to Messages for a hub body, as it reads to the Responses
    client: naming the field it sent (``reasoning.effort``, not ``reasoning_effort``)."""
    hub = error.param
    if hub is None:
        return error
    rest = error.message.removeprefix(f"{hub}: ")
    for old, new in _RESPONSES_NAMES[:2]:
        rest = rest.replace(old, new)
    param = _responses_param(hub)
    where = f"`{param}`"
    part = hub.partition(".")[2]
    if param == "input" and part:  # a hub message's index is no item's: tell the part
        where += f" ({part})"
    return type(error)(f"{where}: {rest}", param=param)


def _responses_param(hub: str) -> str:
    """The Responses parameter a hub parameter came from."""
    if hub.startswith("messages"):
        return "input"
    if hub.startswith("tools[") and ".function." in hub:
        return hub.replace(".function.", ".", 1)
    for old, new in _RESPONSES_NAMES:
        if hub == old or hub.startswith((f"{old}.", f"{old}[")):
            return new + hub[len(old) :]
    return hub


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
