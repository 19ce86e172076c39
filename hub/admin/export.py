"""GET /admin/api/routing-log/export: every row matching the search filters, streamed as NDJSON or CSV.

The rows come through a server-side cursor in chunks and leave as soon as a chunk is encoded, so memory stays
constant whatever the number of rows. The audit trail has an "export" entry with the filters when it starts, and an
"export_sent" one when it ends: the rows and bytes sent, their SHA-256, and whether the export was complete.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import anyio
import asyncpg
import msgspec
import structlog
from litestar import Request, get
from litestar.response import Stream

from hub.admin.actors import READ_ONLY, Actor, actor_of, record_action
from hub.admin.api import AdminError
from hub.admin.routing_log import query_params
from hub.runtime import AUDIT_QUERY_TIMEOUT_S
from storage.log_row import body_of, text_of
from storage.log_search import BODY_COLUMNS, EXPORT_COLUMNS, BadFilter, Search, export_query, parse_filters

CURSOR_ROWS = 2000
FLUSH_BYTES = 256 * 1024
FORMATS = {"ndjson": "application/x-ndjson", "csv": "text/csv"}  # Litestar adds "; charset=utf-8" to text/*
_encoder = msgspec.json.Encoder()
# after the bodies: text, or bytes (not UTF-8, given in base64); none without a body
BODY_KIND_COLUMNS = ("request_body_kind", "response_body_kind")
log = structlog.get_logger()


@dataclass(slots=True)
class Sent:
    """What an export has sent so far: a chunk counts once the server took it (the stream asked for the next)."""

    rows: int = 0
    size: int = 0
    digest: Any = field(default_factory=hashlib.sha256)
    complete: bool = False

    def took(self, chunk: bytes | bytearray, rows: int) -> None:
        self.rows += rows
        self.size += len(chunk)
        self.digest.update(chunk)


# A cell a spreadsheet would take for a formula (OWASP, CSV injection): a party chooses many of the values (its ids, a
# path, an error it caused), and auditors open the export in spreadsheets.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, str):
        return "'" + value if value.startswith(_FORMULA_START) else value  # shown as text, the quote marking it
    if isinstance(value, list):  # listed_ids: the ids as a JSON array in one cell
        return _encoder.encode(value).decode()
    if isinstance(value, datetime):  # as the API and NDJSON write it: UTC as "Z", no fraction when it is zero
        return _encoder.encode(value)[1:-1].decode()
    return value


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


def _as_object(row: asyncpg.Record) -> dict[str, Any]:
    """An NDJSON row: its amendment (answered_instead) as an object."""
    item = dict(row)
    if item["answered_instead"] is not None:
        item["answered_instead"] = msgspec.json.decode(item["answered_instead"])
    return item


def _with_bodies(row: asyncpg.Record, headers_as_objects: bool) -> dict[str, Any]:
    """The row with its bodies as the parties sent them (cut at OCPI_HUB_LOG_BODY_MAX_BYTES): as text (kind text), or
    in base64 when not UTF-8 (kind bytes), their kinds after them (None: no body)."""
    item = _as_object(row) if headers_as_objects else dict(row)
    kinds: dict[str, str | None] = {}
    for name in ("request_body", "response_body"):
        raw = body_of(item[name])
        text = text_of(raw)
        kinds[f"{name}_kind"] = None if not raw else "text" if text is not None else "bytes"
        item[name] = None if not raw else text if text is not None else base64.b64encode(raw).decode()
    if headers_as_objects:  # NDJSON: objects; CSV keeps the JSON text
        for name in ("request_headers", "response_headers"):
            item[name] = msgspec.json.decode(item[name]) if item[name] else None
    return item | kinds


async def export_rows(
    pool: asyncpg.Pool, search: Search, export_format: str, bodies: bool = False, sent: Sent | None = None
) -> AsyncIterator[bytes]:
    sent = Sent() if sent is None else sent
    rows = 0  # in chunk
    sql, args = export_query(search, bodies)
    lines = _CsvLines()
    header = (*EXPORT_COLUMNS, *BODY_COLUMNS, *BODY_KIND_COLUMNS) if bodies else EXPORT_COLUMNS
    chunk = bytearray(lines.encode(header) if export_format == "csv" else b"")
    async with pool.acquire() as conn, conn.transaction(readonly=True, isolation="repeatable_read"):
        await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
        async for row in conn.cursor(sql, *args, prefetch=CURSOR_ROWS, timeout=AUDIT_QUERY_TIMEOUT_S):
            rows += 1
            item = _with_bodies(row, export_format == "ndjson") if bodies else row
            if export_format == "csv":
                chunk += lines.encode(tuple(item.values()))
            else:
                chunk += _encoder.encode(item if bodies else _as_object(row))
                chunk += b"\n"
            if len(chunk) >= FLUSH_BYTES:
                yield bytes(chunk)
                sent.took(chunk, rows)
                chunk.clear()
                rows = 0
    if chunk:
        yield bytes(chunk)
        sent.took(chunk, rows)
    sent.complete = True


async def recorded_export(
    chunks: AsyncIterator[bytes], sent: Sent, pool: asyncpg.Pool, key: bytes, who: Actor, audited: dict[str, Any]
) -> AsyncIterator[bytes]:
    """The chunks of an export (export_rows, filling sent), and when it ends, however, its "export_sent" entry in
    the audit trail (key: its) with audited: the rows and bytes sent and their SHA-256; complete false when it was cut
    short (the client went away, the database failed), what was sent until then."""
    try:
        async for chunk in chunks:
            yield chunk
    finally:
        done = {"rows": sent.rows, "bytes": sent.size, "sha256": sent.digest.hexdigest(), "complete": sent.complete}
        try:  # shielded: an export cut short by a client going away is cancelled, and this would be with it
            with anyio.CancelScope(shield=True):
                async with pool.acquire() as conn:
                    await record_action(conn, key, who, "export_sent", audited | done)
        except Exception as exc:  # the export's start is in the trail all the same
            log.error("export_not_recorded", error=repr(exc), **done)


@get("/routing-log/export", opt={READ_ONLY: True})
async def export_routing_log(request: Request) -> Stream:
    params = query_params(request)
    export_format = params.pop("format", "ndjson")
    if export_format not in FORMATS:
        raise AdminError(400, f"format must be ndjson or csv, got {export_format!r}")
    bodies = params.pop("bodies", "false")
    if bodies not in ("true", "false"):
        raise AdminError(400, f"bodies must be true or false, got {bodies!r}")
    try:
        search = parse_filters(params)
    except BadFilter as exc:
        raise AdminError(400, str(exc)) from None
    pool, key, who = request.app.state.pool, request.app.state.settings.audit_trail_key, actor_of(request)
    async with pool.acquire() as conn:
        started = await record_action(conn, key, who, "export",
                                      search.given | {"format": export_format, "bodies": bodies == "true"})  # fmt: skip
    stamp = datetime.now().strftime("%Y%m%dT%H%M%S")
    sent = Sent()
    return Stream(
        recorded_export(
            export_rows(pool, search, export_format, bodies == "true", sent), sent, pool, key, who, {"export": started}
        ),
        media_type=FORMATS[export_format],
        headers={"Content-Disposition": f'attachment; filename="routing-log-{stamp}.{export_format}"'},
    )
