"""The callers waiting for their routing-log row's commit: answered once it is, told LogUnavailable once it cannot be.

Every caller waits in strict mode (OCPI_HUB_LOG_MODE=strict), in async mode those that come while the writer's queue is
full. A caller told LogUnavailable, the commit not done in time or not at all, is answered OCPI 4000 (hub.ocpi.relay).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterable

from storage.batches import Batches
from storage.log_amendment import Amendment
from storage.log_row import LogEntry

OVERDUE_CHECK_S = 0.5  # while a batch is not committed in time: how often its callers' deadlines are looked at
NOT_IN_TIME = "the routing log could not commit this exchange in time"


class LogUnavailable(Exception):
    """The routing log could not commit a row in time (strict mode)."""


async def queued_until_committed(queue: Batches[LogEntry | Amendment], entry: LogEntry) -> None:
    """Queue a row for the writer, and return once it is committed."""
    loop = asyncio.get_running_loop()
    entry.waiter, entry.waiting_since = loop.create_future(), loop.time()
    queue.put_nowait(entry)
    # No timer per request: the writer fails the waiters it cannot commit for in time (OverdueWaiters).
    await entry.waiter


def answer_committed(entry: LogEntry) -> None:
    if entry.waiter is not None and not entry.waiter.done():
        entry.waiter.set_result(None)


def fail_waiters(batch: Iterable[LogEntry], reason: str = NOT_IN_TIME) -> None:
    for entry in batch:
        if entry.waiter is not None and not entry.waiter.done():
            entry.waiter.set_exception(LogUnavailable(reason))


class OverdueWaiters:
    """While a batch is not committed (watching): the waiters that have waited longer than the commit timeout, in the
    batch and queued behind it (those would otherwise wait for as long as the database is away), are failed; looked at
    again every OVERDUE_CHECK_S until the commit. One timer per batch, not one per request."""

    def __init__(self, queue: Batches[LogEntry | Amendment], commit_timeout_s: float) -> None:
        self._queue = queue
        self._commit_timeout_s = commit_timeout_s
        self._late: asyncio.TimerHandle | None = None

    def watch(self, batch: list[LogEntry]) -> None:
        loop = asyncio.get_running_loop()
        self._late = loop.call_at(loop.time() + self._commit_timeout_s, self._fail_overdue, batch)

    def stop(self) -> None:
        if self._late is not None:
            self._late.cancel()

    def _fail_overdue(self, batch: list[LogEntry]) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time() - self._commit_timeout_s
        fail_waiters([e for e in itertools.chain(batch, self._queue)
                      if isinstance(e, LogEntry) and e.waiter is not None and e.waiting_since <= due])  # fmt: skip
        self._late = loop.call_later(OVERDUE_CHECK_S, self._fail_overdue, batch)
