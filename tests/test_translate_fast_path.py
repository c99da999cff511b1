"""The stream translators' byte-level fast path (``feed_raw``) against their usual path.

Whatever the upstream sends, a stream translated with the fast path gives the client the
same events (parsed) as without it: every golden stream, any text in any encoding and any
fragmentation (hypothesis), and odd layouts, which the fast path leaves to the usual path.
And the fast path is really taken for the byte layouts the real providers write.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from llm_proxy_mw import errors
from llm_proxy_mw.apis import Api
from llm_proxy_mw.translate import CODECS
from llm_proxy_mw.translate import _messages_events_to_chat as messages_events_to_chat
from llm_proxy_mw.translate._codec import Json
from llm_proxy_mw.translate._sse import SseParser, compact_json, frame_events, parse_data
from tests.goldens import GOLDENS
from tests.test_translate_chat_messages_stream import anthropic_stream as anthropic_events

_APIS = {"chat": Api.CHAT, "messages": Api.MESSAGES, "responses": Api.RESPONSES}


@pytest.fixture(autouse=True)
def _fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both runs of a stream stamp the same ``created``, whenever the second ticks."""
    monkeypatch.setattr(messages_events_to_chat, "time", SimpleNamespace(time=lambda: 1.7e9))


@dataclass
class Run:
    """A translated stream as its client gets it: the events, parsed back from the framed
    bytes, and how many upstream events the fast path took."""

    events: list[Json] = field(default_factory=list)
    hits: int = 0


def run(
    direction: tuple[Api, Api],
    request: Json,
    body: bytes,
    *,
    fast: bool,
    cuts: list[int] | None = None,
    failure: errors.ProxyError | None = None,
) -> Run:
    """The provider's SSE ``body`` (read in pieces cut at ``cuts``, else one event per read)
    through the codec's translator, as the exchange drives it, with or without the fast
    path."""
    client = direction[0]
    translator = CODECS[direction].stream(request)
    parser = SseParser()
    result = Run()
    framed = b""
    if cuts is None:
        cuts = [i + 2 for i in range(len(body)) if body.startswith(b"\n\n", i)]
    bounds = [0, *sorted(cuts), len(body)]
    for start, end in zip(bounds, bounds[1:], strict=False):
        for data in parser.feed_data(body[start:end]):
            out = translator.feed_raw(data) if fast else None
            if out is None:
                event = parse_data(data)
                out = frame_events(client, translator.feed(event)) if event is not None else b""
            else:
                result.hits += 1
            framed += out
    closing = translator.finish() if failure is None else translator.fail(failure)
    framed += frame_events(client, closing)
    result.events = SseParser().feed(framed)
    return result


def both(direction: tuple[Api, Api], request: Json, body: bytes, **kw: Any) -> Run:
    """The fast run, once it is checked to give the client what the usual run gives."""
    slow = run(direction, request, body, fast=False, **kw)
    fast = run(direction, request, body, fast=True, **kw)
    assert fast.events == slow.events
    return fast


def sse(provider: Api, datas: list[bytes]) -> bytes:
    """Events' data framed as the provider frames them."""
    if provider is Api.CHAT:
        return b"".join(b"data: " + d + b"\n\n" for d in datas) + b"data: [DONE]\n\n"
    return b"".join(b"event: x\ndata: " + d + b"\n\n" for d in datas)


def _golden_streams() -> list[Any]:
    params = []
    for path in sorted(GOLDENS.glob("*/stream_*.json")):
        if "provider_events" not in json.loads(path.read_text()):
            continue  # a request's stream flag, not a stream
        client, provider = path.parent.name.split("_to_")
        params.append(pytest.param((_APIS[client], _APIS[provider]), path, id=path.stem))
    return params


@pytest.mark.parametrize(("direction", "path"), _golden_streams())
def test_every_golden_stream_gives_the_same_events_both_ways(
    direction: tuple[Api, Api], path: Path
) -> None:
    case = json.loads(path.read_text())
    body = sse(direction[1], [compact_json(e) for e in case["provider_events"]])
    failure = case.get("provider_failure")
    error = None if failure is None else getattr(errors, failure["error"])(failure["message"])
    fast = both(direction, case["client_request"], body, failure=error)
    assert fast.events  # the client got its stream


