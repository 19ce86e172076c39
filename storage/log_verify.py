"""Verifying the routing log: every hash chain recomputed from the database, as written by storage.routing_log.

A chain's rows are checked with the keyed hash (storage.log_row.row_hash), or, for a chain sealed when the hub was
upgraded to keyed hashes (storage.migrate), with the plain SHA-256 it was written with, up to its sealed last row. A
seal or a retention floor whose MAC does not verify is reported and not used.

What no key shows is a chain's newest rows deleted together with its head, or a whole chain with its head: the heads
(current_heads), kept outside the database, show that later (verify's saved).
"""

from __future__ import annotations

import hmac
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any

import asyncpg
import msgspec

from storage.log_row import COLUMNS, GENESIS, legacy_hash, mark_mac, row_hash
from storage.sql import QUERIES


@dataclass(slots=True)
class Verification:
    ok: bool = True
    rows: int = 0
    first_bad_id: int | None = None
    problems: list[str] = field(default_factory=list)
    heads_checked: int | None = None  # of the heads saved earlier, when given

    def bad(self, row_id: int, problem: str) -> None:
        self.first_bad_id = row_id if self.first_bad_id is None else min(self.first_bad_id, row_id)
        self.wrong(f"row {row_id}: {problem}")

    def wrong(self, problem: str) -> None:
        self.ok = False
        if len(self.problems) < 20:
            self.problems.append(problem)


class ChainHead(msgspec.Struct, frozen=True):
    chain_id: uuid.UUID
    last_seq: Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]  # a bigint
    last_hash: Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}$")]  # hex, as the auditor API shows hashes


class Heads(msgspec.Struct):
    """Every chain's head at a time. Kept outside the database (GET /admin/api/routing-log/heads, ocpi-hub heads),
    given to a later verify, they show rows deleted from the end of a chain, or a whole chain, since."""

    taken_at: datetime
    chains: list[ChainHead]


async def current_heads(conn: asyncpg.Connection) -> Heads:
    rows = await conn.fetch(QUERIES["chain_heads"])
    return Heads(datetime.now(UTC), [ChainHead(r["chain_id"], r["last_seq"], r["last_hash"].hex()) for r in rows])


def outcome(result: Verification) -> dict[str, Any]:
    """What the audit trail keeps of a verification: a failure later put right by a restore leaves its trace."""
    return {"ok": result.ok, "rows": result.rows, "first_bad_id": result.first_bad_id}


