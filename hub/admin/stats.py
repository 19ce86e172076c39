"""GET /admin/api/stats: per hour or day, per party (as sender and as receiver) and module, the number of messages,
the error rate, the p50/p95/p99 duration, and of the receivers' part of it (migration 0021) the same."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from litestar import Request, Response, get

from hub.admin.actors import READ_ONLY, actor_of, record_action
from hub.admin.api import AdminError, json_response
from hub.admin.routing_log import fetch_planned, query_params
from storage.log_search import BadFilter, parse_filters, parse_time
from storage.log_search_sql import full_where

BUCKETS = {"hour": timedelta(days=1), "day": timedelta(days=31)}  # the default span of each bucket size
# An error: an HTTP error, or an OCPI status outside 1xxx (no OCPI status at all included), in what the caller was
# answered: the row's status, or its amendment's (migration 0015), as the status filters read it (storage.log_search).
_ERROR = "({0}http_status >= 400 OR coalesce({0}ocpi_status_code, 0) NOT BETWEEN 1000 AND 1999)"


def _sql(bucket: str, where: str) -> str:
    # bucket is one of BUCKETS (checked), never a value from the request as such
    sides = " UNION ALL ".join(
        f"SELECT received_at, {side}_country_code || '-' || {side}_party_id AS party, '{direction}' AS direction,"
        f" module, {_ERROR.format('')} AS failed, duration_ms, receiver_ms, chain_id, seq FROM routing_log {where}"
        f" {'AND' if where else 'WHERE'} {side}_party_id IS NOT NULL"
        for side, direction in (("from", "sent"), ("to", "received"))
    )
    # amendments joined once, to the rows found (a hash join on the few of them), not looked up row by row
    return f"""
        SELECT date_trunc('{bucket}', received_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS bucket, party,
               direction, module, count(*) AS messages,
               count(*) FILTER (WHERE CASE WHEN a.chain_id IS NULL THEN failed ELSE {_ERROR.format("a.")} END)
                   AS errors,
               percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms) AS p50_ms,
               percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms) AS p95_ms,
               percentile_cont(0.99) WITHIN GROUP (ORDER BY duration_ms) AS p99_ms,
               -- of the rows whose request went to a party (the others have none: nulls are left out)
               percentile_cont(0.5) WITHIN GROUP (ORDER BY receiver_ms) AS receiver_p50_ms,
               percentile_cont(0.95) WITHIN GROUP (ORDER BY receiver_ms) AS receiver_p95_ms,
               percentile_cont(0.99) WITHIN GROUP (ORDER BY receiver_ms) AS receiver_p99_ms
        FROM ({sides}) AS sides
        LEFT JOIN routing_log_amendment AS a ON a.chain_id = sides.chain_id AND a.seq = sides.seq
        GROUP BY 1, 2, 3, 4
        ORDER BY 1, 2, 3, 4"""


@get("/stats", opt={READ_ONLY: True})
async def stats(request: Request) -> Response[bytes]:
    params = query_params(request)
    async with request.app.state.pool.acquire() as conn:
        result = await compute_stats(conn, params)
        await record_action(
            conn, request.app.state.settings.audit_trail_key, actor_of(request), "stats", result.pop("given")
        )
    return json_response(result)


async def compute_stats(conn: asyncpg.Connection, params: dict[str, str]) -> dict[str, Any]:
    """The stats of the filters in params (bucket, since, until and the search filters); AdminError if one is bad.
    "given" holds the filters as the audit trail records them."""
    bucket = params.pop("bucket", "hour")
    if bucket not in BUCKETS:
        raise AdminError(400, f"bucket must be hour or day, got {bucket!r}")
    try:
        if not params.get("since"):  # the span before until, or before now
            end = parse_time("until", params["until"]) if params.get("until") else datetime.now(UTC)
            params["since"] = (end - BUCKETS[bucket]).isoformat()
        search = parse_filters(params)
    except BadFilter as exc:
        raise AdminError(400, str(exc)) from None
    except OverflowError:  # until in the year 1: no span before it
        raise AdminError(400, f"until leaves no {bucket} before it, got {params['until'][:40]!r}: give since") from None
    rows = await fetch_planned(conn, _sql(bucket, full_where(search)), search.args)
    items = [dict(row) | {"error_rate": row["errors"] / row["messages"] if row["messages"] else 0.0} for row in rows]
    return {"bucket": bucket, "since": search.given["since"], "until": search.given.get("until"), "items": items,
            "given": search.given | {"bucket": bucket}}  # fmt: skip