_BLOCKS = [
    b'data: {"a":1}',
    b'data:{"a":2}',
    b'event: x\ndata: {"a":3}',
    b'event: x\ndata:{"a":4}',
    b"event:x\ndata: {",
    b'data: {"a":\ndata: 5}',
    b'event: x\ndata: {"a":\ndata: 6}',
    b"event: x",
    b": a comment",
    b"",
    b"data: [DONE]",
    b'data: {"a":7}\r',
]


@given(st.lists(st.sampled_from(_BLOCKS), max_size=8), st.sampled_from([b"\n", b"\r\n"]))
def test_the_parser_reads_one_event_per_read_as_it_reads_them_all(
    blocks: list[bytes], newline: bytes
) -> None:
    """One event per read, its data as the fast path gets it, parses as a whole stream."""
    events = [block.replace(b"\n", newline) + newline + newline for block in blocks]
    parser = SseParser()
    one_by_one = []
    for event in events:
        if not parser.done:
            one_by_one += [e for d in parser.feed_data(event) if (e := parse_data(d)) is not None]
    assert one_by_one == SseParser().feed(b"".join(events))


# Streams whose deltas are any text, sent as the test draws it.

CHAT_TO_MESSAGES = (Api.CHAT, Api.MESSAGES)
MESSAGES_TO_CHAT = (Api.MESSAGES, Api.CHAT)
RESPONSES_TO_CHAT = (Api.RESPONSES, Api.CHAT)
RESPONSES_TO_MESSAGES = (Api.RESPONSES, Api.MESSAGES)
REQUESTS = {
    Api.CHAT: {"model": "m", "stream": True, "stream_options": {"include_usage": True}},
    Api.MESSAGES: {"model": "m", "stream": True, "max_tokens": 64},
    Api.RESPONSES: {"model": "m", "stream": True},
}


def literal(text: str, how: str) -> bytes:
    """``text`` as a JSON string: escaped to ASCII, as UTF-8, or pasted in raw (which may
    be no JSON at all: quotes, backslashes, control characters)."""
    if how == "ascii":
        return json.dumps(text).encode()
    if how == "utf8":
        return json.dumps(text, ensure_ascii=False).encode()
    return b'"' + text.encode("utf-8", "surrogatepass") + b'"'


def anthropic_stream(pieces: list[tuple[int, bytes]]) -> bytes:
    """A thinking block (0), a text block (1) and a tool call (2), each fed by the pieces
    of its kind (0: thinking, 1: text, 2: tool input), interleaved as drawn."""
    start = anthropic_events("tool_use")[0]  # message_start
    blocks = [
        {"type": "thinking", "thinking": "", "signature": ""},
        {"type": "text", "text": ""},
        {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}},
    ]
    datas = [compact_json(start), b'{"type":"ping"}']
    datas += [
        compact_json({"type": "content_block_start", "index": i, "content_block": b})
        for i, b in enumerate(blocks)
    ]
    kinds = (
        b'thinking_delta","thinking":',
        b'text_delta","text":',
        b'input_json_delta","partial_json":',
    )
    for index, lit in pieces:
        head = b'{"type":"content_block_delta","index":%d,"delta":{"type":"' % index
        datas.append(head + kinds[index] + lit + b"}}")
    datas += [compact_json({"type": "content_block_stop", "index": i}) for i in range(3)]
    delta = {"stop_reason": "tool_use", "stop_sequence": None}
    datas.append(
        compact_json({"type": "message_delta", "delta": delta, "usage": {"output_tokens": 9}})
    )
    datas.append(b'{"type":"message_stop"}')
    return sse(Api.MESSAGES, datas)


_CHUNK = (
    b'{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt",'
    b'"choices":[{"index":0,"delta":'
)


def chat_stream(pieces: list[tuple[int, bytes]]) -> bytes:
    """The role, then deltas of each kind as drawn (0: reasoning, 1: content, 2: the
    arguments of tool call 0, whose first chunk names it), the finish and the usage."""
    datas = [_CHUNK + b'{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}']
    named = False
    for kind, lit in pieces:
        if kind == 0:
            delta = b'{"reasoning_content":' + lit + b"}"
        elif kind == 1:
            delta = b'{"content":' + lit + b"}"
        elif named:
            delta = b'{"tool_calls":[{"index":0,"function":{"arguments":' + lit + b"}}]}"
        else:
            named = True
            call = b'{"index":0,"id":"call_1","type":"function","function":{"name":"f","arguments":'
            delta = b'{"tool_calls":[' + call + lit + b"}}]}"
        datas.append(_CHUNK + delta + b',"logprobs":null,"finish_reason":null}],"usage":null}')
    datas.append(_CHUNK + b'{},"logprobs":null,"finish_reason":"tool_calls"}],"usage":null}')
    usage = b'"usage":{"prompt_tokens":3,"completion_tokens":9,"total_tokens":12}}'
    datas.append(_CHUNK[: _CHUNK.index(b'"choices"')] + b'"choices":[],' + usage)
    return sse(Api.CHAT, datas)


