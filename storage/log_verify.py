"""Verifying the routing log: every hash chain recomputed from the database, as written by storage.routing_log.

A chain's rows are checked with the keyed hash (storage.log_row.row_hash), or, for a chain sealed when the hub was
upgraded to keyed hashes (storage.migrate), with the plain SHA-256 it was written with, up to its sealed last row. A
seal or a retention floor whose MAC does not verify is reported and not used.

What no key shows is a chain's newest rows deleted together with its head, or a whole chain with its head: the heads
(current_heads), kept outside the database, show that later (verify's saved).

A row's amendment (what its caller was answered instead, migration 0015) is checked against its MAC, over the row's
hash and place in its chain: an amendment changed, or moved to another row, is reported with that row. One deleted
shows in a full verify by its number missing along its chain (migration 0016, storage.log_amendment_numbers).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any

import asyncpg
import msgspec

from storage.log_amendment import check_amendment, check_amendments_without_rows
from storage.log_amendment_numbers import AmendmentNumbers
from storage.log_chain_checks import check_content, check_head, check_link, row_verifies
from storage.log_id_order import OutOfOrder, out_of_order, settle
from storage.log_marks import Floors, verified_marks
from storage.log_row import COLUMNS, GENESIS, TIMING_COLUMNS
from storage.sql import QUERIES


@dataclass(slots=True)
class Verification:
    ok: bool = True
    rows: int = 0
    first_bad_id: int | None = None
    problems: list[str] = field(default_factory=list)
    heads_checked: int | None = None  # of the heads saved earlier, when given
    trail_entries: int = 0  # of the audit trail, chained (storage.audit_trail)
    trail_unchained: int = 0  # written before the audit trail was chained (migration 0019)
    notes: list[str] = field(default_factory=list)  # what could not be checked, and why: not a problem

    def bad(self, row_id: int, problem: str) -> None:
        self.first_bad_id = row_id if self.first_bad_id is None else min(self.first_bad_id, row_id)
        self.wrong(f"row {row_id}: {problem}")

    def wrong(self, problem: str) -> None:
        self.ok = False
        if len(self.problems) < 20:
            self.problems.append(problem)


class ChainHead(msgspec.Struct, frozen=True, omit_defaults=True):
    chain_id: uuid.UUID
    last_seq: Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]  # a bigint
    last_hash: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}\Z")]  # hex, as the auditor API shows hashes
    # the chain's highest amendment number (migration 0016); None in heads saved before
    amendments: Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)] | None = None
    # the id of the row at last_seq: in a checkpoint (hub.checkpoint), not in heads
    row_id: Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)] | None = None


class Heads(msgspec.Struct):
    """Every chain's head at a time. Kept outside the database (GET /admin/api/routing-log/heads, ocpi-hub heads),
    given to a later verify, they show rows deleted from the end of a chain, or a whole chain, since."""

    taken_at: datetime
    chains: list[ChainHead]

    def named(self) -> str:
        """What a report calls them."""
        return f"the heads taken at {self.taken_at.isoformat()}"


async def current_heads(conn: asyncpg.Connection) -> Heads:
    rows = await conn.fetch(QUERIES["chain_heads"])
    chains = [ChainHead(r["chain_id"], r["last_seq"], r["last_hash"].hex(), r["amendments"]) for r in rows]
    return Heads(datetime.now(UTC), chains)


def outcome(result: Verification) -> dict[str, Any]:
    """What the audit trail keeps of a verification: a failure later put right by a restore leaves its trace."""
    return {"ok": result.ok, "rows": result.rows, "first_bad_id": result.first_bad_id}


_ROW_COLUMNS = ", ".join(f"r.{name}" for name in ("id", *COLUMNS, "object_id", "listed_ids", *TIMING_COLUMNS))
_EVERY_ROW = f"SELECT {_ROW_COLUMNS} FROM routing_log AS r ORDER BY r.chain_id, r.seq, r.id"
# The rows of each chain from seq lo to hi: a time range picks the stretch of each chain it covers (rows are chained in
# the order they are written, not received: a slow request's row comes after rows received later than it).
_ROWS_IN_STRETCHES = (
    f"SELECT {_ROW_COLUMNS} FROM routing_log AS r"
    " JOIN unnest($1::uuid[], $2::bigint[], $3::bigint[]) AS stretch (chain_id, lo, hi)"
    " ON r.chain_id = stretch.chain_id AND r.seq BETWEEN stretch.lo AND stretch.hi ORDER BY r.chain_id, r.seq, r.id"
)


async def verify(
    conn: asyncpg.Connection,
    key: bytes,
    since: datetime | None = None,
    until: datetime | None = None,
    timeout: float | None = None,
    saved: Heads | None = None,
) -> Verification:
    """Recompute every chain from the database with the routing log's key. In a time range, the stretch of each chain
    from the row before its first row received in it to the row after its last (QUERIES["chain_stretches"]; without
    since, from the chain's start, without until, to its head), the first row's own link trusted. timeout bounds each
    statement (a fetch of the rows), where the connection's own bound would be too short.

    A chain may continue after rows dropped by retention: its floors (routing_log_floor) say which, and hold the
    hashes the rows kept on either side must match. saved: heads taken earlier, each of whose rows must still be
    there as it was, unless retention dropped it.
    """
    result = Verification()
    ranged = since is not None or until is not None
    previous: asyncpg.Record | None = None
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        # Heads and rows come from one snapshot: a hub writing meanwhile must not look like a gap.
        heads = {r["chain_id"]: r for r in await conn.fetch(QUERIES["chain_heads"], timeout=timeout)}
        every_amendment = await conn.fetch(QUERIES["every_amendment"], timeout=timeout)
        dropped = await conn.fetch(QUERIES["dropped_amendments"], timeout=timeout)
        numbers = AmendmentNumbers(key, every_amendment, dropped, {c: h["amendments"] for c, h in heads.items()})
        seals = await conn.fetch(QUERIES["sealed_chains"], timeout=timeout)
        sealed = verified_marks(result.wrong, key, seals, seals=True)
        heads.update(sealed)  # an unkeyed chain ends where it was sealed, whatever its head says now
        floors = Floors(verified_marks(result.wrong, key, await conn.fetch(QUERIES["chain_floors"], timeout=timeout)))
        amendments = {(a["chain_id"], a["seq"]): a for a in every_amendment}
        trusted: set[Any] = set()  # the chains whose first row checked is the one before the range: not its link
        cut: set[Any] = set()  # the chains checked up to the row after the range, not to their head
        if ranged:
            chains, lows, highs = [], [], []
            for stretch in await conn.fetch(QUERIES["chain_stretches"], since, until, timeout=timeout):
                chain_id, prev_seq, next_seq = stretch["chain_id"], stretch["prev_seq"], stretch["next_seq"]
                if since is not None and prev_seq is not None:
                    trusted.add(chain_id)
                if until is not None and next_seq is not None:
                    cut.add(chain_id)
                chains.append(chain_id)
                lows.append(prev_seq if chain_id in trusted else 1)
                highs.append(next_seq if chain_id in cut else 2**63 - 1)
            rows = conn.cursor(_ROWS_IN_STRETCHES, chains, lows, highs, prefetch=2000, timeout=timeout)
        else:
            rows = conn.cursor(_EVERY_ROW, prefetch=2000, timeout=timeout)
        seen: set[Any] = set()  # the chains that have rows
        before: asyncpg.Record | None = None  # the row before previous in its chain
        previous_covers_id: bool | None = None
        unsettled: OutOfOrder | None = None  # two rows out of id order, told apart by the row after them
        async for row in rows:
            result.rows += 1
            seen.add(row["chain_id"])
            if previous is not None and previous["chain_id"] != row["chain_id"]:
                check_head(result, previous, heads, floors, previous["chain_id"] in cut)
                settle(result.bad, unsettled, None)
                unsettled = previous = before = None
            covers_id = check_content(result, row, key, sealed)
            check_amendment(result.bad, row, amendments, key)
            numbers.saw(row)
            settle(result.bad, unsettled, row)
            unsettled = None
            if previous is not None and row["seq"] == previous["seq"]:
                # both named: the one inserted may be either (a row chained without its id, or its copy)
                result.bad(row["id"], f"rows {previous['id']} and {row['id']} are both at seq {row['seq']} of chain "
                                      f"{row['chain_id']}: one of them was inserted")  # fmt: skip
                continue
            check_link(result, previous, row, floors, row["chain_id"] in trusted)
            if previous is not None and row["id"] < previous["id"]:
                unsettled = out_of_order(result.bad, before, (previous, previous_covers_id), (row, covers_id))
            before, previous, previous_covers_id = previous, row, covers_id
        settle(result.bad, unsettled, None)
        if previous is not None:
            check_head(result, previous, heads, floors, previous["chain_id"] in cut)
        if not ranged:  # in a range, the chains with rows in it
            _check_heads_without_rows(result, heads, seen, floors)
            check_amendments_without_rows(result.wrong, amendments.values(), floors)
            numbers.check(result.bad, result.wrong)
        if saved is not None:  # rows out of a range were not checked above
            numbers.check_saved(result.wrong, saved)
            await _check_saved_heads(conn, result, saved, heads, floors, (key, sealed) if ranged else None, timeout)
    return result


def _head_seq(heads: dict[Any, asyncpg.Record], chain_id: Any) -> int:
    head = heads.get(chain_id)
    return int(head["last_seq"]) if head is not None else 0


async def _check_saved_heads(
    conn: asyncpg.Connection,
    result: Verification,
    saved: Heads,
    heads: dict[Any, asyncpg.Record],
    floors: Floors,
    unchecked: tuple[bytes, dict[Any, asyncpg.Record]] | None,
    timeout: float | None,
) -> None:
    """Each saved head's row is still there with its hash (checked here when a range left it out: unchecked holds
    the key and the seals then), or retention dropped it: its floor holds it, or one further on in its chain (rows
    jump months around a month's end) while the chain's head has not gone back before it."""
    given = list(dict.fromkeys(saved.chains))  # a chain listed twice (two files of heads put together) is one head
    at = sorted({(h.chain_id, h.last_seq) for h in given})
    found: dict[tuple[Any, int], list[asyncpg.Record]] = {}
    for row in await conn.fetch(QUERIES["rows_at"], [c for c, _ in at], [s for _, s in at], timeout=timeout):
        found.setdefault((row["chain_id"], row["seq"]), []).append(row)
    taken = saved.named()
    for head in given:
        rows = found.get((head.chain_id, head.last_seq), [])
        for row in rows:
            if row["hash"].hex() != head.last_hash or (unchecked and not row_verifies(*unchecked, row)):
                result.bad(row["id"], f"seq {head.last_seq} of chain {head.chain_id} is not the row it was at "
                                      f"{taken}, their last of it: the chain was rewritten")  # fmt: skip
            elif head.row_id is not None and row["id"] != head.row_id:
                result.bad(row["id"], f"seq {head.last_seq} of chain {head.chain_id} was row {head.row_id} at "
                                      f"{taken}: the row was renumbered")  # fmt: skip
        if len(rows) > 1:
            result.wrong(f"chain {head.chain_id}: {len(rows)} rows at seq {head.last_seq}: a row was inserted")
        floor = floors.at(head.chain_id, head.last_seq)
        kept_hash = floor is not None and floor["hash"].hex() == head.last_hash
        dropped_it = kept_hash or (
            floors.highest(head.chain_id) >= head.last_seq and _head_seq(heads, head.chain_id) >= head.last_seq
        )
        if not rows and not dropped_it:
            result.wrong(f"chain {head.chain_id}: {_gone(head.last_seq, _head_seq(heads, head.chain_id), taken)}")
        elif not rows:  # not tampering; what is left to check it by is a floor, which the key makes and checks
            said = "the floor it left holds the same hash" if kept_hash else "with the rows beside it: not checked"
            result.notes.append(f"chain {head.chain_id}: seq {head.last_seq}, its last row in {taken}, was dropped "
                                f"by retention, {said}")  # fmt: skip
    result.heads_checked = len(given)


def _gone(saved_seq: int, head_seq: int, taken: str) -> str:
    """What is missing of a chain whose last row in saved heads is gone, its head now at head_seq (0: gone too)."""
    if head_seq >= saved_seq:
        return f"seq {saved_seq}, its last row in {taken}, is gone, and retention did not drop it: rows were deleted"
    seqs = f"seq {saved_seq} is" if head_seq + 1 == saved_seq else f"seqs {head_seq + 1} to {saved_seq} are"
    now = f"after seq {head_seq}, where its head is now" if head_seq else "every row, and its head"
    return (f"{seqs} gone ({now}; seq {saved_seq} was its last row in {taken}), and retention did not drop "
            f"{'it' if head_seq + 1 == saved_seq else 'them'}: rows were deleted")  # fmt: skip


def _check_heads_without_rows(
    result: Verification, heads: dict[Any, asyncpg.Record], seen: set[Any], floors: Floors
) -> None:
    """A chain whose head is recorded but none of whose rows are left: every row was deleted, unless retention dropped
    them all."""
    for chain_id, head in heads.items():
        if chain_id in seen or head["last_seq"] <= 0:
            continue
        if not floors.dropped_between(chain_id, (0, GENESIS), (head["last_seq"] + 1, head["last_hash"])):
            result.wrong(f"chain {chain_id}: its head is seq {head['last_seq']}, and none of its rows is left: rows "
                         "are missing")  # fmt: skip
