"""The hub's storage opened the way a hub process opens it, for tests that drive its Redis indexes directly: a
migrated database, a pool, a Redis client, and platforms registered by plain SQL."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import redis.asyncio as redis

from storage.directory import announce_change
from storage.location_cache import LocationCache
from storage.migrate import migrate
from tests.conftest import SECRET_KEY


@dataclass(frozen=True)
class Storage:
    conn: asyncpg.Connection  # for the test's own statements
    pool: asyncpg.Pool  # for what the hub reads through its pool (DirectoryCache, Departures)
    redis: redis.Redis


@contextlib.asynccontextmanager
async def hub_storage(database_url: str, redis_url: str, decode_responses: bool = False) -> AsyncIterator[Storage]:
    conn = await asyncpg.connect(database_url)
    await migrate(conn, SECRET_KEY)
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    client = redis.Redis.from_url(redis_url, decode_responses=decode_responses)
    try:
        yield Storage(conn, pool, client)
    finally:
        await client.aclose()
        await pool.close()
        await conn.close()


async def registered_platform(conn: asyncpg.Connection, name: str, *parties: tuple[str, str]) -> int:
    """A REGISTERED platform holding a CONNECTED CPO role for each (country code, party id); its id."""
    platform_id: int = await conn.fetchval(
        "INSERT INTO platform (name, state) VALUES ($1, 'REGISTERED') RETURNING id", name
    )
    for country_code, party_id in parties:
        await conn.execute("INSERT INTO party_role (platform_id, role, country_code, party_id, status) "
                           "VALUES ($1, 'CPO', $2, $3, 'CONNECTED')", platform_id, country_code, party_id)  # fmt: skip
    return platform_id


def registration_after_the_first_chunk(cache: LocationCache, client: redis.Redis, prefix: str) -> list[int]:
    """Have the directory change (a platform registering, announced) right after the cache's first chunk of a
    removal (LocationCache.forget) went through; the list returned counts the chunks sent, refused ones included."""
    forget_chunk, chunks = cache._forget_script, [0]

    async def then_a_registration(**call: list) -> int:
        chunks[0] += 1
        reply = await forget_chunk(**call)
        if chunks[0] == 1:
            await announce_change(client, prefix)
        return int(reply)

    cache._forget_script = then_a_registration  # type: ignore[assignment]
    return chunks
