"""Calls to a party's versions, version details and credentials endpoints (the control plane, over
hub.party_client.PartyClient).

httpx errors are translated here, at this one boundary, into the OCPI errors the credentials module answers with:
3001 when the party's API cannot be used, 3002 when there is no common version, 3003 when endpoints are missing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import msgspec
import structlog

from hub.auth import authorization
from hub.errors import AnswerTooLarge, NoMatchingEndpoints, UnableToUseClientApi, UnsupportedVersion
from hub.ocpi.wire import INTERFACE_ROLES, Credentials, CredentialsAnswer, Endpoint, Version, VersionDetails
from hub.own_messages import Trace
from hub.party_client import Fetched, PartyClient
from hub.request_context import HUB_INSTANCE_HEADER
from routing.party_addresses import (
    ALLOWANCE,
    HUB_ITSELF,
    NO_CONNECTION,
    RefusedConnect,
    Unreached,
)
from routing.rewrite import same_host
from storage.log_row import LogEntry

log = structlog.get_logger()

SUPPORTED_VERSION = "2.2.1"
FUNCTIONAL_MODULES = frozenset(
    {"cdrs", "chargingprofiles", "commands", "hubclientinfo", "locations", "sessions", "tariffs", "tokens"}
)

_versions_decoder = msgspec.json.Decoder(list[Version])
_details_decoder = msgspec.json.Decoder(VersionDetails)
_credentials_decoder = msgspec.json.Decoder(CredentialsAnswer)


class TokenRefused(UnableToUseClientApi):
    """The party answered HTTP 401: it does not know the token, or not in the encoding it was sent in."""


@dataclass(frozen=True, slots=True)
class Discovery:
    """A party's 2.2.1 version details as fetched with its token, and how the party takes that token."""

    version: str
    version_url: str
    endpoints: list[Endpoint]
    token_encoding: str  # "base64", or "raw" for a party that refused it Base64-encoded

    def url(self, identifier: str) -> str | None:
        return next((e.url for e in self.endpoints if e.identifier == identifier), None)


async def discover(
    client: PartyClient, versions_url: str, token: str, *, party: str, hub_url: str, trace: Trace | None = None
) -> Discovery:
    """GET the party's versions, pick 2.2.1, GET its details and check the endpoints the hub needs; each GET a
    routing-log row of trace's if one is given.

    The token goes Base64-encoded, as 2.2.1 requires; if the party answers 401, once more as it is. The way it
    took is the party's token encoding, used for every later call to it (transport_and_format.asciidoc: with
    non-encoding 2.1.1 and 2.2 implementations, "choose the right way ... by either trial and error or
    configuration flags").

    hub_url is the hub's public URL: a URL under it among the party's would have the hub call itself in the party's
    name, so discovery stops there, saying which."""
    _check_not_the_hubs("versions URL", versions_url, hub_url)
    _check_address(client, "versions URL", versions_url)
    fetched, encoding = await _get_trying_raw(client, versions_url, token, "base64", trace)
    versions = _data(fetched, _versions_decoder, "versions", versions_url)
    chosen = next((v for v in versions if v.version == SUPPORTED_VERSION), None)
    if chosen is None:
        if (said := _refusal(fetched)) is not None:  # its data beside a refusal is no list of its versions
            raise UnableToUseClientApi(f"GET {versions_url} was refused: {said}")
        offered = ", ".join(v.version for v in versions) or "none"
        raise UnsupportedVersion(
            f"no common OCPI version: the hub speaks {SUPPORTED_VERSION}, the party offers {offered}"
        )
    _check_not_the_hubs(f"{SUPPORTED_VERSION} version details URL", chosen.url, hub_url)
    _check_address(client, f"{SUPPORTED_VERSION} version details URL", chosen.url)
    # a versions endpoint that answers anyone (as many do) shows nothing of the encoding: the trial goes on here
    answer, encoding = await _get_trying_raw(client, chosen.url, token, encoding, trace)
    details = _data(answer, _details_decoder, "version details", chosen.url)
    endpoints = _usable_endpoints(details.endpoints, party)
    judged: set[tuple[str, int]] = set()  # each host and port once
    for endpoint in endpoints:
        _check_not_the_hubs(f"{endpoint.identifier} {endpoint.role} endpoint", endpoint.url, hub_url)
        _check_address(client, f"{endpoint.identifier} {endpoint.role} endpoint", endpoint.url)
        # not called now: its host name judged as a connect would judge it (which stays: it may resolve elsewhere later)
        if why := await client.party_addresses.why_unusable(endpoint.url, client.timeout.connect, judged):
            what = f"{endpoint.identifier} {endpoint.role} endpoint"
            raise _unreached(f"the party's {what} {endpoint.url} is not usable", endpoint.url, why)
    identifiers = {e.identifier for e in endpoints}
    if "credentials" not in identifiers:
        raise NoMatchingEndpoints(
            f"the party's {SUPPORTED_VERSION} details at {chosen.url} list no credentials endpoint"
        )
    # status_codes.asciidoc 3003: "the two parties do not have any mutual modules or endpoints available"
    if not identifiers & FUNCTIONAL_MODULES:
        modules = ", ".join(sorted(FUNCTIONAL_MODULES))
        raise NoMatchingEndpoints(f"the party's {SUPPORTED_VERSION} details list no functional module ({modules})")
    return Discovery(SUPPORTED_VERSION, chosen.url, endpoints, encoding)


