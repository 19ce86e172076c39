"""Still-alive: the hub notices parties that stopped answering and moves them between CONNECTED and OFFLINE.

mod_hub_client_info.asciidoc, Still alive check: "the Hub should keep track of the time that has passed since the
last message was received from a connected party. When this is longer then X minutes (when unsure, start with 5
minutes) the Hub should send a: GET to the Version information endpoint." A forward that fails to connect or times
out makes the hub probe at once. An OFFLINE party gets no requests ("No requests can be sent", answered 4003 at
once by routing.decide) and is probed until it answers again. Each change is a ClientInfo push (client_info_push
outbox, written in the same statement) and a directory change every hub process picks up.

Probes are claimed in Redis (SET NX with an expiry), so hub processes sharing a Redis never probe one party twice
in a probe interval, and any process may take any party: there is no leader to lose.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import asyncpg
import httpx
import redis.asyncio as redis
import structlog

from hub.errors import AnswerTooLarge
from hub.party_api import PartyClient, hub_request
from storage.directory import DirectoryCache, Platform
from storage.log_row import LogEntry
from storage.sql import QUERIES

log = structlog.get_logger()

Record = Callable[[LogEntry], Awaitable[None]]


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
        round_s = max(0.2, min(10.0, self.silence_s / 4, self.probe_interval_s))
        while True:
            # asyncio.timeout, not wait_for: Python 3.11's wait_for drops a cancel that comes as the event is set,
            # and the loop went on after the hub's shutdown had cancelled it
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(round_s):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.check_round()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database or Redis briefly away: the next round tries again
                log.warning("still_alive_round_failed", error=str(exc))

    async def check_round(self) -> None:
        directory = self._directory.current
        suspects, self._suspects = self._suspects, set()
        async with self._pool.acquire() as conn:
            silent = {r["id"] for r in await conn.fetch(QUERIES["silent_platforms"], self.silence_s)}
        offline = {
            p.id for p in directory.platforms.values()
            if p.state == "REGISTERED" and any(r.status == "OFFLINE" for r in p.roles)
        }  # fmt: skip
        due = [directory.platforms[i] for i in suspects | silent | offline if i in directory.platforms]
        claimed = [p for p in due if await self._claim(p)]
        await asyncio.gather(*(self.probe(p) for p in claimed))

    async def _claim(self, platform: Platform) -> bool:
        key = f"{self._prefix}still-alive:probed:{platform.id}"
        return bool(await self._redis.set(key, "1", nx=True, px=max(100, int(self.probe_interval_s * 1000))))

    async def probe(self, platform: Platform) -> bool:
        """GET the platform's versions endpoint with its token B; any HTTP answer below 500 means it is alive."""
        started, to = time.perf_counter(), platform.roles[0] if platform.roles else None
        versions_url = platform.versions_url or ""
        entry, headers = hub_request(self._hub, platform, to, "GET", versions_url, "versions")
        try:
            response = await self._http.fetch("GET", versions_url, headers)
            entry.http_status, entry.response_body = response.status_code, response.content
            alive = response.status_code < 500
        except httpx.HTTPError as exc:
            entry.error, alive = f"{type(exc).__name__}: {exc}", False
        except AnswerTooLarge as exc:  # it answered, at length: alive
            entry.error, alive = exc.message, True
        entry.duration_ms = round((time.perf_counter() - started) * 1000, 3)
        await self._record(entry)
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
