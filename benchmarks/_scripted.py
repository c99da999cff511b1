"""The fake provider's scripting: what to answer next, and a record of every request.

Tests queue ``Action``\\ s (statuses, slow headers, cut or held streams, gzip, retry headers)
and read back ``RecordedRequest``\\ s. The server (``_scripted_server``) runs on its own event
loop thread, the test in another: state is guarded by a condition, holds are flags both sides
can wait on.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from benchmarks._wire_turn import ToolCall, Turn, TurnUsage

__all__ = [
    "Action",
    "FakeProvider",
    "RecordedRequest",
    "StreamHold",
    "ToolCall",
    "Turn",
    "TurnUsage",
]


class _Flag:
    """A ``threading.Event`` that can also be awaited from any asyncio loop (any thread)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    def is_set(self) -> bool:
        return self._event.is_set()

    def set(self) -> None:
        with self._lock:
            self._event.set()
            waiters, self._waiters = self._waiters, []
        for loop, event in waiters:
            with contextlib.suppress(RuntimeError):  # that loop is already closed
                loop.call_soon_threadsafe(event.set)

    def wait(self, timeout: float | None = None) -> bool:
        return self._event.wait(timeout)

    async def wait_async(self) -> None:
        waiter = (asyncio.get_running_loop(), asyncio.Event())
        with self._lock:
            if self._event.is_set():
                return
            self._waiters.append(waiter)
        try:
            await waiter[1].wait()
        finally:
            with self._lock, contextlib.suppress(ValueError):
                self._waiters.remove(waiter)


class StreamHold:
    """Parks a stream before event ``after`` (default: the last event) until ``release()``.

    ``reached`` is set once the provider is parked, i.e. all earlier events were written to
    the socket. The park is bounded by ``timeout`` (then the stream just continues), and using
    the hold as a context manager releases it on exit, so a failing test cannot wedge shutdown.
    """

    def __init__(self, after: int | None = None, timeout: float = 30.0) -> None:
        self.after = after
        self.timeout = timeout
        self.reached = _Flag()
        self.released = _Flag()

    def release(self) -> None:
        self.released.set()

    def wait_reached(self, timeout: float = 5.0) -> bool:
        """Blocking wait; use ``await hold.reached.wait_async()`` from async tests."""
        return self.reached.wait(timeout)

    async def park(self) -> None:
        self.reached.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.released.wait_async(), self.timeout)

    def __enter__(self) -> StreamHold:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


@dataclass(frozen=True)
class Action:
    """How to answer one request; the defaults give the normal 200 answer.

    * ``status >= 300`` without ``json_body``/``body``: an OpenAI- or Anthropic-shaped error
      envelope (Anthropic for ``/v1/messages*`` or when ``anthropic-version`` was sent).
    * ``json_body`` / ``body`` (raw bytes): replace the answer entirely, with ``status``.
    * ``headers`` are added to any response (e.g. ``{"retry-after": "1"}``).
    * ``cut_after=N``: send N stream events, then close the connection mid chunked body.
    * ``gzip``: really gzip the body (streams too, flushed per event) + ``content-encoding``.
    * ``turn``: answer with that ``Turn`` (text, thinking, tool calls, refusal, stop reason,
      usage) in the wire format of the request's path, JSON or SSE.
    * ``error_after=N``: send N stream events, then the format's error event (Anthropic
      ``overloaded_error``, OpenAI ``data: {"error": ...}``, Responses ``response.failed``).
    """

    status: int = 200
    json_body: Any = None
    body: bytes | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before the response headers
    event_delay: float = 0.0  # seconds between stream events
    cut_after: int | None = None
    gzip: bool = False
    hold: StreamHold | None = None
    reply: str | None = None  # override the reply text
    turn: Turn | None = None
    error_after: int | None = None

    @property
    def overrides_answer(self) -> bool:
        return self.status >= 300 or self.json_body is not None or self.body is not None


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: str
    headers: dict[str, str]  # lowercase names; repeated headers joined with ", "
    raw_headers: list[tuple[str, str]]
    body: bytes
    json: Any  # parsed body, or None if not JSON
    http_version: str
    at: float  # time.monotonic() when the body was fully received


def _header_action(h: Mapping[str, str]) -> Action:
    cut, error = h.get("x-fake-cut-after"), h.get("x-fake-error-after")
    return Action(
        status=int(h.get("x-fake-status", "200")),
        delay=float(h.get("x-fake-delay", "0")),
        event_delay=float(h.get("x-fake-event-delay", "0")),
        cut_after=int(cut) if cut is not None else None,
        gzip=h.get("x-fake-gzip", "") not in ("", "0", "false"),
        reply=h.get("x-fake-reply"),
        error_after=int(error) if error is not None else None,
    )


class FakeProvider:
    """What the scripted fake provider answers next, and every request it received.

    Per request: the next queued ``Action`` (see ``script``), else one built from ``x-fake-*``
    request headers (status, delay, event-delay, cut-after, error-after, gzip, reply), else
    the normal answer.
    Serve it with ``tests.fakes.provider.FakeProviderServer`` (a thread) or
    ``python -m benchmarks.fake_provider --scripted``.
    """

    def __init__(self, *, reply_prefix: str = "fake reply to: ", chunks: int = 5) -> None:
        self.reply_prefix = reply_prefix
        self.chunks = chunks
        self.requests: list[RecordedRequest] = []
        self._cond = threading.Condition()
        self._script: deque[Action] = deque()
        self._holds: list[StreamHold] = []

    def script(self, *actions: Action) -> None:
        """Queue actions; each request consumes one, in arrival order."""
        with self._cond:
            self._script.extend(actions)

    def hold_stream(self, after: int | None = None, timeout: float = 30.0) -> StreamHold:
        """Queue a normal answer whose stream parks before event ``after`` until released."""
        hold = StreamHold(after, timeout)
        with self._cond:
            self._holds.append(hold)
        self.script(Action(hold=hold))
        return hold

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._script)

    @property
    def last(self) -> RecordedRequest:
        with self._cond:
            return self.requests[-1]

    def wait_for_requests(self, n: int, timeout: float = 5.0) -> list[RecordedRequest]:
        """Block until at least ``n`` requests were recorded; return a snapshot."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.requests) >= n, timeout):
                raise TimeoutError(f"expected {n} requests, got {len(self.requests)}")
            return list(self.requests)

    def reset(self) -> None:
        """Forget recorded requests and queued actions; release every hold (even in-flight)."""
        with self._cond:
            holds = self._holds + [a.hold for a in self._script if a.hold is not None]
            self._holds, self.requests[:] = [], []
            self._script.clear()
        for hold in holds:
            hold.release()

    def take(self, request: RecordedRequest) -> Action:
        """Record ``request``; return how to answer it."""
        with self._cond:
            self.requests.append(request)
            action = self._script.popleft() if self._script else _header_action(request.headers)
            self._cond.notify_all()
        return action
