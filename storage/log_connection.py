"""The routing log writer's database connection: held between batches, closed and left to the pool after a failure."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

import asyncpg
import structlog

from storage.log_row import COLUMNS, CONTENT_COLUMNS
from storage.sql import QUERIES

log = structlog.get_logger()

_SEQ = CONTENT_COLUMNS.index("seq")
CLIENT_CHECK_MS = 1000


class LogConnection:
    """The connection of one RoutingLogWriter; write_timeout_s bounds each append, taking the connection included."""

    def __init__(self, pool: asyncpg.Pool, write_timeout_s: float) -> None:
        self._pool = pool
        self._conn: Any = None  # held between batches: a pool's acquire and release cost a reset query each time
        self._write_timeout_s = write_timeout_s
        self._checks_client = True  # until the server refuses client_connection_check_interval

    async def append(
        self,
        chain_id: uuid.UUID,
        records: list[tuple[Any, ...]],
        locations: list[tuple[Any, ...]],
        amendments: list[tuple[Any, ...]],
        ids_wanted: int,
    ) -> tuple[bool, list[int]]:
        """The batch appended to its chain with the amendments of rows committed before (migration 0015; rows: none
        for amendments alone; amendments: none in nearly every batch, whose rows queries.sql's append_chained_rows
        writes), and ids_wanted ids reserved for the next rows; False if the chain had the batch already (no row is
        written then). On the writer's connection, taken from the pool when there is none; given up after
        write_timeout_s, and then, as after any failure, the connection is closed and left to the pool."""
        last = (records[-1][_SEQ], records[-1][len(COLUMNS) - 1]) if records else (None, None)
        if records and not amendments:  # nearly every batch: one statement, cheaper for the server
            row = await self._fetchrow(QUERIES["append_chained_rows"], records, chain_id, *last, locations, ids_wanted)
        else:
            row = await self._fetchrow(QUERIES["append_routing_log"], records, chain_id, *last, locations, amendments,
                                       ids_wanted)  # fmt: skip
        return bool(row["appended"]), list(row["next_ids"])

    async def reserve_ids(self, count: int, timeout_s: float) -> list[int]:
        """count new row ids (migration 0014), within timeout_s."""
        async with asyncio.timeout(timeout_s):
            row = await self._fetchrow(QUERIES["reserve_routing_log_ids"], count)
        return list(row[0])

    async def _fetchrow(self, query: str, *args: Any) -> Any:
        try:
            async with asyncio.timeout(self._write_timeout_s):
                if self._conn is not None and _closed(self._conn):
                    await self.release()
                if self._conn is None:
                    await self._acquire()
                return await self._conn.fetchrow(query, *args)
        except BaseException:
            await self.release(broken=True)
            raise

    async def _acquire(self) -> None:
        """A pool connection, held, whose server ends a statement once its client is gone: a write given up on (the
        server stalled: a lock held, a disk frozen) and left on a closed connection otherwise waits on the server for
        as long as the stall, one more backend per attempt, each holding a connection slot (found by an operator's
        walkthrough: four of them after 30 s). PostgreSQL 14 and later check every CLIENT_CHECK_MS; the setting goes
        with the connection's reset when it is given back. Held before it is set: a SET that fails or is given up
        on closes the connection (the caller's handler), as any statement on it."""
        self._conn = conn = await self._pool.acquire()
        if self._checks_client and conn.get_server_version() >= (14,):
            try:
                await conn.execute(f"SET client_connection_check_interval = {CLIENT_CHECK_MS}")
            except asyncpg.PostgresError as exc:  # a server that cannot check its clients' sockets (not Linux)
                self._checks_client = False
                log.warning("routing_log_client_check_unavailable", error=f"{type(exc).__name__}: {exc}")

    async def release(self, broken: bool = False) -> None:
        # A connection a statement failed or was given up on may be waiting for an answer that never comes: closed,
        # not reset (a reset is one more statement to a server that may not answer); the pool opens a new one.
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                if broken:
                    conn.terminate()
                await self._pool.release(conn)


def _closed(conn: Any) -> bool:
    """A held pool connection the server closed. asyncpg takes such a connection back into its pool by itself,
    after which its proxy refuses every call, is_closed() included: that too means closed."""
    try:
        return bool(conn.is_closed())
    except asyncpg.InterfaceError:
        return True
