"""What the metrics history and the usage ledger share as they write batches to a store:
``BatchWriter`` (the store's lifecycle and the background loop: purge when due, wait,
flush), a failure streak logged once, and the bound on what is kept in memory while the
store is down."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, Generic, Protocol, TypedDict, TypeVar

from llm_proxy_mw.errors import StoreError

__all__ = ["BatchWriter", "StoreFailures", "WriterOptions", "drop_oldest", "flush_until_stopped"]

_B = TypeVar("_B")
_PURGE_EVERY = 3600.0


class _Store(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...


_S = TypeVar("_S", bound=_Store)


class WriterOptions(TypedDict, total=False):
    """``BatchWriter``'s keyword options, for subclasses to pass on."""

    flush_interval: float
    retention_days: int
    clock: Callable[[], float]
    max_pending: int


class StoreFailures:
    """A store's failure streak: one warning when it begins (``subject``: who failed),
    debug lines while it lasts, ``back`` logged as info when a write succeeds again."""

    def __init__(self, logger: logging.Logger, subject: str, back: str) -> None:
        self.logger = logger
        self.subject = subject
        self.back = back
        self.failing = False

    def failed(self, what: str, exc: StoreError, pending: int) -> None:
        if self.failing:
            self.logger.debug("llm_proxy_mw: %s %s failed again: %s", self.subject, what, exc)
            return
        self.failing = True
        self.logger.warning(
            "llm_proxy_mw: %s %s failed, the proxy keeps serving and retries at the next "
            "flush (%d buckets pending): %s",
            self.subject,
            what,
            pending,
            exc,
        )

    def recovered(self) -> None:
        # Only writes end a failure streak: a locked SQLite file still serves reads.
        if self.failing:
            self.failing = False
            self.logger.info("llm_proxy_mw: %s", self.back)


async def flush_until_stopped(
    stopping: asyncio.Event,
    interval: float,
    *,
    purge_due: Callable[[], bool],
    purge: Callable[[], Awaitable[Any]],
    flush: Callable[[], Awaitable[Any]],
    failures: StoreFailures,
) -> None:
    """Purge when due, then flush every ``interval`` seconds until ``stopping`` is set."""
    while True:
        try:
            if purge_due():
                await purge()
            try:
                await asyncio.wait_for(stopping.wait(), interval)
                return
            except TimeoutError:
                pass
            await flush()
        except Exception:  # a bug in one round must not stop the flushes for the whole run
            subject = failures.subject
            failures.logger.exception("llm_proxy_mw: %s flush failed unexpectedly", subject)


def drop_oldest(
    batch: dict[Any, _B], max_pending: int, drop: Callable[[_B], object], failures: StoreFailures
) -> None:
    """Keep at most ``max_pending`` buckets of ``batch`` (keyed by tuples that start with the
    minute): the oldest go to ``drop``, with a warning."""
    excess = len(batch) - max_pending
    if excess <= 0:
        return
    oldest = sorted(batch)[:excess]
    for series in oldest:
        drop(batch.pop(series))
    failures.logger.warning(
        "llm_proxy_mw: %s: the store is still failing; dropped %d buckets of minutes %d..%d "
        "to keep at most %d in memory",
        failures.subject,
        excess,
        oldest[0][0],
        oldest[-1][0],
        max_pending,
    )


class BatchWriter(Generic[_S]):
    """Buckets pending in memory, written to ``store`` by a background task every
    ``flush_interval`` seconds and at ``stop``; minutes older than ``retention_days`` purged
    at start and hourly; at most ``max_pending`` buckets kept while the store is down.

    Subclasses name themselves (``subject``, ``back``: logged when the store is back,
    ``logger``, ``task_name``) and implement ``flush``, ``purge``, ``_pending_buckets`` and
    ``_unwritten``.
    """

    subject: ClassVar[str]
    back: ClassVar[str]
    logger: ClassVar[logging.Logger]
    task_name: ClassVar[str]

    def __init__(
        self,
        store: _S,
        *,
        flush_interval: float = 5.0,
        retention_days: int = 30,
        clock: Callable[[], float] = time.time,
        max_pending: int = 20_000,
    ) -> None:
        self.store = store
        self.flush_interval = flush_interval
        self.retention_days = retention_days
        self.max_pending = max_pending
        self._clock = clock
        # One store conversation at a time, so no batch is ever in flight (neither in memory
        # nor in the store) while a read merges the two.
        self._lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        self._failures = StoreFailures(self.logger, self.subject, self.back)
        self._next_purge = 0.0

    async def flush(self) -> bool:
        """Write what is pending in one batch; False (logged) if the store failed."""
        raise NotImplementedError

    async def purge(self) -> int:
        """Delete what is older than the retention, stored and pending."""
        raise NotImplementedError

    def _pending_buckets(self) -> int:
        raise NotImplementedError

    def _unwritten(self) -> str:
        """What is pending, for the log: ``"3 unwritten buckets"``."""
        return f"{self._pending_buckets()} unwritten buckets"

    async def start(self, *, require_store: bool = False) -> None:
        """Open the store and start the background flush (and purge) task. Idempotent.

        A store that does not open is logged and tried again at every flush; with
        ``require_store`` its ``StoreError`` is raised instead, and nothing is started.
        """
        if self._task is not None:
            return
        self._stopped = False
        # Fresh primitives: asyncio binds them to the loop they first wait in, and a writer
        # may be started again under another loop (tests, a restarted host).
        self._lock, self._stopping = asyncio.Lock(), asyncio.Event()
        try:
            await self.store.open()
        except StoreError as exc:
            if require_store:
                with contextlib.suppress(StoreError):  # the failed open is what to report
                    await self.store.close()
                raise
            self._failed("open", exc)
        self._task = asyncio.create_task(self._run(), name=self.task_name)

    async def stop(self) -> None:
        """Stop the background task, flush what is pending, close the store. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping.set()
        try:
            await task
            if not await self.flush():
                self.logger.warning(
                    "llm_proxy_mw: %s lost %s at shutdown", self.subject, self._unwritten()
                )
        finally:
            await self.store.close()

    def _purge_before(self) -> int:
        """The first minute kept by a purge starting now; the next purge is due in an hour."""
        now = self._clock()
        self._next_purge = now + _PURGE_EVERY
        return int(now) // 60 * 60 - self.retention_days * 86_400

    async def _run(self) -> None:
        await flush_until_stopped(
            self._stopping,
            self.flush_interval,
            purge_due=lambda: self._clock() >= self._next_purge,
            purge=self.purge,
            flush=self.flush,
            failures=self._failures,
        )

    def _failed(self, what: str, exc: StoreError) -> None:
        self._failures.failed(what, exc, self._pending_buckets())

    def _recovered(self) -> None:
        self._failures.recovered()
