"""The operator's admin API under /admin/api: invitations (token A), the list of parties, the auditor API; the
actions on a platform's credentials are in hub/admin/unregistering.py and hub/admin/rotation.py."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import asyncpg
import msgspec
import redis.asyncio as redis
import structlog
from litestar import Request, Response, Router, get, post
from litestar.exceptions import HTTPException

from hub.admin.actors import READ_ONLY, actor_guard, actor_of, record_action, unauthorized
from hub.envelope import http_error_message, logged_unexpected, path_number
from hub.errors import OcpiError
from hub.ocpi.wire import ROLES, plain_text, usable_party
from hub.settings import Settings
from routing.request import PartyKey
from storage import platforms
from storage.location_cache import LocationCache
from storage.log_search import is_row_id
from storage.secrets import new_token, token_hash
from storage.sql import QUERIES

log = structlog.get_logger()


class RoleIn(msgspec.Struct):
    role: str  # a Role, checked here to say which ones (as a Literal, msgspec said "Invalid enum value")
    country_code: str
    party_id: str

    def __post_init__(self) -> None:
        if self.role not in ROLES:  # HUB passes, to be told it is the hub's own (invite)
            roles = ", ".join(r for r in ROLES if r != "HUB")
            raise ValueError(f"role must be one of {roles}, got {self.role[:20]!r}")
        usable_party(self.country_code, self.party_id)


class InvitationIn(msgspec.Struct):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    roles: Annotated[list[RoleIn], msgspec.Meta(min_length=1)]
    # seconds its token A stays valid; None: OCPI_HUB_INVITATION_TTL_S; 0: never expires
    expires_in_s: Annotated[int, msgspec.Meta(ge=0, le=10 * 365 * 86400)] | None = None

    def __post_init__(self) -> None:
        plain_text("name", self.name)


class Invitation(msgspec.Struct):
    token_a: str
    versions_url: str
    platform_id: int
    name: str
    roles: list[RoleIn]
    expires_at: datetime | None  # when token A stops working; None: never


class Party(msgspec.Struct):
    country_code: str
    party_id: str
    role: str
    platform: str
    platform_id: int
    status: str
    status_since: datetime  # when the role took its status: when a platform that left left, for one
    registered_at: datetime | None
    last_seen: datetime | None
    invitation_expires_at: datetime | None  # when its token A expires; None: never, or none left (registered)
    token_encoding: str  # how the hub sends this platform its token: "base64", or "raw" (an OCPI 2.1.1-era party)
    # Why the hub routes on endpoints from before a rotation it could not finish (None: it does not; the reason of the
    # last try, the operator's too), whether a hub process is fetching them again now, and when it fetches them again
    # on its own otherwise (None while it tries: the outcome sets the next try) (hub/admin/endpoints.py).
    endpoints_from_before: str | None = None
    endpoints_trying_now: bool = False
    endpoints_next_try: datetime | None = None
    # A CPO's locations in the hub's cache and the bytes of their documents (None: not a CPO, or Redis did not
    # answer), whether the cache is over its cap (OCPI_HUB_MAX_LOCATIONS_PER_CPO or OCPI_HUB_MAX_LOCATION_BYTES_PER_CPO:
    # GET All of its locations is then not answered from the cache) and how many of its locations the cache refused
    # (or dropped, grown past the cap of bytes) since (storage.location_cap).
    locations_cached: int | None = None
    location_bytes_cached: int | None = None
    location_cache_over_cap: bool = False
    locations_refused: int = 0
    # When its last successful pull sync began (None: not synced since its cache was emptied, by Redis losing its data
    # or the CPO being new: GET All of its locations then goes to the CPO, of every CPO is refused).
    locations_synced_at: str | None = None
    # Its platform suspended by the operator (hub.admin.suspension): since when, and why (None: not suspended).
    suspended_at: datetime | None = None
    suspended_reason: str | None = None


class AdminError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def takes_no_parameters(request: Request) -> None:
    """AdminError 400 for a query parameter on an endpoint that takes none: ignored, a filter the caller meant to apply
    would look applied (an action's option, ?dry_run=true on an unregistration, applied)."""
    if unknown := sorted(request.query_params):
        raise AdminError(400, f"unknown parameter {unknown[0]}; {request.url.path} takes no query parameters")


async def takes_no_body(request: Request) -> None:
    """AdminError 400 for a body sent to an action that reads none: ignored, an option the operator put in it (a
    reason, a token to keep) would look applied."""
    if await request.body():
        raise AdminError(400, f"{request.method} {request.url.path} takes no body; send the action without one")


def true_or_false(name: str, raw: str | None) -> bool:
    """A yes-or-no query parameter as this API and the console take it: true or false, absent false; AdminError 400
    saying so for anything else (the console's read Litestar's "Expected `bool`, got `str`")."""
    if raw is None:
        return False
    if raw not in ("true", "false"):
        raise AdminError(400, f"{name} must be true or false, got {raw[:40]!r}")
    return raw == "true"


def check_platform_id(platform_id: int) -> None:
    """AdminError 404 for an id no platform can have: a bigint from 1 (a larger one would fail in the driver, not
    find nothing)."""
    if not is_row_id(platform_id):
        raise AdminError(404, f"no platform {platform_id} is on the hub (never invited, or unregistered already)")


_encoder = msgspec.json.Encoder()


async def invite(conn: asyncpg.Connection, settings: Settings, request: InvitationIn) -> Invitation:
    """A new platform holding the given roles, and the token A it registers with (shown once, stored hashed)."""
    claims = [platforms.RoleClaim(r.role, r.country_code, r.party_id) for r in request.roles]
    keys = [(c.role, c.country_code.upper(), c.party_id.upper()) for c in claims]
    if len(set(keys)) != len(keys):
        raise AdminError(400, "the same role is listed twice")
    if "HUB" in {c.role for c in claims}:
        raise AdminError(400, "role HUB is the hub's own; a connecting platform cannot hold it")
    token_a = new_token()
    ttl = settings.invitation_ttl_s if request.expires_in_s is None else request.expires_in_s
    try:
        platform_id, expires_at = await platforms.create_platform(
            conn, request.name, claims, token_hash(token_a), (settings.country_code, settings.party_id), ttl or None
        )
    except platforms.PartyTaken as exc:
        raise AdminError(409, str(exc)) from None
    return Invitation(token_a, settings.versions_url, platform_id, request.name, request.roles, expires_at)


def json_response(payload: object, status: int = 200, headers: dict[str, str] | None = None) -> Response[bytes]:
    return Response(_encoder.encode(payload), status_code=status, media_type="application/json", headers=headers)


@post("/invitations")
async def create_invitation(request: Request) -> Response[bytes]:
    takes_no_parameters(request)
    try:
        body = msgspec.json.decode(await request.body(), type=InvitationIn)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise AdminError(400, f"invalid invitation: {exc}") from None
    state = request.app.state
    async with state.pool.acquire() as conn, conn.transaction():
        invitation = await invite(conn, state.settings, body)
        await record_action(conn, state.settings.audit_trail_key, actor_of(request), "invite", invited(invitation))
    await state.directory.changed()
    return json_response(invitation, 201)


def invited(invitation: Invitation) -> dict[str, Any]:
    """An invitation as the audit trail records it: who may register with which roles, never its token A."""
    roles = [f"{r.role} {r.country_code.upper()}-{r.party_id.upper()}" for r in invitation.roles]
    return {"platform_id": invitation.platform_id, "name": invitation.name, "roles": roles}


@get("/parties", opt={READ_ONLY: True})
async def list_parties(request: Request) -> Response[bytes]:
    takes_no_parameters(request)
    async with request.app.state.pool.acquire() as conn:
        return json_response({"items": await listed_parties(conn, request.app.state.locations)})


async def listed_parties(
    conn: asyncpg.Connection, locations: LocationCache, platform_id: int | None = None
) -> list[Party]:
    """Every platform's roles, or one platform's, as the admin API and `ocpi-hub parties` list them."""
    rows = await conn.fetch(QUERIES["list_parties"], platform_id)
    caches = await location_caches(locations, rows)
    # the row holds more than the answer (platform_state, for the console's actions): convert skips it
    return [msgspec.convert(dict(row) | caches.get(_cpo(row) or ("", ""), {}), Party) for row in rows]


class Endpoint(msgspec.Struct):
    identifier: str
    role: str  # SENDER or RECEIVER
    url: str


class PlatformShown(msgspec.Struct):
    """One platform: its roles as GET /admin/api/parties lists them, and the endpoints the hub routes to."""

    platform_id: int
    name: str
    state: str  # INVITED, REGISTERED, SUSPENDED or UNREGISTERED
    registered_at: datetime | None
    last_seen: datetime | None
    invitation_expires_at: datetime | None
    roles: list[Party]
    endpoints: list[Endpoint]
    suspended_at: datetime | None = None  # state SUSPENDED (hub.admin.suspension): since when, and why
    suspended_reason: str | None = None


async def platform_shown(conn: asyncpg.Connection, locations: LocationCache, platform_id: int) -> PlatformShown:
    """One platform as the admin API and `ocpi-hub parties show` show it; AdminError 404 for none."""
    check_platform_id(platform_id)
    platform = await conn.fetchrow(QUERIES["platform_shown"], platform_id)
    if platform is None:
        raise AdminError(404, f"no platform {platform_id} is on the hub (never invited)")
    roles = await listed_parties(conn, locations, platform_id)
    endpoints = [Endpoint(e["identifier"], e["interface_role"], e["url"])
                 for e in await conn.fetch(QUERIES["platform_endpoints"], platform_id)]  # fmt: skip
    return PlatformShown(platform_id, platform["name"], platform["state"], platform["registered_at"],
                         platform["last_seen"], platform["invitation_expires_at"], roles, endpoints,
                         platform["suspended_at"], platform["suspended_reason"])  # fmt: skip


@get("/parties/{platform_id:str}", opt={READ_ONLY: True})
async def show_platform(request: Request, platform_id: str) -> Response[bytes]:
    takes_no_parameters(request)
    number = path_number(platform_id, "platform_id")
    async with request.app.state.pool.acquire() as conn:
        return json_response(await platform_shown(conn, request.app.state.locations, number))


async def location_caches(locations: LocationCache, rows: list[asyncpg.Record]) -> dict[PartyKey, dict[str, Any]]:
    """Each CPO's location cache as the operator sees it: how many of its locations it holds and their bytes, whether
    it is over its cap, how many it refused since. Nothing while Redis does not answer: the parties are PostgreSQL's."""
    cpos = sorted({key for row in rows if (key := _cpo(row))})
    try:
        counts, over, synced = (await locations.cached_counts(cpos), await locations.over_cap(),
                                await locations.synced_at(cpos))  # fmt: skip
    except redis.RedisError as exc:
        log.warning("location_cache_state_unknown", error=f"{type(exc).__name__}: {exc}")
        return {}
    return {cpo: {"locations_cached": n, "location_bytes_cached": size, "location_cache_over_cap": cpo in over,
                  "locations_refused": over.get(cpo, 0), "locations_synced_at": at}
            for cpo, (n, size), at in zip(cpos, counts, synced, strict=True)}  # fmt: skip


def _cpo(row: asyncpg.Record) -> PartyKey | None:
    return (row["country_code"].upper(), row["party_id"].upper()) if row["role"] == "CPO" else None


def render_admin_error(request: Request, exc: Exception) -> Response[bytes]:
    """An error of the admin API as its JSON, {"error": ...}, whatever raised it (hub.app.render_error)."""
    if isinstance(exc, AdminError):
        return json_response({"error": exc.message}, exc.status)
    if isinstance(exc, OcpiError):
        return json_response({"error": exc.message}, exc.http_status if exc.http_status != 200 else 400)
    if isinstance(exc, HTTPException):
        if exc.status_code in (404, 405) and request.scope["state"].get("actor") is None:
            # raised before the guard, for a caller not known to be an admin or auditor (identify_admin_caller; with
            # the database away, not known either): 401, whatever the URL or method
            return json_response({"error": unauthorized(request.headers.get("authorization"))}, 401)
        return json_response({"error": http_error_message(request, exc)}, exc.status_code, exc.headers)
    status, message = logged_unexpected(request, exc)
    return json_response({"error": message}, status)


def admin_router() -> Router:
    from hub.admin.checkpoint import routing_log_checkpoint
    from hub.admin.endpoints import refresh_endpoints
    from hub.admin.export import export_manifest, export_public_key, export_routing_log
    from hub.admin.holds import list_holds, release_hold, set_hold
    from hub.admin.rotation import rotate_credentials
    from hub.admin.routing_log import audit_trail, routing_log, routing_log_conversation, routing_log_message
    from hub.admin.stats import stats
    from hub.admin.suspension import resume_platform, suspend_platform
    from hub.admin.unregistering import unregister_platform
    from hub.admin.verify import routing_log_heads, verify_routing_log

    return Router(
        path="/admin/api",
        route_handlers=[
            create_invitation,
            list_parties,
            show_platform,
            unregister_platform,
            suspend_platform,
            resume_platform,
            rotate_credentials,
            refresh_endpoints,
            routing_log,
            routing_log_message,
            routing_log_conversation,
            export_routing_log,
            export_public_key,
            export_manifest,
            routing_log_heads,
            routing_log_checkpoint,
            verify_routing_log,
            stats,
            audit_trail,
            list_holds,
            set_hold,
            release_hold,
        ],
        guards=[actor_guard],
    )
