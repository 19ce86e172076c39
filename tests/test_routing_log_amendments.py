"""Amendments of routing-log rows (migration 0015): a row committed after its caller was answered OCPI 4000 (its commit
did not finish in time) is kept with what the caller got instead, written once, spooled at a stop, MAC'd."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from storage.log_chain import LogChain
from storage.log_ids import ReservedIds
from storage.log_row import COLUMNS
from storage.log_waiters import LogUnavailable
from storage.partitions import drop_before
from storage.routing_log import RoutingLogWriter
from tests.conftest import LOG_KEY, Hub, Services, unique_party_id
from tests.log_rows import numbered_entry, numbered_log, previous_version, run_on, sql, verified, write
from tests.test_credentials_rotation import console_page

_HASH = COLUMNS.index("hash")  # in a record as the writer chains it
TOLD = "the routing log could not commit this exchange in time; the exchange itself went through"


async def _answered_4000_while_committed(
    database_url: str,
    spool: Path | None = None,
    stalled_through_the_stop: bool = False,
    received_at: datetime | None = None,
    blocker_url: str | None = None,
) -> RoutingLogWriter:
    """A row whose commit stalls (routing_log_chain locked) past its caller's deadline, amended as the relay amends it;
    then the stall ends, before the writer stops or (stalled_through_the_stop) after: the row is spooled then. The lock
    is taken on blocker_url (default: database_url), a role that may lock the table."""
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=3)
    blocker = await asyncpg.connect(blocker_url or database_url)
    writer = RoutingLogWriter(pool, key=LOG_KEY, body_cap=1024, commit_timeout_s=1, write_timeout_s=30,
                              spool_dir=spool, drain_timeout_s=1)  # fmt: skip
    entry = numbered_entry(1)
    entry.received_at = received_at or entry.received_at
    stall = blocker.transaction()
    try:
        async with writer.running():
            await stall.start()
            await blocker.execute("LOCK TABLE routing_log_chain IN EXCLUSIVE MODE")  # commits stall
            with pytest.raises(LogUnavailable):
                await writer.record(entry)
            assert entry.chained_at is not None  # in the batch being committed: its content fixed by its hash
            writer.amend(entry, 200, 4000, TOLD)
            if not stalled_through_the_stop:
                await stall.rollback()
        if stalled_through_the_stop:
            await stall.rollback()
    finally:
        await blocker.close()
        await pool.close()
    return writer


def _amendments(database_url: str) -> list[tuple[object, ...]]:
    rows = sql(database_url, "SELECT r.request_id, r.ocpi_status_code, a.http_status, a.ocpi_status_code, a.message,"
                             " a.row_received_at = r.received_at FROM routing_log_amendment AS a"
                             " JOIN routing_log AS r USING (chain_id, seq)")  # fmt: skip
    return [tuple(row) for row in rows]


async def _started_again(database: str, spool: Path) -> None:
    """A writer started on the spool a stopped one left, which it writes at its start, and stopped."""
    pool = await asyncpg.create_pool(database, min_size=1, max_size=2)
    async with RoutingLogWriter(pool, key=LOG_KEY, body_cap=1024, spool_dir=spool).running():
        pass
    await pool.close()


def test_a_row_committed_after_its_caller_was_answered_4000_is_amended_with_that_answer(empty_database: str) -> None:
    # Its row was committed as it was chained (no OCPI status of its own here: a relayed 1000 in the hub), while its
    # caller got 4000 after the commit timeout: only the hub's own log said so.
    numbered_log(empty_database, 1)
    writer = asyncio.run(asyncio.wait_for(_answered_4000_while_committed(empty_database), 60))
    assert _amendments(empty_database) == [("r1", None, 200, 4000, TOLD, True)]
    assert (writer.batches, writer.rows) == (1, 1)  # written alone, the amendment is no batch of rows (metrics)
    result = verified(empty_database)
    assert (result.ok, result.rows) == (True, 2), result.problems


def test_an_amendment_not_written_when_the_writer_stops_is_spooled_and_written_by_the_next_writer(
    empty_database: str, tmp_path: Path
) -> None:
    numbered_log(empty_database, 1)
    spool = tmp_path / "spool"
    asyncio.run(asyncio.wait_for(_answered_4000_while_committed(empty_database, spool, True), 60))
    assert len(list(spool.iterdir())) == 1
    assert _amendments(empty_database) == []

    asyncio.run(asyncio.wait_for(_started_again(empty_database, spool), 60))
    assert list(spool.iterdir()) == []
    assert _amendments(empty_database) == [("r1", None, 200, 4000, TOLD, True)]
    result = verified(empty_database)
    assert (result.ok, result.rows) == (True, 2), result.problems


@pytest.mark.parametrize(
    "tamper",
    [
        "UPDATE routing_log_amendment SET ocpi_status_code = 1000",
        "UPDATE routing_log_amendment SET message = 'answered as the row says'",
        "UPDATE routing_log_amendment SET answered_at = answered_at - interval '1 minute'",
        # moved to r0, the first writer's row (seq 1 too, in its own chain)
        "UPDATE routing_log_amendment SET chain_id = (SELECT chain_id FROM routing_log WHERE request_id = 'r0')",
    ],
)
def test_an_amendment_edited_or_moved_to_another_row_fails_verify_naming_that_row(
    empty_database: str, tamper: str
) -> None:
    numbered_log(empty_database, 1)
    asyncio.run(asyncio.wait_for(_answered_4000_while_committed(empty_database), 60))
    [(amended_id, first_id, chain)] = sql(empty_database, "SELECT max(id), min(id), max(chain_id::text) FILTER "
                                                          "(WHERE request_id = 'r1') FROM routing_log")  # fmt: skip
    moved = "SET chain_id" in tamper
    row_id = first_id if moved else amended_id
    result = verified(empty_database, tamper)
    assert (result.ok, result.first_bad_id) == (False, row_id)
    # moved, it is missing from its own chain too (migration 0016): an UPDATE leaves no record of a deletion
    gone = [f"chain {chain}: its amendment number 1 is missing (of 1), with no record of retention deleting them: "
            "amendments were deleted"] if moved else []  # fmt: skip
    changed = (f"row {row_id}: its amendment (what its caller was answered instead) does not match its keyed hash: "
               "the amendment was changed, or moved here from another row")  # fmt: skip
    assert result.problems == [changed, *gone]


def test_an_amendment_whose_row_was_deleted_fails_verify(empty_database: str) -> None:
    numbered_log(empty_database, 1)
    asyncio.run(asyncio.wait_for(_answered_4000_while_committed(empty_database), 60))
    result = verified(empty_database, "DELETE FROM routing_log WHERE request_id = 'r1'")
    assert result.ok is False
    assert any("an amendment of its row seq 1, which is not there" in problem for problem in result.problems)


def test_retention_dropping_a_month_drops_the_amendments_of_its_rows(empty_database: str) -> None:
    numbered_log(empty_database, 1)
    old = datetime.now(UTC).replace(day=1, hour=12) - timedelta(days=500)
    sql(empty_database, "SELECT routing_log_add_partition($1)", old)
    asyncio.run(asyncio.wait_for(_answered_4000_while_committed(empty_database, received_at=old), 60))
    assert len(_amendments(empty_database)) == 1
    assert len(_retention_leaves_no_amendment(empty_database, old + timedelta(days=40), rows_left=1)) == 1


def _retention_leaves_no_amendment(database: str, before: datetime, rows_left: int) -> list[str]:
    """Retention before `before`: no amendment left, and verify ok on the rows_left; the partitions it dropped."""
    dropped: list[str] = run_on(database, lambda conn: drop_before(conn, before, key=LOG_KEY)).dropped
    assert sql(database, "SELECT count(*) FROM routing_log_amendment")[0][0] == 0
    result = verified(database)
    assert (result.ok, result.rows) == (True, rows_left), result.problems
    return dropped


def test_amendments_a_retention_of_the_previous_version_left_behind_pass_verify_and_go_with_the_next_run(
    empty_database: str,
) -> None:
    # The previous version (a rolling upgrade) drops partitions as before, and nothing drops the amendments of their
    # rows: no foreign key holds them, so as not to refuse its DROP.
    numbered_log(empty_database, 1)
    older = datetime.now(UTC).replace(day=1, hour=12) - timedelta(days=600)
    old = older + timedelta(days=40)
    for month in (older, old):
        sql(empty_database, "SELECT routing_log_add_partition($1)", month)
    asyncio.run(asyncio.wait_for(_answered_4000_while_committed(empty_database, received_at=older), 60))
    later = numbered_entry(2)
    later.received_at = old
    write(empty_database, [later])
    [amendment] = sql(empty_database, "SELECT * FROM routing_log_amendment")
    run_on(empty_database, lambda conn: drop_before(conn, older + timedelta(days=35), key=LOG_KEY))
    sql(empty_database, "INSERT INTO routing_log_amendment VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        *amendment)  # fmt: skip
    result = verified(empty_database)
    assert (result.ok, result.rows) == (True, 2), result.problems
    _retention_leaves_no_amendment(empty_database, old + timedelta(days=35), rows_left=1)


def test_an_instance_of_the_previous_version_writes_through_0014s_function_beside_amended_rows(
    empty_database: str,
) -> None:
    # Rolling upgrade: after migration 0015 an instance of the previous version still appends its batches with
    # append_routing_log_rows (0014), which 0015 leaves as it was, while this version writes rows and amendments.
    numbered_log(empty_database, 1)
    asyncio.run(asyncio.wait_for(_answered_4000_while_committed(empty_database), 60))

    async def append_as_the_previous_version(conn: asyncpg.Connection) -> None:
        chaining = LogChain(LOG_KEY, 1024, ReservedIds())  # a writer's chaining alone
        records = [previous_version(chaining.link(numbered_entry(n))) for n in (7, 8)]
        await conn.fetchrow("SELECT appended, next_ids FROM append_routing_log_rows($1::routing_log_row[], $2, $3, $4,"
                            " $5::relayed_location_entry[], $6)", records, chaining.chain_id, 2, records[-1][_HASH],
                            [], 4)  # fmt: skip

    run_on(empty_database, append_as_the_previous_version)
    assert len(_amendments(empty_database)) == 1
    result = verified(empty_database)
    assert (result.ok, result.rows) == (True, 4), result.problems


def test_a_caller_still_waiting_when_the_writer_stops_is_amended_in_the_spool_too(
    empty_database: str, tmp_path: Path
) -> None:
    # A stop that comes before the commit timeout (a request still waiting when the hub's grace period ends) fails
    # the waiters of the rows it spools: their callers are answered 4000 as the writer closes, their rows chained.
    numbered_log(empty_database, 1)
    spool = tmp_path / "spool"

    async def stop_while_a_caller_waits() -> None:
        pool = await asyncpg.create_pool(empty_database, min_size=1, max_size=3)
        blocker = await asyncpg.connect(empty_database)
        writer = RoutingLogWriter(pool, key=LOG_KEY, body_cap=1024, commit_timeout_s=60, write_timeout_s=30,
                                  spool_dir=spool, drain_timeout_s=0.5)  # fmt: skip
        entry = numbered_entry(1)

        async def call_as_the_relay_does() -> None:
            try:
                await writer.record(entry)
            except LogUnavailable as exc:
                if entry.chained_at is not None:
                    writer.amend(entry, 200, 4000, f"{exc}; the exchange itself went through")

        try:
            async with blocker.transaction():
                await blocker.execute("LOCK TABLE routing_log_chain IN EXCLUSIVE MODE")  # commits stall
                async with writer.running():
                    caller = asyncio.create_task(call_as_the_relay_does())
                    await asyncio.sleep(0.3)
                await caller
        finally:
            await blocker.close()
            await pool.close()

    asyncio.run(asyncio.wait_for(stop_while_a_caller_waits(), 60))

    asyncio.run(asyncio.wait_for(_started_again(empty_database, spool), 60))
    told = ("the hub stopped before the routing log could commit this exchange; the row is kept on disk and written "
            "when the hub starts again; the exchange itself went through")  # fmt: skip
    assert _amendments(empty_database) == [("r1", None, 200, 4000, told, True)]
    result = verified(empty_database)
    assert (result.ok, result.rows) == (True, 2), result.problems


def test_the_console_log_table_marks_an_amended_row_with_what_its_caller_was_answered(
    hub: Hub, services: Services
) -> None:
    # An auditor scanning the table for a disputed exchange sees it there, not only on the message's own page.
    correlation_id = f"amended-{uuid.uuid4()}"
    ids = _amended_in_the_hub(services.database_url, correlation_id, [1000, 1000])
    page = console_page(hub, f"/console/log?correlation_id={correlation_id}")
    rows = {int(row_id): kind for kind, row_id in re.findall(r'<tr class="([^"]*)" data-id="(\d+)">', page)}
    assert rows == {ids["r1"]: "error amended", ids["r2"]: ""}
    cells = re.findall(r'<td class="num"><span class="pill ([^"]*)"( title="[^"]*")?>([^<]*)</span>', page)
    [(told_kind, title, told)] = [cell for cell in cells if cell[1]]
    assert (told_kind, told) == ("bad amended", "1000→4000")
    assert title.startswith(' title="Answered instead: HTTP 200 · OCPI 4000 at ') and f"UTC: {TOLD}." in title
    assert ("ok", "", "1000") in cells


def _amended_in_the_hub(database: str, correlation_id: str, statuses: list[int], **fields: object) -> dict[str, int]:
    """Rows r1, r2, ... of correlation_id, each with fields and its OCPI status of statuses, r1 amended as the relay
    amends it (its caller answered 4000), written in the hub's database under its key; their ids by request id."""
    entries = [numbered_entry(n) for n in range(1, len(statuses) + 1)]
    for entry, status in zip(entries, statuses, strict=True):
        entry.correlation_id, entry.ocpi_status_code = correlation_id, status
        for name, value in fields.items():
            setattr(entry, name, value)

    async def amend_a_committed_row() -> None:
        pool = await asyncpg.create_pool(database, min_size=1, max_size=2)
        async with RoutingLogWriter(pool, key=LOG_KEY, body_cap=1024).running() as writer:
            for entry in entries:  # one at a time: ids and received_at rise with n
                await writer.record(entry)
            writer.amend(entries[0], 200, 4000, TOLD)
        await pool.close()

    asyncio.run(asyncio.wait_for(amend_a_committed_row(), 60))
    found = sql(database, "SELECT id, request_id FROM routing_log WHERE correlation_id = $1", correlation_id)
    return {row["request_id"]: row["id"] for row in found}


