"""The routing log's monthly partitions: created ahead of time, and dropped whole by retention.

Dropping a partition records, per chain, the hash of each dropped row whose successor stays (routing_log_floor),
MAC'd with the routing log's key, so that verify() continues every chain from its first remaining row, and deletes the
amendments of the dropped rows (migration 0015). The default partition is never dropped: a row no month covered stays
until an operator looks at it. Nor is a partition holding a row a legal hold covers (migration 0017,
storage.log_holds): retention skips it, its other rows kept too, and says which holds kept it.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg
import structlog

from storage.log_chain_checks import row_verifies
from storage.log_holds import holds_keeping
from storage.log_marks import verified_seals
from storage.log_row import floor_mac
from storage.sql import QUERIES

log = structlog.get_logger()

MAINTENANCE_INTERVAL_S = 24 * 3600.0
LOCK_TIMEOUT_S, LOCK_ATTEMPTS = 0.5, 8  # how long retention may hold up the hub's writes, and how often it tries
_DURATION = re.compile(r"([0-9]+)d")  # ASCII digits alone: r"\d" also matches other scripts' digits
MAX_KEEP_DAYS = 36_500


@dataclass(frozen=True, slots=True)
class Partition:
    name: str
    lower: datetime
    upper: datetime


def parse_keep(raw: str) -> timedelta:
    """'400d' → 400 days; retention is counted in whole days, a century at most (further back than any log)."""
    match = _DURATION.fullmatch(raw.strip())
    if not match or not 1 <= int(match.group(1)) <= MAX_KEEP_DAYS:
        raise ValueError(f"--keep must be a number of days from 1d to {MAX_KEEP_DAYS}d such as 400d, got {raw!r}")
    return timedelta(days=int(match.group(1)))


async def ensure_partitions(conn: asyncpg.Connection, months_ahead: int) -> list[str]:
    """This month's partition and the next months_ahead ones; the names of those created now."""
    async with conn.transaction():
        return [r[0] for r in await conn.fetch(QUERIES["ensure_routing_log_partitions"], months_ahead)]


async def partitions(conn: asyncpg.Connection) -> list[Partition]:
    return [Partition(r["name"], r["lower"], r["upper"]) for r in await conn.fetch(QUERIES["routing_log_partitions"])]


@dataclass(slots=True)
class Retention:
    """What a retention run dropped (a dry run: would drop), the partitions it kept for holds (their names: the ids of
    the holds keeping each), and in a dry run how many rows each partition before the cut holds."""

    dropped: list[Partition] = field(default_factory=list)
    held: dict[str, list[int]] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)


class RoutingLogBusy(Exception):
    """Retention could not get the lock a partition's DROP needs: long queries kept routing_log busy."""


class RoutingLogUnverified(Exception):
    """A row retention would keep a floor of does not match its hash: retention vouches for no row it cannot check."""


async def drop_before(
    conn: asyncpg.Connection,
    cut: datetime,
    *,
    key: bytes,
    dry_run: bool = False,
    lock_timeout_s: float = LOCK_TIMEOUT_S,
    attempts: int = LOCK_ATTEMPTS,
) -> Retention:
    """Drop every monthly partition whose rows are all older than cut, oldest first; never part of one, nor one
    holding a row a hold in force covers (skipped, and said: its later ones are still dropped).

    Dropping a partition locks routing_log itself, and a lock request waits behind every query using the table and
    stops every write queued after it (an auditor's long export would stall the hub's group commits). So each try
    waits at most lock_timeout_s for its locks, then gives up and lets writes through; after `attempts` tries
    RoutingLogBusy says so, and what was dropped before stays dropped. key: the routing log's, for the floors.
    """
    done = Retention()
    for partition in await partitions(conn):
        if partition.upper > cut:
            break
        if dry_run:
            quoted = _quoted(partition)
            done.rows[partition.name] = await conn.fetchval(QUERIES["partition_rows"].format(partition=quoted))
            held = await holds_keeping(conn, quoted)
        else:
            held = await _drop(conn, partition, key, lock_timeout_s, attempts)
        if held:
            log.warning("routing_log_partition_held", partition=partition.name, holds=held)
            done.held[partition.name] = held
            continue
        log.info("routing_log_partition_would_drop" if dry_run else "routing_log_partition_dropped",
                 partition=partition.name)  # fmt: skip
        done.dropped.append(partition)
    return done


