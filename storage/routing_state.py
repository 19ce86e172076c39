"""Routing state shared by every hub process, kept in Redis: pending result callbacks, paging links, object owners.

Nothing here lives in process memory, so a command result or a "next page" request works whichever hub process
behind the load balancer receives it. Callbacks and pages expire; owners are a hint for open routing.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator

import msgspec
import redis.asyncio as redis
import structlog

log = structlog.get_logger()

CALLBACK_TTL_S = 48 * 3600  # mod_commands: results may arrive long after the CommandResponse's timeout
PAGE_TTL_S = 24 * 3600  # a client crawling a long list pauses between pages


class Relayed(msgspec.Struct, frozen=True):
    """Where a hub URL leads: the original URL, who may call it, and the parties on both ends."""

    url: str
    module: str
    interface: str
    caller_platform_id: int  # the platform allowed to use the hub URL
    target_platform_id: int  # the platform the hub calls with it
    caller_party: tuple[str, str]  # OCPI-from of the relayed call
    target_party: tuple[str, str]  # OCPI-to of the relayed call
    correlation_id: str


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Relayed)


def new_key() -> str:
    return secrets.token_urlsafe(18)


class RoutingState:
    def __init__(self, redis_client: redis.Redis, prefix: str) -> None:
        self._redis = redis_client
        self._prefix = prefix
        self._owners: dict[tuple[str, str], str] = {}
        self._owners_flushed = asyncio.Event()

    async def remember(self, kind: str, relayed: Relayed, ttl_s: int) -> str:
        key = new_key()
        await self._redis.set(f"{self._prefix}{kind}:{key}", _encoder.encode(relayed), ex=ttl_s)
        return key

    async def recall(self, kind: str, key: str) -> Relayed | None:
        raw = await self._redis.get(f"{self._prefix}{kind}:{key}")
        return _decoder.decode(raw) if raw else None

    def note_owner(self, module: str, object_id: str, owner: tuple[str, str]) -> None:
        """Remember who owns an object seen in passing; written to Redis in batches, off the request path."""
        self._owners[(module, object_id)] = f"{owner[0]}-{owner[1]}"

    async def owner(self, module: str, object_id: str) -> tuple[str, str] | None:
        pending = self._owners.get((module, object_id))
        found = pending or await self._redis.hget(f"{self._prefix}owners:{module}", object_id)
        if not found:
            return None
        text = found.decode() if isinstance(found, bytes) else found
        country, _, party = text.partition("-")
        return (country, party)

    @contextlib.asynccontextmanager
    async def running(self, interval_s: float = 0.05) -> AsyncIterator[RoutingState]:
        # Stopped by an event, not by cancelling it: redis-py's asyncio client drops a cancel that lands inside a
        # pipeline (redis/redis-py#2028), after which the task slept on forever and the hub never exited.
        stop = asyncio.Event()
        task = asyncio.create_task(self._flush_owners(interval_s, stop), name="routing_state_owners")
        try:
            yield self
        finally:
            stop.set()
            await task
            await self._write_owners()  # the notes of the last requests

    async def _flush_owners(self, interval_s: float, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):  # not wait_for, which in Python 3.11 can drop a cancel
                async with asyncio.timeout(interval_s):
                    await stop.wait()
            try:
                await self._write_owners()
            except Exception as exc:  # Redis briefly away: keep the notes and try again
                log.warning("owner_index_write_failed", error=str(exc))

    async def _write_owners(self) -> None:
        if not self._owners:
            return
        batch, self._owners = self._owners, {}
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for (module, object_id), owner in batch.items():
                    pipe.hset(f"{self._prefix}owners:{module}", object_id, owner)
                await pipe.execute()
        except BaseException:  # cancelled or failed: the notes stay for the next write
            self._owners = batch | self._owners
            raise
