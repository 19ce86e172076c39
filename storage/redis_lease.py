"""A lease in Redis: a key that one hub process at a time holds, for the work only one of them should do at once (the
pull sync of the location cache, the owner pull of a module, the cleanup after departed parties).

The holder sets the key, with a token of its own, for ttl_s, and renews it every ttl_s / 3 in the background for as
long as it works. So a run longer than ttl_s (a CPO with millions of locations, a slow Sender) keeps its lease, and a
process that dies in the middle of one (SIGKILL, its machine gone, Redis unreachable from it) lets go within ttl_s,
not after the longest a whole run could take. A renewal that finds the key gone or another's (Redis lost its data, or
the holder was paused for longer than ttl_s) marks the lease lost; the work sees it there, or by the key itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator

import redis.asyncio as redis
import structlog

log = structlog.get_logger()

TTL_S = 60.0  # what a dead holder keeps the others waiting, at most; renewed every third of it

# KEYS: the lease. ARGV: the holder's token, the TTL in ms: renewed if it is the holder's.
KEEP = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end\nreturn 0\n"
# KEYS: the lease. ARGV: the holder's token: deleted if it is the holder's (not one another process took since).
RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end\nreturn 0\n"


class Lease:
    def __init__(self, client: redis.Redis, key: str, ttl_s: float = TTL_S) -> None:
        self.key, self.token, self.ttl_ms = key, secrets.token_hex(8), int(ttl_s * 1000)
        self.lost = False  # found gone or another's by a renewal
        self._redis = client
        self._keep, self._release = client.register_script(KEEP), client.register_script(RELEASE)

    @contextlib.asynccontextmanager
    async def held(self) -> AsyncIterator[bool]:
        """True for as long as the block runs if this process took the lease (renewed meanwhile, released at the
        end); False, nothing taken, if another process holds it."""
        if not await self._redis.set(self.key, self.token, nx=True, px=self.ttl_ms):
            yield False
            return
        renewing = asyncio.create_task(self._renew_until_lost())
        try:
            yield True
        finally:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing
            with contextlib.suppress(redis.RedisError):  # else it runs out all the same, within ttl_s
                await self._release(keys=[self.key], args=[self.token])

    async def held_by_another_ms(self) -> int:
        """How many ms the process holding the lease (another, once held() yielded False) holds it still, as Redis
        says: at least 50 (none: let go just now), the whole TTL if the key never runs out (one set by hand)."""
        left_ms = int(await self._redis.pttl(self.key))  # -2: no such key; -1: no expiry
        return self.ttl_ms if left_ms == -1 else max(left_ms, 50)

    async def _renew_until_lost(self) -> None:
        while True:
            await asyncio.sleep(self.ttl_ms / 3000)
            try:
                kept = await self._keep(keys=[self.key], args=[self.token, self.ttl_ms])
            except redis.RedisError as exc:  # Redis briefly away: tried again at the next third
                log.warning("lease_not_renewed", lease=self.key, error=str(exc))
                continue
            if not kept:
                self.lost = True
                log.warning("lease_lost", lease=self.key,
                            reason="gone from Redis (it lost its data) or taken by another process")  # fmt: skip
                return
