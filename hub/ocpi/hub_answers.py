"""Location requests the hub answers itself, from its cache: GET All via the hub, and single objects.

transport_and_format.asciidoc, GET All via Hubs: "The Hub can then combine objects from different connected
parties and return them to the client", FROM = the hub. A GET All freezes its list in a snapshot, so a client
walking the Link pages sees no object twice and misses none while the cache changes underneath.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_plus, urlencode

import msgspec

from hub.envelope import check_dates, list_parameters, not_a_date, ocpi_timestamp, paging_window, x_limit
from hub.errors import HubError, InvalidParameters, NotFound, UnknownLocation
from hub.metrics import CACHE_REQUESTS
from hub.ocpi import relayed_urls
from hub.ocpi.forward_to_receiver import call_party
from routing.decide import delivery_to
from routing.forward import Answer
from routing.pull_sync import cpo_parties
from routing.request import Incoming, endpoint_url, party_text, routing_party
from storage.location_cache import snapshot_viewer, taken_with
from storage.location_cap import NOT_SYNCED
from storage.location_document import epoch, same_id

if TYPE_CHECKING:
    from hub.ocpi.exchange import Exchange
    from hub.ocpi.relay import Relay

SNAPSHOTS = "/ocpi/2.2.1/snapshots/"
_FILTER = ("country_code", "party_id")  # the hub's own (_owner), not the CPO's: not forwarded
MAX_LIMIT = 1000
# A snapshot is the list its GET All chose: a filter on its Link other than the GET All's own would be answered from
# that list all the same, so it is refused rather than ignored without a word (the client would take the pages for the
# window it asked)
_CHOSEN_BY_THE_GET_ALL = ("date_from", "date_to", "country_code", "party_id")


async def answer(relay: Relay, exchange: Exchange, incoming: Incoming) -> Answer:
    """A locations GET addressed to the hub (routing.decide.served_by_hub)."""
    params = list_parameters(incoming.query)
    owner = _owner(params)
    # a GET All is "the new truth" to its client (mod_locations.asciidoc): never answered from a cache that may miss
    # some of a CPO's locations, over its cap or not synced since Redis lost its data (storage.location_cap)
    if incoming.segments and owner is None:  # the marks only matter to a miss (one round trip less for a hit)
        return await _single(relay, exchange, incoming, owner, None)
    if short := await _not_complete(relay):
        if owner in short:
            return await _from_its_cpo(relay, exchange, incoming, owner, short[owner])
        if owner is None and not incoming.segments:
            _window(params)  # a wrong parameter first (2001): "retry shortly" would have it retried as it is
            raise _not_all_cached(relay, short)
    if incoming.segments:
        return await _single(relay, exchange, incoming, owner, short)
    date_from, date_to, offset, limit = _window(params)
    assert exchange.sender is not None
    if not limit:  # X-Total-Count alone (hub.envelope.paging_window): counted, no snapshot kept to walk
        _, total = await relay.locations.snapshot(owner, date_from, date_to, exchange.sender.key, keep=False)
        CACHE_REQUESTS.labels("hit").inc()  # answered from the cache as a page is, though it holds no objects
        return _listed(relay, exchange, [], total, x_limit(limit, MAX_LIMIT), None)
    snapshot_id, total = await relay.locations.snapshot(owner, date_from, date_to, exchange.sender.key)
    if not total:  # Redis keeps no empty list: page() would take it for one expired
        CACHE_REQUESTS.labels("hit").inc()
        return _listed(relay, exchange, [], 0, x_limit(limit, MAX_LIMIT), None)
    return await page(relay, exchange, snapshot_id, offset, limit)


async def _not_complete(relay: Relay) -> dict[tuple[str, str], str]:
    """The CPOs on the hub whose cache is not known whole (storage.location_cap), each with why."""
    directory = relay.directory.current
    return await relay.locations.not_complete(directory.parties, [role.key for _, role in cpo_parties(directory)])


async def _from_its_cpo(relay: Relay, exchange: Exchange, incoming: Incoming, owner: tuple[str, str],
                        why: str) -> Answer:  # fmt: skip
    """A GET of the locations of a CPO whose cache is not known whole (storage.location_cap: over its cap, or not
    synced yet), forwarded to the CPO: the cache may miss some of them, and a GET All is "the new truth"
    (mod_locations.asciidoc) to its client, which would drop what it did not list. The CPO's answer, its Links
    leading back through the hub, as a direct GET's."""
    CACHE_REQUESTS.labels("not_synced" if why == NOT_SYNCED else "over_cap").inc()
    delivery = delivery_to(incoming, relay.directory.current, owner)  # 4001 or 4003 when it is not there to ask
    exchange.entry.routing = "direct"
    exchange.entry.error = (f"{party_text(owner)}'s cache is {why} (its cap: {_caps(relay)}): forwarded to it, not "
                            "answered from the cache")  # fmt: skip
    # the caller's query as written, but the hub's own filter: decoded and encoded again, "2026-01-01T00:00:00Z" went
    # as "2026-01-01T00%3A00%3A00Z", which a CPO that reads its query undecoded refuses
    kept = [part for part in incoming.query.split("&") if part and unquote_plus(part.partition("=")[0]) not in _FILTER]
    query = "&".join(kept)
    url = endpoint_url(delivery.url, incoming.suffix)
    assert exchange.sender is not None
    answer = await call_party(relay, exchange, delivery, exchange.sender, "GET", url, query, b"")
    called = f"{url}?{query}" if query else url
    await relayed_urls.rewrite(relay, exchange, answer, delivery, called, "locations", "sender")
    return answer


