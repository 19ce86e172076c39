"""The location cache's removals: the locations a CPO's Sender no longer lists, or all of its, once it leaves the hub.

Pull sync removes what a full sync no longer listed (forget_unlisted), fenced by the directory as its pages are stored
(storage.location_writer); a platform that leaves the hub has its CPOs' locations forgotten at once (forget_platform),
and what was stored of them later still by the departed party's cleanup (storage.departed), guarded by the directory's
generation it read (forget). Each removal takes the location's index entries and its bytes off its CPO's count
(storage.location_cap) in the same script call.
"""

from __future__ import annotations

from collections.abc import Iterable

import redis.asyncio as redis
import structlog

from storage.directory import UNCHANGED_LUA, DirectoryCache, DirectoryChanged, PartyRole
from storage.location_cap import MAX_LOCATION_BYTES_PER_CPO, MAX_LOCATIONS_PER_CPO, bytes_key, over_cap_key, owner_field
from storage.location_writer import STORE_TRIES, LocationWriter, order_key, owner_part

log = structlog.get_logger()

# KEYS: the directory's generation, the sorted sets of all and of the owner, the unpublished set, the bytes cached of
# each CPO (storage.location_cap), the order GET All lists them in (storage.location_writer.order_key). ARGV: for a
# CPO that left the hub the generation its cleanup read (UNCHANGED_LUA: -1 if it changed), else '', the key prefix of
# documents, id index entries and publish_allowed_to entries, then the members to forget (of one owner). Returns how
# many were cached.
_FORGET = (
    UNCHANGED_LUA
    + """
local forgotten = 0
for i = 3, #ARGV do
  local m = ARGV[i]
  local owner, id = string.match(m, '^([^/]*/[^/]*)/(.*)$')
  if redis.call('ZREM', KEYS[3], m) == 1
     and redis.call('HINCRBY', KEYS[5], owner, -redis.call('STRLEN', ARGV[2] .. 'doc:' .. m)) <= 0 then
    redis.call('HDEL', KEYS[5], owner)  -- none left: no field kept
  end
  redis.call('DEL', ARGV[2] .. 'doc:' .. m, ARGV[2] .. 'publish-to:' .. m)
  forgotten = forgotten + redis.call('ZREM', KEYS[2], m)
  redis.call('SREM', KEYS[4], m)
  redis.call('ZREM', KEYS[6], m)
  redis.call('SREM', ARGV[2] .. 'id:' .. id, m)
  redis.call('SREM', ARGV[2] .. 'id:' .. string.upper(id), m)
end
return forgotten
"""
)


class LocationRemovals(LocationWriter):
    """A CPO's cached locations removed, by the writer's keys and its fence (storage.location_writer)."""

    def __init__(self, client: redis.Redis, prefix: str, directory: DirectoryCache | None = None,
                 max_per_cpo: int = MAX_LOCATIONS_PER_CPO,
                 max_bytes_per_cpo: int = MAX_LOCATION_BYTES_PER_CPO) -> None:  # fmt: skip
        super().__init__(client, prefix, directory, max_per_cpo, max_bytes_per_cpo)
        self._forget_script = client.register_script(_FORGET)

    async def forget_platform(self, roles: Iterable[PartyRole]) -> None:
        """A platform that left the hub: the locations of its CPO roles are no longer offered, and should one come
        back, its first sync is a full one. Best effort: the platform has left whatever Redis says (a failure is
        logged)."""
        for owner in (role.key for role in roles if role.role == "CPO"):
            try:
                forgotten = await self.forget(owner, await self.location_ids(owner))
                await self._redis.delete(self.synced_key(owner), self.sync_failed_key(owner))
                await self._redis.hdel(over_cap_key(self._prefix), owner_field(owner))
                await self._redis.hdel(bytes_key(self._prefix), owner_field(owner))
            except redis.RedisError as exc:
                log.warning("location_cache_not_cleared", owner=f"{owner[0]}-{owner[1]}", error=str(exc))
            else:
                log.info("location_cache_cleared", owner=f"{owner[0]}-{owner[1]}", locations=forgotten)

    async def forget(
        self, owner: tuple[str, str], location_ids: set[str], unchanged: tuple[str, str] | None = None
    ) -> int:
        """Remove these locations of the owner, with their index entries; returns how many there were. The ids are
        taken as the cache keys them (location_ids): a location keyed as sent by an earlier hub can be removed.
        unchanged: (the directory's generation key, the generation read) for a CPO that left the hub: each chunk is
        removed only while the directory is that one, else DirectoryChanged (storage.departed)."""
        members = [owner_part(owner) + location_id for location_id in sorted(location_ids)]
        keys = [unchanged[0] if unchanged else self._generation_key, *self._forget_keys(owner)]
        forgotten = 0
        for start in range(0, len(members), 1000):  # one script call at a time holds Redis a few ms at most
            args = [unchanged[1] if unchanged else "", self._p, *members[start : start + 1000]]
            if (count := int(await self._forget_script(keys=keys, args=args))) < 0:
                raise DirectoryChanged(f"the directory changed while {owner[0]}-{owner[1]}'s locations were forgotten",
                                       forgotten)  # fmt: skip
            forgotten += count
        return forgotten

    async def forget_unlisted(self, owner: tuple[str, str], platform_id: int, location_ids: set[str]) -> int | None:
        """Pull sync's removal of the owner's locations a full sync of that platform's Sender no longer listed, fenced
        as its pages are stored (put_many): only while the directory holds the owner on that platform,
        checked inside each script, so that a platform registering the party id since keeps what it pushed, however
        late the sync gets here. How many there were; None once the directory no longer holds it there."""
        removed = 0  # by the chunks of the tries before: a try removes only what is still cached
        for _ in range(STORE_TRIES):
            directory, generation = self._fence()
            if directory is not None and not directory.holds((owner[0].upper(), owner[1].upper()), platform_id):
                return None
            try:
                return removed + await self.forget(owner, location_ids, (self._generation_key, generation))
            except DirectoryChanged as changed:  # again, as the directory is now
                removed += changed.done
                await self._caught_up()
        log.warning("location_cache_not_cleared", owner=f"{owner[0]}-{owner[1]}", reason="the directory kept changing")
        return removed

    def _forget_keys(self, owner: tuple[str, str]) -> list[str]:
        return [f"{self._p}all", self._by_owner(owner), f"{self._p}hidden", bytes_key(self._prefix),
                order_key(self._prefix)]  # fmt: skip
