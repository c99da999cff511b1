"""The limits' RESP connection: replies parsed whatever way the bytes are split, matched to
their commands in order, and every failure a ``StoreError``."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from llm_proxy_mw._limits_policy import Limit, Reservation
from llm_proxy_mw._limits_redis import RedisLimits
from llm_proxy_mw._limits_resp import RespConnection, RespError, command_head, encode_args
from llm_proxy_mw.errors import StoreError
from tests.fakes.servers import free_port

pytestmark = pytest.mark.anyio

REPLIES = (
    b"*6\r\n:0\r\n$1\r\n0\r\n:3\r\n$4\r\n15.5\r\n:-1\r\n$-1\r\n"  # an array, a nil in it
    b"+OK\r\n-NOSCRIPT gone\r\n:7\r\n"
)


class _Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self) -> None:
        self.closed = True


def _connection() -> tuple[RespConnection, _Transport]:
    connection = RespConnection()
    transport = _Transport()
    connection.connection_made(transport)  # type: ignore[arg-type]
    return connection, transport


def test_commands_are_encoded_as_resp_arrays() -> None:
    assert command_head(3, "GET", "k") + encode_args(12) == (
        b"*3\r\n$3\r\nGET\r\n$1\r\nk\r\n$2\r\n12\r\n"
    )


@pytest.mark.parametrize("split", [1, 2, 3, 5, 7, 11, len(REPLIES)])
async def test_replies_match_their_commands_however_the_bytes_are_split(split: int) -> None:
    connection, _ = _connection()
    waiters = [connection.call("X") for _ in range(4)]
    for start in range(0, len(REPLIES), split):
        connection.data_received(REPLIES[start : start + split])
    replies: list[Any] = [await waiter for waiter in waiters]
    assert replies[0] == [0, "0", 3, "15.5", -1, None]
    assert replies[1] == "OK"
    assert isinstance(replies[2], RespError) and str(replies[2]) == "NOSCRIPT gone"
    assert replies[3] == 7


async def test_a_caller_that_gave_up_keeps_the_order_for_the_others() -> None:
    connection, _ = _connection()
    abandoned, kept = connection.call("A"), connection.call("B")
    abandoned.cancel()
    connection.data_received(b":1\r\n:2\r\n")
    assert await kept == 2


async def test_a_lost_connection_fails_every_waiting_command() -> None:
    connection, transport = _connection()
    waiter = connection.call("A")
    connection.connection_lost(None)
    with pytest.raises(ConnectionError):
        await waiter
    with pytest.raises(ConnectionError):
        connection.call("B")
    assert transport.closed


async def test_garbage_is_not_taken_for_a_reply() -> None:
    connection, transport = _connection()
    waiter = connection.call("A")
    connection.data_received(b"?what\r\n")
    with pytest.raises(ConnectionError):
        await waiter
    assert transport.closed


async def test_nothing_listening_is_a_store_error() -> None:
    limits = RedisLimits(f"redis://:secret@127.0.0.1:{free_port()}/0")
    with pytest.raises(StoreError, match="limits reserve failed") as raised:
        await limits.reserve("p", Limit(rpm=1), 0, 0)
    assert "secret" not in str(raised.value)
    await limits.aclose()


async def test_a_silent_server_times_out_as_a_store_error() -> None:
    writers: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)  # takes the command, never answers

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    limits = RedisLimits(f"redis://127.0.0.1:{port}/0", timeout=0.2)
    try:
        with pytest.raises(StoreError, match="TimeoutError"):
            await limits.reserve("p", Limit(rpm=1), 0, 0)
    finally:
        await limits.aclose()
        for writer in writers:
            writer.close()
            await writer.wait_closed()
        server.close()
        await server.wait_closed()


async def test_a_settlement_that_fails_is_a_store_error() -> None:
    limits = RedisLimits("redis://127.0.0.1:9/0")
    connection, transport = _connection()
    limits._connection = connection
    reservation = Reservation("p", Limit(tpm=10), 5, 0, "total", "")
    lost = limits.settle(reservation, tokens=1, cost_nano=0, give_back_request=False)
    connection.connection_lost(None)
    with pytest.raises(StoreError, match="limits settle failed"):
        await lost
    refused_connection, _ = _connection()
    limits._connection = refused_connection
    refused = limits.settle(reservation, tokens=1, cost_nano=0, give_back_request=False)
    refused_connection.send(b"*1\r\n$4\r\nPING\r\n")  # writes the held settlement too
    refused_connection.data_received(b"-ERR wrong\r\n+PONG\r\n")
    with pytest.raises(StoreError, match="ERR wrong"):
        await refused


async def test_commands_without_any_reply_time_out_but_slow_ones_do_not() -> None:
    connection = RespConnection(timeout=0.05)
    transport = _Transport()
    connection.connection_made(transport)  # type: ignore[arg-type]
    answered = connection.call("A")
    waiting = connection.call("B")
    connection.data_received(b":1\r\n")
    assert await answered == 1
    with pytest.raises(TimeoutError):
        await waiting  # no reply at all for a whole period after the first came
    assert transport.closed
