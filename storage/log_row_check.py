"""Routing-log rows checked where they are shown: each one's keyed hash, its amendment's, and its links to its chain's
rows on either side.

The checks are verify's (storage.log_chain_checks), run on the rows and their neighbours alone (the row before and the
row after each in its chain, by seq, its chain's head, seal and retention floors, its amendment and the record of one
deleted), so that a row edited in the database shows as such on its own page and in its conversation, not only to a
later verify. The rows of a conversation are checked together, with one query for each of those whatever their number.
What only a verify of the whole log shows stays so: ids out of order along a chain, a chain's newest rows deleted with
its head, an amendment deleted with the record of its deletion.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg

from storage.log_amendment import check_amendment, number_verifies
from storage.log_chain_checks import check_content, check_head, check_link
from storage.log_marks import Floors, verified_marks
from storage.log_verify import Verification
from storage.sql import QUERIES

Row = Mapping[str, Any]  # a row as stored: every column of storage.log_row.COLUMNS, id, object_id and listed_ids


async def row_integrity(conn: asyncpg.Connection, key: bytes, row: Row) -> dict[str, Any]:
    """{"hash_ok", "linked_to_previous", "linked_to_next", "amendment_ok", "problems"} of a row as stored: hash_ok,
    whether it matches its hash (keyed, or for a chain sealed at the upgrade to keyed hashes, as written);
    linked_to_previous, whether its prev_hash is the previous row's hash, or rows retention dropped lie between (null:
    the chain's first row); linked_to_next, whether the next row's prev_hash is its hash, likewise (null: the chain's
    last row, which its head records); amendment_ok, whether its amendment (what its caller was answered instead)
    matches its keyed hash, false too when the record of its deletion says it had one (null: none); problems: what
    verify would say of it. Run it in the transaction the row was read in (repeatable read), so that rows written
    meanwhile do not look like a gap."""
    return (await rows_integrity(conn, key, [row]))[row["id"]]


async def rows_integrity(conn: asyncpg.Connection, key: bytes, rows: Sequence[Row]) -> dict[int, dict[str, Any]]:
    """row_integrity of each row, by id, in five queries whatever the number of rows."""
    if not rows:
        return {}
    chains = list({row["chain_id"] for row in rows})
    ids, row_chains, seqs = [r["id"] for r in rows], [r["chain_id"] for r in rows], [r["seq"] for r in rows]
    marks = _ChainMarks(
        key,
        await conn.fetch(QUERIES["chain_seals_of"], chains),
        await conn.fetch(QUERIES["chain_floors_of"], chains),
        await conn.fetch(QUERIES["chain_heads_of"], chains),
    )
    beside: dict[int, list[asyncpg.Record]] = {}
    for other in await conn.fetch(QUERIES["chain_neighbours"], ids, row_chains, seqs):
        beside.setdefault(other["beside"], []).append(other)
    amendments = {(a["chain_id"], a["seq"]): a for a in await conn.fetch(QUERIES["routing_log_amendments"],
                                                                          row_chains, seqs)}  # fmt: skip
    dropped = {(d["chain_id"], d["seq"]): d for d in await conn.fetch(QUERIES["amendments_dropped_of"],
                                                                      row_chains, seqs)}  # fmt: skip
    return {
        row["id"]: _checked(key, row, beside.get(row["id"], []), marks, amendments, dropped.get((row["chain_id"],
                                                                                               row["seq"])))
        for row in rows
    }  # fmt: skip


class _ChainMarks:
    """The seals, retention floors and heads of the chains of the rows checked; the seals and floors whose MAC does
    not verify are not used (as verify does), and reported with each row of their chain."""

    def __init__(
        self, key: bytes, seals: list[asyncpg.Record], floors: list[asyncpg.Record], heads: list[asyncpg.Record]
    ) -> None:
        self.problems: dict[Any, list[str]] = {}
        self.seals: dict[Any, asyncpg.Record] = {}
        good_floors: dict[Any, asyncpg.Record] = {}
        for records, is_seal in ((seals, True), (floors, False)):
            by_chain: dict[Any, list[asyncpg.Record]] = {}
            for record in records:
                by_chain.setdefault(record["chain_id"], []).append(record)
            for chain_id, of_chain in by_chain.items():
                found = self.problems.setdefault(chain_id, [])
                good = verified_marks(found.append, key, of_chain, seals=is_seal)
                (self.seals if is_seal else good_floors).update(good)
        self.floors = Floors(good_floors)
        self.heads = {r["chain_id"]: r for r in heads} | self.seals


def _checked(
    key: bytes,
    row: Row,
    beside: list[asyncpg.Record],
    marks: _ChainMarks,
    amendments: dict[tuple[Any, int], Any],
    dropped: asyncpg.Record | None,
) -> dict[str, Any]:
    chain_id, seq = row["chain_id"], row["seq"]
    content, before, after, amended = Verification(), Verification(), Verification(), Verification()
    previous = following = None
    for other in beside:
        if other["seq"] == seq:
            content.bad(row["id"], f"rows {row['id']} and {other['id']} are both at seq {seq} of chain {chain_id}: "
                                   "one of them was inserted")  # fmt: skip
        elif other["seq"] < seq:
            previous = other
        else:
            following = other
    hash_ok = check_content(content, row, key, marks.seals) is not None
    check_link(before, previous, row, marks.floors, trust_first=False)
    if following is not None:
        check_link(after, row, following, marks.floors, trust_first=False)
    else:
        check_head(after, row, marks.heads, marks.floors, cut=False)
    amendment = amendments.get((chain_id, seq))
    check_amendment(amended.bad, row, {} if amendment is None else {(chain_id, seq): amendment}, key)
    if amendment is None and dropped is not None and number_verifies(key, dropped):
        # retention deletes an amendment with its row: this row is here
        amended.bad(row["id"], f"its amendment (what its caller was answered instead), number {dropped['number']} of "
                               "its chain, was deleted")  # fmt: skip
    first = previous is None and before.ok and seq == 1
    head = marks.heads.get(chain_id)
    last = following is None and after.ok and head is not None and head["last_seq"] == seq
    return {
        "hash_ok": hash_ok,
        "linked_to_previous": None if first else before.ok,
        "linked_to_next": None if last else after.ok,
        "amendment_ok": None if amendment is None and amended.ok else amended.ok,
        "problems": [*content.problems, *before.problems, *after.problems, *amended.problems,
                     *marks.problems.get(chain_id, [])],
    }  # fmt: skip
