"""Fetching a registered platform's endpoints again: on the hub's own after a rotation the party took but the hub
could not finish, and when the operator asks (admin API and console).

Such a rotation leaves the party's new token B and the versions URL it named beside the endpoints fetched before
(hub/admin/credentials.py, TakenButFailed). The hub routes on those until a fetch with that token from that URL works
(credentials.asciidoc, Changing endpoints for the current version: after a PUT "the other platform will fetch and
store the corresponding set of endpoints"). Any hub process may take a due refresh: taking it pushes its next try
back in the database, so no two processes try one platform at once, and one that stops while trying is stood in for.
A failed try comes again after OCPI_HUB_OFFLINE_PROBE_S, doubled for each failure before, at most an hour apart.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import asyncpg
import msgspec
import structlog
from litestar import Request, Response, post
from litestar.datastructures import State

from hub import party_api
from hub.admin.actors import HUB, Actor, actor_of, record_action
from hub.admin.api import AdminError, json_response
from hub.errors import OcpiError
from hub.ocpi.credentials import endpoint_rows
from hub.settings import Settings
from storage import platforms
from storage.sql import QUERIES

log = structlog.get_logger()

ON_ITS_OWN = Actor("hub", HUB)  # who refreshed, in the audit trail, when no operator asked
POLL_S = 1.0
LONGEST_WAIT_S = 3600.0


class Refreshed(msgspec.Struct):
    platform_id: int
    name: str
    versions_url: str
    version: str
    endpoints: int
    token_encoding: str


class RefreshFailed(Exception):
    """The party's endpoints could not be fetched; the message says why."""


def retry_in_s(settings: Settings, failures: int) -> float:
    """How long after its failures-th failed fetch of a platform's endpoints the hub tries again."""
    return min(max(LONGEST_WAIT_S, settings.offline_probe_s), settings.offline_probe_s * 2 ** min(failures - 1, 20))


async def run_refreshes(state: State) -> None:
    """For the life of the process: fetch again the endpoints of each platform whose refresh is due."""
    # a claim holds a platform for longer than a try can take: versions twice (Base64, then raw) and details
    held_s = 3 * state.settings.forward_timeout_s + 5
    while True:
        try:
            async with state.pool.acquire() as conn:
                due = await conn.fetch(QUERIES["claim_endpoints_refreshes"], held_s)
            outcomes = await asyncio.gather(*(_try(state, source) for source in due), return_exceptions=True)
            for source, outcome in zip(due, outcomes, strict=True):
                if isinstance(outcome, Exception):  # the database briefly away: the claim runs out, and it is due
                    log.warning("platform_endpoints_refresh_interrupted", platform_id=source["id"], error=str(outcome))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the database briefly away: the refreshes stay due
            log.warning("endpoints_refresh_round_failed", error=str(exc))
        await asyncio.sleep(POLL_S)


async def _try(state: State, source: asyncpg.Record) -> None:
    with contextlib.suppress(RefreshFailed):  # logged, and tried again later
        await refresh(state, ON_ITS_OWN, source)


async def refresh(state: State, actor: Actor, source: asyncpg.Record, via: str | None = None) -> Refreshed | None:
    """Fetch the platform's endpoints from its versions URL with its token B (as source read them, before the fetch)
    and store them with a row in the audit trail; every hub process routes on them within a second. RefreshFailed,
    saying why, when the fetch failed: a log line, and a pending refresh is tried again later. None when the platform's
    versions URL or token B changed meanwhile: whatever changed them fetched endpoints of its own."""
    platform_id, name, url = source["id"], source["name"], source["versions_url"]
    try:
        token_b = state.token_box.open(source["token_b"])
        discovery = await party_api.discover(state.http, url, token_b, party=name)
    except (OcpiError, ValueError) as exc:
        reason = exc.message if isinstance(exc, OcpiError) else str(exc)
        await _failed(state, source, reason)
        raise RefreshFailed(reason) from None
    connection = platforms.Connection(url, discovery.version, discovery.version_url, source["token_b"],
                                      discovery.token_encoding, endpoint_rows(discovery), ())  # fmt: skip
    audited = {"platform_id": platform_id, "name": name, "versions_url": url, "version": discovery.version,
               "endpoints": len(connection.endpoints)} | ({"via": via} if via else {})  # fmt: skip
    async with state.pool.acquire() as conn, conn.transaction():
        if not await platforms.store_refreshed_endpoints(conn, platform_id, connection):
            log.info("platform_endpoints_refresh_superseded", platform_id=platform_id, platform=name)
            return None
        await record_action(conn, actor, "refresh_endpoints", audited)
    await state.directory.changed()
    log.info("platform_endpoints_refreshed", platform_id=platform_id, platform=name, versions_url=url,
             endpoints=len(connection.endpoints), by=actor.name)  # fmt: skip
    return Refreshed(platform_id, name, url, discovery.version, len(connection.endpoints), discovery.token_encoding)


async def _failed(state: State, source: asyncpg.Record, reason: str) -> None:
    """A failed fetch: a pending refresh is due again later, with why it failed (the console shows it)."""
    wait_s = retry_in_s(state.settings, source["endpoints_refresh_failures"] + 1)
    async with state.pool.acquire() as conn:
        failures = await conn.fetchval(QUERIES["endpoints_refresh_failed"], source["id"], reason, wait_s,
                                       source["versions_url"], source["token_b"])  # fmt: skip
    log.warning("platform_endpoints_refresh_failed", platform_id=source["id"], platform=source["name"],
                versions_url=source["versions_url"], reason=reason, failures=failures,
                next_try_in_s=wait_s if failures else None,
                routing_on="the endpoints fetched before")  # fmt: skip


@post("/parties/{platform_id:int}/endpoints", status_code=200)
async def refresh_endpoints(request: Request, platform_id: int) -> Response[bytes]:
    """The operator has the hub fetch a registered platform's endpoints again, now."""
    return json_response(await refresh_now(request.app.state, actor_of(request), platform_id))


async def refresh_now(state: State, actor: Actor, platform_id: int, via: str | None = None) -> Refreshed:
    """A refresh the operator asked for, from the admin API or the console (via). AdminError 404 or 409 for a platform
    not registered (or changed meanwhile); 502 saying why the fetch failed, the endpoints from before kept."""
    async with state.pool.acquire() as conn:
        source = await conn.fetchrow(QUERIES["endpoints_source"], platform_id)
    if source is None or source["state"] == "UNREGISTERED":
        raise AdminError(404, f"no platform {platform_id} is on the hub (never invited, or unregistered already)")
    if source["state"] != "REGISTERED":
        raise AdminError(409, f"platform {platform_id} has not registered yet: it has no endpoints to fetch")
    audited: dict[str, Any] = {"platform_id": platform_id, "name": source["name"], "versions_url":
                               source["versions_url"]} | ({"via": via} if via else {})  # fmt: skip
    try:
        refreshed = await refresh(state, actor, source, via)
    except RefreshFailed as failed:
        kept = "the endpoints from before"
        async with state.pool.acquire() as conn:
            await record_action(conn, actor, "refresh_endpoints", audited | {"failed": str(failed), "kept": kept})
        pending = "; it tries again on its own" if source["endpoints_refresh_due"] else ""
        raise AdminError(502, f"fetching the endpoints of platform {platform_id} from {source['versions_url']} "
                              f"failed: {failed}; the hub keeps {kept}{pending}") from None  # fmt: skip
    if refreshed is None:
        raise AdminError(409, f"platform {platform_id} changed during the refresh (its credentials were updated "
                              "meanwhile, with endpoints of their own); nothing was stored")  # fmt: skip
    return refreshed
