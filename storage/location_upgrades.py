"""What earlier hubs left in the location cache, brought up to this version once per cache by the first hub to start.

Each pass runs once per cache, behind a marker key set only when it completed: a pass that failed (logged) runs again
at the next start, and the passes after it wait for that. Hub processes starting at once against one Redis may run a
pass together: it changes each location atomically (a script), and a change already made is not made again. The
passes, in the order the formats changed:

- publish-entries: a hub before publish_allowed_to entries kept, per unpublished location, a set of its entries' token
  uids (`allowed:{member}`, dropped here); its entries are derived from its cached document. Until then it is shown
  to its owner only.
- upper-cased-ids: a hub before ids were upper-cased keyed a location by its id as sent (`CC/PID/loc1`, indexed under
  `id:loc1`, or by a hub before the id index not at all). Each moves to its upper-cased key, document, sets, entries
  and id index; where the cache holds both spellings of one location, the newer document (last_updated) stays.
- location-bytes: a hub before the cap of bytes per CPO (storage.location_cap) kept no count of each CPO's bytes of
  documents; each CPO's is counted, by one script per CPO (its documents' lengths read inside Redis, at most
  OCPI_HUB_MAX_LOCATIONS_PER_CPO of them: a few tens of ms once), set whole over what stores added meanwhile. Until
  then a CPO's new locations are held to the count cap alone. The upper-cased-ids pass changes the count as it moves
  a location, for a hub starting at once that has counted already.
- get-all-order: a hub before the order GET All lists locations in (storage.location_writer.order_key) listed them by
  last_updated and kept no order; each CPO's locations without a place are placed, by one script per CPO, after every
  other, in the order of their last_updated. Until then GET All lists by last_updated, as that hub did, rather than
  leave out the locations without a place (storage.location_cache); so it does too while a location that a hub of the
  earlier version still running (a rolling upgrade) cached anew has none, until one of this version updates it. The
  upper-cased-ids pass gives a location it moves the place of its old key.

Markers of earlier versions' passes (RETIRED), which no hub of this version reads, are removed once every pass has
completed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec
import redis.asyncio as redis
import structlog
from redis.commands.core import AsyncScript

from storage.location_document import read_head
from storage.publish_tokens import publish_entries

log = structlog.get_logger()

PASSES = ("publish-entries", "upper-cased-ids", "location-bytes", "get-all-order")
# the last version's marker of its own start-up pass over ids, which the upper-cased-ids pass does again in full
RETIRED = ("ids-indexed-upper-cased",)

# KEYS: the unpublished set, a location's entries. ARGV: the location's member, its entries. Written only if it is
# still unpublished and was not stored since (a store writes them itself).
_DERIVED = """
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 or redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('SET', KEYS[2], ARGV[2])
return 1
"""
# KEYS: the sorted set of all, the unpublished set, the bytes cached of each CPO. ARGV: the key prefix, a member of
# all. Indexes it under its upper-cased id; a member keyed by the id as sent moves to its upper-cased one (document,
# sorted sets of all and of its owner, unpublished set, entries, its place in GET All's order if it has one and the
# upper-cased one none), unless that one is cached too and not older (the score is last_updated); its owner's bytes
# follow (a hub starting at once may have counted them already). Returns 1 if it moved.
_UPPER_CASED = """
local p, old = ARGV[1], ARGV[2]
local new = string.upper(old)
local owner, id = string.match(new, '^([^/]*/[^/]*)/(.*)$')
if not id then return 0 end  -- not a member this cache writes: left alone rather than failing the pass
local moved = 0
if old ~= new then
  local by_owner = p .. 'by-owner:' .. owner
  local function counted(m)  -- its bytes in its owner's count (storage.location_cap): its document's, if in the set
    if redis.call('ZSCORE', by_owner, m) then return redis.call('STRLEN', p .. 'doc:' .. m) end
    return 0
  end
  local before = counted(old) + counted(new)
  local old_score, new_score = redis.call('ZSCORE', KEYS[1], old), redis.call('ZSCORE', KEYS[1], new)
  if old_score and redis.call('EXISTS', p .. 'doc:' .. old) == 1
     and (not new_score or tonumber(old_score) > tonumber(new_score)) then
    redis.call('RENAME', p .. 'doc:' .. old, p .. 'doc:' .. new)
    redis.call('ZADD', KEYS[1], old_score, new)
    redis.call('ZADD', by_owner, old_score, new)
    if redis.call('SISMEMBER', KEYS[2], old) == 1 then
      redis.call('SADD', KEYS[2], new)
    else
      redis.call('SREM', KEYS[2], new)
    end
    if redis.call('EXISTS', p .. 'publish-to:' .. old) == 1 then
      redis.call('RENAME', p .. 'publish-to:' .. old, p .. 'publish-to:' .. new)
    else
      redis.call('DEL', p .. 'publish-to:' .. new)
    end
    local place = redis.call('ZSCORE', p .. 'order', old)
    if place and not redis.call('ZSCORE', p .. 'order', new) then redis.call('ZADD', p .. 'order', place, new) end
    moved = 1
  end
  redis.call('DEL', p .. 'doc:' .. old, p .. 'publish-to:' .. old)
  redis.call('ZREM', p .. 'order', old)
  redis.call('ZREM', KEYS[1], old)
  redis.call('ZREM', by_owner, old)
  redis.call('SREM', KEYS[2], old)
  redis.call('SREM', p .. 'id:' .. string.match(old, '^[^/]*/[^/]*/(.*)$'), old)
  redis.call('SREM', p .. 'id:' .. id, old)
  local after = counted(new)
  if after ~= before then redis.call('HINCRBY', KEYS[3], owner, after - before) end
