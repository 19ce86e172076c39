"""Deadlines on what a request waits for from someone else: the caller's body, a party's answer.

No timer per request: `asyncio.timeout` measured 4.7 us a request, and aiohttp's own total timeout 27,000
instructions. The waits in progress sit in a dict that one check, every `check_every_s`, looks through; it cancels
the waits past their deadline, and each of those raises the error it was given instead of CancelledError. A
deadline is therefore kept to within `check_every_s` (aiohttp, too, rounds timeouts of 5 s and more up to the
second).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from litestar.types import Receive

from hub.errors import BodyTooSlow

T = TypeVar("T")


class Deadlines:
    def __init__(self, check_every_s: float = 1.0) -> None:
        self.check_every_s = check_every_s
        self._waiting: dict[asyncio.Task[Any], float] = {}  # request task -> its deadline (loop time)
        self._expired: set[asyncio.Task[Any]] = set()
        self._check: asyncio.TimerHandle | None = None

    async def within(self, awaitable: Awaitable[T], timeout_s: float, expired: Callable[[], Exception]) -> T:
        """What awaitable gives, or expired() raised once it has taken longer than timeout_s."""
        return await self._until(awaitable, asyncio.get_running_loop().time() + timeout_s, expired)

    def guarded(self, receive: Receive, timeout_s: float) -> Receive:
        """receive, with a deadline on the request's body: a client that announces a body and stops sending gets
        408 (OCPI 2000) instead of holding its request and connection forever. Once the body is in, receive as it
        is (a streaming answer listens on it for the client's disconnect as long as it streams)."""
        deadline: float | None = None
        whole = False

        def too_slow() -> Exception:
            return BodyTooSlow(f"the request body did not arrive within {timeout_s:g} s")

        async def receive_in_time() -> Any:
            nonlocal deadline, whole
            if whole:
                return await receive()
            deadline = deadline or asyncio.get_running_loop().time() + timeout_s
            message = await self._until(receive(), deadline, too_slow)
            whole = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        return receive_in_time

    async def _until(self, awaitable: Awaitable[T], deadline: float, expired: Callable[[], Exception]) -> T:
        task = asyncio.current_task()
        assert task is not None
        self._waiting[task] = deadline
        if self._check is None:
            self._check = asyncio.get_running_loop().call_later(self.check_every_s, self._cancel_late)
        try:
            # The task is suspended inside this await whenever the check runs, so its cancellation lands here.
            return await awaitable
        except asyncio.CancelledError:
            if task not in self._expired:
                raise
            task.uncancel()
            raise expired() from None
        finally:
            del self._waiting[task]
            self._expired.discard(task)

    def _cancel_late(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        for task, deadline in self._waiting.items():
            if deadline <= now and task not in self._expired:
                self._expired.add(task)
                task.cancel()
        self._check = loop.call_later(self.check_every_s, self._cancel_late) if self._waiting else None