def _caps(relay: Relay) -> str:
    return f"{relay.locations.max_per_cpo:,} locations, {relay.locations.max_bytes_per_cpo:,} bytes of them"


def _not_all_cached(relay: Relay, short: dict[tuple[str, str], str]) -> HubError:
    """A GET All of every CPO while the cache may miss some of one's locations: refused, not answered short, as its
    client would take the list for "the new truth" (mod_locations.asciidoc) and drop what it did not list. 4000, not a
    2xxx: the request is right, the hub cannot answer it now (status_codes.asciidoc: 2xxx "Client errors")."""
    CACHE_REQUESTS.labels("over_cap" if any(why != NOT_SYNCED for why in short.values()) else "not_synced").inc()
    named = ", ".join(f"{party_text(owner)} ({why})" for owner, why in sorted(short.items()))
    return HubError(
        f"the hub's cache may not hold every location of {named}, so it answers no GET All of every CPO's locations "
        f"now: retry shortly (pull sync fills a CPO's cache within OCPI_HUB_SYNC_CHECK_S of it being found missing), "
        "or ask for one CPO's with ?country_code=&party_id= (one whose cache is not whole is forwarded to the CPO), or "
        f"address a CPO with OCPI-to-country-code and OCPI-to-party-id (cap per CPO: {_caps(relay)})"
    )


async def follow(relay: Relay, exchange: Exchange, path: str) -> Answer:
    """GET of a snapshot's next page (the Link of a GET All)."""
    if exchange.entry.method != "GET":
        raise NotFound(f"{path} takes GET only")
    exchange.entry.module, exchange.entry.interface = "locations", "sender"
    _check_addressed(relay, exchange)
    exchange.entry.routing = "hub"
    params = list_parameters(exchange.entry.query)
    offset, limit = paging_window(params, MAX_LIMIT)
    snapshot_id = path.removeprefix(SNAPSHOTS).strip("/")
    # the GET All's own filters sent again are fine (a client passing its parameters with every request); others
    # would be answered from the list chosen without them, so they are refused rather than ignored without a word
    if (chosen := [name for name in _CHOSEN_BY_THE_GET_ALL if name in params]) and not taken_with(
        snapshot_id, _owner(params), _epoch(params, "date_from"), _epoch(params, "date_to")
    ):
        raise InvalidParameters(
            f"{', '.join(chosen)} on a GET All's Link, other than the GET All's own: this page list was chosen by the "
            "GET All that began it, its date_from, date_to, country_code and party_id with it, and they are neither "
            "changed nor applied here; follow the Link as given (offset and limit alone), or begin a new GET All "
            "with the filters wanted"
        )
    caller = exchange.caller
    assert caller is not None
    # taken for one party, filtered for it (publish_allowed_to): no other platform reads it, as pages and results
    viewer = next((role for role in caller.roles if role.key == snapshot_viewer(snapshot_id)), None)
    if viewer is None:
        raise NotFound(f"{path} is unknown, expired, or not yours")
    # the page's OCPI-to and its row's parties: the party the GET All was for, not the platform's first, as a relayed
    # page names the party it was handed to (hub.ocpi.relayed_urls)
    exchange.sender = viewer
    entry = exchange.entry
    entry.from_country_code, entry.from_party_id = viewer.country_code, viewer.party_id
    entry.to_country_code, entry.to_party_id = relay.settings.country_code, relay.settings.party_id
    return await page(relay, exchange, snapshot_id, offset, limit)


