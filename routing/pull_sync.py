"""Pull sync: the hub fills its location cache from each CPO's locations Sender (control plane, httpx).

mod_locations.asciidoc Sender GET, paginated per transport_and_format.asciidoc: the hub follows the Link headers
to the last page, and afterwards asks only for what changed since the last successful sync (date_from), the two
things OCPI clients most often get wrong. One hub process syncs at a time (a lock in Redis). Every page it asks
for is a message the hub sends on its own, so each leaves a routing-log row.

A CPO may leave the hub (its credentials DELETE, or the operator takes its platform off) while its sync fetches
pages: given the live directory, the sync asks it before storing each page and before marking the CPO synced, and
stops there, so the cache does not fill again with the locations of a party no longer on the hub. Its pages and marks
are written as the request path's writes are, fenced by the directory's generation for the platform the party was
listed by (storage.location_writer), also by `ocpi-hub sync`, which watches the directory as a hub process does: what
a page or mark would bring back after the departed party's cleanup (storage.departed) is refused, and so is a full
sync's removal of what the CPO no longer listed once its party id is another platform's. What it stored
before is forgotten by the departure itself (LocationCache.forget_platform); a page stored in the moment between
the check and the departure, by the departed party's cleanup, which begins later.

A CPO's cache holds OCPI_HUB_MAX_LOCATIONS_PER_CPO locations at most, and OCPI_HUB_MAX_LOCATION_BYTES_PER_CPO bytes of
their documents (storage.location_cap): a sync stops before its next page once it read more locations than that, or,
repeats included, twice that many or twice that many bytes (an endless chain of Links, or of ever larger pages), and
drops nothing. While a CPO's cache is over its cap, each of its syncs is full; one that stored its whole list clears
the mark, and one that dropped what the CPO no longer lists to make room for locations it refused runs again at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

import redis.asyncio as redis
import structlog

from hub.envelope import ocpi_timestamp
from hub.metrics import LOCATION_CACHE_LOST, LOCATION_SYNCS
from hub.party_client import PartyClient
from routing.sender_pages import Record, listing_parties, sender_page
from storage.directory import Directory, PartyRole, Platform
from storage.location_cache import LocationCache
from storage.location_cap import clear_unless_refused_since, refused_so_far
from storage.redis_lease import Lease

log = structlog.get_logger()

RETRY_AFTER_FAILURE_S = 300  # a CPO whose Sender failed is not asked again before this


@dataclass
class SyncResult:
    party: tuple[str, str]
    locations: int = 0
    pages: int = 0
    full: bool = True
    removed: int = 0  # cached locations a full sync no longer found in the CPO's list
    refused: int = 0  # listed locations not cached: the CPO's cache holds its cap (storage.location_cap)
    error: str | None = None


Progress = Callable[[tuple[str, str], int, int | None], None]
LEFT_THE_HUB = "the CPO left the hub during the sync; nothing more was stored"


def cpo_parties(directory: Directory) -> list[tuple[Platform, PartyRole]]:
    """Every connected CPO party whose platform has a locations Sender."""
    return listing_parties(directory, "locations", ("CPO",))


class PullSync:
    """directory: the live directory, asked whether a party being synced is still on the hub (None asks nothing)."""

    def __init__(
        self, http: PartyClient, cache: LocationCache, client: redis.Redis, prefix: str,
        hub: tuple[str, str], record: Record | None = None, directory: Callable[[], Directory] | None = None,
    ) -> None:  # fmt: skip
        self._http, self._cache, self._redis, self._record = http, cache, client, record
        self._prefix, self._hub, self._directory = prefix, hub, directory
        self._next_round_key = f"{prefix}locations:next-round"  # when the round of every CPO is due (Unix time)

    async def never_synced(self, parties: list[tuple[Platform, PartyRole]]) -> list[tuple[Platform, PartyRole]]:
        """Parties with no successful sync in Redis: new ones, or all of them after Redis lost its data (but not
        one whose Sender failed in the last RETRY_AFTER_FAILURE_S)."""
        if not parties:
            return []
        synced = await self._redis.mget([self._cache.synced_key(role.key) for _, role in parties])
        failed = await self._redis.mget([self._cache.sync_failed_key(role.key) for _, role in parties])
        return [party for party, ok, bad in zip(parties, synced, failed, strict=True) if ok is None and bad is None]

    async def run(
        self,
        parties: list[tuple[Platform, PartyRole]],
        *,
        full: bool = False,
        progress: Progress | None = None,
        round_every_s: float | None = None,
    ) -> list[SyncResult] | None:
        """Sync the given parties; None if another process holds the sync lock. round_every_s: a scheduled sync, which,
        once the lock is held, syncs them all if the hubs' round of every CPO is due (and sets the next one
        round_every_s after its start), and otherwise only those still never synced (another process may have synced
        them since they were found due, and let the lock go)."""
        async with Lease(self._redis, f"{self._prefix}locations:sync-lock").held() as held:
            if not held:
                return None
            started = time.time()
            if round_every_s is not None and not await self.round_due(round_every_s):
                parties, round_every_s = await self.never_synced(parties), None  # not the round: the new ones only
            results = [await self.sync_party(one, role, full=full, progress=progress) for one, role in parties]
            if round_every_s is not None:  # set at its end: one dying midway leaves the round to another process
                await self._redis.set(self._next_round_key, repr(started + round_every_s))
            return results

    async def round_due(self, every_s: float) -> bool:
        """Whether the round of every CPO, which one hub process or another runs each every_s, is due. With no time set
        (the first hub process, or Redis lost its data and every CPO is synced as never synced), the first is every_s
        from now; so it is with one further away, set with a longer interval (OCPI_HUB_SYNC_INTERVAL_S shortened)."""
        next_round, now = await self._redis.get(self._next_round_key), time.time()
        try:
            due_at = float(next_round) if next_round is not None else None
        except ValueError:  # not a time: not ours, replaced by the next round's
            return True
        if due_at is None or not due_at <= now + every_s:  # NaN too
            await self._redis.set(self._next_round_key, repr(now + every_s), nx=due_at is None)
            return False
        return now >= due_at

    async def sync_party(
        self, platform: Platform, role: PartyRole, *, full: bool = False, progress: Progress | None = None
    ) -> SyncResult:
        # A cache over its cap misses some of the CPO's locations: only its whole list, a full sync, makes it whole.
        marked = await refused_so_far(self._redis, self._prefix, role.key)
        result, room_made = await self._sync(platform, role, full or marked is not None, marked, progress)
        if room_made:  # its locations refused for the cap go in where those it no longer lists were
            marked = await refused_so_far(self._redis, self._prefix, role.key)
            removed = result.removed
            result, _ = await self._sync(platform, role, True, marked, progress)
            result.removed += removed
        return result

    async def _sync(
        self, platform: Platform, role: PartyRole, full: bool, marked: str | None, progress: Progress | None
    ) -> tuple[SyncResult, bool]:
        """One sync of the party: its result, and whether a full one made room for locations it refused for the cap
        (storage.location_cap), by dropping what the CPO no longer lists."""
        party, cap = role.key, self._cache.max_per_cpo
        since = None if full else await self._redis.get(self._cache.synced_key(party))
        # Objects changed while the sync runs are fetched again next time: the mark is the start, a bit early.
        started = datetime.now(UTC) - timedelta(seconds=1)
        result = SyncResult(party, full=since is None)
        # mod_locations.asciidoc: "the response data provided by all the pages together is the new truth. Any old
        # information not contained in any of the pages needs to be considered no longer valid." What was cached
        # before a full sync and is not in its pages goes; what a push adds while it runs stays. Both are ids as the
        # cache keys them (upper-cased, a CiString): a location an earlier hub keyed by its id as sent goes as well.
        cached_before = await self._cache.location_ids(party) if result.full else set()
        listed: set[str] = set()
        received = 0  # locations in the pages, repeats included, and an empty page as one: the end of an endless list
        received_bytes = 0  # the bytes of their documents
        query = {"date_from": since.decode() if isinstance(since, bytes) else since} if since else {}
        # The endpoint as registered, slash and all: `{locations_endpoint_url}?date_from=...`
        url: str | None = platform.endpoint("locations", "SENDER") or ""
        url = f"{url}?{urlencode(query)}" if query else url
        correlation = str(uuid.uuid4())
        while url:
            locations, url, total, why = await sender_page(self._http, self._record, self._hub, platform, role, url,
                                                           "locations", correlation)  # fmt: skip
            if locations is None:
                result.error = f"the CPO's locations Sender could not be read ({why}); see the routing log"
                log.warning("location_sync_failed", party=f"{party[0]}-{party[1]}", pages=result.pages, reason=why)
                failed = self._cache.sync_failed_key(party)
                await self._cache.mark(failed, party, platform.id, "1", RETRY_AFTER_FAILURE_S)
                LOCATION_SYNCS.labels("failed", "full" if result.full else "incremental").inc()
                return result, False
            if self._left(platform, role):
                return self._stopped(result), False
            kept, refused = await self._cache.put_many(party, platform.id, locations)
            result.locations += len(kept)
            result.refused += len(refused)
            listed.update(kept, refused)
            result.pages += 1
            received += max(1, len(locations))
            received_bytes += sum(map(len, locations))
            if progress:
                progress(party, result.locations, total)
            if url and (len(listed) > cap or received > 2 * cap or received_bytes > 2 * self._cache.max_bytes_per_cpo):
                return await self._stopped_at_cap(platform, role, result, started, len(listed)), False
        if self._left(platform, role):
            return self._stopped(result), False
        if gone := cached_before - listed:
            # fenced inside the scripts that remove them: what a platform registering the party id since pushed stays
            if (removed := await self._cache.forget_unlisted(party, platform.id, gone)) is None:
                return self._stopped(result), False
            result.removed = removed
        # not once it left: a platform registering the party id again would first be synced only since now
        if not await self._cache.mark(self._cache.synced_key(party), party, platform.id, ocpi_timestamp(started)):
            return self._stopped(result), False
        LOCATION_SYNCS.labels("ok", "full" if result.full else "incremental").inc()
        log.info("location_sync_done", party=f"{party[0]}-{party[1]}", locations=result.locations,
                 pages=result.pages, full=result.full, removed=result.removed, refused=result.refused)  # fmt: skip
        await self._settle_cap(result, marked, len(listed))
        return result, bool(result.refused and result.removed and len(listed) <= cap)

    async def _settle_cap(self, result: SyncResult, marked: str | None, listed: int) -> None:
        """A sync that read the CPO's list to its end: an error saying how many it could not cache; or, a full one of a
        CPO over its cap that cached all of them, the mark cleared (unless a push was refused meanwhile)."""
        party, cap = result.party, self._cache.max_per_cpo
        if result.refused:
            result.error = (f"{result.refused} of its locations were not cached: the hub's cache holds {cap:,} "
                            "locations of one CPO at most (OCPI_HUB_MAX_LOCATIONS_PER_CPO), and "
                            f"{self._cache.max_bytes_per_cpo:,} bytes of their documents "
                            "(OCPI_HUB_MAX_LOCATION_BYTES_PER_CPO)")  # fmt: skip
        elif (marked is not None and result.full
              and await clear_unless_refused_since(self._redis, self._prefix, party, marked)):  # fmt: skip
            log.info("location_cache_under_cap", party=f"{party[0]}-{party[1]}", locations=listed, cap=cap)

    async def _stopped_at_cap(self, platform: Platform, role: PartyRole, result: SyncResult, started: datetime,
                              listed: int) -> SyncResult:  # fmt: skip
        """A sync that read more than the cache holds of one CPO (a huge list, or an endless chain of Links): stopped
        before its next page, nothing cached dropped (its pages are not all read, so not "the new truth"). Marked
        synced, so that it is not tried again before OCPI_HUB_SYNC_INTERVAL_S (a CPO never synced would be, every
        OCPI_HUB_SYNC_CHECK_S); the next one is full while its cache is over its cap."""
        party, cap = role.key, self._cache.max_per_cpo
        why = (f"the CPO lists more than the {cap:,} locations the hub's cache holds of one CPO (OCPI_HUB_MAX_"
               "LOCATIONS_PER_CPO)" if listed > cap else f"its Link chain went on past {2 * cap:,} locations, or "
               f"{2 * self._cache.max_bytes_per_cpo:,} bytes of them (twice the most the hub's cache holds of one "
               "CPO), without ending")  # fmt: skip
        result.error = f"{why}: stopped after {result.pages} pages, nothing cached dropped"
        log.warning("location_sync_over_cap", party=f"{party[0]}-{party[1]}", pages=result.pages, listed=listed,
                    refused=result.refused, cap=cap, reason=why)  # fmt: skip
        await self._cache.mark(self._cache.synced_key(party), party, platform.id, ocpi_timestamp(started))
        LOCATION_SYNCS.labels("over_cap", "full" if result.full else "incremental").inc()
        return result

    def _left(self, platform: Platform, role: PartyRole) -> bool:
        """Whether the party is no longer on the hub: its platform gone from the directory (unregistered), or no
        longer holding this CPO role. A platform registering the same party id again is another platform."""
        if self._directory is None:
            return False
        current = self._directory().platforms.get(platform.id)
        return current is None or not any(r.role == role.role and r.key == role.key for r in current.roles)

    def _stopped(self, result: SyncResult) -> SyncResult:
        result.error = LEFT_THE_HUB
        log.info("location_sync_stopped", party=f"{result.party[0]}-{result.party[1]}", reason="the party left the hub",
                 locations=result.locations, pages=result.pages)  # fmt: skip
        LOCATION_SYNCS.labels("stopped", "full" if result.full else "incremental").inc()
        return result


async def run_scheduled(sync: PullSync, directory: Callable[[], Directory], wake: asyncio.Event,
                        interval_s: float, check_s: float) -> None:  # fmt: skip
    """For the life of the process: sync new parties at once (a registration sets `wake`), parties whose sync
    marks vanished (Redis lost its data: the cache is rebuilt), and every party in the round that one hub process or
    another runs each interval_s (its time in Redis: however many processes run the hub, a CPO is asked for its
    changes once an interval)."""
    seen_synced: set[tuple[str, str]] = set()  # CPOs this process saw synced: one found without its mark lost it
    while True:
        with contextlib.suppress(TimeoutError):  # asyncio.timeout: see StillAlive.run
            async with asyncio.timeout(check_s):
                await wake.wait()
        wake.clear()
        try:
            parties, results = cpo_parties(directory()), None
            seen_synced &= {role.key for _, role in parties}  # one leaving and coming back starts unsynced
            due = await sync.never_synced(parties)
            if lost := [role.key for _, role in due if role.key in seen_synced]:
                LOCATION_CACHE_LOST.inc(len(lost))
                log.warning("location_cache_lost", parties=[f"{c}-{p}" for c, p in lost],
                            effect="GET All via the hub of these CPOs is forwarded to them, of every CPO refused with "
                                   "4000, until their syncs have run")  # fmt: skip
            seen_synced -= set(lost)
            if due:
                log.info("location_sync_needed", parties=[f"{r.country_code}-{r.party_id}" for _, r in due],
                         reason="never synced, or the cache lost its data")  # fmt: skip
            if not (due or (parties and await sync.round_due(interval_s))):
                continue
            if (results := await sync.run(parties, round_every_s=interval_s)) is None:
                log.info("location_sync_skipped", reason="another hub process is syncing")
            seen_synced |= {result.party for result in results or [] if result.error is None}
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # Redis or a party briefly away: the next round tries again
            log.warning("location_sync_round_failed", error=str(exc))
