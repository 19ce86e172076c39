"""Fetching a registered platform's endpoints again: on the hub's own after a rotation the party took but the hub
could not finish, and when the operator asks (admin API and console).

Such a rotation leaves the party's new token B and the versions URL it named beside the endpoints fetched before
(hub/admin/credentials.py, TakenButFailed). The hub routes on those until a fetch with that token from that URL works
(credentials.asciidoc, Changing endpoints for the current version: after a PUT "the other platform will fetch and
store the corresponding set of endpoints"). Every refresh also GETs the party's credentials (credentials.asciidoc, GET:
they contain "extra information about the server such as its business details") and finishes only when the roles they
list pass the check of a credentials exchange (match_roles); it then stores those roles and their business details as
the rotation would have: the party may have changed them in its answer to the hub's PUT, which the unfinished rotation
did not store, or since. Until they pass, it fails for that reason, and the platform's roles stay as they were.

Schedule: endpoints_refresh_due is when the hub tries next. Any hub process may take a due refresh; it holds it
(endpoints_refresh_claimed_until, longer than a try takes) while it tries, so no two processes try one platform at
once and one that stops while trying is stood in for, without moving when it is due. A failed try comes again after
OCPI_HUB_OFFLINE_PROBE_S, doubled for each failure before, at most an hour apart. A try the operator asks for holds
the refresh the same way (while another process holds it, the operator hears so, with until when, and nothing is
done: a second fetch at the same moment would race the first one's writes), but does not count: if it fails, only why
is kept (the console shows it), the schedule stays.

Each process sleeps until the earliest due refresh, at most LONGEST_SLEEP_S, and wakes early when the directory
changes (a rotation that leaves a refresh pending changes it, and every process reloads it), so an idle hub asks the
database once a minute, not once a second.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime
from typing import Any

import asyncpg
import msgspec
import structlog
from litestar import Request, Response, post
from litestar.datastructures import State

from hub import party_api
from hub.admin.actors import HUB, Actor, actor_of, record_action
from hub.admin.api import AdminError, check_platform_id, json_response, takes_no_body, takes_no_parameters
from hub.envelope import path_number
from hub.errors import OcpiError
from hub.ocpi.credentials import endpoint_rows, match_roles
from hub.own_messages import Trace
from hub.settings import Settings
from storage import platforms
from storage.sql import QUERIES

log = structlog.get_logger()

ON_ITS_OWN = Actor("hub", HUB)  # who refreshed, in the audit trail, when no operator asked
LONGEST_WAIT_S = 3600.0
LONGEST_SLEEP_S = 60.0  # the safety net: a wake-up missed (Redis away) delays a due refresh by at most this much
AFTER_ERROR_S = 1.0  # the database briefly away: look again soon


class Refreshed(msgspec.Struct):
    platform_id: int
    name: str
    versions_url: str
    version: str
    endpoints: int
    token_encoding: str


class RefreshFailed(Exception):
    """The party's endpoints could not be fetched, or the roles it lists do not match; the message says why."""


def claim_s(settings: Settings) -> float:
    """How long a try holds a platform's refresh: longer than it can take, versions twice (Base64, then raw), details,
    credentials, each within OCPI_HUB_FORWARD_TIMEOUT_S."""
    return 4 * settings.forward_timeout_s + 5


def retry_in_s(settings: Settings, failures: int) -> float:
    """How long after its failures-th failed fetch of a platform's endpoints the hub tries again."""
    return min(max(LONGEST_WAIT_S, settings.offline_probe_s), settings.offline_probe_s * 2 ** min(failures - 1, 20))