async def verify(
    conn: asyncpg.Connection,
    key: bytes,
    since: datetime | None = None,
    until: datetime | None = None,
    timeout: float | None = None,
    saved: Heads | None = None,
) -> Verification:
    """Recompute every chain from the database with the routing log's key. In a time range, each chain's first row in
    range is trusted. timeout bounds each statement (a fetch of the rows), where the connection's own bound would be
    too short.

    A chain may continue after rows dropped by retention: its row after such a gap must carry, as prev_hash, the
    hash recorded for the dropped row before it in routing_log_floor. saved: heads taken earlier, each of whose rows
    must still be there as it was, unless retention dropped it.
    """
    result = Verification()
    columns = ", ".join(("id", *COLUMNS, "object_id", "listed_ids"))
    query = (
        f"SELECT {columns} FROM routing_log WHERE ($1::timestamptz IS NULL OR received_at >= $1)"
        " AND ($2::timestamptz IS NULL OR received_at < $2) ORDER BY chain_id, seq, id"
    )
    previous: asyncpg.Record | None = None
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        # Heads and rows come from one snapshot: a hub writing meanwhile must not look like a gap.
        heads = {r["chain_id"]: r for r in await conn.fetch(QUERIES["chain_heads"], timeout=timeout)}
        sealed = _marks(result, key, b"sealed", await conn.fetch(QUERIES["sealed_chains"], timeout=timeout))
        heads.update(sealed)  # an unkeyed chain ends where it was sealed, whatever its head says now
        # (chain_id, seq) -> (hash, prev_hash) of each row retention dropped and kept a floor of
        recorded_floors = await conn.fetch(QUERIES["chain_floors"], timeout=timeout)
        floors = {at: (f["hash"], f["prev_hash"]) for at, f in _marks(result, key, b"floor", recorded_floors).items()}
        seen: set[Any] = set()  # the chains that have rows
        async for row in conn.cursor(query, since, until, prefetch=2000, timeout=timeout):
            result.rows += 1
            seen.add(row["chain_id"])
            if previous is not None and previous["chain_id"] != row["chain_id"]:
                _check_head(result, previous, heads, floors, until)
                previous = None
            dropped_before = floors.get((row["chain_id"], row["seq"] - 1), (None, None))[0]
            if previous is not None:
                dropped_after = floors.get((row["chain_id"], previous["seq"] + 1), (None, None))[1]
                if row["seq"] == previous["seq"]:
                    result.bad(row["id"], f"a second row at seq {row['seq']}: a row was inserted")
                    continue
                if row["seq"] != previous["seq"] + 1 and dropped_before != row["prev_hash"]:
                    result.bad(row["id"], f"seq {row['seq']} follows {previous['seq']}: rows are missing")
                elif row["seq"] != previous["seq"] + 1 and dropped_after not in (None, previous["hash"]):
                    result.bad(previous["id"], "not the row retention saw before the rows it dropped: it was changed")
                elif row["seq"] == previous["seq"] + 1 and row["prev_hash"] != previous["hash"]:
                    result.bad(row["id"], "prev_hash does not match the previous row")
            elif (
                since is None
                and (row["seq"] != 1 or row["prev_hash"] != GENESIS)
                and (dropped_before is None or dropped_before != row["prev_hash"])
            ):
                result.bad(row["id"], "the chain does not start at its first row: rows are missing")
            _check_content(result, row, key, sealed)
            previous = row
        if previous is not None:
            _check_head(result, previous, heads, floors, until)
        if since is None and until is None:
            _check_heads_without_rows(result, heads, seen, floors)
        if saved is not None:
            ranged = since is not None or until is not None  # rows out of range were not checked above
            await _check_saved_heads(conn, result, saved, heads, floors, (key, sealed) if ranged else None, timeout)
    return result


async def _check_saved_heads(
    conn: asyncpg.Connection,
    result: Verification,
    saved: Heads,
    heads: dict[Any, asyncpg.Record],
    floors: dict[tuple[Any, int], tuple[bytes, bytes | None]],
    unchecked: tuple[bytes, dict[Any, asyncpg.Record]] | None,
    timeout: float | None,
) -> None:
    """Each saved head's row is still there with its hash (checked here when the range left it out: unchecked holds
    the key and the seals then), or retention dropped it: a floor holds it, or one further on in its chain (rows
    jump months around a month's end) while the chain's head has not gone back before it."""
    chains, seqs = [h.chain_id for h in saved.chains], [h.last_seq for h in saved.chains]
    found: dict[tuple[Any, int], list[asyncpg.Record]] = {}
    for row in await conn.fetch(QUERIES["rows_at"], chains, seqs, timeout=timeout):
        found.setdefault((row["chain_id"], row["seq"]), []).append(row)
    dropped_up_to: dict[Any, int] = {}
    for chain_id, seq in floors:
        dropped_up_to[chain_id] = max(seq, dropped_up_to.get(chain_id, 0))
    taken = saved.taken_at.isoformat()
    for head in saved.chains:
        at = (head.chain_id, head.last_seq)
        rows = found.get(at, [])
        for row in rows:
            if row["hash"].hex() != head.last_hash or (unchecked and not row_verifies(*unchecked, row)):
                result.bad(row["id"], f"seq {head.last_seq} of chain {head.chain_id} is not the row it was at "
                                      f"{taken}: the chain was rewritten")  # fmt: skip
        if len(rows) > 1:
            result.wrong(f"chain {head.chain_id}: {len(rows)} rows at seq {head.last_seq}: a row was inserted")
        current = heads.get(head.chain_id)
        dropped_it = floors.get(at, (None,))[0] == bytes.fromhex(head.last_hash) or (
            dropped_up_to.get(head.chain_id, 0) >= head.last_seq
            and current is not None
            and current["last_seq"] >= head.last_seq
        )
        if not rows and not dropped_it:
            result.wrong(f"chain {head.chain_id}: its row seq {head.last_seq}, the chain's last at {taken}, is gone "
                         "and retention did not drop it: rows were deleted")  # fmt: skip
    result.heads_checked = len(saved.chains)


