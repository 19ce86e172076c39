"""The auditor API on the routing log: search, one message, a conversation, the audit trail; each call is
audit-trailed (verify and heads: hub.admin.verify)."""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import unquote

import asyncpg
import msgspec
from litestar import Request, Response, get

from hub.admin.actors import READ_ONLY, actor_of, record_action
from hub.admin.api import AdminError, json_response, takes_no_parameters
from hub.envelope import path_number, whole_number
from hub.runtime import DATABASE_TIMEOUT_S
from storage.log_amendment import answered_instead
from storage.log_body import body_of, text_of
from storage.log_cursor import decode_cursor, encode_cursor
from storage.log_row import BodyDigest, stored_text
from storage.log_row_check import row_integrity, rows_integrity
from storage.log_search import BadFilter, checked_text, is_row_id, parse_filters
from storage.log_search_sql import LIST_COLUMNS, page_query
from storage.partitions import why_no_row
from storage.sql import QUERIES

MAX_LIMIT = 500
MAX_CONVERSATION = 1000
SEARCH_TIMEOUT_S = 30
_PAGE_PARAMS = frozenset({"limit", "cursor"})


async def fetch_planned(
    conn: asyncpg.Connection, sql: str, args: list[Any], timeout_s: float = SEARCH_TIMEOUT_S
) -> list[asyncpg.Record]:
    """Run a search planned for its actual values (see storage/log_search.py), in a read-only transaction, and
    have the server give up after timeout_s rather than hold a connection for a search no index can serve
    (the client waits a little longer, so that the server's reason is the one the auditor reads)."""
    try:
        async with conn.transaction(readonly=True):
            await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
            await conn.execute(f"SET LOCAL statement_timeout = '{round(timeout_s * 1000)}ms'")
            return await conn.fetch(sql, *args, timeout=timeout_s + DATABASE_TIMEOUT_S)
    except asyncpg.QueryCanceledError:
        raise AdminError(503, f"the search took longer than {timeout_s:g} s: narrow it with since/until") from None


def query_params(request: Request) -> dict[str, str]:
    """The query parameters, each given once: one given twice (module=sessions&module=cdrs) is refused, where taking
    the first would answer a search the auditor did not ask for as if it were complete."""
    params: dict[str, str] = {}
    for name, value in request.query_params.multi_items():
        if name in params:
            raise AdminError(400, f"{name} is given more than once: give each parameter once (one search per value)")
        params[name] = value
    return params


def page_limit(raw: str | None) -> int:
    """A page's limit as a query gave it (this API's and the console's routing log, the audit trail)."""
    if raw is None:
        return 100
    limit = whole_number(raw)
    if limit is None or not 1 <= limit <= MAX_LIMIT:
        raise AdminError(400, f"limit must be a whole number from 1 to {MAX_LIMIT}, got {raw[:40]!r}")
    return limit


@get("/routing-log", opt={READ_ONLY: True})
async def routing_log(request: Request) -> Response[bytes]:
    """Newest first; next_cursor continues where this page ended (keyset on received_at, id)."""
    params = query_params(request)
    try:
        search = parse_filters(params, _PAGE_PARAMS)
        cursor = decode_cursor(params["cursor"]) if params.get("cursor") else None
    except BadFilter as exc:
        raise AdminError(400, str(exc)) from None
    limit = page_limit(params.get("limit"))
    recorded = search.given | ({"cursor": params["cursor"]} if cursor else {})
    sql, args = page_query(search, cursor, limit)
    async with request.app.state.pool.acquire() as conn:
        await record_action(conn, request.app.state.settings.audit_trail_key, actor_of(request), "search", recorded)
        rows = await fetch_planned(conn, sql, args)
        items = await with_amendments(conn, rows[:limit])
    last = items[-1] if len(rows) > limit else None
    next_cursor = encode_cursor(last["received_at"], last["id"]) if last else None
    return json_response({"items": items, "next_cursor": next_cursor})


async def with_amendments(conn: asyncpg.Connection, rows: list[asyncpg.Record]) -> list[dict[str, Any]]:
    """The rows as items, each with answered_instead: what its caller was answered instead of what the row says
    (storage.log_amendment), or None; the row's own fields as they are."""
    amended = await answered_instead(conn, rows)
    return [dict(row) | {"answered_instead": amended.get((row["chain_id"], row["seq"]))} for row in rows]


def _body(stored: bytes | None, size: int) -> dict[str, Any]:
    """body: the JSON as a value (or the text); text: the body as it was sent; base64: a body that is not UTF-8 (kind
    bytes), its bytes exactly. A value drops what a party may dispute: a key sent twice keeps its last value, 10.50
    becomes 10.5 and 1e2 100.0."""
    raw = body_of(stored)
    body: Any = None
    text, encoded, kind = text_of(raw), None, "empty"
    if text is None:
        encoded, kind = base64.b64encode(raw).decode(), "bytes"
    elif raw:
        try:
            body, kind = msgspec.json.decode(raw), "json"
        except (msgspec.DecodeError, RecursionError):
            body, kind = text, "text"
    return {"body": body, "text": text if raw else None, "base64": encoded, "kind": kind, "size": size,
            "truncated": len(raw) < size}  # fmt: skip


def _headers(value: str | None) -> dict[str, str]:
    return msgspec.json.decode(value) if value else {}


