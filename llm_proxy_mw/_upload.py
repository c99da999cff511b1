"""An upload: a request body streamed to the provider chunk by chunk as it arrives.

Files, audio and images can be hundreds of megabytes, so their bodies are never held: each
chunk the client sends goes on to the provider, and only the few chunks read ahead to find a
form's ``model`` (``_multipart.py``) wait for the route. So an upload can be retried only
until its first chunk went to a provider (``sent``): a connect error or an open circuit.

Two limits guard it: ``max_bytes`` (413) and ``min_rate``, the bytes per second it must
average once ``rate_window`` seconds passed since its first read (408), so a client
trickling a body does not hold a connection and a provider's for as long as it likes. Its
failure (the client's, not the provider's) is kept in ``error``: the transport only sees a
body that broke off.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

from starlette.types import Message, Receive

from llm_proxy_mw._multipart import FormScanner, boundary_of
from llm_proxy_mw.errors import (
    ClientDisconnected,
    InvalidRequestError,
    RequestBodyTimeout,
    RequestTooLargeError,
)

__all__ = ["Upload", "UploadPolicy", "open_upload"]


@dataclass(frozen=True, slots=True)
class UploadPolicy:
    """The limits of uploads: ``max_upload_bytes`` and ``min_upload_rate`` (bytes/s averaged
    after ``rate_window`` seconds)."""

    max_bytes: int = 512 * 1024 * 1024
    min_rate: float = 64 * 1024
    rate_window: float = 10.0


def open_upload(
    receive: Receive, policy: UploadPolicy, content_type: bytes | None, length: int | None
) -> Upload:
    """The upload of a request whose body is ``receive``'s; 413 at once when the declared
    ``content-length`` is over the limit."""
    if length is not None and length > policy.max_bytes:
        raise RequestTooLargeError(_too_large(policy))
    return Upload(receive, policy, content_type, length)


class Upload:
    """The body of one upload request, read from ``receive`` only as the provider takes it."""

    __slots__ = (
        "_receive",
        "_policy",
        "_scanner",
        "_ahead",
        "_size",
        "_done",
        "_ended",
        "_started_at",
        "_timer",
        "_task",
        "_receiving",
        "_expired",
        "length",
        "sent",
        "error",
    )

    def __init__(
        self, receive: Receive, policy: UploadPolicy, content_type: bytes | None, length: int | None
    ) -> None:
        self._receive = receive
        self._policy = policy
        boundary = None if content_type is None else boundary_of(content_type)
        self._scanner = None if boundary is None else FormScanner(boundary)
        self._ahead: list[bytes] = []  # read for the model, not sent yet
        self._size = 0
        self._done = False
        self._ended: asyncio.Event | None = None
        self._started_at: float | None = None  # the loop's time at the first read
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[object] | None = None
        self._receiving = False
        self._expired = False
        #: The ``content-length`` the client declared, passed on to the provider.
        self.length = length
        #: Whether a chunk went to a provider: from then on the upload cannot be replayed.
        self.sent = False
        #: Why the body broke off, when it was the client's doing (too slow, too large, gone).
        self.error: Exception | None = None

    async def read_model(self) -> str | None:
        """The form's ``model``, read ahead of the provider (``None`` when not a form, or the
        form gives none before its first file)."""
        scanner = self._scanner
        if scanner is None:
            return None
        while not scanner.settled and not self._done:
            chunk = await self._next()
            if chunk:
                self._ahead.append(chunk)
        return scanner.model

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body for one attempt: what was read ahead, then the rest as it arrives."""
        ahead = self._ahead
        while ahead:
            self.sent = True
            yield ahead.pop(0)
        while not self._done:
            chunk = await self._next()
            if chunk:
                self.sent = True
                yield chunk

    async def receive_after_body(self) -> Message:
        """``receive`` for the disconnect guard: it waits until the body was read, so that it
        never takes a chunk (a disconnect meanwhile is the body reader's to see)."""
        if not self._done:
            if self._ended is None:
                self._ended = asyncio.Event()
            await self._ended.wait()
        return await self._receive()

    async def _next(self) -> bytes:
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        if self._timer is None:
            self._arm(task.get_loop())
        self._receiving = True
        try:
            message = await self._receive()
        except asyncio.CancelledError:
            if not self._expired or task.uncancel() != 0:
                raise
            raise self._fail(RequestBodyTimeout(_too_slow(self._policy))) from None
        finally:
            self._receiving = False
        if message["type"] == "http.disconnect":
            raise self._fail(ClientDisconnected())
        chunk: bytes = message.get("body", b"")
        if chunk:
            self._size += len(chunk)
            if self._size > self._policy.max_bytes:
                raise self._fail(RequestTooLargeError(_too_large(self._policy)))
            if self._scanner is not None:
                try:
                    self._scanner.feed(chunk)
                except InvalidRequestError as error:  # a misplaced model: the client's
                    raise self._fail(error) from None
        if not message.get("more_body", False):
            self._finish()
        return chunk

    def _fail(self, error: Exception) -> Exception:
        self.error = error
        self._finish()
        return error

    def _finish(self) -> None:
        self._done = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._ended is not None:
            self._ended.set()

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        """The rate check, due when the average would fall under ``min_rate`` if nothing more
        came. Armed only while reading: an upload nobody reads holds no timer."""
        now = loop.time()
        if self._started_at is None:
            self._started_at = now
        policy = self._policy
        due = self._started_at + max(policy.rate_window, self._size / policy.min_rate)
        self._timer = loop.call_at(max(due, now + policy.rate_window / 8), self._check, loop)

    def _check(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        if self._done or not self._receiving or self._started_at is None:
            return  # the next read arms it again
        elapsed = loop.time() - self._started_at
        if self._size < self._policy.min_rate * elapsed and self._task is not None:
            if not self._task.cancelling():  # else it is ending anyway
                self._expired = True
                self._task.cancel()
            return
        self._arm(loop)


def _too_slow(policy: UploadPolicy) -> str:
    return f"The upload came slower than {policy.min_rate:g} bytes per second (min_upload_rate)."


def _too_large(policy: UploadPolicy) -> str:
    return f"The upload exceeds {policy.max_bytes} bytes (max_upload_bytes)."
