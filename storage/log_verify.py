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
from storage.log_id_order import OutOfOrder, out_of_order, settle
from storage.log_marks import Floors, verified_marks
from storage.log_row import COLUMNS, GENESIS, TIMING_COLUMNS, keyed_hash_covers_id, legacy_hash
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
    last_hash: Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}$")]  # hex, as the auditor API shows hashes
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


def check_link(
    result: Verification, previous: asyncpg.Record | None, row: asyncpg.Record, floors: Floors, trust_first: bool
) -> None:
    """The row continues the one before it: the next seq with its hash as prev_hash, or after rows retention dropped."""
    chain_id, seq = row["chain_id"], row["seq"]
    if previous is None:
        if trust_first or (seq == 1 and row["prev_hash"] == GENESIS):
            return
        if seq <= 1:
            result.bad(row["id"], f"seq {seq} of chain {chain_id} has a prev_hash, where a chain's first row has none")
        elif not floors.dropped_between(chain_id, (0, GENESIS), (seq, row["prev_hash"])):
            where = f"before this row (seq {seq}), the first left of its chain"
            result.bad(row["id"], _missing(chain_id, 1, seq - 1, where))
    elif seq == previous["seq"] + 1:
        if row["prev_hash"] != previous["hash"]:
            result.bad(row["id"], f"prev_hash does not match the previous row, row {previous['id']} (seq "
                                  f"{previous['seq']})")  # fmt: skip
    elif not floors.dropped_between(chain_id, (previous["seq"], previous["hash"]), (seq, row["prev_hash"])):
        where = f"between row {previous['id']} (seq {previous['seq']}) and this row (seq {seq})"
        result.bad(row["id"], _missing(chain_id, previous["seq"] + 1, seq - 1, where))


def _missing(chain_id: Any, first: int, last: int, where: str) -> str:
    """Seqs first to last of a chain, which are not there, as a report names them."""
    if first == last:
        return f"seq {first} of chain {chain_id}, {where}, is not there: rows are missing"
    return f"seqs {first} to {last} of chain {chain_id}, {where}, are not there: rows are missing"


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


def row_verifies(key: bytes, sealed: dict[Any, asyncpg.Record], row: asyncpg.Record) -> bool:
    """Whether a row (its id, every column of COLUMNS, object_id, listed_ids and TIMING_COLUMNS) matches its hash
    (verified_form)."""
    return verified_form(key, sealed, row) is not None


def verified_form(key: bytes, sealed: dict[Any, asyncpg.Record], row: asyncpg.Record) -> bool | None:
    """How a row matches its hash: keyed over its id (True) or its content alone (False; keyed_hash_covers_id), or
    for a chain sealed at the upgrade to keyed hashes (sealed: the seals whose MAC verifies, by chain id), as written,
    up to its seal, and with no listed_ids or times (which came after it) (False). None where it does not, or content
    no hash can be computed of (headers nested deeper than a decoder follows)."""
    seal = sealed.get(row["chain_id"])
    try:
        if seal is None:
            return keyed_hash_covers_id(key, row)
        # legacy_hash covers neither listed_ids nor the times, which no such row has
        unkeyed = row["seq"] <= seal["last_seq"] and row["listed_ids"] is None and _untimed(row)
        return False if unkeyed and legacy_hash(row["prev_hash"], row) == row["hash"] else None
    except (ValueError, TypeError, AttributeError, RecursionError, OverflowError):
        return None


def _untimed(row: asyncpg.Record) -> bool:
    return all(row.get(name) is None for name in TIMING_COLUMNS)


def check_content(
    result: Verification, row: asyncpg.Record, key: bytes, sealed: dict[Any, asyncpg.Record]
) -> bool | None:
    """Whether the row's hash covers its id (verified_form), None when the row does not match it (reported)."""
    if (covers_id := verified_form(key, sealed, row)) is not None:
        return covers_id
    seal = sealed.get(row["chain_id"])
    if seal is None:
        result.bad(row["id"], "content does not match its hash: the row was changed or renumbered (or the hub's "
                              "OCPI_HUB_SECRET_KEY is not the one it was written with)")  # fmt: skip
    elif row["seq"] > seal["last_seq"]:
        result.bad(row["id"], f"a row after seq {seal['last_seq']}, where its chain of unkeyed hashes was sealed at "
                              "the upgrade to keyed hashes: written later, by a hub of the previous version still "
                              "running then, or by something other than a hub")  # fmt: skip
    else:
        result.bad(row["id"], "content does not match its hash: the row was changed")
    return None


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


def check_head(
    result: Verification, last: asyncpg.Record, heads: dict[Any, asyncpg.Record], floors: Floors, cut: bool
) -> None:
    """The chain's last row is its head's, or retention dropped the rows after it (a slow request's row, received a
    month before the ones chained before it). cut: the last row checked is the one after a time range, not the
    chain's last."""
    head = heads.get(last["chain_id"])
    if head is None:
        result.bad(last["id"], "the chain has no recorded head")
        return
    if cut or (head["last_seq"], head["last_hash"]) == (last["seq"], last["hash"]):
        return
    after, end = (last["seq"], last["hash"]), (head["last_seq"] + 1, head["last_hash"])
    if head["last_seq"] > last["seq"] and floors.dropped_between(last["chain_id"], after, end):
        return
    if head["last_seq"] > last["seq"]:
        where = f"after this row (seq {last['seq']}) up to the chain's head at seq {head['last_seq']}"
        result.bad(last["id"], _missing(last["chain_id"], last["seq"] + 1, head["last_seq"], where))
    elif head["last_seq"] != last["seq"]:
        result.bad(last["id"], f"the chain's head records seq {head['last_seq']}, before this row (seq {last['seq']}), "
                               "its last: rows were added after the head, or the head was set back")  # fmt: skip
    else:
        result.bad(last["id"], f"the chain's last row, seq {last['seq']}, is not the one its head records: rows were "
                               "rewritten")  # fmt: skip