end
if redis.call('ZSCORE', KEYS[1], new) then redis.call('SADD', p .. 'id:' .. id, new) end
return moved
"""


# KEYS: a CPO's sorted set, the bytes cached of each CPO. ARGV: the documents' key prefix, the CPO (CC/PID). Sets the
# CPO's bytes to the sum of its documents' lengths (STRLEN reads no document). Returns it.
_BYTES = """
local total = 0
for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do total = total + redis.call('STRLEN', ARGV[1] .. m) end
redis.call('HSET', KEYS[2], ARGV[2], total)
return total
"""


# KEYS: a CPO's sorted set, GET All's order (storage.location_writer.order_key). Places each of the CPO's locations
# without a place after the last, in the order of their last_updated (the sorted set's). Returns how many it placed.
_ORDER = """
local last = tonumber(redis.call('ZREVRANGE', KEYS[2], 0, 0, 'WITHSCORES')[2] or 0)
local placed = 0
for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if not redis.call('ZSCORE', KEYS[2], m) then
    placed = placed + 1
    redis.call('ZADD', KEYS[2], last + placed, m)
  end
end
return placed
"""


async def upgrade(client: redis.Redis, prefix: str) -> list[str]:
    """Run, in order, the passes this cache has not completed yet; returns those that completed now. Unfenced by the
    directory (storage.departed): each script changes only a location still cached, which a departed CPO's cleanup
    removes whole, so none brings one back."""
    p = f"{prefix}locations:"
    done: list[str] = []
    for name, upgrade_pass in zip(PASSES, (_derive_entries, _upper_case, _count_bytes, _place), strict=True):
        marker = f"{p}upgraded:{name}"
        try:
            if await client.exists(marker):
                continue
            locations = await upgrade_pass(client, p)
            await client.set(marker, "1")
        except redis.RedisError as exc:
            log.warning("location_cache_upgrade_failed", upgrade=name, error=str(exc))
            return done
        if locations:  # a fresh cache's passes change nothing: no line that reads as if they had
            log.info("location_cache_upgraded", upgrade=name, locations=locations)
        done.append(name)
    try:
        await client.unlink(*(f"{p}{marker}" for marker in RETIRED))
    except redis.RedisError as exc:  # a dead key left for the next start
        log.warning("location_cache_retired_markers_kept", error=str(exc))
    return done


async def _derive_entries(client: redis.Redis, p: str, chunk: int = 500) -> int:
    """Entries for the unpublished locations that lack them; returns how many got them."""
    derived_script = client.register_script(_DERIVED)
    cursor, derived = 0, 0
    while True:
        cursor, members = await client.sscan(f"{p}hidden", cursor, count=chunk)
        derived += await _derive_lacking(client, p, derived_script, [_text(member) for member in members])
        if not cursor:
            return derived


async def _derive_lacking(client: redis.Redis, p: str, derived_script: AsyncScript, members: list[str]) -> int:
    async with client.pipeline(transaction=False) as pipe:
        for member in members:
            pipe.exists(f"{p}publish-to:{member}")
        kept = await pipe.execute()
    lacking = [member for member, has in zip(members, kept, strict=True) if not has]
    docs = await client.mget([f"{p}doc:{member}" for member in lacking]) if lacking else []
    async with client.pipeline(transaction=False) as pipe:
        for member, raw in zip(lacking, docs, strict=True):
            try:
                entries = publish_entries(read_head(raw).publish_allowed_to) if raw else ""
            except (msgspec.DecodeError, RecursionError):
                entries = ""
            keys = [f"{p}hidden", f"{p}publish-to:{member}"]
            await derived_script(keys=keys, args=[member, entries], client=pipe)
        if members:  # after the entries: once they are gone, the entries are there
            pipe.unlink(*(f"{p}allowed:{member}" for member in members))
        return sum((await pipe.execute())[: len(lacking)])


async def _upper_case(client: redis.Redis, p: str, chunk: int = 1000) -> int:
    """Every cached location keyed and indexed by its upper-cased id; returns how many moved."""
    upper_cased = client.register_script(_UPPER_CASED)
    moved, cursor = 0, 0
    while True:
        cursor, scored = await client.zscan(f"{p}all", cursor, count=chunk)
        async with client.pipeline(transaction=False) as pipe:
            for member, _ in scored:
                await upper_cased(keys=[f"{p}all", f"{p}hidden", f"{p}bytes"], args=[p, _text(member)], client=pipe)
            moved += sum(await pipe.execute())
        if not cursor:
            return moved


async def _count_bytes(client: redis.Redis, p: str, chunk: int = 100) -> int:
    """Each CPO's bytes of documents counted (storage.location_cap); returns of how many locations."""
    counted = client.register_script(_BYTES)
    locations = 0
    async for key in _owners(client, p, chunk):
        await counted(keys=[key, f"{p}bytes"], args=[f"{p}doc:", key.removeprefix(f"{p}by-owner:")])
        locations += await client.zcard(key)
    return locations


async def _place(client: redis.Redis, p: str, chunk: int = 100) -> int:
    """Each CPO's locations without a place in GET All's order placed; returns how many."""
    placed_script = client.register_script(_ORDER)
    placed = 0
    async for key in _owners(client, p, chunk):
        placed += await placed_script(keys=[key, f"{p}order"])
    return placed


async def _owners(client: redis.Redis, p: str, chunk: int) -> AsyncIterator[str]:
    """The key of each CPO's set of cached locations (by-owner:CC/PID), as SCAN finds them."""
    cursor = 0
    while True:
        cursor, keys = await client.scan(cursor, match=f"{p}by-owner:*", count=chunk)
        for key in keys:
            yield _text(key)
        if not cursor:
            return


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
