"""The location cache's writes: relayed PUTs and PATCHes applied a batch per Redis round trip, pull sync's pages stored.

An update is applied a few ms after it was relayed, or, Redis slow or away, later: its CPO may have left the hub by
then, and its cleanup (storage.departed) have run, or its party id been registered again by another platform. So an
update carries the platform that pushed it, and, given the process's directory, only the locations of CPOs it holds on
that platform are stored, by scripts refused once the directory's generation moved on (DirectoryCache.fence); a
refused one is tried again once the directory has caught up.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any, Self

import msgspec
import redis.asyncio as redis
import structlog
from redis.asyncio.client import Pipeline
from redis.exceptions import NoScriptError, WatchError

from storage.batches import next_batch
from storage.directory import GENERATION_KEY, UNCHANGED_LUA, Directory, DirectoryCache
from storage.location_document import (
    Index,
    TooLarge,
    index_of,
    too_large,
    trusted_until,
    updated,
    whole_location,
)
from storage.location_upgrades import upgrade
from storage.redis_scripts import executed, load, queue_script

log = structlog.get_logger()

UPDATE_LINGER_S, MAX_UPDATES_PER_BATCH = 0.01, 500  # relayed updates gathered per Redis round trip
# While Redis is away, relayed location updates wait for it, in order, up to this many (an hour of a busy CPO's
# EVSE statuses); past it the oldest go, and pull sync repairs what they would have changed at its next round.
MAX_HELD_UPDATES = 10_000
STORE_TRIES = 5  # a store refused as the directory changes that often meanwhile is given up (pull sync repairs it)

_decode = msgspec.json.decode
_encode = msgspec.json.encode


# KEYS: the directory's generation, the document, the sorted sets of all and of the owner, the id index, the
# unpublished set, the entries. ARGV: the generation the owner was found on the hub in ('' for an unguarded store;
# UNCHANGED_LUA: -1 if it changed), member, score (last_updated), the document, "1" if unpublished, its
# publish_allowed_to entries, the latest cached score that keeps an older location out (trusted_until). Returns 1,
# or 0 when the cached location is newer (storage.location_document): kept.
_STORE = (
    UNCHANGED_LUA
    + """
local cached = tonumber(redis.call('ZSCORE', KEYS[4], ARGV[2]))
if cached and cached > tonumber(ARGV[3]) and cached <= tonumber(ARGV[7]) then return 0 end
redis.call('SET', KEYS[2], ARGV[4])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[2])
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[2])
redis.call('SADD', KEYS[5], ARGV[2])
if ARGV[5] == '1' then
  redis.call('SADD', KEYS[6], ARGV[2])
  redis.call('SET', KEYS[7], ARGV[6])
else
  redis.call('SREM', KEYS[6], ARGV[2])
  redis.call('DEL', KEYS[7])
end
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


Update = tuple[tuple[str, str], int, str, list[str], bytes]  # owner, its platform's id, method, path, body
_Whole = tuple[tuple[str, str], int, str, bytes, Index]  # a whole location to store: owner, platform id, id, doc, index


