"""Routing state shared by every hub process, kept in Redis: pending result callbacks, paging links, object owners.

Nothing here lives in process memory, so a command result or a "next page" request works whichever hub process
behind the load balancer receives it. Callbacks and pages expire; owners are a hint for open routing.

The object owners are storage.owner_index's, which RoutingState inherits.
"""

from __future__ import annotations

import secrets

import msgspec

from storage.owner_index import OwnerIndex

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

    async def remember(self, kind: str, relayed: Relayed, ttl_s: int, key: str | None = None) -> str:
        key = key or new_key()
        await self._redis.set(f"{self._prefix}{kind}:{key}", _encoder.encode(relayed), ex=ttl_s)
        return key

    async def forget(self, kind: str, key: str) -> None:
        await self._redis.delete(f"{self._prefix}{kind}:{key}")

    async def recall(self, kind: str, key: str) -> Relayed | None:
        raw = await self._redis.get(f"{self._prefix}{kind}:{key}")
        return _decoder.decode(raw) if raw else None