async def run_refreshes(state: State) -> None:
    """For the life of the process: fetch again the endpoints of each platform whose refresh is due, sleeping in
    between until the next one is due or the directory changes."""
    held_s = claim_s(state.settings)
    while True:
        reloaded = state.directory.next_reload()  # before the schedule is read: a change meanwhile wakes the sleep
        try:
            wait_s = await _round(state, held_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the database briefly away: the refreshes stay due
            log.warning("endpoints_refresh_round_failed", error=str(exc))
            wait_s = AFTER_ERROR_S
        if wait_s > 0:
            with contextlib.suppress(TimeoutError):  # not wait_for, which in Python 3.11 can drop a cancel
                async with asyncio.timeout(min(wait_s, LONGEST_SLEEP_S)):
                    await reloaded.wait()


async def _round(state: State, held_s: float) -> float:
    """Tries the refreshes due now, if any; how long to sleep before the next round (0: at once, the tries just
    changed the schedule)."""
    async with state.pool.acquire() as conn:
        due_in_s: float | None = await conn.fetchval(QUERIES["next_endpoints_refresh"])
        if due_in_s is None or due_in_s > 0:
            return LONGEST_SLEEP_S if due_in_s is None else due_in_s
        due = await conn.fetch(QUERIES["claim_endpoints_refreshes"], held_s)
    outcomes = await asyncio.gather(*(_try(state, source) for source in due), return_exceptions=True)
    for source, outcome in zip(due, outcomes, strict=True):
        if isinstance(outcome, Exception):  # the database briefly away: the claim runs out, and it is due
            log.warning("platform_endpoints_refresh_interrupted", platform_id=source["id"], error=str(outcome))
    return 0.0


async def _try(state: State, source: asyncpg.Record) -> None:
    """A refresh the hub tries on its own; a failure is logged, and tried again later."""
    try:
        await refresh(state, ON_ITS_OWN, source)
    except RefreshFailed as failed:
        await _failed(state, source, str(failed))


async def refresh(state: State, actor: Actor, source: asyncpg.Record, via: str | None = None) -> Refreshed | None:
    """Fetch the platform's endpoints from its versions URL with its token B (as source read them, before the fetch),
    check the roles its credentials list, and store both with a row in the audit trail; every hub process routes on
    them within a second. Each call to the party is a message of the hub's own, a routing-log row, all of one refresh
    in one conversation. RefreshFailed, saying why, when the fetch or the roles check failed. None when the platform's
    versions URL or token B changed meanwhile: whatever changed them fetched endpoints of their own."""
    platform_id, name, url = source["id"], source["name"], source["versions_url"]
    async with state.pool.acquire() as conn:
        held = await platforms.held_roles(conn, platform_id)
    settings = state.settings
    to = (held[0]["country_code"], held[0]["party_id"]) if held else None
    trace = Trace((settings.country_code, settings.party_id), platform_id, to, state.routing_log.record)
    try:
        token_b = state.token_box.open(source["token_b"])
        discovery = await party_api.discover(
            state.http, url, token_b, party=name, hub_url=settings.public_url, trace=trace
        )
        roles, listed = await _checked_roles(state, held, discovery, token_b, trace)
    except (OcpiError, ValueError) as exc:
        raise RefreshFailed(exc.message if isinstance(exc, OcpiError) else str(exc)) from None
    connection = platforms.Connection(url, discovery.version, discovery.version_url, source["token_b"],
                                      discovery.token_encoding, endpoint_rows(discovery), roles)  # fmt: skip
    audited = {"platform_id": platform_id, "name": name, "versions_url": url, "version": discovery.version,
               "endpoints": len(connection.endpoints), "roles": listed}  # fmt: skip
    audited |= {"via": via} if via else {}
    async with state.pool.acquire() as conn, conn.transaction():
        if not await platforms.store_refreshed_endpoints(conn, platform_id, connection):
            log.info("platform_endpoints_refresh_superseded", platform_id=platform_id, platform=name)
            return None
        await record_action(conn, state.settings.audit_trail_key, actor, "refresh_endpoints", audited)
    await state.directory.changed()
    log.info("platform_endpoints_refreshed", platform_id=platform_id, platform=name, versions_url=url,
             endpoints=len(connection.endpoints), roles=listed, by=actor.name)  # fmt: skip
    return Refreshed(platform_id, name, url, discovery.version, len(connection.endpoints), discovery.token_encoding)


async def _checked_roles(
    state: State, held: list[asyncpg.Record], discovery: party_api.Discovery, token_b: str, trace: Trace
) -> tuple[list[tuple[int, object]], list[str]]:
    """The roles the party's credentials list (GET on its credentials endpoint, as just fetched, with its token B),
    each one the platform holds: the rule of a credentials exchange (match_roles); and their names for the audit trail.
    RefreshFailed otherwise."""
    url = discovery.url("credentials") or ""  # discover() makes sure there is one
    theirs = await party_api.read_credentials(state.http, url, token_b, discovery.token_encoding, trace)
    try:
        roles = match_roles(theirs.roles, held)
    except OcpiError as exc:
        raise RefreshFailed(f"its endpoints were fetched, but the roles its credentials list (GET {url}) do not "
                            f"match: {exc.message}") from None  # fmt: skip
    return roles, [f"{c.role} {c.country_code.upper()}-{c.party_id.upper()}" for c in theirs.roles]


async def _failed(state: State, source: asyncpg.Record, reason: str) -> None:
    """A failed try of the hub's own: the refresh is due again later, one failure more, with why it failed (the
    console shows it)."""
    wait_s = retry_in_s(state.settings, source["endpoints_refresh_failures"] + 1)
    async with state.pool.acquire() as conn:
        failures = await conn.fetchval(QUERIES["endpoints_refresh_failed"], source["id"], reason, wait_s,
                                       source["versions_url"], source["token_b"])  # fmt: skip
    log.warning("platform_endpoints_refresh_failed", platform_id=source["id"], platform=source["name"],
                versions_url=source["versions_url"], reason=reason, failures=failures,
                next_try_in_s=wait_s if failures else None,
                routing_on="the endpoints fetched before")  # fmt: skip


@post("/parties/{platform_id:str}/endpoints", status_code=200)
async def refresh_endpoints(request: Request, platform_id: str) -> Response[bytes]:
    """The operator has the hub fetch a registered platform's endpoints again, now."""
    takes_no_parameters(request)
    await takes_no_body(request)
    number = path_number(platform_id, "platform_id")
    return json_response(await refresh_now(request.app.state, actor_of(request), number))


async def refresh_now(state: State, actor: Actor, platform_id: int, via: str | None = None) -> Refreshed:
    """A refresh the operator asked for, from the admin API or the console (via). It holds the platform's refresh as a
    try of the hub's own does, so no other hub process fetches the same endpoints and writes them at the same time.
    AdminError 404 or 409 for a platform not registered (or changed meanwhile); 409 while another process holds the
    refresh, saying until when at the latest; 502 saying why the fetch failed, the endpoints from before kept, and a
    pending refresh still due when it was: the operator's try is not one of the hub's own, whose failures space them."""
    check_platform_id(platform_id)
    async with state.pool.acquire() as conn:
        source = await conn.fetchrow(QUERIES["claim_endpoints_refresh"], platform_id, claim_s(state.settings))
        if source is None:
            raise _not_claimed(platform_id, await conn.fetchrow(QUERIES["endpoints_source"], platform_id))
    claimed_until = source["endpoints_refresh_claimed_until"]
    audited: dict[str, Any] = {"platform_id": platform_id, "name": source["name"], "versions_url":
                               source["versions_url"]} | ({"via": via} if via else {})  # fmt: skip
    try:
        refreshed = await refresh(state, actor, source, via)
    except RefreshFailed as failed:
        kept = "the endpoints from before"
        async with state.pool.acquire() as conn, conn.transaction():
            next_try = await conn.fetchval(QUERIES["operator_endpoints_refresh_failed"], platform_id, str(failed),
                                           source["versions_url"], source["token_b"])  # fmt: skip
            await record_action(conn, state.settings.audit_trail_key, actor, "refresh_endpoints",
                                audited | {"failed": str(failed), "kept": kept}
                                | ({"next_try": _at(next_try)} if next_try else {}))  # fmt: skip
            await conn.execute(QUERIES["release_endpoints_refresh"], platform_id, claimed_until)
        if next_try:  # a pending refresh, due perhaps while this try held it: every process's loop looks again now
            await state.directory.changed()
        log.warning("platform_endpoints_refresh_by_operator_failed", platform_id=platform_id, platform=source["name"],
                    versions_url=source["versions_url"], reason=str(failed), by=actor.name,
                    next_try=_at(next_try) if next_try else None)  # fmt: skip
        pending = f"; it tries again on its own, as scheduled before: at {_at(next_try)}" if next_try else ""
        raise AdminError(502, f"fetching the endpoints of platform {platform_id} from {source['versions_url']} "
                              f"failed: {failed}; the hub keeps {kept}{pending}") from None  # fmt: skip
    if refreshed is None:
        async with state.pool.acquire() as conn:
            await conn.execute(QUERIES["release_endpoints_refresh"], platform_id, claimed_until)
        raise AdminError(409, f"platform {platform_id} changed during the refresh (its credentials were updated "
                              "meanwhile, with endpoints of their own); nothing was stored")  # fmt: skip
    return refreshed


def _not_claimed(platform_id: int, source: asyncpg.Record | None) -> AdminError:
    """Why the operator's refresh could not take the platform's refresh."""
    if source is None or source["state"] == "UNREGISTERED":
        return AdminError(404, f"no platform {platform_id} is on the hub (never invited, or unregistered already)")
    if source["state"] != "REGISTERED":
        return AdminError(409, f"platform {platform_id} has not registered yet: it has no endpoints to fetch")
    if not source["endpoints_refresh_trying_now"]:  # it ended between the two reads
        return AdminError(409, f"a refresh of the endpoints of platform {platform_id} ended just now; nothing was "
                               "done: see its outcome on the platform's Endpoints page, or ask again")  # fmt: skip
    return AdminError(409, f"a refresh of the endpoints of platform {platform_id} is under way (one of the hub's own "
                           "tries, or another operator's, on one of the hub's processes); nothing was done. It holds "
                           f"the refresh until {_at(source['endpoints_refresh_claimed_until'])} at the latest; its "
                           "outcome shows on the platform's Endpoints page: ask again after that if you still need "
                           "to")  # fmt: skip


def _at(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")
