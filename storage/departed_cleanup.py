"""One cleanup of the routing indexes in Redis after parties that left the hub: one pass per hash for all of them.

What goes: in the owner hashes (storage.owner_index: locations, tokens, and this period's and the previous one's of
sessions, session receivers and reservations) a departed party leaves an entry's owners and the others stay; the
session receivers it noted as a session's CPO, the reservations it made as an eMSP, its token records, visual numbers
and groups (storage.publish_tokens) and the locations it still has cached, with their publish_allowed_to entries and
its pull-sync marks, go whole. The
owner hash of a hub before periods is not swept: its take-over keeps only owners on the hub (storage.owner_upgrades).

The hashes are large and are read with HSCAN a chunk at a time, once for every party that left (a platform with many
party ids, or several platforms leaving together): each chunk's entries naming any of them are removed by one script,
which reads them again, so a chunk holds Redis a few ms at most and nothing is lost that changed since the scan.
Where only fields can name a party (the token hashes), Redis sends only the fields that may begin with one of theirs.

A party id may be registered again before its cleanup runs, and then its entries may be the new platform's: the index
keeps no time per entry, so "older than the departure" cannot be told. So each removal is checked against the
directory at the moment it runs, inside its script (storage.directory.UNCHANGED_LUA): the cleanup reads the
directory's generation, then asks PostgreSQL which of the parties a registered platform holds, and each script removes
only while the generation is still the one read. A registration is committed, then announced by bumping the
generation, before the party can push anything (it gets its token C in the answer to its credentials POST; after
`ocpi-hub connect`, the hub processes take its token as C once they reload on that bump): a script that runs after a
new registration finds the generation moved and removes nothing. The cleanup then asks PostgreSQL again and goes on
for the parties no registered platform holds (another change, an invitation, another platform's registration, stops
none of them: an invited platform has pushed nothing yet); one held again keeps what is left, the old platform's
entries too, which the cleanup can no longer tell from the new one's.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

import asyncpg
import redis.asyncio as redis
import structlog

from storage.directory import GENERATION_KEY, UNCHANGED_LUA, DirectoryChanged
from storage.location_cache import LocationCache
from storage.owner_index import KEYED_BY_PARTY
from storage.publish_tokens import index_keys, owner_fields
from storage.routing_state import RoutingState
from storage.sql import QUERIES

log = structlog.get_logger()

PartyKey = tuple[str, str]
SCAN_CHUNK = 1000  # fields an HSCAN reads at a time
_T = TypeVar("_T")
_Entries = dict[bytes | str, bytes | str]  # an HSCAN's fields and values

# KEYS: the directory's generation, a hash. ARGV: the generation read, how many parties (n), each party as an owner
# list names it (CC-PID; '' where values are no owner lists), the start of the fields naming each ('' where none do),
# then fields. A field naming a party goes; an owner list ("CC-PID,CC-PID") loses the parties and keeps the others.
# Returns how many fields changed, per party.
_REMOVE = (
    UNCHANGED_LUA
    + """
local n = tonumber(ARGV[2])
local owners, changed = {}, {}
for p = 1, n do
  changed[p] = 0
  if ARGV[2 + p] ~= '' then owners[ARGV[2 + p]] = p end