_texts = st.text(
    alphabet=st.one_of(
        st.characters(codec="utf-8"),  # any code point that UTF-8 can carry
        st.sampled_from(['"', "\\", "\n", "\r", "\u2028", "\u2029", "\x00", "\x7f", "/", "é"]),
    ),
    max_size=12,
)
_pieces = st.lists(
    st.tuples(
        st.integers(0, 2),
        _texts,
        st.sampled_from(["ascii", "ascii", "utf8", "utf8", "raw"]),
    ),
    max_size=12,
)


@settings(max_examples=150, deadline=None)
@given(pieces=_pieces, cuts=st.lists(st.integers(0, 4000), max_size=6))
def test_any_text_and_fragmentation_gives_the_same_events_both_ways(
    pieces: list[tuple[int, str, str]], cuts: list[int]
) -> None:
    drawn = [(kind, literal(text, how)) for kind, text, how in pieces]
    anthropic = anthropic_stream(drawn)
    chat = chat_stream(drawn)
    for direction in (CHAT_TO_MESSAGES, RESPONSES_TO_MESSAGES):
        both(direction, REQUESTS[direction[0]], anthropic, cuts=[c % len(anthropic) for c in cuts])
    for direction in (MESSAGES_TO_CHAT, RESPONSES_TO_CHAT):
        both(direction, REQUESTS[direction[0]], chat, cuts=[c % len(chat) for c in cuts])


@given(text=_texts)
@example(text="\\ud800")  # a lone surrogate's escape: JSON, though no Unicode text
@example(text="\\ud83d\\ude00 \\/ \\b\u2028")
def test_a_raw_literal_is_taken_only_when_it_is_json(text: str) -> None:
    """A literal pasted in raw is taken exactly when it is a valid, strict JSON string: a
    raw newline or quote never reaches the client's framing."""
    raw = literal(text, "raw")
    stream = anthropic_stream([(1, raw)])
    fast = both(CHAT_TO_MESSAGES, REQUESTS[Api.CHAT], stream)
    try:
        valid = isinstance(json.loads(raw), str)
    except ValueError:
        valid = False
    # the text if it is JSON; the stops of the thinking and text blocks (not the tool
    # call's, which took no input: it gets arguments then)
    assert fast.hits == (1 if valid else 0) + 2 + 1  # and the ping


# The real providers' byte layouts, and odd ones.

_DELTA = b'{"type":"content_block_delta","index":'
ANTHROPIC_REAL = [
    _DELTA + b'0,"delta":{"type":"thinking_delta","thinking":"Let me"}}',
    _DELTA + b'1,"delta":{"type":"text_delta","text":"Hello, \\u00e9"}}',
    _DELTA + b'2,"delta":{"type":"input_json_delta","partial_json":"{\\"q\\": "}}',
]


def test_the_fast_path_takes_anthropics_own_deltas() -> None:
    body = anthropic_stream([(0, b'"Let me"'), (1, b'"Hello, \\u00e9"'), (2, b'"{\\"q\\": "')])
    assert all(d in body for d in ANTHROPIC_REAL)
    for direction in (CHAT_TO_MESSAGES, RESPONSES_TO_MESSAGES):
        fast = both(direction, REQUESTS[direction[0]], body)
        # the text and tool input, and the thinking once its item's summary part is open;
        # the three blocks' stops, the ping
        assert fast.hits == (3 if direction == CHAT_TO_MESSAGES else 1) + 3 + 1
    # three of each: the first thinking and text deltas open their items, the tool call's
    # item opened with its block
    more = anthropic_stream([(k, b'"x"') for k in (0, 1, 2) for _ in range(3)])
    assert both(RESPONSES_TO_MESSAGES, REQUESTS[Api.RESPONSES], more).hits == 2 + 2 + 3 + 3 + 1


