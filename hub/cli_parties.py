"""`ocpi-hub parties list | show ID | remove ID --yes | suspend ID --reason TEXT | resume ID`: the admin API's parties,
on the running hub's storage."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

import asyncpg
import msgspec
import redis.asyncio as redis
from litestar.datastructures import State

from hub.cli_output import out
from hub.envelope import whole_number
from hub.party_client import PartyClient
from hub.settings import Settings

if TYPE_CHECKING:
    from hub.admin.suspension import Suspension
    from hub.admin.unregistering import Unregistered
    from storage.directory import DirectoryCache
    from storage.location_cache import LocationCache


async def parties(settings: Settings, args: argparse.Namespace, pool: asyncpg.Pool, redis_client: redis.Redis) -> int:
    from hub.admin.api import AdminError, listed_parties, platform_shown
    from storage.directory import DirectoryCache
    from storage.location_cache import LocationCache
    from storage.secrets import TokenBox

    platform_id = None
    if args.action != "list":
        if args.id is None or (platform_id := whole_number(args.id)) is None:
            wrong = "needs a platform id" if args.id is None else f"{args.id!r} is not a platform id, a number"
            print(f"ocpi-hub: parties {args.action} {wrong} (ocpi-hub parties list shows them)", file=sys.stderr)
            return 2
        if args.action == "remove" and not args.yes:
            print(f"ocpi-hub: parties remove takes platform {platform_id} off the hub (its tokens stop working, the"
                  " party is told): say --yes to do it", file=sys.stderr)  # fmt: skip
            return 2
    directory = DirectoryCache(pool, redis_client, settings.redis_prefix, TokenBox(settings.secret_key or ""))
    locations = LocationCache(redis_client, settings.redis_prefix, directory, settings.max_locations_per_cpo)
    try:
        if args.action == "list":
            async with pool.acquire() as conn:
                items = await listed_parties(conn, locations)
            out(msgspec.json.format(msgspec.json.encode({"items": items})).decode())
        elif args.action == "show":
            async with pool.acquire() as conn:
                shown = await platform_shown(conn, locations, platform_id or 0)
            out(msgspec.json.format(msgspec.json.encode(shown)).decode())
        elif args.action == "remove":
            removed = await _remove(settings, pool, redis_client, directory, locations, platform_id or 0)
            out(msgspec.json.format(msgspec.json.encode(removed)).decode())
        else:
            changed = await _suspend_or_resume(settings, pool, directory, platform_id or 0, args)
            out(msgspec.json.format(msgspec.json.encode(changed)).decode())
    except AdminError as exc:
        print(f"ocpi-hub: {exc.message}", file=sys.stderr)
        return 1
    return 0


async def _remove(settings: Settings, pool: asyncpg.Pool, redis_client: redis.Redis, directory: DirectoryCache,
                  locations: LocationCache, platform_id: int) -> Unregistered:  # fmt: skip
    """What DELETE /admin/api/parties/{id} does (hub.admin.unregistering.take_off_hub), with this process's own
    directory, routing-log writer (the DELETE the party is told with is a row) and departure notice, which the running
    hub takes from Redis to clean up after the party."""
    from hub.admin.unregistering import take_off_hub
    from hub.cli_commands import operator
    from storage.departed import Departures
    from storage.routing_log import RoutingLogWriter
    from storage.routing_state import RoutingState

    await directory.reload()
    routing = RoutingState(redis_client, settings.redis_prefix, settings.owner_index_period_s, directory)
    departures = Departures(pool, redis_client, settings.redis_prefix, routing, locations, settings.forward_timeout_s)
    writer = RoutingLogWriter(pool, key=settings.routing_log_key, body_cap=settings.log_body_max_bytes)
    async with PartyClient(settings) as http, writer.running():
        state = State({"pool": pool, "settings": settings, "directory": directory, "locations": locations,
                       "departures": departures, "http": http, "routing_log": writer})  # fmt: skip
        return await take_off_hub(state, operator("parties"), platform_id, via="cli")


async def _suspend_or_resume(settings: Settings, pool: asyncpg.Pool, directory: DirectoryCache, platform_id: int,
                             args: argparse.Namespace) -> Suspension:  # fmt: skip
    """What POST /admin/api/parties/{id}/suspend (with --reason) or .../resume does (hub.admin.suspension), by
    args.action; the running hub processes hear of it through Redis, and probe a resumed platform within
    OCPI_HUB_OFFLINE_PROBE_S."""
    from hub.admin.suspension import checked_reason, resume, suspend
    from hub.cli_commands import operator

    state = State({"pool": pool, "settings": settings, "directory": directory})
    if args.action == "suspend":
        return await suspend(state, operator("parties"), platform_id, checked_reason(args.reason), via="cli")
    return await resume(state, operator("parties"), platform_id, via="cli")
