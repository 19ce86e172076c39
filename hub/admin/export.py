"""GET /admin/api/routing-log/export: every row matching the search filters, streamed as NDJSON or CSV.

The rows come through a server-side cursor in chunks and leave as soon as a chunk is encoded, so memory stays
constant whatever the number of rows. The SHA-256 of the bytes is computed as they leave; at the end the hub signs the
export's manifest (hub.export_manifest), NDJSON's last line, which the audit trail keeps for a CSV export's download.
The audit trail has an "export" entry with the filters when it starts, and an "export_sent" one when it ends: the rows
and bytes sent, their SHA-256, and whether the export was complete.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import anyio
import asyncpg
import msgspec
import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from litestar import Request, Response, get
from litestar.response import Stream

from hub.admin.actors import READ_ONLY, Actor, actor_of, record_action
from hub.admin.api import AdminError, json_response, true_or_false
from hub.admin.routing_log import query_params
from hub.export_manifest import MANIFEST_VERSION, public_key_info, signed, trailer
from hub.runtime import AUDIT_QUERY_TIMEOUT_S
from storage.log_body import body_of, text_of
from storage.log_search import BadFilter, Search, parse_filters
from storage.log_search_sql import BODY_COLUMNS, EXPORT_COLUMNS, export_query
from storage.log_verify import current_heads
from storage.sql import QUERIES

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


@dataclass(frozen=True, slots=True)
class Sealing:
    """Who asks for an export, how, and the key that signs its manifest."""

    key: Ed25519PrivateKey
    trail_key: bytes  # the audit trail's (Settings.audit_trail_key), which keeps the manifest
    actor: Actor
    via: str  # api or console
    hub: str  # the hub's public URL
    export_id: str = field(default_factory=lambda: uuid.uuid4().hex)


def _manifest(sealing: Sealing, search: Search, export_format: str, bodies: bool) -> dict[str, Any]:
    return {"version": MANIFEST_VERSION, "export_id": sealing.export_id, "hub": sealing.hub, "format": export_format,
            "bodies": bodies, "filters": dict(search.given), "via": sealing.via,
            "exported_by": {"kind": sealing.actor.kind, "name": sealing.actor.name}}  # fmt: skip


async def export_rows(
    pool: asyncpg.Pool,
    search: Search,
    export_format: str,
    bodies: bool,
    sealing: Sealing,
    sent: Sent | None = None,
) -> AsyncIterator[bytes]:
    sent = Sent() if sent is None else sent
    rows = 0  # in chunk
    sql, args = export_query(search, bodies)
    lines = _CsvLines()
    header = (*EXPORT_COLUMNS, *BODY_COLUMNS, *BODY_KIND_COLUMNS) if bodies else EXPORT_COLUMNS
    chunk = bytearray(lines.encode(header) if export_format == "csv" else b"")
    digest, total = hashlib.sha256(), 0
    manifest = _manifest(sealing, search, export_format, bodies)
    async with pool.acquire() as conn, conn.transaction(readonly=True, isolation="repeatable_read"):
        await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
        # the heads of the snapshot the rows come from: a row of the export past its chain's head was written later
        manifest |= {"exported_at": _encoder.encode(datetime.now(UTC))[1:-1].decode(),
                     "heads": msgspec.to_builtins(await current_heads(conn))}  # fmt: skip
        async for row in conn.cursor(sql, *args, prefetch=CURSOR_ROWS, timeout=AUDIT_QUERY_TIMEOUT_S):
            rows, total = rows + 1, total + 1
            item = _with_bodies(row, export_format == "ndjson") if bodies else row
            if export_format == "csv":
                chunk += lines.encode(tuple(item.values()))
            else:
                chunk += _encoder.encode(item if bodies else _as_object(row))
                chunk += b"\n"
            if len(chunk) >= FLUSH_BYTES:
                digest.update(chunk)
                yield bytes(chunk)
                sent.took(chunk, rows)
                chunk.clear()
                rows = 0
    digest.update(chunk)
    manifest = signed(manifest | {"rows": total, "sha256": digest.hexdigest()}, sealing.key)
    async with pool.acquire() as conn:  # a CSV export's manifest is downloaded from there (export_manifest)
        parameters = {"export_id": sealing.export_id, "manifest": json.dumps(manifest, sort_keys=True)}
        await record_action(conn, sealing.trail_key, sealing.actor, "export_manifest", parameters)
    if export_format == "ndjson":
        chunk += trailer(manifest)
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


def export_stream(
    pool: asyncpg.Pool, search: Search, export_format: str, bodies: bool, sealing: Sealing, started: int
) -> Stream:
    """The export as a download whose name and X-Export-Id carry its id (a CSV export's manifest is fetched by it),
    its end in the audit trail after the "export" entry started (recorded_export)."""
    stamp = datetime.now().strftime("%Y%m%dT%H%M%S")
    name = f"routing-log-{stamp}-{sealing.export_id}.{export_format}"
    sent = Sent()
    audited = {"export": started} | ({"via": sealing.via} if sealing.via != "api" else {})
    chunks = export_rows(pool, search, export_format, bodies, sealing, sent)
    return Stream(
        recorded_export(chunks, sent, pool, sealing.trail_key, sealing.actor, audited),
        media_type=FORMATS[export_format],
        headers={"Content-Disposition": f'attachment; filename="{name}"', "X-Export-Id": sealing.export_id},
    )


@get("/routing-log/export", opt={READ_ONLY: True})
async def export_routing_log(request: Request) -> Stream:
    params = query_params(request)
    export_format = params.pop("format", "ndjson")
    if export_format not in FORMATS:
        raise AdminError(400, f"format must be ndjson or csv, got {export_format!r}")
    bodies = true_or_false("bodies", params.pop("bodies", None))
    try:
        search = parse_filters(params)
    except BadFilter as exc:
        raise AdminError(400, str(exc)) from None
    pool, key, who = request.app.state.pool, request.app.state.settings.audit_trail_key, actor_of(request)
    async with pool.acquire() as conn:
        started = await record_action(conn, key, who, "export",
                                      search.given | {"format": export_format, "bodies": bodies})  # fmt: skip
    settings = request.app.state.settings
    sealing = Sealing(settings.export_signing_key, key, who, "api", settings.public_url)
    return export_stream(pool, search, export_format, bodies, sealing, started)


@get("/routing-log/export/public-key", opt={READ_ONLY: True})
async def export_public_key(request: Request) -> Response[bytes]:
    """The public key that checks exports' manifests (ocpi-hub verify-export --public-key), with its fingerprint."""
    return json_response(public_key_info(request.app.state.settings.export_signing_key))


_EXPORT_ID = re.compile("[0-9a-f]{32}")


@get("/routing-log/export/manifests/{export_id:str}", opt={READ_ONLY: True})
async def export_manifest(request: Request, export_id: str) -> Response[bytes]:
    """An export's signed manifest, as the audit trail kept it when the export ended: a CSV export's, which its file
    cannot carry, saved beside it for ocpi-hub verify-export --manifest."""
    try:
        checked_export_id(export_id)
    except BadFilter as exc:
        raise AdminError(400, str(exc)) from None
    async with request.app.state.pool.acquire() as conn:
        manifest = await manifest_of(conn, export_id)
    if manifest is None:
        raise AdminError(404, f"no export {export_id!r} ended: an export's id is in its file name and X-Export-Id")
    return Response(manifest, media_type="application/json")


def checked_export_id(raw: str) -> str:
    """raw, unless no export can have it (BadFilter naming it), as a search filter's value is refused: an export's id
    is 32 hex digits (Sealing). Not looked up: a NUL in it was PostgreSQL's error, and the hub's 500."""
    if not _EXPORT_ID.fullmatch(raw):
        raise BadFilter(f"export_id must be 32 hexadecimal digits, as in an export's file name and X-Export-Id, "
                        f"got {raw[:40]!r}")  # fmt: skip
    return raw


async def manifest_of(conn: asyncpg.Connection, export_id: str) -> bytes | None:
    """The manifest of the export export_id (checked_export_id), or None."""
    text = await conn.fetchval(QUERIES["export_manifest"], export_id)
    return None if text is None else trailer(json.loads(text))
