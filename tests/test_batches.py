"""The queue both background writers take their batches from (storage.batches): capped, lingering, woken by the first
item, and nothing taken from it by a writer stopped while it lingers."""

from __future__ import annotations

import asyncio

from storage.batches import Batches


def test_a_batch_holds_at_most_its_limit_and_the_rest_wait_in_order() -> None:
    async def test() -> None:
        queue: Batches[int] = Batches()
        for n in range(7):
            queue.put_nowait(n)
        assert await queue.next_batch(3) == [0, 1, 2]
        assert await queue.next_batch(3) == [3, 4, 5]
        assert await queue.next_batch(3) == [6]
        assert queue.empty()

    asyncio.run(test())


def test_a_waiting_writer_wakes_for_the_first_item_and_takes_what_came_while_it_lingered() -> None:
    async def test() -> None:
        queue: Batches[int] = Batches()
        taking = asyncio.create_task(queue.next_batch(100, linger_s=0.05))
        await asyncio.sleep(0.01)
        assert not taking.done()
        queue.put_nowait(1)
        await asyncio.sleep(0.01)  # lingering
        queue.put_nowait(2)
        assert await asyncio.wait_for(taking, 1) == [1, 2]

    asyncio.run(test())


def test_a_writer_stopped_while_it_lingers_leaves_every_item_queued_in_order() -> None:
    async def test() -> None:
        queue: Batches[int] = Batches()
        queue.put_nowait(1)
        queue.put_nowait(2)
        taking = asyncio.create_task(queue.next_batch(100, linger_s=10))
        await asyncio.sleep(0.01)
        taking.cancel()
        await asyncio.gather(taking, return_exceptions=True)
        assert list(queue) == [1, 2]  # as the spool at close takes them (storage.routing_log)

    asyncio.run(test())


def test_join_waits_until_every_item_put_is_done_with() -> None:
    async def test() -> None:
        queue: Batches[int] = Batches()
        writer = asyncio.create_task(asyncio.Event().wait())
        await asyncio.wait_for(queue.join(writer), 1)  # nothing put
        for n in range(3):
            queue.put_nowait(n)
        joined = asyncio.create_task(queue.join(writer))
        batch = await queue.next_batch(2)
        queue.task_done(len(batch))
        await asyncio.sleep(0.01)
        assert not joined.done()  # one still queued
        queue.task_done(len(await queue.next_batch(2)))
        await asyncio.wait_for(joined, 1)
        writer.cancel()

    asyncio.run(test())


def test_join_ends_when_the_writer_working_the_items_off_has_ended() -> None:
    # At a forced quit (a second Ctrl-C) asyncio.run cancels every task, the writer's too: a join that waited for the
    # items alone waited for ever (the location cache's), or its whole timeout (the routing log's).
    async def test() -> None:
        queue: Batches[int] = Batches()
        writer = asyncio.create_task(asyncio.Event().wait())
        queue.put_nowait(1)
        joined = asyncio.create_task(queue.join(writer))
        await asyncio.sleep(0.01)
        assert not joined.done()
        writer.cancel()
        await asyncio.wait_for(joined, 1)
        await asyncio.wait_for(queue.join(writer), 1)  # ended before the join began
        assert list(queue) == [1]  # left for the writer's close to deal with (the routing log spools it)

    asyncio.run(test())
