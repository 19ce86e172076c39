"""The parties of a platform that left the hub are taken out of the routing indexes in Redis, in the background.

Open routing counts only the parties on the hub as owners, so what a departed party leaves in the owner index routes
nothing; but a platform later registering the same party id would inherit it: its START_SESSION, PATCH or
authorize would go where the old platform's objects were. So, once a platform leaves, every entry naming one of its
parties goes: in the owner hashes (storage.routing_state: locations, tokens, and this period's and the previous
one's of sessions, session receivers and reservations) the party leaves an entry's owners and the others stay; the
session receivers the party noted as a session's CPO, its token records, visual numbers and groups
(storage.publish_tokens) and the locations it still has cached, with their publish_allowed_to entries, go whole.

Off the request path: the DELETE answers at once, and the cleanup begins after the requests the party had in flight
on any hub process have noted what they saw (the directory's PROPAGATION_S, a forward, and a margin for the owner
index's batches). A hash is read with HSCAN a chunk at a time and each chunk's entries naming the party are removed
by one script, which reads them again, so a chunk holds Redis a few ms at most and nothing is lost that changed
since the scan. A stop may cancel the cleanup anywhere: each script removes its entries whole or not at all, what it
had not reached is as before the party left (harmless: no owner on the hub), and the departure, noted in Redis, is
cleaned up by the next hub to start. Cleaning up twice removes nothing more, so two hubs starting at once may both.

A party id may be registered again while its cleanup runs, and then its entries may be the new platform's: the index
keeps no time per entry, so "older than the departure" cannot be told. So each removal is checked against the
directory at the moment it runs, inside its script (storage.directory.UNCHANGED_LUA): the cleanup reads the
directory's generation, then asks PostgreSQL whether a registered platform holds the party id, and each script
removes only while the generation is still the one read. A registration is committed, then announced by bumping the
generation, before the party can push anything (it gets its token C in the answer to its credentials POST; after
`ocpi-hub connect`, the hub processes take its token as C once they reload on that bump): a script that runs after a
new registration finds the generation moved and removes nothing. The cleanup then asks PostgreSQL again: it goes on
if the change was another one (an invitation, another platform's registration), and stops if a registered platform
holds the party id, keeping what is left, the old platform's entries too, which it can no longer tell from the new
one's. An invitation alone does not stop it: an invited platform has pushed nothing yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import cast

import asyncpg
import redis.asyncio as redis
import structlog

from storage.directory import GENERATION_KEY, PROPAGATION_S, UNCHANGED_LUA, DirectoryChanged, PartyRole
from storage.location_cache import LocationCache
from storage.publish_tokens import index_keys, owner_fields
from storage.routing_state import RoutingState
from storage.sql import QUERIES

log = structlog.get_logger()

PartyKey = tuple[str, str]
SCAN_CHUNK = 1000  # fields an HSCAN reads at a time
RETRY_S = 60.0  # a cleanup that failed (Redis or PostgreSQL away) is tried again this much later
_NOTES_MARGIN_S = 1.0  # the owner index's notes are written every 50 ms; Redis briefly away delays them

# KEYS: the directory's generation, a hash. ARGV: the generation read, the party (CC-PID) as an owner list names it
# ('' where values are no owner lists), the start of the fields that name it ('' where none do), then fields. Such a
# field goes; an owner list ("CC-PID,CC-PID") loses the party and keeps the others. Returns how many fields changed.
_REMOVE = (
    UNCHANGED_LUA
    + """
