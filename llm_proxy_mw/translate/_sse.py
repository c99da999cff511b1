"""Server-sent events in and out of a translated stream: the upstream's bytes parsed into
event objects as they arrive, and a translator's events framed for the client's API.

The parser takes the bytes in whatever pieces the network delivers: an event, a line, even
a CRLF pair may be cut anywhere. It keeps only the unfinished event, bounded
(``max_event_bytes``, past it an ``UpstreamProtocolError``), so a stream of any length costs
flat memory. Comments, ``event:``/``id:``/``retry:`` fields and data that is not a JSON
object are dropped (every API here names its events inside their data); OpenAI's
``data: [DONE]`` ends the stream (``done``). ``feed_data`` hands over each event's raw
``data`` instead, for a translator's byte-level fast path (``parse_data`` is what ``feed``
makes of it).
"""

from __future__ import annotations

import json

from llm_proxy_mw.apis import Api
from llm_proxy_mw.errors import UpstreamProtocolError
from llm_proxy_mw.translate._codec import Json

__all__ = [
    "DONE_FRAME",
    "MAX_EVENT_BYTES",
    "SseParser",
    "compact_json",
    "frame_events",
    "parse_data",
]

#: An upstream event larger than this is refused: no real one comes near it.
MAX_EVENT_BYTES = 4 * 1024 * 1024
#: What ends a Chat Completions stream that ended well.
DONE_FRAME = b"data: [DONE]\n\n"


class SseParser:
    """Feed it every chunk of an SSE body; it returns each complete event's data object."""

    __slots__ = ("done", "_rest", "_max")

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        #: Whether ``data: [DONE]`` arrived (what follows it is ignored).
        self.done = False
        self._rest = b""
        self._max = max_event_bytes

    def feed(self, chunk: bytes) -> list[Json]:
        """The events that ``chunk`` completed, in order."""
        return _parsed(self.feed_data(chunk))

    def close(self) -> list[Json]:
        """The last event, when the body ended without the blank line that ends it."""
        return _parsed(self.close_data())

    def feed_data(self, chunk: bytes) -> list[bytes]:
        """The ``data`` of each event that ``chunk`` completed, in order, unparsed."""
        # The usual read: one whole event, its one data line after its name line, if any.
        # (13 is CR: a byte is found faster than a one-byte string.)
        if not self._rest and not self.done and 13 not in chunk and chunk.endswith(b"\n\n"):
            end = len(chunk) - 2
            first = chunk.find(b"\n")
            one = None
            if chunk.startswith(b"event:"):
                if chunk.startswith(b"data: ", first + 1) and chunk.find(b"\n", first + 1) == end:
                    one = chunk[first + 7 : end]
            elif first == end and chunk.startswith(b"data: "):
                one = chunk[6:end]
            if one is not None and one != b"[DONE]":
                return [one]
        data = self._rest + chunk if self._rest else chunk
        if 13 in data:
            # A CR at the very end may be the first half of a CRLF: it waits for the next read.
            held = data.endswith(b"\r")
            data = data[:-1] if held else data
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            if held:
                data += b"\r"
        *blocks, rest = data.split(b"\n\n")
        if len(rest) > self._max:
            raise UpstreamProtocolError(f"An upstream event exceeds {self._max} bytes.")
        self._rest = rest
        return self._datas(blocks)

    def close_data(self) -> list[bytes]:
        """The last event's ``data``, when the body ended without the blank line that ends it."""
        rest, self._rest = self._rest.rstrip(b"\r\n"), b""
        return self._datas([rest]) if rest else []

    def _datas(self, blocks: list[bytes]) -> list[bytes]:
        datas: list[bytes] = []
        for block in blocks:
            if self.done:
                break
            data = _data_of(block)
            if data is None:
                continue
            if data == b"[DONE]":
                self.done = True
                break
            datas.append(data)
        return datas


def parse_data(data: bytes) -> Json | None:
    """An event's ``data`` as its JSON object; None for anything else (nothing a translator
    could use)."""
    try:
        # SSE is UTF-8: decoding here spares json.loads its encoding detection.
        event = json.loads(data.decode())
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


def _parsed(datas: list[bytes]) -> list[Json]:
    return [event for data in datas if (event := parse_data(data)) is not None]


def _data_of(block: bytes) -> bytes | None:
    """The ``data`` of one event block: its data lines joined by newlines."""
    if block.startswith(b"data:"):
        if 10 not in block:  # the usual one-line event (10 is LF)
            return block[6:] if block.startswith(b"data: ") else block[5:]
    elif block.startswith(b"event:"):  # the usual named event: one name line, one data line
        start = block.find(b"\n") + 1
        if block.startswith(b"data:", start) and block.find(b"\n", start) < 0:
            start += 5
            return block[start + 1 :] if block.startswith(b" ", start) else block[start:]
    lines = [
        line[6:] if line.startswith(b"data: ") else line[5:]
        for line in block.split(b"\n")
        if line.startswith(b"data:")
    ]
    return b"\n".join(lines) if lines else None


def frame_events(api: Api, events: list[Json]) -> bytes:
    """``events`` as the client's API frames them: Chat Completions sends bare ``data:``
    lines; Messages and Responses name each event by its ``type``."""
    if api is Api.CHAT:
        return b"".join(b"data: " + compact_json(event) + b"\n\n" for event in events)
    return b"".join(
        b"event: " + _name(event.get("type")) + b"\ndata: " + compact_json(event) + b"\n\n"
        for event in events
    )


def _name(kind: object) -> bytes:
    """An event's ``type`` as its SSE name; one that would break the framing is not used."""
    if isinstance(kind, str) and kind.isascii() and "\n" not in kind and "\r" not in kind:
        return kind.encode()
    return b"message"


#: ``json.dumps(..., separators=...)`` builds an encoder per call: one serves every event.
#: What it encodes is a tree the translators built from parsed JSON, which cannot hold a
#: cycle, so the encoder skips the check for one (a fifth of its time per event).
_encode = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode


def compact_json(event: Json) -> bytes:
    """``event`` as compact JSON bytes, as the translated bodies and events are sent."""
    return _encode(event).encode()
