"""The routing log: rows written with group commit (one statement per batch of requests in flight), hash-chained.

Strict mode (the default) answers a request only after its row is committed: `record()` waits for the batch.
Async mode returns at once and trades that guarantee for latency. Either way one writer task per process
takes every row waiting in its queue, chains them (prev_hash, hash: keyed, storage.log_row.row_hash, over the row's
id too, taken from ids reserved ahead) and writes them in one transaction, together with the chain's head, so an
edited, inserted, deleted or renumbered row is detectable by `storage.log_verify.verify()`.

A row committed after its caller was answered otherwise (OCPI 4000: not committed in time) gets an amendment saying
so (amend(), storage.log_amendment), written with a later batch, or alone when none comes.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import structlog

from storage import log_spool
from storage.batches import next_batch
from storage.log_amendment import Amendment, amendment_records
from storage.log_connection import LogConnection
from storage.log_row import (
    GENESIS,
    LogEntry,
    in_column_order,
    listed_ids_of_entry,
    object_id_of_entry,
    row_content,
    row_hash,
    seal_mac,
    stored_text,
)
from storage.sql import QUERIES

log = structlog.get_logger()

MAX_BATCH_ROWS = 500  # rows chained and written per statement
ASYNC_LINGER_S = 0.01  # async mode: rows gathered this long before a commit (fewer, larger commits)
MAX_QUEUED_ROWS = 20_000  # async mode: rows waiting for the writer before callers wait for their commit
# A batch's write (connection included) taking longer is given up and tried again on a new connection: a server
# that stopped answering (frozen, its disk stalled, the network gone) would otherwise hold the writer, and every
# row behind it, for as long as TCP keeps the connection open. A healthy commit of 500 rows takes milliseconds.
WRITE_TIMEOUT_S = 10.0
OVERDUE_CHECK_S = 0.5  # while a batch is not committed in time: how often its callers' deadlines are looked at
# A row's id is chosen before it is hashed (migration 0014), from ids the append of the batch before reserved. Ids held
# longer than this are let go: ids rise along a chain, and across chains they stay this close to the order of writing.
IDS_KEPT_S = 60.0
RESERVE_TIMEOUT_S = 1.0  # a reserve of ids the database does not give at once: the rows are chained without ids


class LogUnavailable(Exception):
    """The routing log could not commit a row in time (strict mode)."""


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
        self._pool = pool  # for the seal of a spooled chain of unkeyed hashes, once
        self._connection = LogConnection(pool, write_timeout_s)
        self._key = key  # the chain's (storage.secrets.routing_log_key)
        self._body_cap = body_cap
        self.strict = strict
        self._commit_timeout_s = commit_timeout_s
        self._queue: asyncio.Queue[LogEntry | Amendment] = asyncio.Queue()
        self.chain_id = uuid.uuid4()
        self._chain_text = str(self.chain_id)
        self._seq = 0
        self._last_hash = GENESIS
        self._ids: deque[int] = deque()  # reserved for the next rows, lowest first
        self._ids_reserved_at = 0.0
        self._task: asyncio.Task[None] | None = None
        self._late: asyncio.TimerHandle | None = None
        self._in_flight: tuple[list[LogEntry], list[tuple[Any, ...]]] | None = None  # the batch being committed
        # rows taken from the queue and neither committed nor in flight (waiting for ids, or for their turn in a
        # refused batch written row by row): spooled at close with the queued ones
        self._taken: list[LogEntry] = []
        self._amending: list[Amendment] = []  # taken from the queue, written with the next commit (spooled at close)
        self._closing: list[Amendment] | None = None  # made while the spool is written at close: spooled too
        self._spool_dir = spool_dir
        self._drain_timeout_s = drain_timeout_s
        self.batches = 0
        self.rows = 0
        self.on_commit: Callable[[int, float], None] | None = None  # (rows, seconds) of each group commit

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[RoutingLogWriter]:
        """Writes rows while open. Every accepted row is written before it closes, or, when the database does not
        take them within drain_timeout_s (away, frozen), kept in spool_dir: the next writer to open there writes
        them first, in their own chain, as they were chained."""
        if self._spool_dir is not None:
            await log_spool.write_spooled(self._spool_dir, self._connection.append, self._seal)
        # in the hub's own log, apart from the database: a chain deleted whole with its head is still known to have been
        log.info("routing_log_chain_started", chain_id=self._chain_text, pid=os.getpid())  # the process it is of
        self._task = asyncio.create_task(self._run(), name="routing_log_writer")
        try:
            yield self
        finally:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._drain_timeout_s):
                    await self._queue.join()
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            spooled = await self._spool_unwritten()
            await self._connection.release(broken=spooled > 0)

    async def record(self, entry: LogEntry) -> None:
        """Queue a row; in strict mode return only once it is committed. In async mode too once the writer is
        max_queued_rows behind (the database slower than the traffic): callers then slow down to the pace of the
        commits instead of the queue growing without bound."""
        if not self.strict and self._queue.qsize() < self._max_queued_rows:
            self._queue.put_nowait(entry)
            return
        loop = asyncio.get_running_loop()
        entry.waiter, entry.waiting_since = loop.create_future(), loop.time()
        self._queue.put_nowait(entry)
        # No timer per request: the writer itself fails the waiters it cannot commit for in time (_fail_overdue).
        await entry.waiter

    def amend(self, entry: LogEntry, http_status: int, ocpi_status_code: int | None, message: str) -> None:
        """Record that the caller of a chained row (its content fixed) was answered otherwise than the row says: the
        amendment is written once the row is committed, with the next batch, or alone."""
        if self._closing is not None:
            self._closing.append(Amendment(entry, http_status, ocpi_status_code, message, datetime.now(UTC)))
            return
        if self._task is None or self._task.done():  # the writer has closed: only the hub's own log keeps it
            log.error("routing_log_amendment_lost", request_id=entry.request_id, http_status=http_status,
                      ocpi_status_code=ocpi_status_code, status_message=message)  # fmt: skip
            return
        self._queue.put_nowait(Amendment(entry, http_status, ocpi_status_code, message, datetime.now(UTC)))

    async def _run(self) -> None:
        while True:
            # Chaining holds the event loop ~15 us a row. In async mode nobody waits for the commits: the rows of a
            # few ms share one.
            taken = await next_batch(self._queue, self._max_batch_rows, 0.0 if self.strict else ASYNC_LINGER_S)
            batch, self._amending = _rows_and_amendments(taken)  # amendments: of rows committed before these
            self._taken = batch
            if batch:
                await self._reserve_ids(len(batch))
            head = self._seq, self._last_hash
            batch, records = self._chained_batch(batch)
            self._taken = []  # in flight from here on, with no await between
            if not batch and not self._amending:
                continue
            try:
                await self._commit(batch, records)
            except asyncpg.DataError as exc:
                # A value the database refuses is refused on every retry, and every caller behind it would wait: the
                # batch is chained and written again row by row, a refused row as _bare (a bug: _chained makes every
                # text storable, forward.OcpiStatusCode keeps a party's status code within the column).
                log.error("routing_log_batch_refused", error=f"{type(exc).__name__}: {exc}", rows=len(batch))
                self._seq, self._last_hash = head
                await self._amendments_alone()
                batch = await self._committed_one_by_one(batch)
            self.batches += bool(batch)
            self.rows += len(batch)
            for entry in batch:
                if entry.waiter is not None and not entry.waiter.done():
                    entry.waiter.set_result(None)
                self._queue.task_done()

    async def _commit(self, batch: list[LogEntry], records: list[tuple[Any, ...]]) -> None:
        # Callers waiting longer than the commit timeout are told so, even while a write hangs; their rows are
        # still written once it works. One timer per batch, cancelled by the commit.
        loop = asyncio.get_running_loop()
        self._late = loop.call_at(loop.time() + self._commit_timeout_s, self._fail_overdue, batch)
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
                    return
                except asyncpg.DataError:
                    self._in_flight = None  # refused, not in flight: written again row by row
                    raise
                except Exception as exc:  # whatever it is, a writer that stopped would leave every caller waiting
                    # Keep the rows (already chained) and retry: nothing accepted is dropped. With its kind:
                    # asyncpg's text alone can be cryptic ("cannot switch to state 12; another operation (2) is
                    # in progress" is a connection the server closed, InternalClientError), and a write given up
                    # after WRITE_TIMEOUT_S is a bare TimeoutError.
                    log.error("routing_log_write_failed", error=f"{type(exc).__name__}: {exc}".rstrip(": "),
                              rows=len(batch), queued=self._queue.qsize(), retry_in_s=delay)  # fmt: skip
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)
        finally:
            self._late.cancel()

    def _fail_overdue(self, batch: list[LogEntry]) -> None:
        """While a batch is not committed: fail the waiters that have waited longer than the commit timeout, in the
        batch and queued behind it (those would otherwise wait for as long as the database is away), and look
        again every OVERDUE_CHECK_S until the commit."""
        loop = asyncio.get_running_loop()
        due = loop.time() - self._commit_timeout_s
        queued: Iterable[LogEntry | Amendment] = self._queue._queue  # type: ignore[attr-defined]  # asyncio.Queue's deque
        _fail_waiters([e for e in itertools.chain(batch, queued)
                       if isinstance(e, LogEntry) and e.waiter is not None and e.waiting_since <= due])  # fmt: skip
        self._late = loop.call_later(OVERDUE_CHECK_S, self._fail_overdue, batch)

    async def _committed_one_by_one(self, batch: list[LogEntry]) -> list[LogEntry]:
        """The rows of a refused batch, each in a commit of its own; a row the database refuses is written _bare,
        and only if that is refused too is its caller told so."""
        committed = []
        for at, entry in enumerate(batch):
            self._taken = batch[at + 1 :]
            refused = await self._committed_alone(entry)
            if refused is not None:
                bare = _bare(entry, refused)
                refused = await self._committed_alone(bare)
                entry.chained_at = bare.chained_at  # as it is in the chain, for an amendment of it
            if refused is None:
                committed.append(entry)
            else:
                entry.chained_at = None  # not in the log: nothing to amend
                _fail_waiters([entry], "the routing log refused this exchange's row")
                self._queue.task_done()
        self._taken = []
        return committed

    async def _amendments_alone(self) -> None:
        """The amendments of a refused batch, committed without its rows; if they are refused too (a bug), they are
        dropped, said in the hub's own log, rather than refused with every row they would ride along with."""
        if not self._amending:
            return
        try:
            await self._commit([], [])
        except asyncpg.DataError as exc:
            for amendment in self._amending:
                log.error("routing_log_amendment_refused", error=f"{type(exc).__name__}: {exc}",
                          request_id=amendment.entry.request_id, http_status=amendment.http_status,
                          ocpi_status_code=amendment.ocpi_status_code, status_message=amendment.message)  # fmt: skip
            self._amended()

    def _amended(self) -> None:
        """The amendments taken are written (or dropped): done."""
        for _ in self._amending:
            self._queue.task_done()
        self._amending = []

    async def _committed_alone(self, entry: LogEntry) -> str | None:
        """None once the row is committed; what the database said if it refused it (the chain then goes on from
        the row before)."""
        head = self._seq, self._last_hash
        try:
            await self._commit([entry], [self._chained(entry)])
            return None
        except asyncpg.DataError as exc:
            self._seq, self._last_hash = head
            refused = f"{type(exc).__name__}: {exc}"
            log.error("routing_log_row_refused", error=refused, request_id=entry.request_id, path=entry.path)
            return refused

    def _chained_batch(self, batch: list[LogEntry]) -> tuple[list[LogEntry], list[tuple[Any, ...]]]:
        """The rows of a batch, chained; a row that cannot be (a bug) is reported to its caller, not written."""
        kept, records = [], []
        for entry in batch:
            try:
                records.append(self._chained(entry))
                kept.append(entry)
            except Exception:
                log.exception("routing_log_row_unwritable", request_id=entry.request_id, path=entry.path)
                _fail_waiters([entry])
                self._queue.task_done()
        return kept, records

    def _chained(self, entry: LogEntry) -> tuple[Any, ...]:
        seq = self._seq + 1  # the chain moves on only once the row is complete
        values = row_content(entry, self._chain_text, seq, self._body_cap)
        if (object_id := object_id_of_entry(entry)) is not None:
            object_id = stored_text(object_id).upper()  # a CiString: searched upper-cased (storage.log_search)
        if (listed_ids := listed_ids_of_entry(entry)) is not None:
            listed_ids = [stored_text(found).upper() for found in listed_ids]  # CiStrings, as object_id
        values["object_id"], values["listed_ids"] = object_id, listed_ids
        # the id reserved for it; a row chained again (a refused batch, row by row) keeps the one it was given
        if entry.row_id is None and self._ids:
            entry.row_id = self._ids.popleft()
        hashed = row_hash(self._key, self._last_hash, values, entry.row_id)
        prev_hash, self._seq, self._last_hash = self._last_hash, seq, hashed
        entry.chained_at = seq, hashed
        return (*in_column_order(values), prev_hash, hashed, object_id, listed_ids, entry.row_id)

    async def _reserve_ids(self, rows: int) -> None:
        """Ids for the next rows, when the ids the last append reserved are too few or held too long. Without them
        (the database away), rows are chained without ids, and the database gives theirs as it writes them."""
        now = time.monotonic()
        if now - self._ids_reserved_at > IDS_KEPT_S:
            self._ids.clear()
        if len(self._ids) >= rows:
            return
        try:
            self._take_ids(await self._connection.reserve_ids(rows - len(self._ids), RESERVE_TIMEOUT_S))
        except Exception as exc:  # the write that follows retries; its rows are hashed without their ids
            log.warning("routing_log_ids_not_reserved", error=f"{type(exc).__name__}: {exc}".rstrip(": "), rows=rows)

    def _take_ids(self, ids: list[int]) -> None:
        if not self._ids:  # held since the oldest of them was reserved
            self._ids_reserved_at = time.monotonic()
        self._ids.extend(sorted(ids))  # above those held: the database reserved them later

    async def _write(self, batch: list[LogEntry], records: list[tuple[Any, ...]]) -> None:
        """The whole batch in one call (append_routing_log_batch, migrations 0008, 0014 and 0015), so one round trip
        and one commit whatever the batch size: the rows as one array of routing_log_row records, the locations as one
        of relayed_location_entry, the amendments taken (of rows committed before) as one of
        routing_log_amendment_entry; it reserves the ids of the next batches in the same call."""
        # enough for batches up to four times this one's, so that a growing load seldom needs reserve_ids
        wanted = max(0, min(self._max_batch_rows, len(batch) * 4 + 16) - len(self._ids))
        amendments = amendment_records(self._key, self._chain_text, self._amending) if self._amending else []
        if not records and not amendments:  # amendments of rows the database refused
            return
        _, next_ids = await self._connection.append(self.chain_id, records, _locations(batch), amendments, wanted)
        if next_ids:
            self._take_ids(next_ids)

    async def _seal(self, chain_id: uuid.UUID, last_seq: int, last_hash: bytes) -> None:
        """A chain of unkeyed hashes spooled by a hub before keyed hashes, written now: sealed where it ends (as
        migration 0012 sealed the chains in the database), so that it verifies as it was chained."""
        mac = seal_mac(self._key, chain_id, last_seq, last_hash)
        async with self._pool.acquire() as conn, conn.transaction():
            # only the spool's own last row, as the spool has it: a head someone moved on made the appends skip rows
            if [r["hash"] for r in await conn.fetch(QUERIES["hashes_at"], chain_id, last_seq)] != [last_hash]:
                log.error("routing_log_spooled_chain_not_sealed", chain_id=str(chain_id), last_seq=last_seq,
                          error="the database does not hold the spool's last row as the spool has it")  # fmt: skip
                return
            await conn.execute(QUERIES["seal_chain"], chain_id, last_seq, last_hash, mac)
        log.warning("routing_log_spooled_chain_sealed", chain_id=str(chain_id), last_seq=last_seq)

    async def _spool_unwritten(self) -> int:
        """At close: the rows not committed (the batch in flight, as it was chained, then the queued ones, chained
        now) into a file of spool_dir, and the amendments not written, in a last part of their own; how many of both.
        Without a spool_dir they are counted and lost, loudly."""
        parts, waiting = [], []
        if self._in_flight is not None and self._in_flight[1]:  # not amendments alone
            batch, records = self._in_flight
            parts.append({"records": records, "locations": _locations(batch)})
            waiting += batch
        queued, self._taken = self._taken, []
        amending, self._amending = self._amending, []
        while not self._queue.empty():
            taken = self._queue.get_nowait()
            (amending if isinstance(taken, Amendment) else queued).append(taken)  # type: ignore[arg-type]
        queued, records = self._chained_batch(queued)
        if queued:
            parts.append({"records": records, "locations": _locations(queued)})
            waiting += queued
        # Alone in their part: a hub of the previous version (rolling upgrade) fails on a part without rows, keeping
        # the file for this version, rather than writing the rows and dropping the amendments.
        if amendments := amendment_records(self._key, self._chain_text, amending):
            parts.append({"records": [], "locations": [], "amendments": amendments})
        rows = sum(len(part["records"]) for part in parts)
        if not parts:
            return 0
        try:
            if self._spool_dir is None:
                raise OSError("the writer has no spool dir")
            path = log_spool.save(self._spool_dir, self._chain_text, parts)
        except OSError as exc:  # a full or read-only disk: said, with what is lost
            log.error("routing_log_rows_lost", rows=rows, amendments=len(amendments), chain_id=self._chain_text,
                      error=str(exc))  # fmt: skip
            _fail_waiters(waiting, "the hub stopped before the routing log could commit this exchange")
            return rows + len(amendments)
        log.error("routing_log_rows_spooled", rows=rows, amendments=len(amendments), path=str(path))
        return rows + len(amendments) + await self._spool_amendments_of_failed(waiting, path.parent, parts)

    async def _spool_amendments_of_failed(
        self, waiting: list[LogEntry], spool_dir: Path, parts: list[dict[str, Any]]
    ) -> int:
        """The callers still waiting for the spooled rows are failed: those whose rows are chained amend them
        (hub.ocpi.relay) before they are answered, at once, and their amendments join the spool file (saved again,
        whole); how many."""
        self._closing = []
        _fail_waiters(waiting, "the hub stopped before the routing log could commit this exchange; the row is "
                               "kept on disk and written when the hub starts again")  # fmt: skip
        await asyncio.sleep(0)  # the failed callers run up to their answer, amending as they go
        closing, self._closing = self._closing, None
        if not (amendments := amendment_records(self._key, self._chain_text, closing)):
            return 0
        parts.append({"records": [], "locations": [], "amendments": amendments})
        try:
            log_spool.save(spool_dir, self._chain_text, parts)
        except OSError as exc:
            log.error("routing_log_amendments_lost", amendments=len(amendments), chain_id=self._chain_text,
                      error=str(exc))  # fmt: skip
            return 0
        log.error("routing_log_amendments_spooled", amendments=len(amendments), chain_id=self._chain_text)
        return len(amendments)