def _quoted(partition: Partition) -> str:
    return '"' + partition.name.replace('"', '""') + '"'  # read from pg_class, quoted all the same


async def _drop(
    conn: asyncpg.Connection, partition: Partition, key: bytes, lock_timeout_s: float, attempts: int
) -> list[int]:
    """The partition dropped ([]), or the ids of the holds that keep it (not dropped)."""
    name = _quoted(partition)
    for attempt in range(1, attempts + 1):
        try:
            async with conn.transaction():
                await conn.execute(QUERIES["set_local_lock_timeout"], f"{round(lock_timeout_s * 1000)}ms")
                await conn.execute(QUERIES["lock_holds"])  # a hold set meanwhile waits for this DROP, or stops it
                # before the lock that stops the hub's writes: a hold on a party may have to read the whole partition
                if held := await holds_keeping(conn, name):
                    return held
                await conn.execute(QUERIES["lock_routing_log_partitions"])
                await _record_floors(conn, name, partition.name, key)
                await conn.execute(QUERIES["record_dropped_partition"].format(partition=name), partition.name,
                                   partition.lower, partition.upper)  # fmt: skip
                await conn.execute(f"DROP TABLE {name}")
                # no foreign key (it would refuse the DROP): the rows' amendments go in the same transaction
                await conn.execute(QUERIES["delete_amendments_of_dropped_rows"], partition.upper)
            return []
        except asyncpg.LockNotAvailableError:
            log.warning("routing_log_partition_busy", partition=partition.name, attempt=attempt, attempts=attempts)
            if attempt < attempts:
                await asyncio.sleep(min(2.0**attempt * lock_timeout_s, 30.0))
    raise RoutingLogBusy(
        f"partition {partition.name} was not dropped: routing_log stayed busy (long queries such as exports hold it) "
        f"for {attempts} tries of {lock_timeout_s:g} s each; run retention again later"
    )


async def _record_floors(conn: asyncpg.Connection, quoted: str, partition: str, key: bytes) -> None:
    """The floors of a partition about to go, each checked against its hash first: MAC'd, a floor says retention saw
    that row, so one made of a row planted in the partition would hide rows deleted from its chain."""
    floors = await conn.fetch(QUERIES["chain_floors_in_partition"].format(partition=quoted))
    sealed = verified_seals(key, await conn.fetch(QUERIES["sealed_chains"]))
    if unverified := [f for f in floors if not row_verifies(key, sealed, f)]:
        raise RoutingLogUnverified(
            f"partition {partition} was not dropped: {len(unverified)} of its rows do not match their hashes (row "
            f"{unverified[0]['id']} of chain {unverified[0]['chain_id']}, seq {unverified[0]['seq']}, first); run "
            "ocpi-hub verify and have them looked into"
        )
    marks = [(f["chain_id"], f["seq"], f["hash"], f["prev_hash"], f["next_apart"], f["prev_apart"]) for f in floors]
    await conn.executemany(QUERIES["record_chain_floor"], [(*mark, floor_mac(key, *mark)) for mark in marks])


async def why_no_row(conn: asyncpg.Connection, row_id: int) -> str | None:
    """Why the log has no row of this id when retention dropped it: the partition of its id range, and when (migration
    0018), or for a retention before 0018, that the id is below every row kept (its floors say when); else None."""
    dropped = await conn.fetchrow(QUERIES["dropped_partition_of_id"], row_id)
    if dropped is not None:
        month = f"{dropped['received_from']:%Y-%m-%d} until {dropped['received_before']:%Y-%m-%d}"
        return (f"retention dropped it at {_utc(dropped['dropped_at'])}, with partition {dropped['partition']} (rows "
                f"received from {month}, ids {dropped['first_id']} to {dropped['last_id']})")  # fmt: skip
    below = await conn.fetchrow(QUERIES["dropped_below_every_row"], row_id)
    if below is not None:
        first, last = _utc(below["first_drop"]), _utc(below["last_drop"])
        when = first if first == last else f"between {first} and {last}"
        return f"retention dropped it: its id is below every row the log keeps, and retention dropped rows at {when}"
    return None


def _utc(moment: datetime) -> str:
    return f"{moment.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}"


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
