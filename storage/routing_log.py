"""The routing log: rows written with group commit (one statement per batch of requests in flight), hash-chained.

Strict mode (the default) answers a request only after its row is committed: `record()` waits for the batch
(storage.log_waiters). Async mode returns at once and trades that guarantee for latency. Either way one writer task
per process takes every row waiting in its queue, chains them (storage.log_chain) and writes them in one transaction,
together with the chain's head.

A row committed after its caller was answered otherwise (OCPI 4000: not committed in time) gets an amendment saying
so (amend(), storage.log_amendment), written with a later batch, or alone when none comes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import structlog

from storage import log_spool
from storage.batches import Batches
from storage.log_amendment import Amendment, amendment_records, rows_and_amendments, unnumbered
from storage.log_chain import LogChain, bare, location_records
from storage.log_connection import LogConnection
from storage.log_ids import ReservedIds
from storage.log_row import LogEntry
from storage.log_waiters import (
    LogUnavailable,
    OverdueWaiters,
    answer_committed,
    fail_waiters,
    queued_until_committed,
)

log = structlog.get_logger()

MAX_BATCH_ROWS = 500  # rows chained and written per statement
ASYNC_LINGER_S = 0.01  # async mode: rows gathered this long before a commit (fewer, larger commits)
MAX_QUEUED_ROWS = 20_000  # async mode: rows waiting for the writer before callers wait for their commit
# A batch's write (connection included) taking longer is given up and tried again on a new connection: a server
# that stopped answering (frozen, its disk stalled, the network gone) would otherwise hold the writer, and every
# row behind it, for as long as TCP keeps the connection open. A healthy commit of 500 rows takes milliseconds.
WRITE_TIMEOUT_S = 10.0
# What the database answers for a row it will never take, however often it is sent (SQLSTATE classes 22, 23 and 54): a
# value out of range, a constraint broken, an index entry too large ("index row size exceeds btree maximum", for text
# a bug left uncut). The batch is then written again row by row, the row refused bare; any other error is retried.
REFUSED = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError, asyncpg.ProgramLimitExceededError)


class RoutingLogWriter:
    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        key: bytes,
        body_cap: int,
        strict: bool = True,
        commit_timeout_s: float = 30.0,
        write_timeout_s: float = WRITE_TIMEOUT_S,
        max_batch_rows: int = MAX_BATCH_ROWS,
        max_queued_rows: int = MAX_QUEUED_ROWS,
        spool_dir: Path | None = None,
        drain_timeout_s: float = 30.0,
    ):
        self._max_batch_rows = max_batch_rows
        self._max_queued_rows = max_queued_rows
        self._pool = pool  # for the seal of a spooled chain of unkeyed hashes, once (storage.log_spool)
        self._connection = LogConnection(pool, write_timeout_s)
        self.strict = strict
        self._queue: Batches[LogEntry | Amendment] = Batches()
        self._overdue = OverdueWaiters(self._queue, commit_timeout_s)
        self._ids = ReservedIds()  # for the next rows
        self._chain = LogChain(key, body_cap, self._ids)
        self.chain_id = self._chain.chain_id
        self._task: asyncio.Task[None] | None = None
        self._in_flight: tuple[list[LogEntry], list[tuple[Any, ...]]] | None = None  # the batch being committed
        # rows taken from the queue and neither committed nor in flight (waiting for ids, or for their turn in a
        # refused batch written row by row): spooled at close with the queued ones
        self._taken: list[LogEntry] = []
        self._amending: list[Amendment] = []  # taken from the queue, written with the next commit (spooled at close)
        self._closing: list[Amendment] | None = None  # made while the spool is written at close: spooled too
        self._closed = False  # the spool at close written: an amendment made after it is lost
        self._spool_dir = spool_dir
        self._drain_timeout_s = drain_timeout_s
        self.batches = 0
        self.rows = 0
        self.on_commit: Callable[[int, float], None] | None = None  # (rows, seconds) of each group commit
        # of each write that failed: "retried" (the database away, too slow, or the connection lost: the batch is
        # written again) or "refused" (a value the database will never take: written again row by row)
        self.on_write_failed: Callable[[str], None] | None = None
        # rows and amendments accepted and not committed (queued, or in the write that failed), after each commit and
        # each failed write; 0 once closed (what was left is spooled)
        self.on_waiting: Callable[[int], None] | None = None

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[RoutingLogWriter]:
        """Writes rows while open. Every accepted row is written before it closes, or, when the database does not
        take them within drain_timeout_s (away, frozen), kept in spool_dir: the next writer to open there writes
        them first, in their own chain, as they were chained."""
        if self._spool_dir is not None:
            await log_spool.write_spooled(self._spool_dir, self._connection.append, self._pool, self._chain.key)
        # in the hub's own log, apart from the database: a chain deleted whole with its head is still known to have been
        log.info("routing_log_chain_started", chain_id=self._chain.text, pid=os.getpid())  # the process it is of
        self._task = asyncio.create_task(self._run(), name="routing_log_writer")
        try:
            yield self
        finally:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._drain_timeout_s):
                    await self._queue.join(self._task)  # or the rows are spooled at once: a forced quit ended it
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            spooled = await self._spool_unwritten()
            self._closed = True
            if self.on_waiting is not None:  # in this process: the rows left are in the spool file, or lost
                self.on_waiting(0)
            await self._connection.release(broken=spooled > 0)

    async def record(self, entry: LogEntry) -> None:
        """Queue a row; in strict mode return only once it is committed. In async mode too once the writer is
        max_queued_rows behind (the database slower than the traffic): callers then slow down to the pace of the
        commits instead of the queue growing without bound."""
        if self._closed:  # its close has spooled what was queued: nothing would write this row any more
            log.error("routing_log_row_lost", request_id=entry.request_id, path=entry.path, why="the writer had closed")
            raise LogUnavailable("the hub stopped before the routing log could take this exchange's row")
        if not self.strict and self._queue.qsize() < self._max_queued_rows:
            self._queue.put_nowait(entry)
            return
        await queued_until_committed(self._queue, entry)

    def amend(self, entry: LogEntry, http_status: int, ocpi_status_code: int | None, message: str) -> None:
        """Record that the caller of a chained row (its content fixed) was answered otherwise than the row says: the
        amendment is written once the row is committed, with the next batch, or alone."""
        if self._closing is not None:
            self._closing.append(Amendment(entry, http_status, ocpi_status_code, message, datetime.now(UTC)))
            return
        # not open, or closed: only the hub's own log keeps it. The writer's task may have ended before its close (a
        # forced quit cancels every task): the spool at close still takes what is queued.
        if self._task is None or self._closed:
            log.error("routing_log_amendment_lost", request_id=entry.request_id, http_status=http_status,
                      ocpi_status_code=ocpi_status_code, status_message=message)  # fmt: skip
            return
        self._queue.put_nowait(Amendment(entry, http_status, ocpi_status_code, message, datetime.now(UTC)))

    async def _run(self) -> None:
        while True:
            # In async mode nobody waits for the commits: the rows of a few ms share one (chaining holds the loop).
            taken = await self._queue.next_batch(self._max_batch_rows, 0.0 if self.strict else ASYNC_LINGER_S)
            batch, self._amending = rows_and_amendments(taken)  # amendments: of rows committed before these
            self._taken = batch
            if batch:
                await self._ids.reserve(self._connection, len(batch))
            head = self._chain.head
            batch, records = self._chained_batch(batch)
            self._taken = []  # in flight from here on, with no await between
            if not batch and not self._amending:
                continue
            try:
                await self._commit(batch, records)
            except REFUSED as exc:
                # A value the database refuses is refused on every retry, and every caller behind it would wait: the
                # batch is chained and written again row by row, a refused row bare (a bug: LogChain.link makes every
                # text storable, forward.OcpiStatusCode keeps a party's status code within the column).
                log.error("routing_log_batch_refused", error=f"{type(exc).__name__}: {exc}", rows=len(batch))
                self._chain.rewind(head)
                await self._amendments_alone()
                batch = await self._committed_one_by_one(batch)
            self.batches += bool(batch)
            self.rows += len(batch)
            for entry in batch:
                answer_committed(entry)
            self._queue.task_done(len(batch))

    def _chained_batch(self, batch: list[LogEntry]) -> tuple[list[LogEntry], list[tuple[Any, ...]]]:
        """The rows of a batch, chained; a row that cannot be (a bug) is reported to its caller, not written."""
        kept, records = [], []
        for entry in batch:
            try:
                records.append(self._chain.link(entry))
                kept.append(entry)
            except Exception:
                log.exception("routing_log_row_unwritable", request_id=entry.request_id, path=entry.path)
                fail_waiters([entry])
                self._queue.task_done()
        return kept, records

    async def _commit(self, batch: list[LogEntry], records: list[tuple[Any, ...]]) -> None:
        # Callers waiting longer than the commit timeout are told so, even while a write hangs; their rows are
        # still written once it works.
        self._overdue.watch(batch)
        self._in_flight = batch, records
        delay = 0.05
        try:
            while True:
                try:
                    started = time.perf_counter()
                    # After a failed write the batch may be in all the same (the connection went, or the write was
                    # given up, after the server committed, or the server runs it later): append_routing_log then
                    # writes nothing.
                    await self._write(batch, records)
                    self._in_flight = None
                    self._amended()
                    if self.on_commit is not None and batch:  # of rows: not of amendments alone
                        self.on_commit(len(batch), time.perf_counter() - started)
                    self._say_waiting(0)
                    return
                except REFUSED:
                    self._in_flight = None  # refused, not in flight: written again row by row
                    self._write_failed("refused")
                    raise
                except Exception as exc:  # whatever it is, a writer that stopped would leave every caller waiting
                    # Keep the rows (already chained) and retry: nothing accepted is dropped. With its kind:
                    # asyncpg's text alone can be cryptic ("cannot switch to state 12; another operation (2) is
                    # in progress" is a connection the server closed, InternalClientError), and a write given up
                    # after WRITE_TIMEOUT_S is a bare TimeoutError.
                    log.error("routing_log_write_failed", error=f"{type(exc).__name__}: {exc}".rstrip(": "),
                              rows=len(batch), queued=self._queue.qsize(), retry_in_s=delay)  # fmt: skip
                    self._write_failed("retried")
                    self._say_waiting(len(batch) + len(self._amending))
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)
        finally:
            self._overdue.stop()

    async def _write(self, batch: list[LogEntry], records: list[tuple[Any, ...]]) -> None:
        """The whole batch in one call (queries.sql's append_chained_rows, or with amendments append_routing_log_timed,
        migrations 0008, 0014, 0015, 0016 and 0021), so one round trip and one commit whatever the batch size: the rows
        as one array of routing_log_timed_row records, the locations as one of relayed_location_entry, the amendments
        taken (of rows committed before) as one of routing_log_amendment_numbered; it reserves the ids of the next
        batches in the same call."""
        # enough for batches up to four times this one's, so that a growing load seldom needs reserve_ids
        wanted = max(0, min(self._max_batch_rows, len(batch) * 4 + 16) - len(self._ids))
        amendments = amendment_records(self._chain, self._amending) if self._amending else []
        if not records and not amendments:  # amendments of rows the database refused
            return
        _, next_ids = await self._connection.append(self.chain_id, records, location_records(batch), amendments, wanted)
        if next_ids:
            self._ids.add(next_ids)

    def _write_failed(self, kind: str) -> None:
        if self.on_write_failed is not None:
            self.on_write_failed(kind)

    def _say_waiting(self, not_committed: int) -> None:
        """not_committed: of the rows and amendments taken from the queue."""
        if self.on_waiting is not None:
            self.on_waiting(self._queue.qsize() + len(self._taken) + not_committed)

    def _amended(self) -> None:
        """The amendments taken are written (or dropped): done."""
        self._queue.task_done(len(self._amending))
        self._amending = []

    async def _amendments_alone(self) -> None:
        """The amendments of a refused batch, committed without its rows; if they are refused too (a bug), they are
        dropped, said in the hub's own log, rather than refused with every row they would ride along with."""
        if not self._amending:
            return
        try:
            await self._commit([], [])
        except REFUSED as exc:
            for amendment in self._amending:
                log.error("routing_log_amendment_refused", error=f"{type(exc).__name__}: {exc}",
                          request_id=amendment.entry.request_id, http_status=amendment.http_status,
                          ocpi_status_code=amendment.ocpi_status_code, status_message=amendment.message)  # fmt: skip
            unnumbered(self._chain, self._amending)
            self._amended()

    async def _committed_one_by_one(self, batch: list[LogEntry]) -> list[LogEntry]:
        """The rows of a refused batch, each in a commit of its own; a row the database refuses is written bare,
        and only if that is refused too is its caller told so."""
        committed = []
        for at, entry in enumerate(batch):
            self._taken = batch[at + 1 :]
            refused = await self._committed_alone(entry)
            if refused is not None:
                stripped = bare(entry, refused)
                refused = await self._committed_alone(stripped)
                entry.chained_at = stripped.chained_at  # as it is in the chain, for an amendment of it
            if refused is None:
                committed.append(entry)
            else:
                entry.chained_at = None  # not in the log: nothing to amend
                fail_waiters([entry], "the routing log refused this exchange's row")
                self._queue.task_done()
        self._taken = []
        return committed

    async def _committed_alone(self, entry: LogEntry) -> str | None:
        """None once the row is committed; what the database said if it refused it (the chain then goes on from
        the row before)."""
        head = self._chain.head
        try:
            await self._commit([entry], [self._chain.link(entry)])
            return None
        except REFUSED as exc:
            self._chain.rewind(head)
            refused = f"{type(exc).__name__}: {exc}"
            log.error("routing_log_row_refused", error=refused, request_id=entry.request_id, path=entry.path)
            return refused

    async def _spool_unwritten(self) -> int:
        """At close: the rows not committed (the batch in flight, as it was chained, then the queued ones, chained
        now) and the amendments not written, kept in spool_dir (storage.log_spool); how many of both. Without a
        spool_dir they are counted and lost, loudly."""
        spool, waiting = log_spool.ClosingSpool(self._spool_dir, self._chain.text), []
        if self._in_flight is not None and self._in_flight[1]:  # not amendments alone
            batch, records = self._in_flight
            spool.add_rows(records, location_records(batch))
            waiting += batch
        queued, self._taken = self._taken, []
        amending, self._amending = self._amending, []
        while not self._queue.empty():
            taken = self._queue.get_nowait()
            (amending if isinstance(taken, Amendment) else queued).append(taken)  # type: ignore[arg-type]
        queued, records = self._chained_batch(queued)
        spool.add_rows(records, location_records(queued))
        waiting += queued
        spool.add_amendments(amendment_records(self._chain, amending))
        if not spool.parts:
            return 0
        if not spool.save():
            fail_waiters(waiting, "the hub stopped before the routing log could commit this exchange")
            return spool.held
        # The callers still waiting for the spooled rows are failed: those whose rows are chained amend them
        # (hub.ocpi.relay) before they are answered, at once, and their amendments join the spool file.
        self._closing = []
        fail_waiters(waiting, "the hub stopped before the routing log could commit this exchange; the row is "
                               "kept on disk and written when the hub starts again")  # fmt: skip
        await asyncio.sleep(0)  # the failed callers run up to their answer, amending as they go
        closing, self._closing = self._closing, None
        if amendments := amendment_records(self._chain, closing):
            spool.add_amendments(amendments)
            spool.save()
        return spool.saved
