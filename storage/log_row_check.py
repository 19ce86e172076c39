"""One routing-log row checked where it is shown: its keyed hash and its links to its chain's rows on either side.

The checks are storage.log_verify's, run on the row and its neighbours alone (the row before and the row after it in
its chain, by seq, its chain's head, seal and retention floors), so that a row edited in the database shows as such
on its own page, not only to a later verify. What only a verify of the whole log shows stays so: ids out of order
along a chain, an amendment changed, a chain's newest rows deleted with its head.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from storage.log_marks import Floors, verified_marks
from storage.log_verify import Verification, check_content, check_head, check_link
from storage.sql import QUERIES


async def row_integrity(conn: asyncpg.Connection, key: bytes, row: asyncpg.Record) -> dict[str, Any]:
    """{"hash_ok", "linked_to_previous", "linked_to_next", "problems"} of a row as stored (every column, id
    included): hash_ok, whether it matches its hash (keyed, or for a chain sealed at the upgrade to keyed hashes, as
    written); linked_to_previous, whether its prev_hash is the previous row's hash, or rows retention dropped lie
    between (null: the chain's first row); linked_to_next, whether the next row's prev_hash is its hash, likewise
    (null: the chain's last row, which its head records); problems: what verify would say of it. Run it in the
    transaction the row was read in (repeatable read), so that rows written meanwhile do not look like a gap."""
    chain_id, seq = row["chain_id"], row["seq"]
    found = Verification()  # seals or floors whose MAC does not verify: reported, not used (as verify does)
    seals = verified_marks(found.wrong, key, await conn.fetch(QUERIES["chain_seal_of"], chain_id), seals=True)
    floors = Floors(verified_marks(found.wrong, key, await conn.fetch(QUERIES["chain_floors_of"], chain_id)))
    heads = {r["chain_id"]: r for r in await conn.fetch(QUERIES["chain_head_of"], chain_id)} | seals
    previous = following = None
    for other in await conn.fetch(QUERIES["chain_neighbours"], chain_id, seq, row["id"]):
        if other["seq"] == seq:
            found.bad(row["id"], f"rows {row['id']} and {other['id']} are both at seq {seq} of chain {chain_id}: one "
                                 "of them was inserted")  # fmt: skip
        elif other["seq"] < seq:
            previous = other
        else:
            following = other
    content, before, after = Verification(), Verification(), Verification()
    check_content(content, row, key, seals)
    check_link(before, previous, row, floors, trust_first=False)
    if following is not None:
        check_link(after, row, following, floors, trust_first=False)
    else:
        check_head(after, row, heads, floors, cut=False)
    first = previous is None and before.ok and seq == 1
    head = heads.get(chain_id)
    last = following is None and after.ok and head is not None and head["last_seq"] == seq
    return {
        "hash_ok": content.ok,
        "linked_to_previous": None if first else before.ok,
        "linked_to_next": None if last else after.ok,
        "problems": [*content.problems, *before.problems, *after.problems, *found.problems],
    }
