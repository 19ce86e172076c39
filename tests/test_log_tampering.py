"""What someone who can write to the database, but does not hold OCPI_HUB_SECRET_KEY, tries on the routing log, and
what verify and retention make of it (found by a review of the keyed chains)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import msgspec
import pytest

from storage.log_row import COLUMNS, legacy_hash
from storage.log_verify import ChainHead, Heads, Verification, current_heads, verify
from storage.partitions import RoutingLogUnverified, drop_before
from tests import test_verify_on_healthy_logs as healthy
from tests.conftest import LOG_KEY
from tests.log_rows import numbered_entry, numbered_log, run_on, sql, unkeyed_chain, write
from tests.test_retention import _INSERT_ROW, _written_by_an_earlier_release

OLD_MONTH = datetime(2020, 1, 15, tzinfo=UTC)
JAN, FEB = datetime(2025, 1, 5, tzinfo=UTC), datetime(2025, 2, 5, tzinfo=UTC)


def _verify(url: str, since: datetime | None = None, saved: Heads | None = None) -> Verification:
    return run_on(url, lambda conn: verify(conn, LOG_KEY, since, None, saved=saved))


def _retention(url: str, cut: datetime = datetime(2021, 1, 1, tzinfo=UTC)) -> list[Any]:
    return run_on(url, lambda conn: drop_before(conn, cut, key=LOG_KEY))


def _plant(url: str, chain_id: uuid.UUID, seq: int, hash_: bytes, at: datetime = OLD_MONTH) -> None:
    """A row of no one's making: only its chain, seq and hash matter."""
    sql(url, "INSERT INTO routing_log (received_at, chain_id, seq, request_id, correlation_id, module, method, path,"
             " routing, http_status, duration_ms, prev_hash, hash) VALUES ($1, $2, $3, 'junk', 'junk', 'locations',"
             " 'GET', '/', 'direct', 200, 1, $4, $5)", at, chain_id, seq, bytes(32), hash_)  # fmt: skip


def _rows(url: str, chain_id: uuid.UUID) -> dict[int, asyncpg.Record]:
    return {r["seq"]: r for r in sql(url, "SELECT * FROM routing_log WHERE chain_id = $1", chain_id)}


def test_retention_vouches_for_no_row_that_does_not_match_its_hash(empty_database: str) -> None:
    # A row planted in the month retention drops next, at seq 6 with the hash row 7 continues from: its floor would
    # hide rows 3 to 6 deleted later.
    chain = numbered_log(empty_database, 10).chain_id
    sql(empty_database, "SELECT routing_log_add_partition($1)", OLD_MONTH)
    _plant(empty_database, chain, 6, _rows(empty_database, chain)[7]["prev_hash"])
    with pytest.raises(RoutingLogUnverified, match=f"1 of its rows do not match their hashes .* chain {chain}, seq 6"):
        _retention(empty_database)
    assert sql(empty_database, "SELECT count(*) FROM routing_log_floor")[0][0] == 0
    assert sql(empty_database, "SELECT count(*) FROM routing_log WHERE request_id = 'junk'")[0][0] == 1  # kept


def test_a_copy_of_a_row_is_found_even_right_after_a_retention_floor(empty_database: str) -> None:
    write(empty_database, [])
    sql(empty_database, "SELECT routing_log_add_partition($1)", OLD_MONTH)
    entries = [numbered_entry(n) for n in range(6)]
    for entry in entries[:3]:
        entry.received_at = OLD_MONTH
    chain = write(empty_database, entries).chain_id
    _retention(empty_database)  # seq 1 to 3 dropped, a floor at 3
    assert _verify(empty_database).ok
    columns = ", ".join((*COLUMNS, "object_id"))
    sql(empty_database, f"INSERT INTO routing_log ({columns}) SELECT {columns} FROM routing_log WHERE chain_id = $1 "
                        "AND seq = 4", chain)  # fmt: skip
    result = _verify(empty_database)
    said = " ".join(result.problems)
    assert result.ok is False and "are both at seq 4 of chain" in said, result.problems
    [copy] = sql(empty_database, "SELECT max(id) FROM routing_log WHERE seq = 4")
    assert f"row {copy[0]}: content does not match its hash" in said  # a new id: its hash covers the id


