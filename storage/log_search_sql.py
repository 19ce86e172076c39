"""The SQL a routing-log search runs (storage.log_search parses its filters): keyset pages newest first, and every
matching row oldest first for exports and stats, with the columns each shows."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from storage.log_search import LISTED_CLAUSE, OBJECT_CLAUSE, Search

# The columns of a search result, an export row and a correlation item (bodies only in a single message). The
# platform ids tell apart two platforms that held one party id one after the other (GET /admin/api/parties names them).
# Beside duration_ms, the receiver's part of it and the wait for a connection to the receiver (migration 0021).
LIST_COLUMNS = (
    "id", "received_at", "request_id", "forwarded_request_id", "correlation_id", "from_country_code",
    "from_party_id", "to_country_code", "to_party_id", "caller_platform_id", "receiver_platform_id", "module",
    "interface", "method", "path", "query", "routing",
    "http_status", "ocpi_status_code", "duration_ms", "receiver_ms", "connection_wait_ms", "error", "object_id",
    "request_body_size", "response_body_size", "chain_id", "seq", "prev_hash", "hash",
)  # fmt: skip
# An export's rows also name the ids a list answer held (up to 1,000 a row: not on a page of 500 search items; the
# message view shows them too).
EXPORT_COLUMNS = (*LIST_COLUMNS, "listed_ids", "answered_instead")
# the hash in hex, as the message view shows it: an export keeps it, and a row showing another one later was changed
_SELECT = ", ".join(f"encode({name}, 'hex') AS {name}" if name.endswith("hash") else name for name in LIST_COLUMNS)
# What the row's caller was answered instead (migration 0015), as JSON text: an object in NDJSON, a cell in CSV.
_ANSWERED_INSTEAD = (
    "(SELECT json_build_object('http_status', a.http_status, 'ocpi_status_code', a.ocpi_status_code, 'status_message',"
    " a.message, 'answered_at', to_char(a.answered_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'))::text"
    " FROM routing_log_amendment AS a WHERE a.chain_id = routing_log.chain_id AND a.seq = routing_log.seq)"
    " AS answered_instead"
)
_EXPORT_SELECT = f"{_SELECT}, listed_ids, {_ANSWERED_INSTEAD}"
ORDER_NEWEST = "ORDER BY received_at DESC, id DESC"
ORDER_OLDEST = "ORDER BY received_at, id"


def page_query(search: Search, cursor: tuple[datetime, int] | None, limit: int) -> tuple[str, list[Any]]:
    """Newest first, the rows after the cursor's (received_at, id); limit + 1 rows tell whether there is more."""
    extra = [search.add("(received_at, id) < ({0}, {1})", list(cursor))] if cursor else []
    limit_param = search.add("{0}", [limit + 1])
    # Either side, either answer: ordered index ranges (from-party, to-party; the row's status, its amendment's)
    # merged, rather than an OR the planner can only answer with a bitmap scan and a sort of every matching row.
    sides: list[list[str]] = [[]]
    if search.party is not None:
        sent, received, not_sent = search.either_party()
        sides = [[sent], [f"{received} AND {not_sent}"]]
    answers: list[list[str]] = [[]] if not search.answered else [[answer] for answer in search.either_answer()]
    objects: list[list[str]] = [[]] if search.object is None else [[clause] for clause in search.either_object()]
    branches = [
        f"SELECT {_SELECT} FROM routing_log {search.where(*extra, *side, *answer, *about)} {ORDER_NEWEST} "
        f"LIMIT {limit_param}"
        for side in sides
        for answer in answers
        for about in objects
    ]
    if len(branches) == 1:
        return branches[0], search.args
    merged = " UNION ALL ".join(f"({branch})" for branch in branches)
    return f"SELECT * FROM ({merged}) AS either {ORDER_NEWEST} LIMIT {limit_param}", search.args


BODY_COLUMNS = ("request_headers", "response_headers", "request_body", "response_body")


def export_query(search: Search, bodies: bool = False) -> tuple[str, list[Any]]:
    """Every matching row, oldest first; with bodies, also the headers and the (compressed) bodies."""
    columns = f"{_EXPORT_SELECT}, {', '.join(BODY_COLUMNS)}" if bodies else _EXPORT_SELECT
    return f"SELECT {columns} FROM routing_log {full_where(search)} {ORDER_OLDEST}", search.args


def full_where(search: Search) -> str:
    """The WHERE clause of every filter, the party and status ones as ORs (exports and stats read every matching
    row)."""
    either = []
    if search.party is not None:
        sent, received, _ = search.either_party()
        either.append(f"(({sent}) OR ({received}))")
    if search.answered:
        as_logged, amended = search.either_answer()
        either.append(f"(({as_logged}) OR ({amended}))")
    if search.object is not None:
        placeholders = search.bind(search.object)
        either.append(f"({OBJECT_CLAUSE.format(*placeholders)} OR {LISTED_CLAUSE.format(*placeholders)})")
    return search.where(*either)
