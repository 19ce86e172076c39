"""Each caller's share of a hub process's connections to one receiving server, so that no platform's backlog holds
up another's requests.

aiohttp keeps at most OCPI_HUB_PARTY_CONNECTIONS connections to a server (host and port), for all callers together:
a platform with that many slow requests in flight to a CPO held up every other platform's request to it (waiting for
a connection, then 4002 after 5 s). A platform now has at most half of them in flight to one server; its request
beyond that waits for one of its own to finish, first come first served, never for another platform's (for at most
half of OCPI_HUB_FORWARD_TIMEOUT_S, then 4000, not forwarded: routing.forward). Half: one platform alone may still
have many requests in flight at once (a burst of pushes), and whatever it does, the others find half the connections
free of it. A broadcast copy counts in the share of the platform that pushed it (a flood of broadcasts reaches no
more connections than that platform's own requests); the hub's own messages (HubClientInfo pushes) have a share of
their own, HUB_ITSELF.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib

# The hub's own messages (HubClientInfo pushes) count as a caller of their own: platform ids start at 1.
HUB_ITSELF = 0

# (calling platform id or HUB_ITSELF, receiver's host, port): what aiohttp's limit per host counts, per caller.
Key = tuple[int, str | None, int | None]


class CallerShares:
    """The requests each caller has in flight to each receiving host, at most `share` of them. An entry lives while
    its caller has a request in flight or waiting there: the dicts hold no more entries than there are requests."""

    def __init__(self, connections_per_host: int) -> None:
        self.share = max(1, connections_per_host // 2)
        self._in_flight: dict[Key, int] = {}
        self._waiting: dict[Key, collections.deque[asyncio.Future[None]]] = {}

    def take(self, key: Key) -> bool:
        """One of the caller's slots at once, if it has one left (the usual case: a dict lookup and store)."""
        taken = self._in_flight.get(key, 0)
        if taken < self.share:
            self._in_flight[key] = taken + 1
            return True
        return False  # all of them in flight, and whoever waits for one (give_back hands it over) came first

    async def wait(self, key: Key, timeout_s: float) -> None:
        """A slot the caller's next request to finish hands over, in the order they came; TimeoutError after
        timeout_s, the slot not taken."""
        slot: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiting = self._waiting.setdefault(key, collections.deque())
        waiting.append(slot)
        try:
            async with asyncio.timeout(timeout_s):
                await slot
        except BaseException:  # the deadline, or the request itself cancelled (its caller went away)
            if slot.done() and not slot.cancelled():  # handed over as it gave up: passed on to the next
                self.give_back(key)
            else:
                with contextlib.suppress(ValueError):  # give_back may have dropped it, cancelled, already
                    waiting.remove(slot)
                if not waiting and self._waiting.get(key) is waiting:
                    del self._waiting[key]
            raise

    def give_back(self, key: Key) -> None:
        """The slot of a request that took one and is done: to the caller's first waiting request, else free."""
        waiting = self._waiting.get(key)
        if waiting is not None:
            while waiting:
                slot = waiting.popleft()
                if not slot.done():  # one cancelled a moment ago is still in the queue until its task runs
                    if not waiting:
                        del self._waiting[key]
                    slot.set_result(None)  # the slot goes to it as it is: the count stays
                    return
            del self._waiting[key]
        left = self._in_flight[key] - 1
        if left:
            self._in_flight[key] = left
        else:
            del self._in_flight[key]

    def __len__(self) -> int:
        """The (caller, host) pairs with requests in flight."""
        return len(self._in_flight)
