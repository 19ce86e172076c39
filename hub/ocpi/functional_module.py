"""A functional module's request relayed: parsed, checked, decided, its response_url swapped, forwarded, answered.

The step of hub.ocpi.relay once the caller is known: a broadcast or a request the hub answers itself goes to its own
step (broadcast, hub_answers), any other to its receiver (forward_to_receiver), and a location push that went through
to the location cache.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import redis
import structlog

from hub.errors import (
    InvalidParameters,
    ReceiverNotCalled,
    ReceiverNotConnected,
    ReceiverRefusedHub,
    ShareInUse,
    UnknownReceiver,
)
from hub.ocpi import broadcast, hub_answers, relayed_urls
from hub.ocpi.exchange import Exchange
from hub.ocpi.forward_to_receiver import call_party
from hub.ocpi.relayed_urls import RESULTS
from hub.request_context import new_request_id
from routing import open_routing
from routing.decide import Route, decide
from routing.forward import Answer
from routing.request import Incoming, PartyKey, endpoint_url, parse
from routing.rewrite import callback_ttl_s, response_url_of, why_no_result, why_not_callable, with_response_url
from routing.shapes import check_patch, check_shape
from storage.directory import Directory, Platform
from storage.location_document import too_large
from storage.location_writer import not_cached
from storage.log_object_ids import REQUEST, ids_of_entry
from storage.routing_state import NoRoomToday, Relayed, new_key

if TYPE_CHECKING:
    from hub.ocpi.relay import Relay

log = structlog.get_logger()


async def relay_module(relay: Relay, exchange: Exchange, path: str) -> Answer:
    entry, caller = exchange.entry, exchange.caller
    assert caller is not None
    incoming = parse(entry.method, path, entry.query, exchange.headers, entry.request_body)
    entry.interface = incoming.interface
    if incoming.to is not None:  # as addressed, for the row of a request refused below (an unknown receiver)
        entry.to_country_code, entry.to_party_id = incoming.to
    check_shape(incoming)
    check_patch(incoming)
    settings = relay.settings
    route = await _route(relay, incoming, caller, (settings.country_code, settings.party_id))
    exchange.sender = route.sender
    callback_url = response_url_of(incoming)  # a body it is read from that is no JSON: rejected, as in decide
    if callback_url is not None and (why := why_not_callable(callback_url, caller, settings.public_url)):
        raise InvalidParameters(f"response_url is refused: {why}")
    entry.routing = route.kind
    entry.from_country_code, entry.from_party_id = route.sender.country_code, route.sender.party_id
    if route.kind == "hub":
        return await hub_answers.answer(relay, exchange, incoming)
    if route.kind == "broadcast":
        broadcast.check_room(relay, caller.id, route)  # before anything of it is noted
        # the URL names the owner (checked in decide), a copy taken or not: a token's eMSP for open routing
        open_routing.note_seen(incoming, caller, None, relay.routing)
        _note_location(relay, exchange, incoming)
        return broadcast.push(relay, exchange, incoming, route)
    delivery = route.deliveries[0]
    body, query = incoming.body, incoming.query
    forwarded_as = result_key = None
    if callback_url is not None:
        entry.object_id, entry.related_ids = ids_of_entry(entry)  # read once: the writer takes them from the entry
        result_key = new_key()  # kept only once the body with it is sure to go (with_response_url may refuse it)
        body, query = with_response_url(incoming, callback_url, f"{relay.settings.public_url}{RESULTS}{result_key}")
        # its result's row names the request it answers by both its ids, found by either (storage.log_search)
        forwarded_as = new_request_id()
        answers = [f"{REQUEST}{request_id}" for request_id in (entry.request_id, forwarded_as)]
        try:
            await relay.routing.remember("results", Relayed(
                url=callback_url, module=incoming.module, interface="sender", caller_platform_id=delivery.platform.id,
                target_platform_id=caller.id, caller_party=delivery.to.key, target_party=route.sender.key,
                correlation_id=entry.correlation_id, object_id=entry.object_id,
                related_ids=(*(entry.related_ids or ()), *answers)), callback_ttl_s(incoming), result_key,
                charged_to=caller.id, most_bytes=relay.settings.kept_url_bytes_per_day)  # fmt: skip
        except NoRoomToday as exc:
            what = "not forwarded: its response_url needs a hub URL"
            raise relayed_urls.hub_urls_spent(relay, caller.id, exc, "results", route.sender.key, what) from None
    elif incoming.method == "GET" and incoming.interface == "sender" and not incoming.segments:  # a list: Links
        relayed_urls.refuse_list_once_spent(relay, caller.id, route.sender.key)
    url = endpoint_url(delivery.url, incoming.suffix)
    try:
        answer = await call_party(relay, exchange, delivery, route.sender, incoming.method, url, query, body,
                                  forwarded_as)  # fmt: skip
    except (ReceiverNotCalled, ShareInUse, ReceiverRefusedHub) as exc:  # not sent, or refused (HTTP 401)
        if result_key is not None:
            await _release(relay, result_key, type(exc).__name__)
        raise
    if result_key is not None and (why := why_no_result(answer.status, answer.body)):
        await _release(relay, result_key, why)
    if 200 <= answer.status < 300:
        open_routing.note_seen(incoming, caller, delivery, relay.routing)
        _note_location(relay, exchange, incoming)
    called = f"{url}?{query}" if query else url
    await relayed_urls.rewrite(relay, exchange, answer, delivery, called, incoming.module, incoming.interface)
    return answer


async def _release(relay: Relay, key: str, why: str) -> None:
    """The hub's response_url given with a request whose answer says no result will come to it (routing.rewrite
    why_no_result) is forgotten at once, not kept for its 48 hours or more: a stray result posted to it is answered as
    one to an unknown or expired URL. Redis away, it is kept (and expires) rather than the answer lost."""
    try:
        await relay.routing.forget("results", key)
    except redis.RedisError as exc:
        log.warning("response_url_not_released", reason=why, error=str(exc)[:200])


async def _route(relay: Relay, incoming: Incoming, caller: Platform, hub: PartyKey) -> Route:
    """Where the request goes, as this process's directory has it. A receiver it does not have, or not as connected,
    may be a party that registered (or came back) through another hub process a moment ago, which this one hears of
    within a second: before it answers 4001 or 4003 it catches up, as for a token it does not know (hub.auth), and
    decides again if that loaded a newer directory. Only a refusal pays for it, a known receiver is decided with no
    round trip: one Redis GET at a time, shared by every refusal waiting for it, and a reload only when the directory
    changed (DirectoryCache.catch_up), so a flood of requests to unknown parties costs PostgreSQL nothing."""
    directory = relay.directory.current
    try:
        return await _decided(relay, incoming, caller, hub, directory)
    except (UnknownReceiver, ReceiverNotConnected):
        await relay.directory.catch_up()
        if relay.directory.current is directory:
            raise
    return await _decided(relay, incoming, caller, hub, relay.directory.current)


async def _decided(relay: Relay, incoming: Incoming, caller: Platform, hub: PartyKey, directory: Directory) -> Route:
    hint = None
    if incoming.to is None:  # open routing: the owner the hub has seen, if it is on the hub (in this directory)
        hint = await open_routing.open_hint(incoming, caller, relay.routing, directory.parties,
                                            relay.locations.owners_seen_by)  # fmt: skip
    return decide(incoming, caller, directory, hub, hint)


def _note_location(relay: Relay, exchange: Exchange, incoming: Incoming) -> None:
    """A location PUT or PATCH that went through updates the cache (queued: off the caller's path), as the caller's:
    the URL names one of its parties (routing.decide.check_client_owned)."""
    segments, caller = incoming.segments, exchange.caller
    pushed = incoming.module == "locations" and incoming.interface == "receiver"
    if pushed and caller and incoming.method in ("PUT", "PATCH") and len(segments) >= 3:
        if incoming.method == "PUT" and len(segments) == 3 and (refused := too_large(incoming.body)):
            exchange.entry.error = str(refused)  # the caller's row says so: its answer is the receiver's
            not_cached(refused, path=segments)
            return
        relay.locations.submit((segments[0], segments[1]), caller.id, incoming.method, segments[2:], incoming.body)
