"""The location cache's caps per CPO: which CPOs' caches hold fewer of their locations than they have, and why.

A CPO's cache holds at most OCPI_HUB_MAX_LOCATIONS_PER_CPO locations and OCPI_HUB_MAX_LOCATION_BYTES_PER_CPO bytes of
their documents (counted in one hash, field CC/PID, by the store script of storage.location_writer and the forget script
of storage.location_removals, in the script call that changes the document; counted once for a cache an earlier hub
built: storage.location_upgrades). A new location past either is not stored (the store script refuses it, its push
relayed all the same); an update that would grow a cached location past the bytes cap removes that location (its cached
copy is no longer the CPO's, and a GET of it must not be answered with it). Either way its CPO is marked over its cap in
one hash, field CC/PID, the number of locations refused since it was marked. Nothing else cached is dropped for the cap:
one CPO pushing ever new ids or ever larger documents, or listing an endless list, must not fill the Redis every party
on the hub shares.

A cache so marked is known to miss some of its CPO's locations, so GET All is not answered from it
(hub.ocpi.hub_answers: forwarded to the CPO, or refused naming it). The mark goes with a full pull sync that read
the CPO's whole list and stored all of it (routing.pull_sync), or with the CPO leaving the hub.

A CPO's cache is not known whole either before its first full pull sync ends: pull sync's mark of it (synced_key),
set by a sync that read its list to the end and gone with everything else when Redis loses its data (a restart without
persistence, FLUSHALL, a failover to an empty replica), is the cache's word that it holds the CPO's whole list. A CPO
without it (new, its sync running or failing, or the cache lost) is treated as one over its cap (not_complete).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import redis.asyncio as redis
import structlog

from hub.metrics import LOCATIONS_OVER_CAP

log = structlog.get_logger()

MAX_LOCATIONS_PER_CPO = 100_000  # OCPI_HUB_MAX_LOCATIONS_PER_CPO's default (hub.settings)
MAX_LOCATION_BYTES_PER_CPO = 1 << 30  # OCPI_HUB_MAX_LOCATION_BYTES_PER_CPO's default (hub.settings)

# The store script's replies for a location refused for a cap (storage.location_writer): odd when it marked the CPO
REFUSED_NEW, REFUSED_BYTES, DROPPED_GROWN = 2, 4, 6
_WHY = {
    REFUSED_NEW: "its cache holds its cap of locations: its new locations are relayed, not cached",
    REFUSED_BYTES: "its cache holds its cap of bytes: its new locations are relayed, not cached",
    DROPPED_GROWN: "an update grew a location past its cap of bytes: that location left the cache (not served stale)",
}

# KEYS: the hash of CPOs over their cap. ARGV: the CPO (CC/PID), its count of refused locations as the sync read it
# when it began ('' : not marked then). Deletes the mark unless a location was refused since. Returns 1 if deleted.
_CLEAR = """
local now = redis.call('HGET', KEYS[1], ARGV[1])
if now and now == ARGV[2] then return redis.call('HDEL', KEYS[1], ARGV[1]) end
return 0
"""


def bytes_key(prefix: str) -> str:
    """The hash of the bytes of documents the cache holds of each CPO: CC/PID -> bytes."""
    return f"{prefix}locations:bytes"


def over_cap_key(prefix: str) -> str:
    """The hash of the CPOs whose caches are over their cap: CC/PID -> locations refused since."""
    return f"{prefix}locations:over-cap"


def synced_key(prefix: str, owner: tuple[str, str]) -> str:
    """Pull sync's mark of the owner: when its last successful sync began (absent: the next one is full, and the
    cache is not known to hold its whole list)."""
    return f"{prefix}locations:synced:{owner[0]}/{owner[1]}"


def owner_field(owner: tuple[str, str]) -> str:
    return f"{owner[0].upper()}/{owner[1].upper()}"


async def over_cap(client: redis.Redis, prefix: str) -> dict[tuple[str, str], int]:
    """The CPOs whose caches are over their cap, with the number of locations refused since."""
    return marked(await client.hgetall(over_cap_key(prefix)))


def marked(marks: dict[Any, Any]) -> dict[tuple[str, str], int]:
    """The over-cap hash as read (HGETALL): CPO -> locations refused since."""
    found = {}
    for field, count in marks.items():
        country, _, party = (field.decode() if isinstance(field, bytes) else str(field)).partition("/")
        found[(country, party)] = int(count)
    return found


NOT_SYNCED = "not synced yet"  # not_complete's why for a CPO with no sync mark; any other: over its cap


async def not_complete(client: redis.Redis, prefix: str, on_hub: Collection[tuple[str, str]],
                       synced_by_pull: list[tuple[str, str]]) -> dict[tuple[str, str], str]:  # fmt: skip
    """The CPOs whose caches may miss some of their locations, each with why: those on the hub over their cap, and
    those of synced_by_pull (the CPOs pull sync fills) with no sync mark. One round trip when every one is synced (the
    marks are counted, not read), a second to name those that are not."""
    async with client.pipeline(transaction=False) as pipe:
        pipe.hgetall(over_cap_key(prefix))
        if synced_by_pull:
            pipe.exists(*(synced_key(prefix, owner) for owner in synced_by_pull))
        marks, *synced = await pipe.execute()
    # one that left took its locations with it, whether or not its mark went too
    short = {cpo: f"over its cap ({count} locations refused)" for cpo, count in marked(marks).items() if cpo in on_hub}
    if synced and synced[0] < len(synced_by_pull):
        found = await client.mget([synced_key(prefix, owner) for owner in synced_by_pull])
        short |= {owner: NOT_SYNCED for owner, mark in zip(synced_by_pull, found, strict=True) if mark is None}
    return short


async def synced_at(client: redis.Redis, prefix: str, owners: list[tuple[str, str]]) -> list[str | None]:
    """When the last successful pull sync of each of these CPOs began (None: its cache is not known whole)."""
    marks = await client.mget([synced_key(prefix, owner) for owner in owners]) if owners else []
    return [None if mark is None else mark.decode() if isinstance(mark, bytes) else str(mark) for mark in marks]


async def refused_so_far(client: redis.Redis, prefix: str, owner: tuple[str, str]) -> str | None:
    """The CPO's mark as it is now (None: not over its cap), for clear_unless_refused_since."""
    mark = await client.hget(over_cap_key(prefix), owner_field(owner))
    return None if mark is None else mark.decode() if isinstance(mark, bytes) else str(mark)


