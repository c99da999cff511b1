"""The built-in offline ``echo`` provider: real wire formats, no network, no keys.

It answers all three APIs natively (Chat Completions, Messages, Responses; JSON and SSE,
with usage), and completions, embeddings and count_tokens, by echoing the last user
message, calling a tool when offered one, and answering structured output with a minimal
object of the schema (``_echo_answer``). So the demo and the tests exercise the whole stack,
down to a transport, without a provider. Answers are deterministic: the same request gives
the same text, ids and token counts. A request of the wrong shape gets a 400 in its API's
error format, so the SDKs raise their typed errors.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from llm_proxy_mw.errors import InvalidRequestError, NotFoundError, ProxyError
from llm_proxy_mw.transports._base import UpstreamRequest, UpstreamResponse
from llm_proxy_mw.transports._echo_answer import EchoAnswer
from llm_proxy_mw.transports._echo_chat import chat, completion
from llm_proxy_mw.transports._echo_embeddings import embeddings
from llm_proxy_mw.transports._echo_messages import count_tokens, messages
from llm_proxy_mw.transports._echo_prompts import (
    read_chat,
    read_completion,
    read_messages,
    read_responses,
)
from llm_proxy_mw.transports._echo_responses import responses
from llm_proxy_mw.transports._echo_wire import JSON_HEADERS, Rendered
from llm_proxy_mw.wire import WireFormat, error_body

__all__ = ["EchoTransport"]


def _answer(endpoint: str, body: dict[str, Any], raw: bytes) -> Rendered | None:
    """The rendered answer of ``endpoint``; ``None`` for one the echo does not serve."""
    if endpoint == "chat/completions":
        return chat(EchoAnswer(body, raw, read_chat(body)))
    if endpoint == "messages":
        return messages(EchoAnswer(body, raw, read_messages(body)))
    if endpoint == "responses":
        return responses(EchoAnswer(body, raw, read_responses(body)), body)
    if endpoint == "completions":
        return completion(EchoAnswer(body, raw, read_completion(body)))
    if endpoint == "embeddings":
        return embeddings(body)
    if endpoint == "messages/count_tokens":
        return count_tokens(body)
    return None


def _response(
    status: int, headers: list[tuple[bytes, bytes]], chunks: list[bytes]
) -> UpstreamResponse:
    parts: Iterator[bytes] = iter(chunks)
    if len(chunks) == 1:
        headers = [*headers, (b"content-length", str(len(chunks[0])).encode())]

    async def read_chunk() -> bytes:
        return next(parts, b"")

    return UpstreamResponse(status, headers, read_chunk)


def _error(error: ProxyError, endpoint: str) -> UpstreamResponse:
    """``error`` in the format of the API that ``endpoint`` belongs to."""
    anthropic = endpoint == "messages" or endpoint.startswith("messages/")
    body = error_body(error, WireFormat.ANTHROPIC if anthropic else WireFormat.OPENAI)
    return _response(error.status_code, JSON_HEADERS, [body])


class EchoTransport:
    """``UpstreamTransport`` that answers locally; it serves both wire formats."""

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        path = urlsplit(request.url).path
        endpoint = path.rsplit("/v1/", 1)[-1] if "/v1/" in path else path.lstrip("/")
        if request.method != "POST":
            message = f"The echo provider does not serve {request.method} /{endpoint}."
            return _error(NotFoundError(message), endpoint)
        try:
            raw = request.body
            try:
                if not isinstance(raw, bytes):  # an upload's chunks: never read here
                    raise ValueError
                body = json.loads(raw or b"{}")
            except (ValueError, RecursionError):  # an upload's body reaches here unparsed
                raise InvalidRequestError("The echo provider expects a JSON body.") from None
            if not isinstance(body, dict):
                raise InvalidRequestError("The echo provider expects a JSON object.")
            answer = _answer(endpoint, body, raw)
        except InvalidRequestError as error:
            return _error(error, endpoint)
        if answer is None:
            return _error(NotFoundError(f"The echo provider does not serve /{endpoint}."), endpoint)
        return _response(200, *answer)

    async def aclose(self) -> None:
        return None
