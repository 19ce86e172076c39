"""The `ocpi-hub` commands of an audit of the routing log (hold, verify, heads, checkpoint), run on a pool;
verify-export and verify-checkpoint need none (hub.export_manifest, hub.checkpoint)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import redis.asyncio as redis

from hub.cli_commands import Command, operator
from hub.cli_output import out
from hub.settings import Settings


async def _hold(settings: Settings, args: argparse.Namespace, pool: asyncpg.Pool, _: redis.Redis) -> int:
    """POST /admin/api/holds, GET it, POST /admin/api/holds/{id}/release, as the admin."""
    from hub.admin.api import AdminError
    from hub.admin.holds import HoldIn, recorded_hold, recorded_release
    from hub.envelope import whole_number
    from storage.log_holds import list_holds

    given = {name: value for name in ("reason", "correlation_id", "object_id", "party", "since", "until")
             if (value := getattr(args, name, None)) is not None}  # fmt: skip
    try:
        async with pool.acquire() as conn:
            if args.action == "list":
                result: Any = {"items": await list_holds(conn)}
            elif args.action == "release":
                if (hold_id := whole_number(args.id or "")) is None:
                    wrong = "needs the hold's ID" if args.id is None else f"{args.id!r} is not a hold's ID, a number"
                    print(f"ocpi-hub: hold release {wrong} (ocpi-hub hold list shows them)", file=sys.stderr)
                    return 2
                result = await recorded_release(conn, settings.audit_trail_key, operator("hold"), hold_id, "cli")
            else:
                try:
                    hold = msgspec.convert(given, HoldIn)
                except msgspec.ValidationError as exc:
                    needs = "" if args.reason is not None else " (set needs --reason)"
                    print(f"ocpi-hub: invalid hold: {exc}{needs}", file=sys.stderr)
                    return 2
                result = await recorded_hold(conn, settings.audit_trail_key, operator("hold"), hold, "cli")
    except AdminError as exc:
        print(f"ocpi-hub: {exc.message}", file=sys.stderr)
        return 2 if exc.status == 400 else 1
    out(msgspec.json.format(msgspec.json.encode(result)).decode())
    return 0


async def _verify(settings: Settings, args: argparse.Namespace, pool: asyncpg.Pool, _: redis.Redis) -> int:
    """GET /admin/api/routing-log/verify without a request's time limits (a log of millions of rows takes minutes),
    for cron and alerting: the same JSON on stdout, exit code 1 when the log does not verify."""
    from hub.admin.verify import recorded_verify
    from hub.checkpoint import NotHeads, Refused, saved_heads
    from storage.log_search import BadFilter, check_range, parse_time

    given = {name: value for name in ("since", "until") if (value := getattr(args, name))}
    option, file = ("--checkpoint", args.checkpoint) if args.checkpoint else ("--heads", args.heads)
    try:
        if args.checkpoint and args.heads:
            raise BadFilter("give --heads or --checkpoint, not both")
        times = {name: parse_time(f"--{name}", value) for name, value in given.items()}
        check_range(times.get("since"), times.get("until"))
        data = Path(file).read_bytes() if file else None
        saved = saved_heads(data, settings.export_signing_key, bool(args.checkpoint)) if data is not None else None
    except BadFilter as exc:
        print(f"ocpi-hub: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"ocpi-hub: cannot read {option} {file}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except NotHeads as exc:
        print(f"ocpi-hub: {option} {file}: not heads as ocpi-hub heads prints them, nor a checkpoint: {exc}",
              file=sys.stderr)  # fmt: skip
        return 2
    except Refused as exc:
        print(f"ocpi-hub: {option} {file}: {exc}", file=sys.stderr)
        return 2
    window = (times.get("since"), times.get("until"))
    async with pool.acquire() as conn:  # no time limit here: the point of the command
        result = await recorded_verify(conn, settings.routing_log_key, operator("verify"), given, window, saved, None)
    out(msgspec.json.format(msgspec.json.encode(result)).decode())
    return 0 if result.ok else 1


async def _heads(settings: Settings, args: argparse.Namespace, pool: asyncpg.Pool, _: redis.Redis) -> int:
    """GET /admin/api/routing-log/heads: kept outside the database, a later verify --heads shows rows deleted since."""
    from hub.admin.verify import recorded_heads

    async with pool.acquire() as conn:
        heads = await recorded_heads(conn, settings.audit_trail_key, operator("heads"), {})
    out(msgspec.json.format(msgspec.json.encode(heads)).decode())
    return 0


async def _checkpoint(settings: Settings, args: argparse.Namespace, pool: asyncpg.Pool, _: redis.Redis) -> int:
    """GET /admin/api/routing-log/checkpoint, for cron: kept outside the hub, verify --checkpoint checks it later."""
    from hub.admin.checkpoint import recorded_checkpoint

    async with pool.acquire() as conn:
        checkpoint = await recorded_checkpoint(conn, settings, operator("checkpoint"), {"via": "cli"})
    out(msgspec.json.format(msgspec.json.encode(checkpoint)).decode())
    return 0


AUDIT_COMMANDS: dict[str, Command] = {"hold": _hold, "verify": _verify, "heads": _heads, "checkpoint": _checkpoint}
