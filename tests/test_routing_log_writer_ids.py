"""The routing-log writer and the ids of its rows (migration 0014): rows chained while no ids came, rows taken while
the writer waited for ids when it closed, and writes given up on while the database stalled. No row is lost or
written twice."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import structlog

from storage.routing_log import RoutingLogWriter
from tests.conftest import LOG_KEY
from tests.log_rows import numbered_entry, numbered_log, sql, verified
from tests.test_routing_log_writer import _CuttingProxy, _start_again


def test_rows_chained_while_no_ids_could_be_reserved_are_written_and_verify(empty_database: str) -> None:
    # A row's id is chosen before it is hashed, from ids the database reserves (migration 0014). A writer that gets
    # none in time (its first batch, the database not answering) chains the rows without ids and does not wait: the
    # database gives their ids as it writes them, and the rows after them take reserved ids again.
    numbered_log(empty_database, 1)

    async def run() -> list[dict[str, object]]:
        proxy = _CuttingProxy(empty_database)
        pool = await asyncpg.create_pool(await proxy.start(), min_size=1, max_size=2)
        writer = RoutingLogWriter(pool, key=LOG_KEY, body_cap=1024, commit_timeout_s=10, write_timeout_s=5)
        try:
            with structlog.testing.capture_logs() as said:
                async with writer.running():
                    proxy.silence("answers")  # on the pool's one connection: the ids are asked for on it
                    await writer.record(numbered_entry(1))
                    await writer.record(numbered_entry(2))
        finally:
            await pool.close()
            proxy.server.close()
        return said

    said = asyncio.run(asyncio.wait_for(run(), 60))
    assert [e["rows"] for e in said if e["event"] == "routing_log_ids_not_reserved"] == [1], said
    assert not [e for e in said if e["event"] == "routing_log_write_failed"], said  # the write went on a new one
    result = verified(empty_database)
    assert (result.ok, result.rows) == (True, 3), result.problems
    ids = [
        r["id"] for r in sql(empty_database, "SELECT id FROM routing_log WHERE request_id IN ('r1', 'r2') ORDER BY seq")
    ]
    assert ids == sorted(ids)


def test_writes_given_up_while_the_database_stalls_leave_no_backends_waiting_behind(empty_database: str) -> None:
    # Found by an operator's walkthrough: with routing_log locked, each write given up on (every write_timeout_s) left
    # its statement waiting on the server, one more backend and connection slot per attempt, all run once the lock
    # went. The server now ends a statement whose client closed the connection (client_connection_check_interval).
    numbered_log(empty_database, 1)

    async def run() -> tuple[int, RoutingLogWriter]:
        pool = await asyncpg.create_pool(empty_database, min_size=1, max_size=10)
        admin = await asyncpg.connect(empty_database)
        writer = RoutingLogWriter(pool, key=LOG_KEY, body_cap=1024, commit_timeout_s=30, write_timeout_s=1)
        try:
            async with writer.running():
                locked = admin.transaction()
                await locked.start()
                await admin.execute("LOCK TABLE routing_log IN ACCESS EXCLUSIVE MODE")
                waiting = asyncio.create_task(writer.record(numbered_entry(1)))
                await asyncio.sleep(5.5)  # five writes given up on, each on a connection of its own
                waiting_backends = await admin.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()")  # fmt: skip
                await locked.rollback()
                await asyncio.wait_for(waiting, 10)
        finally:
            await admin.close()
            await pool.close()
        return waiting_backends, writer

    waiting_backends, writer = asyncio.run(asyncio.wait_for(run(), 60))
    assert waiting_backends <= 2, waiting_backends  # the one of the attempt running now, and one ending
    assert writer.rows == 1
    result = verified(empty_database)
    assert (result.ok, result.rows) == (True, 2)  # written once


def test_rows_taken_while_the_writer_waits_for_ids_are_spooled_at_close_and_written_once_by_the_next_writer(
    empty_database: str, tmp_path: Path
) -> None:
    # Found by a review: a batch taken off the queue was held only by the writer's task while it waited for ids
    # (migration 0014); a close then (the database not answering, the drain timeout reached) cancelled the task, and
    # the rows were neither written nor spooled nor said to be lost.
    numbered_log(empty_database, 1)
    spool = tmp_path / "spool"

    async def stop_while_reserving() -> None:
        proxy = _CuttingProxy(empty_database)
        pool = await asyncpg.create_pool(await proxy.start(), min_size=1, max_size=2)
        writer = RoutingLogWriter(pool, key=LOG_KEY, body_cap=1024, strict=False, spool_dir=spool,
                                  drain_timeout_s=0.3)  # fmt: skip
        try:
            async with writer.running():
                proxy.silence("answers")  # the ids are asked for on the pool's one connection, and never come
                for n in (1, 2, 3):
                    await writer.record(numbered_entry(n))
                await asyncio.sleep(0.1)
        finally:
            proxy.server.close()
            pool.terminate()

    asyncio.run(asyncio.wait_for(stop_while_reserving(), 60))
    assert [path.suffix for path in spool.iterdir()] == [".routing-log-spool"]
    asyncio.run(asyncio.wait_for(_start_again(empty_database, spool, 4), 60))
    result = verified(empty_database)
    assert (result.ok, result.rows) == (True, 5)  # the first row, 1, 2, 3 (once each) and 4
