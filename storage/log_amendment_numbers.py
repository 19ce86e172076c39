"""Amendments numbered along their chain (migration 0016), as verify checks them: a number missing is an amendment
deleted, unless the record its deletion left (routing_log_amendment_dropped) verifies and its row is gone with it."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from storage.log_amendment import number_verifies

if TYPE_CHECKING:
    from storage.log_verify import Heads


class AmendmentNumbers:
    """Each chain's amendment numbers: those there (QUERIES["every_amendment"]), the deleted ones' records
    (QUERIES["dropped_amendments"]), and the highest its head records (counts, by chain id). The rows those records
    name are looked for as verify goes through the rows (saw)."""

    def __init__(
        self, key: bytes, amendments: Iterable[Mapping[str, Any]], dropped: Iterable[Mapping[str, Any]],
        counts: Mapping[Any, int],
    ) -> None:  # fmt: skip
        self._present: dict[Any, set[int]] = {}
        for amendment in amendments:
            if amendment["number"] is not None:  # none written by the version before 0016
                self._present.setdefault(amendment["chain_id"], set()).add(amendment["number"])
        self._dropped = {(record["chain_id"], record["number"]): record for record in dropped}
        self._good = {at for at, record in self._dropped.items() if number_verifies(key, record)}
        self._highest = dict(counts)
        for chain_id, number in [*((c, max(numbers)) for c, numbers in self._present.items()), *self._good]:
            self._highest[chain_id] = max(self._highest.get(chain_id, 0), number)
        # the rows whose amendment's deletion is recorded: their ids once seen
        self._rows: dict[tuple[Any, int], int | None] = {(c, self._dropped[c, n]["seq"]): None for c, n in self._good}

    def saw(self, row: Mapping[str, Any]) -> None:
        if self._rows and (at := (row["chain_id"], row["seq"])) in self._rows:
            self._rows[at] = row["id"]

    def check(self, bad: Callable[[int, str], None], wrong: Callable[[str], None]) -> None:
        """After a full verify saw every row: each number up to its chain's highest is there, or its deletion's record
        verifies and its row is gone (dropped by retention: a row deleted otherwise is the chain's check's)."""
        dropped_numbers: dict[Any, set[int]] = {}
        for chain_id, number in self._dropped:
            dropped_numbers.setdefault(chain_id, set()).add(number)
        for chain_id, highest in self._highest.items():
            present = self._present.get(chain_id, set())
            last = 0
            for number in sorted(present | dropped_numbers.get(chain_id, set())):
                if number > highest:
                    break
                if number > last + 1:
                    _missing(wrong, chain_id, last + 1, number - 1, highest)
                last = number
                if number not in present:
                    self._check_dropped(bad, wrong, chain_id, number)
            if highest > last:
                _missing(wrong, chain_id, last + 1, highest, highest)

    def _check_dropped(
        self, bad: Callable[[int, str], None], wrong: Callable[[str], None], chain_id: Any, number: int
    ) -> None:
        if (chain_id, number) not in self._good:
            wrong(f"chain {chain_id}: its amendment number {number} is gone, and the record of its deletion does not "
                  "verify: an amendment was deleted, and that record changed or made up")  # fmt: skip
        elif (row_id := self._rows[chain_id, self._dropped[chain_id, number]["seq"]]) is not None:
            bad(row_id, f"its amendment (what its caller was answered instead), number {number} of its chain, was "
                        "deleted")  # fmt: skip

    def check_saved(self, wrong: Callable[[str], None], saved: Heads) -> None:
        """Heads saved earlier, each with its chain's highest amendment number (none before 0016): deleting a chain's
        newest amendments and their records, with its head's count lowered, shows against them alone."""
        taken = saved.taken_at.isoformat()
        for head in dict.fromkeys(saved.chains):  # a chain listed twice (two files put together) is one head
            if head.amendments is not None and head.amendments > (now := self._highest.get(head.chain_id, 0)):
                wrong(f"chain {head.chain_id}: its head counted {head.amendments} amendments at {taken}, {now} now: "
                      "the newest were deleted, and its head rewritten")  # fmt: skip


def _missing(wrong: Callable[[str], None], chain_id: Any, low: int, high: int, highest: int) -> None:
    numbers = f"number {low} is" if low == high else f"numbers {low} to {high} are"
    wrong(f"chain {chain_id}: its amendment {numbers} missing (of {highest}), with no record of retention deleting "
          "them: amendments were deleted")  # fmt: skip