def _check_addressed(relay: Relay, exchange: Exchange) -> None:
    """A snapshot's page is the hub's answer: OCPI-to naming another party says something false, refused as a page
    relayed from a party followed with the wrong OCPI-to is (hub.ocpi.relayed_urls). None at all is fine."""
    addressed = routing_party(exchange.headers, "to")
    hub = (relay.settings.country_code, relay.settings.party_id)
    if addressed is None or addressed == hub:
        return
    raise InvalidParameters(
        f"this page is of the hub's own list of locations (GET All via the hub), but the OCPI-to headers name "
        f"{party_text(addressed)}: nothing was forwarded; send it with OCPI-to {party_text(hub)}, or without OCPI-to "
        "headers"
    )


async def page(relay: Relay, exchange: Exchange, snapshot_id: str, offset: int, limit: int) -> Answer:
    found = await relay.locations.page(snapshot_id, offset, limit)
    if found is None:  # at any offset: an empty page would tell a GET All's client that every location is gone
        CACHE_REQUESTS.labels("miss").inc()
        raise NotFound("this page list expired: start again with a GET All")
    docs, next_offset, total = found
    CACHE_REQUESTS.labels("hit").inc()
    link, most = None, x_limit(limit, MAX_LIMIT)
    if limit and next_offset < total:  # limit=0 asks for no objects: no next page of none either
        query = urlencode({"offset": next_offset, "limit": limit})
        link = f'<{relay.settings.public_url}{SNAPSHOTS}{snapshot_id}?{query}>; rel="next"'
        if len(docs) < limit:  # cut short by its bytes (PAGE_BYTES): a client stepping its offset by X-Limit skips none
            most = len(docs)
    return _listed(relay, exchange, docs, total, most, link)


def _listed(relay: Relay, exchange: Exchange, docs: list[bytes], total: int, most: int, link: str | None) -> Answer:
    """A page of the cache; most: its X-Limit, "The maximum number of objects that the server can return"."""
    body = b'{"data":[' + b",".join(docs) + b'],"status_code":1000,"status_message":null,"timestamp":"'
    body += ocpi_timestamp().encode() + b'"}'
    headers = _from_hub(relay, exchange) | {"x-total-count": str(total), "x-limit": str(most)}
    if link:
        headers["link"] = link
    return Answer(200, headers, body)