def test_a_status_search_finds_an_amended_row_by_what_its_caller_was_answered_as_stats_and_exports_count_it(
    hub: Hub, services: Services
) -> None:
    # r1's row says the receiver's 1000, its caller got 4000; r2 got the 1000 its row says; r3's row says 4000 itself.
    # "Which requests were answered 4000?" finds r1 and r3, in a search, with either party too (merged index ranges),
    # in an export and in stats; "which 1000?" finds r2 alone.
    correlation_id, sender = f"answered-{uuid.uuid4()}", unique_party_id()
    ids = _amended_in_the_hub(services.database_url, correlation_id, [1000, 1000, 4000], from_country_code="NL",
                              from_party_id=sender)  # fmt: skip
    scope = {"correlation_id": correlation_id}
    with hub.admin() as admin:

        def found(path: str, **params: str) -> list[str]:
            answer = admin.get(f"/admin/api/{path}", params=scope | params)
            assert answer.status_code == 200, answer.text
            if path == "routing-log/export":
                return [json.loads(line)["request_id"] for line in answer.text.splitlines()[:-1]]  # then the manifest
            return [item["request_id"] for item in answer.json()["items"]]

        def counted(**params: str) -> tuple[int, int]:
            answer = admin.get("/admin/api/stats", params=scope | params)
            assert answer.status_code == 200, answer.text
            sent = [item for item in answer.json()["items"] if item["direction"] == "sent"]
            return sum(item["messages"] for item in sent), sum(item["errors"] for item in sent)

        for party in ({}, {"party": f"NL-{sender}"}):
            assert found("routing-log", ocpi_status="4000", **party) == ["r3", "r1"]
            assert found("routing-log", ocpi_status="4000", http_status="200", limit="1", **party) == ["r3"]
            assert found("routing-log", ocpi_status="1000", **party) == ["r2"]
            assert found("routing-log/export", ocpi_status="4000", **party) == ["r1", "r3"]
            assert counted(ocpi_status="4000", **party) == (2, 2)
            assert counted(ocpi_status="1000", **party) == (1, 0)
            assert counted(**party) == (3, 2)  # the amended row is an error: its caller got 4000
        amended = admin.get("/admin/api/routing-log", params=scope | {"ocpi_status": "4000"}).json()["items"][1]
        assert (amended["ocpi_status_code"], amended["answered_instead"]["ocpi_status_code"]) == (1000, 4000)
    page = console_page(hub, f"/console/log?correlation_id={correlation_id}&ocpi_status=4000")
    assert sorted(int(i) for i in re.findall(r'<tr class="[^"]*" data-id="(\d+)">', page)) == [ids["r1"], ids["r3"]]
