"""A request forwarded to its receiver: with the receiver's token B and the routing headers, its answer's routing
headers swapped, and what the receiver's server did wrong (unreachable, too slow, refusing the hub) told as it was."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import structlog
import yarl

from hub.auth import authorization
from hub.errors import (
    ForwardTimeout,
    ReceiverLeft,
    ReceiverNotCalled,
    ReceiverNotConnected,
    ReceiverNotResolved,
    ReceiverRefusedHub,
    ShareInUse,
)
from hub.ocpi.exchange import Exchange
from hub.request_context import HUB_INSTANCE_HEADER, new_request_id
from routing.decide import Delivery
from routing.forward import Answer, forward
from routing.party_addresses import ALLOWANCE
from storage.directory import PartyRole, Platform

if TYPE_CHECKING:
    from hub.ocpi.relay import Relay

log = structlog.get_logger()


async def call_party(
    relay: Relay,
    exchange: Exchange,
    delivery: Delivery,
    sender: PartyRole,
    method: str,
    url: str,
    query: str,
    body: bytes,
    forwarded_as: str | None = None,
    still_wanted: Callable[[Platform | None], None] | None = None,
) -> Answer:
    """Forward to the receiver with its token B, a new X-Request-ID (forwarded_as where chosen before) and the same
    X-Correlation-ID; still_wanted: routing.forward.forward's, given the receiver's platform as the directory has it
    then (None: gone), from which its token B is read again too."""
    entry, platform, to, caller = exchange.entry, delivery.platform, delivery.to, exchange.caller
    assert caller is not None  # every route has one: a broadcast copy's is the platform that pushed it
    entry.to_country_code, entry.to_party_id = to.country_code, to.party_id
    entry.receiver_platform_id = platform.id
    entry.forwarded_request_id = forwarded_as or new_request_id()
    headers = {
        "Authorization": authorization(platform.token_b or "", platform.token_encoding),
        "X-Request-ID": entry.forwarded_request_id,
        "X-Correlation-ID": entry.correlation_id,
        "OCPI-from-country-code": sender.country_code,
        "OCPI-from-party-id": sender.party_id,
        "OCPI-to-country-code": to.country_code,
        "OCPI-to-party-id": to.party_id,
        HUB_INSTANCE_HEADER: exchange.hubs_passed or relay.hub_instance,
    }
    if body:
        headers["Content-Type"] = exchange.headers.get("content-type", "application/json")
    target = yarl.URL(f"{url}?{query}" if query else url, encoded=True)
    timeout = relay.settings.forward_timeout_s
    try:
        # a broadcast copy counts in the share of the platform that pushed it (routing.fair_share)
        answer = await forward(relay.forward_session, method, target, headers, body, timeout,
                               relay.settings.max_body_bytes, relay.forward_shares, caller.id,
                               f"{to.country_code}-{to.party_id}", entry,
                               _ready(relay, platform, headers, still_wanted))  # fmt: skip
    except ReceiverLeft:  # nothing went to it, and its server is not suspected for it
        entry.forwarded_request_id = None
        raise
    except ReceiverNotCalled:  # its address is not one this process calls: no sign the party is away
        if _first_in_a_minute(relay, platform.id):
            log.error("party_address_not_allowed", platform=platform.name, url=url[:200], setting=ALLOWANCE)
        raise
    except (ForwardTimeout, ReceiverNotConnected) as exc:
        if isinstance(exc, ReceiverNotResolved) and _first_in_a_minute(relay, platform.id):
            log.warning("party_not_reached", platform=platform.name, reason=exc.detail[:400], setting=ALLOWANCE)
        relay.still_alive.suspect(platform.id)
        raise
    except ShareInUse:  # the caller's own requests held every slot of its share: nothing went to the receiver
        entry.forwarded_request_id = None
        raise
    if answer.status >= 500:  # its gateway's 502/503/504, or its server failing: no sign of life, so look (as a push)
        relay.still_alive.suspect(platform.id)
    else:
        relay.last_seen[platform.id] = datetime.now(UTC)  # a message received from it (still-alive)
    if answer.status == 401:
        # transport_and_format.asciidoc: a 401 says the caller's token "doesn't match any known party"; the caller
        # gave the hub a good one, so this one is the hub's to answer, and the operator's to look into
        log.error("receiver_refused_hub_token", platform_id=platform.id, platform=platform.name,
                  party=f"{to.country_code}-{to.party_id}", path=exchange.entry.path)  # fmt: skip
        raise ReceiverRefusedHub(
            f"{to.country_code}-{to.party_id} refused the hub's credentials (HTTP 401) and did not take the "
            "request; the hub operator has been told"
        )
    if answer.unwritable:
        names = f"{', '.join(answer.unwritable)} header{'s' if len(answer.unwritable) > 1 else ''}"
        entry.error = f"the receiver's {names} held characters HTTP does not allow in a header; relayed without"
    # A response carries the routing headers swapped; filled in even when the receiver sent none.
    answer.headers.update(
        {
            "ocpi-to-country-code": sender.country_code,
            "ocpi-to-party-id": sender.party_id,
            "ocpi-from-country-code": to.country_code,
            "ocpi-from-party-id": to.party_id,
        }
    )
    answer.headers.setdefault("content-type", "application/json")
    return answer


def _ready(
    relay: Relay, platform: Platform, headers: dict[str, str], still_wanted: Callable[[Platform | None], None] | None
) -> Callable[[], None]:
    """What forward runs once the request has its connection, which it may have waited for: nothing sent to a receiver
    no longer wanted (still_wanted), and the token B the receiver holds now, were it given the hub since (a credentials
    PUT, a rotation), so that the request is not refused with the old one as though the hub's were wrong."""

    def ready() -> None:
        now = relay.directory.current.platforms.get(platform.id)  # one look-up for both
        if still_wanted is not None:
            still_wanted(now)
        if now is not None and (now.token_b, now.token_encoding) != (platform.token_b, platform.token_encoding):
            headers["Authorization"] = authorization(now.token_b or "", now.token_encoding)

    return ready


def _first_in_a_minute(relay: Relay, platform_id: int) -> bool:
    """Whether a line about a party's address goes to the log now: one a minute for each party at most."""
    if time.monotonic() - relay.address_refusals_told.get(platform_id, -60.0) < 60:
        return False
    relay.address_refusals_told[platform_id] = time.monotonic()
    return True
