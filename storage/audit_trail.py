"""The audit trail's keyed hash chain: each entry chained to the one before it as it is written, and verified.

One chain for the whole trail, whichever hub process writes: an entry is chained under the lock of its one head row
(QUERIES["lock_audit_trail_head"], held to the end of the writer's transaction), so entries are chained in id order.
An entry's hash is an HMAC-SHA-256 under storage.secrets.audit_trail_key over its id, its content as stored and the
hash of the entry before; the head (the last entry's id and hash, and the last id written before the chain began) is
MAC'd too. Without the key, an entry edited, inserted or deleted, or the head moved back over entries deleted from the
end, shows. Entries written before migration 0019 have no hash: verify counts them as unchained, not tampered.

A head deleted (with or without entries from the end) is made again by the next entry's writer, after the last entry
chained then, and the first entry after it says so (HEAD_MADE_AGAIN, by the hub): the action it was written for is
not refused, and every later verify names that entry, since what went with the head no longer shows.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any

import asyncpg
import msgspec
import structlog

from storage.sql import QUERIES

GENESIS = bytes(32)  # the prev_hash of the chain's first entry
HEAD_MADE_AGAIN = "audit_trail_head_made_again"  # the action of the entry saying the head was missing
_HUB = ("hub", "hub")  # the hub acting on its own, as hub.admin.actors names it
_encoder = msgspec.json.Encoder()
log = structlog.get_logger()


def entry_hash(key: bytes, prev_hash: bytes, entry: asyncpg.Record | dict[str, Any]) -> bytes:
    """An entry's hash: its id, time, actor, action and parameters (as jsonb gives them back) after prev_hash."""
    content = [entry["id"], entry["at"].isoformat(), entry["actor_kind"], entry["actor_name"], entry["action"],
               entry["parameters"], prev_hash.hex()]  # fmt: skip
    return hmac.digest(key, b"ocpi-hub audit trail entry\0" + _encoder.encode(content), "sha256")


def head_mac(key: bytes, unchained_upto: int, last_id: int | None, last_hash: bytes) -> bytes:
    content = [unchained_upto, last_id, last_hash.hex()]
    return hmac.digest(key, b"ocpi-hub audit trail head\0" + _encoder.encode(content), "sha256")


async def seal_unchained(conn: asyncpg.Connection, key: bytes) -> None:
    """Migration 0019's Python half: the head as the migration left it (no entry chained yet), MAC'd."""
    head = await conn.fetchrow("SELECT unchained_upto, last_id, last_hash FROM audit_trail_head")
    await conn.execute("UPDATE audit_trail_head SET mac = $1", head_mac(key, *head.values()))


async def append(conn: asyncpg.Connection, key: bytes, actor: tuple[str, str], action: str, parameters: str) -> int:
    """Write one entry (actor: kind and name; parameters: JSON text), chained after the last; its id. In the caller's
    transaction if it has one: the head stays locked until that ends, and the entry goes with it if it rolls back."""
    async with conn.transaction():
        while (head := await conn.fetchrow(QUERIES["lock_audit_trail_head"])) is None:
            await _make_head_again(conn, key)
        return await _chained(conn, key, head, actor, action, parameters)


async def _chained(
    conn: asyncpg.Connection, key: bytes, head: asyncpg.Record, actor: tuple[str, str], action: str, parameters: str
) -> int:
    # the id taken under the lock, so that ids rise along the chain; the entry written once, with its hash
    entry = dict(await conn.fetchrow(QUERIES["next_audit_trail_entry"], parameters))
    entry.update(actor_kind=actor[0], actor_name=actor[1], action=action)
    hashed = entry_hash(key, head["last_hash"], entry)
    await conn.execute(QUERIES["record_action"], entry["id"], entry["at"], *actor, action, parameters,
                       head["last_hash"], hashed)  # fmt: skip
    mac = head_mac(key, head["unchained_upto"], entry["id"], hashed)
    await conn.execute(QUERIES["move_audit_trail_head"], entry["id"], hashed, mac)
    return int(entry["id"])