@pytest.mark.parametrize("move_genuine", [True, False], ids=["genuine-read-last", "genuine-read-first"])
def test_a_row_of_an_unkeyed_chain_between_two_dropped_rows_cannot_be_replaced(
    empty_database: str, move_genuine: bool
) -> None:
    # Rows jump months around a month's end: retention drops seq 1, 3, 5, 7 and keeps 2, 4, 6, 8. Unkeyed, row 4 could
    # be made up anew with the floor at 3 as its prev_hash; the floor at 5 keeps the hash of the row before it.
    _written_by_an_earlier_release(empty_database, 11, unkeyed_chain([JAN, FEB] * 4))
    write(empty_database, [])  # the upgrade seals the chain at seq 8
    for month in (JAN, FEB):
        sql(empty_database, "SELECT routing_log_add_partition($1)", month)
    _retention(empty_database, datetime(2025, 2, 1, tzinfo=UTC))
    assert _verify(empty_database).ok
    genuine = {r["seq"]: r for r in sql(empty_database, f"SELECT id, {', '.join(COLUMNS)} FROM routing_log")}
    forged = dict(genuine[4]) | {"http_status": 500, "request_id": "FORGED"}
    forged["hash"] = legacy_hash(forged["prev_hash"], forged)
    if move_genuine:
        sql(empty_database, "DELETE FROM routing_log WHERE id = $1", genuine[4]["id"])
    sql(empty_database, _INSERT_ROW, *(forged[c] for c in COLUMNS))
    result = _verify(empty_database)
    assert result.ok is False, result.problems


def test_a_saved_head_is_not_matched_by_a_row_out_of_a_ranged_verify_that_does_not_verify(
    empty_database: str,
) -> None:
    chain = numbered_log(empty_database, 10).chain_id
    saved = run_on(empty_database, current_heads)
    rows = _rows(empty_database, chain)
    sql(empty_database, "DELETE FROM routing_log WHERE chain_id = $1 AND seq > 5", chain)
    sql(empty_database, "UPDATE routing_log_chain SET last_seq = 5, last_hash = $2 WHERE chain_id = $1", chain,
        rows[5]["hash"])  # fmt: skip
    _plant(empty_database, chain, 10, rows[10]["hash"], at=datetime(2001, 1, 1, tzinfo=UTC))
    result = _verify(empty_database, since=datetime.now(UTC) - timedelta(hours=1), saved=saved)
    assert result.ok is False and f"seq 10 of chain {chain} is not the row it was at" in " ".join(result.problems)


def test_a_saved_head_is_reported_when_its_chain_went_back_before_it_past_a_floor(empty_database: str) -> None:
    write(empty_database, [])
    sql(empty_database, "SELECT routing_log_add_partition($1)", OLD_MONTH)
    entries = [numbered_entry(n) for n in range(6)]
    entries[4].received_at = OLD_MONTH  # seq 5: received before a month's end, chained after seq 4
    chain = write(empty_database, entries).chain_id
    rows = _rows(empty_database, chain)
    saved = Heads(datetime.now(UTC), [ChainHead(chain, 4, rows[4]["hash"].hex())])  # when seq 4 was the last
    _retention(empty_database)  # a floor at 5
    assert _verify(empty_database, saved=saved).ok
    sql(empty_database, "DELETE FROM routing_log WHERE chain_id = $1 AND seq >= 4", chain)
    sql(empty_database, "UPDATE routing_log_chain SET last_seq = 3, last_hash = $2 WHERE chain_id = $1", chain,
        rows[3]["hash"])  # fmt: skip
    result = _verify(empty_database, saved=saved)
    assert (
        result.ok is False
        and f"chain {chain}: seq 4 is gone (after seq 3, where its head is now; seq 4 was its last row in the heads"
        in " ".join(result.problems)
    )


def test_retention_dropping_a_chains_newest_row_leaves_it_verifiable(empty_database: str) -> None:
    # The last row chained was received first (a slow request), in a month retention drops.
    write(empty_database, [])
    sql(empty_database, "SELECT routing_log_add_partition($1)", OLD_MONTH)
    entries = [numbered_entry(n) for n in range(4)]
    entries[3].received_at = OLD_MONTH
    write(empty_database, entries)
    _retention(empty_database)
    result = _verify(empty_database)
    assert (result.ok, result.rows) == (True, 3), result.problems