end
for i = 3 + 2 * n, #ARGV do
  local field, whole = ARGV[i], nil
  for p = 1, n do
    local start = ARGV[2 + n + p]
    if start ~= '' and string.sub(field, 1, #start) == start then
      whole = p
      break
    end
  end
  if whole then
    changed[whole] = changed[whole] + redis.call('HDEL', KEYS[2], field)
  elseif next(owners) then
    local kept, named = {}, {}
    for owner in string.gmatch(redis.call('HGET', KEYS[2], field) or '', '[^,]+') do
      if owners[owner] then named[owners[owner]] = true else kept[#kept + 1] = owner end
    end
    if next(named) and #kept == 0 then
      redis.call('HDEL', KEYS[2], field)
    elseif next(named) then
      redis.call('HSET', KEYS[2], field, table.concat(kept, ','))
    end
    for p in pairs(named) do changed[p] = changed[p] + 1 end
  end
end
return changed
"""
)
# KEYS: the directory's generation, then keys to delete. ARGV: the generation read. Returns how many were there.
_DELETE = UNCHANGED_LUA + "return redis.call('DEL', unpack(KEYS, 2))\n"


@dataclass(frozen=True)
class _Index:
    name: str  # for the log
    key: str
    owner_lists: bool  # whether its values are owner lists ("CC-PID,CC-PID")
    fields: Callable[[PartyKey], str]  # the start of the fields naming a party, '' where none do


class Cleanup:
    def __init__(self, pool: asyncpg.Pool, client: redis.Redis, prefix: str, routing: RoutingState,
                 locations: LocationCache) -> None:  # fmt: skip
        self._pool, self._redis, self._prefix = pool, client, prefix
        self._routing, self._locations = routing, locations
        self._generation = f"{prefix}{GENERATION_KEY}"
        self._remove = client.register_script(_REMOVE)
        self._delete = client.register_script(_DELETE)

    async def clean(self, parties: Iterable[PartyKey], keep: Callable[[], Awaitable[None]]
                    ) -> dict[PartyKey, dict[str, int] | None]:  # fmt: skip
        """Remove the parties' entries from every index, calling keep() as it goes (it may stop the cleanup by
        raising); returns how many each index lost per party, None for a party a registered platform holds (again),
        which keeps what is left."""
        fence = _Fence(self._pool, self._redis, self._generation, parties)
        removed: dict[PartyKey, dict[str, int]] = {party: {} for party in fence.parties}
        await fence.renew()
        for index in self._indexes():
            for counts in removed.values():
                counts[index.name] = counts.get(index.name, 0)
            await self._sweep(index, fence, removed, keep)
        for party in list(fence.parties):
            await keep()
            removed[party]["cached_locations"] = 0
            await fence.holding(functools.partial(self._forget_locations, party, removed))
        for party, counts in removed.items():
            if party in fence.parties:
                log.info("departed_party_cleaned", party=_text(party), **counts)
            else:
                log.info("departed_party_kept", party=_text(party), reason="a registered platform holds its id again",
                         **counts)  # fmt: skip
        return {party: counts if party in fence.parties else None for party, counts in removed.items()}

    def _indexes(self) -> list[_Index]:
        indexes = []
        for module, key in self._routing.owner_keys():
            fields = _party_fields if module in KEYED_BY_PARTY else _no_fields
            indexes.append(_Index(module.replace("-", "_"), key, True, fields))
        names = ("publish_tokens", "publish_visual_numbers", "publish_groups")
        for name, key in zip(names, index_keys(self._prefix), strict=True):
            indexes.append(_Index(name, key, False, _token_fields))
        return indexes

    async def _sweep(self, index: _Index, fence: _Fence, removed: dict[PartyKey, dict[str, int]],
                     keep: Callable[[], Awaitable[None]]) -> None:  # fmt: skip
        """One hash, a chunk at a time: each chunk's fields naming any of the parties go in one script."""
        match = None if index.owner_lists else _pattern([index.fields(party) for party in fence.parties])
        cursor = 0
        while fence.parties:
            await keep()
            cursor, entries = await self._redis.hscan(index.key, cursor, match=match, count=SCAN_CHUNK)
            assert isinstance(entries, dict)  # fields and values, as no_values was not asked for
            await fence.holding(functools.partial(self._remove_named, index, entries, removed))
            if not cursor:
                return

    async def _remove_named(self, index: _Index, entries: _Entries, removed: dict[PartyKey, dict[str, int]],
                            generation: str, parties: list[PartyKey]) -> None:  # fmt: skip
        owners = [_text(party) if index.owner_lists else "" for party in parties]
        starts = [index.fields(party) for party in parties]
        begins, listed = tuple(start for start in starts if start), {owner for owner in owners if owner}
        named = [_text(field) for field, value in entries.items()
                 if (begins and _text(field).startswith(begins))
                 or (listed and not listed.isdisjoint(_text(value).split(",")))]  # fmt: skip
        if not named:
            return
        changed = await self._remove(keys=[self._generation, index.key],
                                     args=[generation, len(parties), *owners, *starts, *named])  # fmt: skip
        if not isinstance(changed, list):  # -1
            raise DirectoryChanged(f"the directory changed while departed parties left {index.key}")
        for party, count in zip(parties, changed, strict=True):
            removed[party][index.name] += int(count)

    async def _forget_locations(self, party: PartyKey, removed: dict[PartyKey, dict[str, int]], generation: str,
                                parties: list[PartyKey]) -> None:  # fmt: skip
        """The locations still cached for a CPO that left (LocationCache.forget_platform forgot those cached then):
        an update relayed before it left and applied after, a page of a sync that was under way; and that sync's
        marks, so that a platform registering the party id later starts with a full sync. Each location removed is
        counted, also by a try the directory's change cut short."""
        if party not in parties:  # held again since
            return
        if ids := await self._locations.location_ids(party):
            try:
                removed[party]["cached_locations"] += await self._locations.forget(
                    party, ids, (self._generation, generation))  # fmt: skip
            except DirectoryChanged as changed:
                removed[party]["cached_locations"] += changed.done
                raise
        marks = [self._locations.synced_key(party), self._locations.sync_failed_key(party)]
        if int(await self._delete(keys=[self._generation, *marks], args=[generation])) < 0:
            raise DirectoryChanged(f"the directory changed while {_text(party)}'s sync marks were deleted")


class _Fence:
    """The departed parties no registered platform holds, and the directory generation they were last seen so in."""

    def __init__(self, pool: asyncpg.Pool, client: redis.Redis, generation_key: str, parties: Iterable[PartyKey]
                 ) -> None:  # fmt: skip
        self._pool, self._redis, self._key = pool, client, generation_key
        self.parties = sorted(set(parties))
        self.generation = ""

    async def renew(self) -> None:
        """Read the generation, then PostgreSQL: a registration committed after that read bumps it again."""
        generation = await self._redis.get(self._key)
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(QUERIES["registered_parties"], [_text(party) for party in self.parties])
        held = {row["party"] for row in rows}
        self.parties = [party for party in self.parties if _text(party) not in held]
        self.generation = _text(generation) if generation else "0"

    async def holding(self, remove: Callable[[str, list[PartyKey]], Awaitable[_T]]) -> _T | None:
        """A removal in the generation seen, for the parties still departed; when the directory changed meanwhile,
        PostgreSQL is asked again. None once a registered platform holds every one of them."""
        while self.parties:
            try:
                return await remove(self.generation, self.parties)
            except DirectoryChanged:
                await self.renew()
        return None


def _party_fields(party: PartyKey) -> str:
    """A session's receivers are kept by its CPO and id, a reservation by its eMSP and id (storage.owner_index
    KEYED_BY_PARTY): "CC/PID/id"."""
    return f"{party[0]}/{party[1]}/"


def _token_fields(party: PartyKey) -> str:
    return owner_fields(_text(party))


def _no_fields(party: PartyKey) -> str:
    return ""


def _pattern(starts: list[str]) -> str:
    """An HSCAN MATCH pattern for the fields beginning with one of these starts, or a few more: where they differ,
    any of their characters (or, unless all are letters and digits, any character) is taken at that position."""
    pattern = []
    for chars in zip(*starts, strict=False):  # up to the shortest: '*' takes the rest
        distinct = sorted(set(chars))
        if len(distinct) == 1:
            pattern.append(re.sub(r"([*?\[\]\\])", r"\\\1", distinct[0]))
        elif all(char.isascii() and char.isalnum() for char in distinct):
            pattern.append(f"[{''.join(distinct)}]")
        else:
            pattern.append("?")
    return "".join(pattern) + "*"


def _text(value: bytes | str | PartyKey) -> str:
    if isinstance(value, tuple):
        return f"{value[0]}-{value[1]}"
    return value.decode() if isinstance(value, bytes) else value
