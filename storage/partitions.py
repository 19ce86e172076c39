"""The routing log's monthly partitions: created ahead of time, and dropped whole by retention.

Dropping a partition records, per chain, the hash of each dropped row whose successor stays (routing_log_floor),
so that verify() continues every chain from its first remaining row. The default partition is never dropped: a
row no month covered stays until an operator looks at it.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg
import structlog

from storage.sql import QUERIES

log = structlog.get_logger()

MAINTENANCE_INTERVAL_S = 24 * 3600.0
_DURATION = re.compile(r"(\d+)d")


@dataclass(frozen=True, slots=True)
class Partition:
    name: str
    lower: datetime
    upper: datetime


def parse_keep(raw: str) -> timedelta:
    """'400d' → 400 days; retention is counted in whole days."""
    match = _DURATION.fullmatch(raw.strip())
    if not match or int(match.group(1)) < 1:
        raise ValueError(f"--keep must be a number of days such as 400d, got {raw!r}")
    return timedelta(days=int(match.group(1)))


async def ensure_partitions(conn: asyncpg.Connection, months_ahead: int) -> list[str]:
    """This month's partition and the next months_ahead ones; the names of those created now."""
    async with conn.transaction():
        return [r[0] for r in await conn.fetch(QUERIES["ensure_routing_log_partitions"], months_ahead)]


async def partitions(conn: asyncpg.Connection) -> list[Partition]:
    return [Partition(r["name"], r["lower"], r["upper"]) for r in await conn.fetch(QUERIES["routing_log_partitions"])]


async def drop_before(conn: asyncpg.Connection, cut: datetime, *, dry_run: bool = False) -> list[Partition]:
    """Drop every monthly partition whose rows are all older than cut, oldest first; never part of one."""
    dropped = []
    for partition in await partitions(conn):
        if partition.upper > cut:
            break
        if not dry_run:
            async with conn.transaction():
                await conn.execute(QUERIES["lock_routing_log_partitions"])
                name = '"' + partition.name.replace('"', '""') + '"'  # read from pg_class, quoted all the same
                await conn.execute(QUERIES["record_chain_floor"].format(partition=name))
                await conn.execute(f"DROP TABLE {name}")
        log.info("routing_log_partition_dropped", partition=partition.name, dry_run=dry_run)
        dropped.append(partition)
    return dropped


async def maintain(pool: asyncpg.Pool, months_ahead: int, interval_s: float = MAINTENANCE_INTERVAL_S) -> None:
    """Create the coming months' partitions daily, for as long as the hub runs (the lifespan does it at start)."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            async with pool.acquire() as conn:
                created = await ensure_partitions(conn, months_ahead)
            if created:
                log.info("routing_log_partitions_created", partitions=created)
        except (OSError, asyncpg.PostgresError) as exc:
            log.error("routing_log_partitions_failed", error=str(exc))
