"""Verify's report says which rows are missing, by seq and between which rows, where rows were deleted from a chain's
start, middle or end, with saved heads too; the row it names first stays the row after the gap (found by an auditor's
walkthrough: "row 29: seq 29 follows 27")."""

from __future__ import annotations

from storage.log_verify import Heads, Verification, current_heads, verify
from tests.conftest import LOG_KEY
from tests.log_rows import numbered_log, run_on, sql


def _verify(url: str, saved: Heads | None = None) -> Verification:
    return run_on(url, lambda conn: verify(conn, LOG_KEY, saved=saved))


def _chain(url: str, rows: int) -> tuple[str, dict[int, int]]:
    """A new chain of rows rows: its id, and its rows' ids by seq."""
    chain = numbered_log(url, rows).chain_id
    return chain, {r["seq"]: r["id"] for r in sql(url, "SELECT seq, id FROM routing_log WHERE chain_id = $1", chain)}


def _delete(url: str, chain: str, first: int, last: int) -> None:
    sql(url, "DELETE FROM routing_log WHERE chain_id = $1 AND seq BETWEEN $2 AND $3", chain, first, last)


def test_a_row_deleted_from_the_middle_is_named_by_its_seq_between_the_rows_left(empty_database: str) -> None:
    chain, ids = _chain(empty_database, 6)
    _delete(empty_database, chain, 3, 3)
    result = _verify(empty_database)
    assert result.first_bad_id == ids[4] and result.problems == [
        f"row {ids[4]}: seq 3 of chain {chain}, between row {ids[2]} (seq 2) and this row (seq 4), is not there: rows "
        "are missing"]  # fmt: skip


def test_rows_deleted_from_the_middle_are_named_as_a_range(empty_database: str) -> None:
    chain, ids = _chain(empty_database, 8)
    _delete(empty_database, chain, 3, 6)
    assert _verify(empty_database).problems == [
        f"row {ids[7]}: seqs 3 to 6 of chain {chain}, between row {ids[2]} (seq 2) and this row (seq 7), are not "
        "there: rows are missing"]  # fmt: skip


def test_rows_deleted_from_a_chains_start_are_named(empty_database: str) -> None:
    chain, ids = _chain(empty_database, 5)
    _delete(empty_database, chain, 1, 2)
    result = _verify(empty_database)
    assert result.first_bad_id == ids[3] and result.problems == [
        f"row {ids[3]}: seqs 1 to 2 of chain {chain}, before this row (seq 3), the first left of its chain, are not "
        "there: rows are missing"]  # fmt: skip


def test_a_chains_newest_rows_deleted_are_named_up_to_its_head(empty_database: str) -> None:
    chain, ids = _chain(empty_database, 6)
    _delete(empty_database, chain, 4, 6)
    result = _verify(empty_database)
    assert result.first_bad_id == ids[3] and result.problems == [
        f"row {ids[3]}: seqs 4 to 6 of chain {chain}, after this row (seq 3) up to the chain's head at seq 6, are not "
        "there: rows are missing"]  # fmt: skip


def test_newest_rows_deleted_with_the_head_are_named_as_a_range_against_saved_heads(empty_database: str) -> None:
    chain, _ = _chain(empty_database, 6)
    gone, _ = _chain(empty_database, 3)
    saved = run_on(empty_database, current_heads)
    _delete(empty_database, chain, 4, 6)
    sql(empty_database, "UPDATE routing_log_chain SET last_seq = 3, last_hash = (SELECT hash FROM routing_log WHERE "
                        "chain_id = $1 AND seq = 3) WHERE chain_id = $1", chain)  # fmt: skip
    _delete(empty_database, gone, 1, 3)
    sql(empty_database, "DELETE FROM routing_log_chain WHERE chain_id = $1", gone)
    assert _verify(empty_database).ok  # what is left is whole
    taken = f"the heads taken at {saved.taken_at.isoformat()}"
    assert sorted(_verify(empty_database, saved).problems) == sorted([
        f"chain {chain}: seqs 4 to 6 are gone (after seq 3, where its head is now; seq 6 was its last row in {taken}), "
        "and retention did not drop them: rows were deleted",
        f"chain {gone}: seqs 1 to 3 are gone (every row, and its head; seq 3 was its last row in {taken}), and "
        "retention did not drop them: rows were deleted",
    ])  # fmt: skip
