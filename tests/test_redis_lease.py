"""storage.redis_lease against the tests' real Redis: one holder at a time, kept past its TTL while the holder works,
let go within the TTL once the holder is gone (a process killed with SIGKILL), and found lost once Redis lost it."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis

from storage.redis_lease import Lease
from tests.conftest import ROOT, Services

TTL_S = 0.6


def _in_redis(services: Services, test: Callable[[aioredis.Redis, str], Awaitable[None]]) -> None:
    async def run() -> None:
        client = aioredis.from_url(services.redis_url)
        try:
            await asyncio.wait_for(test(client, f"{services.redis_prefix}lease-{secrets.token_hex(4)}"), 60)
        finally:
            await client.aclose()

    asyncio.run(run())


def test_a_lease_is_held_by_one_process_at_a_time_and_longer_than_its_ttl_while_its_holder_works(
    services: Services,
) -> None:
    async def test(client: aioredis.Redis, key: str) -> None:
        first, second = Lease(client, key, TTL_S), Lease(client, key, TTL_S)
        async with first.held() as held:
            assert held
            await asyncio.sleep(4 * TTL_S)  # a run that takes longer than the TTL
            async with second.held() as also_held:
                assert not also_held
            assert await client.get(key) == first.token.encode() and not first.lost
        assert await client.get(key) is None  # released at once, not left to run out
        async with second.held() as held_now:
            assert held_now

    _in_redis(services, test)


def test_a_lease_whose_holder_was_killed_is_free_again_within_its_ttl(services: Services) -> None:
    async def test(client: aioredis.Redis, key: str) -> None:
        holder = subprocess.Popen(
            [sys.executable, "-c", _HOLDER, services.redis_url, key, str(TTL_S)],
            cwd=ROOT, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
            await asyncio.sleep(3 * TTL_S)  # renewed by the holder all this time
            async with Lease(client, key, TTL_S).held() as held:
                assert not held
            os.kill(holder.pid, signal.SIGKILL)  # no release: it must run out
            holder.wait(10)
            assert await client.pttl(key) <= TTL_S * 1000  # what it has left of its last renewal, no more (-2: gone)
            while not await client.set(key, "ours", nx=True, px=10_000):  # free once that ran out
                await asyncio.sleep(0.02)
        finally:
            holder.kill()
            holder.wait(10)

    _in_redis(services, test)


_HOLDER = """
import asyncio, sys
import redis.asyncio as aioredis
from storage.redis_lease import Lease

async def hold():
    lease = Lease(aioredis.from_url(sys.argv[1]), sys.argv[2], float(sys.argv[3]))
    async with lease.held() as held:
        print("held" if held else "not held", flush=True)
        await asyncio.sleep(3600)

asyncio.run(hold())
"""


def test_a_lease_gone_from_redis_is_found_lost_and_the_key_another_took_is_left_alone(services: Services) -> None:
    async def test(client: aioredis.Redis, key: str) -> None:
        lease = Lease(client, key, TTL_S)
        async with lease.held() as held:
            assert held
            await client.delete(key)  # Redis lost its data
            await client.set(key, "another process's")
            await asyncio.sleep(TTL_S)  # a renewal or more
            assert lease.lost
        assert await client.get(key) == b"another process's"
        await client.delete(key)

    _in_redis(services, test)


def test_a_lease_another_holds_tells_how_long_it_is_held_still(services: Services) -> None:
    async def test(client: aioredis.Redis, key: str) -> None:
        holder, other = Lease(client, key, 10.0), Lease(client, key, 10.0)
        async with holder.held() as held:
            assert held
            async with other.held() as also_held:
                assert not also_held
                assert 5_000 < await other.held_by_another_ms() <= 10_000  # what it has left of its 10 s
        assert await other.held_by_another_ms() == 50  # let go just now: looked at again shortly, not at once
        await client.set(key, "set by hand")  # never runs out: looked at again a whole TTL later
        assert await other.held_by_another_ms() == 10_000
        await client.delete(key)

    _in_redis(services, test)
