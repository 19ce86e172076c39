"""Amendments of routing-log rows: what a caller was answered instead of what its row says (migration 0015)."""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from storage.log_row import LogEntry, amendment_mac, stored_text
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


def rows_and_amendments(taken: list[LogEntry | Amendment]) -> tuple[list[LogEntry], list[Amendment]]:
    """What a writer took from its queue: the rows to chain, and the amendments (of rows committed before them)."""
    amendments = [item for item in taken if isinstance(item, Amendment)]
    if not amendments:  # nearly always
        return taken, []  # type: ignore[return-value]
    return [item for item in taken if isinstance(item, LogEntry)], amendments


def amendment_records(key: bytes, chain_text: str, amendments: Iterable[Amendment]) -> list[tuple[Any, ...]]:
    """The amendments as routing_log_amendment_entry records, each MAC'd over its row as it was chained last (a row of
    a refused batch is chained again); none for a row that is not in the log (the database refused it)."""
    records = []
    for amendment in amendments:
        if (chained_at := amendment.entry.chained_at) is None:
            continue
        seq, row_hash = chained_at
        values = (amendment.entry.received_at, amendment.http_status, amendment.ocpi_status_code,
                  stored_text(amendment.message)[:MAX_MESSAGE], amendment.answered_at)  # fmt: skip
        records.append((chain_text, seq, *values, amendment_mac(key, row_hash, chain_text, seq, values)))
    return records


def amendment_verifies(key: bytes, row_hash: bytes, amendment: Mapping[str, Any]) -> bool:
    """Whether a stored amendment (QUERIES["every_amendment"]) is the one the hub wrote for the row of row_hash."""
    values = [amendment[name] for name in ("row_received_at", "http_status", "ocpi_status_code", "message",
                                           "answered_at")]  # fmt: skip
    try:
        expected = amendment_mac(key, row_hash, amendment["chain_id"], amendment["seq"], values)
    except (ValueError, TypeError, AttributeError):
        return False
    return amendment["mac"] is not None and hmac.compare_digest(amendment["mac"], expected)


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
