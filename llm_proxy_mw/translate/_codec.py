"""What a translation is: a ``Codec`` between the client's API and the provider's.

A codec is named for the client's side: ``ChatToMessages`` serves a Chat Completions client
from a Messages provider. It translates the request body on the way out, and the response on
the way back: a JSON body whole, a stream event by event (``StreamTranslator``), never
buffered. Bodies and events are the parsed JSON objects; SSE framing is done once, around
the codec (``_sse.py``), so that codecs compose: Responses to Messages is Responses to Chat
followed by Chat to Messages.

Every input here is untrusted: the client's body was only parsed, not validated, and the
provider's answer may be anything. A translator never raises on a provider's odd event
(it drops what it cannot use); it raises ``UntranslatableError`` (400, naming the parameter)
for a client parameter the provider's API has no equivalent for, before anything is sent,
and ``InvalidRequestError`` for a client body of the wrong shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from llm_proxy_mw.apis import Api
from llm_proxy_mw.errors import ProxyError

__all__ = ["Codec", "Json", "StreamTranslator", "Target", "TokenUsage"]

#: A parsed JSON object: a request or response body, or one event of a stream.
Json = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Target:
    """Where a translated request goes: the model to ask for (a fallback model may differ
    from the client's), and the provider's options that translation needs."""

    model: str
    #: Anthropic requires ``max_tokens``; this is sent when the client set none.
    default_max_tokens: int = 4096


@dataclass(slots=True)
class TokenUsage:
    """Tokens as OpenAI counts them: ``prompt_tokens`` include cached ones (Anthropic counts
    ``cache_read_input_tokens`` and ``cache_creation_input_tokens`` outside its
    ``input_tokens``; translation adds them in, once)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # of prompt_tokens, read from the cache
    cache_creation_tokens: int = 0  # of prompt_tokens, written to the cache
    reasoning_tokens: int = 0  # of completion_tokens, spent reasoning


class StreamTranslator(Protocol):
    """Translates one response stream: each upstream event in, the client's events out.

    ``feed`` gets each parsed upstream event (its ``data`` object; OpenAI's ``[DONE]`` is
    not fed) and returns the events to send now, in the client API's shape, in order.
    ``finish`` is called once when the upstream stream ended (``[DONE]``, or the end of the
    body), and returns the closing events; a stream that ended before its API's final event
    (no ``finish_reason``, no ``message_stop``) closes as the client's API closes a stream
    that failed. ``fail`` is called instead of ``finish`` when the upstream failed mid-stream
    and returns the client API's terminal error events. ``usage`` is the provider's token
    count seen so far, whether or not the client asked to see it.
    """

    @property
    def usage(self) -> TokenUsage | None: ...

    def feed(self, event: Json) -> list[Json]: ...

    def finish(self) -> list[Json]: ...

    def fail(self, error: ProxyError) -> list[Json]: ...


class Codec(Protocol):
    """Translates between a client of ``client`` and a provider of ``provider``."""

    client: Api
    provider: Api

    def request(self, body: Json, target: Target) -> Json:
        """The provider's request body for the client's ``body``, asking for
        ``target.model``. Raises ``UntranslatableError`` for what cannot be translated."""
        ...

    def response(self, body: Json, request: Json) -> tuple[Json, TokenUsage | None]:
        """The client's JSON response for the provider's ``body`` (a 2xx answer), and its
        usage; ``request`` is the client's request body (Responses echoes its parameters)."""
        ...

    def stream(self, request: Json) -> StreamTranslator:
        """A translator for one streamed response to the client's ``request``."""
        ...
