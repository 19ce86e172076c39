"""The operator takes a platform off the hub: its tokens, roles and party ids withdrawn, the party told."""

from __future__ import annotations

import msgspec
import structlog
from litestar import Request, Response, delete
from litestar.datastructures import State

from hub.admin.actors import Actor, actor_of, record_action
from hub.admin.api import AdminError, check_platform_id, json_response, takes_no_body, takes_no_parameters
from hub.admin.credentials import PartyFailed, audited_via, message_party
from hub.envelope import path_number
from storage import platforms
from storage.directory import Platform
from storage.sql import QUERIES

log = structlog.get_logger()


class Unregistered(msgspec.Struct):
    platform_id: int
    name: str
    was: str  # the platform's state before: INVITED, REGISTERED or SUSPENDED
    party_told: bool | None  # None: an invitation never used, there was no party to tell
    party_answer: str | None  # what went wrong telling the party, if anything


@delete("/parties/{platform_id:str}", status_code=200)
async def unregister_platform(request: Request, platform_id: str) -> Response[bytes]:
    """The operator takes a platform off the hub (an invitation not used yet is withdrawn the same way)."""
    takes_no_parameters(request)
    await takes_no_body(request)
    number = path_number(platform_id, "platform_id")
    return json_response(await take_off_hub(request.app.state, actor_of(request), number))


async def take_off_hub(state: State, actor: Actor, platform_id: int, via: str | None = None) -> Unregistered:
    """Takes a platform off the hub, for the admin API and the console (via: where the operator acted, for the audit
    trail).

    Its tokens stop working on every hub process, its roles are pushed as SUSPENDED to the other parties, its party
    ids are free for a new invitation, and a registered party is told with a DELETE on its own credentials endpoint
    (credentials.asciidoc, Unregistering: "Both parties must end any automated communication"). The hub's side is
    done first: a party that does not answer cannot keep itself on the hub."""
    check_platform_id(platform_id)
    known = state.directory.current.platforms.get(platform_id)  # its token B, to tell the party
    async with state.pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(QUERIES["lock_platform"], platform_id)
        if row is None or row["state"] == "UNREGISTERED":
            raise AdminError(404, f"no platform {platform_id} is on the hub (never invited, or unregistered already)")
        await platforms.unregister(conn, platform_id)
        await record_action(conn, state.settings.audit_trail_key, actor, "unregister_platform",
                            {"platform_id": platform_id, "name": row["name"]} | audited_via(via))  # fmt: skip
    await state.directory.changed()
    if known is not None:
        await state.locations.forget_platform(known.roles)
        await state.departures.left(known.roles)  # its routing entries go in the background
    told, answer = None, None
    if row["state"] in ("REGISTERED", "SUSPENDED"):  # a suspended party is still registered with the hub
        answer = await _tell_party(state, known) if known is not None else "the hub did not know its token B"
        told = answer is None
    log.info("platform_unregistered_by_operator", platform_id=platform_id, platform=row["name"], party_told=told,
             party_answer=answer)  # fmt: skip
    return Unregistered(platform_id, row["name"], row["state"], told, answer)


async def _tell_party(state: State, platform: Platform) -> str | None:
    """DELETE on the party's credentials endpoint; None when the party took it, else what went wrong."""
    try:
        await message_party(state, platform, "DELETE", lambda answer, url: None)
    except PartyFailed as failed:
        return str(failed)
    return None
