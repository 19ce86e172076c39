"""The routing-log writer when things go wrong: group commit, lost connections, writes given up, rows spooled at
shutdown, a writer that falls behind, rows the database refuses. No row is lost or written twice."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest
import structlog

from storage.log_row import LogEntry
from storage.log_waiters import LogUnavailable
from storage.routing_log import RoutingLogWriter
from tests.conftest import LOG_KEY
from tests.log_rows import numbered_entry, numbered_log, sql, verified


def test_concurrent_rows_are_group_committed_and_all_written(empty_database: str) -> None:
    writer = numbered_log(empty_database, 300)
    assert writer.rows == 300
    assert writer.batches < 300  # rows in flight share a transaction
    result = verified(empty_database)
    assert (result.ok, result.rows) == (True, 300)


def test_the_writer_reconnects_when_its_connection_is_killed_and_loses_no_row(empty_database: str) -> None:
    # The writer keeps one connection between batches; PostgreSQL may drop it (restart, failover, idle kill).
    numbered_log(empty_database, 1)  # migrated, with a first chain

    async def run() -> RoutingLogWriter:
        pool = await asyncpg.create_pool(empty_database, min_size=1, max_size=3)
        admin = await asyncpg.connect(empty_database)
        # a stuck writer fails the test in 5 s
        writer = RoutingLogWriter(pool, key=LOG_KEY, body_cap=1024, commit_timeout_s=5)
        async with writer.running():
            for n in range(1, 41):
                await writer.record(numbered_entry(n))
                if n % 10 == 0:  # kill every backend of the writer's pool but the admin's own
                    await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                        "WHERE datname = current_database() AND pid <> pg_backend_pid()")  # fmt: skip
                if n % 20 == 0:  # asyncpg sees the connection go and takes it back from the writer on its own
                    await asyncio.sleep(0.3)
        await admin.close()
        await pool.close()
        return writer

    writer = asyncio.run(asyncio.wait_for(run(), 60))  # a writer that died would leave record() waiting forever
    assert writer.rows == 40
    result = verified(empty_database)
    assert (result.ok, result.rows) == (True, 41)


class _CuttingProxy:
    """A TCP proxy to PostgreSQL that can go silent in one direction on the connections it has open, as a network
    that loses the way back, or a server that stopped reading, does: nothing is closed, nothing arrives. What it
    holds back instead of dropping reaches the server when deliver_held() is called, as from a server that went on
    after a freeze."""

    def __init__(self, database_url: str) -> None:
        self.target = urlsplit(database_url)
        self._open: list[dict[str, str]] = []  # per connection: direction -> "dropped" or "held"
        self._delivered = asyncio.Event()

    async def start(self) -> str:
        server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.server = server
        port = server.sockets[0].getsockname()[1]
        return self.target._replace(netloc=f"{self.target.username}@127.0.0.1:{port}").geturl()

    def silence(self, direction: str, hold: bool = False) -> None:  # "answers" or "requests", on connections open now
        for connection in self._open:
            connection[direction] = "held" if hold else "dropped"

    def deliver_held(self) -> None:
        self._delivered.set()

    async def _relay(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection(self.target.hostname, self.target.port)
        connection: dict[str, str] = {}
        self._open.append(connection)

        async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: str) -> None:
            held = bytearray()
            with contextlib.suppress(OSError):
                while data := await reader.read(65536):
                    if direction not in connection:
                        writer.write(data)
                        await writer.drain()
                    elif connection[direction] == "held":
                        held += data
                if held:
                    await self._delivered.wait()
                    writer.write(held)
                    await writer.drain()
            writer.close()

        await asyncio.gather(pump(client_reader, server_writer, "requests"),
                             pump(server_reader, client_writer, "answers"))  # fmt: skip


def test_a_write_the_server_runs_after_it_was_given_up_and_retried_is_not_written_twice(empty_database: str) -> None:
    # A frozen server runs the statement it had received when it goes on, though the writer gave it up and wrote the
    # batch again on a new connection meanwhile: both committed, and the chain had its rows twice (seen in CI).
    numbered_log(empty_database, 1)

    async def run() -> None:
        proxy = _CuttingProxy(empty_database)
        pool = await asyncpg.create_pool(await proxy.start(), min_size=1, max_size=2)
        writer = RoutingLogWriter(pool, key=LOG_KEY, body_cap=1024, commit_timeout_s=10, write_timeout_s=1)
        try:
            async with writer.running():
                await writer.record(numbered_entry(1))
                proxy.silence("requests", hold=True)
                await writer.record(numbered_entry(2))  # given up after 1 s, written on a new connection
                proxy.deliver_held()  # the first attempt reaches the server now
                await asyncio.sleep(1)
                await writer.record(numbered_entry(3))
        finally:
            await pool.close()
            proxy.server.close()

    asyncio.run(asyncio.wait_for(run(), 60))
    result = verified(empty_database)
    assert (result.ok, result.rows) == (True, 4)


@pytest.mark.parametrize("lost", ["answers", "requests"])
def test_a_write_the_database_never_answers_is_given_up_and_its_rows_are_written_once(
    empty_database: str, lost: str
) -> None:
    # A server that stops answering (frozen, its disk stalled, the network gone) held the writer and every caller
    # behind it for as long as TCP kept the connection. Now the write is given up after write_timeout_s and tried
    # on a new connection; when only the answer was lost, the batch is committed already and is not written twice
    # (the retry used to fail on the chain's unique seq for ever).
    numbered_log(empty_database, 1)

    failures: list[str] = []  # what an operator's ocpi_hub_routing_log_write_failures_total counts

    async def run() -> tuple[list[float], RoutingLogWriter]:
        proxy = _CuttingProxy(empty_database)
        pool = await asyncpg.create_pool(await proxy.start(), min_size=1, max_size=2)
        writer = RoutingLogWriter(pool, key=LOG_KEY, body_cap=1024, commit_timeout_s=10, write_timeout_s=1)
        writer.on_write_failed = failures.append
        took = []
        try:
            async with writer.running():
                for n in (1, 2, 3):
                    if n == 2:
                        proxy.silence(lost)
                    started = time.monotonic()
                    await writer.record(numbered_entry(n))
                    took.append(time.monotonic() - started)
        finally:
            await pool.close()
            proxy.server.close()
        return took, writer

    took, writer = asyncio.run(asyncio.wait_for(run(), 60))
    assert took[1] > 1 and took[1] < 5 and took[0] < 1 and took[2] < 1
    assert writer.rows == 3
    assert failures and set(failures) == {"retried"}, failures  # given up, then written again
    result = verified(empty_database)
    assert (result.ok, result.rows) == (True, 4)


async def _stop_while_answers_are_lost(database_url: str, spool: Path) -> list[object]:
    """A writer closed while the database's answers are lost: entry 1 committed, entry 2 in flight (committed with
    its answer lost), entry 3 queued behind it; 2 and 3 end in a spool file. What the two callers got."""
    proxy = _CuttingProxy(database_url)
    pool = await asyncpg.create_pool(await proxy.start(), min_size=1, max_size=2)
    writer = RoutingLogWriter(pool, key=LOG_KEY, body_cap=1024, write_timeout_s=30, spool_dir=spool,
                              drain_timeout_s=1)  # fmt: skip
    try:
        async with writer.running():
            await writer.record(numbered_entry(1))
            proxy.silence("answers")
            calls = [asyncio.create_task(writer.record(numbered_entry(2)))]
            await asyncio.sleep(0.3)  # entry 2 is in flight, entry 3 queued behind it
            calls.append(asyncio.create_task(writer.record(numbered_entry(3))))
            await asyncio.sleep(0.1)
    finally:
        proxy.server.close()
        pool.terminate()
    return list(await asyncio.gather(*calls, return_exceptions=True))


async def _start_again(database_url: str, spool: Path, n: int) -> None:
    """A writer opened on spool, as a hub starting on the same data dir, recording entry n."""
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    writer = RoutingLogWriter(pool, key=LOG_KEY, body_cap=1024, spool_dir=spool)
    async with writer.running():
        await writer.record(numbered_entry(n))
    await pool.close()


def _spooled(database_url: str, tmp_path: Path) -> tuple[Path, Path]:
    """A log of one row, then a writer closed with two rows in a spool file: (the spool dir, the file)."""
    numbered_log(database_url, 1)
    spool = tmp_path / "spool"
    asyncio.run(asyncio.wait_for(_stop_while_answers_are_lost(database_url, spool), 60))
    [path] = spool.iterdir()
    return spool, path


def test_rows_not_committed_when_the_writer_closes_are_spooled_and_written_once_by_the_next_writer(
    empty_database: str, tmp_path: Path
) -> None:
    # The batch in flight at close may have been committed with its answer lost: the next writer must not write it
    # twice, and must write the rows queued behind it, in the chain they were given.
    numbered_log(empty_database, 1)
    spool = tmp_path / "spool"
    outcomes = asyncio.run(asyncio.wait_for(_stop_while_answers_are_lost(empty_database, spool), 60))
    assert all(isinstance(outcome, LogUnavailable) for outcome in outcomes)
    assert [path.suffix for path in spool.iterdir()] == [".routing-log-spool"]
    asyncio.run(asyncio.wait_for(_start_again(empty_database, spool, 4), 60))
    assert list(spool.iterdir()) == []
    result = verified(empty_database)
    assert (result.ok, result.rows) == (True, 5)  # the first row, 1, 2 (once), 3 and 4


def test_a_spool_file_held_by_a_live_worker_is_left_to_it_and_taken_by_the_next_writer_once_that_worker_died(
    empty_database: str, tmp_path: Path
) -> None:
    # Workers sharing a data dir claim a spool file by a lock on it. A claim that outlived its process (the hub
    # before renamed the file to "{chain}.{pid}") kept the rows off the database for good.
    spool, path = _spooled(empty_database, tmp_path)
    holder = subprocess.Popen(  # a worker busy writing the file
        [sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'rb'); "
                               "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)", str(path)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        asyncio.run(asyncio.wait_for(_start_again(empty_database, spool, 4), 60))
        assert list(spool.iterdir()) == [path]  # left to the worker holding it
        assert verified(empty_database).rows == 4  # the first row, 1, 2 (committed as its answer was lost), 4
    finally:
        holder.kill()
        holder.wait()
    asyncio.run(asyncio.wait_for(_start_again(empty_database, spool, 5), 60))  # the worker died: its lock is gone
    assert list(spool.iterdir()) == []
    result = verified(empty_database)
    assert (result.ok, result.rows) == (True, 6)  # 3 came in with the file, 2 not twice


def test_a_spool_file_a_hub_before_locks_claimed_and_died_with_is_written_by_the_next_writer(
    empty_database: str, tmp_path: Path
) -> None:
    spool, path = _spooled(empty_database, tmp_path)
    path.rename(path.with_suffix(".4242"))  # claimed by that hub's process 4242, which died writing it
    asyncio.run(asyncio.wait_for(_start_again(empty_database, spool, 4), 60))
    assert list(spool.iterdir()) == []
    result = verified(empty_database)
    assert (result.ok, result.rows) == (True, 5)


def test_a_writer_that_cannot_spool_its_rows_still_closes_and_says_how_many_were_lost(
    empty_database: str, tmp_path: Path
) -> None:
    numbered_log(empty_database, 1)
    (tmp_path / "file").write_text("")

    async def close_with_rows_left() -> None:
        pool = await asyncpg.create_pool(empty_database, min_size=1, max_size=2)
        blocker = await asyncpg.connect(empty_database)
        spool = tmp_path / "file" / "spool"  # under a file: mkdir fails, as on a full or read-only disk
        writer = RoutingLogWriter(pool, key=LOG_KEY, body_cap=1024, strict=False, spool_dir=spool, drain_timeout_s=0.5)
        try:
            async with blocker.transaction():
                await blocker.execute("LOCK TABLE routing_log_chain IN EXCLUSIVE MODE")  # commits stall
                async with writer.running():
                    for n in (1, 2):
                        await writer.record(numbered_entry(n))
        finally:
            await blocker.close()
            pool.terminate()

    with structlog.testing.capture_logs() as logs:
        asyncio.run(asyncio.wait_for(close_with_rows_left(), 30))
    [lost] = [entry for entry in logs if entry["event"] == "routing_log_rows_lost"]
    assert lost["rows"] == 2 and "Not a directory" in lost["error"]


def test_callers_queued_behind_a_batch_that_cannot_commit_are_told_in_time_too(empty_database: str) -> None:
    # Only the waiters of the batch being written had a deadline: a caller whose row queued behind it waited for
    # as long as the database was away.
    numbered_log(empty_database, 1)

    async def run() -> tuple[list[object], list[float]]:
        pool = await asyncpg.create_pool(empty_database, min_size=1, max_size=2)
        blocker = await asyncpg.connect(empty_database)
        writer = RoutingLogWriter(pool, key=LOG_KEY, body_cap=1024, commit_timeout_s=1, write_timeout_s=30)

        async def call(n: int) -> tuple[object, float]:
            started = time.monotonic()
            try:
                return await writer.record(numbered_entry(n)), time.monotonic() - started
            except LogUnavailable as exc:
                return exc, time.monotonic() - started

        try:
            async with writer.running(), blocker.transaction():
                await blocker.execute("LOCK TABLE routing_log_chain IN EXCLUSIVE MODE")  # commits stall
                first = asyncio.create_task(call(1))
                await asyncio.sleep(0.5)
                behind = [asyncio.create_task(call(n)) for n in (2, 3)]
                await asyncio.sleep(2.5)
                answered = [task.result() for task in (first, *behind) if task.done()]
        finally:
            await blocker.close()
            await pool.close()
        return [outcome for outcome, _ in answered], [took for _, took in answered]

    outcomes, took = asyncio.run(asyncio.wait_for(run(), 60))
    assert len(outcomes) == 3 and all(isinstance(outcome, LogUnavailable) for outcome in outcomes)
    assert all(1 <= t < 2 for t in took), took  # each at its own deadline, while the database still held them
    result = verified(empty_database)
    assert (result.ok, result.rows) == (True, 4)  # and every row written once it could be


def test_async_mode_holds_callers_back_once_the_writer_falls_behind_and_loses_no_row(empty_database: str) -> None:
    # A database slower than the traffic must not grow the queue without bound; big backlogs go in capped batches.
    numbered_log(empty_database, 1)

    async def run() -> tuple[int, RoutingLogWriter]:
        pool = await asyncpg.create_pool(empty_database, min_size=1, max_size=2)
        blocker = await asyncpg.connect(empty_database)
        writer = RoutingLogWriter(pool, key=LOG_KEY, body_cap=1024, strict=False, max_queued_rows=5, max_batch_rows=3)
        try:
            async with writer.running():
                async with blocker.transaction():
                    await blocker.execute("LOCK TABLE routing_log_chain IN EXCLUSIVE MODE")  # commits stall
                    calls = [asyncio.create_task(writer.record(numbered_entry(n))) for n in range(1, 13)]
                    await asyncio.sleep(0.5)
                    answered_while_stalled = sum(call.done() for call in calls)
                await asyncio.wait_for(asyncio.gather(*calls), 10)
        finally:
            await blocker.close()
            await pool.close()
        return answered_while_stalled, writer

    answered_while_stalled, writer = asyncio.run(asyncio.wait_for(run(), 60))
    assert answered_while_stalled == 5  # the queue's worth, answered at once; the rest waited for their commits
    assert writer.rows == 12 and writer.batches >= 4
    result = verified(empty_database)
    assert (result.ok, result.rows) == (True, 13)


def _recorded(
    database_url: str, together: list[LogEntry], then: LogEntry | None = None, failures: list[str] | None = None
) -> list[object]:
    """What record() gave each of the entries recorded together (in flight at once), then the one recorded after
    them: None, or the exception it raised. failures: the kind of each write that failed is added to it."""

    async def run() -> list[object]:
        pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
        writer = RoutingLogWriter(pool, key=LOG_KEY, body_cap=1024)
        if failures is not None:
            writer.on_write_failed = failures.append
        async with writer.running():
            outcomes = await asyncio.gather(*(writer.record(entry) for entry in together), return_exceptions=True)
            if then is not None:
                outcomes.append(await writer.record(then))
        await pool.close()
        return outcomes

    return asyncio.run(asyncio.wait_for(run(), 30))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("request_headers", {"x-odd": object()}),  # a bug's way of making a row that cannot be chained
        ("http_status", 2**40),  # ... or one the database refuses (out of its integer's range), on every retry
        # ... or text a bug left uncut, too long for an index entry (ProgramLimitExceededError, not a DataError): it was
        # retried for ever, holding every row behind it
        ("module", secrets.token_hex(5000)),
    ],
)
def test_a_row_that_cannot_be_written_fails_its_caller_and_the_log_goes_on(
    empty_database: str, field: str, value: object
) -> None:
    numbered_log(empty_database, 1)
    broken = numbered_entry(1)
    setattr(broken, field, value)
    outcomes = _recorded(empty_database, [broken, numbered_entry(2)], then=numbered_entry(3))
    assert isinstance(outcomes[0], LogUnavailable) and outcomes[1:] == [None, None]
    result = verified(empty_database)
    assert (result.ok, result.rows) == (True, 3)


def test_a_row_refused_for_a_value_a_party_chose_is_stored_without_it_saying_why(empty_database: str) -> None:
    numbered_log(empty_database, 1)
    refused = numbered_entry(1)
    refused.ocpi_status_code = 2**40  # a bug's way past forward.OcpiStatusCode: out of the column's integer range
    refused.response_body = b'{"status_code": 1099511627776}'
    failures: list[str] = []
    # both callers get their answer
    assert _recorded(empty_database, [refused, numbered_entry(2)], failures=failures) == [None, None]
    assert failures == ["refused", "refused"]  # the batch, then the row alone; bare, it was taken
    [row] = sql(empty_database, "SELECT * FROM routing_log WHERE request_id = 'r1'")
    assert (row["path"], row["http_status"], row["routing"]) == (
        "/ocpi/2.2.1/receiver/locations/NL/ABC/L1",
        200,
        "direct",
    )
    assert row["ocpi_status_code"] is None and row["request_body"] is None and row["response_body"] is None
    assert row["request_headers"] is None
    assert "stored without its bodies, headers and OCPI status code" in row["error"]
    assert "out of int32 range" in row["error"]
    result = verified(empty_database)
    assert (result.ok, result.rows) == (True, 3)


def test_a_writer_cancelled_with_every_task_as_at_a_forced_quit_spools_its_rows_at_once(
    empty_database: str, tmp_path: Path
) -> None:
    # A second Ctrl-C is uvicorn's forced quit: it skips the app's shutdown, and asyncio.run cancels every task left,
    # the writer's own among them. Its close then waited out drain_timeout_s for a queue no task would empty any more,
    # before spooling the rows.
    numbered_log(empty_database, 1)
    spool = tmp_path / "spool"

    async def forced_quit() -> float:
        pool = await asyncpg.create_pool(empty_database, min_size=1, max_size=2)
        blocker = await asyncpg.connect(empty_database)
        writer = RoutingLogWriter(pool, key=LOG_KEY, body_cap=1024, strict=False, spool_dir=spool, drain_timeout_s=20)
        serving = asyncio.Event()

        async def lifespan() -> None:
            async with writer.running():
                for n in (1, 2):
                    await writer.record(numbered_entry(n))
                serving.set()
                await asyncio.Event().wait()

        try:
            async with asyncio.timeout(60), blocker.transaction():  # not wait_for: its task would be cancelled too
                await blocker.execute("LOCK TABLE routing_log_chain IN EXCLUSIVE MODE")  # the rows stay uncommitted
                task = asyncio.create_task(lifespan())
                await serving.wait()
                await asyncio.sleep(0.2)  # the first batch in flight
                for left in asyncio.all_tasks() - {asyncio.current_task()}:
                    left.cancel()  # as asyncio.run does once uvicorn's server has returned
                began = time.monotonic()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                return time.monotonic() - began
        finally:
            await blocker.close()
            await pool.close()

    took = asyncio.run(forced_quit())
    assert took < 10, f"closed after {took:.1f} s"
    assert [path.suffix for path in spool.iterdir()] == [".routing-log-spool"]
    asyncio.run(asyncio.wait_for(_start_again(empty_database, spool, 3), 60))
    result = verified(empty_database)
    assert (result.ok, result.rows) == (True, 4)
