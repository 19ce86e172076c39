"""The floor under the hub's hot path: the same stack with none of the hub in it, for bench/routing.py's table.

An ASGI app on uvicorn that reads the request, forwards it with the shared aiohttp session to one fixed URL, writes
one row per request with group commit (one INSERT ... unnest per batch, committed before the answer, as the hub's
strict mode) and relays the answer. No authentication, routing decision, hash chain, cache or metrics: what is
left is the cost of uvicorn, aiohttp and asyncpg on this machine, so the table shows how much of a routed
request's cost is the hub's own.

    BARE_RELAY_TARGET=http://127.0.0.1:PORT/path BARE_RELAY_DATABASE_URL=postgresql://... \
        uvicorn --workers 2 --no-access-log bench.bare_relay:app
"""

from __future__ import annotations

import asyncio
import os
import uuid
from typing import Any

import aiohttp
import asyncpg

TARGET = os.environ.get("BARE_RELAY_TARGET", "")
DATABASE_URL = os.environ.get("BARE_RELAY_DATABASE_URL", "")
CREATE = "CREATE TABLE IF NOT EXISTS bare_relay_log (id bigserial PRIMARY KEY, request_id text, body bytea)"
INSERT = "INSERT INTO bare_relay_log (request_id, body) SELECT * FROM unnest($1::text[], $2::bytea[])"

_state: dict[str, Any] = {}


async def _write_batches(pool: asyncpg.Pool, queue: asyncio.Queue[tuple[str, bytes, asyncio.Future[None]]]) -> None:
    while True:
        batch = [await queue.get()]
        while not queue.empty():
            batch.append(queue.get_nowait())
        async with pool.acquire() as conn:
            await conn.execute(INSERT, [row[0] for row in batch], [row[1] for row in batch])
        for _, _, committed in batch:
            committed.set_result(None)


async def _lifespan(receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            _state["session"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, limit_per_host=64))
            _state["pool"] = pool = await asyncpg.create_pool(DATABASE_URL, min_size=1, max_size=4)
            async with pool.acquire() as conn, conn.transaction():
                # Two workers' CREATE TABLE IF NOT EXISTS at once can fail on the catalog's unique index; a worker
                # whose start failed would serve without its writer (uvicorn runs with --lifespan on, so it says so).
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext('bare_relay_log'))")
                await conn.execute(CREATE)
            queue: asyncio.Queue[tuple[str, bytes, asyncio.Future[None]]] = asyncio.Queue()
            _state["queue"] = queue
            _state["writer"] = asyncio.create_task(_write_batches(pool, queue))
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            _state["writer"].cancel()
            await _state["session"].close()
            await _state["pool"].close()
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    body = b"".join(chunks)
    request_id = str(uuid.uuid4())
    headers = {"Authorization": "Token eA==", "X-Request-ID": request_id, "Content-Type": "application/json"}
    async with _state["session"].request(scope["method"], TARGET, headers=headers, data=body) as response:
        status, payload = response.status, await response.read()
    committed = asyncio.get_running_loop().create_future()
    _state["queue"].put_nowait((request_id, body, committed))
    await committed
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": payload})