async def _get_trying_raw(
    client: PartyClient, url: str, token: str, encoding: str, trace: Trace | None
) -> tuple[Fetched, str]:
    """GET url with the token in encoding; a Base64-encoded token the party refused (HTTP 401) once more raw. The
    answer, and the encoding it took."""
    try:
        return await _call(client, "GET", url, token, encoding=encoding, trace=trace, module="versions"), encoding
    except TokenRefused as refused:
        if encoding == "raw":
            raise
        try:
            return await _call(client, "GET", url, token, encoding="raw", trace=trace, module="versions"), "raw"
        except TokenRefused:
            raise UnableToUseClientApi(f"{refused.message}; sent raw (not Base64-encoded), the token was refused "
                                       "as well") from None  # fmt: skip


def _check_not_the_hubs(what: str, url: str, hub_url: str) -> None:
    """UnableToUseClientApi when url is one of the hub's own (a set-up copied from the hub's, or a party behind the hub
    by mistake): the hub would forward to itself, with a token that is not one of its own."""
    # parsed, not as text: "http://hub:0443/", "https://HUB.:443/" and the like are the hub's too
    if url.lower() == hub_url.lower() or url.lower().startswith(f"{hub_url.lower()}/") or same_host(url, hub_url):
        raise UnableToUseClientApi(f"the party's {what} {url} is the hub's own; it must lead to the party's platform")


def _check_address(client: PartyClient, what: str, url: str) -> None:
    """UnableToUseClientApi, before any call, when url's host is a literal address the hub does not call parties at
    (routing.party_addresses); a host name is judged as the hub connects to it. The message is the same whether or
    not anything answers there: the hub's answers must not make a holder of a token A a port scanner."""
    if why := client.party_addresses.why_refused_url(url):
        raise UnableToUseClientApi(f"the party's {what} {url} is at {urlsplit(url).hostname}: {why}")


def _unreached(said: str, url: str, reason: str) -> UnableToUseClientApi:
    """A host outside the operator's allowance the hub could not connect to (routing.party_addresses.Unreached): the
    party is told NO_CONNECTION, which does not say whether the name resolved, to what, or whether anything answered;
    the hub's log says which. The hub's own address is said as it is: known to whoever names it."""
    if HUB_ITSELF in reason:
        return UnableToUseClientApi(f"{said}: {reason}")
    log.warning("party_not_reached", url=url[:200], reason=reason, setting=ALLOWANCE)
    return UnableToUseClientApi(f"{said}: {NO_CONNECTION}")


