"""Legal holds on routing-log rows under dispute (migration 0017): set, released, listed, and those keeping a partition
from retention."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

from storage.sql import QUERIES


def shown(row: asyncpg.Record) -> dict[str, Any]:
    """A hold as the admin API, the CLI and the audit trail show it: what it covers, why, who set and released it."""
    party = f"{row['country_code']}-{row['party_id']}" if row["party_id"] is not None else None
    return {"id": row["id"], "correlation_id": row["correlation_id"], "object_id": row["object_id"], "party": party,
            "since": _iso(row["since"]), "until": _iso(row["until"]), "reason": row["reason"], "set_by": row["set_by"],
            "set_at": _iso(row["set_at"]), "released_by": row["released_by"],
            "released_at": _iso(row["released_at"])}  # fmt: skip


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


async def set_hold(
    conn: asyncpg.Connection,
    covers: tuple[str | None, str | None, tuple[str, str] | None, datetime | None, datetime | None],
    reason: str,
    by: str,
) -> dict[str, Any]:
    """A new hold on what covers names: (correlation_id, object_id, (country_code, party_id), since, until), one of
    the three given (a party with since and until), as hub/admin/holds.py checked it."""
    correlation_id, object_id, party, since, until = covers
    country_code, party_id = (party[0].upper(), party[1].upper()) if party else (None, None)
    row = await conn.fetchrow(QUERIES["insert_hold"], correlation_id, object_id, country_code, party_id, since, until,
                              reason, by)  # fmt: skip
    return shown(row)


async def release_hold(conn: asyncpg.Connection, hold_id: int, by: str) -> dict[str, Any] | None:
    """The hold released by `by`; None if it is not in force (no such hold, or released already)."""
    row = await conn.fetchrow(QUERIES["release_hold"], hold_id, by)
    return shown(row) if row is not None else None


async def hold(conn: asyncpg.Connection, hold_id: int) -> dict[str, Any] | None:
    row = await conn.fetchrow(QUERIES["hold_by_id"], hold_id)
    return shown(row) if row is not None else None


async def list_holds(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    return [shown(row) for row in await conn.fetch(QUERIES["list_holds"])]


async def holds_keeping(conn: asyncpg.Connection, quoted: str) -> list[int]:
    """The ids of the holds in force covering a row of the partition `quoted` (a quoted name read from pg_class)."""
    return [r["id"] for r in await conn.fetch(QUERIES["holds_keeping_partition"].format(partition=quoted))]
