"""Hub URLs that stand for a party's URL: a paging Link, a response_url for results, a relayed CDR's Location.

Each leads back to the party behind it, for the platform it was handed to only; the state behind them lives in
Redis (pages, results) or PostgreSQL (CDR locations), so any hub process can follow them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hub.errors import MethodNotAllowed, NotFound, ReceiverNotConnected
from routing.decide import Delivery
from routing.forward import Answer
from storage.directory import PartyRole
from storage.routing_state import Relayed
from storage.sql import QUERIES

if TYPE_CHECKING:
    from hub.ocpi.relay import Exchange, Relay

_KINDS = {"pages": "GET", "results": "POST", "relayed-cdrs": "GET"}


async def follow(relay: Relay, exchange: Exchange, path: str) -> Answer:
    entry, caller = exchange.entry, exchange.caller
    assert caller is not None
    kind, _, key = path.removeprefix("/ocpi/2.2.1/").partition("/")
    entry.module = kind
    if entry.method != _KINDS[kind]:
        raise MethodNotAllowed(f"{path} takes {_KINDS[kind]} only")
    relayed = await _lookup(relay, kind, key.strip("/"))
    if relayed is None or relayed.caller_platform_id != caller.id:
        raise NotFound(f"{path} is unknown, expired, or not yours")
    entry.module, entry.interface, entry.routing = relayed.module, relayed.interface, "direct"
    if "x-correlation-id" not in exchange.headers and relayed.correlation_id:
        # e.g. a CommandResult posted without one: it joins the conversation of the command
        entry.correlation_id = relayed.correlation_id
    target = relay.directory.current.platforms.get(relayed.target_platform_id)
    to = next((r for r in target.roles if r.key == relayed.target_party), None) if target else None
    if target is None or to is None or target.state != "REGISTERED":
        raise ReceiverNotConnected(f"the party behind {path} is no longer connected")
    # Parties often post results without routing headers: the hub knows both ends and fills them in.
    sender = next((r for r in caller.roles if r.key == relayed.caller_party), None)
    sender = sender or PartyRole("", relayed.caller_party[0], relayed.caller_party[1], "CONNECTED", None)
    exchange.sender = sender
    entry.from_country_code, entry.from_party_id = sender.country_code, sender.party_id
    delivery = Delivery(target, to, relayed.url)
    answer = await relay.call_party(exchange, delivery, sender, entry.method, relayed.url, "", entry.request_body)
    await relay.rewrite_urls(exchange, answer, delivery, relayed.module, relayed.interface)
    return answer


async def _lookup(relay: Relay, kind: str, key: str) -> Relayed | None:
    if kind != "relayed-cdrs":
        return await relay.routing.recall(kind, key)
    async with relay.pool.acquire() as conn:
        row = await conn.fetchrow(QUERIES["relayed_location"], key)
    if row is None:
        return None
    return Relayed(
        url=row["url"],
        module="cdrs",
        interface="receiver",
        caller_platform_id=row["caller_platform_id"],
        target_platform_id=row["receiver_platform_id"],
        caller_party=(row["from_country_code"].upper(), row["from_party_id"].upper()),
        target_party=(row["to_country_code"].upper(), row["to_party_id"].upper()),
        correlation_id="",
    )
