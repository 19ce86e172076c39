"""Amendments numbered along their chain (migration 0016): one deleted fails verify, naming its row where it is still
there; retention's deletions verify clean; amendments of before the upgrade, spooled or in the database, still do."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import msgspec
import pytest

from storage.log_amendment import Amendment, amendment_records, unnumbered
from storage.log_chain import LogChain
from storage.log_ids import ReservedIds
from storage.log_row import COLUMNS, amendment_mac
from storage.log_spool import save, write_spooled
from storage.log_verify import Heads, Verification, current_heads, verify
from storage.migrate import migrate
from storage.partitions import drop_before
from storage.routing_log import RoutingLogWriter
from storage.sql import QUERIES
from tests.conftest import LOG_KEY, SECRET_KEY
from tests.log_rows import migrate_up_to, numbered_entry, numbered_log, previous_version, run_on, sql, verified
from tests.test_routing_log_amendments import TOLD, _answered_4000_while_committed

_HASH = COLUMNS.index("hash")  # in a record as a chain links it
# 0015's append (its storage/queries.sql), as an instance of the previous version calls it through a rolling upgrade
APPEND_0015 = ("SELECT appended, next_ids FROM append_routing_log_batch($1::routing_log_row[], $2, $3, $4,"
               " $5::relayed_location_entry[], $6::routing_log_amendment_entry[], $7)")  # fmt: skip


def _amended_rows(database: str, count: int, received_at: list[datetime] | None = None) -> dict[str, int]:
    """Rows r1 .. r{count} of one chain, each amended in that order (its amendment numbered n); ids by request id."""
    entries = [numbered_entry(n) for n in range(1, count + 1)]
    for entry, at in zip(entries, received_at or [], strict=False):
        entry.received_at = at

    async def run() -> None:
        pool = await asyncpg.create_pool(database, min_size=1, max_size=2)
        async with RoutingLogWriter(pool, key=LOG_KEY, body_cap=1024).running() as writer:
            for entry in entries:
                await writer.record(entry)
            for entry in entries:
                writer.amend(entry, 200, 4000, TOLD)
        await pool.close()

    asyncio.run(asyncio.wait_for(run(), 60))
    found = sql(database, "SELECT r.id, r.request_id FROM routing_log AS r JOIN routing_log_amendment USING (chain_id,"
                          " seq)")  # fmt: skip
    return {row["request_id"]: row["id"] for row in found}


def _numbers(database: str) -> list[tuple[str, int | None]]:
    found = sql(database, "SELECT r.request_id, a.number FROM routing_log_amendment AS a JOIN routing_log AS r"
                          " USING (chain_id, seq) ORDER BY r.request_id")  # fmt: skip
    return [(r["request_id"], r["number"]) for r in found]


def _verify(database: str, saved: Heads | None = None) -> Verification:
    return run_on(database, lambda conn: verify(conn, LOG_KEY, saved=saved))


@pytest.mark.parametrize(("request_id", "number"), [("r2", 2), ("r3", 3)])  # the middle one, the newest
def test_an_amendment_deleted_from_a_row_still_there_fails_verify_naming_that_row(
    empty_database: str, request_id: str, number: int
) -> None:
    numbered_log(empty_database, 1)
    ids = _amended_rows(empty_database, 3)
    assert _numbers(empty_database) == [("r1", 1), ("r2", 2), ("r3", 3)]
    assert verified(empty_database).ok
    result = verified(empty_database, f"DELETE FROM routing_log_amendment USING routing_log AS r WHERE r.chain_id ="
                                      f" routing_log_amendment.chain_id AND r.seq = routing_log_amendment.seq AND"
                                      f" r.request_id = '{request_id}'")  # fmt: skip
    assert (result.ok, result.first_bad_id) == (False, ids[request_id]), result.problems
    assert result.problems == [f"row {ids[request_id]}: its amendment (what its caller was answered instead), number "
                               f"{number} of its chain, was deleted"]  # fmt: skip


def test_an_amendment_deleted_with_the_record_of_its_deletion_fails_verify_as_a_number_missing(
    empty_database: str,
) -> None:
    numbered_log(empty_database, 1)
    _amended_rows(empty_database, 3)
    [chain] = {r[0] for r in sql(empty_database, "SELECT chain_id FROM routing_log_amendment")}
    result = verified(empty_database, "DELETE FROM routing_log_amendment WHERE number = 2;"
                                      " DELETE FROM routing_log_amendment_dropped")  # fmt: skip
    assert (result.ok, result.first_bad_id) == (False, None)
    assert result.problems == [f"chain {chain}: its amendment number 2 is missing (of 3), with no record of retention "
                               "deleting them: amendments were deleted"]  # fmt: skip


def test_a_record_of_a_deletion_moved_to_a_row_retention_dropped_does_not_verify(empty_database: str) -> None:
    # r1's month dropped by retention: a record saying r2's deleted amendment was r1's would pass r2's for retention's
    numbered_log(empty_database, 1)
    old = datetime.now(UTC).replace(day=1, hour=12) - timedelta(days=500)
    sql(empty_database, "SELECT routing_log_add_partition($1)", old)
    ids = _amended_rows(empty_database, 3, received_at=[old])
    run_on(empty_database, lambda conn: drop_before(conn, old + timedelta(days=40), key=LOG_KEY))
    assert _numbers(empty_database) == [("r2", 2), ("r3", 3)]
    result = verified(empty_database)
    assert (result.ok, result.rows) == (True, 3), result.problems  # retention's deletion verifies clean

    tamper = ("DELETE FROM routing_log_amendment WHERE number = 2; UPDATE routing_log_amendment_dropped SET seq ="
              " (SELECT seq FROM routing_log_amendment_dropped WHERE number = 1) WHERE number = 2")  # fmt: skip
    result = verified(empty_database, tamper)
    assert result.ok is False
    assert [p.split(": ", 1)[1] for p in result.problems] == [
        "its amendment number 2 is gone, and the record of its deletion does not verify: an amendment was deleted, "
        "and that record changed or made up"
    ]
    assert ids["r2"] and result.first_bad_id is None  # r2 unknown: the record was all that named it


def test_the_newest_amendments_deleted_with_their_records_and_the_heads_count_show_against_saved_heads(
    empty_database: str,
) -> None:
    numbered_log(empty_database, 1)
    _amended_rows(empty_database, 3)
    saved = run_on(empty_database, current_heads)
    # heads saved before 0016 have no count: they still decode, and say nothing of amendments
    older = msgspec.json.decode(msgspec.json.encode(saved).replace(b'"amendments":', b'"x":'), type=Heads)
    assert {head.amendments for head in saved.chains} == {0, 3} and {h.amendments for h in older.chains} == {None}
    run_on(empty_database, lambda conn: conn.execute("DELETE FROM routing_log_amendment WHERE number = 3; DELETE FROM"
                                                     " routing_log_amendment_dropped; UPDATE routing_log_chain SET"
                                                     " amendments = 2 WHERE amendments = 3"))  # fmt: skip
    assert _verify(empty_database).ok  # what no key shows, as a chain's newest rows deleted with its head
    assert _verify(empty_database, older).ok
    result = _verify(empty_database, saved)
    [chain] = [head.chain_id for head in saved.chains if head.amendments == 3]
    assert (result.ok, result.problems) == (False, [f"chain {chain}: its head counted 3 amendments at "
                                                    f"{saved.taken_at.isoformat()}, 2 now: the newest were deleted, "
                                                    "and its head rewritten"])  # fmt: skip


def test_amendments_of_before_the_upgrade_verify_and_a_chain_mixing_them_with_numbered_ones_too(
    empty_database: str,
) -> None:
    # A chain of the previous version (0015): its amendment unnumbered. Then the same chain goes on after migration
    # 0016 with a numbered one, while an instance of the previous version still writes unnumbered ones of its own.
    chain = LogChain(LOG_KEY, 1024, ReservedIds())
    entries = [numbered_entry(n) for n in range(1, 5)]

    def unnumbered(entry_at: int) -> tuple[object, ...]:
        seq, row_hash = entries[entry_at].chained_at  # type: ignore[misc]
        values = (entries[entry_at].received_at, 200, 4000, TOLD, datetime.now(UTC))
        return (chain.text, seq, *values, amendment_mac(LOG_KEY, row_hash, chain.text, seq, values))

    async def run() -> None:
        conn = await asyncpg.connect(empty_database)
        try:
            await migrate_up_to(conn, 15)
            records = [previous_version(chain.link(entry)) for entry in entries[:2]]
            await conn.fetchrow(APPEND_0015, records, chain.chain_id, 2, records[-1][_HASH], [], [unnumbered(0)], 0)
            await migrate(conn, SECRET_KEY)
            record = previous_version(chain.link(entries[2]))
            await conn.fetchrow(APPEND_0015, [record], chain.chain_id, 3, record[_HASH], [], [unnumbered(1)], 0)
            numbered = amendment_records(chain, [Amendment(entries[2], 200, 4000, TOLD, datetime.now(UTC))])
            record = chain.link(entries[3])
            await conn.fetchrow(QUERIES["append_routing_log"], [record], chain.chain_id, 4, record[_HASH], [],
                                numbered, 0)  # fmt: skip
        finally:
            await conn.close()

    asyncio.run(asyncio.wait_for(run(), 60))
    assert _numbers(empty_database) == [("r1", None), ("r2", None), ("r3", 1)]
    result = verified(empty_database)
    assert (result.ok, result.rows) == (True, 4), result.problems
    # an unnumbered amendment deleted does not show, as before 0016; the numbered one does
    assert verified(empty_database, "DELETE FROM routing_log_amendment WHERE number IS NULL").ok
    [r3] = sql(empty_database, "SELECT id FROM routing_log WHERE request_id = 'r3'")
    assert verified(empty_database, "DELETE FROM routing_log_amendment").first_bad_id == r3["id"]


def test_a_spooled_amendment_keeps_its_number_and_one_the_previous_version_spooled_is_written_unnumbered(
    empty_database: str, tmp_path: Path
) -> None:
    numbered_log(empty_database, 1)
    spool = tmp_path / "spool"
    asyncio.run(asyncio.wait_for(_answered_4000_while_committed(empty_database, spool, True), 60))
    [path] = spool.iterdir()
    spooled = msgspec.msgpack.decode(path.read_bytes())
    [amendment] = [a for part in spooled["parts"] for a in part.get("amendments", ())]
    assert amendment[8] == 1  # its number, as this version spools it

    async def write_as_the_previous_version() -> None:
        async def append(chain_id, records, locations, amendments, ids_wanted):  # type: ignore[no-untyped-def]
            conn = await asyncpg.connect(empty_database)
            try:
                records = [previous_version(record) for record in records]  # as 0016 to 0020 spooled them
                row = await conn.fetchrow(APPEND_0015, records, chain_id, *(
                    (records[-1][COLUMNS.index("seq")], records[-1][_HASH]) if records else (None, None)
                ), locations, amendments, ids_wanted)  # fmt: skip
            finally:
                await conn.close()
            return bool(row["appended"]), list(row["next_ids"])

        pool = await asyncpg.create_pool(empty_database, min_size=1, max_size=1)
        await write_spooled(spool, append, pool, LOG_KEY)
        await pool.close()

    # The previous version writes the rows, then fails on the numbered amendment, keeping the file (deploy/README)
    asyncio.run(asyncio.wait_for(write_as_the_previous_version(), 60))
    assert [p.name for p in spool.iterdir()] == [path.name] and _numbers(empty_database) == []
    assert sql(empty_database, "SELECT count(*) FROM routing_log WHERE request_id = 'r1'")[0][0] == 1

    # A spool of the previous version (8-field amendments) is written by this one, unnumbered
    for part in spooled["parts"]:
        part["amendments"] = [a[:8] for a in part.get("amendments", ())]
    save(spool, spooled["chain_id"], spooled["parts"])

    async def start_again() -> None:
        pool = await asyncpg.create_pool(empty_database, min_size=1, max_size=2)
        async with RoutingLogWriter(pool, key=LOG_KEY, body_cap=1024, spool_dir=spool).running():
            pass
        await pool.close()

    asyncio.run(asyncio.wait_for(start_again(), 60))
    assert list(spool.iterdir()) == [] and _numbers(empty_database) == [("r1", None)]
    result = verified(empty_database)
    assert (result.ok, result.rows) == (True, 2), result.problems


def test_an_amendment_keeps_its_number_when_its_write_is_tried_again_and_a_refused_ones_is_given_again() -> None:
    chain = LogChain(LOG_KEY, 1024, ReservedIds())
    entries = [numbered_entry(n) for n in (1, 2)]
    for entry in entries:
        chain.link(entry)
    amendments = [Amendment(entry, 200, 4000, TOLD, datetime.now(UTC)) for entry in entries]
    first = amendment_records(chain, amendments)
    assert [record[8] for record in first] == [1, 2]
    assert amendment_records(chain, amendments) == first  # a write given up (timeout), sent again: a number once
    unnumbered(chain, amendments)  # refused by the database (a bug), dropped: no gap left in the chain's numbers
    assert chain.amendments == 0
