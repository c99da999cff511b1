"""``UsageReader``: usage numbers are a provider's untrusted input.

Properties over generated bodies and generated read boundaries: whatever the bytes, feeding
and finishing never raise (a raise would cost the client its response) and what is read is
a token count in ``[0, 10**9]``; a well-formed count is read exactly wherever reads end.
The middleware around it is tested in ``test_metrics.py``.
"""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from llm_proxy_mw._usage import MAX_TOKENS, UsageReader

KEYS = [b"prompt_tokens", b"input_tokens", b"completion_tokens", b"output_tokens"]

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
    for value in (reader.prompt_tokens, reader.completion_tokens):
        assert type(value) is int and 0 <= value <= MAX_TOKENS


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
