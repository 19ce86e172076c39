"""The operator suspends a registered platform for a while, and resumes it (migration 0026).

Suspended, a platform stays on the hub (its tokens, party ids, endpoints and cached locations are kept), but every
request with its token is refused with HTTP 401 saying so (hub.auth.suspended), nothing is routed or broadcast to it
(4003, routing.decide), and the hub sends it nothing of its own (no still-alive probes, pull syncs or ClientInfo).
Its roles go OFFLINE for the other parties. Resumed, it is registered again; its roles come back CONNECTED once the
still-alive probe finds its server answering, at once on the process that resumed it (or, from the CLI, within
OCPI_HUB_OFFLINE_PROBE_S), and then the hub pushes it the ClientInfo it missed meanwhile (hub.client_info; from when,
recorded as it is suspended: migration 0027). Taking a platform off the hub (hub.admin.unregistering) is the final
step; this one is not.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import asyncpg
import msgspec
import structlog
from litestar import Request, Response, post
from litestar.datastructures import State

from hub.admin.actors import Actor, actor_of, record_action
from hub.admin.api import AdminError, check_platform_id, json_response, takes_no_body, takes_no_parameters
from hub.admin.credentials import audited_via
from hub.envelope import path_number
from hub.ocpi.wire import NO_CONTROL_CHARACTERS
from storage.sql import QUERIES

log = structlog.get_logger()

# The operator's reason, told to the platform with every refusal: one line, short enough for an error message.
Reason = Annotated[str, msgspec.Meta(min_length=1, max_length=300, pattern=NO_CONTROL_CHARACTERS)]


class SuspensionIn(msgspec.Struct, forbid_unknown_fields=True):
    reason: Reason


class Suspension(msgspec.Struct):
    platform_id: int
    name: str
    state: str  # SUSPENDED once suspended, REGISTERED once resumed
    suspended_at: datetime | None
    suspended_reason: str | None


@post("/parties/{platform_id:str}/suspend", status_code=200)
async def suspend_platform(request: Request, platform_id: str) -> Response[bytes]:
    takes_no_parameters(request)
    try:
        body = msgspec.json.decode(await request.body(), type=SuspensionIn)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise AdminError(400, f'invalid suspension, {{"reason": "..."}} expected: {exc}') from None
    number = path_number(platform_id, "platform_id")
    return json_response(await suspend(request.app.state, actor_of(request), number, body.reason))


def checked_reason(reason: str) -> str:
    """A reason given elsewhere than in the API's JSON (the CLI, the console) as the API takes it; AdminError 400."""
    try:
        return msgspec.convert({"reason": reason}, SuspensionIn).reason
    except msgspec.ValidationError as exc:
        raise AdminError(400, f"invalid suspension: {exc}") from None


@post("/parties/{platform_id:str}/resume", status_code=200)
async def resume_platform(request: Request, platform_id: str) -> Response[bytes]:
    takes_no_parameters(request)
    await takes_no_body(request)
    return json_response(await resume(request.app.state, actor_of(request), path_number(platform_id, "platform_id")))


async def suspend(state: State, actor: Actor, platform_id: int, reason: str, via: str | None = None) -> Suspension:
    """Suspends a registered platform; AdminError 404 for none, 409 for one that is not registered."""
    check_platform_id(platform_id)
    async with state.pool.acquire() as conn, conn.transaction():
        row = await _locked(conn, platform_id)
        if row["state"] != "REGISTERED":
            raise AdminError(409, _not_registered(platform_id, row))
        suspended_at = await conn.fetchval(QUERIES["suspend_platform"], platform_id, reason)
        audited = {"platform_id": platform_id, "name": row["name"], "reason": reason} | audited_via(via)
        await record_action(conn, state.settings.audit_trail_key, actor, "suspend_platform", audited)
    await state.directory.changed()  # its tokens refused on every hub process within a second
    log.warning("platform_suspended_by_operator", platform_id=platform_id, platform=row["name"], reason=reason)
    return Suspension(platform_id, row["name"], "SUSPENDED", suspended_at, reason)


async def resume(state: State, actor: Actor, platform_id: int, via: str | None = None) -> Suspension:
    """Resumes a suspended platform; AdminError 404 for none, 409 for one that is not suspended."""
    check_platform_id(platform_id)
    async with state.pool.acquire() as conn, conn.transaction():
        row = await _locked(conn, platform_id)
        if row["state"] != "SUSPENDED":
            raise AdminError(409, f"platform {platform_id} ({row['name']}) is not suspended (state {row['state']})")
        await conn.execute(QUERIES["resume_platform"], platform_id)
        await record_action(conn, state.settings.audit_trail_key, actor, "resume_platform",
                            {"platform_id": platform_id, "name": row["name"]} | audited_via(via))  # fmt: skip
    await state.directory.changed()
    if (still_alive := state.get("still_alive")) is not None:  # a hub process: probe it now, not when next due
        still_alive.suspect(platform_id)
    log.warning("platform_resumed_by_operator", platform_id=platform_id, platform=row["name"])
    return Suspension(platform_id, row["name"], "REGISTERED", None, None)


async def _locked(conn: asyncpg.Connection, platform_id: int) -> asyncpg.Record:
    row = await conn.fetchrow(QUERIES["lock_platform"], platform_id)
    if row is None or row["state"] == "UNREGISTERED":
        raise AdminError(404, f"no platform {platform_id} is on the hub (never invited, or unregistered already)")
    return row


def _not_registered(platform_id: int, row: asyncpg.Record) -> str:
    if row["state"] == "SUSPENDED":
        return f"platform {platform_id} ({row['name']}) is suspended already; POST .../resume resumes it"
    return (
        f"platform {platform_id} ({row['name']}) has not registered yet (state {row['state']}): there is nothing "
        "to suspend; DELETE /admin/api/parties/{id} withdraws its invitation"
    )
