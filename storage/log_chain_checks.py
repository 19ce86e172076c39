"""The checks verify (storage.log_verify) makes of each row of a chain: its content against its hash, its link to the
row before it, and the chain's last row against its head; storage.log_row_check runs them on the rows it shows."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import asyncpg

from storage.log_marks import Floors
from storage.log_row import GENESIS, TIMING_COLUMNS, keyed_hash_covers_id, legacy_hash

if TYPE_CHECKING:
    from storage.log_verify import Verification


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