#: A chunk as OpenAI, vLLM and Ollama write them: what precedes ``choices`` and what
#: follows the delta.
CHAT_LAYOUTS = {
    "openai": (
        b'{"id":"chatcmpl-B","object":"chat.completion.chunk","created":1733000000,'
        b'"model":"gpt-4o-mini-2024-07-18","service_tier":"default",'
        b'"system_fingerprint":"fp_0aa8d3e20b",',
        b',"logprobs":null,"finish_reason":null}],"usage":null,"obfuscation":"k2Qz"}',
    ),
    "vllm": (
        b'{"id":"chatcmpl-7f","object":"chat.completion.chunk","created":1733000000,'
        b'"model":"meta-llama/Llama-3.1-8B-Instruct",',
        b',"logprobs":null,"finish_reason":null}]}',
    ),
    "ollama": (
        b'{"id":"chatcmpl-42","object":"chat.completion.chunk","created":1733000000,'
        b'"model":"llama3.2","system_fingerprint":"fp_ollama",',
        b',"finish_reason":null}]}',
    ),
}


def _layout_datas(layout: str, deltas: list[bytes], odd: bytes = b"") -> list[bytes]:
    """A stream in ``layout``: the role, ``deltas``, ``odd`` as it is, a tool call."""
    head, tail = CHAT_LAYOUTS[layout]
    role = head + b'"choices":[{"index":0,"delta":{"role":"assistant","content":""}' + tail
    function = b'"function":{"name":"f","arguments":""}'
    call = b'{"tool_calls":[{"index":0,"id":"call_1","type":"function",' + function + b"}]}"
    datas = [role] + [head + b'"choices":[{"index":0,"delta":' + d + tail for d in deltas]
    datas += [odd] if odd else []
    datas.append(head + b'"choices":[{"index":0,"delta":' + call + tail)
    args = b'{"tool_calls":[{"index":0,"function":{"arguments":"{\\"a\\":1}"}}]}'
    datas.append(head + b'"choices":[{"index":0,"delta":' + args + tail)
    finish = b'"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}'
    datas.append(head + finish)
    return datas


@pytest.mark.parametrize("layout", sorted(CHAT_LAYOUTS))
def test_the_fast_path_takes_the_chat_providers_own_chunks(layout: str) -> None:
    texts = [b'{"content":"Hi"}', b'{"content":" there \\ud83d\\ude00"}', b'{"content":"!"}']
    if layout == "ollama":
        texts = [b'{"role":"assistant","content":"Hi"}', b'{"role":"assistant","content":"!"}']
    body = sse(Api.CHAT, _layout_datas(layout, texts))
    for direction in (MESSAGES_TO_CHAT, RESPONSES_TO_CHAT):
        fast = both(direction, REQUESTS[direction[0]], body)
        # every text delta but the first (it opens a block or an item), and the arguments
        assert fast.hits == len(texts)


ODD_ANTHROPIC = [
    b'{"type":"content_block_stop","index":2}',  # the tool call's, which took no input
    b'{"type":"content_block_stop","index":01}',
    b'{"type":"content_block_stop","index":1,"x":{}}',
    b'{"type":"ping"} ',
    b'"x"',
    b'-"x"}}',
    b'{"x"}}',
    b'{"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "x"}}',
    b'{"index":1,"type":"content_block_delta","delta":{"type":"text_delta","text":"x"}}',
    b'{"type":"content_block_delta","index":01,"delta":{"type":"text_delta","text":"x"}}',
    b'{"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"x","more":1}}',
    b'{"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"x"},"index":0}',
    b'{"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"a"b"}}',
    b'{"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"a\nb"}}',
    b'{"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"\\x"}}',
    b'{"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"\xff"}}',
    b'{"type":"content_block_delta","index":1,"delta":{"type":"citations_delta","text":"x"}}',
    b'{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"x"}}',
    b'{"type":"content_block_delta","index":7,"delta":{"type":"text_delta","text":"x"}}',
]


