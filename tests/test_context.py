"""The request context's body: ``read_body``'s deadline, driven message by message, and the
strict JSON parse (top-level keys given twice, and everything else exactly as ``json``)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.types import Receive, Scope, Send

from llm_proxy_mw.context import RequestContextMiddleware, get_context, read_body
from llm_proxy_mw.errors import InvalidRequestError
from llm_proxy_mw.wire import send_json
from tests.asgi_helpers import AsgiDriver, eventually, http_scope

pytestmark = pytest.mark.anyio

#: Short, so that the tests are quick; each waits for an event, never for this long itself.
TIMEOUT = 0.05
MULTIPART = (("content-type", "multipart/form-data; boundary=x"),)


async def echo_body(scope: Scope, receive: Receive, send: Send) -> None:
    """Reads the body, then answers with its length."""
    body = await read_body(get_context(scope), scope, receive)
    await send_json(send, 200, json.dumps({"length": len(body)}).encode())


def app(inner: Any = echo_body) -> RequestContextMiddleware:
    return RequestContextMiddleware(inner, body_timeout=TIMEOUT)


def driver(path: str = "/v1/chat/completions", **scope: Any) -> AsgiDriver:
    return AsgiDriver(app(), http_scope(path, **scope), disconnect_when_complete=True)


async def test_a_body_that_never_ends_is_408_in_the_wire_format_with_connection_close() -> None:
    for path, shape in [("/v1/chat/completions", "openai"), ("/v1/messages", "anthropic")]:
        async with driver(path) as slow:
            slow.request_part(b'{"model": ', more_body=True)  # then nothing
            slow.start()
            await slow.finish()
        assert slow.status == 408
        assert slow.headers["connection"] == "close"
        body = slow.json()
        if shape == "openai":
            assert body["error"]["code"] == "request_timeout"
        else:
            assert body["error"]["type"] == "timeout_error"


async def test_over_http2_the_408_carries_no_connection_header() -> None:
    scope = http_scope()
    scope["http_version"] = "2"
    async with AsgiDriver(app(), scope) as slow:
        slow.start()  # not a byte of the body
        await slow.finish()
    assert slow.status == 408
    assert "connection" not in slow.headers


async def test_a_body_in_several_messages_within_the_deadline_is_read_whole() -> None:
    async with driver() as fine:
        await fine.run(b"12345", b"678", b"90")
    assert fine.status == 200
    assert fine.json() == {"length": 10}


async def test_a_read_that_ended_is_never_cut_later() -> None:
    """A request still running past the deadline, after its body was read, is left alone."""
    release = asyncio.Event()

    async def reads_then_waits(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(get_context(scope), scope, receive)
        await release.wait()
        await send_json(send, 200, b"{}")

    async with (
        AsgiDriver(app(reads_then_waits), http_scope()) as early,
        driver() as witness,
    ):
        early.request(b"{}")
        early.start()
        await eventually(lambda: early.pending == 0)  # its body is read
        witness.start()  # started later, with the same timeout: cut no earlier than ``early``
        await witness.finish()
        assert witness.status == 408
        release.set()
        await early.finish()
    assert early.status == 200


async def streams_upload(scope: Scope, receive: Receive, send: Send) -> None:
    """Takes the upload's chunks as a provider would, then answers with their length."""
    ctx = get_context(scope)
    assert await read_body(ctx, scope, receive) == b""
    assert ctx.upload is not None
    length = sum([len(chunk) async for chunk in ctx.upload.chunks()])
    await send_json(send, 200, json.dumps({"length": length}).encode())


async def test_an_upload_has_no_body_deadline() -> None:
    async with (
        AsgiDriver(app(streams_upload), http_scope("/v1/files", headers=MULTIPART)) as upload,
        driver() as witness,
    ):
        upload.request_part(b"--x\r\n", more_body=True)
        upload.start()
        await eventually(lambda: upload.pending == 0)  # reading, and waiting for the rest
        witness.start()  # later, same timeout: once it is cut, the upload's deadline is past
        await witness.finish()
        assert witness.status == 408
        upload.request_part(b"--x--\r\n", more_body=False)
        await upload.finish()
    assert upload.status == 200
    assert upload.json() == {"length": 12}


async def test_json_to_an_upload_endpoint_has_the_deadline() -> None:
    async with driver("/v1/files") as slow:
        slow.start()
        await slow.finish()
    assert slow.status == 408


async def test_another_cancellation_during_a_read_is_not_a_408() -> None:
    async with driver() as cancelled:
        cancelled.request_part(b"{", more_body=True)
        cancelled.start()
        await eventually(lambda: cancelled.pending == 0)  # reading, and waiting for the rest
        assert cancelled.task is not None
        cancelled.task.cancel()
        await asyncio.wait([cancelled.task])
    assert cancelled.task.cancelled()
    assert cancelled.sent == []


# -- the strict parse ---------------------------------------------------------------------------

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


def test_principal_id_is_the_owner_id_or_anonymous() -> None:
    from llm_proxy_mw.auth import Principal
    from llm_proxy_mw.context import ANONYMOUS, RequestContext, principal_id
    from llm_proxy_mw.wire import WireFormat

    ctx = RequestContext(
        request_id="r", route_path="/v1/chat/completions", wire_format=WireFormat.OPENAI
    )
    assert principal_id(ctx) == ANONYMOUS
    ctx.principal = Principal(name="alice", kind="api_key")
    assert principal_id(ctx) == "api_key:alice"
    ctx.principal = Principal(name="t1", kind="token", subject="session:github:42")
    assert principal_id(ctx) == "session:github:42"
