"""URL rewrites that keep parties talking through the hub: response_url, paging Link and CDR Location.

The hub changes nothing else in a relayed body (transport_and_format.asciidoc: Timestamps and Objects send via
Hubs); a response_url is replaced in the raw bytes where its JSON form can be found, so the rest stays as sent.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import time
from urllib.parse import parse_qsl, quote, unquote_plus, urljoin, urlsplit

import httpx
import msgspec
import yarl

from hub.errors import InvalidParameters, decoded
from hub.ocpi.wire import usable_url
from routing.request import Incoming
from storage.directory import Platform
from storage.location_document import epoch
from storage.routing_state import CALLBACK_TTL_S

_RESPONSE_URL_KEY = re.compile(rb'"response_url"[ \t\n\r]*:[ \t\n\r]*')  # RFC 8259: the whitespace JSON allows
_URI = re.compile(r"^[\x21-\x7e]+\Z")  # RFC 3986: printable ASCII; a space, a control or a non-ASCII character is not
_encode = msgspec.json.encode

RESERVATION_MARGIN_S = 24 * 3600  # a CANCELED_RESERVATION posted at the very end of the reservation, or a bit late
# ReserveNow.expiry_date has no upper bound: a reservation a year ahead (or in 9999) must not pin a key for ever.
# Past this, the CPO's cancellation gets a 404 from the hub, as any result does once its callback expired.
MAX_CALLBACK_TTL_S = 90 * 24 * 3600
MAX_URL_LENGTH = 255  # types.asciidoc, URL: "a string(255) type"


class _WithResponseUrl(msgspec.Struct):
    response_url: str | None = None


class _Responded(msgspec.Struct):
    status_code: int | None = None
    data: msgspec.Raw = msgspec.Raw(b"null")


class _Result(msgspec.Struct):
    result: str | None = None


class _ReserveNow(msgspec.Struct):
    expiry_date: str | None = None


def response_url_of(incoming: Incoming) -> str | None:
    """The response_url the requester expects its asynchronous result at (mod_commands, mod_charging_profiles); one
    longer than an OCPI URL is refused: the hub keeps it (in Redis, a RESERVE_NOW's for up to 90 days), and a 60 kB
    one stored 65 kB a request (security review, finding 3)."""
    found = _response_url_given(incoming)
    if found is not None and len(found) > MAX_URL_LENGTH:
        raise InvalidParameters(f"response_url has {len(found)} characters; an OCPI URL has at most {MAX_URL_LENGTH} "
                                "(types.asciidoc, URL: string(255))")  # fmt: skip
    return found


def _response_url_given(incoming: Incoming) -> str | None:
    if incoming.interface != "receiver":
        return None
    if incoming.module == "commands" and incoming.method == "POST":
        return _from_body(incoming.body, required=True)
    if incoming.module == "chargingprofiles":
        if incoming.method == "PUT":
            return _from_body(incoming.body, required=True)
        if incoming.method in ("GET", "DELETE"):
            params = dict(parse_qsl(incoming.query))
            found = params.get("response_url")
            if not found:
                raise InvalidParameters("the response_url query parameter is required")
            duration = params.get("duration", "")
            if incoming.method == "GET" and not (duration.isascii() and duration.isdigit()):
                # mod_charging_profiles.asciidoc, GET: "duration | int | yes | Length of the requested
                # ActiveChargingProfile in seconds"
                got = f", got {duration[:32]!r}" if duration else ""
                raise InvalidParameters(
                    "the duration query parameter, the length of the requested ActiveChargingProfile in whole seconds,"
                    f" is required{got}"
                )
            return found
    return None


def callback_ttl_s(incoming: Incoming) -> int:
    """How long the hub keeps a relayed response_url: CALLBACK_TTL_S, and a RESERVE_NOW's until its expiry_date
    and a day, capped. mod_commands: "To Cancel a reservation the CPO call the Senders interface with the same URL
    as was given by the Sender (eMSP) when the RESERVE_NOW command was send", at any time until the reservation ends."""
    segments = incoming.segments
    if incoming.module != "commands" or not segments or segments[0].upper() != "RESERVE_NOW":
        return CALLBACK_TTL_S
    try:
        expiry_date = msgspec.json.decode(incoming.body, type=_ReserveNow).expiry_date
        ends_in = epoch(expiry_date) - time.time() if expiry_date else 0.0
    except (msgspec.DecodeError, RecursionError, ValueError, OverflowError):
        return CALLBACK_TTL_S  # not the hub's to refuse: the CPO judges the command, the callback keeps the default
    return int(min(max(CALLBACK_TTL_S, ends_in + RESERVATION_MARGIN_S), MAX_CALLBACK_TTL_S))


def why_no_result(status: int, body: bytes) -> str | None:
    """Why the receiver's answer to a request with a response_url says no result will be posted to it, or None (it may
    come). mod_commands.asciidoc, CommandResponseType, and mod_charging_profiles.asciidoc, ChargingProfileResponseType:
    the result is sent "if this response is ACCEPTED"; an HTTP error or an OCPI status other than 1xxx took nothing."""
    if not 200 <= status < 300:
        return f"HTTP {status}"
    try:
        answered = msgspec.json.decode(body, type=_Responded)
        if answered.status_code is not None and not 1000 <= answered.status_code < 2000:
            return f"OCPI status {answered.status_code}"
        answer = msgspec.json.decode(answered.data, type=_Result | None)
    except (msgspec.DecodeError, RecursionError):  # no envelope, or data no object: nothing it says for sure
        return None
    result = answer.result if answer is not None else None
    return f"result {result}" if result is not None and result != "ACCEPTED" else None


def _from_body(body: bytes, *, required: bool) -> str | None:
    found = decoded(body, _WithResponseUrl, "invalid request body").response_url
    if required and not found:
        raise InvalidParameters("response_url is required in the request body")
    return found


def with_response_url(incoming: Incoming, original: str, replacement: str) -> tuple[bytes, str]:
    """(body, query) with the response_url replaced by the hub's own."""
    if incoming.module == "chargingprofiles" and incoming.method in ("GET", "DELETE"):
        # Only the response_url's value changes: the other parameters go on as the caller wrote them.
        replaced = f"response_url={quote(replacement, safe='')}"
        given = incoming.query.split("&")
        if sum(_query_name(part).lower() == "response_url" for part in given) != 1:
            raise InvalidParameters(_MORE_THAN_ONE)
        parts = [replaced if _query_name(part) == "response_url" else part for part in given]
        return incoming.body, "&".join(parts)
    encoded = _encode(original)
    if incoming.body.count(encoded) == 1:
        body = incoming.body.replace(encoded, ours := _encode(replacement))
        if not _plainly_the_response_url(body, ours):
            _check_the_one_response_url(body, replacement)
        return body, incoming.query
    # Escaped differently from msgspec's form (e.g. "\/"): the object written again, keys in their order (a key sent
    # twice, once: the hub's), every other value as it came (Raw: 10.50 stays 10.50, not the float 10.5).
    document = msgspec.json.decode(incoming.body, type=dict[str, msgspec.Raw])
    document["response_url"] = msgspec.Raw(_encode(replacement))
    return _encode(document), incoming.query


# A receiver may read names in any case (ASP.NET's JSON and query binding do), and take the first or the last.
_MORE_THAN_ONE = (
    "response_url more than once, in any case: the receiver might take one the hub did not check; send it once"
)


def _plainly_the_response_url(body: bytes, ours: bytes) -> bool:
    """Whether body, with no escape anywhere (so that each key is as written and no string holds a quote), names
    response_url once and ours is its value: the body of nearly every command, checked without decoding it again."""
    if b"\\" in body or body.lower().count(b'"response_url"') != 1:
        return False
    key = _RESPONSE_URL_KEY.search(body)
    return key is not None and body.startswith(ours, key.end())


def _check_the_one_response_url(body: bytes, replacement: str) -> None:
    """InvalidParameters unless the object body holds one response_url, the hub's: a key sent twice (a receiver may
    take the first, which the hub did not check) or a response_url escaped otherwise than another field holding
    the same URL (the hub replaced that field) would give the receiver a URL the hub never checked."""
    try:
        pairs = json.loads(body, object_pairs_hook=list)  # each object's keys as sent, twice if sent twice
    except (ValueError, RecursionError):
        raise InvalidParameters("the request body is nested too deeply for the hub to check its response_url") from None
    found = [value for key, value in pairs if key.lower() == "response_url"]
    if len(found) != 1:
        raise InvalidParameters(f"the request body holds response_url {len(found)} times: {_MORE_THAN_ONE}")
    if found[0] != replacement:
        raise InvalidParameters("the request body holds the response_url's URL in another field too, escaped "
                                "otherwise than the response_url, and the hub cannot tell which to replace with its "
                                "own: write the URL alike in both")  # fmt: skip


def _query_name(part: str) -> str:
    return unquote_plus(part.partition("=")[0])


def with_query(url: str, query: str) -> str:
    """url with the parameters of query in place of its own of the same names, the rest of its own kept in their order,
    all as written: a client following a paging Link with its own offset or limit (transport_and_format.asciidoc,
    Pagination: "redo the previous GET with the offset lowered by 1") asks the receiver for just that, as it could
    have with its own GET through the hub. InvalidParameters for a query that is no URI's."""
    given = [part for part in query.split("&") if part]
    if not given:
        return url
    if not _URI.match(query):  # the caller's, not the receiver's: said to the caller as its own (2001)
        raise InvalidParameters(f"the query {query[:100]!r} holds a character that must be percent-encoded")
    base, _, own = url.partition("?")
    names = {_query_name(part) for part in given}
    kept = [part for part in own.split("&") if part and _query_name(part) not in names]
    return f"{base}?{'&'.join(kept + given)}"


def why_not_callable(url: str, platform: Platform, hub_url: str) -> str | None:
    """Why the hub will not call url later for platform (a response_url a caller gave, a Link or a CDR Location a
    receiver's answer held), or None. The hub calls such a URL with the platform's token B and relays what comes
    back: only a URL at a host the platform registered (the scheme, host and port of its versions URL or of one of its
    endpoints), and none of the hub's own, or any party could have the hub fetch what the network behind it holds
    (the hub's /metrics, another party's internal service) and read the answer."""
    if not _URI.match(url):  # the hub sends it as written (call_party: encoded): it would go out as no URI at all
        return f"it is not a URL the hub can call, got {url[:200]!r}: a character in it must be percent-encoded"
    try:
        usable_url("it", url)
    except ValueError as exc:
        return str(exc)
    try:
        origin = _origin(url)
    except ValueError as exc:
        return f"it is not a URL the hub can call, got {url!r}: {exc}"
    if origin in _hosts((hub_url,)):  # parsed, not as text: "http://hub:0443", "https://HUB.:443/", "http://u@hub/"
        return "it is at the hub's own host"
    registered = _hosts((platform.versions_url, platform.version_url, *platform.endpoints.values()))
    if origin not in registered:
        hosts = ", ".join(sorted(f"{scheme}://{host}:{port}" for scheme, host, port in registered))
        return f"it is at none of the hosts {platform.name!r} registered ({hosts})"
    return None


@functools.lru_cache(maxsize=1024)
def _hosts(urls: tuple[str | None, ...]) -> frozenset[tuple[str, str, int]]:
    """The origins of the URLs a platform registered (or of the hub's own), parsed once per set of URLs, not on every
    request that hands the hub a URL (some 600 us for a platform's 18); one the clients cannot read is left out."""
    found = set()
    for url in urls:
        with contextlib.suppress(ValueError):  # a URL the hub cannot call anyway
            found.add(_origin(url or ""))
    return frozenset(found)


def _origin(url: str) -> tuple[str, str, int]:
    """Scheme, host and port of a URL as the clients that call it read it: aiohttp (yarl) on the data plane, httpx on
    the control plane. ValueError where they read it differently ("http://a\\@b/": a host for one, none for the
    other), or either cannot."""
    called = yarl.URL(url)  # raises ValueError for what it refuses, as aiohttp would on the call
    other = httpx.URL(url)
    if called.user is not None or called.password is not None or other.userinfo:
        raise ValueError("it holds a user name or password, where the hub sends its own Authorization")
    scheme, host, port = called.scheme.lower(), (called.host or "").lower().rstrip("."), called.port
    if (host, port) != ((other.host or "").lower().rstrip("."), other.port or (443 if scheme == "https" else 80)):
        raise ValueError(f"its host is read as {called.host}:{called.port} by one HTTP client, {other.host} by another")
    return scheme, host, port or (443 if scheme == "https" else 80)


def same_host(url: str, other_url: str) -> bool:
    """Whether two URLs are at the same scheme, host and port as HTTP clients read them (False if either is no URL
    they can call)."""
    try:
        return _origin(url) == _origin(other_url)
    except ValueError:
        return False


def resolved(url: str, called_url: str) -> str:
    """A URL a receiver's answer gave, resolved against the URL the hub called when it is relative: RFC 8288, 3.2
    ("If the URI-Reference is relative, parsers MUST resolve it as per [RFC3986], Section 5") for a Link, RFC 9110,
    10.2.2 for a Location. An absolute one stays as written, its fragment left out."""
    url = url.partition("#")[0]  # a fragment is the client's, never sent: "<#1>", "<#2>"... would be one URL each
    try:
        if urlsplit(url).scheme:
            return url
    except ValueError:  # no URL at all: why_not_callable says so
        return url
    return urljoin(called_url, url)