@get("/routing-log/{row_id:str}", opt={READ_ONLY: True})
async def routing_log_message(request: Request, row_id: str) -> Response[bytes]:
    """One message with both bodies decompressed (JSON as JSON when it parses, else text, or base64 when not UTF-8),
    headers and timings."""
    number = path_number(row_id, "row_id")
    takes_no_parameters(request)
    async with request.app.state.pool.acquire() as conn:
        message = await load_message(conn, number, request.app.state.settings.routing_log_key)
        await record_action(conn, request.app.state.settings.audit_trail_key, actor_of(request), "view", {"id": number})
        if message is None and is_row_id(number) and (why := await why_no_row(conn, number)):
            raise AdminError(410, f"routing-log row {number} is no longer in the log: {why}")
    if message is None:
        raise AdminError(404, f"no routing-log row {number}")
    return json_response(message)


async def load_message(conn: asyncpg.Connection, row_id: int, key: bytes) -> dict[str, Any] | None:
    """One row as a message, with its integrity: whether it matches its hash and links to its chain's rows on either
    side (storage.log_row_check), read in one snapshot, so that a row written meanwhile does not look like a gap."""
    if not is_row_id(row_id):
        return None
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        row = await conn.fetchrow(QUERIES["routing_log_message"], row_id)
        integrity = await row_integrity(conn, key, row) if row is not None else None
    if row is None:
        return None
    message = {name: row[name] for name in LIST_COLUMNS}
    message.update(
        answered_instead=(await answered_instead(conn, [row])).get((row["chain_id"], row["seq"])),
        listed_ids=row["listed_ids"],
        prev_hash=row["prev_hash"].hex(),
        hash=row["hash"].hex(),
        integrity=integrity,
        request={"headers": _headers(row["request_headers"])} | _body(row["request_body"], row["request_body_size"]),
        response={"headers": _headers(row["response_headers"])}
        | _body(row["response_body"], row["response_body_size"]),
    )
    return message


@get("/routing-log/correlation/{correlation_id:path}", opt={READ_ONLY: True})
async def routing_log_conversation(request: Request) -> Response[bytes]:
    """Every message of one X-Correlation-ID, in the order the hub received them. The id is read from the path as
    sent, percent-decoded: one may hold a "/" (sent as %2F) or end with one, which routing would strip."""
    takes_no_parameters(request)
    raw_path = request.scope.get("raw_path") or request.scope["path"].encode()
    correlation_id = stored_text(unquote(raw_path.decode("latin-1").split("/routing-log/correlation/", 1)[1]))
    try:
        checked_text("correlation_id", correlation_id)  # as the search filter refuses it, before any query
    except BadFilter as exc:
        raise AdminError(400, str(exc)) from None
    async with request.app.state.pool.acquire() as conn:
        items, truncated = await load_conversation(conn, correlation_id, request.app.state.settings.routing_log_key)
        await record_action(
            conn,
            request.app.state.settings.audit_trail_key,
            actor_of(request),
            "correlation",
            {"correlation_id": correlation_id},
        )
    return json_response({"correlation_id": correlation_id, "items": items, "truncated": truncated})


async def load_conversation(
    conn: asyncpg.Connection, correlation_id: str, key: bytes
) -> tuple[list[dict[str, Any]], bool]:
    """The first MAX_CONVERSATION messages of one correlation id, oldest first, and whether there are more; each with
    its answered_instead and its integrity, checked as a message's is, all together (storage.log_row_check) in one
    snapshot, without reading their bodies."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        rows = await conn.fetch(QUERIES["routing_log_correlation"], correlation_id, MAX_CONVERSATION + 1)
        shown = rows[:MAX_CONVERSATION]
        checked = await rows_integrity(conn, key, [_with_body_digests(row) for row in shown])
        amended = await answered_instead(conn, shown)
    items = [{name: row[name] for name in _CONVERSATION_FIELDS} | {
        "hash": row["hash"].hex(), "answered_instead": amended.get((row["chain_id"], row["seq"])),
        "integrity": checked[row["id"]]} for row in shown]  # fmt: skip
    return items, len(rows) > MAX_CONVERSATION


_CONVERSATION_FIELDS = (
    "id", "received_at", "request_id", "forwarded_request_id", "correlation_id", "from_country_code", "from_party_id",
    "to_country_code", "to_party_id", "caller_platform_id", "receiver_platform_id", "module", "interface", "method",
    "path", "query", "routing", "http_status", "ocpi_status_code", "duration_ms", "error", "object_id",
    "request_body_size", "response_body_size", "chain_id", "seq",
)  # fmt: skip


def _with_body_digests(row: asyncpg.Record) -> dict[str, Any]:
    """A conversation's row as its hash takes it, its bodies by their SHA-256."""
    request, response = row["request_body_sha256"], row["response_body_sha256"]
    return dict(row) | {"request_body": None if request is None else BodyDigest(request),
                        "response_body": None if response is None else BodyDigest(response)}  # fmt: skip


@get("/audit-trail", opt={READ_ONLY: True})
async def audit_trail(request: Request) -> Response[bytes]:
    """Who did what on the routing log and to the platforms, newest first; next_cursor is the last id of the page. An
    auditor reads all of it: who else searched, viewed and exported what is what it audits (no entry holds a token)."""
    params = query_params(request)
    if unknown := sorted(set(params) - {"limit", "cursor"}):
        raise AdminError(400, f"unknown parameter {unknown[0]}; the audit trail takes limit and cursor")
    limit = page_limit(params.get("limit"))
    cursor = whole_number(params["cursor"]) if params.get("cursor") else None
    if params.get("cursor") and (cursor is None or not is_row_id(cursor)):
        raise AdminError(400, f"cursor is not one this API handed out, got {params['cursor'][:40]!r}")
    async with request.app.state.pool.acquire() as conn:
        rows = await conn.fetch(QUERIES["audit_trail"], cursor, limit + 1)
    items = [dict(row) | {"parameters": msgspec.json.decode(row["parameters"])} for row in rows[:limit]]
    return json_response({"items": items, "next_cursor": items[-1]["id"] if len(rows) > limit else None})
