"""The location cache's writes: whole locations stored, pull sync's marks set.

Relayed updates reach it through storage.location_updates, pull sync's pages through put_many. Locations are
removed when a CPO's Sender no longer lists them or the CPO leaves the hub (storage.location_removals).

An update is applied a few ms after it was relayed, or, Redis slow or away, later: its CPO may have left the hub by
then, and its cleanup (storage.departed) have run, or its party id been registered again by another platform. So an
update carries the platform that pushed it, and, given the process's directory, only the locations of CPOs it holds on
that platform are stored, by scripts refused once the directory's generation moved on (DirectoryCache.fence); a
refused one is tried again once the directory has caught up.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import msgspec
import redis.asyncio as redis
import structlog
from redis.asyncio.client import Pipeline

from storage.directory import GENERATION_KEY, UNCHANGED_LUA, Directory, DirectoryCache
from storage.location_cap import (
    MAX_LOCATION_BYTES_PER_CPO,
    MAX_LOCATIONS_PER_CPO,
    bytes_key,
    over_cap_key,
    owner_field,
    said_refused,
    synced_key,
)
from storage.location_document import Index, TooLarge, trusted_until, whole_location
from storage.redis_scripts import executed, queue_script

log = structlog.get_logger()

STORE_TRIES = 5  # a store refused as the directory changes that often meanwhile is given up (pull sync repairs it)

# KEYS: the directory's generation, the document, the sorted sets of all and of the owner, the id index, the
# unpublished set, the entries, the CPOs over their cap, the bytes cached of each CPO (storage.location_cap), the order
# GET All lists them in (a location first cached is placed after every other; an update keeps its place). ARGV: the
# generation the owner was found on the hub in ('' for an unguarded store; UNCHANGED_LUA: -1 if it changed), member,
# score (last_updated), the document, "1" if unpublished, its publish_allowed_to entries, the latest cached score that
# keeps an older location out (trusted_until), the most locations and bytes the owner may have cached, the owner
# (CC/PID). Returns 1; 0 when the cached location is newer (storage.location_document): kept; past a cap (replies of
# storage.location_cap, one more when it marked the owner over its cap) 2: a new one, the owner holding its cap of
# locations; 4: a new one, past its cap of bytes; 6: a cached one grown past it, removed (its old copy is stale). The
# owner's bytes are those of its documents in its sorted set, changed here as they are.
_STORE = (
    UNCHANGED_LUA
    + """
local cached = tonumber(redis.call('ZSCORE', KEYS[4], ARGV[2]))
if cached and cached > tonumber(ARGV[3]) and cached <= tonumber(ARGV[7]) then return 0 end
local over, old = 0, 0
if cached then old = redis.call('STRLEN', KEYS[2]) end
local grown = #ARGV[4] - old
if not cached and redis.call('ZCARD', KEYS[4]) >= tonumber(ARGV[8]) then
  over = 2
elseif grown > 0 and (tonumber(redis.call('HGET', KEYS[9], ARGV[10])) or 0) + grown > tonumber(ARGV[9]) then
  over = 4
  if cached then
    over = 6
    redis.call('DEL', KEYS[2], KEYS[7])
    redis.call('ZREM', KEYS[3], ARGV[2])
    redis.call('ZREM', KEYS[4], ARGV[2])
    redis.call('SREM', KEYS[5], ARGV[2])
    redis.call('SREM', KEYS[6], ARGV[2])
    redis.call('ZREM', KEYS[10], ARGV[2])
    redis.call('HINCRBY', KEYS[9], ARGV[10], -old)
  end
end
if over > 0 then
  if redis.call('HINCRBY', KEYS[8], ARGV[10], 1) == 1 then return over + 1 end
  return over
end
redis.call('SET', KEYS[2], ARGV[4])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[2])
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[2])
redis.call('SADD', KEYS[5], ARGV[2])
if not redis.call('ZSCORE', KEYS[10], ARGV[2]) then  -- new, or cached by a hub that kept no order: placed last
  local last = redis.call('ZREVRANGE', KEYS[10], 0, 0, 'WITHSCORES')[2] or 0
  redis.call('ZADD', KEYS[10], tonumber(last) + 1, ARGV[2])
end
if ARGV[5] == '1' then
  redis.call('SADD', KEYS[6], ARGV[2])
  redis.call('SET', KEYS[7], ARGV[6])
else
  redis.call('SREM', KEYS[6], ARGV[2])
  redis.call('DEL', KEYS[7])
end
if grown ~= 0 then redis.call('HINCRBY', KEYS[9], ARGV[10], grown) end
return 1
"""
)


# KEYS: the directory's generation, a pull-sync mark. ARGV: the generation the owner was found on the hub in ('' for an
# unguarded write; UNCHANGED_LUA: -1 if it changed), the value, seconds to keep it (0: for ever).
_MARK = (
    UNCHANGED_LUA
    + """
