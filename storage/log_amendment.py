"""Amendments of routing-log rows: what a caller was answered instead of what its row says (migration 0015), numbered
along their chain (migration 0016)."""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from storage.log_chain import LogChain
from storage.log_marks import Floors
from storage.log_row import LogEntry, amendment_mac, amendment_number_mac, stored_text
from storage.sql import QUERIES

MAX_MESSAGE = 2000


@dataclass(slots=True)
class Amendment:
    """The answer a caller got instead of its row's (OCPI 4000: the row's commit did not finish in time), queued by the
    writer once the row was chained, and written once the row is committed."""

    entry: LogEntry
    http_status: int
    ocpi_status_code: int | None
    message: str
    answered_at: datetime
    number: int | None = None  # along its chain, given when it is first written (a retry sends it again)


def rows_and_amendments(taken: list[LogEntry | Amendment]) -> tuple[list[LogEntry], list[Amendment]]:
    """What a writer took from its queue: the rows to chain, and the amendments (of rows committed before them)."""
    amendments = [item for item in taken if isinstance(item, Amendment)]
    if not amendments:  # nearly always
        return taken, []  # type: ignore[return-value]
    return [item for item in taken if isinstance(item, LogEntry)], amendments


def amendment_records(chain: LogChain, amendments: Iterable[Amendment]) -> list[tuple[Any, ...]]:
    """The amendments as routing_log_amendment_numbered records, each MAC'd over its row as it was chained last (a row
    of a refused batch is chained again), numbered along chain once; none for a row that is not in the log (the
    database refused it)."""
    records = []
    for amendment in amendments:
        if (chained_at := amendment.entry.chained_at) is None:
            continue
        seq, row_hash = chained_at
        if amendment.number is None:
            amendment.number = chain.amendments = chain.amendments + 1
        values = (amendment.entry.received_at, amendment.http_status, amendment.ocpi_status_code,
                  stored_text(amendment.message)[:MAX_MESSAGE], amendment.answered_at)  # fmt: skip
        numbered = amendment.number, amendment_number_mac(chain.key, chain.chain_id, amendment.number, seq)
        records.append(
            (chain.text, seq, *values, amendment_mac(chain.key, row_hash, chain.text, seq, values), *numbered)
        )
    return records


def unnumbered(chain: LogChain, refused: Iterable[Amendment]) -> None:
    """Amendments the database refused (a bug), dropped: their numbers, the chain's last given, are given again."""
    if numbers := [amendment.number for amendment in refused if amendment.number is not None]:
        chain.amendments = min(numbers) - 1


def amendment_verifies(key: bytes, row_hash: bytes, amendment: Mapping[str, Any]) -> bool:
    """Whether a stored amendment (QUERIES["every_amendment"]) is the one the hub wrote for the row of row_hash."""
    values = [amendment[name] for name in ("row_received_at", "http_status", "ocpi_status_code", "message",
                                           "answered_at")]  # fmt: skip
    try:
        expected = amendment_mac(key, row_hash, amendment["chain_id"], amendment["seq"], values)
    except (ValueError, TypeError, AttributeError):
        return False
    if amendment["mac"] is None or not hmac.compare_digest(amendment["mac"], expected):
        return False
    return amendment["number"] is None or number_verifies(key, amendment)


def number_verifies(key: bytes, numbered: Mapping[str, Any]) -> bool:
    """Whether an amendment's number, or the record of a numbered amendment's deletion, is the hub's: its number_mac
    over its chain, number and row seq (migration 0016)."""
    expected = amendment_number_mac(key, numbered["chain_id"], numbered["number"], numbered["seq"])
    return numbered["number_mac"] is not None and hmac.compare_digest(numbered["number_mac"], expected)


def check_amendment(
    bad: Callable[[int, str], None], row: Mapping[str, Any], amendments: dict[tuple[Any, int], Any], key: bytes
) -> None:
    """For verify (storage.log_verify): the row's amendment, if it has one (taken from amendments, QUERIES
    ["every_amendment"] by chain and seq: those left have no row checked), told to bad if it does not verify."""
    if not amendments or (amendment := amendments.pop((row["chain_id"], row["seq"]), None)) is None:
        return
    if not amendment_verifies(key, row["hash"], amendment):
        bad(row["id"], "its amendment (what its caller was answered instead) does not match its keyed hash: the "
                       "amendment was changed, or moved here from another row")  # fmt: skip


def check_amendments_without_rows(
    wrong: Callable[[str], None], left: Iterable[Mapping[str, Any]], floors: Floors
) -> None:
    """For a full verify: the amendments whose row is not there, told to wrong, unless retention dropped it (as
    verify's saved heads tell): a retention of the version before amendments leaves them until the next retention
    deletes them."""
    for amendment in left:
        chain_id, seq = amendment["chain_id"], amendment["seq"]
        if floors.highest(chain_id) < seq:
            wrong(f"chain {chain_id}: an amendment of its row seq {seq}, which is not there: the row was deleted, or "
                  "the amendment moved to a row that never was")  # fmt: skip


async def answered_instead(conn: asyncpg.Connection, rows: Iterable[Mapping[str, Any]]) -> dict[Any, dict[str, Any]]:
    """The amendments of rows (each with its chain_id and seq), as shown with them, by (chain_id, seq)."""
    chains, seqs = [], []
    for row in rows:
        chains.append(row["chain_id"])
        seqs.append(row["seq"])
    if not chains:
        return {}
    found = await conn.fetch(QUERIES["routing_log_amendments"], chains, seqs)
    return {(a["chain_id"], a["seq"]): shown(a) for a in found}


def shown(amendment: Mapping[str, Any]) -> dict[str, Any]:
    """An amendment as the auditor API and the console show it, in the row's answered_instead."""
    return {"http_status": amendment["http_status"], "ocpi_status_code": amendment["ocpi_status_code"],
            "status_message": amendment["message"], "answered_at": amendment["answered_at"]}  # fmt: skip