async def _single(relay: Relay, exchange: Exchange, incoming: Incoming, chosen: tuple[str, str] | None,
                  short: dict[tuple[str, str], str] | None) -> Answer:  # fmt: skip
    """GET /{location_id}[/{evse_uid}[/{connector_id}]] from the cache, of the owner chosen by ?country_code=&party_id=
    if any; several owners of one id and none chosen: refused naming them, those the hub saw push it whose copy it does
    not hold (too large to keep, an update of it dropped) too, rather than answered with the one copy it holds. One
    not cached, of an owner whose cache is not whole (storage.location_cap), is asked of the owner."""
    segments = incoming.segments
    found = await relay.locations.find(segments[0])
    assert exchange.sender is not None
    visible = [(owner, loc) for owner, loc in found if chosen in (None, owner)
               and await relay.locations.visible_to(loc, owner, exchange.sender.key)]  # fmt: skip
    owners = [owner for owner, _ in visible]
    if chosen is None and len(owners) < 2:
        hidden = {owner for owner, _ in found} - set(owners)  # publish false for this eMSP: not told of
        on_hub = relay.directory.current.parties
        seen = await relay.routing.owners("locations", segments[0])
        owners = list(dict.fromkeys([*owners, *(owner for owner in seen if owner in on_hub and owner not in hidden)]))
    if len(owners) > 1:
        # 2001, not 4001 (unknown receiver, "TO address is unknown"): the hub is the receiver here and answers itself;
        # what it lacks is a parameter, the owner (status_codes.asciidoc: "Invalid or missing parameters")
        named = ", ".join(f"{country}-{party}" for country, party in owners)
        raise InvalidParameters(
            f"several CPOs have a location {segments[0]} ({named}): choose one with ?country_code=&party_id= (the "
            "hub's copy) or address its owner with OCPI-to-country-code and OCPI-to-party-id"
        )
    target: Any = visible[0][1] if visible else None
    if target is not None and len(segments) > 1:
        target = next((e for e in target.get("evses") or [] if same_id(e.get("uid"), segments[1])), None)
    if target is not None and len(segments) > 2:
        target = next((c for c in target.get("connectors") or [] if same_id(c.get("id"), segments[2])), None)
    if target is None:
        if short is None:  # not read for a GET naming no owner, whose hit needs no marks
            short = await _not_complete(relay)
        known = chosen or (owners[0] if len(owners) == 1 else None)
        if known is not None and known in short:
            return await _from_its_cpo(relay, exchange, incoming, known, short[known])
        CACHE_REQUESTS.labels("miss").inc()
        error = UnknownLocation(f"the hub knows no {'/'.join(segments)} among the locations it has seen"
                                + _not_all_seen(short))  # fmt: skip
        error.http_status = 404  # status_codes.asciidoc: a GET of a resource that does not exist
        raise error
    CACHE_REQUESTS.labels("hit").inc()
    body = msgspec.json.encode({"data": target, "status_code": 1000, "timestamp": ocpi_timestamp()})
    return Answer(200, _from_hub(relay, exchange), body)


def _not_all_seen(short: dict[tuple[str, str], str]) -> str:
    if not short:
        return ""
    named = ", ".join(f"{party_text(owner)} ({why})" for owner, why in sorted(short.items()))
    return f" (its cache may not hold every location of {named}: ask its CPO with OCPI-to-*)"


def _from_hub(relay: Relay, exchange: Exchange) -> dict[str, str]:
    settings = relay.settings
    headers = {"content-type": "application/json", "ocpi-from-country-code": settings.country_code,
               "ocpi-from-party-id": settings.party_id}  # fmt: skip
    if exchange.sender is not None:
        headers |= {"ocpi-to-country-code": exchange.sender.country_code, "ocpi-to-party-id": exchange.sender.party_id}
    return headers


def _owner(params: dict[str, str]) -> tuple[str, str] | None:
    """The hub's own filter: ?country_code=NL&party_id=ABC for the locations of one CPO."""
    country, party = params.get("country_code", ""), params.get("party_id", "")
    if not country and not party:
        return None
    if len(country) != 2 or len(party) != 3:
        raise InvalidParameters("country_code and party_id filter one owner: two and three characters")
    return (country.upper(), party.upper())


def _window(params: dict[str, str]) -> tuple[float | None, float | None, int, int]:
    """date_from, date_to, offset and limit of a GET All answered from the cache, each checked (2001 if wrong)."""
    date_from, date_to = _epoch(params, "date_from"), _epoch(params, "date_to")
    check_dates(params, date_from, date_to)
    offset, limit = paging_window(params, MAX_LIMIT)
    return date_from, date_to, offset, limit


def _epoch(params: dict[str, str], name: str) -> float | None:
    if name not in params:
        return None
    try:
        return epoch(params[name])
    except ValueError:
        raise not_a_date(name, params[name]) from None