@pytest.mark.parametrize(
    "plant",
    [
        "INSERT INTO routing_log_floor (chain_id, seq, hash, mac) VALUES (gen_random_uuid(), -1, '\\x00', '\\x00')",
        "INSERT INTO routing_log_sealed_chain (chain_id, last_seq, last_hash, mac) VALUES (gen_random_uuid(), "
        "-9223372036854775808, '', '')",
        "UPDATE routing_log SET request_headers = ('{\"a\": ' || repeat('[', 5000) || repeat(']', 5000) || '}')::jsonb"
        " WHERE seq = 2",
    ],
    ids=["negative-floor", "smallest-seal", "nested-headers"],
)
def test_odd_data_in_the_log_is_reported_never_a_crash(empty_database: str, plant: str) -> None:
    numbered_log(empty_database, 2)
    sql(empty_database, plant)
    result = _verify(empty_database)
    assert result.ok is False and result.problems


def test_a_saved_head_out_of_a_bigints_range_is_refused_when_read() -> None:
    body = b'{"taken_at": "2026-01-01T00:00:00Z", "chains": [{"chain_id": "%s", "last_seq": 9223372036854775808,' \
           b' "last_hash": "%s"}]}' % (str(uuid.uuid4()).encode(), b"0" * 64)  # fmt: skip
    with pytest.raises(msgspec.ValidationError, match="last_seq"):
        msgspec.json.decode(body, type=Heads)


def _boundary_chain(url: str, last_in_jan: bool) -> uuid.UUID:
    """A chain around January's end: 1-5 January, 6 received in January but chained after 5, 7-9 February, 10 again
    a slow January one, then (unless last_in_jan) 11-12 February."""
    healthy._months(url, healthy.JAN, healthy.FEB, healthy.MAR)
    end = healthy.JAN + timedelta(days=30, hours=23, minutes=59)
    feb = healthy.FEB + timedelta(seconds=1)
    times = [end] * 5 + [end] + [feb] * 3 + [end] + ([] if last_in_jan else [feb, feb])
    times = [t + timedelta(milliseconds=n) for n, t in enumerate(times)]
    chain = write(url, healthy._entries(times)).chain_id
    assert _verify(url).ok
    _retention(url, healthy.FEB)  # January dropped: floors at 5 (chain start side), 6 and 10
    result = _verify(url)
    assert result.ok, result.problems
    return chain


def test_rows_deleted_between_two_retention_floors_are_found(empty_database: str) -> None:
    chain = _boundary_chain(empty_database, last_in_jan=False)
    sql(empty_database, "DELETE FROM routing_log WHERE chain_id = $1 AND seq BETWEEN 7 AND 9", chain)
    result = _verify(empty_database)
    assert result.ok is False, "rows 7-9 deleted, verify says ok"


def test_rows_deleted_between_a_floor_and_a_dropped_head_are_found(empty_database: str) -> None:
    chain = _boundary_chain(empty_database, last_in_jan=True)
    sql(empty_database, "DELETE FROM routing_log WHERE chain_id = $1 AND seq BETWEEN 7 AND 9", chain)
    result = _verify(empty_database)
    assert result.ok is False, "rows 7-9 deleted, verify says ok"


def test_listed_ids_given_to_a_row_of_before_the_upgrade_are_found(empty_database: str) -> None:
    _written_by_an_earlier_release(empty_database, 11, unkeyed_chain([healthy.JAN, healthy.FEB, healthy.MAR]))
    write(empty_database, [])  # upgrade: chain sealed
    assert _verify(empty_database).ok
    sql(empty_database, "UPDATE routing_log SET listed_ids = '{CDR-X}' WHERE seq = 2")  # it came after that row
    assert sql(empty_database, "SELECT count(*) FROM routing_log WHERE listed_ids @> '{CDR-X}'")[0][0] == 1
    result = _verify(empty_database)
    assert result.ok is False, "listed_ids of a pre-upgrade row changed, verify says ok"