async def clear_unless_refused_since(client: redis.Redis, prefix: str, owner: tuple[str, str], seen: str) -> bool:
    """The CPO's mark deleted, unless a location was refused since it read `seen` (refused_so_far): a push refused
    while the sync ran is missing from the cache. Whether it was deleted."""
    return bool(await client.eval(_CLEAR, 1, over_cap_key(prefix), owner_field(owner), seen))


async def cached_counts(client: redis.Redis, prefix: str, owners: list[tuple[str, str]]) -> list[tuple[int, int]]:
    """How many locations, and how many bytes of their documents, the cache holds of each of these CPOs."""
    if not owners:
        return []
    async with client.pipeline(transaction=False) as pipe:
        for owner in owners:
            pipe.zcard(f"{prefix}locations:by-owner:{owner_field(owner)}")
        pipe.hmget(bytes_key(prefix), [owner_field(owner) for owner in owners])
        *counts, sizes = await pipe.execute()
    return [(int(n), int(size or 0)) for n, size in zip(counts, sizes, strict=True)]


def said_refused(refused: list[tuple[tuple[str, str], str, int]], cap: int, cap_bytes: int) -> None:
    """Locations (owner, id, the store's reply) refused, or dropped, for their CPO's caps: counted, by cap, and said
    once per CPO, as it goes over (an odd reply), not for each of a CPO pushing ever new ids."""
    for owner, location_id, reply in refused:
        party, kind = f"{owner[0].upper()}-{owner[1].upper()}", reply & ~1
        LOCATIONS_OVER_CAP.labels(party, "locations" if kind == REFUSED_NEW else "bytes").inc()
        if reply & 1:
            log.warning("location_cache_over_cap", party=party, location=location_id, cap=cap, cap_bytes=cap_bytes,
                        reason=_WHY[kind], effect="GET All of its locations is not answered from the cache until a "
                        "full pull sync stores its whole list")  # fmt: skip
