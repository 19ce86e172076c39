"""Hub URLs that stand for a party's URL: a paging Link, a response_url for results, a relayed CDR's Location.

An answer's Link and Location are rewritten to them here as it passes through (a request's response_url as the
relay forwards it). Each leads back to the party behind it, for the platform it was handed to only; the state
behind them lives in Redis (pages, results) or PostgreSQL (CDR locations), so any hub process can follow them.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import structlog

from hub.errors import HubError, HubUrlsSpent, InvalidParameters, MethodNotAllowed, NotFound, ReceiverNotConnected
from hub.metrics import HUB_URLS_SPENT
from hub.ocpi.forward_to_receiver import call_party
from routing.decide import NOT_LISTED, Delivery, receiving_role, sending_role, why_not_sendable
from routing.forward import Answer
from routing.link_header import LinkValue, link_values, only, rewritten
from routing.request import PartyKey, party_text, routing_party
from routing.rewrite import resolved, why_not_callable, with_query
from storage.directory import Directory, PartyRole, Platform
from storage.log_object_ids import RELAYED_CDRS
from storage.routing_state import PAGE_TTL_S, NoRoomToday, Relayed
from storage.sql import QUERIES

if TYPE_CHECKING:
    from hub.ocpi.exchange import Exchange
    from hub.ocpi.relay import Relay

PAGES = "/ocpi/2.2.1/pages/"
RESULTS = "/ocpi/2.2.1/results/"
CDR_LOCATIONS = RELAYED_CDRS
_KINDS = {"pages": "GET", "results": "POST", "relayed-cdrs": "GET"}
MAX_LINK_URLS, MAX_URL_CHARS = 8, 8192  # of a receiver's Link or Location, as the hub keeps them
# but a Link's next page's URL: cursor tokens that long are found in the field, and dropped, the list would end there
MAX_NEXT_URL_CHARS = 65_536
_PAGING = {"next", "first", "prev", "previous", "last"}  # RFC 8288's relation types of a page, the ones a Link keeps

log = structlog.get_logger()


async def follow(relay: Relay, exchange: Exchange, path: str) -> Answer:
    entry, caller = exchange.entry, exchange.caller
    assert caller is not None
    kind, _, key = path.removeprefix("/ocpi/2.2.1/").partition("/")
    entry.module = kind
    if entry.method != _KINDS[kind]:
        raise MethodNotAllowed(f"{path} takes {_KINDS[kind]} only", (_KINDS[kind],))
    relayed = await _lookup(relay, kind, key.strip("/"))
    if relayed is None or relayed.caller_platform_id != caller.id:
        raise NotFound(f"{path} is unknown, expired, or not yours")
    entry.module, entry.interface = relayed.module, relayed.interface
    if "x-correlation-id" not in exchange.headers and relayed.correlation_id:
        # e.g. a CommandResult posted without one: it joins the conversation of the command, its answer and the
        # hub's log lines too
        entry.correlation_id = relayed.correlation_id
        structlog.contextvars.bind_contextvars(correlation_id=relayed.correlation_id)
    # and whatever correlation id it came with, its row is found by the command's object id, as the command's is, and
    # by the ids its command named and the command's request ids (listed_ids)
    entry.object_id, entry.related_ids = relayed.object_id, list(relayed.related_ids) or None
    target, to = _party_behind(relay.directory.current, relayed)
    if target is None or to is None or target.state != "REGISTERED":
        # The hub process that handed the URL out had the party registered; this one may not have loaded that yet
        # (registered a moment ago through that process): it catches up before it says the party is gone.
        await relay.directory.catch_up()
        target, to = _party_behind(relay.directory.current, relayed)
    _check_addressed(exchange, kind, relayed, to, _hub(relay))
    _check_sender(exchange, caller)
    # Parties often post results without routing headers: the hub knows both ends and fills them in, also in the row
    # and the answer of one it cannot relay (a result lost with its requester is found under that party).
    sender = sending_role(caller, relayed.caller_party, relayed.module, relayed.interface)
    sender = sender or PartyRole("", relayed.caller_party[0], relayed.caller_party[1], "CONNECTED", None)
    exchange.sender = sender
    entry.from_country_code, entry.from_party_id = sender.country_code, sender.party_id
    entry.to_country_code, entry.to_party_id = (to.country_code, to.party_id) if to else relayed.target_party
    if sender.status in NOT_LISTED:  # left out of its platform's credentials since: it sends nothing (routing.decide)
        raise InvalidParameters(
            f"{party_text(sender.key)}, to which this URL was handed, is not among the roles of this platform's "
            f"credentials (status {sender.status}): nothing was forwarded; a credentials PUT listing it lets it send "
            "again"
        )
    if why := why_not_sendable(target, to):  # worded as a direct request's refusal (routing.decide.delivery_to)
        raise ReceiverNotConnected(f"the party behind {path} {why}")
    assert target is not None and to is not None  # or why_not_sendable said LEFT
    entry.routing = "direct"
    url = with_query(relayed.url, entry.query) if kind == "pages" else relayed.url
    if why := why_not_callable(url, target, relay.settings.public_url):  # said when it was relayed (rewrite)
        # the caller is not told the receiver's URL or hosts (its routing-log row is)
        raise HubError(f"{to.country_code}-{to.party_id} gave a URL for this that the hub does not call: not at a host "
                       f"it registered, or no URL the hub can call", f"{url[:200]}: {why}")  # fmt: skip
    delivery = Delivery(target, to, relayed.url)
    if kind == "pages":
        refuse_list_once_spent(relay, caller.id, sender.key)
    answer = await call_party(relay, exchange, delivery, sender, entry.method, url, "", entry.request_body)
    # the page URLs it hands out are followed as this one was handed out: of a GET All asked of the hub or not,
    # whatever OCPI-to this one was followed with (none at all is fine, _check_addressed)
    await rewrite(relay, exchange, answer, delivery, url, relayed.module, relayed.interface, relayed.asked_of_hub)
    return answer


def _party_behind(directory: Directory, relayed: Relayed) -> tuple[Platform | None, PartyRole | None]:
    """The platform and party a hub URL leads to, as this process's directory has them: of a party it holds as both CPO
    and eMSP, the role of the module's interface, as a direct request's (a command's result goes to its eMSP)."""
    target = directory.platforms.get(relayed.target_platform_id)
    if target is None:
        return None, None
    return target, receiving_role(target, relayed.target_party, relayed.module, relayed.interface)


def _check_sender(exchange: Exchange, caller: Platform) -> None:
    """OCPI-from, where sent, names a party of the calling platform, as on every other request (routing.decide
    sender_of); the hub fills in the party the URL was handed to whatever it names, but a foreign one is a spoof."""
    claimed = routing_party(exchange.headers, "from")
    if claimed is not None and all(role.key != claimed for role in caller.roles):
        raise InvalidParameters(
            f"OCPI-from {party_text(claimed)} is not a party of the calling platform (its parties: "
            f"{', '.join(sorted(party_text(role.key) for role in caller.roles))}): nothing was forwarded"
        )


def _check_addressed(
    exchange: Exchange, kind: str, relayed: Relayed, to: PartyRole | None, hub: tuple[str, str]
) -> None:
    """A hub URL leads to one party, the one it was handed out for: OCPI-to headers naming another say something
    false (a result for a party that did not send the command), refused rather than delivered where the URL leads.
    None at all is fine (open routing: the hub knows the receiver), and the hub itself for a page of a GET All the
    caller addressed to the hub, which forwarded it to a CPO (its cache over its cap, hub.ocpi.hub_answers)."""
    addressed = routing_party(exchange.headers, "to")
    if addressed is None or addressed == relayed.target_party or (relayed.asked_of_hub and addressed == hub):
        return
    party = f"{to.country_code}-{to.party_id}" if to else party_text(relayed.target_party)
    what = {"results": f"the result posted to this response_url is for {party}, which sent the request it answers",
            "pages": f"this page is of the list of {party}",
            "relayed-cdrs": f"this CDR is at {party}, to which it was posted"}[kind]  # fmt: skip
    raise InvalidParameters(
        f"{what}, but the OCPI-to headers name {party_text(addressed)}: nothing was forwarded; send it with OCPI-to "
        f"{party}, or without OCPI-to headers"
    )


async def rewrite(
    relay: Relay,
    exchange: Exchange,
    answer: Answer,
    delivery: Delivery,
    called_url: str,
    module: str,
    interface: str,
    asked_of_hub: bool | None = None,
) -> None:
    """Paging Links and a CDR's Location lead back through the hub, to the same party; no other Location. A relative
    one is taken as relative to called_url, the URL the hub called. One the hub will not call is rewritten all the
    same, and following it is refused (follow): dropped, a Link would tell the caller it has the last page (and of
    a GET All, that what it did not get is gone: mod_locations.asciidoc), and a CDR POST's answer needs its
    Location (mod_cdrs.asciidoc). asked_of_hub: whether its pages are of a GET All asked of the hub (Relayed), by
    default whether this request's OCPI-to is the hub. A next page's URL longer than the hub keeps: HubError (4000)."""
    caller, sender, entry = exchange.caller, exchange.sender, exchange.entry
    assert caller is not None and sender is not None
    link = answer.headers.get("link")
    values = link_values(link) if link else []
    urls = {value.url: resolved(value.url, called_url) for value in values}
    # each URL kept is kept in Redis for PAGE_TTL_S; most answers have no Link: nothing to weigh (25k instructions)
    kept, why = _within_limits(values, urls) if values else ([], "")
    if kept is None:  # its next page's URL is longer than the hub keeps: relayed without it, the list ends unsaid
        error = f"the receiver's answer is not relayed: {why}; without it the caller would take this page for the last"
        _refused(exchange, delivery, "link", error, why)
        raise HubError(error)
    if link and kept:
        link = only(link, kept) if why else link
        _note_refused(relay, exchange, delivery, "link", list(dict.fromkeys(urls[value.url] for value in kept)))
        keys: dict[str, str] = {}
        if asked_of_hub is None:
            asked_of_hub = routing_party(exchange.headers, "to") == _hub(relay)
        for absolute in dict.fromkeys(urls[value.url] for value in kept):
            try:
                keys[absolute] = await relay.routing.remember("pages", Relayed(
                    url=absolute, module=module, interface=interface, caller_platform_id=caller.id,
                    target_platform_id=delivery.platform.id, caller_party=sender.key, target_party=delivery.to.key,
                    correlation_id=entry.correlation_id, asked_of_hub=asked_of_hub), PAGE_TTL_S,
                    charged_to=caller.id, most_bytes=relay.settings.kept_url_bytes_per_day)  # fmt: skip
            except NoRoomToday as exc:  # relayed without its Link, the page would be taken for the last
                what = "the receiver's answer is not relayed: its Link needs hub URLs"
                raise hub_urls_spent(relay, caller.id, exc, "pages", sender.key, what) from None
        answer.headers["link"] = rewritten(link, lambda url: f"{relay.settings.public_url}{PAGES}{keys[urls[url]]}")
    elif values:
        del answer.headers["link"]
    if why:
        dropped = "not relayed" if not kept else f"relayed without {len(values) - len(kept)} of its link-values"
        _refused(exchange, delivery, "link", f"the receiver's Link header was {dropped}: {why}", why)
    # Only a CDR POST's 2xx answer carries a Location the caller can use (mod_cdrs.asciidoc), rewritten to lead
    # back through the hub. Any other (a 3xx's target, which the hub does not follow) names a URL at the
    # receiver, which the caller's hub token does not open and the hub does not rewrite: not relayed.
    location = answer.headers.pop("location", None)
    if location and module == "cdrs" and entry.method == "POST" and 200 <= answer.status < 300:
        location = resolved(location, called_url)
        if over := _too_much([location]):
            _refused(exchange, delivery, "location", f"the receiver's Location header was not relayed: {over}", over)
            return
        _note_refused(relay, exchange, delivery, "location", [location])
        key = uuid.uuid4().hex
        entry.relayed_location = (key, location)
        answer.headers["location"] = f"{relay.settings.public_url}{CDR_LOCATIONS}{key}"


def hub_urls_spent(
    relay: Relay, platform_id: int, exc: NoRoomToday, kind: str, caller: PartyKey, what: str
) -> HubUrlsSpent:
    """The caller's platform has no room left today for the hub URLs (kind: pages, results) its request needs
    (storage.routing_state): counted and logged by the calling party, whose requests they are, and noted, so that
    this process forwards none of its list requests for the rest of the day (refuse_list_once_spent)."""
    relay.urls_spent[platform_id] = exc
    party = party_text(caller)
    HUB_URLS_SPENT.labels(party, kind).inc()
    log.warning("hub_urls_spent", party=party, kind=kind, kept_bytes=exc.kept_bytes, most_bytes=exc.most_bytes)
    return HubUrlsSpent(
        f"{what}, and the hub kept {exc.kept_bytes:,} bytes of them for this platform's requests today (UTC), of "
        f"{exc.most_bytes:,} at most (OCPI_HUB_KEPT_URL_BYTES_PER_DAY); the hub operator can raise it"
    )


def refuse_list_once_spent(relay: Relay, platform_id: int, caller: PartyKey) -> None:
    """A list request (a GET of a Sender's list, or of a page of one through the hub) of a platform this process has
    refused hub URLs today (UTC) is answered 4000 and not forwarded: the receiver would read out a page whose answer,
    with a next page, is not relayed (rewrite). One with no next page is refused too: which it is only its answer
    says. No Redis call: a process that refused none forwards, and refuses after the answer as before."""
    spent = relay.urls_spent.get(platform_id)
    if spent is None:
        return
    if not spent.still_today():
        del relay.urls_spent[platform_id]
        return
    what = "not forwarded: the answer to a list request may need hub URLs for its Link"
    raise hub_urls_spent(relay, platform_id, spent, "pages", caller, what)


def _hub(relay: Relay) -> tuple[str, str]:
    return relay.settings.country_code, relay.settings.party_id


def _within_limits(values: list[LinkValue], urls: dict[str, str]) -> tuple[list[LinkValue] | None, str]:
    """The link-values of a Link the hub keeps (their URLs resolved in urls), in their order, and why it keeps not all
    of them, or "". The next page's first, then first, prev and last, then the others, up to MAX_LINK_URLS URLs;
    none longer than MAX_URL_CHARS but the next page's, up to MAX_NEXT_URL_CHARS. A next page's URL longer than that:
    kept None, the answer not relayed (rewrite), which without it says its page is the last."""
    following = next((value for value in values if "next" in value.rel), None)
    # transport_and_format.asciidoc, Pagination: "Link to the 'next' page should be provided when this is NOT the last"
    if following is not None and (length := len(urls[following.url])) > MAX_NEXT_URL_CHARS:
        return None, (f"the URL of its next page (Link rel=\"next\") is {length} characters long, more than the "
                      f"{MAX_NEXT_URL_CHARS} the hub keeps")  # fmt: skip
    short = [n for n, value in enumerate(values) if value is following or len(urls[value.url]) <= MAX_URL_CHARS]
    chosen: set[int] = set()
    kept_urls: set[str] = set()
    for n in sorted(short, key=lambda n: 0 if values[n] is following else 1 if _PAGING & set(values[n].rel) else 2):
        if urls[values[n].url] in kept_urls or len(kept_urls) < MAX_LINK_URLS:
            chosen.add(n)
            kept_urls.add(urls[values[n].url])
    reasons = []
    if (named := len({urls[values[n].url] for n in short})) > MAX_LINK_URLS:
        reasons.append(f"it names {named} URLs, more than the {MAX_LINK_URLS} the hub keeps (next, first, prev and "
                       "last kept first)")  # fmt: skip
    if len(short) < len(values):
        longest = max(len(urls[value.url]) for value in values if len(urls[value.url]) > MAX_URL_CHARS)
        reasons.append(f"a URL in it is {longest} characters long, more than the {MAX_URL_CHARS} the hub keeps")
    return [values[n] for n in sorted(chosen)], "; ".join(reasons)


def _too_much(urls: list[str]) -> str | None:
    """Why the hub does not keep the URLs of an answer's Link or Location (each is kept for a later call, a Link's in
    Redis for PAGE_TTL_S, and written again as a hub URL), or None: a Link of more URLs than a page has relations
    (next, prev, first, last...), or a URL longer than any a party needs, as a relative reference resolved against a
    long query makes."""
    if len(urls) > MAX_LINK_URLS:
        return f"it names {len(urls)} URLs, more than the {MAX_LINK_URLS} the hub keeps"
    if longest := max((len(url) for url in urls if len(url) > MAX_URL_CHARS), default=0):
        return f"a URL in it is {longest} characters long, more than the {MAX_URL_CHARS} the hub keeps"
    return None


def _note_refused(relay: Relay, exchange: Exchange, delivery: Delivery, header: str, urls: list[str]) -> None:
    """A URL of the receiver's Link or Location the hub will not call (routing.rewrite.why_not_callable) is said in
    the routing log's row and the hub's log, with why, when it is relayed, not only when it is followed."""
    refused = [
        (url, why) for url in urls if (why := why_not_callable(url, delivery.platform, relay.settings.public_url))
    ]
    if not refused:
        return
    url, why = refused[0]
    error = f"the receiver's {header.title()} header leads to a URL the hub will not call, and following it is refused"
    _refused(exchange, delivery, header, f"{error}: {url[:200]!r}: {why}", why, url[:200])


def _refused(exchange: Exchange, delivery: Delivery, header: str, error: str, why: str, url: str | None = None) -> None:
    """The routing log's row and the hub's log say what the hub did with a receiver's Link or Location, and why."""
    exchange.entry.error = error
    log.warning(
        "party_url_refused",
        header=header,
        party=f"{delivery.to.country_code}-{delivery.to.party_id}",
        **({"url": url} if url is not None else {}),
        reason=why,
    )


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