def row_verifies(key: bytes, sealed: dict[Any, asyncpg.Record], row: asyncpg.Record) -> bool:
    """Whether a row (every column of COLUMNS, object_id and listed_ids) matches its hash: keyed, or for a chain sealed
    at the upgrade to keyed hashes (sealed: the seals whose MAC verifies, by chain id), as written, up to its seal.
    Content no hash can be computed of (headers nested deeper than a decoder follows) does not."""
    seal = sealed.get(row["chain_id"])
    try:
        if seal is None:
            return hmac.compare_digest(row_hash(key, row["prev_hash"], row), row["hash"])
        return row["seq"] <= seal["last_seq"] and legacy_hash(row["prev_hash"], row) == row["hash"]
    except (ValueError, TypeError, AttributeError, RecursionError, OverflowError):
        return False


def _check_content(result: Verification, row: asyncpg.Record, key: bytes, sealed: dict[Any, asyncpg.Record]) -> None:
    if row_verifies(key, sealed, row):
        return
    seal = sealed.get(row["chain_id"])
    if seal is None:
        result.bad(row["id"], "content does not match its hash: the row was changed (or the hub's "
                              "OCPI_HUB_SECRET_KEY is not the one it was written with)")  # fmt: skip
    elif row["seq"] > seal["last_seq"]:
        result.bad(row["id"], f"a row after seq {seal['last_seq']}, where its chain of unkeyed hashes was sealed: "
                              "written later, by something other than this hub")  # fmt: skip
    else:
        result.bad(row["id"], "content does not match its hash: the row was changed")


def _marks(result: Verification, key: bytes, kind: bytes, records: list[asyncpg.Record]) -> dict[Any, Any]:
    """The seals (by chain id) or floors (by chain id and seq) whose MAC verifies; the others are reported."""
    good: dict[Any, Any] = {}
    for record in records:
        chain_id, seq, hash_ = record["chain_id"], record[1], record[2]  # seq, hash: last_seq, last_hash of a seal
        expected = mark_mac(key, kind, chain_id, seq, hash_, record["prev_hash"] if kind == b"floor" else None)
        if record["mac"] is not None and hmac.compare_digest(record["mac"], expected):
            good[chain_id if kind == b"sealed" else (chain_id, seq)] = record
            continue
        what = "its seal" if kind == b"sealed" else f"the retention floor at seq {seq}"
        result.wrong(f"chain {chain_id}: {what} does not verify: it was not written by this hub")
    return good


def _check_heads_without_rows(
    result: Verification,
    heads: dict[Any, asyncpg.Record],
    seen: set[Any],
    floors: dict[tuple[Any, int], tuple[bytes, bytes | None]],
) -> None:
    """A chain whose head is recorded but none of whose rows are left: every row was deleted, unless retention dropped
    them all (its floor then holds the head's row)."""
    for chain_id, head in heads.items():
        dropped_whole = floors.get((chain_id, head["last_seq"]), (None,))[0] == head["last_hash"]
        if chain_id not in seen and head["last_seq"] > 0 and not dropped_whole:
            result.wrong(f"chain {chain_id}: its head is seq {head['last_seq']}, and none of its rows is left: rows "
                         "are missing")  # fmt: skip


def _check_head(
    result: Verification,
    last: asyncpg.Record,
    heads: dict[Any, asyncpg.Record],
    floors: dict[tuple[Any, int], tuple[bytes, bytes | None]],
    until: Any,
) -> None:
    head = heads.get(last["chain_id"])
    if head is None:
        result.bad(last["id"], "the chain has no recorded head")
        return
    if until is not None or (head["last_seq"], head["last_hash"]) == (last["seq"], last["hash"]):
        return
    # retention dropped the chain's newest rows (a slow request's row, received a month before the ones chained
    # before it): their floors hold the head's row and the one after the last row left
    after_last = floors.get((last["chain_id"], last["seq"] + 1), (None, None))[1]
    if floors.get((last["chain_id"], head["last_seq"]), (None,))[0] == head["last_hash"] and after_last == last["hash"]:
        return
    if head["last_seq"] != last["seq"]:
        result.bad(last["id"], f"the chain's head is seq {head['last_seq']}, the last row is {last['seq']}")
    else:
        result.bad(last["id"], f"the chain's last row, seq {last['seq']}, is not the one its head records: rows were "
                               "rewritten")  # fmt: skip
