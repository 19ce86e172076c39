"""Routing state shared by every hub process, kept in Redis: pending result callbacks, paging links, object owners.

Nothing here lives in process memory, so a command result or a "next page" request works whichever hub process
behind the load balancer receives it. Callbacks and pages expire; owners are a hint for open routing.

The object owners are storage.owner_index's, which RoutingState inherits.
"""

from __future__ import annotations

import secrets
import time

import msgspec
import redis.asyncio as redis

from storage.directory import DirectoryCache
from storage.owner_index import OwnerIndex

CALLBACK_TTL_S = 48 * 3600  # mod_commands: results may arrive long after the CommandResponse's timeout
PAGE_TTL_S = 24 * 3600  # a client crawling a long list pauses between pages
DAY_S = 86_400


def utc_day() -> int:
    """Today's number (days since 1970-01-01, UTC): the day a platform's hub URLs are counted for."""
    return int(time.time() // DAY_S)


# A hub URL's key and value are kept (KEYS[1], ARGV[1], for ARGV[2] s) if the bytes kept for the platform it is
# charged to this UTC day (KEYS[2], kept ARGV[4] s) leave room for them under ARGV[3]: -1; else the bytes kept so far.
_REMEMBER_CHARGED = """
local size = #KEYS[1] + #ARGV[1]
local used = redis.call('INCRBY', KEYS[2], size)
if used == size then redis.call('EXPIRE', KEYS[2], ARGV[4]) end
if used > tonumber(ARGV[3]) then
    redis.call('DECRBY', KEYS[2], size)
    return used - size
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return -1
"""


class NoRoomToday(Exception):
    """The platform a hub URL is charged to was handed as many bytes of them this UTC day as the hub keeps."""

    def __init__(self, kept_bytes: int, most_bytes: int, day: int) -> None:
        super().__init__(f"{kept_bytes} bytes kept today, at most {most_bytes}")
        self.kept_bytes, self.most_bytes, self.day = kept_bytes, most_bytes, day

    def still_today(self) -> bool:
        """Whether the UTC day it was refused on is today's: the platform is handed new ones from midnight."""
        return self.day == utc_day()


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
    object_id: str | None = None  # the routing-log object id of the request that handed the URL out
    # its listed ids, and its X-Request-IDs (storage.log_object_ids.REQUEST): the result row's listed ids
    related_ids: tuple[str, ...] = ()
    # a page of a GET All the caller addressed to the hub, which forwarded it (a CPO's cache over its cap,
    # hub.ocpi.hub_answers): followed with OCPI-to the hub as it began
    asked_of_hub: bool = False


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Relayed)


def new_key() -> str:
    return secrets.token_urlsafe(18)


class RoutingState(OwnerIndex):
    """Pending result callbacks and paging links (remember, forget, recall) beside the owner index
    (storage.owner_index)."""

    def __init__(self, redis_client: redis.Redis, prefix: str, owners_period_s: float,
                 directory: DirectoryCache | None = None) -> None:  # fmt: skip
        super().__init__(redis_client, prefix, owners_period_s, directory)
        self._remember_charged = self._redis.register_script(_REMEMBER_CHARGED)

    async def remember(
        self, kind: str, relayed: Relayed, ttl_s: int, key: str | None = None, *, charged_to: int, most_bytes: int
    ) -> str:
        """Keep what a hub URL leads to, its bytes charged to a platform: the one whose request it was handed out for
        (a page's caller, a result's requester). NoRoomToday, and nothing kept, if that platform was handed most_bytes
        of them this UTC day (OCPI_HUB_KEPT_URL_BYTES_PER_DAY): one platform cannot fill Redis, whatever it asks."""
        key = key or new_key()
        day = utc_day()
        kept = await self._remember_charged(
            keys=[f"{self._prefix}{kind}:{key}", f"{self._prefix}kept-url-bytes:{charged_to}:{day}"],
            args=[_encoder.encode(relayed), ttl_s, most_bytes, 2 * DAY_S],
        )
        if kept != -1:
            raise NoRoomToday(int(kept), most_bytes, day)
        return key

    async def forget(self, kind: str, key: str) -> None:
        await self._redis.delete(f"{self._prefix}{kind}:{key}")

    async def recall(self, kind: str, key: str) -> Relayed | None:
        raw = await self._redis.get(f"{self._prefix}{kind}:{key}")
        return _decoder.decode(raw) if raw else None
