"""The first slice of the auditor API: search the routing log by request or correlation id, verify its chain."""

from __future__ import annotations

import base64
from datetime import datetime

from litestar import Request, Response, get

from hub.admin.api import AdminError, json_response
from storage.routing_log import verify
from storage.sql import QUERIES

MAX_LIMIT = 500


def _cursor(value: str | None) -> int | None:
    if not value:
        return None
    try:
        return int(base64.urlsafe_b64decode(value.encode() + b"==").decode())
    except ValueError:
        raise AdminError(400, "cursor is not one this API handed out") from None


def _row(record: dict) -> dict:
    item = dict(record)
    for name in ("prev_hash", "hash"):
        item[name] = item[name].hex()
    item["chain_id"] = str(item["chain_id"])
    return item


@get("/routing-log")
async def routing_log(
    request: Request,
    request_id: str | None = None,
    correlation_id: str | None = None,
    limit: int = 100,
    cursor: str | None = None,
) -> Response[bytes]:
    """Newest first; next_cursor continues where this page ended (keyset pagination on the row id)."""
    if not 1 <= limit <= MAX_LIMIT:
        raise AdminError(400, f"limit must be between 1 and {MAX_LIMIT}")
    async with request.app.state.pool.acquire() as conn:
        rows = await conn.fetch(QUERIES["search_routing_log"], request_id, correlation_id, _cursor(cursor), limit + 1)
    more = len(rows) > limit
    items = [_row(r) for r in rows[:limit]]
    next_cursor = base64.urlsafe_b64encode(str(items[-1]["id"]).encode()).decode().rstrip("=") if more else None
    return json_response({"items": items, "next_cursor": next_cursor})


@get("/routing-log/verify")
async def verify_routing_log(
    request: Request, since: datetime | None = None, until: datetime | None = None
) -> Response[bytes]:
    async with request.app.state.pool.acquire() as conn:
        result = await verify(conn, since, until)
    return json_response(
        {"ok": result.ok, "rows": result.rows, "first_bad_id": result.first_bad_id, "problems": result.problems}
    )
