"""The marks verify trusts about a chain besides its rows: its seal at the upgrade to keyed hashes (storage.migrate)
and the floors retention left where it dropped rows (storage.partitions), each taken only if its MAC verifies."""

from __future__ import annotations

import bisect
import hmac
from collections.abc import Callable
from typing import Any

import asyncpg

from storage.log_row import floor_mac, seal_mac


def verified_seals(key: bytes, records: list[asyncpg.Record]) -> dict[Any, asyncpg.Record]:
    """The seals (QUERIES["sealed_chains"]) whose MAC verifies, by chain id, as verify takes them, for row_verifies."""
    return verified_marks(lambda _: None, key, records, seals=True)


def verified_marks(
    wrong: Callable[[str], None], key: bytes, records: list[asyncpg.Record], seals: bool = False
) -> dict[Any, Any]:
    """The seals (by chain id) or floors (by chain id and seq) whose MAC verifies; the others are told to wrong."""
    good: dict[Any, Any] = {}
    for record in records:
        chain_id = record["chain_id"]
        if seals:
            seq, what = record["last_seq"], "its seal"
            expected = seal_mac(key, chain_id, seq, record["last_hash"])
        else:
            seq, what = record["seq"], f"the retention floor at seq {record['seq']}"
            expected = floor_mac(key, chain_id, seq, record["hash"], record["prev_hash"], record["next_apart"],
                                 record["prev_apart"])  # fmt: skip
        if record["mac"] is not None and hmac.compare_digest(record["mac"], expected):
            good[chain_id if seals else (chain_id, seq)] = record
        else:
            wrong(f"chain {chain_id}: {what} does not verify: it was not written by this hub")
    return good


class Floors:
    """The retention floors whose MAC verifies, by chain: what verify knows of the rows retention dropped."""

    def __init__(self, marks: dict[Any, asyncpg.Record]) -> None:
        self._at: dict[tuple[Any, int], asyncpg.Record] = marks
        by_chain: dict[Any, list[int]] = {}
        for chain_id, seq in marks:
            by_chain.setdefault(chain_id, []).append(seq)
        self._seqs = {chain_id: sorted(seqs) for chain_id, seqs in by_chain.items()}

    def at(self, chain_id: Any, seq: int) -> asyncpg.Record | None:
        return self._at.get((chain_id, seq))

    def highest(self, chain_id: Any) -> int:
        seqs = self._seqs.get(chain_id)
        return seqs[-1] if seqs else 0

    def dropped_between(self, chain_id: Any, after: tuple[int, bytes], before: tuple[int, bytes]) -> bool:
        """Whether retention dropped every row between after and before, (seq, hash) of the rows on either side (seq 0
        and GENESIS before a chain's first row; for a chain's end, its head's seq + 1 and hash): the floors next to
        them hold their hashes, and each floor that says a neighbour was not dropped with it has that neighbour's
        floor beside it, or that neighbour is after or before. Floors from before the upgrade say no more than the
        hash the row after them continues from."""
        (low, low_hash), (high, high_prev_hash) = after, before
        first, last = self.at(chain_id, low + 1), self.at(chain_id, high - 1)
        if last is None or last["hash"] != high_prev_hash:
            return False
        if last["next_apart"] is None:  # a floor of before the upgrade
            return True
        if first is None or first["prev_hash"] != low_hash:
            return False
        seqs = self._seqs[chain_id]
        for seq in seqs[bisect.bisect_right(seqs, low) : bisect.bisect_left(seqs, high)]:
            floor = self._at[(chain_id, seq)]
            if floor["next_apart"] and seq + 1 < high and (chain_id, seq + 1) not in self._at:
                return False
            if floor["prev_apart"] and seq - 1 > low and (chain_id, seq - 1) not in self._at:
                return False
        return True
