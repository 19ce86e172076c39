"""The auditor API's verify of the routing log: every chain's head to keep outside the database, and verify, against
heads or a checkpoint taken earlier; each call is audit-trailed (API, console and CLI alike)."""

from __future__ import annotations

import contextlib
from typing import Any

import asyncpg
from litestar import Request, Response, get, route

from hub.admin.actors import READ_ONLY, Actor, actor_of, record_action
from hub.admin.api import AdminError, json_response, takes_no_parameters
from hub.admin.checkpoint import check_trail_at, note_dropped_before
from hub.admin.routing_log import query_params
from hub.checkpoint import Checkpoint, NotHeads, Refused, saved_heads
from hub.runtime import AUDIT_QUERY_TIMEOUT_S
from storage.audit_trail import verify_trail
from storage.log_search import BadFilter, check_range, parse_time
from storage.log_verify import Heads, Verification, current_heads, outcome, verify
from storage.secrets import audit_trail_key


async def recorded_heads(conn: asyncpg.Connection, key: bytes, who: Actor, given: dict[str, Any]) -> Heads:
    """Every chain's head now, the taking of them in the audit trail (key: its) (API, console and CLI alike)."""
    heads = await current_heads(conn)
    await record_action(conn, key, who, "heads", {"chains": len(heads.chains)} | given)
    return heads


async def recorded_verify(
    conn: asyncpg.Connection,
    key: bytes,
    who: Actor,
    given: dict[str, Any],
    window: tuple[Any, Any],
    saved: Heads | None,
    timeout: float | None = AUDIT_QUERY_TIMEOUT_S,
) -> Verification:
    """storage.log_verify.verify of window (since, until), in the audit trail with given, the heads it was given (when
    taken, how many) and its outcome, or what stopped it: a failure later put right leaves its trace (API, console and
    CLI alike)."""
    if saved is not None:
        given = given | {"heads_taken_at": saved.taken_at.isoformat(), "heads": len(saved.chains)}
    if isinstance(saved, Checkpoint):
        given = given | {"checkpoint_id": saved.checkpoint_id}
    try:
        result = await verify(conn, key, *window, timeout, saved)
        result.trail_entries, result.trail_unchained = await verify_trail(conn, audit_trail_key(key), result.wrong)
        if isinstance(saved, Checkpoint):
            await check_trail_at(conn, saved, result.wrong)
            await note_dropped_before(conn, saved, result, timeout)
    except Exception as exc:  # the attempt is in the trail all the same
        with contextlib.suppress(Exception):
            await record_action(conn, audit_trail_key(key), who, "verify", given | {"error": type(exc).__name__})
        raise
    await record_action(conn, audit_trail_key(key), who, "verify", given | outcome(result))
    return result


@get("/routing-log/heads", opt={READ_ONLY: True})
async def routing_log_heads(request: Request) -> Response[bytes]:
    """Every chain's head now, for the auditor to keep outside the database and POST to verify later."""
    takes_no_parameters(request)
    async with request.app.state.pool.acquire() as conn:
        heads = await recorded_heads(conn, request.app.state.settings.audit_trail_key, actor_of(request), {})
    return json_response(heads)


@route("/routing-log/verify", http_method=["GET", "POST"], opt={READ_ONLY: True})
async def verify_routing_log(request: Request) -> Response[bytes]:
    """Recompute the hash chains, all of them or the rows of [since, until); a POST's body: heads taken earlier
    (GET /routing-log/heads), each of whose rows must still be there, or a checkpoint (GET /routing-log/checkpoint),
    checked so once its signature is."""
    params = query_params(request)
    try:
        if "checkpoint" in params:  # a signed document of a few KB per hundred chains: more than a URL carries
            raise BadFilter("checkpoint: POST the checkpoint file as the body (GET /routing-log/checkpoint gave it)")
        if unknown := sorted(set(params) - {"since", "until"}):
            raise BadFilter(f"unknown parameter {unknown[0]}; verify takes since and until")
        since = parse_time("since", params["since"]) if params.get("since") else None
        until = parse_time("until", params["until"]) if params.get("until") else None
        check_range(since, until)
    except BadFilter as exc:
        raise AdminError(400, str(exc)) from None
    settings = request.app.state.settings
    try:
        saved = saved_heads(await request.body(), settings.export_signing_key) if request.method == "POST" else None
    except NotHeads as exc:
        raise AdminError(400, f"the body is not heads as GET /admin/api/routing-log/heads gives them, nor a checkpoint "
                              f"as GET /admin/api/routing-log/checkpoint does: {exc}") from None  # fmt: skip
    except Refused as exc:
        raise AdminError(400, f"the body: {exc}") from None
    given = {k: v for k, v in params.items() if v}
    async with request.app.state.pool.acquire() as conn:
        result = await recorded_verify(conn, settings.routing_log_key, actor_of(request), given, (since, until), saved)
    return json_response(result)  # {"ok", "rows", "first_bad_id", "problems", "heads_checked", ..., "notes"}
