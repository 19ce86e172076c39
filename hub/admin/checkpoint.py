"""Checkpoints taken (hub.checkpoint): on request (API, console, CLI) and every OCPI_HUB_CHECKPOINT_LOG_S into the hub's
log, each in the audit trail; and the audit trail checked against one given to verify."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
import msgspec
import redis.asyncio as redis
import structlog
from litestar import Request, Response, get

from hub.admin.actors import HUB, READ_ONLY, Actor, actor_of, record_action
from hub.admin.api import json_response, takes_no_parameters
from hub.checkpoint import Checkpoint, checkpoint_of
from hub.errors import OUTAGES, unavailable
from hub.logs import shown
from hub.settings import Settings
from storage.log_verify import Verification
from storage.sql import QUERIES

log = structlog.get_logger()


async def recorded_checkpoint(
    conn: asyncpg.Connection, settings: Settings, who: Actor, given: dict[str, Any]
) -> dict[str, Any]:
    """A checkpoint now, signed, and its taking in the audit trail with given (API, console, CLI and the hub's log)."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):  # heads and trail of one moment
        heads = await conn.fetch(QUERIES["checkpoint_heads"])
        trail = await conn.fetchrow("SELECT last_id, last_hash FROM audit_trail_head")
    taken_at = msgspec.json.encode(datetime.now(UTC))[1:-1].decode()
    chains = [{"chain_id": str(h["chain_id"]), "last_seq": h["last_seq"], "last_hash": h["last_hash"].hex(),
               "amendments": h["amendments"], "row_id": h["row_id"]} for h in heads]  # fmt: skip
    about = {"hub": settings.public_url, "hub_party": f"{settings.country_code}-{settings.party_id}",
             "hub_name": settings.name, "taken_by": {"kind": who.kind, "name": who.name}}  # fmt: skip
    last = (trail["last_id"], trail["last_hash"]) if trail is not None and trail["last_id"] is not None else None
    checkpoint = checkpoint_of(chains, last, taken_at, about, settings.export_signing_key)
    recorded = {"checkpoint_id": checkpoint["checkpoint_id"], "taken_at": taken_at, "chains": len(chains),
                "audit_trail_entry": last[0] if last else None, "signature": checkpoint["signature"]}  # fmt: skip
    await record_action(conn, settings.audit_trail_key, who, "checkpoint", recorded | given)
    return checkpoint


@get("/routing-log/checkpoint", opt={READ_ONLY: True})
async def routing_log_checkpoint(request: Request) -> Response[bytes]:
    """Every chain's head and the audit trail's now, signed: to keep outside the hub and give to verify later."""
    takes_no_parameters(request)
    async with request.app.state.pool.acquire() as conn:
        checkpoint = await recorded_checkpoint(conn, request.app.state.settings, actor_of(request), {"via": "api"})
    return json_response(checkpoint)


async def check_trail_at(conn: asyncpg.Connection, checkpoint: Checkpoint, wrong: Callable[[str], None]) -> None:
    """The audit trail's entry that was its last at the checkpoint is still there, with its hash (verify_trail checks
    that the trail continues from it); each problem told to wrong."""
    if checkpoint.audit_trail is None:
        return
    entry_id, taken = checkpoint.audit_trail.entry_id, checkpoint.named()
    entry = await conn.fetchrow("SELECT id, hash FROM audit_trail WHERE id = $1", entry_id)
    if entry is None:
        wrong(f"audit trail entry {entry_id}, its last in {taken}, is gone: entries were deleted")
    elif entry["hash"] is None or entry["hash"].hex() != checkpoint.audit_trail.hash:
        wrong(f"audit trail entry {entry_id} is not the entry it was in {taken}: the trail was rewritten up to it")


async def note_dropped_before(
    conn: asyncpg.Connection, checkpoint: Checkpoint, result: Verification, timeout: float | None
) -> None:
    """Rows of a chain before its seq in the checkpoint that are gone, where verify found none missing: retention's
    floors account for them, which is no tampering, but those rows were checked by the floors, not the checkpoint."""
    upto = dict.fromkeys((head.chain_id, head.last_seq) for head in checkpoint.chains)
    found = await conn.fetch(QUERIES["rows_up_to"], [c for c, _ in upto], [s for _, s in upto], timeout=timeout)
    kept = {row["chain_id"]: row["kept"] for row in found}
    named = " ".join(result.problems)
    for chain_id, seq in upto:
        if 0 < kept.get(chain_id, 0) < seq and str(chain_id) not in named:
            result.notes.append(f"chain {chain_id}: {seq - kept[chain_id]} of its {seq} rows up to seq {seq}, its "
                                f"last in {checkpoint.named()}, were dropped by retention: checked by the floors it "
                                "left, not against the checkpoint")  # fmt: skip
    await _note_amended_since(conn, checkpoint, result, timeout)


async def _note_amended_since(
    conn: asyncpg.Connection, checkpoint: Checkpoint, result: Verification, timeout: float | None
) -> None:
    """Rows up to a chain's seq in the checkpoint amended since (their amendment numbered past the checkpoint's count):
    what their callers were answered changed after the checkpoint. An amendment follows its row within moments (a
    commit that stalled around the checkpoint), or hours when spooled through a restart; one long after is an insider
    with the secret key, whose amendments verify as the hub's. Said in notes, with the row and its amendment."""
    heads = list(dict.fromkeys((h.chain_id, h.last_seq, h.amendments or 0) for h in checkpoint.chains))
    found = await conn.fetch(QUERIES["amendments_since"], [h[0] for h in heads], [h[1] for h in heads],
                             [h[2] for h in heads], timeout=timeout)  # fmt: skip
    for a in found:
        answered = f"HTTP {a['http_status']}, OCPI {a['ocpi_status_code']}"
        result.notes.append(f"chain {a['chain_id']}: seq {a['seq']}, before its last in {checkpoint.named()}, was "
                            f"amended since (amendment {a['number']}, after the {a['counted']} it counted; its caller "
                            f"was answered {answered}): from a commit that stalled around the checkpoint, or written "
                            "later by someone holding the secret key")  # fmt: skip


async def log_checkpoints(pool: asyncpg.Pool, redis_client: redis.Redis, settings: Settings) -> None:
    """A checkpoint in the hub's log (routing_log_checkpoint) every settings.checkpoint_log_s, on the multiples of it
    since the epoch, by one hub process of those sharing the Redis (the first to claim that moment), for as long as
    the hub runs: log shipping keeps them outside the hub."""
    interval = settings.checkpoint_log_s
    while interval:  # 0: none
        await asyncio.sleep(interval - time.time() % interval)
        moment = round(time.time() / interval)
        try:
            claimed = await redis_client.set(f"{settings.redis_prefix}checkpoint:{moment}", "1", nx=True,
                                             ex=max(1, round(interval)))  # fmt: skip
            if not claimed:
                continue
            async with pool.acquire() as conn:
                checkpoint = await recorded_checkpoint(conn, settings, Actor(HUB, HUB), {"via": "log"})
        except OUTAGES as exc:
            log.warning("routing_log_checkpoint_failed", error=unavailable(exc))
            continue
        except (asyncpg.PostgresError, redis.RedisError) as exc:
            log.error("routing_log_checkpoint_failed", error=str(exc))
            continue
        # at OCPI_HUB_LOG_LEVEL warning or error too: the line is what log shipping keeps outside the hub
        log.log(shown(logging.INFO), "routing_log_checkpoint", checkpoint=checkpoint)
