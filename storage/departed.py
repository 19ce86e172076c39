"""The parties of a platform that left the hub are taken out of the routing indexes in Redis, in the background.

Open routing counts only the parties on the hub as owners, so what a departed party leaves in the owner index routes
nothing; but a platform later registering the same party id would inherit it: its START_SESSION, PATCH or
authorize would go where the old platform's objects were. So, once a platform leaves, every entry naming one of its
parties goes (storage.departed_cleanup says which, and how a party id registered again keeps its new entries).

Off the request path: the DELETE answers at once, and the cleanup begins delay_s later (the directory's PROPAGATION_S,
a forward, and a margin), when no hub process relays for the party any more. What a process noted of the party's
requests may be written later still (the owner index's notes, the location cache's updates, held back while Redis was
away), but it names only parties the process's directory holds on the platform they were seen on, and is written only
in the directory generation it was decided in (DirectoryCache.fence): once the departure is announced, nothing names
the party again, however late, nor gives a platform registering its id later what the old one sent.

The departure is noted in Redis (`departed-parties`, party -> when it left), and one hub at a time cleans up: the one
that claims `departed-parties:claim` (a storage.redis_lease of CLAIM_TTL_S, renewed while the cleanup goes on) cleans
up every departure that is due, of every platform, in one pass per hash, and takes the departures it cleaned up off the
list.
A hub that finds the claim taken looks again when it runs out, and then finds those departures done or, the hub that
held it having stopped, cleans them up itself. Every hub reads the list at start and every RETRY_S, so a departure a
hub noted and did not live to clean up is taken up. A stop may cancel the cleanup anywhere: each script removes its
entries whole or not at all, and what it had not reached is as before the party left (harmless: no owner on the
hub) until the next cleanup; cleaning up twice removes nothing more.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import cast

import asyncpg
import redis.asyncio as redis
import structlog

from storage.departed_cleanup import Cleanup, PartyKey
from storage.directory import PROPAGATION_S, PartyRole
from storage.location_cache import LocationCache
from storage.redis_lease import Lease
from storage.routing_state import RoutingState

log = structlog.get_logger()

RETRY_S = 60.0  # a cleanup that failed (Redis or PostgreSQL away) is tried again this much later; the list read
CLAIM_TTL_S = 10.0  # a hub stopped while cleaning up holds the claim this long at most
_MARGIN_S = 1.0  # past the last forward of a request for the party

# KEYS: the departures to clean up. ARGV: a party and when it left (ms), for each party cleaned up. Each is done unless
# it left again since.
_DONE = """
local done = 0
for i = 1, #ARGV, 2 do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) == ARGV[i + 1] then done = done + redis.call('ZREM', KEYS[1], ARGV[i]) end
end
return done
"""


class ClaimLost(Exception):
    """The claim ran out while this hub was cleaning up (a long pause), and another hub may hold it now."""


@dataclass
class _Due:
    not_before: float  # when the cleanup may begin
    at: int  # when the party left (ms), its score in the list
    noted: bool  # in the list: gone from there, another hub cleaned it up


class Departures:
    """`left()` when a platform leaves the hub; `run()` cleans up after it, for the life of the process."""

    def __init__(self, pool: asyncpg.Pool, client: redis.Redis, prefix: str, routing: RoutingState,
                 locations: LocationCache, forward_timeout_s: float) -> None:  # fmt: skip
        self._redis = client
        self._cleanup = Cleanup(pool, client, prefix, routing, locations)
        self.delay_s = PROPAGATION_S + forward_timeout_s + _MARGIN_S
        self._pending = f"{prefix}departed-parties"  # CC-PID -> when it left (ms)
        self._claim = f"{prefix}departed-parties:claim"
        self._due: dict[PartyKey, _Due] = {}
        self._wake = asyncio.Event()
        self._done = client.register_script(_DONE)

    async def left(self, roles: Iterable[PartyRole]) -> None:
        """A platform left the hub: its parties are cleaned up after delay_s, by this process or another hub (the
        next to start, if this one stops first). Best effort: the platform has left whatever Redis says."""
        at = int(time.time() * 1000)
        parties = sorted({role.key for role in roles})
        for party in parties:
            self._due[party] = _Due(at / 1000 + self.delay_s, at, noted=False)
        self._wake.set()
        try:
            if parties:
                await self._redis.zadd(self._pending, {_text(party): at for party in parties})
        except redis.RedisError as exc:  # cleaned up by this process all the same, unless it stops first
            log.warning("departed_parties_not_noted", parties=[_text(party) for party in parties], error=str(exc))
            return
        for party in parties:
            if (due := self._due.get(party)) and due.at == at:
                due.noted = True

    async def before_registering(self, parties: Iterable[PartyKey]) -> None:
        """A platform is about to register party ids: those whose departure is not cleaned up yet are cleaned up now,
        before the registration is committed. The index names a party by its id alone; once its id is held again the
        cleanup can no longer tell the old platform's entries from the new one's and keeps them all, so the new platform
        would inherit the old one's (an open GET or PATCH of a session pushed to the old eMSP, an authorize of its
        token). The cleanup's wait (delay_s) is for requests the old platform still had in flight, whose late notes the
        directory's fence keeps out already. Best effort: Redis away, the registration goes on, as before."""
        parties = sorted(set(parties))
        try:
            scores = await self._redis.zmscore(self._pending, [_text(party) for party in parties]) if parties else []
        except redis.RedisError as exc:
            log.warning("departed_parties_not_read", error=str(exc))
            scores = [None] * len(parties)
        pending = [party for party, score in zip(parties, scores, strict=True)
                   if score is not None or party in self._due]  # fmt: skip
        if pending:
            log.info("departed_parties_cleaned_before_registering", parties=[_text(party) for party in pending])
            try:
                await self._cleanup.clean(pending, _no_claim_to_keep)  # the pass due later finds them held: kept
            except (redis.RedisError, asyncpg.PostgresError, OSError) as exc:
                log.warning("departed_parties_not_cleaned", parties=[_text(party) for party in pending],
                            error=str(exc), before="registering")  # fmt: skip

    async def run(self) -> None:
        """For the life of the process: the departures that are due, cleaned up under the claim; first those a hub
        stopped before cleaning up after."""
        read_at, claimed_until = 0.0, 0.0  # when to read the list next; until when another hub holds the claim
        while True:
            now = time.time()
            if now >= read_at:
                await self._read_pending()
                read_at = now + RETRY_S
            if now >= claimed_until and any(due.not_before <= now for due in self._due.values()):
                claimed_until = await self._clean_claimed()
            self._wake.clear()
            next_due = min((due.not_before for due in self._due.values()), default=read_at)
            wake_at = min(read_at, max(next_due, claimed_until))
            with contextlib.suppress(TimeoutError):  # not wait_for, which in Python 3.11 can drop a cancel
                async with asyncio.timeout(max(wake_at - time.time(), 0.01)):
                    await self._wake.wait()

    async def _read_pending(self) -> None:
        """Take the departures noted in Redis: one another hub noted becomes due here too; one this hub noted and no
        longer there was cleaned up by another."""
        noted_before = {party: due for party, due in self._due.items() if due.noted}
        try:
            pending = cast(list[tuple[bytes, float]], await self._redis.zrange(self._pending, 0, -1, withscores=True))
        except redis.RedisError as exc:  # this hub's own are cleaned up all the same; the others' next time
            log.warning("departed_parties_not_read", error=str(exc))
            return
        listed = {}
        for member, score in pending:
            country, _, party_id = _text(member).partition("-")
            listed[(country, party_id)] = at = int(score)
            due = self._due.get((country, party_id))
            if due is None or due.at < at:
                self._due[(country, party_id)] = _Due(at / 1000 + self.delay_s, at, noted=True)
                log.info("departed_party_taken_up", party=_text(member),
                         cleanup_in_s=round(max(at / 1000 + self.delay_s - time.time(), 0.0), 1))  # fmt: skip
        for party, due in noted_before.items():
            if party not in listed and self._due.get(party) is due:  # not if it left again meanwhile
                del self._due[party]
                log.info("departed_party_done_by_another_hub", party=_text(party))

    async def _clean_claimed(self) -> float:
        """Claim the cleanup, then clean up what is due and still listed; returns until when another hub holds the
        claim (0 once this hub cleaned up)."""
        claim = Lease(self._redis, self._claim, CLAIM_TTL_S)
        try:
            async with claim.held() as held:
                if not held:
                    return time.time() + await claim.held_by_another_ms() / 1000
                await self._read_pending()  # what another hub cleaned up before this one claimed is done
                now = time.time()
                due = {party: due for party, due in self._due.items() if due.not_before <= now}
                if due:
                    await self._clean(due, claim)
        except redis.RedisError as exc:  # taking the claim, or asking how long another holds it: the rest says its own
            log.warning("departed_parties_not_claimed", error=str(exc), retry_in_s=RETRY_S)
            return time.time() + RETRY_S
        return 0.0

    async def _clean(self, due: dict[PartyKey, _Due], claim: Lease) -> None:
        async def keep() -> None:
            if claim.lost:  # a renewal found it gone or another's
                raise ClaimLost

        try:
            await self._cleanup.clean(due, keep)
        except ClaimLost:  # left due: the claim's next holder finds them done, or does them
            log.warning("departed_parties_claim_lost", parties=[_text(party) for party in due])
            return
        except Exception as exc:  # Redis or PostgreSQL briefly away: what was removed is gone, the rest comes later
            log.warning("departed_parties_not_cleaned", parties=[_text(party) for party in due], error=str(exc),
                        retry_in_s=RETRY_S)  # fmt: skip
            for party, entry in due.items():
                if self._due.get(party) is entry:
                    entry.not_before = time.time() + RETRY_S
            return
        for party, entry in due.items():
            if self._due.get(party) is entry:  # not if it left again meanwhile: then once more
                del self._due[party]
        with contextlib.suppress(redis.RedisError):  # else cleaned up again, uselessly, at the next start
            await self._done(keys=[self._pending], args=[x for party, entry in due.items()
                                                         for x in (_text(party), entry.at)])  # fmt: skip


async def _no_claim_to_keep() -> None:
    """A cleanup before a registration runs beside the claimed ones: each of its scripts removes whole or nothing, so
    two cleanups of a party remove nothing twice."""


def _text(value: bytes | str | PartyKey) -> str:
    if isinstance(value, tuple):
        return f"{value[0]}-{value[1]}"
    return value.decode() if isinstance(value, bytes) else value
