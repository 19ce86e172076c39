"""The hub's count of its connections to each receiving server, and each caller's share of them, so that no platform's
backlog holds up another's requests, and a request that finds no connection free is known not to have been sent.

A hub process keeps at most OCPI_HUB_PARTY_CONNECTIONS connections to a server (host and port), for all callers
together; aiohttp's pool has the same limit, which the hub now never reaches before counting it here: a request that
waited for aiohttp's pool was answered 4002 (the receiver got it and was slow) though nothing had been sent. Here:

- A caller with fewer than FLOOR requests in flight to the server takes a connection whenever one is free.
- Beyond that, it takes one only while it has fewer than half of them in flight there (`share`), and only if that
  leaves a quarter of them (`reserve`) free: those are kept for callers below their FLOOR. So platforms flooding a slow
  receiver hold three quarters of the connections, plus FLOOR each: a platform with fewer than FLOOR in flight finds a
  connection at once, whatever the others do, unless reserve / FLOOR other platforms or more (8, of the default 64
  connections) are busy there at the same moment; then the connections may all be in use, which is the receiver's
  plain load.
- A request that may not take one waits, first come first served among its caller's own requests, and round robin
  among the callers waiting there, for at most half of OCPI_HUB_FORWARD_TIMEOUT_S; then it is answered 4000, not
  forwarded (routing.forward). Half: one platform alone may still have many requests in flight at once (a burst of
  pushes), which go through as fast as the receiver answers.

A broadcast copy counts in the share of the platform that pushed it (a flood of broadcasts reaches no more
connections than that platform's own requests); the hub's own messages (HubClientInfo pushes) are a caller of their
own, HUB_ITSELF. Taking and giving back a connection is a few dict lookups; waiting ones are looked at only when a
connection to their server is given back, and the count is per hub process (per worker with `serve --workers N`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib

# The hub's own messages (HubClientInfo pushes) count as a caller of their own: platform ids start at 1.
HUB_ITSELF = 0
# The requests in flight to a server below which a caller takes a connection whenever one is free there.
FLOOR = 2

# A receiver's host and port: what aiohttp's limit per host counts (its ConnectionKey).
Server = tuple[str | None, int | None]
# (calling platform id or HUB_ITSELF, receiver's server)
Key = tuple[int, Server]


class CallerShares:
    """The requests in flight to each receiving server, in all and by caller. An entry lives while a request is in
    flight or waiting there: the dicts hold no more entries than there are requests."""

    def __init__(self, connections_per_host: int) -> None:
        self.connections = max(1, connections_per_host)
        self.share = max(1, self.connections // 2)
        self.floor = min(FLOOR, self.share)
        self.reserve = self.connections // 4 if self.share > self.floor else 0  # no one goes beyond a floor of share
        self._busy_limit = self.connections - self.reserve
        self._in_flight: dict[Key, int] = {}
        self._per_server: dict[Server, int] = {}
        # server -> caller -> its waiting requests; callers in the order they are next served (round robin)
        self._waiting: dict[Server, dict[int, collections.deque[asyncio.Future[None]]]] = {}

    def may_take(self, mine: int, everyone: int) -> bool:
        """Whether a caller with `mine` requests in flight to a server may send one more while `everyone` are."""
        if mine < self.floor:
            return everyone < self.connections
        return mine < self.share and everyone < self._busy_limit

    def take(self, key: Key) -> bool:
        """A connection at once, if the caller may take one (the usual case: two dict lookups and stores). Its own
        requests waiting there, if any, may not (give_back served each one it could): it queues behind them."""
        server = key[1]
        mine, everyone = self._in_flight.get(key, 0), self._per_server.get(server, 0)
        if self.may_take(mine, everyone):
            self._in_flight[key], self._per_server[server] = mine + 1, everyone + 1
            return True
        return False

    def in_flight(self, key: Key) -> tuple[int, int]:
        """The caller's requests in flight to the server, and everyone's."""
        return self._in_flight.get(key, 0), self._per_server.get(key[1], 0)

    async def wait(self, key: Key, timeout_s: float) -> None:
        """A connection that give_back hands over (taken in the caller's name); TimeoutError after timeout_s, none
        taken."""
        caller, server = key
        slot: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        callers = self._waiting.setdefault(server, {})
        waiting = callers.setdefault(caller, collections.deque())
        waiting.append(slot)
        try:
            async with asyncio.timeout(timeout_s):
                await slot
        except BaseException:  # the deadline, or the request itself cancelled (its caller went away)
            if slot.done() and not slot.cancelled():  # handed over as it gave up: passed on
                self.give_back(key)
            else:
                with contextlib.suppress(ValueError):  # give_back may have dropped it, cancelled, already
                    waiting.remove(slot)
                if not waiting and callers.get(caller) is waiting:
                    del callers[caller]
                if not callers and self._waiting.get(server) is callers:
                    del self._waiting[server]
            raise

    def give_back(self, key: Key) -> None:
        """The connection of a request that took one and is done: to the waiting requests there that may take one."""
        server = key[1]
        mine, everyone = self._in_flight[key] - 1, self._per_server[server] - 1
        if mine:
            self._in_flight[key] = mine
        else:
            del self._in_flight[key]
        if everyone:
            self._per_server[server] = everyone
        else:
            del self._per_server[server]
        if (callers := self._waiting.get(server)) is not None:
            self._hand_over(server, callers)

    def _hand_over(self, server: Server, callers: dict[int, collections.deque[asyncio.Future[None]]]) -> None:
        """Serve the first request of each waiting caller that may take a connection now, in turn, while any may."""
        served = True
        while served and callers:
            served = False
            for caller, waiting in list(callers.items()):
                while waiting and waiting[0].done():  # one cancelled a moment ago is still queued until its task runs
                    waiting.popleft()
                if not waiting:
                    del callers[caller]
                    continue
                key = (caller, server)
                mine, everyone = self._in_flight.get(key, 0), self._per_server.get(server, 0)
                if self.may_take(mine, everyone):
                    self._in_flight[key], self._per_server[server] = mine + 1, everyone + 1
                    waiting.popleft().set_result(None)
                    del callers[caller]  # to the end of the round
                    if waiting:
                        callers[caller] = waiting
                    served = True
                    break
        if not callers:
            self._waiting.pop(server, None)

    def __len__(self) -> int:
        """The (caller, server) pairs with requests in flight."""
        return len(self._in_flight)
