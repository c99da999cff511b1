"""The stream translators' fast path: the delta events that make up nearly all of a stream
(text, tool-call arguments, thinking), recognised in their raw bytes.

Parsing an event and encoding what it became costs several times what translating it
does, so a translator first offers each event's raw ``data`` here. A delta is recognised
only in the exact compact layout the providers write (Anthropic's
``{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"..."}}``,
OpenAI's chunks with one choice and one delta key); any other layout (another key order,
spaces, extra keys) is not recognised, and the translator takes its usual path: slower,
never different. The text's JSON string literal is checked by the ``json`` module's own
scanner, strictly (no control characters, so no raw newline can break the SSE framing), and
comes back both as it was sent, to be copied into the client's event as it is, and decoded,
for the text a translator accumulates.
"""

from __future__ import annotations

import json
import json.decoder
from collections.abc import Callable

__all__ = [
    "ARGUMENTS",
    "PING",
    "REASONING",
    "TEXT",
    "AnthropicDeltaLayout",
    "ChatChunkLayout",
    "RawDelta",
    "block_stop_index",
]

#: What a delta carries: answer text, thinking text, or a fragment of a tool call's arguments.
TEXT, REASONING, ARGUMENTS = 0, 1, 2

#: A recognised delta: its kind, its index (Anthropic's content block, or OpenAI's tool call;
#: 0 for a Chat text delta), its JSON string literal as sent (quotes included), its text.
RawDelta = tuple[int, int, bytes, str]

#: The ``json`` module's string scanner (C), strict: (text, index past the closing quote).
#: typeshed leaves it out, although ``json.decoder`` has exported it forever.
_scanstring: Callable[[str, int], tuple[str, int]] = json.decoder.scanstring  # type: ignore[attr-defined]

_ANTHROPIC_HEAD = b'{"type":"content_block_delta","index":'
_ANTHROPIC_STOP = b'{"type":"content_block_stop","index":'
#: Anthropic's keep-alive event, as it sends it.
PING = b'{"type":"ping"}'
_ANTHROPIC_DELTA = b',"delta":{"type":"'
#: Anthropic's delta types, and what follows each type's name up to its text.
_ANTHROPIC_KINDS = {
    b"text_delta": (b'","text":', TEXT),
    b"input_json_delta": (b'","partial_json":', ARGUMENTS),
    b"thinking_delta": (b'","thinking":', REASONING),
}


class AnthropicDeltaLayout:
    """Recognises one stream's ``content_block_delta`` events. Deltas come in runs to one
    block, so the head of the last one recognised (up to its text) is kept, and a delta to
    the same block is one comparison away from its literal."""

    __slots__ = ("_head", "_start", "_kind", "_index")

    def __init__(self) -> None:
        # A head that is right for any stream (untrusted data may start with anything).
        self._head = _ANTHROPIC_HEAD + b'0,"delta":{"type":"text_delta","text":'
        self._start = len(self._head)  # where the literal starts
        self._kind = TEXT
        self._index = 0

    def delta(self, data: bytes) -> RawDelta | None:
        """A ``content_block_delta`` event's text, thinking or tool input, from its raw
        data."""
        if not data.startswith(self._head) and not self._learn(data):
            return None
        start = self._start
        if not data.endswith(b'"}}') or data[start] != 34:  # the literal's opening quote
            return None
        literal = data[start:-2]
        try:  # _checked, inline: this is the stream's hottest line
            source = literal.decode()
            text, end = _scanstring(source, 1)
        except ValueError:
            return None
        return (self._kind, self._index, literal, text) if end == len(source) else None

    def _learn(self, data: bytes) -> bool:
        """Whether ``data`` starts as a delta event does; if so its head is kept."""
        if not data.startswith(_ANTHROPIC_HEAD):
            return False
        start = len(_ANTHROPIC_HEAD)
        comma = data.find(b",", start)
        index = _index(data, start, comma)
        if index is None or not data.startswith(_ANTHROPIC_DELTA, comma):
            return False
        name_start = comma + len(_ANTHROPIC_DELTA)
        name_end = data.find(b'"', name_start)
        known = _ANTHROPIC_KINDS.get(data[name_start:name_end])
        if known is None or not data.startswith(known[0], name_end):
            return False
        self._start = name_end + len(known[0])
        self._head = data[: self._start]
        self._kind, self._index = known[1], index
        return True


def block_stop_index(data: bytes) -> int | None:
    """The index of a ``content_block_stop`` event, from its raw data."""
    if not data.startswith(_ANTHROPIC_STOP) or not data.endswith(b"}"):
        return None
    return _index(data, len(_ANTHROPIC_STOP), len(data) - 1)


