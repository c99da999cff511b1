"""A minimal Redis connection for the limits' two scripts: RESP over one pipelined socket.

Why not redis-py on this path: its asyncio client costs about 140 µs of CPU per command here
(connection pool, retry machinery, stream reader), twice the whole budget of the limits layer.
The limits only ever send ``EVALSHA`` (and, once, ``SCRIPT LOAD``, ``AUTH``, ``SELECT``); one
connection carries every request's commands in order, and replies come back in that order.

A command that can wait (a settlement, whose caller does not wait for it) is held for at
most ``DEFER`` seconds and written with the next one that cannot (a reservation): under load
the two cost one write and one read between them instead of two each. A watchdog, not a
timer per command, fails the connection when commands wait ``timeout`` seconds with no reply.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from dataclasses import dataclass
from typing import Any, cast

from redis.connection import parse_url

__all__ = ["DEFER", "RespConnection", "RespError", "command_head", "connect", "encode_args"]

#: Seconds a command that can wait is held for company before it is written alone.
DEFER = 0.005


@dataclass(frozen=True, slots=True)
class RespError:
    """An error reply (``-NOSCRIPT ...``, ``-WRONGPASS ...``): a value, as Redis sends it."""

    message: str

    def __str__(self) -> str:
        return self.message


def encode_args(*args: str | int) -> bytes:
    """Arguments of a command, encoded: what follows its ``command_head``."""
    parts = []
    for arg in args:
        data = arg.encode() if isinstance(arg, str) else b"%d" % arg
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def command_head(count: int, *args: str | int) -> bytes:
    """The start of a command of ``count`` arguments in all, the first ones ``args``."""
    return b"*%d\r\n" % count + encode_args(*args)


def _parse(buffer: bytes, pos: int) -> tuple[Any, int] | None:
    """The reply at ``pos`` and where it ends; ``None`` while the buffer ends inside it.
    ``ValueError`` for what is no reply."""
    end = buffer.find(b"\r\n", pos)
    if end < 0:
        return None
    kind, line, pos = buffer[pos : pos + 1], buffer[pos + 1 : end], end + 2
    if kind == b":":
        return int(line), pos
    if kind == b"+":
        return line.decode(), pos
    if kind == b"-":
        return RespError(line.decode(errors="replace")), pos
    if kind == b"$":
        size = int(line)
        if size < 0:
            return None, pos
        if len(buffer) < pos + size + 2:
            return None
        return buffer[pos : pos + size].decode(), pos + size + 2
    if kind == b"*":
        items = []
        for _ in range(max(int(line), 0)):
            parsed = _parse(buffer, pos)
            if parsed is None:
                return None
            item, pos = parsed
            items.append(item)
        return items, pos
    raise ValueError(f"unexpected reply type {kind!r}")


class RespConnection(asyncio.Protocol):
    """One connection; ``send`` writes a command and returns the future of its reply.
    Commands waiting more than ``timeout`` seconds (``None``: forever) for any reply fail
    the connection with ``TimeoutError``."""

    def __init__(self, timeout: float | None = None) -> None:
        self._transport: asyncio.Transport | None = None
        self._waiters: deque[asyncio.Future[Any]] = deque()
        self._buffer = b""
        self._held: list[bytes] = []
        self._flush: asyncio.TimerHandle | None = None
        self._timeout = timeout
        self._watchdog: asyncio.TimerHandle | None = None
        self._replies = 0
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A write transport whatever its class (uvloop's are not asyncio's subclasses).
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        pos = 0
        try:
            while self._waiters:
                parsed = _parse(self._buffer, pos)
                if parsed is None:
                    break
                reply, pos = parsed
                self._replies += 1
                waiter = self._waiters.popleft()
                if not waiter.done():  # a caller that timed out left its place in the line
                    waiter.set_result(reply)
        except ValueError as exc:  # not Redis speaking: give up the connection
            self._fail(ConnectionError(f"unreadable reply: {exc}"))
            return
        self._buffer = self._buffer[pos:]

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionError("connection closed"))

    def _fail(self, exc: BaseException) -> None:
        self.closed = True
        for handle in (self._flush, self._watchdog):
            if handle is not None:
                handle.cancel()
        kind = TimeoutError if isinstance(exc, TimeoutError) else ConnectionError
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(kind(str(exc)))
        if self._transport is not None:
            self._transport.close()

    def call(self, *args: str | int) -> asyncio.Future[Any]:
        return self.send(command_head(len(args), *args))

    def send(self, command: bytes, *, can_wait: bool = False) -> asyncio.Future[Any]:
        """Send an encoded command (held up to ``DEFER`` seconds if it ``can_wait``); the
        future of its reply."""
        transport = self._transport
        if self.closed or transport is None:
            raise ConnectionError("connection closed")
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        self._waiters.append(waiter)
        if can_wait:
            self._held.append(command)
            if self._flush is None:
                self._flush = loop.call_later(DEFER, self._write_held)
        elif self._held:
            self._held.append(command)
            transport.write(b"".join(self._held))
            self._held.clear()
        else:
            transport.write(command)
        if self._watchdog is None and self._timeout is not None:
            self._watchdog = loop.call_later(self._timeout, self._watch, self._replies)
        return waiter

    def _write_held(self) -> None:
        self._flush = None
        if self._held and self._transport is not None and not self.closed:
            self._transport.write(b"".join(self._held))
            self._held.clear()

    def _watch(self, replies: int) -> None:
        """Fail when commands have waited since the last look and no reply came meanwhile."""
        self._watchdog = None
        if not self._waiters:
            return
        if self._replies == replies:
            self._fail(TimeoutError(f"no reply from Redis within {self._timeout:g} s"))
            return
        loop = asyncio.get_running_loop()
        assert self._timeout is not None
        self._watchdog = loop.call_later(self._timeout, self._watch, self._replies)

    def close(self) -> None:
        self._fail(ConnectionError("connection closed"))


async def connect(url: str, reply_timeout: float | None = None) -> RespConnection:
    """A connection to ``redis://`` or ``rediss://`` ``url``, authenticated, on its db, whose
    commands fail after ``reply_timeout`` seconds without a reply."""
    options: dict[str, Any] = parse_url(url)  # type: ignore[no-untyped-call]
    context = ssl.create_default_context() if url.lower().startswith("rediss://") else None
    _, connection = await asyncio.get_running_loop().create_connection(
        lambda: RespConnection(reply_timeout),
        options.get("host", "localhost"),
        int(options.get("port", 6379)),
        ssl=context,
    )
    password, username = options.get("password"), options.get("username")
    for command in (
        ("AUTH", *([username] if username else []), password) if password else None,
        ("SELECT", int(options.get("db", 0))) if options.get("db") else None,
    ):
        if command is not None:
            reply = await connection.call(*command)
            if isinstance(reply, RespError):
                connection.close()
                raise ConnectionError(str(reply))
    return connection
