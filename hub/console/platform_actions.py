"""The admin's actions on a platform from the Parties page: take it off the hub, renew its tokens, fetch its endpoints
again, suspend or resume it; each behind a confirmation page, each calling the same function as the admin API."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request, get, post
from litestar.enums import RequestEncodingType
from litestar.exceptions import NotFoundException
from litestar.params import Body
from litestar.response import Template

from hub.admin.api import AdminError
from hub.admin.endpoints import refresh_now
from hub.admin.rotation import rotate
from hub.admin.suspension import checked_reason, resume, suspend
from hub.admin.unregistering import take_off_hub
from hub.console.auth import ADMIN_ONLY, actor
from hub.envelope import path_number
from storage.log_search import is_row_id
from storage.sql import QUERIES

# action in the URL -> the platform states it applies to, and its heading
ACTIONS = {
    "take-off": (("INVITED", "REGISTERED", "SUSPENDED"), "Take off the hub"),
    "renew": (("REGISTERED",), "Renew tokens"),
    "endpoints": (("REGISTERED",), "Refresh endpoints"),
    "suspend": (("REGISTERED",), "Suspend"),
    "resume": (("SUSPENDED",), "Resume"),
}


@get("/console/parties/{platform_id:str}/{action:str}", opt={ADMIN_ONLY: True})
async def confirm_page(request: Request, platform_id: str, action: str) -> Template:
    """What the action will do, and a form that needs a ticked box to do it: no single accidental click acts."""
    number = path_number(platform_id, "platform_id")
    return Template("platform_action.html", context=await _context(request, number, action))


@post("/console/parties/{platform_id:str}/{action:str}", status_code=200, opt={ADMIN_ONLY: True})
async def act(
    request: Request,
    platform_id: str,
    action: str,
    data: Annotated[dict[str, str], Body(media_type=RequestEncodingType.URL_ENCODED)],
) -> Template:
    number = path_number(platform_id, "platform_id")
    context = await _context(request, number, action)
    if data.get("confirm") != "yes":
        context["error"] = "Tick the box to confirm; nothing was done."
        return Template("platform_action.html", context=context, status_code=400)
    state, who = request.app.state, actor(request)
    outcome: dict[str, Any]
    try:
        if action == "take-off":
            outcome = {"unregistered": await take_off_hub(state, who, number, via="console")}
        elif action == "renew":
            outcome = {"rotated": await rotate(state, who, number, via="console")}
        elif action == "suspend":
            reason = checked_reason(data.get("reason", "").strip())
            outcome = {"suspended": await suspend(state, who, number, reason, via="console")}
        elif action == "resume":
            outcome = {"resumed": await resume(state, who, number, via="console")}
        else:
            outcome = {"refreshed": await refresh_now(state, who, number, via="console")}
    except AdminError as exc:  # the platform as it is now (a rotation the party took: its new versions URL), and why
        context = await _context(request, number, action) | {"error": exc.message}
        return Template("platform_action.html", context=context, status_code=exc.status)
    # the platform as it is now (taken off the hub: UNREGISTERED), with what happened
    return Template("platform_action.html", context=await _context(request, number, action) | outcome)


async def _context(request: Request, platform_id: int, action: str) -> dict[str, Any]:
    if action not in ACTIONS:
        raise NotFoundException(f"no action {action!r} on a platform")
    if not is_row_id(platform_id):  # a larger one would fail in the driver
        raise NotFoundException(f"no platform {platform_id} was ever invited to this hub")
    async with request.app.state.pool.acquire() as conn:
        roles = await conn.fetch(QUERIES["list_parties"], platform_id)
        # the endpoints the hub routes on, and why they are from before a rotation if they are
        source = await conn.fetchrow(QUERIES["endpoints_source"], platform_id) if action == "endpoints" else None
        endpoints = await conn.fetch(QUERIES["platform_endpoints"], platform_id) if source else []
    if not roles:
        raise NotFoundException(f"no platform {platform_id} was ever invited to this hub")
    applies_to, heading = ACTIONS[action]
    return {"page": "parties", "actor": actor(request), "action": action, "heading": heading, "roles": roles,
            "platform": roles[0], "available": roles[0]["platform_state"] in applies_to, "error": None,
            "unregistered": None, "rotated": None, "refreshed": None, "suspended": None, "resumed": None,
            "source": source, "endpoints": endpoints}  # fmt: skip
