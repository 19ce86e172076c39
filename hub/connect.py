"""The other direction of credentials.asciidoc Registration: the hub registers at a party that gave it token A."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg
import msgspec
import redis.asyncio as redis
import structlog

from hub import party_api
from hub.errors import InvalidParameters, OcpiError
from hub.ocpi.credentials import (
    HUBS_OWN_TOKEN,
    check_unique_roles,
    connection_of,
    hub_credentials,
    issued_by_the_hub,
)
from hub.own_messages import Trace
from hub.party_client import PartyClient
from hub.settings import Settings
from storage import platforms
from storage.departed import Departures
from storage.directory import PROPAGATION_S, announce_change, load_directory
from storage.location_cache import LocationCache
from storage.log_row import LogEntry
from storage.routing_state import RoutingState
from storage.secrets import TokenBox, new_token, token_hash

log = structlog.get_logger()


@dataclass(frozen=True, slots=True)
class Connected:
    platform_id: int
    name: str
    roles: list[dict[str, str]]
    version_url: str


class ConnectFailed(Exception):
    """The registration at the party did not complete; the message says at which step and why."""


async def connect_to_party(
    settings: Settings,
    pool: asyncpg.Pool,
    redis_client: redis.Redis,
    http: PartyClient,
    *,
    name: str,
    versions_url: str,
    token_a: str,
    record: Callable[[LogEntry], Awaitable[None]],
) -> Connected:
    """Registers the hub at the party; each call to it a routing-log row (record), all in one conversation."""
    box = TokenBox(settings.secret_key or "")
    hub_party = (settings.country_code, settings.party_id)
    trace = Trace(hub_party, None, None, record)  # the platform and its parties are known only as they are told
    try:
        first = await party_api.discover(
            http, versions_url, token_a, party=name, hub_url=settings.public_url, trace=trace
        )
    except OcpiError as exc:
        raise ConnectFailed(f"reading the party's versions with token A failed ({exc.status_code}): {exc}") from None
    credentials_url = first.url("credentials")
    # The party calls the hub's versions with this token while it handles our POST (kind A until it answers).
    token_for_party = new_token()
    async with pool.acquire() as conn:
        # the party uses it at once, in this exchange: it never expires (then the exchange replaces it with a token C)
        platform_id, _ = await platforms.create_platform(conn, name, [], token_hash(token_for_party), hub_party, None)
    trace.platform_id = platform_id
    await announce_change(redis_client, settings.redis_prefix)
    await asyncio.sleep(PROPAGATION_S)  # every running hub process must know the token before the party calls back
    theirs = None
    try:
        theirs = await party_api.exchange_credentials(
            http, "POST", credentials_url or "", token_a, hub_credentials(settings, token_for_party),
            first.token_encoding, trace,
        )  # fmt: skip
        trace.to = (theirs.roles[0].country_code, theirs.roles[0].party_id) if theirs.roles else None
        async with pool.acquire() as conn:  # as at a party's registration (hub.ocpi.credentials)
            if issued_by_the_hub(await load_directory(conn, box), theirs.token):
                theirs = None  # no DELETE with it either: sent, it would be read as one of the hub's own tokens
                raise InvalidParameters(HUBS_OWN_TOKEN)
        check_unique_roles(theirs.roles)  # else a unique violation of the roles' index, the registration half done
        claims = [platforms.RoleClaim(r.role, r.country_code, r.party_id) for r in theirs.roles]
        async with pool.acquire() as conn:
            role_ids = await platforms.claim_roles(conn, platform_id, claims, hub_party)
        # The endpoints are fetched again with the party's new token: that proves the token works.
        final = await party_api.discover(
            http, theirs.url, theirs.token, party=name, hub_url=settings.public_url, trace=trace
        )
    except (OcpiError, platforms.PartyTaken) as exc:
        await _abandon(pool, redis_client, settings, platform_id)
        if theirs is not None and credentials_url:
            # The party did register the hub: undo it, since the hub will not use that registration.
            with contextlib.suppress(OcpiError):
                await party_api.delete_credentials(http, credentials_url, theirs.token, first.token_encoding, trace)
        raise ConnectFailed(f"registration at {versions_url} failed: {exc}") from None
    roles = [
        (role_id, msgspec.to_builtins(r.business_details)) for role_id, r in zip(role_ids, theirs.roles, strict=True)
    ]
    connection = connection_of(box, theirs, final, roles)
    # as at a party's registration (hub.ocpi.credentials): a party id that left a moment ago is cleaned up first
    await _departures(settings, pool, redis_client).before_registering(
        (r.country_code.upper(), r.party_id.upper()) for r in theirs.roles
    )
    async with pool.acquire() as conn:
        await platforms.store_connection(
            conn,
            platform_id,
            connection,
            expected_state="INVITED",
            presented_token=token_hash(token_for_party),
            new_token=token_hash(token_for_party),
        )
    await announce_change(redis_client, settings.redis_prefix)
    log.info("hub_registered_at_party", platform_id=platform_id, platform=name, versions_url=versions_url,
             token_encoding=final.token_encoding)  # fmt: skip
    return Connected(
        platform_id,
        name,
        [{"role": r.role, "country_code": r.country_code, "party_id": r.party_id} for r in theirs.roles],
        final.version_url,
    )


def _departures(settings: Settings, pool: asyncpg.Pool, redis_client: redis.Redis) -> Departures:
    """The departures as a hub process has them, for this process's one cleanup before the registration."""
    prefix = settings.redis_prefix
    routing = RoutingState(redis_client, prefix, settings.owner_index_period_s)
    locations = LocationCache(redis_client, prefix, None, settings.max_locations_per_cpo,
                              settings.max_location_bytes_per_cpo)  # fmt: skip
    return Departures(pool, redis_client, prefix, routing, locations, settings.forward_timeout_s)


async def _abandon(pool: asyncpg.Pool, redis_client: redis.Redis, settings: Settings, platform_id: int) -> None:
    async with pool.acquire() as conn:
        await platforms.unregister(conn, platform_id)
    await announce_change(redis_client, settings.redis_prefix)
