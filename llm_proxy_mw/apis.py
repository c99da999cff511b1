"""The three LLM APIs a client may call, which the proxy translates between.

A wire format (``wire.py``) says how errors look; an ``Api`` says what a request and its
response mean. Chat Completions and Responses share OpenAI's wire format, yet a provider may
speak one and not the other (vLLM serves Chat Completions only). Every other endpoint
(embeddings, files, count_tokens, ...) has no ``Api``: it reaches only providers that speak
it natively.
"""

from __future__ import annotations

import enum

__all__ = ["API_PATHS", "Api", "api_of"]


class Api(enum.Enum):
    CHAT = "chat"  # OpenAI Chat Completions, POST /v1/chat/completions
    MESSAGES = "messages"  # Anthropic Messages, POST /v1/messages
    RESPONSES = "responses"  # OpenAI Responses, POST /v1/responses


#: The route path of each API's create endpoint.
API_PATHS: dict[str, Api] = {
    "/v1/chat/completions": Api.CHAT,
    "/v1/messages": Api.MESSAGES,
    "/v1/responses": Api.RESPONSES,
}


def api_of(route_path: str) -> Api | None:
    """The API a route path creates a completion with; ``None`` for every other endpoint."""
    return API_PATHS.get(route_path)
