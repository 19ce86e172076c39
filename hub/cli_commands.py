"""The one-off operator commands of `ocpi-hub` (invite, connect, sync, auditor, retention, grant-serving-role), run on
a pool; the auditor's in hub.cli_audit."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import asyncpg
import httpx
import msgspec
import redis.asyncio as redis

from hub.cli_output import out
from hub.cli_parties import parties
from hub.party_client import PartyClient
from hub.settings import Settings

if TYPE_CHECKING:
    from hub.admin.actors import Actor

Command = Callable[[Settings, argparse.Namespace, asyncpg.Pool, redis.Redis], Coroutine[Any, Any, int]]


def run(command: Command, settings: Settings, args: argparse.Namespace) -> int:
    """The command, with a pool and a Redis client of its own, closed when it returns."""
    from hub.runtime import open_redis

    async def with_clients() -> int:
        pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=2)
        redis_client = open_redis(settings.redis_url or "")
        try:
            return await command(settings, args, pool, redis_client)
        finally:
            await redis_client.aclose()
            await pool.close()

    return asyncio.run(with_clients())


def _role_parts(spec: str) -> list[str]:
    parts = spec.split(":")
    if len(parts) != 3:
        raise ValueError(f"{spec!r} has {len(parts)} part{'s' if len(parts) > 1 else ''}, not 3")
    return parts


async def _invite(settings: Settings, args: argparse.Namespace, pool: asyncpg.Pool, redis_client: redis.Redis) -> int:
    from hub.admin.actors import record_action
    from hub.admin.api import AdminError, InvitationIn, invite, invited
    from storage.directory import announce_change

    try:
        roles = [dict(zip(("role", "country_code", "party_id"), _role_parts(spec), strict=True)) for spec in args.role]
        request = msgspec.convert({"name": args.name, "roles": roles, "expires_in_s": args.expires_in}, InvitationIn)
    except (ValueError, msgspec.ValidationError) as exc:
        if str(exc).endswith("`$.name`") or str(exc).startswith("name "):
            print(f"ocpi-hub: invalid --name: {exc}", file=sys.stderr)
        else:
            print(f"ocpi-hub: invalid --role (expected ROLE:CC:PARTY such as CPO:NL:ABC): {exc}", file=sys.stderr)
        return 2
    try:
        async with pool.acquire() as conn, conn.transaction():
            invitation = await invite(conn, settings, request)
            # as the admin API and the console record theirs
            await record_action(
                conn, settings.audit_trail_key, operator("invite"), "invite", invited(invitation) | {"via": "cli"}
            )
    except AdminError as exc:
        print(f"ocpi-hub: {exc.message}", file=sys.stderr)
        return 1
    await announce_change(redis_client, settings.redis_prefix)
    out(msgspec.json.format(msgspec.json.encode(invitation)).decode())
    return 0


def operator(command: str) -> Actor:
    """The audit trail's actor of a command: a shell holds no admin token, so the admin is named by the command and
    who ran it, the login name, or the user id when the system has no name for it."""
    from hub.admin.actors import ADMIN, Actor

    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # KeyError until Python 3.13: a uid with no passwd entry, as in some containers
        user = f"uid {os.getuid()}"
    return Actor(f"ocpi-hub {command} ({user})", ADMIN)


async def _connect(settings: Settings, args: argparse.Namespace, pool: asyncpg.Pool, redis_client: redis.Redis) -> int:
    from hub.connect import ConnectFailed, connect_to_party
    from hub.ocpi.wire import usable_url
    from storage.routing_log import RoutingLogWriter

    if not settings.public_url_known:
        # The party calls the hub back at this URL while it handles the registration: a guess will not do.
        print(
            "ocpi-hub: connect needs OCPI_HUB_PUBLIC_URL, the URL at which the party reaches the running hub",
            file=sys.stderr,
        )
        return 2
    try:
        usable_url("--versions-url", args.versions_url)
    except ValueError as exc:
        print(f"ocpi-hub: {exc}", file=sys.stderr)
        return 2
    name = args.name or httpx.URL(args.versions_url).host
    # as `ocpi-hub sync`: a writer of its own, in a chain of its own, for the hub's calls to the party
    writer = RoutingLogWriter(pool, key=settings.routing_log_key, body_cap=settings.log_body_max_bytes)
    async with PartyClient(settings) as http, writer.running():
        try:
            connected = await connect_to_party(settings, pool, redis_client, http, name=name,
                                               versions_url=args.versions_url, token_a=args.token_a,
                                               record=writer.record)  # fmt: skip
        except ConnectFailed as exc:
            print(f"ocpi-hub: {exc}", file=sys.stderr)
            return 1
    out(msgspec.json.format(msgspec.json.encode(connected)).decode())
    return 0


async def _sync(settings: Settings, args: argparse.Namespace, pool: asyncpg.Pool, redis_client: redis.Redis) -> int:
    from hub.runtime import stop_background_tasks
    from routing import owner_pull
    from routing.pull_sync import PullSync
    from routing.sender_pages import listing_parties
    from storage.directory import DirectoryCache
    from storage.location_cache import LocationCache
    from storage.routing_log import RoutingLogWriter
    from storage.routing_state import RoutingState
    from storage.secrets import TokenBox

    if args.full and args.what != "locations":
        print(f"ocpi-hub: --full is for locations: {args.what} are read whole each time", file=sys.stderr)
        return 2
    listing = {"tokens": owner_pull.tokens(), "sessions": owner_pull.sessions(settings.owner_index_period_s)}.get(
        args.what
    )
    module, roles = (listing.module, listing.roles) if listing else ("locations", ("CPO",))  # pull sync's: CPOs
    directory = DirectoryCache(pool, redis_client, settings.redis_prefix, TokenBox(settings.secret_key or ""))
    await directory.reload()
    parties = listing_parties(directory.current, module, roles)
    if args.party:
        wanted = tuple(args.party.upper().split("-", 1))
        parties = [(p, r) for p, r in parties if r.key == wanted]
        if not parties:
            print(f"ocpi-hub: no connected {' or '.join(roles)} {args.party} with a {module} Sender",
                  file=sys.stderr)  # fmt: skip
            return 1

    def progress(party: tuple[str, str], done: int, total: int | None) -> None:
        # a line a page: the JSON log lines of the sync (a CPO done, a page refused) go between them, whole
        print(f"{party[0]}-{party[1]}: {done}/{total if total is not None else '?'} locations", file=sys.stderr,
              flush=True)  # fmt: skip

    writer = RoutingLogWriter(pool, key=settings.routing_log_key, body_cap=settings.log_body_max_bytes)
    hub = (settings.country_code, settings.party_id)
    # As a hub process's sync: stopped for a party that leaves meanwhile, its pages and marks fenced by the directory
    # (storage.location_writer, storage.owner_index), which it watches for as long, so that nothing it writes brings a
    # departed party back.
    watching = asyncio.create_task(directory.watch(), name="directory_watch")
    summary: list[dict[str, Any]] | None = None
    try:
        async with PartyClient(settings) as http, writer.running():
            if listing is None:
                cache = LocationCache(redis_client, settings.redis_prefix, directory, settings.max_locations_per_cpo,
                                      settings.max_location_bytes_per_cpo)  # fmt: skip
                sync = PullSync(http, cache, redis_client, settings.redis_prefix, hub, writer.record,
                                directory=lambda: directory.current)  # fmt: skip
                if (synced := await sync.run(parties, full=args.full, progress=progress)) is not None:
                    summary = [{"party": f"{r.party[0]}-{r.party[1]}", "locations": r.locations, "pages": r.pages,
                                "full": r.full, "removed": r.removed, "refused": r.refused, "error": r.error}
                               for r in synced]  # fmt: skip
            else:  # read whether or not the party's list was read before: the operator doubts the index
                routing = RoutingState(redis_client, settings.redis_prefix, settings.owner_index_period_s, directory)
                async with routing.running():
                    pull = owner_pull.OwnerPull(listing, http, routing, redis_client, settings.redis_prefix, hub,
                                                writer.record, lambda: directory.current,
                                                settings.pull_page_limit)  # fmt: skip
                    if (pulled := await pull.run(parties)) is not None:
                        summary = [{"party": f"{r.party[0]}-{r.party[1]}", args.what: r.noted, "ignored": r.ignored,
                                    "pages": r.pages, "error": r.error} for r in pulled]  # fmt: skip
    finally:
        await stop_background_tasks([watching])
    if summary is None:
        print(f"ocpi-hub: another hub process is syncing {args.what} now; try again later", file=sys.stderr)
        return 1
    out(msgspec.json.format(msgspec.json.encode(summary)).decode())
    return 1 if any(r["error"] for r in summary) else 0


async def _auditor(settings: Settings, args: argparse.Namespace, pool: asyncpg.Pool, _: redis.Redis) -> int:
    from hub.admin import actors

    if args.action != "list" and not (args.name or "").strip():
        print(f"ocpi-hub: auditor {args.action} needs a NAME", file=sys.stderr)
        return 2
    # who may read the routing log is part of its audit trail, as the reading itself is
    key, who = settings.audit_trail_key, operator("auditor")
    async with pool.acquire() as conn:
        if args.action == "list":
            out(msgspec.json.format(msgspec.json.encode(await actors.list_auditors(conn))).decode())
            return 0
        if args.action == "remove":
            if not await actors.remove_auditor(conn, args.name.strip()):
                print(f"ocpi-hub: no auditor named {args.name.strip()!r}", file=sys.stderr)
                return 1
            await actors.record_action(conn, key, who, "remove_auditor", {"name": args.name.strip(), "via": "cli"})
            out(msgspec.json.encode({"removed": args.name.strip()}).decode())
            return 0
        try:
            token = await actors.add_auditor(conn, args.name.strip())
        except actors.AuditorExists as exc:
            print(f"ocpi-hub: {exc}", file=sys.stderr)
            return 1
        await actors.record_action(conn, key, who, "add_auditor", {"name": args.name.strip(), "via": "cli"})
    out(msgspec.json.format(msgspec.json.encode({"name": args.name.strip(), "token": token})).decode())
    return 0


async def _retention(settings: Settings, args: argparse.Namespace, pool: asyncpg.Pool, _: redis.Redis) -> int:
    from datetime import UTC, datetime

    from hub.admin.actors import record_action
    from storage.partitions import RoutingLogBusy, RoutingLogUnverified, drop_before, parse_keep
    from storage.sql import QUERIES

    try:
        cut = datetime.now(UTC) - parse_keep(args.keep)
    except ValueError as exc:
        print(f"ocpi-hub: {exc}", file=sys.stderr)
        return 2
    deleted = {}  # beside the log: what the hub keeps of the exchanges before the cut (dry run: would delete)
    key, who = settings.audit_trail_key, operator("retention")
    async with pool.acquire() as conn:
        for name, query in (("client_info_changes", "client_info_pushes_delivered_before"),
                            ("relayed_cdr_locations", "relayed_cdr_locations_before")):  # fmt: skip
            deleted[name] = await conn.fetchval(QUERIES[query if args.dry_run else f"delete_{query}"], cut)
        recorded = {"keep": args.keep, "cut": cut.isoformat(), "dry_run": args.dry_run, "deleted": deleted}
        try:
            done = await drop_before(conn, cut, key=settings.routing_log_key, dry_run=args.dry_run)
        except (RoutingLogBusy, RoutingLogUnverified) as exc:
            # what it deleted, and why no more
            await record_action(conn, key, who, "retention", recorded | {"error": str(exc)})
            counted = ", ".join(f"{count} {name.replace('_', ' ')}" for name, count in deleted.items())
            print(f"ocpi-hub: {exc} (deleted before it: {counted})", file=sys.stderr)
            return 1
        # what was dropped of the routing log is part of its audit trail: verify explains the gaps by its floors
        ran = {"dropped": [p.name for p in done.dropped], "held": done.held}
        await record_action(conn, key, who, "retention", recorded | ran)
    summary = {"cut": cut, "dry_run": args.dry_run, **ran, "deleted": deleted}
    if args.dry_run:  # how many rows each partition before the cut holds, dropped or kept
        summary["rows"] = done.rows
    out(msgspec.json.format(msgspec.json.encode(summary)).decode())
    return 0


async def _grant_serving_role(settings: Settings, args: argparse.Namespace, pool: asyncpg.Pool, _: redis.Redis) -> int:
    """Run as the owner of the hub's tables (OCPI_HUB_OWNER_DATABASE_URL): what the role the hub serves with may do."""
    from hub.admin.actors import record_action
    from storage.serving_role import RoleRefused, grant_serving_role

    async with pool.acquire() as conn:
        try:
            granted = await grant_serving_role(conn, args.role)
        except RoleRefused as exc:
            print(f"ocpi-hub: {exc}", file=sys.stderr)
            return 1
        await record_action(conn, settings.audit_trail_key, operator("grant-serving-role"), "grant_serving_role",
                            {"role": args.role, "granted": granted})  # fmt: skip
    out(msgspec.json.format(msgspec.json.encode({"role": args.role, "granted": granted})).decode())
    return 0


COMMANDS: dict[str, Command] = {"invite": _invite, "connect": _connect, "sync": _sync, "auditor": _auditor,
                                "retention": _retention, "grant-serving-role": _grant_serving_role,
                                "parties": parties}  # fmt: skip
