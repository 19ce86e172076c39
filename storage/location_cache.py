"""Every CPO's locations in Redis: kept current by the pushes the hub relays and by pull sync, read by GET All.

One JSON document per location (EVSEs and connectors inside it, as the CPO sent them), a sorted set per owner
and one for all owners ordered by last_updated (what date_from and date_to select by), one of the order GET All lists
them in (the order the cache first held each: storage.location_writer.order_key), a set of the unpublished ones and,
per unpublished location, its publish_allowed_to entries as storage.publish_tokens's matcher reads them (one string).
Updates follow the Receiver rules of mod_locations.asciidoc (storage.location_document). Redis is a cache: what is lost
is fetched again from the CPOs by pull sync.

A location is keyed by its owner and its id upper-cased (`CC/PID/LOC1`, the member of the sets, and `id:LOC1`), since a
Location.id is a CiString: a PATCH of `loc1` changes the location pushed as `LOC1`. Its document stays as the CPO sent
it.

What earlier hubs cached is brought up to this version once per cache, at the first start after the upgrade
(storage.location_upgrades): a location a hub before ids were upper-cased keyed by its id as sent (`CC/PID/loc1`) moves
to its upper-cased key. Until its move (a moment), such a location is found by a single GET only if the hub version
before this one indexed it under its upper-cased id (its start-up pass did), a PATCH of it is not applied (pull sync
brings it back), and a PUT of it is listed beside it by GET All until the move keeps the newer of the two.

Its writes are storage.location_writer's (relayed updates reach it through storage.location_updates, pull sync's pages
directly), its removals storage.location_removals'; the reads, for GET All and single GETs via the hub and for open
routing, are here.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Collection
from typing import Any

import msgspec
import redis.asyncio as redis
import structlog

from storage.directory import DirectoryCache
from storage.location_cap import (
    MAX_LOCATION_BYTES_PER_CPO,
    MAX_LOCATIONS_PER_CPO,
    cached_counts,
    not_complete,
    over_cap,
    synced_at,
)
from storage.location_removals import LocationRemovals
from storage.location_updates import RelayedUpdates
from storage.location_writer import keyed, order_key, text_of
from storage.publish_tokens import ALLOWED_LUA, MATCH_LUA, index_keys, publish_entries

log = structlog.get_logger()

SNAPSHOTS_PER_VIEWER = 20  # GET Alls a party can walk at once; starting one more expires its oldest
# a client walking the pages of one GET All gets the same list until it has not read a page for this long
SNAPSHOT_TTL_S = 900

# The most bytes of documents a GET All page holds: it ends early, before the document that would pass this (one
# document at least), and its Link leads on (transport_and_format.asciidoc, Pagination: X-Limit is the upper limit,
# "fewer objects than this upper limit number will be returned"). 1,000 real locations are about 1.2 MB; a CPO's
# few-MB documents made pages of 80 MB (security review, finding 3).
PAGE_BYTES = 4_000_000

_decode = msgspec.json.decode


# KEYS: a snapshot list. ARGV: offset, how many members at most, the bytes left in the page, the documents' key prefix,
# "1" when the page holds a document already. Returns how many members from offset on have documents that fit (a
# member whose document is gone counts 0 bytes); the first of an empty page always fits. STRLEN reads no document.
_FITTING = """
local members = redis.call('LRANGE', KEYS[1], ARGV[1], ARGV[1] + ARGV[2] - 1)
local budget, used, fit = tonumber(ARGV[3]), 0, 0
for i, m in ipairs(members) do
  used = used + redis.call('STRLEN', ARGV[4] .. m)
  if used > budget and (i > 1 or ARGV[5] == '1') then break end
  fit = i
end
return fit
"""


# KEYS: the source sorted set, the set of unpublished members, the snapshot list, the viewer's list of snapshots, the
# relayed tokens' hashes (storage.publish_tokens), GET All's order (storage.location_writer.order_key), a key to sort
# in (deleted before the script ends). ARGV: date_from, date_to ('': none; seconds since the epoch), the viewer's
# member prefix (its own unpublished ones stay), TTL in seconds, the viewer as CC-PID, the key prefix of each
# unpublished location's entries, how many snapshots a viewer keeps, 1 to keep the snapshot (else it is only counted).
# A location without entries (cached by a hub before they were kept, until storage.location_upgrades derived them) is
# its owner's only.
_SNAPSHOT = (
    MATCH_LUA
    + """
