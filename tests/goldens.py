"""Golden translation cases, and the official SDKs' own types to validate them with.

A case is one JSON file under ``tests/goldens/<direction>/``, where the direction names the
client's API then the provider's (``chat_to_messages``: a Chat Completions client served by
a Messages provider). Its keys, each optional but the first:

- ``description``: what the case covers (a row of the issue's contract).
- ``target``: ``{"model", "default_max_tokens"}``, the ``Target`` the request is sent to
  (default: the client's model, 4096).
- ``client_request`` and ``provider_request``: the client's body and what the provider gets.
- ``provider_response`` and ``client_response``: a JSON answer, both sides.
- ``provider_events`` and ``client_events``: a stream, both sides (each event's ``data``
  object; OpenAI's ``[DONE]`` is not an event).
- ``error``: ``{"param": ...}`` when the request is refused with ``UntranslatableError``.

Each object is validated by the SDK type of its API: request bodies by the SDKs' create
params (TypedDicts, with no top-level key they do not know), responses by ``ChatCompletion``,
``Message`` and ``Response``, events by the stream event unions.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from anthropic.types import Message, RawMessageStreamEvent
from anthropic.types import message_create_params as messages_params
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.chat import completion_create_params as chat_params
from openai.types.responses import Response, ResponseStreamEvent
from openai.types.responses import response_create_params as responses_params
from pydantic import TypeAdapter

from llm_proxy_mw.apis import Api

__all__ = ["GOLDENS", "cases", "validate_event", "validate_request", "validate_response"]

GOLDENS = Path(__file__).parent / "goldens"

_REQUESTS: dict[Api, Any] = {
    Api.CHAT: chat_params.CompletionCreateParamsNonStreaming,
    Api.MESSAGES: messages_params.MessageCreateParamsNonStreaming,
    Api.RESPONSES: responses_params.ResponseCreateParamsNonStreaming,
}
_RESPONSES: dict[Api, Any] = {
    Api.CHAT: ChatCompletion,
    Api.MESSAGES: Message,
    Api.RESPONSES: Response,
}
_EVENTS: dict[Api, Any] = {
    Api.CHAT: ChatCompletionChunk,
    Api.MESSAGES: RawMessageStreamEvent,
    Api.RESPONSES: ResponseStreamEvent,
}


def cases(direction: str, *keys: str) -> list[Any]:
    """The cases of ``direction`` that have every one of ``keys``, as pytest params."""
    paths = sorted((GOLDENS / direction).glob("*.json"))
    loaded = [(p.stem, json.loads(p.read_text())) for p in paths]
    return [pytest.param(case, id=name) for name, case in loaded if all(k in case for k in keys)]


@cache
def _adapter(kind: Any) -> TypeAdapter[Any]:
    return TypeAdapter(kind)


def validate_request(api: Api, body: dict[str, Any]) -> None:
    """Raise unless ``body`` is a create request of ``api`` by its SDK's own params type,
    with no top-level key the type does not declare (``stream`` included)."""
    kind = _REQUESTS[api]
    known = kind.__required_keys__ | kind.__optional_keys__ | {"stream"}
    unknown = body.keys() - known
    assert not unknown, f"not a {api.value} request parameter: {sorted(unknown)}"
    adapter = _adapter(kind)
    # The params declare Iterable fields, which validate lazily: dumping consumes them.
    adapter.dump_python(adapter.validate_python({k: v for k, v in body.items() if k != "stream"}))


def validate_response(api: Api, body: dict[str, Any]) -> None:
    """Raise unless ``body`` parses as ``api``'s response type."""
    _RESPONSES[api].model_validate(body)


def validate_event(api: Api, event: dict[str, Any]) -> None:
    """Raise unless ``event`` parses as one of ``api``'s stream events (Anthropic's ``ping``
    and ``error`` events, which its union leaves out, are checked by hand)."""
    if api is Api.MESSAGES and event.get("type") in ("ping", "error"):
        if event["type"] == "error":
            assert isinstance(event.get("error", {}).get("message"), str), event
        return
    _adapter(_EVENTS[api]).validate_python(event)