async def _make_head_again(conn: asyncpg.Connection, key: bytes) -> None:
    """The head, deleted, made again after the last chained entry, its first entry saying so (by the hub); nothing
    when another writer made it meanwhile (its entry is that one's)."""
    made = await conn.fetchrow(QUERIES["make_audit_trail_head_again"])
    if made is not None:
        said = {"after_entry": made["last_id"], "unchained_upto": made["unchained_upto"]}
        entry_id = await _chained(conn, key, made, _HUB, HEAD_MADE_AGAIN, _encoder.encode(said).decode())
        log.error("audit_trail_head_missing", made_again_after_entry=made["last_id"], entry=entry_id)


async def verify_trail(conn: asyncpg.Connection, key: bytes, wrong: Callable[[str], None]) -> tuple[int, int]:
    """Recompute the chain from the database, each problem told to wrong with the entry where it is; (entries
    chained, entries unchained: written before migration 0019). In one snapshot: a hub writing meanwhile is no gap."""
    chained = unchained = 0
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        head = await conn.fetchrow("SELECT unchained_upto, last_id, last_hash, mac FROM audit_trail_head")
        if head is None:
            wrong("audit trail: its head (audit_trail_head) is gone: entries may have been deleted from its end")
            upto = None
        else:
            upto = head["unchained_upto"]
            if head["mac"] is None or not hmac.compare_digest(
                head["mac"], head_mac(key, upto, head["last_id"], head["last_hash"])
            ):
                wrong("audit trail: its head does not match its MAC: it was changed (or the hub's OCPI_HUB_SECRET_KEY "
                      "is not the one it was written with)")  # fmt: skip
                head = None
        last: tuple[int | None, bytes] = (None, GENESIS)
        follows = {GENESIS}  # the prev_hash the next entry may have: the last entry's hash, or if that one did not
        # match its own, the one before it too (it may have been inserted)
        async for entry in conn.cursor(QUERIES["audit_trail_in_order"], prefetch=2000):
            where = f"audit trail entry {entry['id']} ({entry['action']} by {entry['actor_name']})"
            if entry["hash"] is None:
                if upto is not None and entry["id"] <= upto:
                    unchained += 1
                else:
                    wrong(f"{where}: has no hash but was written after the chain began (after entry {upto}): by a "
                          "hub of the previous version still running then, or inserted by something other than a hub, "
                          "or its hash was removed")  # fmt: skip
                continue
            chained += 1
            matches = entry["prev_hash"] is not None and hmac.compare_digest(
                entry_hash(key, entry["prev_hash"], entry), entry["hash"]
            )
            if matches and (entry["actor_kind"], entry["action"]) == (_HUB[0], HEAD_MADE_AGAIN):
                after = f"entry {last[0]}" if last[0] is not None else "the chain's start"
                wrong(f"{where}: the trail's head (audit_trail_head) was gone when the hub wrote its next entry: it "
                      f"was deleted, and entries after {after} may have been deleted with it, which no longer shows; "
                      "the hub made a new head from there")  # fmt: skip
            if not matches:
                wrong(f"{where}: content does not match its hash: the entry was changed or inserted (or the hub's "
                      "OCPI_HUB_SECRET_KEY is not the one it was written with)")  # fmt: skip
            elif entry["prev_hash"] not in follows:
                after = f"entry {last[0]}" if last[0] is not None else "the chain's start"
                wrong(f"{where}: does not follow {after}: entries between them were deleted")
            follows = {entry["hash"]} | (follows if not matches else set())
            last = entry["id"], entry["hash"]
        if head is not None and (head["last_id"], head["last_hash"]) != last:
            wrong(f"audit trail: its head is entry {head['last_id']}, its last chained entry is {last[0]}: entries "
                  "were deleted from its end, or the last one changed")  # fmt: skip
    return chained, unchained
