"""``UsageReader``: usage numbers are a provider's untrusted input.

Properties over generated bodies and generated read boundaries: whatever the bytes, feeding
and finishing never raise (a raise would cost the client its response) and what is read is
a token count in ``[0, 10**9]``; a well-formed count is read exactly wherever reads end.
The middleware around it is tested in ``test_metrics.py``.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_proxy_mw._usage import BYTES_PER_TOKEN, MAX_TOKENS, UsageReader
from llm_proxy_mw.context import Usage

KEYS = [
    b"prompt_tokens",
    b"input_tokens",
    b"completion_tokens",
    b"output_tokens",
    b"cached_tokens",
    b"cache_write_tokens",
    b"cache_read_input_tokens",
    b"cache_creation_input_tokens",
    b"reasoning_tokens",
]
SLOTS = (
    "prompt_tokens",
    "completion_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
)

#: Number-like text: digits of any length (past 4,300 ``int()`` refuses), signs, fractions.
numbers = st.one_of(
    st.integers(min_value=0, max_value=10**12).map(lambda n: str(n).encode()),
    st.integers(min_value=1, max_value=6000).map(lambda n: b"9" * n),
    st.text("0123456789-+.eE", min_size=1, max_size=40).map(str.encode),
    st.sampled_from([b"true", b"null", b'"7"', b"[1]", b"{}"]),
)
usage_member = st.builds(
    lambda key, space, number, end: b'"' + key + b'"' + space + b":" + space + number + end,
    st.sampled_from(KEYS),
    st.sampled_from([b"", b" ", b"\n"]),
    numbers,
    st.sampled_from([b",", b"}", b" ", b"", b"\n\n"]),
)
bodies = st.lists(st.one_of(usage_member, st.binary(max_size=64)), max_size=12).map(b"".join)


def read(body: bytes, cuts: list[int], *, sse: bool) -> UsageReader:
    reader = UsageReader(sse=sse)
    bounds = sorted({0, len(body), *(c % (len(body) + 1) for c in cuts)})
    for start, end in zip(bounds, bounds[1:], strict=False):
        reader.feed(body[start:end])
    reader.finish()
    return reader


@settings(database=None, max_examples=300, deadline=None)
@given(body=bodies, cuts=st.lists(st.integers(min_value=0), max_size=8), sse=st.booleans())
def test_any_bytes_read_anywhere_give_counts_in_range_and_never_raise(
    body: bytes, cuts: list[int], sse: bool
) -> None:
    reader = read(body, cuts, sse=sse)
    for slot in SLOTS:
        value = getattr(reader, slot)
        assert type(value) is int and 0 <= value <= MAX_TOKENS
    usage = Usage()
    reader.fill(usage, anthropic=sse)
    # No detail exceeds its total, whatever the provider said.
    assert usage.cache_read_tokens + usage.cache_write_tokens <= usage.prompt_tokens
    assert usage.reasoning_tokens <= usage.completion_tokens


@settings(database=None, max_examples=200, deadline=None)
@given(
    prompt=st.integers(min_value=0, max_value=MAX_TOKENS),
    completion=st.integers(min_value=0, max_value=MAX_TOKENS),
    filler=st.text(max_size=300),
    cuts=st.lists(st.integers(min_value=0), max_size=8),
    sse=st.booleans(),
)
def test_a_well_formed_count_is_read_exactly_wherever_reads_end(
    prompt: int, completion: int, filler: str, cuts: list[int], sse: bool
) -> None:
    content = json.dumps(filler)
    event = (
        f'{{"choices":[{{"delta":{{"content":{content}}}}}],'
        f'"usage":{{"prompt_tokens": {prompt}, "completion_tokens":{completion}}}}}'
    ).encode()
    body = b"data: " + event + b"\n\n" if sse else event
    reader = read(body, cuts, sse=sse)
    assert (reader.prompt_tokens, reader.completion_tokens) == (prompt, completion)


def usage_of(body: bytes, *, sse: bool, anthropic: bool, cuts: list[int]) -> Usage:
    usage = Usage()
    read(body, cuts, sse=sse).fill(usage, anthropic=anthropic)
    return usage


CHAT_USAGE = (
    b'"usage":{"prompt_tokens":1000,"completion_tokens":300,"total_tokens":1300,'
    b'"prompt_tokens_details":{"cached_tokens":600,"cache_write_tokens":100,"audio_tokens":0},'
    b'"completion_tokens_details":{"reasoning_tokens":200,"audio_tokens":0,'
    b'"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}'
)
RESPONSES_USAGE = (
    b'"usage":{"input_tokens":1000,"input_tokens_details":{"cached_tokens":600,'
    b'"cache_write_tokens":100},"output_tokens":300,'
    b'"output_tokens_details":{"reasoning_tokens":200},"total_tokens":1300}'
)
OPENAI_COUNTED = Usage(1000, 300, 600, 100, 200)


@pytest.mark.parametrize("cut", [[], [17, 40, 333], list(range(0, 2000, 7))])
@pytest.mark.parametrize(
    ("body", "sse"),
    [
        pytest.param(b'{"id":"c","choices":[],' + CHAT_USAGE + b"}", False, id="chat-json"),
        pytest.param(
            b'data: {"id":"c","choices":[{"delta":{"content":"hi"}}],"usage":null}\n\n'
            b'data: {"id":"c","choices":[],' + CHAT_USAGE + b"}\n\ndata: [DONE]\n\n",
            True,
            id="chat-sse",
        ),
        pytest.param(
            b'{"id":"r","max_output_tokens":4096,' + RESPONSES_USAGE + b',"user":null}',
            False,
            id="responses-json",
        ),
        pytest.param(
            b'event: response.created\ndata: {"response":{"max_output_tokens":9,"usage":null}}'
            b'\n\nevent: response.output_text.delta\ndata: {"delta":"hi"}\n\n'
            b'event: response.completed\ndata: {"type":"response.completed",'
            b'"response":{"output":[{"content":[{"text":"hi"}]}],' + RESPONSES_USAGE + b"}}\n\n",
            True,
            id="responses-sse",
        ),
    ],
)
def test_openai_counts_cache_reads_and_writes_inside_the_prompt(
    body: bytes, sse: bool, cut: list[int]
) -> None:
    assert usage_of(body, sse=sse, anthropic=False, cuts=cut) == OPENAI_COUNTED


ANTHROPIC_START = (
    b'"usage":{"input_tokens":400,"cache_creation_input_tokens":100,'
    b'"cache_read_input_tokens":500,"cache_creation":{"ephemeral_5m_input_tokens":100,'
    b'"ephemeral_1h_input_tokens":0},"output_tokens":1,"service_tier":"standard"}'
)


@pytest.mark.parametrize("cut", [[], [5, 99, 250], list(range(0, 1500, 3))])
def test_anthropic_counts_cache_reads_and_writes_outside_its_input(cut: list[int]) -> None:
    stream = (
        b'event: message_start\ndata: {"type":"message_start","message":{"id":"m",'
        + ANTHROPIC_START
        + b"}}\n\nevent: content_block_delta\n"
        b'data: {"type":"content_block_delta","delta":{"text":"hi"}}\n\n'
        b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":'
        b'"end_turn"},"usage":{"output_tokens":42}}\n\nevent: message_stop\n'
        b'data: {"type":"message_stop"}\n\n'
    )
    counted = Usage(prompt_tokens=1000, completion_tokens=42, cache_read_tokens=500)
    counted.cache_write_tokens = 100
    assert usage_of(stream, sse=True, anthropic=True, cuts=cut) == counted
    answer = b'{"id":"m","content":[],' + ANTHROPIC_START.replace(b":1,", b":42,") + b"}"
    assert usage_of(answer, sse=False, anthropic=True, cuts=cut) == counted


def test_an_answer_without_counts_leaves_the_usage_another_layer_set() -> None:
    usage = Usage(prompt_tokens=7, completion_tokens=3)
    read(b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n', [], sse=True).fill(
        usage, anthropic=False
    )
    assert usage == Usage(prompt_tokens=7, completion_tokens=3)


def test_a_cut_answer_is_charged_its_estimated_input_and_a_token_per_read() -> None:
    reader = UsageReader(sse=True)
    for _ in range(6):
        reader.feed(b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n')
    usage = Usage()
    reader.fill(usage, anthropic=False)
    body = b"x" * 4003
    reader.charge_cut(usage, body)
    assert (usage.prompt_tokens, usage.completion_tokens) == (4003 // BYTES_PER_TOKEN, 6)
    # What the provider said wins where it said more.
    said = Usage(prompt_tokens=15, completion_tokens=40)
    reader.charge_cut(said, body)
    assert (said.prompt_tokens, said.completion_tokens) == (15, 40)