_CHOICES = b',"choices":[{"index":0,"delta":{'
#: How a delta's one key starts, and the kind of delta.
_CHAT_DELTAS = (
    (b'"content":', TEXT),
    (b'"role":"assistant","content":', TEXT),  # Ollama repeats the role
    (b'"reasoning_content":', REASONING),
    (b'"reasoning":', REASONING),  # vLLM's and OpenRouter's name for it
)
_CHAT_CALL = b'"tool_calls":[{"index":'
_CHAT_ARGUMENTS = b',"function":{"arguments":'
#: Chunk keys that the prefix before ``choices`` must not hold: the translators read them.
_READ_KEYS = frozenset({"choices", "usage", "error"})


def _chunk_ends(delta_end: str) -> frozenset[str]:
    """What may follow a Chat delta's literal, up to the end of the chunk (after an
    ``obfuscation`` member, which is taken out first)."""
    choice_ends = (
        ',"logprobs":null,"finish_reason":null}',
        ',"finish_reason":null,"logprobs":null}',
        ',"finish_reason":null}',
        "}",
    )
    return frozenset(
        delta_end + choice + "]" + usage + "}"
        for choice in choice_ends
        for usage in ("", ',"usage":null')
    )


_TEXT_ENDS = _chunk_ends("}")
_ARGUMENTS_ENDS = _chunk_ends("}}]}")
_OBFUSCATION = ',"obfuscation":"'


class ChatChunkLayout:
    """Recognises one stream's ``chat.completion.chunk`` deltas. What comes before
    ``choices`` (id, object, created, model, fingerprint) is the same in every chunk of a
    stream: it is checked once, by the ``json`` parser, and then compared. Deltas come in
    runs of one kind, so the last one's bytes around its literal are kept too."""

    __slots__ = ("_prefix", "_head", "_tail", "_kind", "_index")

    def __init__(self) -> None:
        self._prefix = b""
        self._head = self._tail = b""  # none yet (a delta's tail never is empty)
        self._kind = TEXT
        self._index = 0

    def delta(self, data: bytes) -> RawDelta | None:
        """The chunk's one text, reasoning or tool-argument delta, from its raw data."""
        if self._tail and data.startswith(self._head) and data.endswith(self._tail):
            literal = data[len(self._head) : len(data) - len(self._tail)]
            text = _checked(literal)
            return None if text is None else (self._kind, self._index, literal, text)
        split = data.find(_CHOICES)
        if split < 0:
            return None
        if len(self._prefix) != split + 1 or not data.startswith(self._prefix):
            if not _plain_members(data[:split]):
                return None
            self._prefix = data[: split + 1]
        pos = split + len(_CHOICES)
        if data.startswith(_CHAT_CALL, pos):
            comma = data.find(_CHAT_ARGUMENTS, pos)
            index = _index(data, pos + len(_CHAT_CALL), comma)
            if index is None:
                return None
            return self._learn(data, comma + len(_CHAT_ARGUMENTS), ARGUMENTS, index)
        for head, kind in _CHAT_DELTAS:
            if data.startswith(head, pos):
                return self._learn(data, pos + len(head), kind, 0)
        return None

    def _learn(self, data: bytes, start: int, kind: int, index: int) -> RawDelta | None:
        """The delta whose literal starts at ``start``, if the chunk ends as a delta chunk
        does; if so, the bytes around the literal are kept."""
        if data[start : start + 1] != b'"':
            return None
        try:
            rest = data[start:].decode()
            text, end = _scanstring(rest, 1)
        except ValueError:
            return None
        tail = rest[end:]
        ends = _ARGUMENTS_ENDS if kind == ARGUMENTS else _TEXT_ENDS
        if tail not in ends:
            cut = tail.rfind(_OBFUSCATION)
            noise = tail[cut + len(_OBFUSCATION) : -2]
            if cut < 0 or not tail.endswith('"}') or not (noise.isascii() and noise.isalnum()):
                return None
            if tail[:cut] + "}" not in ends:
                return None
        literal_end = len(data) - len(tail)
        self._head, self._tail = data[:start], data[literal_end:]
        self._kind, self._index = kind, index
        return kind, index, data[start:literal_end], text


def _plain_members(head: bytes) -> bool:
    """Whether ``head`` (a chunk up to the comma before ``choices``) is the start of a JSON
    object holding none of the keys a translator reads."""
    try:
        members = json.loads((head + b"}").decode())
    except ValueError:
        return False
    return isinstance(members, dict) and not (members.keys() & _READ_KEYS)


def _index(data: bytes, start: int, end: int) -> int | None:
    """The JSON integer ``data[start:end]``, if it is a small non-negative one."""
    digits = data[start:end]
    if end < 0 or not (0 < len(digits) < 10 and digits.isdigit()):
        return None
    if digits[0] == 48 and len(digits) > 1:  # a leading zero is no JSON number
        return None
    return int(digits)


def _checked(literal: bytes) -> str | None:
    """The text of ``literal``, if it is exactly one JSON string literal."""
    if literal[:1] != b'"':
        return None
    try:
        source = literal.decode()
        text, end = _scanstring(source, 1)
    except ValueError:
        return None
    return text if end == len(source) else None
