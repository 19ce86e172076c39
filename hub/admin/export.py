"""GET /admin/api/routing-log/export: every row matching the search filters, streamed as NDJSON or CSV.

The rows come through a server-side cursor in chunks and leave as soon as a chunk is encoded, so memory stays
constant whatever the number of rows.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import asyncpg
import msgspec
from litestar import Request, get
from litestar.response import Stream

from hub.admin.actors import READ_ONLY, actor_of, record_action
from hub.admin.api import AdminError
from hub.admin.routing_log import query_params
from storage.log_search import LIST_COLUMNS, BadFilter, Search, export_query, parse_filters

CURSOR_ROWS = 2000
FLUSH_BYTES = 256 * 1024
FORMATS = {"ndjson": "application/x-ndjson", "csv": "text/csv; charset=utf-8"}
_encoder = msgspec.json.Encoder()


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    return value.isoformat() if isinstance(value, datetime) else value


class _CsvLines:
    def __init__(self) -> None:
        self.buffer = io.StringIO()
        self.writer = csv.writer(self.buffer, lineterminator="\n")

    def encode(self, values: list[Any] | tuple[Any, ...]) -> bytes:
        self.writer.writerow([_csv_value(v) for v in values])
        line = self.buffer.getvalue().encode()
        self.buffer.seek(0)
        self.buffer.truncate()
        return line


async def export_rows(pool: asyncpg.Pool, search: Search, export_format: str) -> AsyncIterator[bytes]:
    sql, args = export_query(search)
    lines = _CsvLines()
    chunk = bytearray(lines.encode(LIST_COLUMNS) if export_format == "csv" else b"")
    async with pool.acquire() as conn, conn.transaction(readonly=True, isolation="repeatable_read"):
        await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
        async for row in conn.cursor(sql, *args, prefetch=CURSOR_ROWS):
            if export_format == "csv":
                chunk += lines.encode(tuple(row))
            else:
                chunk += _encoder.encode(dict(row))
                chunk += b"\n"
            if len(chunk) >= FLUSH_BYTES:
                yield bytes(chunk)
                chunk.clear()
    if chunk:
        yield bytes(chunk)


@get("/routing-log/export", opt={READ_ONLY: True})
async def export_routing_log(request: Request) -> Stream:
    params = query_params(request)
    export_format = params.pop("format", "ndjson")
    if export_format not in FORMATS:
        raise AdminError(400, f"format must be ndjson or csv, got {export_format!r}")
    try:
        search = parse_filters(params)
    except BadFilter as exc:
        raise AdminError(400, str(exc)) from None
    pool = request.app.state.pool
    async with pool.acquire() as conn:
        await record_action(conn, actor_of(request), "export", search.given | {"format": export_format})
    stamp = datetime.now().strftime("%Y%m%dT%H%M%S")
    return Stream(
        export_rows(pool, search, export_format),
        media_type=FORMATS[export_format],
        headers={"Content-Disposition": f'attachment; filename="routing-log-{stamp}.{export_format}"'},
    )