class LocationWriter:
    """directory: this process's, whose CPOs alone get locations stored (none: every location is, unguarded)."""

    def __init__(self, client: redis.Redis, prefix: str, directory: DirectoryCache | None = None) -> None:
        self._redis = client
        self._prefix, self._p = prefix, f"{prefix}locations:"
        self._directory, self._generation_key = directory, f"{prefix}{GENERATION_KEY}"
        self._pending: asyncio.Queue[Update] = asyncio.Queue()
        self._stopping = False  # set at shutdown: a Redis still away then is not waited for
        self.dropped = 0  # updates given up (Redis away at shutdown, or more held than MAX_HELD_UPDATES)
        self._over_cap = False  # MAX_HELD_UPDATES reached in this outage (and said)
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

    def submit(self, owner: tuple[str, str], platform_id: int, method: str, path: list[str], body: bytes) -> None:
        """A relayed PUT or PATCH of /{location_id}[/{evse_uid}[/{connector_id}]] by the owner on that platform,
        applied soon by `updating()`."""
        if self._pending.qsize() >= MAX_HELD_UPDATES:  # Redis away for long: the oldest go, said once an outage
            oldest = self._pending.get_nowait()
            self._pending.task_done()
            if self._over_cap:
                self.dropped += 1
            else:
                self._over_cap = True
                self._given_up([oldest], "more updates held than MAX_HELD_UPDATES while Redis is away; each further "
                                         "update takes the place of the oldest until it is back")  # fmt: skip
        self._pending.put_nowait((owner, platform_id, method, path, body))

    @contextlib.asynccontextmanager
    async def updating(self) -> AsyncIterator[Self]:
        """For the life of the process: apply submitted updates in order, many per Redis round trip; at start, bring
        what earlier hubs cached up to this version (storage.location_upgrades)."""
        task = asyncio.create_task(self._apply_pending(), name="location_cache_updates")
        upgrading = asyncio.create_task(upgrade(self._redis, self._prefix), name="location_cache_upgrade")
        try:
            yield self
        finally:
            self._stopping = True
            await self._pending.join()  # what was relayed before shutdown is in the cache, unless Redis is away
            for each in (task, upgrading):
                each.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await each

    async def _apply_pending(self) -> None:
        while True:
            # The updates of a few ms share one Redis round trip (a cache: a GET may lag a push by that long).
            batch = await next_batch(self._pending, MAX_UPDATES_PER_BATCH, UPDATE_LINGER_S)
            try:
                await self._applied_once_redis_answers(batch)
            except Exception as exc:  # a bug: pull sync repairs what the update would have changed
                log.exception("location_cache_update_failed", updates=len(batch), error=str(exc))
            finally:
                for _ in batch:
                    self._pending.task_done()

    async def _applied_once_redis_answers(self, batch: list[Update]) -> None:
        """The batch applied; while Redis is away (stopped, restarting, failing over) tried again, in order, with the
        updates behind it held: a GET via the hub once Redis is back must not miss a status relayed meanwhile."""
        delay, failed_since = 0.05, None
        while True:
            try:
                await self.apply(batch)
                if failed_since is not None:
                    log.warning("location_cache_updates_resumed", after_s=round(time.monotonic() - failed_since, 1),
                                held=self._pending.qsize() + len(batch), dropped=self.dropped)  # fmt: skip
                    self._over_cap = False
                return
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                if self._stopping:  # all of them at once: a Redis that hangs costs a try each (REDIS_TIMEOUT_S)
                    held = [self._pending.get_nowait() for _ in range(self._pending.qsize())]
                    self._given_up(batch + held, f"Redis away at shutdown: {type(exc).__name__}: {exc}")
                    for _ in held:
                        self._pending.task_done()
                    return
                if failed_since is None:  # once per outage, not once per try
                    failed_since = time.monotonic()
                    log.warning("location_cache_updates_held", error=f"{type(exc).__name__}: {exc}",
                                held=self._pending.qsize() + len(batch))  # fmt: skip
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _given_up(self, updates: list[Update], why: str) -> None:
        self.dropped += len(updates)
        log.warning("location_cache_updates_dropped", updates=len(updates), reason=why,
                    locations=sorted({f"{o[0]}-{o[1]}/{path[0]}" for o, _, _, path, _ in updates})[:20],
                    repaired_by="the next pull sync of their CPOs")  # fmt: skip

    async def apply(self, updates: list[Update]) -> int:
        """Apply updates in order; whole-location PUTs in a row share one Redis round trip. Returns how many
        locations were stored."""
        stored, whole = 0, []
        for owner, platform_id, method, path, body in updates:
            if method == "PUT" and len(path) == 1:  # a whole location replaces what is there: nothing to read first
                whole.append((owner, platform_id, path, body))
                continue
            stored += await self._store_all(whole)
            whole = []
            try:
                update = _decode(body)
            except (msgspec.DecodeError, RecursionError):
                update = None
            if not isinstance(update, dict):
                log.info("location_cache_skipped", path=path, reason="the body is not a JSON object")
                continue
            skipped: str | ValueError | None
            try:
                skipped = await self._merge(owner, platform_id, method, path, update)
            except ValueError as exc:  # no valid last_updated, or too large, or a newer is cached
                skipped = exc
            except (TypeError, AttributeError) as exc:  # one party's odd document costs its own update, not the batch
                skipped = f"the location or the update is not shaped as mod_locations defines it ({exc})"
            if skipped:
                not_cached(skipped, path=path)
            else:
                stored += 1
        return stored + await self._store_all(whole)

    async def _store_all(self, puts: list[tuple[tuple[str, str], int, list[str], bytes]]) -> int:
        """Whole locations, stored as the CPO sent them. Of several PUTs of one location (in whatever case) only the
        last valid one is visible, so only it is read (newest first) and stored."""
        latest: dict[str, _Whole] = {}
        for owner, platform_id, path, body in reversed(puts):
            member = self._member(owner, path[0])
            if member in latest:
                continue
            try:
                latest[member] = (owner, platform_id, path[0], body, whole_location(body)[1])
            except ValueError as exc:
                not_cached(exc, path=path)
        return len((await self._store_many(list(latest.values())))[0])  # each script is atomic on its own

    async def _merge(self, owner: tuple[str, str], platform_id: int, method: str, path: list[str],
                     update: dict[str, Any]) -> str | None:  # fmt: skip
        """A PATCH, or a PUT of an EVSE or connector, applied to the cached location: None, else why it was not."""
        doc = self._doc(self._member(owner, path[0]))
        async with self._redis.pipeline(transaction=True) as pipe:
            for _ in range(20):  # optimistic: another process changing the same location makes us retry
                try:
                    directory, generation = self._fence()
                    if not _holds(directory, owner, platform_id):
                        return "its CPO is no longer on the hub"
                    await pipe.watch(doc)
                    current_raw = await pipe.get(doc)
                    current = _decode(current_raw) if current_raw else None
                    merged = updated(current, method, path[1:], update)
                    if merged is None:
                        await pipe.unwatch()
                        return "its location or EVSE is not in the cache"
                    index, document = index_of(merged), _encode(merged)
                    if refused := too_large(document):  # PATCHes and EVSE PUTs add up
                        raise refused
                    pipe.multi()
                    self._queue_store(pipe, owner, path[0], document, index, generation)
                    if await pipe.execute() != [-1]:
                        return None
                    await self._caught_up()  # the directory changed since it was read: again, as it is now
                except WatchError:
                    continue
                except NoScriptError:  # a Redis that lost its scripts (storage.redis_scripts): loaded, then again
                    await load(self._redis, [self._store_script])
        return "it kept changing while it was applied"

    async def put_many(self, owner: tuple[str, str], platform_id: int, locations: list[msgspec.Raw]) -> list[str]:
        """Whole locations as the Sender of a CPO on that platform listed them (pull sync), each stored as the CPO sent
        it. Only the owner's own are taken (transport_and_format.asciidoc, Client Owned Object Pull: objects of another
        owner "may be ignored"). Returns the ids of those stored, as the cache keys them (see location_ids)."""
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
        stored, newer_cached = await self._store_many(taken)
        return [keyed(location_id) for _, _, location_id, _, _ in stored + newer_cached]

    async def _store_many(self, locations: list[_Whole]) -> tuple[list[_Whole], list[_Whole]]:
        """Whole locations, stored in one pipeline: those of CPOs on the hub. Returns those stored, and those not
        stored because the cache holds a newer version of them."""
        stored: list[_Whole] = []
        newer_cached: list[_Whole] = []
        for _ in range(STORE_TRIES):
            directory, generation = self._fence()
            if len(kept := [each for each in locations if _holds(directory, each[0], each[1])]) < len(locations):
                log.info("location_cache_skipped", locations=len(locations) - len(kept),
                         reason="their CPO is no longer on the hub")  # fmt: skip
            if not kept:
                break

            def queue(pipe: Pipeline, kept: list[_Whole] = kept, generation: str = generation) -> None:
                for owner, _, location_id, document, index in kept:
                    self._queue_store(pipe, owner, location_id, document, index, generation)

            replies = await executed(self._redis, queue, [self._store_script])
            stored += [each for each, reply in zip(kept, replies, strict=True) if reply == 1]
            newer_cached += [each for each, reply in zip(kept, replies, strict=True) if reply == 0]
            if not (locations := [each for each, reply in zip(kept, replies, strict=True) if reply == -1]):
                break
            await self._caught_up()  # the directory changed since it was read: again, as it is now
        else:
            log.warning("location_cache_skipped", locations=len(locations), reason="the directory kept changing")
        if newer_cached:
            names = [f"{owner[0]}-{owner[1]}/{location_id}" for owner, _, location_id, _, _ in newer_cached]
            log.info("location_cache_skipped", reason="older than the cached location", locations=names[:20])
        return stored, newer_cached

    async def mark(self, key: str, owner: tuple[str, str], platform_id: int, value: str, ex_s: int = 0) -> bool:
        """Set a pull-sync mark of the owner's (LocationCache.synced_key, sync_failed_key) for ex_s seconds (0: for
        ever) while that platform holds it, fenced as a store is: a mark set after the departed party's cleanup deleted
        it would make a platform registering its id later start with an incremental sync. Whether it was set."""
        for _ in range(STORE_TRIES):
            directory, generation = self._fence()
            if not _holds(directory, owner, platform_id):
                return False
            if await self._mark_script(keys=[self._generation_key, key], args=[generation, value, ex_s]) != -1:
                return True
            await self._caught_up()  # the directory changed since it was read: again, as it is now
        return False

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
                f"{self._p}id:{member.split('/', 2)[2]}", f"{self._p}hidden", self._entries(member)]  # fmt: skip
        args: list[bytes | str | float] = [generation, member, index.score, document, "1" if index.hidden else "0",
                                           index.entries, trusted_until()]  # fmt: skip
        queue_script(pipe, self._store_script, keys, args)


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


def _holds(directory: Directory | None, owner: tuple[str, str], platform_id: int) -> bool:
    """Whether a location of the owner, pushed or listed by that platform, may be stored: given no directory, always."""
    return directory is None or directory.holds((owner[0].upper(), owner[1].upper()), platform_id)


def owner_part(owner: tuple[str, str]) -> str:
    return f"{owner[0].upper()}/{owner[1].upper()}/"
