"""Verify says ok on a healthy log, however its rows were received, chained and dropped: a busy hub's chains in a
time range, retention over months of rows that jump between them, saved heads, floors of before the upgrade (found by
a review of the keyed chains)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from storage.log_row import LogEntry
from storage.log_verify import Heads, Verification, current_heads, verify
from storage.migrate import migrate
from storage.partitions import drop_before
from storage.routing_log import RoutingLogWriter
from tests.conftest import LOG_KEY, SECRET_KEY
from tests.log_rows import numbered_entry, run_on, sql, unkeyed_chain, write

JAN, FEB, MAR, APR, MAY = (datetime(2025, m, 1, tzinfo=UTC) for m in (1, 2, 3, 4, 5))


def _verify(
    url: str, since: datetime | None = None, until: datetime | None = None, saved: Heads | None = None
) -> Verification:
    return run_on(url, lambda conn: verify(conn, LOG_KEY, since, until, saved=saved))


def _retention(url: str, cut: datetime) -> list[Any]:
    return run_on(url, lambda conn: drop_before(conn, cut, key=LOG_KEY))


def _entries(times: list[datetime], tag: str = "x") -> list[LogEntry]:
    out = []
    for n, at in enumerate(times):
        e = numbered_entry(n)
        e.request_id = f"{tag}{n}"
        e.received_at = at
        out.append(e)
    return out


def _months(url: str, *months: datetime) -> None:
    write(url, [])
    for m in months:
        sql(url, "SELECT routing_log_add_partition($1)", m)


def test_a_verify_since_a_time_between_two_concurrent_requests_is_ok(empty_database: str) -> None:
    # Two concurrent requests: A received at t0 takes 2 s, B received at t0+0.5 s takes 10 ms: B is chained first.
    t0 = datetime.now(UTC) - timedelta(minutes=5)
    times = [t0 - timedelta(seconds=10), t0 + timedelta(seconds=0.5), t0, t0 + timedelta(seconds=3)]
    write(empty_database, _entries(times))
    assert _verify(empty_database).ok
    result = _verify(empty_database, since=t0 + timedelta(seconds=0.2))
    assert result.ok, result.problems


def test_a_verify_until_a_time_between_two_concurrent_requests_is_ok(empty_database: str) -> None:
    t0 = datetime.now(UTC) - timedelta(minutes=5)
    times = [t0 - timedelta(seconds=10), t0 + timedelta(seconds=0.5), t0, t0 + timedelta(seconds=3)]
    write(empty_database, _entries(times))
    result = _verify(empty_database, until=t0 + timedelta(seconds=0.2))
    assert result.ok, result.problems


def test_a_verify_since_a_time_after_the_chains_last_row_was_received_is_ok(empty_database: str) -> None:
    t0 = datetime.now(UTC) - timedelta(minutes=5)
    times = [t0 - timedelta(seconds=10), t0 + timedelta(seconds=1), t0]  # last chained: a slow one, received first
    write(empty_database, _entries(times))
    result = _verify(empty_database, since=t0 + timedelta(seconds=0.5))
    assert result.ok, result.problems


def test_a_chain_jumping_between_five_months_verifies_after_each_months_retention(empty_database: str) -> None:
    _months(empty_database, JAN, FEB, MAR, APR, MAY)
    d = timedelta(days=27, hours=23)
    # a chain running from January to May, rows jumping back a month at each month's end
    times = [JAN, JAN + d, FEB, JAN + d, FEB + d, MAR, FEB + d, MAR + d, APR, MAR + d, APR + d, MAY, APR + d, MAY]
    times = [t + timedelta(seconds=n) for n, t in enumerate(times)]
    write(empty_database, _entries(times))
    assert _verify(empty_database).ok
    for cut in (FEB, MAR, APR, MAY):
        _retention(empty_database, cut)
        result = _verify(empty_database)
        assert result.ok, (cut, result.problems)


def test_several_chains_some_dropped_whole_verify_with_saved_heads(empty_database: str) -> None:
    _months(empty_database, JAN, FEB, MAR)
    d = timedelta(days=27)
    write(empty_database, _entries([JAN, JAN + d, FEB, JAN + d], "a"))  # chain a ends in Jan (slow row)
    write(empty_database, _entries([JAN, JAN], "b"))  # chain b only January
    write(empty_database, _entries([FEB, JAN + d, FEB + d, MAR, FEB + d], "c"))
    saved = run_on(empty_database, current_heads)
    for cut in (FEB, MAR):
        _retention(empty_database, cut)
        result = _verify(empty_database, saved=saved)
        assert result.ok, (cut, result.problems)


def test_saved_heads_verify_after_retention_dropped_their_rows_while_the_chain_went_on(empty_database: str) -> None:
    _months(empty_database, JAN, FEB, MAR)

    async def work(conn: asyncpg.Connection) -> tuple[Heads, Heads]:
        await migrate(conn, SECRET_KEY)
        pool = await asyncpg.create_pool(empty_database, min_size=1, max_size=2)
        writer = RoutingLogWriter(pool, key=LOG_KEY, body_cap=1024)
        async with writer.running():
            for e in _entries([JAN, JAN, FEB, JAN], "p"):
                await writer.record(e)
            first = await current_heads(conn)  # head: seq 4, received in January
            for e in _entries([FEB, FEB, MAR], "q"):
                await writer.record(e)
            second = await current_heads(conn)
        await pool.close()
        return first, second

    first, second = run_on(empty_database, work)
    for cut in (FEB, MAR):
        _retention(empty_database, cut)
        for saved in (first, second):
            result = _verify(empty_database, saved=saved)
            assert result.ok, (cut, result.problems)


def test_a_chain_whose_newest_row_retention_dropped_before_the_upgrade_verifies(empty_database: str) -> None:
    # A release before keyed hashes: a chain whose last row (a slow request's) was received in January, the rest in
    # February; its retention dropped January, keeping a floor (no prev_hash then) at the head's row.
    from tests.test_retention import _written_by_an_earlier_release

    rows = unkeyed_chain([FEB, FEB, FEB, JAN])
    _written_by_an_earlier_release(empty_database, 11, rows)
    chain, head_hash = rows[-1][1], rows[-1][-1]
    sql(empty_database, "DELETE FROM routing_log WHERE seq = 4")  # what the old retention dropped
    sql(empty_database, "INSERT INTO routing_log_floor (chain_id, seq, hash) VALUES ($1, 4, $2)", chain, head_hash)
    write(empty_database, [])  # the upgrade: migration 0012 seals the chain and MACs the floor
    result = _verify(empty_database)
    assert result.ok, result.problems
