"""The location cache's cap per CPO: which CPOs' caches hold fewer of their locations than they have, and why.

A CPO's cache holds at most OCPI_HUB_MAX_LOCATIONS_PER_CPO locations: a new location past it is not stored (the
store script of storage.location_writer refuses it, its push relayed all the same), and its CPO is marked over its
cap in one hash, field CC/PID, the number of locations refused since it was marked. Nothing cached is dropped for the
cap: one CPO pushing ever new ids, or listing an endless list, must not fill the Redis every party on the hub shares.

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

import redis.asyncio as redis
import structlog

from hub.metrics import LOCATIONS_OVER_CAP

log = structlog.get_logger()

MAX_LOCATIONS_PER_CPO = 100_000  # OCPI_HUB_MAX_LOCATIONS_PER_CPO's default (hub.settings)

# KEYS: the hash of CPOs over their cap. ARGV: the CPO (CC/PID), its count of refused locations as the sync read it
# when it began ('' : not marked then). Deletes the mark unless a location was refused since. Returns 1 if deleted.
_CLEAR = """
local now = redis.call('HGET', KEYS[1], ARGV[1])
if now and now == ARGV[2] then return redis.call('HDEL', KEYS[1], ARGV[1]) end
return 0
"""


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
    marks = await client.hgetall(over_cap_key(prefix))
    found = {}
    for field, count in marks.items():
        country, _, party = (field.decode() if isinstance(field, bytes) else str(field)).partition("/")
        found[(country, party)] = int(count)
    return found


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
    short = {}
    for field, count in marks.items():
        country, _, party = (field.decode() if isinstance(field, bytes) else str(field)).partition("/")
        if (country, party) in on_hub:  # one that left took its locations with it, whether or not its mark went too
            short[(country, party)] = f"over its cap ({int(count)} locations refused)"
    if synced and synced[0] < len(synced_by_pull):
        found = await client.mget([synced_key(prefix, owner) for owner in synced_by_pull])
        short |= {owner: "not synced yet" for owner, mark in zip(synced_by_pull, found, strict=True) if mark is None}
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


async def cached_counts(client: redis.Redis, prefix: str, owners: list[tuple[str, str]]) -> list[int]:
    """How many locations the cache holds of each of these CPOs."""
    async with client.pipeline(transaction=False) as pipe:
        for owner in owners:
            pipe.zcard(f"{prefix}locations:by-owner:{owner_field(owner)}")
        return [int(n) for n in await pipe.execute()]


def said_refused(refused: list[tuple[tuple[str, str], str, int]], cap: int) -> None:
    """New locations (owner, id, the store's reply) refused as their CPO's cache holds its cap: counted, and said once
    per CPO, as it goes over (reply 3), not for each of a CPO pushing ever new ids."""
    for owner, location_id, reply in refused:
        party = f"{owner[0].upper()}-{owner[1].upper()}"
        LOCATIONS_OVER_CAP.labels(party).inc()
        if reply == 3:
            log.warning("location_cache_over_cap", party=party, location=location_id, cap=cap,
                        effect="its new locations are relayed, not cached; GET All of its locations is not answered "
                               "from the cache until a full pull sync stores its whole list")  # fmt: skip