local changed = 0
for i = 4, #ARGV do
  local field = ARGV[i]
  if ARGV[3] ~= '' and string.sub(field, 1, #ARGV[3]) == ARGV[3] then
    changed = changed + redis.call('HDEL', KEYS[2], field)
  elseif ARGV[2] ~= '' then
    local kept, named = {}, false
    for owner in string.gmatch(redis.call('HGET', KEYS[2], field) or '', '[^,]+') do
      if owner == ARGV[2] then named = true else kept[#kept + 1] = owner end
    end
    if named and #kept == 0 then
      redis.call('HDEL', KEYS[2], field)
    elseif named then
      redis.call('HSET', KEYS[2], field, table.concat(kept, ','))
    end
    if named then changed = changed + 1 end
  end
end
return changed
"""
)
# KEYS: the directory's generation, then keys to delete. ARGV: the generation read. Returns how many were there.
_DELETE = UNCHANGED_LUA + "return redis.call('DEL', unpack(KEYS, 2))\n"
# KEYS: the departures to clean up. ARGV: a party, when it left (ms). Done unless it left again since.
_DONE = """
if redis.call('ZSCORE', KEYS[1], ARGV[1]) == ARGV[2] then return redis.call('ZREM', KEYS[1], ARGV[1]) end
return 0
"""


class _RegisteredAgain(Exception):
    """A registered platform holds the party id again: what is left of the index is its."""


class Departures:
    """`left()` when a platform leaves the hub; `run()` cleans up after it, for the life of the process."""

    def __init__(self, pool: asyncpg.Pool, client: redis.Redis, prefix: str, routing: RoutingState,
                 locations: LocationCache, forward_timeout_s: float) -> None:  # fmt: skip
        self._pool, self._redis, self._prefix = pool, client, prefix
        self._routing, self._locations = routing, locations
        self.delay_s = PROPAGATION_S + forward_timeout_s + _NOTES_MARGIN_S
        self._pending = f"{prefix}departed-parties"  # CC-PID -> when it left (ms)
        self._generation = f"{prefix}{GENERATION_KEY}"
        self._due: dict[PartyKey, tuple[float, int]] = {}  # party -> (not before, when it left in ms)
        self._wake = asyncio.Event()
        self._remove = client.register_script(_REMOVE)
        self._done = client.register_script(_DONE)
        self._delete = client.register_script(_DELETE)

    async def left(self, roles: Iterable[PartyRole]) -> None:
        """A platform left the hub: its parties are cleaned up after delay_s, by this process, or by the next hub to
        start if this one stops first. Best effort: the platform has left whatever Redis says."""
        at = int(time.time() * 1000)
        parties = sorted({role.key for role in roles})
        for party in parties:
            self._due[party] = (at / 1000 + self.delay_s, at)
        self._wake.set()
        try:
            if parties:
                await self._redis.zadd(self._pending, {_text(party): at for party in parties})
        except redis.RedisError as exc:  # cleaned up by this process all the same, unless it stops first
            log.warning("departed_parties_not_noted", parties=[_text(party) for party in parties], error=str(exc))

    async def run(self) -> None:
        """For the life of the process: each departed party's cleanup once it is due, first those a hub stopped
        before doing (cancelled in between scripts, it leaves each index whole)."""
        await self._resume()
        while True:
            now = time.time()
            for at, party in sorted((at, party) for party, (not_before, at) in self._due.items() if not_before <= now):
                await self._clean_due(party, at)
            self._wake.clear()
            wait = min((not_before for not_before, _ in self._due.values()), default=time.time() + 3600) - time.time()
            with contextlib.suppress(TimeoutError):  # not wait_for, which in Python 3.11 can drop a cancel
                async with asyncio.timeout(max(wait, 0.01)):
                    await self._wake.wait()

    async def _resume(self) -> None:
        try:
            pending = cast(list[tuple[bytes, float]], await self._redis.zrange(self._pending, 0, -1, withscores=True))
        except redis.RedisError as exc:  # left for the next start
            log.warning("departed_parties_not_resumed", error=str(exc))
            return
        for member, score in pending:
            country, _, party = _text(member).partition("-")
            at = int(score)
            self._due.setdefault((country, party), (at / 1000 + self.delay_s, at))

    async def _clean_due(self, party: PartyKey, at: int) -> None:
        try:
            await self.clean(party)
        except Exception as exc:  # Redis or PostgreSQL briefly away: what was removed is gone, the rest comes later
            log.warning("departed_party_not_cleaned", party=_text(party), error=str(exc), retry_in_s=RETRY_S)
            if self._due.get(party, (0, at))[1] == at:
                self._due[party] = (time.time() + RETRY_S, at)
            return
        if self._due.get(party, (0, at))[1] == at:  # not if it left again meanwhile: then once more
            del self._due[party]
        with contextlib.suppress(redis.RedisError):  # else cleaned up again, uselessly, at the next start
            await self._done(keys=[self._pending], args=[_text(party), at])

    async def clean(self, party: PartyKey) -> dict[str, int] | None:
        """Remove the party's entries from every index; returns how many each lost, or None if a registered platform
        holds the party id (again), which keeps what is left."""
        removed: dict[str, int] = {}
        fence = _Fence(self._pool, self._redis, self._generation, party)
        try:
            await fence.renew()
            for name, key, owner, fields in self._indexes(party):
                removed[name] = removed.get(name, 0) + await self._sweep(key, owner, fields, fence)
            removed["cached_locations"] = await fence.holding(functools.partial(self._forget_locations, party))
        except _RegisteredAgain:
            log.info("departed_party_kept", party=_text(party), reason="a registered platform holds its id again",
                     **removed)  # fmt: skip
            return None
        log.info("departed_party_cleaned", party=_text(party), **removed)
        return removed

    def _indexes(self, party: PartyKey) -> Iterator[tuple[str, str, str, str]]:
        """(name for the log, hash, the party as its owner lists name it, the start of its fields naming it)."""
        owner = _text(party)
        for module, key in self._routing.owner_keys():
            # a session's receivers are kept by its CPO and id (routing.open_routing._session_of): "CC/PID/id"
            fields = f"{party[0]}/{party[1]}/" if module == "session-receivers" else ""
            yield module.replace("-", "_"), key, owner, fields
        for name, key in zip(("publish_tokens", "publish_visual_numbers", "publish_groups"), index_keys(self._prefix),
                             strict=True):  # fmt: skip
            yield name, key, "", owner_fields(owner)

    async def _sweep(self, key: str, owner: str, fields: str, fence: _Fence) -> int:
        """One hash, a chunk at a time: each chunk's fields naming the party go in one script."""
        match = None if owner else re.sub(r"([*?\[\]\\])", r"\\\1", fields) + "*"  # only fields can name it
        removed, cursor = 0, 0
        while True:
            cursor, entries = await self._redis.hscan(key, cursor, match=match, count=SCAN_CHUNK)
            assert isinstance(entries, dict)  # fields and values, as no_values was not asked for
            named = [_text(field) for field, value in entries.items() if _names(owner, fields, field, value)]
            if named:
                removed += await fence.holding(functools.partial(self._remove_named, key, owner, fields, named))
            if not cursor:
                return removed

    async def _remove_named(self, key: str, owner: str, fields: str, named: list[str], generation: str) -> int:
        count = int(await self._remove(keys=[self._generation, key], args=[generation, owner, fields, *named]))
        if count < 0:
            raise DirectoryChanged(f"the directory changed while {owner or fields} left {key}")
        return count

    async def _forget_locations(self, party: PartyKey, generation: str) -> int:
        """The locations still cached for a CPO that left (LocationCache.forget_platform forgot those cached then):
        an update relayed before it left and applied after, a page of a sync that was under way; and that sync's
        marks, so that a platform registering the party id later starts with a full sync."""
        ids = await self._locations.location_ids(party)
        forgotten = await self._locations.forget(party, ids, (self._generation, generation)) if ids else 0
        marks = [self._locations.synced_key(party), self._locations.sync_failed_key(party)]
        if int(await self._delete(keys=[self._generation, *marks], args=[generation])) < 0:
            raise DirectoryChanged(f"the directory changed while {_text(party)}'s sync marks were deleted")
        return forgotten


class _Fence:
    """The directory generation the party id was last seen free in: no registered platform held it."""

    def __init__(self, pool: asyncpg.Pool, client: redis.Redis, generation_key: str, party: PartyKey) -> None:
        self._pool, self._redis, self._key, self._party = pool, client, generation_key, party
        self.generation = ""

    async def renew(self) -> None:
        """Read the generation, then PostgreSQL: a registration committed after that read bumps it again."""
        generation = await self._redis.get(self._key)
        async with self._pool.acquire() as conn:
            if await conn.fetchval(QUERIES["party_registered"], *self._party):
                raise _RegisteredAgain
        self.generation = _text(generation) if generation else "0"

    async def holding(self, remove: Callable[[str], Awaitable[int]]) -> int:
        """A removal in the generation seen; when the directory changed meanwhile, PostgreSQL is asked again."""
        while True:
            try:
                return await remove(self.generation)
            except DirectoryChanged:
                await self.renew()


def _names(owner: str, fields: str, field: bytes | str, value: bytes | str) -> bool:
    """Whether a hash's entry names the party: its field starts with `fields`, or its owner list holds `owner`."""
    return bool(fields and _text(field).startswith(fields)) or bool(owner and owner in _text(value).split(","))


def _text(value: bytes | str | PartyKey) -> str:
    if isinstance(value, tuple):
        return f"{value[0]}-{value[1]}"
    return value.decode() if isinstance(value, bytes) else value