if ARGV[3] == '0' then redis.call('SET', KEYS[2], ARGV[2]) else redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3]) end
return 1
"""
)


# a whole location to store: owner, platform id, id, document, index
WholeLocation = tuple[tuple[str, str], int, str, bytes, Index]


class Listed(NamedTuple):
    """The locations of a pull-sync page, by their ids as the cache keys them: those the cache holds now (stored, or a
    newer version kept), and those refused, or dropped, for their CPO's caps (storage.location_cap)."""

    kept: list[str]
    refused: list[str]


class LocationWriter:
    """directory: this process's, whose CPOs alone get locations stored (none: every location is, unguarded);
    max_per_cpo, max_bytes_per_cpo: the most locations of one CPO, and bytes of their documents, the cache holds
    (storage.location_cap)."""

    def __init__(self, client: redis.Redis, prefix: str, directory: DirectoryCache | None = None,
                 max_per_cpo: int = MAX_LOCATIONS_PER_CPO,
                 max_bytes_per_cpo: int = MAX_LOCATION_BYTES_PER_CPO) -> None:  # fmt: skip
        self._redis, self.max_per_cpo, self.max_bytes_per_cpo = client, max_per_cpo, max_bytes_per_cpo
        self._prefix, self._p = prefix, f"{prefix}locations:"
        self._directory, self._generation_key = directory, f"{prefix}{GENERATION_KEY}"
        self._store_script = client.register_script(_STORE)
        self._mark_script = client.register_script(_MARK)

    def _member(self, owner: tuple[str, str], location_id: str) -> str:
        return owner_part(owner) + keyed(location_id)

    def _doc(self, member: str) -> str:
        return f"{self._p}doc:{member}"

    def _entries(self, member: str) -> str:
        return f"{self._p}publish-to:{member}"

    def _by_owner(self, owner: tuple[str, str]) -> str:
        return f"{self._p}by-owner:{owner[0].upper()}/{owner[1].upper()}"

    async def put_many(self, owner: tuple[str, str], platform_id: int, locations: list[msgspec.Raw]) -> Listed:
        """Whole locations as the Sender of a CPO on that platform listed them (pull sync), each stored as the CPO sent
        it. Only the owner's own are taken (transport_and_format.asciidoc, Client Owned Object Pull: objects of another
        owner "may be ignored"). Returns their ids, as the cache keys them (see location_ids): those it holds, and
        those refused for the cap."""
        taken = []
        for raw in locations:
            try:
                head, index = whole_location(raw)
            except ValueError as exc:
                not_cached(exc, owner=owner)
                continue
            listed_by = (str(head.country_code or "").upper(), str(head.party_id or "").upper())
            if isinstance(head.id, str) and head.id and listed_by == owner:
                taken.append((owner, platform_id, head.id, bytes(raw), index))
        stored, newer_cached, refused = await self._store_many(taken)
        return Listed([keyed(each[2]) for each in stored + newer_cached], [keyed(each[2]) for each in refused])

    async def _store_many(
        self, locations: list[WholeLocation]
    ) -> tuple[list[WholeLocation], list[WholeLocation], list[WholeLocation]]:
        """Whole locations, stored in one pipeline: those of CPOs on the hub. Returns those stored, those not stored
        because the cache holds a newer version of them, and those refused as their CPO's cache holds its cap."""
        stored: list[WholeLocation] = []
        newer_cached: list[WholeLocation] = []
        refused: list[WholeLocation] = []
        for _ in range(STORE_TRIES):
            directory, generation = self._fence()
            if len(kept := [each for each in locations if holds(directory, each[0], each[1])]) < len(locations):
                log.info("location_cache_skipped", locations=len(locations) - len(kept),
                         reason="their CPO is no longer on the hub")  # fmt: skip
            if not kept:
                break

            def queue(pipe: Pipeline, kept: list[WholeLocation] = kept, generation: str = generation) -> None:
                for owner, _, location_id, document, index in kept:
                    self._queue_store(pipe, owner, location_id, document, index, generation)

            replies = await executed(self._redis, queue, [self._store_script])
            stored += [each for each, reply in zip(kept, replies, strict=True) if reply == 1]
            newer_cached += [each for each, reply in zip(kept, replies, strict=True) if reply == 0]
            if over := [(each, reply) for each, reply in zip(kept, replies, strict=True) if reply > 1]:
                said_refused([(each[0], each[2], reply) for each, reply in over], self.max_per_cpo,
                             self.max_bytes_per_cpo)  # fmt: skip
                refused += [each for each, _ in over]
            if not (locations := [each for each, reply in zip(kept, replies, strict=True) if reply == -1]):
                break
            await self._caught_up()  # the directory changed since it was read: again, as it is now
        else:
            log.warning("location_cache_skipped", locations=len(locations), reason="the directory kept changing")
        if newer_cached:
            names = [f"{owner[0]}-{owner[1]}/{location_id}" for owner, _, location_id, _, _ in newer_cached]
            log.info("location_cache_skipped", reason="older than the cached location", locations=names[:20])
        return stored, newer_cached, refused

    async def mark(self, key: str, owner: tuple[str, str], platform_id: int, value: str, ex_s: int = 0) -> bool:
        """Set a pull-sync mark of the owner's (synced_key, sync_failed_key) for ex_s seconds (0: for
        ever) while that platform holds it, fenced as a store is: a mark set after the departed party's cleanup deleted
        it would make a platform registering its id later start with an incremental sync. Whether it was set."""
        for _ in range(STORE_TRIES):
            directory, generation = self._fence()
            if not holds(directory, owner, platform_id):
                return False
            if await self._mark_script(keys=[self._generation_key, key], args=[generation, value, ex_s]) != -1:
                return True
            await self._caught_up()  # the directory changed since it was read: again, as it is now
        return False

    async def location_ids(self, owner: tuple[str, str]) -> set[str]:
        """The ids the owner's cached locations are keyed by: upper-cased (until storage.location_upgrades moved
        them, as sent for those a hub before ids were upper-cased cached)."""
        start = len(owner_part(owner))
        return {text_of(member)[start:] for member in await self._redis.zrange(self._by_owner(owner), 0, -1)}

    def synced_key(self, owner: tuple[str, str]) -> str:
        """Pull sync's mark of the owner (storage.location_cap.synced_key)."""
        return synced_key(self._prefix, owner)

    def sync_failed_key(self, owner: tuple[str, str]) -> str:
        """Pull sync's mark of an owner whose Sender failed: not asked again while it lasts."""
        return f"{self._p}sync-failed:{owner[0]}/{owner[1]}"

    def _fence(self) -> tuple[Directory | None, str]:
        return self._directory.fence() if self._directory else (None, "")

    async def _caught_up(self) -> None:
        if self._directory:
            await self._directory.catch_up()

    def _queue_store(self, pipe: Pipeline, owner: tuple[str, str], location_id: str, document: bytes,
                     index: Index, generation: str) -> None:  # fmt: skip
        """Queue the script that stores one location with its index entries (one command instead of six), only while
        the directory is in the generation given ('': unguarded)."""
        member = self._member(owner, location_id)
        keys = [self._generation_key, self._doc(member), f"{self._p}all", self._by_owner(owner),
                f"{self._p}id:{member.split('/', 2)[2]}", f"{self._p}hidden", self._entries(member),
                over_cap_key(self._prefix), bytes_key(self._prefix), order_key(self._prefix)]  # fmt: skip
        args: list[bytes | str | float] = [generation, member, index.score, document, "1" if index.hidden else "0",
                                           index.entries, trusted_until(), self.max_per_cpo, self.max_bytes_per_cpo,
                                           owner_field(owner)]  # fmt: skip
        queue_script(pipe, self._store_script, keys, args)


