"""The request context's body: the strict JSON parse (top-level keys given twice, and
everything else exactly as ``json``)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llm_proxy_mw.context import get_context
from llm_proxy_mw.errors import InvalidRequestError
from tests.asgi_helpers import http_scope

DUPLICATES = [
    b'{"model": "a", "model": "b"}',
    b'{"model":"a","messages":[],"model":"a"}',
    b'{"model": "a", "mod\\u0065l": "b"}',
    b' \r\n{ "x" : 1 ,\t"x" : {"y": 2} }\n',
    b'{"a": {"b": 1, "b": 2}, "a": 3}',
]


@pytest.mark.parametrize("body", DUPLICATES)
def test_a_top_level_key_given_twice_is_refused(body: bytes) -> None:
    ctx = get_context(http_scope())
    ctx.body = body
    with pytest.raises(InvalidRequestError, match="twice"):
        ctx.json()


@pytest.mark.parametrize("keys", [255, 256, 5000])
def test_a_key_given_twice_among_many_is_refused(keys: int) -> None:
    ctx = get_context(http_scope())
    pairs = ", ".join(f'"k{i}": {{"n": [{i}]}}' for i in range(keys))
    ctx.body = f'{{{pairs}, "model": "a", "model": "b"}}'.encode()
    with pytest.raises(InvalidRequestError, match="twice"):
        ctx.json()
    ctx = get_context(http_scope())
    ctx.body = f'{{{pairs}, "model": "a"}}'.encode()
    assert ctx.json() == json.loads(ctx.body)


def test_a_nested_key_given_twice_is_the_providers_business() -> None:
    ctx = get_context(http_scope())
    ctx.body = b'{"model": "a", "metadata": {"k": 1, "k": 2}}'
    assert ctx.json() == {"model": "a", "metadata": {"k": 2}}


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
SEPARATORS = st.sampled_from([(",", ":"), (", ", ": "), (" ,\n", " :\t"), ("\r\n,", ":  ")])


@settings(
    max_examples=300,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(value=JSON_VALUES, separators=SEPARATORS, indent=st.none() | st.integers(0, 2))
def test_the_parse_agrees_with_json_loads_on_every_valid_body(
    value: Any, separators: tuple[str, str], indent: int | None
) -> None:
    text = json.dumps(value, separators=separators, indent=indent)
    ctx = get_context(http_scope())
    ctx.body = text.encode()
    if isinstance(value, dict):
        assert ctx.json() == json.loads(text)
    else:
        with pytest.raises(InvalidRequestError):
            ctx.json()


@settings(max_examples=300, derandomize=True, database=None, deadline=None)
@given(
    body=st.binary(max_size=64)
    | st.text(alphabet='{}[]":,\\ 0123456789.eEtrufalsn').map(str.encode)
)
def test_the_parse_refuses_what_json_loads_refuses(body: bytes) -> None:
    ctx = get_context(http_scope())
    ctx.body = body
    if not body.strip():
        assert ctx.json() is None
        return
    try:
        # A leading BOM is dropped, as RFC 8259 allows a parser to.
        expected = json.loads(body.decode("utf-8").removeprefix("\ufeff"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        expected = None
    if not isinstance(expected, dict):
        with pytest.raises(InvalidRequestError):
            ctx.json()
        return
    try:
        assert ctx.json() == expected
    except InvalidRequestError as error:
        assert "twice" in error.message  # json.loads would have kept the last one