def _usable_endpoints(listed: list[Endpoint], party: str) -> list[Endpoint]:
    """The endpoints with a role of SENDER or RECEIVER. The credentials endpoint whatever its role (stored as SENDER):
    version_information_endpoint.asciidoc advises "to disregard the value of the role property of the Endpoint
    object for other platforms' credentials modules". Any other endpoint with another role ("CPO", left over from
    older versions) is left out, since the hub cannot tell which interface it is."""
    usable = []
    for endpoint in listed:
        if endpoint.role in INTERFACE_ROLES:
            usable.append(endpoint)
        elif endpoint.identifier == "credentials":
            usable.append(msgspec.structs.replace(endpoint, role="SENDER"))
        else:
            log.warning("party_endpoint_ignored", party=party, module=endpoint.identifier, role=endpoint.role,
                        url=endpoint.url, reason="its role is neither SENDER nor RECEIVER")  # fmt: skip
    return usable


async def exchange_credentials(
    client: PartyClient, method: str, credentials_url: str, token: str, ours: Credentials, encoding: str = "base64",
    trace: Trace | None = None,
) -> Credentials:  # fmt: skip
    """POST (register) or PUT (update) our credentials at the party and return the party's; a routing-log row of
    trace's if one is given."""
    response = await _call(client, method, credentials_url, token, body=msgspec.json.encode(ours), encoding=encoding,
                           trace=trace, module="credentials")  # fmt: skip
    return credentials_in(response, method, credentials_url)


async def read_credentials(
    client: PartyClient, credentials_url: str, token: str, encoding: str = "base64", trace: Trace | None = None
) -> Credentials:
    """GET the party's credentials (credentials.asciidoc, GET: "Retrieves the credentials object to access the
    server's platform"), which list the roles it provides; a routing-log row of trace's if one is given."""
    answer = await _call(client, "GET", credentials_url, token, encoding=encoding, trace=trace, module="credentials")
    return credentials_in(answer, "GET", credentials_url)


def credentials_in(response: Fetched, method: str, credentials_url: str) -> Credentials:
    """The party's credentials in its answer to the hub's POST, PUT or GET; UnableToUseClientApi when it refused."""
    try:
        answer = _credentials_decoder.decode(response.content)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise UnableToUseClientApi(f"{method} {credentials_url} answered with no valid credentials: {exc}") from None
    if answer.status_code != 1000:
        raise UnableToUseClientApi(
            f"{method} {credentials_url} was refused: {_status_said(answer.status_code, answer.status_message)}"
        )
    if answer.data is None:
        raise UnableToUseClientApi(f"{method} {credentials_url} answered OCPI status 1000 with no credentials")
    return answer.data


async def delete_credentials(
    client: PartyClient, credentials_url: str, token: str, encoding: str = "base64", trace: Trace | None = None
) -> None:
    await _call(client, "DELETE", credentials_url, token, encoding=encoding, trace=trace, module="credentials")


async def _call(
    client: PartyClient, method: str, url: str, token: str, body: bytes | None = None, encoding: str = "base64",
    *, trace: Trace | None = None, module: str = "",
) -> Fetched:  # fmt: skip
    """The party's answer below HTTP 300; UnableToUseClientApi (TokenRefused for HTTP 401) saying why otherwise. With a
    trace, the call is a row of it, naming module."""
    headers = {"Authorization": authorization(token, encoding)}
    if body is not None:
        headers["Content-Type"] = "application/json"
    if trace is None:
        return _accepted(client, await _fetch(client, method, url, headers, body), method, url)
    entry, started, error = trace.start(method, url, module, headers, body), time.perf_counter(), None
    try:
        response = await _fetch(client, method, url, headers, body, entry)
        trace.answered(entry, response.status_code, response.content)
        return _accepted(client, response, method, url)
    except UnableToUseClientApi as exc:
        error = exc.message
        raise
    finally:
        await trace.finish(entry, started, error)


async def _fetch(
    client: PartyClient, method: str, url: str, headers: dict[str, str], body: bytes | None, row: LogEntry | None = None
) -> Fetched:
    try:
        return await client.fetch(method, url, headers, body, row=row)
    except httpx.TimeoutException:
        raise UnableToUseClientApi(f"{method} {url} timed out") from None
    except httpx.ConnectError as exc:
        if isinstance(exc.__cause__, Unreached) and HUB_ITSELF not in str(exc):
            raise _unreached(f"{method} {url} failed", url, str(exc.__cause__)) from None
        if isinstance(exc.__cause__, RefusedConnect):  # never tried: its host resolved to no address it may call
            raise UnableToUseClientApi(f"{method} {url} was not called: {exc}") from None
        raise UnableToUseClientApi(f"{method} {url} failed: {exc or type(exc).__name__}") from None
    except (httpx.HTTPError, httpx.InvalidURL) as exc:  # InvalidURL is not an HTTPError ("http://[::1")
        raise UnableToUseClientApi(f"{method} {url} failed: {exc or type(exc).__name__}") from None
    except AnswerTooLarge as exc:
        raise UnableToUseClientApi(exc.message) from None


