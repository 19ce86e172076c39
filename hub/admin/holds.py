"""Legal holds on routing-log rows under dispute (storage/log_holds.py): set by an admin or an auditor, released by an
admin, each action in the audit trail; the admin API's and the CLI's."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Request, Response, get, post

from hub.admin.actors import AUDITOR_MAY_HOLD, READ_ONLY, Actor, actor_of, record_action
from hub.admin.api import AdminError, json_response, takes_no_body, takes_no_parameters
from hub.envelope import path_number
from hub.ocpi.wire import NO_CONTROL_CHARACTERS
from storage import log_holds
from storage.log_search import BadFilter, is_row_id, parse_time

Text = Annotated[str, msgspec.Meta(min_length=1, max_length=255, pattern=NO_CONTROL_CHARACTERS)]
_PARTY = r"^[A-Za-z]{2}-[A-Za-z0-9]{3}\Z"


class HoldIn(msgspec.Struct, forbid_unknown_fields=True):
    """What a hold covers, one of: correlation_id; object_id; party ("NL-ABC") with since and until (ISO 8601, until
    excluded). reason: why (a dispute's reference), shown with the hold."""

    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=2000, pattern=NO_CONTROL_CHARACTERS)]
    correlation_id: Text | None = None
    object_id: Text | None = None
    party: Annotated[str, msgspec.Meta(pattern=_PARTY)] | None = None
    since: str | None = None
    until: str | None = None


def covers(hold: HoldIn) -> tuple[Any, ...]:
    """What the hold covers as storage.log_holds.set_hold takes it; AdminError 400 for anything but one of the three."""
    given = [name for name in ("correlation_id", "object_id", "party") if getattr(hold, name) is not None]
    if len(given) != 1:
        raise AdminError(400, "a hold covers one of: correlation_id, object_id, or party (CC-PID) with since and until;"
                              f" given: {', '.join(given) or 'none'}")  # fmt: skip
    if hold.party is None:
        if hold.since is not None or hold.until is not None:
            raise AdminError(
                400, "since and until go with party: a hold on a correlation or object id covers all its rows"
            )
        return hold.correlation_id, hold.object_id, None, None, None
    if hold.since is None or hold.until is None:
        raise AdminError(400, "a hold on a party needs since and until (ISO 8601, until excluded)")
    try:
        since, until = parse_time("since", hold.since), parse_time("until", hold.until)
    except BadFilter as exc:
        raise AdminError(400, str(exc)) from None
    if since >= until:
        raise AdminError(400, "since must be before until")
    country_code, party_id = hold.party.split("-")
    return None, None, (country_code, party_id), since, until


async def recorded_hold(conn: Any, key: bytes, who: Actor, hold: HoldIn, via: str | None = None) -> dict[str, Any]:
    """The hold set, and in the audit trail (API and CLI alike)."""
    async with conn.transaction():
        held = await log_holds.set_hold(conn, covers(hold), hold.reason, who.name)
        await record_action(conn, key, who, "set_hold", held | ({"via": via} if via else {}))
    return held


async def recorded_release(conn: Any, key: bytes, who: Actor, hold_id: int, via: str | None = None) -> dict[str, Any]:
    """The hold released, and in the audit trail; AdminError 404 if there is no such hold, 409 if it was released."""
    async with conn.transaction():
        released = await log_holds.release_hold(conn, hold_id, who.name) if is_row_id(hold_id) else None
        if released is None:
            if is_row_id(hold_id) and await log_holds.hold(conn, hold_id) is not None:
                raise AdminError(409, f"hold {hold_id} was released already")
            raise AdminError(404, f"no hold {hold_id}")
        await record_action(conn, key, who, "release_hold", released | ({"via": via} if via else {}))
    return released


@get("/holds", opt={READ_ONLY: True})
async def list_holds(request: Request) -> Response[bytes]:
    """Every hold, those in force first."""
    takes_no_parameters(request)
    async with request.app.state.pool.acquire() as conn:
        return json_response({"items": await log_holds.list_holds(conn)})


# An auditor may set a hold: the one who knows what is disputed, and a hold adds nothing to the log and changes no row,
# it only keeps rows longer. Releasing one lets retention delete them: that takes the admin token.
@post("/holds", opt={AUDITOR_MAY_HOLD: True})
async def set_hold(request: Request) -> Response[bytes]:
    takes_no_parameters(request)
    try:
        hold = msgspec.json.decode(await request.body(), type=HoldIn)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise AdminError(400, f"invalid hold: {exc}") from None
    async with request.app.state.pool.acquire() as conn:
        return json_response(
            await recorded_hold(conn, request.app.state.settings.audit_trail_key, actor_of(request), hold), 201
        )


@post("/holds/{hold_id:str}/release", status_code=200)
async def release_hold(request: Request, hold_id: str) -> Response[bytes]:
    takes_no_parameters(request)
    await takes_no_body(request)
    number = path_number(hold_id, "hold_id")
    async with request.app.state.pool.acquire() as conn:
        return json_response(
            await recorded_release(conn, request.app.state.settings.audit_trail_key, actor_of(request), number)
        )
