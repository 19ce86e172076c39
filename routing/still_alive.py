"""Still-alive: the hub notices parties that stopped answering and moves them between CONNECTED and OFFLINE.

mod_hub_client_info.asciidoc, Still alive check: "the Hub should keep track of the time that has passed since the
last message was received from a connected party. When this is longer then X minutes (when unsure, start with 5
minutes) the Hub should send a: GET to the Version information endpoint." A forward that fails to connect or times
out makes the hub probe at once. An OFFLINE party gets no requests ("No requests can be sent", answered 4003 at
once by routing.decide) and is probed until it answers again. Each change is a ClientInfo push (client_info_push
outbox, written in the same statement) and a directory change every hub process picks up.

Probes are claimed in Redis (SET NX with an expiry), so hub processes sharing a Redis never probe one party twice
in a probe interval, and any process may take any party: there is no leader to lose.

Each process sleeps until the next connected platform will have been silent that long (its last message, as the
database has it, plus the silence window), at most LONGEST_SLEEP_S; while a platform is due (OFFLINE, silent, or just
probed), a probe interval. A suspect wakes it at once, and so does a directory change (a platform that registers is
silent one window later, however short). An idle hub asks the database once a minute, not every few seconds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import asyncpg
import httpx
import redis.asyncio as redis
import structlog

from hub.errors import AnswerTooLarge
from hub.own_messages import Trace, hub_request
from hub.party_client import PartyClient
from routing.party_addresses import ALLOWANCE, RefusedConnect
from storage.directory import DirectoryCache, Platform
from storage.log_row import LogEntry
from storage.sql import QUERIES

log = structlog.get_logger()

Record = Callable[[LogEntry], Awaitable[None]]

LONGEST_SLEEP_S = 60.0  # the safety net: a wake-up missed (Redis away) delays a probe by at most this much
SHORTEST_SLEEP_S = 0.2  # however short the probe interval: no busier than this
AFTER_ERROR_S = 1.0  # the database or Redis briefly away: look again soon
# A suspect (a forward that failed) is probed though the party was probed within a probe interval, which may have
# been before it went away, but no more than once in this long by all hub processes together.
SUSPECT_CLAIM_S = 2.0


class StillAlive:
    def __init__(
        self, pool: asyncpg.Pool, client: redis.Redis, prefix: str, http: PartyClient,
        directory: DirectoryCache, hub: tuple[str, str], record: Record,
        silence_s: float, probe_interval_s: float,
    ) -> None:  # fmt: skip
        self._pool, self._redis, self._prefix, self._http = pool, client, prefix, http
        self._directory, self._hub, self._record = directory, hub, record
        self.silence_s, self.probe_interval_s = silence_s, probe_interval_s
        self._suspects: set[int] = set()
        self._wake = asyncio.Event()

    def suspect(self, platform_id: int) -> None:
        """A forward to this platform failed (4002/4003), or an OFFLINE platform called: probe it now."""
        if platform_id not in self._suspects:
            self._suspects.add(platform_id)
            self._wake.set()

    async def run(self) -> None:
        """For the life of the process: probe suspects at once, silent and OFFLINE platforms when due."""
        while True:
            reloaded = self._directory.next_reload()  # before the round reads: a change meanwhile cuts the sleep short
            self._wake.clear()  # before the round takes the suspects: one that comes meanwhile cuts it short too
            try:
                wait_s = await self.check_round()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database or Redis briefly away: the next round tries again
                log.warning("still_alive_round_failed", error=str(exc))
                wait_s = AFTER_ERROR_S
            await self._sleep(wait_s, reloaded)

    async def _sleep(self, wait_s: float, reloaded: asyncio.Event) -> None:
        """Until a suspect, a directory change, or wait_s. asyncio.wait, not wait_for: Python 3.11's wait_for drops a
        cancel that comes as an event is set, and the loop went on after the hub's shutdown had cancelled it."""
        waits = [asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(reloaded.wait())]
        try:
            await asyncio.wait(waits, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()

    async def check_round(self) -> float:
        """Probe the platforms due now (suspects, silent ones, OFFLINE ones) that no process probed within a probe
        interval; how long until the next round."""
        directory = self._directory.current
        suspects, self._suspects = self._suspects, set()
        async with self._pool.acquire() as conn:
            found = await conn.fetchrow(QUERIES["silent_platforms"], self.silence_s)
        offline = {
            p.id for p in directory.platforms.values()
            if p.state == "REGISTERED" and any(r.status == "OFFLINE" for r in p.roles)
        }  # fmt: skip
        due = [directory.platforms[i] for i in suspects | set(found["silent"]) | offline if i in directory.platforms]
        # A CONNECTED platform a forward failed to reach: probed though it was probed within a probe interval (that
        # probe may have found it alive just before it went away), and again once a claim taken meanwhile runs out.
        # An OFFLINE one that calls is probed every probe interval, as any OFFLINE one.
        failed = suspects - offline
        claimed = [p for p in due if await self._claim(p, suspected=p.id in failed)]
        self._suspects |= failed.intersection(p.id for p in due) - {p.id for p in claimed}
        await asyncio.gather(*(self.probe(p) for p in claimed))
        next_in_s = found["next_in_s"]
        wait_s = LONGEST_SLEEP_S if next_in_s is None else min(LONGEST_SLEEP_S, next_in_s)
        if self._suspects:
            wait_s = min(wait_s, SUSPECT_CLAIM_S)
        # due again once the claims run out: OFFLINE ones are probed until they answer, and one probed meanwhile by
        # another process (or by this one) is no longer silent by then, or OFFLINE
        return max(SHORTEST_SLEEP_S, min(wait_s, self.probe_interval_s) if due else wait_s)

    async def _claim(self, platform: Platform, suspected: bool) -> bool:
        """This process's turn to probe the platform: none had it within a probe interval, or, for a suspect (a
        forward to it failed), within SUSPECT_CLAIM_S; a suspect's probe counts as the interval's probe too."""
        probed = f"{self._prefix}still-alive:probed:{platform.id}"
        interval_ms = max(100, int(self.probe_interval_s * 1000))
        if not suspected:
            return bool(await self._redis.set(probed, "1", nx=True, px=interval_ms))
        short_ms = max(100, int(min(SUSPECT_CLAIM_S, self.probe_interval_s) * 1000))
        if not await self._redis.set(f"{self._prefix}still-alive:suspected:{platform.id}", "1", nx=True, px=short_ms):
            return False
        await self._redis.set(probed, "1", px=interval_ms)
        return True

    async def probe(self, platform: Platform) -> bool:
        """GET the platform's versions endpoint with its token B; any HTTP answer below 500 means it is alive. A
        versions URL this process does not call (routing.party_addresses) leaves its status as it is: False."""
        started, to = time.perf_counter(), platform.roles[0] if platform.roles else None
        alive: bool | None
        versions_url = platform.versions_url or ""
        entry, headers = hub_request(self._hub, platform, to, "GET", versions_url, "versions")
        try:
            response = await self._http.fetch("GET", versions_url, headers, row=entry)
            Trace.answered(entry, response.status_code, response.content)  # as the row of any other call's answer
            alive = response.status_code < 500
        except httpx.HTTPError as exc:
            entry.error, alive = f"{type(exc).__name__}: {exc}", False
            if isinstance(exc.__cause__, RefusedConnect):  # not called: no sign the party is away
                alive = None
        except AnswerTooLarge as exc:  # it answered, at length: alive
            entry.error, alive = exc.message, True
        entry.duration_ms = round((time.perf_counter() - started) * 1000, 3)
        await self._record(entry)
        if alive is None:
            # One process set up without the operator's allowance (OCPI_HUB_PARTY_NETWORKS_ALLOWED) must not take the
            # party off every process of the hub: it says so in its own log instead.
            log.error("party_address_not_allowed", platform=platform.name, url=versions_url[:200], setting=ALLOWANCE,
                      error=entry.error)  # fmt: skip
            return False
        await self.set_status(platform, "CONNECTED" if alive else "OFFLINE")
        return alive

    async def set_status(self, platform: Platform, status: str) -> None:
        async with self._pool.acquire() as conn:
            changed = await conn.fetchval(QUERIES["set_platform_liveness"], platform.id, status)
            if status == "CONNECTED":
                await conn.execute(QUERIES["touch_platforms"], [platform.id], [datetime.now(UTC)])
        if changed:
            log.warning("party_status_changed", platform=platform.name, status=status,
                        parties=[f"{r.country_code}-{r.party_id}" for r in platform.roles])  # fmt: skip
            await self._directory.changed()  # reloaded here at once: this process pushes the change without delay