def order_key(prefix: str) -> str:
    """The sorted set of the order GET All lists the locations in: member -> its place, 1 for the first the cache held,
    each new one one past the last. An update keeps its place, so a location changed while a client pages a GET All by
    offset moves none of the others (transport_and_format.asciidoc, Paginated Response: "the sequence of objects
    mustn't change, or as little as possible. It is best practice to [...] order the objects by creation date")."""
    return f"{prefix}locations:order"


def not_cached(why: str | ValueError, **where: Any) -> None:
    """Log why a location update or document was not cached: a warning for one too large (TooLarge), which the
    operator may want to take up with its CPO; the ordinary reasons (a newer one cached, no last_updated) at info."""
    if isinstance(why, TooLarge):
        log.warning("location_cache_too_large", reason=str(why), **where)
    else:
        log.info("location_cache_skipped", reason=str(why), **where)


def keyed(location_id: str) -> str:
    # types.asciidoc: "CiString: Case Insensitive String. Only printable ASCII allowed." (Location.id is a
    # CiString(36)): upper-cased in the keys, as sent in the document
    return location_id.upper()


def holds(directory: Directory | None, owner: tuple[str, str], platform_id: int) -> bool:
    """Whether a location of the owner, pushed or listed by that platform, may be stored: given no directory, always."""
    return directory is None or directory.holds((owner[0].upper(), owner[1].upper()), platform_id)


def owner_part(owner: tuple[str, str]) -> str:
    return f"{owner[0].upper()}/{owner[1].upper()}/"


def text_of(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
