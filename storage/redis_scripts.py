"""Lua scripts run inside a redis-py pipeline as bare EVALSHA commands: one round trip per pipeline, not two.

A script registered with a redis-py pipeline (`script(keys=..., args=..., client=pipe)`) makes the pipeline ask Redis
whether each of its scripts exists (SCRIPT EXISTS) before every execute: a round trip of its own, on every batch of
the location cache's writer. `executed` queues plain EVALSHA commands instead. Only a Redis that has lost its scripts
(restarted, failed over, SCRIPT FLUSH) costs more: it answers NOSCRIPT, the scripts are loaded and the pipeline is
queued and run once more. So a script queued this way must leave the same data when run twice (every script of the
hub's writers does: it sets, adds or removes what it is given).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import redis.asyncio as redis
from redis.asyncio.client import Pipeline
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

KeyOrArg = str | bytes | int | float


def queue_script(pipe: Pipeline, script: AsyncScript, keys: Sequence[KeyOrArg], args: Iterable[KeyOrArg]) -> None:
    """script(keys, args) on the pipeline, by its SHA1 alone."""
    pipe.evalsha(script.sha, len(keys), *keys, *args)


async def executed(client: redis.Redis, queue: Callable[[Pipeline], None], scripts: Iterable[AsyncScript]) -> list[Any]:
    """The replies of a pipeline (no transaction) that `queue` fills, its scripts by queue_script; if Redis knew none
    of them, they are loaded and the pipeline is filled and run again."""
    try:
        return await _run(client, queue)
    except NoScriptError:
        await load(client, scripts)
        return await _run(client, queue)


async def _run(client: redis.Redis, queue: Callable[[Pipeline], None]) -> list[Any]:
    async with client.pipeline(transaction=False) as pipe:
        queue(pipe)
        return await pipe.execute()


async def load(client: redis.Redis, scripts: Iterable[AsyncScript]) -> None:
    """The scripts into Redis's script cache (SCRIPT LOAD: the SHA1 is the text's, so nothing else changes)."""
    for script in scripts:
        await client.script_load(script.script)