def _rows_and_amendments(taken: list[LogEntry | Amendment]) -> tuple[list[LogEntry], list[Amendment]]:
    amendments = [item for item in taken if isinstance(item, Amendment)]
    if not amendments:  # nearly always
        return taken, []  # type: ignore[return-value]
    return [item for item in taken if isinstance(item, LogEntry)], amendments


def _locations(batch: list[LogEntry]) -> list[tuple[Any, ...]]:
    """The CDR Locations a batch's rows rewrote, as relayed_location_entry records."""
    return [
        (e.relayed_location[0], e.caller_platform_id, e.receiver_platform_id, e.from_country_code, e.from_party_id,
         e.to_country_code, e.to_party_id, e.module, e.relayed_location[1])
        for e in batch if e.relayed_location is not None
    ]  # fmt: skip


_NOT_IN_TIME = "the routing log could not commit this exchange in time"


def _bare(entry: LogEntry, refused: str) -> LogEntry:
    """A row the database refused, without the values a party chose (bodies, headers, OCPI status): its exchange
    still has its row, which says what is missing and why. A relayed CDR Location stays: the caller holds its URL."""
    return replace(
        entry, ocpi_status_code=None, request_headers=None, response_headers=None, request_body=b"",
        response_body=b"",
        error=f"{entry.error + '; ' if entry.error else ''}stored without its bodies, headers and OCPI status code: "
        f"the database refused the row ({refused})"[:2000],
    )  # fmt: skip


def _fail_waiters(batch: list[LogEntry], reason: str = _NOT_IN_TIME) -> None:
    for entry in batch:
        if entry.waiter is not None and not entry.waiter.done():
            entry.waiter.set_exception(LogUnavailable(reason))
