"""Rows out of id order along a chain, as verify finds them: which of them was renumbered."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncpg

Bad = Callable[[int, str], None]  # a row named by its id, and what is wrong with it (Verification.bad)


@dataclass(slots=True)
class OutOfOrder:
    before: asyncpg.Record | None  # the row before earlier in the chain, if any
    earlier: asyncpg.Record
    later: asyncpg.Record  # the row after earlier, with a lower id


def out_of_order(
    bad: Bad,
    before: asyncpg.Record | None,
    previous: tuple[asyncpg.Record, bool | None],
    row: tuple[asyncpg.Record, bool | None],
) -> OutOfOrder | None:
    """Ids are given as rows are written, so they rise with seq along a chain, and auditors cite rows by them. Of two
    rows out of that order, the one renumbered is named: not one whose hash covers its id (that one shows as changed
    if it was); where neither hash covers its id, the pair is settled by the row after them (settle). A row that does
    not match its hash at all is named already (None)."""
    (earlier, earlier_covers), (later, later_covers) = previous, row
    if earlier_covers is None or later_covers is None or (earlier_covers and later_covers):
        return None
    if later_covers:
        _renumbered(bad, earlier, later, above=True)
    elif earlier_covers:
        _renumbered(bad, later, earlier, above=False)
    else:
        return OutOfOrder(before, earlier, later)
    return None


def settle(bad: Bad, pair: OutOfOrder | None, after: asyncpg.Record | None) -> None:
    """Which of two rows out of id order, neither hash covering its id, was renumbered: the one whose id, had it been
    given in order, could have lain between its neighbours' while the others' stay in order (an integer between
    them); both when either could have (or neither: more than one was moved)."""
    if pair is None:
        return
    before, earlier, later = pair.before, pair.earlier, pair.later
    earlier_moved = before is None or (before["id"] < later["id"] and later["id"] - before["id"] >= 2)
    later_moved = after is None or (earlier["id"] < after["id"] and after["id"] - earlier["id"] >= 2)
    if earlier_moved == later_moved:
        _renumbered(bad, earlier, later, above=True, or_the_other=True)
        _renumbered(bad, later, earlier, above=False, or_the_other=True)
    elif earlier_moved:
        _renumbered(bad, earlier, later, above=True)
    else:
        _renumbered(bad, later, earlier, above=False)


def _renumbered(bad: Bad, row: Any, other: Any, above: bool, or_the_other: bool = False) -> None:
    where = f"above row {other['id']}'s, that of seq {other['seq']} after" if above else (
        f"below row {other['id']}'s, that of seq {other['seq']} before")  # fmt: skip
    who = f"it or row {other['id']} was renumbered" if or_the_other else "rows were renumbered"
    bad(row["id"], f"its id is {where} it in its chain: {who}")
