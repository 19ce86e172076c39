"""The batching both background writers share: the routing log's group commit and the location cache's updates."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterator
from typing import Generic, TypeVar

Item = TypeVar("Item")


class Batches(Generic[Item]):
    """The items on their way to one writer, taken a batch at a time (next_batch). asyncio.Queue's put_nowait,
    get_nowait, qsize, empty, task_done and join, as the writers use them, without its per-item bookkeeping for
    getters and putters: unbounded (each writer bounds its own: RoutingLogWriter.record, RelayedUpdates.submit), one
    reader, the writer, woken by the first item put while it waits."""

    def __init__(self) -> None:
        self._items: deque[Item] = deque()
        self._waiter: asyncio.Future[None] | None = None  # the writer, waiting for an item
        self._unfinished = 0  # put and not yet task_done
        self._finished = asyncio.Event()
        self._finished.set()

    def put_nowait(self, item: Item) -> None:
        self._items.append(item)
        self._unfinished += 1
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def get_nowait(self) -> Item:
        if not self._items:
            raise asyncio.QueueEmpty
        return self._items.popleft()

    def qsize(self) -> int:
        return len(self._items)

    def empty(self) -> bool:
        return not self._items

    def __iter__(self) -> Iterator[Item]:
        """The items queued, oldest first (not taken)."""
        return iter(self._items)

    def task_done(self, count: int = 1) -> None:
        """count items taken are done with (written, or given up)."""
        if count > self._unfinished:
            raise ValueError("task_done() called too many times")
        self._unfinished -= count
        if not self._unfinished:
            self._finished.set()

    async def join(self, writer: asyncio.Task[None]) -> None:
        """Until every item put is done with, or writer, the task working them off, has ended: cancelled with every
        task at a forced quit (a second Ctrl-C, asyncio.run cancelling what is left), nothing would finish them."""
        if not self._unfinished or writer.done():
            return
        self._finished.clear()
        finished = asyncio.ensure_future(self._finished.wait())
        try:
            await asyncio.wait((finished, writer), return_when=asyncio.FIRST_COMPLETED)
        finally:
            finished.cancel()

    async def next_batch(self, limit: int, linger_s: float = 0.0) -> list[Item]:
        """The items queued once there is one and linger_s more have passed, the oldest limit of them: a capped batch,
        since working one off holds the event loop, and a backlog would stall every request for as long."""
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if linger_s:
            await asyncio.sleep(linger_s)  # cancelled (the writer stops): nothing taken, all is still queued
        items = self._items
        if len(items) <= limit:
            batch = list(items)
            items.clear()
            return batch
        return [items.popleft() for _ in range(limit)]
