"""Broadcast push: the hub answers the caller, then sends every recipient a copy FROM the hub, each logged as a row.

Each copy is a task, which goes out in the pushing platform's share of the connections to its receiver's server
(routing.fair_share). Answered at once, a platform could start copies faster than slow receivers take them, without
bound; so a hub process keeps at most COPIES_PER_CONNECTION times OCPI_HUB_PARTY_CONNECTIONS of one platform's copies
in delivery (4,096 by default: 16 broadcasts a second to 50 parties, say, each delivered within 5 s), and refuses its
broadcast beyond that with 4000, sent to no one. A broadcast to more parties than that goes when the platform has
none in delivery. A broadcast's copies count from its admission, before the caller's row is committed (broadcasts
arriving meanwhile see them), and each gives its place back once, when it is delivered or will never start. Counting
them is a dict lookup and store per copy.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import structlog

from hub.errors import BroadcastsPending, OcpiError, ReceiverLeft
from hub.ocpi.exchange import Exchange, Job
from hub.ocpi.forward_to_receiver import call_party
from routing.decide import Delivery, Route, receiving_role, why_not_sendable
from routing.forward import Answer, ocpi_status_of
from routing.request import Incoming, endpoint_url, party_text
from storage.directory import PartyRole, Platform
from storage.log_row import LogEntry
from storage.log_waiters import LogUnavailable

if TYPE_CHECKING:
    from hub.ocpi.relay import Relay

log = structlog.get_logger()

COPIES_PER_CONNECTION = 64


def check_room(relay: Relay, caller: int, route: Route) -> None:
    """BroadcastsPending if the calling platform's copies in delivery leave no room for this broadcast's."""
    in_delivery = relay.broadcast_copies.get(caller, 0)
    most = COPIES_PER_CONNECTION * relay.settings.party_connections
    if in_delivery and in_delivery + len(route.deliveries) > most:
        told = (
            f"not forwarded: the hub is still delivering {in_delivery} copies of this platform's broadcasts, and keeps "
            f"{most} in delivery at most; send it again once they are delivered"
        )
        raise BroadcastsPending(told)


def push(relay: Relay, exchange: Exchange, incoming: Incoming, route: Route) -> Answer:
    """Answer the caller now; deliver a copy to every recipient after the caller's row is committed. Its copies count
    in its platform's copies in delivery from now on (check_room just found room for them)."""
    settings = relay.settings
    entry, counts, platform = exchange.entry, relay.broadcast_copies, exchange.entry.caller_platform_id
    assert platform is not None  # a broadcast's caller is authenticated
    counts[platform] = counts.get(platform, 0) + len(route.deliveries)
    entry.to_country_code, entry.to_party_id = settings.country_code, settings.party_id
    for delivery in route.deliveries:
        copy = LogEntry(
            received_at=datetime.now(UTC), request_id=entry.request_id, correlation_id=entry.correlation_id,
            module=incoming.module, interface=incoming.interface, method=incoming.method, path=incoming.path,
            query=incoming.query, routing="broadcast", caller_platform_id=entry.caller_platform_id,
            from_country_code=settings.country_code, from_party_id=settings.party_id, request_body=incoming.body,
        )  # fmt: skip
        work = _deliver(relay, exchange, copy, delivery, incoming)
        exchange.background.append(Job(work, _give_back(counts, platform)))
    message = f"broadcast to {len(route.deliveries)} part{'y' if len(route.deliveries) == 1 else 'ies'}"
    if incoming.to is None:  # open routing that could not place it: not what the caller asked for, maybe
        message = f"no OCPI-to headers: {message}"
    return relay.hub_answer(exchange, 200, 1000, message)


def _give_back(counts: dict[int, int], platform: int) -> Callable[[], None]:
    """What gives one copy's place in its platform's copies in delivery back (hub.ocpi.exchange.Job: once)."""

    def release() -> None:
        if left := counts[platform] - 1:
            counts[platform] = left
        else:
            del counts[platform]

    return release


def _still_connected(delivery: Delivery, module: str) -> Callable[[Platform | None], None]:
    """What refuses to send a copy whose receiver left the hub, was suspended or stopped being CONNECTED since the
    broadcast was decided (a copy may wait for its turn for half the forward timeout): "no requests should be sent"
    to it (mod_hub_client_info.asciidoc, OFFLINE and SUSPENDED), nor what was pushed after it left. Given its platform
    as the directory has it now (hub.ocpi.forward_to_receiver.call_party's still_wanted). Of a party its platform holds
    as both CPO and eMSP, the role of the module's Receiver is judged, as the broadcast chose it, not either role."""

    def check(now: Platform | None) -> None:
        role = receiving_role(now, delivery.to.key, module, "receiver") if now is not None else None
        if why := why_not_sendable(now, role):  # worded as a direct request's refusal (routing.decide.delivery_to)
            raise ReceiverLeft(f"receiver {party_text(delivery.to.key)} {why}; its copy of the broadcast, decided "
                               "while it was connected, was not sent")  # fmt: skip

    return check


async def _deliver(relay: Relay, exchange: Exchange, copy: LogEntry, delivery: Delivery, incoming: Incoming) -> None:
    started = time.perf_counter()
    hub = PartyRole("HUB", relay.settings.country_code, relay.settings.party_id, "CONNECTED", None)
    copy_exchange = Exchange(exchange.scope, exchange.headers, copy, started, exchange.caller, hub)
    copy_exchange.hubs_passed = exchange.hubs_passed  # a copy to another hub that broadcasts too must not come back
    try:
        url = endpoint_url(delivery.url, incoming.suffix)
        answer = await call_party(relay, copy_exchange, delivery, hub, incoming.method, url, incoming.query,
                                  incoming.body, still_wanted=_still_connected(delivery, incoming.module))  # fmt: skip
        copy.http_status, copy.response_body = answer.status, answer.body
        copy.ocpi_status_code = ocpi_status_of(answer.body)
    except OcpiError as exc:
        copy.http_status, copy.ocpi_status_code, copy.error = exc.http_status, exc.status_code, exc.detail
    except Exception as exc:
        log.exception("broadcast_copy_failed", to=delivery.to.key)
        copy.error = f"internal error: {exc!r}"
    copy.duration_ms = round((time.perf_counter() - started) * 1000, 3)
    try:
        await relay.routing_log.record(copy)
    except LogUnavailable:
        log.error("broadcast_copy_not_logged_in_time", to=delivery.to.key, request_id=copy.request_id)
