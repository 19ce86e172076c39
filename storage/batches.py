"""The batching both background writers share: the routing log's group commit and the location cache's updates."""

from __future__ import annotations

import asyncio
from typing import TypeVar

Item = TypeVar("Item")


async def next_batch(queue: asyncio.Queue[Item], limit: int, linger_s: float = 0.0) -> list[Item]:
    """The next item, waited for, and what else is queued after linger_s more, up to limit items: a capped batch,
    since working one off holds the event loop, and a backlog would stall every request for as long."""
    batch = [await queue.get()]
    if linger_s:
        try:
            await asyncio.sleep(linger_s)
        except asyncio.CancelledError:  # the writer stops: what it took is back in the queue, for whoever drains it
            queue.put_nowait(batch[0])
            raise
    while len(batch) < limit and not queue.empty():
        batch.append(queue.get_nowait())
    return batch