@pytest.mark.parametrize("odd", ODD_ANTHROPIC)
def test_odd_anthropic_layouts_take_the_usual_path(odd: bytes) -> None:
    body = anthropic_stream([(1, b'"x"')]).replace(
        b'"text":"x"}}', b'"text":"x"}}\n\nevent: x\ndata: ' + odd, 1
    )
    for direction in (CHAT_TO_MESSAGES, RESPONSES_TO_MESSAGES):
        both(direction, REQUESTS[direction[0]], body)
    translator = CODECS[CHAT_TO_MESSAGES].stream(REQUESTS[Api.CHAT])
    for data in SseParser().feed_data(anthropic_stream([])):
        if data.startswith(b'{"type":"content_block_stop"'):
            break
        translator.feed(json.loads(data))
    assert translator.feed_raw(odd) is None  # type: ignore[attr-defined]


ODD_CHAT = [
    b'"x"',
    b'-"x"-',
    b'{"x"}',
    b'{"id":"c","choices":[{"index":0,"delta":{"content":"x"},"finish_reason":null}],"choices":[]}',
    b'{"id":"c","usage":{"prompt_tokens":5},"choices":[{"index":0,"delta":{"content":"x"}}]}',
    b'{"id":"c","\\u0075sage":{"prompt_tokens":5},"choices":[{"index":0,"delta":{"content":"x"}}]}',
    b'{"id":"c","error":{"message":"m"},"choices":[{"index":0,"delta":{"content":"x"}}]}',
    b'{"id":"c,"choices":[{"index":0,"delta":{"content":"x"}}]}',
    b'{"id": "c", "choices":[{"index":0,"delta":{"content":"x"}}]}',
    b'{"id":"c","choices":[{"index":0,"delta":{"content":"x"},"finish_reason":"stop"}]}',
    b'{"id":"c","choices":[{"index":0,"delta":{"content":"x","tool_calls":[]}}]}',
    b'{"id":"c","choices":[{"index":0,"delta":{"content":"x"}}],"usage":{"prompt_tokens":1}}',
    b'{"id":"c","choices":[{"index":0,"delta":{"content":"x"}}],"obfuscation":"a\\"b"}',
    b'{"id":"c","choices":[{"index":0,"delta":{"content":"x"}}],"obfuscation":""}',
    b'{"id":"c","choices":[{"index":0,"delta":{"content":"x"}},{"index":1}]}',
    b'{"id":"c","choices":[{"index":0,"delta":{"tool_calls":[{"index":00,"function":{"arguments":"x"}}]}}]}',
    b'{"id":"c","choices":[{"index":0,"delta":{"tool_calls":[{"index":3,"function":{"arguments":"x"}}]}}]}',
    b'{"id":"c","choices":[{"index":0,"delta":{"content":"x"}}]',
    b'{"id":"c","choices":[{"index":0,"delta":{"content":"x"}}]}}',
]


@pytest.mark.parametrize("odd", ODD_CHAT)
def test_odd_chat_layouts_take_the_usual_path(odd: bytes) -> None:
    datas = _layout_datas("vllm", [b'{"content":"x"}', b'{"content":"y"}'], odd)
    for direction in (MESSAGES_TO_CHAT, RESPONSES_TO_CHAT):
        assert both(direction, REQUESTS[direction[0]], sse(Api.CHAT, datas)).hits >= 1
        translator = CODECS[direction].stream(REQUESTS[direction[0]])
        for data in datas[:3]:
            translator.feed(json.loads(data))
        assert translator.feed_raw(odd) is None  # type: ignore[attr-defined]


@pytest.mark.parametrize("garbage", [b"", b'"x"', b'-"x"}}', b'-"x"-', b'{"x"}}', b'{"x"}', b"-"])
def test_a_fresh_layout_takes_nothing_for_granted(garbage: bytes) -> None:
    """Before a stream's first delta, no remembered layout lets garbage through."""
    anthropic = [compact_json(e) for e in anthropic_events("end_turn")[:2]]  # text block 0
    chat = _layout_datas("vllm", [b'{"content":"x"}'])[:2]
    for direction, datas in (
        (CHAT_TO_MESSAGES, anthropic),
        (RESPONSES_TO_MESSAGES, anthropic),
        (MESSAGES_TO_CHAT, chat),
        (RESPONSES_TO_CHAT, chat),
    ):
        translator = CODECS[direction].stream(REQUESTS[direction[0]])
        for data in datas:
            translator.feed(json.loads(data))
        assert translator.feed_raw(garbage) is None  # type: ignore[attr-defined]
