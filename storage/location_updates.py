"""Relayed location PUTs and PATCHes on their way to the cache: applied in order, a batch per Redis round trip.

While Redis is away they are held, in order (up to MAX_HELD_UPDATES). A PATCH, or a PUT of an EVSE or connector, is
merged into the cached location by the Receiver rules of mod_locations.asciidoc (storage.location_document); a whole
location is stored as the CPO sent it. Each store is fenced by the directory (storage.location_writer).
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
from redis.exceptions import NoScriptError, WatchError

from storage.batches import Batches
from storage.directory import DirectoryCache
from storage.location_cap import MAX_LOCATION_BYTES_PER_CPO, MAX_LOCATIONS_PER_CPO, said_refused
from storage.location_document import index_of, too_large, updated, whole_location
from storage.location_upgrades import upgrade
from storage.location_writer import LocationWriter, WholeLocation, holds, not_cached
from storage.redis_scripts import load

log = structlog.get_logger()

UPDATE_LINGER_S, MAX_UPDATES_PER_BATCH = 0.01, 500  # relayed updates gathered per Redis round trip
# While Redis is away, relayed location updates wait for it, in order, up to this many (an hour of a busy CPO's
# EVSE statuses); past it the oldest go, and pull sync repairs what they would have changed at its next round.
MAX_HELD_UPDATES = 10_000

_decode = msgspec.json.decode
_encode = msgspec.json.encode

Update = tuple[tuple[str, str], int, str, list[str], bytes]  # owner, its platform's id, method, path, body


class RelayedUpdates(LocationWriter):
    """The location cache's writer (storage.location_writer) with the relayed updates on their way to it."""

    def __init__(self, client: redis.Redis, prefix: str, directory: DirectoryCache | None = None,
                 max_per_cpo: int = MAX_LOCATIONS_PER_CPO,
                 max_bytes_per_cpo: int = MAX_LOCATION_BYTES_PER_CPO) -> None:  # fmt: skip
        super().__init__(client, prefix, directory, max_per_cpo, max_bytes_per_cpo)
        self._pending: Batches[Update] = Batches()
        self._stopping = False  # set at shutdown: a Redis still away then is not waited for
        self.dropped = 0  # updates given up (Redis away at shutdown, or more held than MAX_HELD_UPDATES)
        self._over_cap = False  # MAX_HELD_UPDATES reached in this outage (and said)

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
            # what was relayed before shutdown is in the cache, unless Redis is away or a forced quit cancelled task
            await self._pending.join(task)
            for each in (task, upgrading):
                each.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await each

    async def _apply_pending(self) -> None:
        while True:
            # The updates of a few ms share one Redis round trip (a cache: a GET may lag a push by that long).
            batch = await self._pending.next_batch(MAX_UPDATES_PER_BATCH, UPDATE_LINGER_S)
            try:
                await self._applied_once_redis_answers(batch)
            except Exception as exc:  # a bug: pull sync repairs what the update would have changed
                log.exception("location_cache_update_failed", updates=len(batch), error=str(exc))
            finally:
                self._pending.task_done(len(batch))

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
                    self._pending.task_done(len(held))
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
        last valid one is visible, so only it is read (newest first) and stored, in the order pushed (a new location's
        place in GET All: storage.location_writer.order_key)."""
        latest: dict[str, WholeLocation] = {}
        for owner, platform_id, path, body in reversed(puts):
            member = self._member(owner, path[0])
            if member in latest:
                continue
            try:
                latest[member] = (owner, platform_id, path[0], body, whole_location(body)[1])
            except ValueError as exc:
                not_cached(exc, path=path)
        return len((await self._store_many(list(latest.values())[::-1]))[0])  # each script is atomic on its own

    async def _merge(self, owner: tuple[str, str], platform_id: int, method: str, path: list[str],
                     update: dict[str, Any]) -> str | None:  # fmt: skip
        """A PATCH, or a PUT of an EVSE or connector, applied to the cached location: None, else why it was not."""
        doc = self._doc(self._member(owner, path[0]))
        async with self._redis.pipeline(transaction=True) as pipe:
            for _ in range(20):  # optimistic: another process changing the same location makes us retry
                try:
                    directory, generation = self._fence()
                    if not holds(directory, owner, platform_id):
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
                    if (reply := await pipe.execute())[0] > 1:  # past its CPO's cap: not stored, or grown and dropped
                        said_refused([(owner, path[0], reply[0])], self.max_per_cpo, self.max_bytes_per_cpo)
                        return "past its CPO's cap (storage.location_cap)"
                    if reply != [-1]:
                        return None
                    await self._caught_up()  # the directory changed since it was read: again, as it is now
                except WatchError:
                    continue
                except NoScriptError:  # a Redis that lost its scripts (storage.redis_scripts): loaded, then again
                    await load(self._redis, [self._store_script])
        return "it kept changing while it was applied"