local function shown(m)
  local entries = redis.call('GET', ARGV[6] .. m)
  return entries and allowed(entries, ARGV[5], KEYS[5], KEYS[6], KEYS[7])
end
-- transport_and_format.asciidoc, Pagination: date_from "after or equal to", date_to "not including"
local low, high = ARGV[1] == '' and '-inf' or ARGV[1], ARGV[2] == '' and '+inf' or '(' .. ARGV[2]
local keep = ARGV[8] == '1'  -- else only counted: a GET All with limit=0 walks no pages
redis.call('DEL', KEYS[3])  -- a new snapshot: empty, also when a broken connection made the client send it again
local members
if keep then  -- those in the window in GET All's order, if every one has a place in it (storage.location_upgrades)
  local window = redis.call('ZRANGESTORE', KEYS[9], KEYS[1], low, high, 'BYSCORE')
  if window > 0 and redis.call('ZINTERSTORE', KEYS[9], 2, KEYS[9], KEYS[8], 'WEIGHTS', 0, 1) == window then
    members = redis.call('ZRANGE', KEYS[9], 0, -1)
  end
  redis.call('DEL', KEYS[9])
end
members = members or redis.call('ZRANGEBYSCORE', KEYS[1], low, high)  -- by last_updated, as a hub before the order
local filter = redis.call('SCARD', KEYS[2]) > 0
local batch, total = {}, 0
for _, m in ipairs(members) do
  if not filter or string.sub(m, 1, #ARGV[3]) == ARGV[3] or redis.call('SISMEMBER', KEYS[2], m) == 0
     or shown(m) then
    if keep then batch[#batch + 1] = m else total = total + 1 end
    if #batch == 4000 then redis.call('RPUSH', KEYS[3], unpack(batch)); total = total + #batch; batch = {} end
  end
end
if #batch > 0 then redis.call('RPUSH', KEYS[3], unpack(batch)); total = total + #batch end
if keep and total > 0 then
  redis.call('EXPIRE', KEYS[3], ARGV[4])
  -- the viewer's live snapshots, newest first: beyond ARGV[7] the oldest are dropped, so that a client starting
  -- GET All over and over cannot fill Redis
  redis.call('LPUSH', KEYS[4], KEYS[3])
  for _, old in ipairs(redis.call('LRANGE', KEYS[4], ARGV[7], -1)) do redis.call('DEL', old) end
  redis.call('LTRIM', KEYS[4], 0, ARGV[7] - 1)
  redis.call('EXPIRE', KEYS[4], ARGV[4])
end
return total
"""
)


class LocationCache(RelayedUpdates, LocationRemovals):
    """The location cache: relayed updates (storage.location_updates) and removals (storage.location_removals), both
    through its writer (storage.location_writer), and the reads here."""

    def __init__(self, client: redis.Redis, prefix: str, directory: DirectoryCache | None = None,
                 max_per_cpo: int = MAX_LOCATIONS_PER_CPO,
                 max_bytes_per_cpo: int = MAX_LOCATION_BYTES_PER_CPO) -> None:  # fmt: skip
        super().__init__(client, prefix, directory, max_per_cpo, max_bytes_per_cpo)
        self._publish_tokens = index_keys(prefix)  # kept by storage.owner_index
        self._snapshot = client.register_script(_SNAPSHOT)
        self._fitting = client.register_script(_FITTING)
        self._allowed = client.register_script(ALLOWED_LUA)

    async def over_cap(self) -> dict[tuple[str, str], int]:
        """The CPOs whose caches are over their cap, each with the locations refused since (storage.location_cap)."""
        return await over_cap(self._redis, self._prefix)

    async def not_complete(self, on_hub: Collection[tuple[str, str]],
                           synced_by_pull: list[tuple[str, str]]) -> dict[tuple[str, str], str]:  # fmt: skip
        """The CPOs whose caches may miss some of their locations, with why (storage.location_cap.not_complete)."""
        return await not_complete(self._redis, self._prefix, on_hub, synced_by_pull)

    async def synced_at(self, owners: list[tuple[str, str]]) -> list[str | None]:
        """When each CPO's last successful pull sync began (None: never, since its cache was emptied)."""
        return await synced_at(self._redis, self._prefix, owners)

    async def cached_counts(self, owners: list[tuple[str, str]]) -> list[tuple[int, int]]:
        """How many locations, and bytes of their documents, the cache holds of each of these CPOs."""
        return await cached_counts(self._redis, self._prefix, owners)

    async def owners_seen_by(
        self, location_id: str, viewer: tuple[str, str]
    ) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """The CPOs of the cached locations with this id in any case (ids are unique per CPO only): (those the viewer
        may see, those it may not: visible_to). A command routed by an unpublished location would tell an eMSP that
        it exists, and whose it is."""
        shown: list[tuple[str, str]] = []
        hidden: list[tuple[str, str]] = []
        for owner, location in await self.find(location_id):
            (shown if await self.visible_to(location, owner, viewer) else hidden).append(owner)
        return shown, hidden

    async def find(self, location_id: str) -> list[tuple[tuple[str, str], dict[str, Any]]]:
        """The cached locations with this id in any case, whoever owns them (ids are unique per CPO only)."""
        members = sorted(text_of(m) for m in await self._redis.smembers(f"{self._p}id:{keyed(location_id)}"))
        docs = await self._redis.mget([self._doc(m) for m in members]) if members else []
        found = []
        for member, raw in zip(members, docs, strict=True):
            if raw:
                country, party, _ = member.split("/", 2)
                try:
                    found.append(((country, party), _decode(raw)))
                except RecursionError:  # stored, just, from a shallower stack: as good as not cached
                    log.warning("location_cache_unreadable", location=member, reason="nested too deeply")
        return found

    async def visible_to(self, location: dict[str, Any], owner: tuple[str, str], viewer: tuple[str, str]) -> bool:
        """A location is shown to everyone, unless publish is false: then to its owner and the eMSPs of the tokens that
        match an entry of publish_allowed_to (the hub knows them from the token pushes it relayed), one of several
        eMSPs with such tokens as well as the only one. The entries come from the document read, not its index."""
        if location.get("publish") is not False or owner == viewer:
            return True
        entries = publish_entries(location.get("publish_allowed_to"))
        return (
            bool(entries)
            and await self._allowed(keys=self._publish_tokens, args=[entries, f"{viewer[0]}-{viewer[1]}"]) == 1
        )

    async def snapshot(
        self,
        owner: tuple[str, str] | None,
        date_from: float | None,
        date_to: float | None,
        viewer: tuple[str, str],
        keep: bool = True,
    ) -> tuple[str, int]:
        """Freeze the list a GET All pages through: (snapshot id, total). Unpublished ones only for their owner. keep
        False: only counted, nothing stored (a GET All with limit=0, which has no page to follow, takes no place among
        the viewer's SNAPSHOTS_PER_VIEWER).

        Built inside Redis by one script: the ids never travel to the hub and back."""
        source = self._by_owner(owner) if owner else f"{self._p}all"
        low, high = _script_bound(date_from), _script_bound(date_to)
        # the viewer in the id and its key: hub_answers.follow pages it for a platform holding that party only
        # its filters' tag last: hub_answers.follow tells a Link re-sending them from one changing them
        snapshot_id = f"{viewer[0]}{viewer[1]}".upper() + secrets.token_urlsafe(12) + filters_tag(owner, low, high)
        keys = [source, f"{self._p}hidden", self._snapshot_key(snapshot_id), self._snapshots_of(snapshot_id),
                *self._publish_tokens, order_key(self._prefix), f"{self._p}ordering"]  # fmt: skip
        args: list[str | int] = [low, high, f"{viewer[0]}/{viewer[1]}/", SNAPSHOT_TTL_S, f"{viewer[0]}-{viewer[1]}",
                                 self._entries(""), SNAPSHOTS_PER_VIEWER, int(keep)]  # fmt: skip
        total = await self._snapshot(keys=keys, args=args)
        return snapshot_id, int(total)

    def _snapshot_key(self, snapshot_id: str) -> str:
        country_code, party_id = snapshot_viewer(snapshot_id)
        return f"{self._p}snapshot:{country_code}/{party_id}/{snapshot_id[5:]}"

    def _snapshots_of(self, snapshot_id: str) -> str:
        """The list of the live snapshots of the party a snapshot was taken for (SNAPSHOTS_PER_VIEWER)."""
        country_code, party_id = snapshot_viewer(snapshot_id)
        return f"{self._p}snapshots-of:{country_code}/{party_id}"

    async def page(self, snapshot_id: str, offset: int, limit: int) -> tuple[list[bytes], int, int] | None:
        """Up to limit raw documents of a snapshot from offset on, no more than PAGE_BYTES of them (one at least), the
        offset of the next page, and the snapshot's total; None once it expired (or empty).

        SORT ... BY nosort (no sorting, the list's order) with LIMIT and GET reads the range of the snapshot and
        each member's document inside Redis in one command: 2.5 ms for 1,000 locations, where a Lua script doing
        the same took 5.7, copying every document into Lua and back. A script before it counts how many of them fit
        PAGE_BYTES by their lengths alone, so that no more are read than the page holds. A document gone since the
        snapshot (its CPO left, or no longer lists it) is None, and left out: the page reads on past it until it holds
        limit documents, its bytes are used up or the snapshot ends, so that the next page starts after everything
        this one read.

        A page read keeps the snapshot for SNAPSHOT_TTL_S more: a client walking a large cache slowly is not cut off
        at a fixed time after its GET All began (transport_and_format.asciidoc: "the client does not have to retry
        any requests")."""
        snapshot = self._snapshot_key(snapshot_id)
        if limit < 1:  # its total alone (a followed Link with limit=0): LRANGE with no end would read it all
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.llen(snapshot)
                pipe.expire(snapshot, SNAPSHOT_TTL_S)
                pipe.expire(self._snapshots_of(snapshot_id), SNAPSHOT_TTL_S)
                total, _, _ = await pipe.execute()
            return ([], offset, int(total)) if total else None
        docs: list[bytes] = []
        used = 0
        while True:
            wanted = limit - len(docs)
            args: list[str | int] = [offset, wanted, PAGE_BYTES - used, f"{self._p}doc:", "1" if docs else "0"]
            fitting = int(await self._fitting(keys=[snapshot], args=args))
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.llen(snapshot)
                pipe.sort(snapshot, start=offset, num=fitting, by="nosort", get=[f"{self._p}doc:*"])
                pipe.expire(snapshot, SNAPSHOT_TTL_S)
                pipe.expire(self._snapshots_of(snapshot_id), SNAPSHOT_TTL_S)
                total, read, _, _ = await pipe.execute()
            if not total:
                return None
            found = [d if isinstance(d, bytes) else d.encode() for d in read if d]
            docs += found
            used += sum(map(len, found))
            offset += len(read)
            if len(docs) >= limit or fitting < wanted or offset >= total:  # full, its bytes used up, or the end
                return docs, offset, int(total)


def snapshot_viewer(snapshot_id: str) -> tuple[str, str]:
    """The party a snapshot was taken for, as its id begins: country code, party id."""
    return snapshot_id[:2], snapshot_id[2:5]


def filters_tag(owner: tuple[str, str] | None, date_from: str, date_to: str) -> str:
    """What a snapshot's id ends with: the filters of the GET All that took it (its owner, and its dates as the snapshot
    script reads them), hashed. Not a secret: an id changed to match other filters names no snapshot."""
    text = f"{'/'.join(owner) if owner else ''}|{date_from}|{date_to}"
    return base64.urlsafe_b64encode(hashlib.blake2s(text.encode(), digest_size=6).digest()).decode()


def taken_with(snapshot_id: str, owner: tuple[str, str] | None, date_from: float | None, date_to: float | None) -> bool:
    """Whether a snapshot was taken with these filters (a GET All's, as hub_answers reads them)."""
    return snapshot_id.endswith(filters_tag(owner, _script_bound(date_from), _script_bound(date_to)))


def _script_bound(date: float | None) -> str:
    """A date filter as the snapshot script reads it, and as filters_tag hashes it: seconds since the epoch, '' for
    none. One conversion for both, so a Link re-sending its GET All's filters matches the tag its snapshot was given."""
    return "" if date is None else repr(date)
