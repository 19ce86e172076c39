"""The console's routing-log pages: the filtered table with keyset pages, one message, and the export download."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from litestar import Request, Response, get
from litestar.response import Stream, Template

from hub.admin.actors import record_action
from hub.admin.api import AdminError, true_or_false
from hub.admin.export import FORMATS, Sealing, checked_export_id, export_stream, manifest_of
from hub.admin.routing_log import fetch_planned, load_conversation, load_message, page_limit, with_amendments
from hub.console.auth import actor
from hub.envelope import path_number
from storage.log_cursor import decode_cursor, encode_cursor
from storage.log_search import FILTER_NAMES, BadFilter, is_row_id, parse_filters
from storage.log_search_sql import page_query
from storage.partitions import why_no_row
from storage.sql import QUERIES

PAGE_SIZES = (50, 100, 200)
MODULES = ("cdrs", "chargingprofiles", "commands", "credentials", "hubclientinfo", "locations", "sessions", "tariffs",
           "tokens", "versions")  # fmt: skip
# (name, label, placeholder) of each filter field, in the order the form shows them
FIELDS = (
    ("party", "Party (either side)", "NL-ECO"), ("from_party", "From", "NL-ECO"), ("to_party", "To", "DE-MFX"),
    ("module", "Module", ""), ("method", "Method", ""), ("routing", "Routing", ""),
    ("object_id", "Object id", "location, session, CDR or token id"),
    ("listed_id", "Listed id", "a CDR, session or token a list named"), ("platform", "Platform id", "either side"),
    ("http_status", "HTTP status answered", "404"), ("ocpi_status", "OCPI status answered", "2004"),
    ("request_id", "Request id", "X-Request-ID"), ("correlation_id", "Correlation id", "X-Correlation-ID"),
    ("min_duration_ms", "Took ≥ (ms)", "2000"), ("min_receiver_ms", "Receiver took ≥ (ms)", "2000"),
    ("since", "Since (UTC)", "2026-01-31T12:00"), ("until", "Until (UTC)", "2026-02-01T00:00"),
)  # fmt: skip
CHOICES = {
    "module": MODULES,
    "method": ("GET", "POST", "PUT", "PATCH", "DELETE"),
    "routing": ("direct", "broadcast", "open", "hub", "rejected"),
}


def _filters(request: Request) -> dict[str, str]:
    """The filters the form sent, without the empty ones (a blank field is no filter); BadFilter for one given twice
    (a hand-made URL), as the admin API answers it."""
    filters: dict[str, str] = {}
    for name, value in request.query_params.multi_items():
        if name in FILTER_NAMES and value.strip():
            if name in filters:
                raise BadFilter(f"{name} is given more than once: give each filter once (one search per value)")
            filters[name] = value.strip()
    return filters


@get("/console/log")
async def log_page(request: Request, cursor: str | None = None, limit: str | None = None) -> Template:
    try:
        filters, problem = _filters(request), None
    except BadFilter as exc:
        filters, problem = {}, str(exc)
    try:  # as the admin API takes it: "abc", 0 and 9999 were Litestar's "Expected `int`", or quietly 100
        rows_wanted = page_limit(limit)
    except AdminError as exc:
        rows_wanted, problem = 100, problem or exc.message
    sizes = sorted({*PAGE_SIZES, rows_wanted})
    context: dict[str, Any] = {"page": "log", "actor": actor(request), "filters": filters, "fields": FIELDS,
                               "parties": await party_choices(request),
                               "choices": CHOICES, "limit": rows_wanted, "sizes": sizes, "rows": [], "error": None,
                               "next_url": None, "first_url": None}  # fmt: skip
    try:
        if problem:
            raise BadFilter(problem)
        search = parse_filters(filters)
        after = decode_cursor(cursor) if cursor else None
    except BadFilter as exc:
        context["error"] = str(exc)
        return Template("log.html", context=context, status_code=400)
    sql, args = page_query(search, after, rows_wanted)
    async with request.app.state.pool.acquire() as conn:
        await record_action(conn, request.app.state.settings.audit_trail_key, actor(request), "search",
                            search.given | {"via": "console"} | ({"cursor": cursor} if cursor else {}))  # fmt: skip
        try:
            rows = await fetch_planned(conn, sql, args)
        except AdminError as exc:  # the search ran out of time
            context["error"] = exc.message
            return Template("log.html", context=context, status_code=exc.status)
        # what the callers of amended rows were answered instead: one lookup by primary key for the page's rows
        context["rows"] = await with_amendments(conn, rows[:rows_wanted])
    keep = filters | ({"limit": str(rows_wanted)} if rows_wanted != 100 else {})
    context["query"] = urlencode(keep)
    if len(rows) > rows_wanted:
        last = rows[rows_wanted - 1]
        context["next_url"] = "/console/log?" + urlencode(keep | {"cursor": encode_cursor(last["received_at"],
                                                                                          last["id"])})  # fmt: skip
    if cursor:
        context["first_url"] = "/console/log?" + urlencode(keep)
    return Template("log.html", context=context)


@get("/console/log/{row_id:str}")
async def message_page(request: Request, row_id: str) -> Template:
    number = path_number(row_id, "row_id")
    async with request.app.state.pool.acquire() as conn:
        message = await load_message(conn, number, request.app.state.settings.routing_log_key)
        await record_action(
            conn, request.app.state.settings.audit_trail_key, actor(request), "view", {"id": number, "via": "console"}
        )
        conversation, more = (
            await load_conversation(conn, message["correlation_id"], request.app.state.settings.routing_log_key)
            if message
            else ([], False)
        )
        why = await why_no_row(conn, number) if message is None and is_row_id(number) else None
    if why:  # as the admin API answers it
        return Template("problem.html", status_code=410, context={
            "actor": actor(request), "heading": "Dropped by retention",
            "message": f"Routing-log row {number} is no longer in the log: {why}."})  # fmt: skip
    if message is None:
        return Template("problem.html", status_code=404, context={
            "actor": actor(request), "heading": "No such message",
            "message": f"The routing log has no row {number}."})  # fmt: skip
    context = {"page": "log", "actor": actor(request), "m": message, "conversation": conversation, "more": more}
    return Template("message.html", context=context)


@get("/console/log/export")
async def export_download(request: Request, format: str = "csv", bodies: str | None = None) -> Stream | Template:
    try:
        filters = _filters(request)
        if format not in FORMATS:
            raise BadFilter(f"format must be ndjson or csv, got {format!r}")
        with_bodies = true_or_false("bodies", bodies)  # as the admin API's export takes it
        search = parse_filters(filters)
    except (BadFilter, AdminError) as exc:
        return Template("problem.html", status_code=400, context={
            "actor": actor(request), "heading": "Cannot export", "message": str(exc)})  # fmt: skip
    pool, key, who = request.app.state.pool, request.app.state.settings.audit_trail_key, actor(request)
    async with pool.acquire() as conn:
        audited = search.given | {"format": format, "bodies": with_bodies, "via": "console"}
        started = await record_action(conn, key, who, "export", audited)
    settings = request.app.state.settings
    sealing = Sealing(settings.export_signing_key, key, who, "console", settings.public_url)
    return export_stream(pool, search, format, with_bodies, sealing, started)


@get("/console/log/export/manifests/{export_id:str}")
async def export_manifest_download(request: Request, export_id: str) -> Response[bytes] | Template:
    """A CSV export's signed manifest, by the id in the export's file name: saved beside it for verify-export."""
    try:
        checked_export_id(export_id)
    except BadFilter as exc:
        return Template("problem.html", status_code=400, context={
            "actor": actor(request), "heading": "No such export", "message": str(exc)})  # fmt: skip
    async with request.app.state.pool.acquire() as conn:
        manifest = await manifest_of(conn, export_id)
    if manifest is None:
        return Template("problem.html", status_code=404, context={"actor": actor(request), "heading": "No such export",
            "message": f"No export {export_id!r} ended: its id ends the export's file name."})  # fmt: skip
    return Response(
        manifest,
        media_type="application/json",
        headers={"Content-Disposition": f'attachment; filename="routing-log-{export_id}.manifest.json"'},
    )


async def party_choices(request: Request) -> list[str]:
    async with request.app.state.pool.acquire() as conn:
        rows = await conn.fetch(QUERIES["list_parties"], None)
    return sorted({f"{r['country_code'].upper()}-{r['party_id'].upper()}" for r in rows})
