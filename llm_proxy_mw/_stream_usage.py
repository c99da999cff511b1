"""Streams are always counted: a Chat Completions stream whose client did not ask for usage
asks the provider for it, and the client gets the stream it would have got without it.

With ``stream_options.include_usage`` OpenAI adds ``"usage":null`` to every chunk and a last
chunk with ``"choices":[]`` and the usage, before ``[DONE]``. ``HiddenUsage`` takes both out
again, event by event (a partial event waits for its end, which SSE clients wait for anyway),
and puts the usage into the request's context, where Metrics finds it.
"""

from __future__ import annotations

import json
import re
from typing import Any

from llm_proxy_mw._usage import UsageReader
from llm_proxy_mw.context import RequestContext
from llm_proxy_mw.errors import InvalidRequestError

__all__ = ["MAX_PENDING", "HiddenUsage", "body_asking_usage"]

_CHAT_PATH = "/v1/chat/completions"
#: The most of one unfinished event kept back, so that memory stays flat whatever the
#: provider sends: past it the bytes go on as they are.
MAX_PENDING = 1024 * 1024
# The member with one of its commas; what the text of a message holds is escaped (\"), so
# only the chunk's own members match.
_NULL_USAGE = re.compile(rb',\s*"usage"\s*:\s*null(?=\s*[,}])|"usage"\s*:\s*null\s*,')
_EVENT_END = re.compile(rb"(\r?\n\r?\n)")
_NO_CHOICES = re.compile(rb'"choices"\s*:\s*\[\s*\]')
_USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*\{')


def body_asking_usage(ctx: RequestContext, model: str | None) -> bytes | None:
    """The body of a Chat stream that did not ask for usage, asking for it (and for
    ``model``, a fallback's, when given); ``None`` for any other request.

    Only behind Routing (``ctx.route``), which parsed the body already: alone, Upstream
    does not parse a body for this (a megabyte of JSON costs milliseconds)."""
    if ctx.route is None or ctx.route_path != _CHAT_PATH:
        return None
    try:
        body = ctx.json()
    except InvalidRequestError:
        return None  # the provider says what is wrong with it
    if body is None or body.get("stream") is not True:
        return None
    options: Any = body.get("stream_options")
    if options is None:
        options = {}
    elif not isinstance(options, dict) or options.get("include_usage") is True:
        return None  # the client asked, or sent what the provider refuses
    asked = {**body, "stream_options": {**options, "include_usage": True}}
    if model is not None:
        asked["model"] = model
    return json.dumps(asked, separators=(",", ":")).encode()


class HiddenUsage:
    """Removes what ``include_usage`` added from each read of the stream (``feed``), keeping
    an unfinished event until the read that ends it; ``finish`` gives back what is left."""

    __slots__ = ("_ctx", "_pending")

    def __init__(self, ctx: RequestContext) -> None:
        self._ctx = ctx
        self._pending = b""

    def taking(
        self, status: int, sse: bool, headers: list[tuple[bytes, bytes]]
    ) -> HiddenUsage | None:
        """Itself when the answer is a stream to take the usage out of, else ``None``: an
        error passes as it is, and so does what the provider compressed all the same. The
        stream's ``content-length``, if it had one, goes from ``headers``."""
        if status != 200 or not sse:
            return None
        for name, value in headers:
            if name == b"content-encoding" and value.lower() != b"identity":
                return None
        headers[:] = [h for h in headers if h[0] != b"content-length"]
        return self

    def feed(self, chunk: bytes) -> bytes:
        if not self._pending and chunk.endswith(b"\n\n"):
            whole = chunk  # the usual read: whole events
        else:
            data = self._pending + chunk
            lf, crlf = data.rfind(b"\n\n"), data.rfind(b"\r\n\r\n")
            end = max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)
            if not end:
                if len(data) > MAX_PENDING:  # not an event a provider sends: passed on
                    self._pending = b""
                    return data
                self._pending = data
                return b""
            self._pending = data[end:]
            whole = data[:end]
        if b'"usage"' not in whole:
            return whole
        parts = _EVENT_END.split(whole)
        # Events and their ends alternate; the split leaves an empty last part.
        return b"".join(
            self._kept(event) + ending
            for event, ending in zip(parts[::2], parts[1::2], strict=False)
            if not self._is_usage(event)
        )

    def finish(self) -> bytes:
        rest, self._pending = self._pending, b""
        return rest

    def _is_usage(self, event: bytes) -> bool:
        # Azure's content-filter chunk, say, has no choices either, and no usage object.
        if not _USAGE_OBJECT.search(event) or not _NO_CHOICES.search(event):
            return False
        reader = UsageReader(sse=True)
        reader.feed(event + b"\n\n")
        reader.fill(self._ctx.usage, anthropic=False)
        return True

    def _kept(self, event: bytes) -> bytes:
        return _NULL_USAGE.sub(b"", event) if b'"usage"' in event else event
