"""Tampering an auditor's walkthrough found verify blind to: the first or last row of a verified time range deleted,
rows renumbered or their ids swapped (within a chain, then across chains and into free ids, once ids were hashed), a
copy inserted at a row's seq; and a false alarm on saved heads that list a chain twice."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from storage.log_row import GENESIS, LogEntry, in_record_order, row_content, row_hash
from storage.log_verify import Heads, Verification, current_heads, verify
from tests.conftest import LOG_KEY
from tests.log_rows import numbered_entry, numbered_log, run_on, sql, write

T0 = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)


def _log_a_second_apart(url: str, rows: int = 20) -> None:
    """r0 ... r{rows-1}, one chain, r{n} received at T0 + n s."""
    entries = [numbered_entry(n) for n in range(rows)]
    for n, entry in enumerate(entries):
        entry.received_at = T0 + timedelta(seconds=n)
    write(url, entries)


def _verify(url: str, since: datetime | None = None, until: datetime | None = None,
            saved: Heads | None = None) -> Verification:  # fmt: skip
    return run_on(url, lambda conn: verify(conn, LOG_KEY, since, until, saved=saved))


def _id_of(url: str, request_id: str) -> int:
    return sql(url, "SELECT id FROM routing_log WHERE request_id = $1", request_id)[0]["id"]


@pytest.mark.parametrize(
    ("deleted", "named"), [("r5", "r6"), ("r9", "r10"), ("r5', 'r6', 'r7', 'r8", "r9")],
    ids=["the range's first row", "the range's last row", "all but one row of the range"],
)  # fmt: skip
def test_a_ranged_verify_finds_a_row_deleted_at_either_end_of_its_range(
    empty_database: str, deleted: str, named: str
) -> None:
    _log_a_second_apart(empty_database)
    since, until = T0 + timedelta(seconds=5), T0 + timedelta(seconds=10)  # r5 ... r9
    assert _verify(empty_database, since, until).ok
    named_id = _id_of(empty_database, named)
    sql(empty_database, f"DELETE FROM routing_log WHERE request_id IN ('{deleted}')")
    result = _verify(empty_database, since, until)
    assert not result.ok and result.first_bad_id == named_id and "rows are missing" in result.problems[0], result
    assert _verify(empty_database, T0 + timedelta(seconds=12), until=None).ok  # a range after it is still ok
    assert _verify(empty_database, until=T0 + timedelta(seconds=3)).ok


def test_a_ranged_verify_checks_the_rows_next_to_the_range_not_whole_chains(empty_database: str) -> None:
    _log_a_second_apart(empty_database)
    result = _verify(empty_database, T0 + timedelta(seconds=5), T0 + timedelta(seconds=10))
    assert result.ok and result.rows == 5 + 2, result  # r4 and r10 beside r5 ... r9


def _renumber(url: str, request_id: str, new_id: int) -> None:
    sql(url, "UPDATE routing_log SET id = $1 WHERE request_id = $2", new_id, request_id)


def _write_as_before_0014(url: str, entries: list[LogEntry]) -> None:
    """entries in a chain of their own as a hub of the version before migration 0014 writes them (0014 leaves its
    append beside the new one, for a rolling upgrade): hashed without their ids, which the database gives."""
    write(url, [])  # migrated
    chain, records, prev_hash = uuid.uuid4(), [], GENESIS
    for seq, entry in enumerate(entries, start=1):
        values = row_content(entry, str(chain), seq, 1024) | {"object_id": entry.path.rsplit("/", 1)[-1].upper(),
                                                                "listed_ids": None}  # fmt: skip
        hashed = row_hash(LOG_KEY, prev_hash, values, None)
        records.append((*in_record_order(values), prev_hash, hashed, values["object_id"], None))
        prev_hash = hashed
    sql(url, "SELECT append_routing_log($1::routing_log_entry[], $2, $3, $4, '{}')", records, chain, len(records),
        prev_hash)  # fmt: skip


@pytest.mark.parametrize("swap", [False, True], ids=["one row renumbered", "two rows' ids swapped"])
def test_verify_finds_rows_renumbered_whose_hash_does_not_cover_their_id_by_their_order(
    empty_database: str, swap: bool
) -> None:
    # Rows written before migration 0014 have their id in no hash, and auditors cite rows by it (first_bad_id, the
    # console's links): ids rise along a chain, and verify names the rows out of that order (found by an operator's
    # walkthrough: it named the innocent row after the one moved).
    _write_as_before_0014(empty_database, [numbered_entry(n) for n in range(20)])
    assert _verify(empty_database).ok
    first, second = _id_of(empty_database, "r3"), _id_of(empty_database, "r12")
    if swap:
        _renumber(empty_database, "r3", -1)
        _renumber(empty_database, "r12", first)
        _renumber(empty_database, "r3", second)
        named = {first, second}
    else:
        _renumber(empty_database, "r3", first + 100_000)
        named = {first + 100_000}
    result = _verify(empty_database)
    assert not result.ok and "rows were renumbered" in " ".join(result.problems), result
    assert {int(problem.split(":")[0].removeprefix("row ")) for problem in result.problems} == named, result
    assert result.first_bad_id == min(named)


def test_verify_names_a_row_renumbered_into_the_gap_before_its_neighbour_not_the_neighbour(empty_database: str) -> None:
    # From a review: ids ..., 2a+4, 2a+6, 2a+8, 2a+10, ... (gaps, as rows of several chains leave them) and seq 5 moved
    # from 2a+8 to 2a+5. Judged by the row before alone, seq 4 (2a+6) was named, though no id between seq 3's and seq
    # 5's was free for it to have come from; the row after tells: seq 5 was moved.
    _write_as_before_0014(empty_database, [numbered_entry(n) for n in range(8)])
    sql(empty_database, "UPDATE routing_log SET id = id * 2 + 1000000")  # the chain's ids spread out, still in order
    sql(empty_database, "UPDATE routing_log SET id = id - 1000000")
    assert _verify(empty_database).ok
    moved_from, earlier = _id_of(empty_database, "r4"), _id_of(empty_database, "r3")
    _renumber(empty_database, "r4", earlier - 1)
    result = _verify(empty_database)
    assert result.first_bad_id == earlier - 1 and len(result.problems) == 1, result
    assert (
        f"its id is below row {earlier}'s, that of seq 4 before it in its chain: rows were renumbered"
        in result.problems[0]
    )
    assert moved_from == earlier + 2


@pytest.mark.parametrize("move", ["newest above", "swapped across chains"])
def test_a_row_id_is_covered_by_its_hash_so_no_renumbering_passes(empty_database: str, move: str) -> None:
    # Before migration 0014 verify could only check that ids rise along a chain: the newest row of a chain given a
    # higher id, or two rows of chains written at the same moment swapping ids, kept that order and passed.
    numbered_log(empty_database, 3)
    write(empty_database, [numbered_entry(n) for n in range(3, 6)])  # a second chain, its ids above the first's
    assert _verify(empty_database).ok
    last_of_first, first_of_second = _id_of(empty_database, "r2"), _id_of(empty_database, "r3")
    if move == "newest above":
        moved = [first_of_second + 1_000]
        _renumber(empty_database, "r5", moved[0])
    else:
        moved = [first_of_second, last_of_first]
        _renumber(empty_database, "r2", -1)
        _renumber(empty_database, "r3", last_of_first)
        _renumber(empty_database, "r2", first_of_second)
    result = _verify(empty_database)
    said = " ".join(result.problems)
    assert not result.ok and "rows were renumbered" not in said, said  # ids still rise along each chain
    for row_id in moved:
        assert f"row {row_id}: content does not match its hash" in said, said


def test_rows_an_instance_of_the_previous_version_writes_during_a_rolling_upgrade_verify(empty_database: str) -> None:
    # 0014 leaves the old append beside the new one: rows chained without their ids, by a hub still running the version
    # before, are written and verify as they were hashed (the id then checked by its order along the chain alone).
    numbered_log(empty_database, 2)
    _write_as_before_0014(empty_database, [numbered_entry(n) for n in range(2, 5)])
    result = _verify(empty_database)
    assert result.ok and result.rows == 5, result
    _renumber(empty_database, "r4", _id_of(empty_database, "r4") + 1_000)  # what such a row's hash cannot show
    assert _verify(empty_database).ok


def test_verify_names_both_rows_at_a_seq_one_was_inserted_at_and_checks_each(empty_database: str) -> None:
    numbered_log(empty_database, 10)
    original = _id_of(empty_database, "r4")
    copied = "request_id, received_at, chain_id, seq, correlation_id, module, method, path, routing, duration_ms"
    sql(empty_database, f"INSERT INTO routing_log (id, {copied}, http_status, prev_hash, hash) SELECT 0, {copied}, "
                        "403, prev_hash, hash FROM routing_log WHERE request_id = 'r4'")  # fmt: skip
    result = _verify(empty_database)
    assert not result.ok and result.first_bad_id == 0
    said = " ".join(result.problems)
    assert f"rows 0 and {original} are both at seq 5" in said and "row 0: content does not match" in said, said
    assert f"row {original}: content" not in said  # the genuine row verifies


def test_saved_heads_that_list_a_chain_twice_are_checked_once_not_a_false_alarm(empty_database: str) -> None:
    numbered_log(empty_database, 5)
    heads = run_on(empty_database, current_heads)
    twice = Heads(heads.taken_at, heads.chains + heads.chains)
    result = _verify(empty_database, saved=twice)
    assert result.ok and result.heads_checked == len(heads.chains), result
    ranged = _verify(empty_database, since=datetime.now(UTC) - timedelta(hours=1), saved=twice)
    assert ranged.ok, ranged