def _accepted(client: PartyClient, response: Fetched, method: str, url: str) -> Fetched:
    if client.hub_instance and response.headers.get(HUB_INSTANCE_HEADER) == client.hub_instance:
        # the URL names the hub under a host name other than its public URL's (127.0.0.1 for localhost, an internal
        # name): the hub called itself, and would answer itself 401 to a party's token, a puzzle to whoever reads it
        raise UnableToUseClientApi(
            f"{url} is the hub's own (the hub answered {method} {url} itself, under another name than {client.hub_url}"
            "); it must lead to the party's platform"
        )
    if response.status_code == 401:
        raise TokenRefused(f"{method} {url} answered HTTP 401: {_said(response)}")
    if response.status_code >= 300:
        raise UnableToUseClientApi(f"{method} {url} answered HTTP {response.status_code}: {_said(response)}")
    return response


def _said(refusal: Fetched) -> str:
    """What a party's refusal says, for the message that names it: an OCPI envelope's status code and message, else
    only what kind of body came. The hub calls whatever versions URL a party gives it (a holder of a token A too):
    quoting the body of any answer would let a party read what an address behind the hub answers (an admin page, a
    cloud metadata service's error), as the hub's own URL checks (routing.rewrite.why_not_callable) keep it from
    doing through a response_url."""
    try:
        document = msgspec.json.decode(refusal.content)
    except (msgspec.DecodeError, RecursionError):
        document = None
    if (status := _status_of(document)) is not None:
        return _status_said(status, document.get("status_message"))
    kind = refusal.headers.get("content-type", "no content type")
    return f"{len(refusal.content)} bytes of {kind[:100]}, not an OCPI answer"


def _refusal(response: Fetched) -> str | None:
    """What an answer's OCPI envelope said, when its status code is not 1000 (status_codes.asciidoc: then "the data
    field is unspecified"); None for a success, or an answer with no OCPI status."""
    try:
        document = msgspec.json.decode(response.content)
    except (msgspec.DecodeError, RecursionError):
        return None
    if (status := _status_of(document)) is None or status == 1000:
        return None
    return _status_said(status, document.get("status_message"))


def _status_of(document: Any) -> int | None:
    """The status code of a decoded OCPI envelope; None for anything else, JSON's true and false among them (a bool
    is an int to Python)."""
    status = document.get("status_code") if isinstance(document, dict) else None
    return status if isinstance(status, int) and not isinstance(status, bool) else None


def _status_said(status: int, message: object) -> str:
    """'OCPI status N message', as the hub's messages name what a party's envelope said: its message cut, since the
    hub calls whatever URLs a party gives it (_said)."""
    return f"OCPI status {status} {message[:200] if isinstance(message, str) else ''}".rstrip()


def _data(response: Fetched, decoder: msgspec.json.Decoder, what: str, url: str):  # type: ignore[no-untyped-def]
    """The envelope's data decoded; tolerant of parties that send the bare object instead of an envelope, or another
    status code beside usable data. Where the data is not usable, an OCPI status other than 1000 is the reason given:
    the party said why."""
    document: Any = None
    try:
        document = msgspec.json.decode(response.content)
        payload = document.get("data", document) if isinstance(document, dict) else document
        return decoder.decode(msgspec.json.encode(payload))
    except (msgspec.DecodeError, RecursionError) as exc:
        if (status := _status_of(document)) is not None and status != 1000:
            said = _status_said(status, document.get("status_message"))
            raise UnableToUseClientApi(f"GET {url} was refused: {said}") from None
        raise UnableToUseClientApi(f"GET {url} answered no usable {what}: {exc}") from None
