"""One exception per OCPI status code; hub/envelope.py renders them.

status_codes.asciidoc: requests that reach the OCPI layer get HTTP 200 with an OCPI status code; errors of the
transport layer (no valid JSON, no such resource, no credentials) get an HTTP error code, with the same envelope.
A header the hub refuses is the OCPI layer's (InvalidParameters, UnknownReceiver, ...: routing headers, X-Request-ID,
X-Correlation-ID), but for Authorization (Unauthorized, HTTP 401, as transport_and_format.asciidoc says) and a
Content-Encoding of the body (EncodedBody, HTTP 415: the body does not arrive as JSON).

    OcpiError
    ├── ClientError 2000 ── InvalidParameters 2001, NotEnoughInformation 2002, UnknownLocation 2003,
    │                       UnknownToken 2004, Unauthorized (HTTP 401), NotFound (HTTP 404),
    │                       MethodNotAllowed (HTTP 405), MalformedBody (HTTP 400), BodyTooLarge (HTTP 413),
    │                       EncodedBody (HTTP 415), InvalidPathSegment (2001, HTTP 404)
    ├── ServerError 3000 ── UnableToUseClientApi 3001, UnsupportedVersion 3002, NoMatchingEndpoints 3003
    └── HubError 4000 ───── ForwardingLoop 4000, TooManyHubs 4000, ShareInUse 4000, BroadcastsPending 4000,
                            HubUrlsSpent 4000, UnknownReceiver 4001, ForwardTimeout 4002, ReceiverNotConnected 4003

PostgreSQL or Redis away (OUTAGES, `unavailable`) is no bug of the hub: the relay answers it with 4000, the
hub's own OCPI endpoints with 3000 (HTTP 200, the request reached the OCPI layer), the admin API and the console with
HTTP 503, each naming the server and the error. A body the hub reads itself goes through
`decoded` or `check_json`, which translate msgspec's errors into MalformedBody (no JSON) or InvalidParameters.
"""

from __future__ import annotations

from typing import TypeVar

import asyncpg
import msgspec
import redis

T = TypeVar("T")

# How the hub's answers name JSON nested deeper than Python's recursion limit. msgspec refuses such JSON with a
# RecursionError, which is not a DecodeError: every decode of JSON a party sent catches both.
NESTED_TOO_DEEPLY = "the JSON is nested too deeply (over about 1,000 levels; an OCPI object has a few)"
# How they name a body of nothing but whitespace, which msgspec calls "Input data was truncated": true, and no clue.
EMPTY_BODY = "the request body is empty; a JSON object is required"


class OcpiError(Exception):
    """Base of every error the hub answers with an OCPI envelope."""

    status_code = 3000
    http_status = 200
    allow = ""  # a 405's Allow header (MethodNotAllowed): whoever renders the error sends it when set

    def __init__(self, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        # for the routing log and the hub's own log only, where it says more than the caller may read (a receiver's
        # own URL, which the hub keeps from the other parties)
        self.detail = detail or message


class ClientError(OcpiError):
    """Generic client error."""

    status_code = 2000


class InvalidParameters(ClientError):
    """Invalid or missing parameters."""

    status_code = 2001


class NotEnoughInformation(ClientError):
    """Not enough information, e.g. an authorize request with too little information."""

    status_code = 2002


class UnknownLocation(ClientError):
    """Unknown Location."""

    status_code = 2003


class UnknownToken(ClientError):
    """Unknown Token."""

    status_code = 2004


class Unauthorized(ClientError):
    """Missing or unknown credentials token, or token A outside versions and credentials."""

    http_status = 401


class NotFound(ClientError):
    """No such resource."""

    http_status = 404


class MethodNotAllowed(ClientError):
    """The method is not allowed here or in this registration state (credentials.asciidoc: HTTP 405); `allow`
    names the methods that are, for the Allow header RFC 9110 asks of a 405."""

    http_status = 405

    def __init__(self, message: str, allow: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.allow = ", ".join(allow)


class InvalidPathSegment(InvalidParameters):
    """A path segment no OCPI id can be (a control character: types.asciidoc, string and CiString, "Non-printable
    characters like: Carriage returns, Tabs, Line breaks, etc are not allowed"): 2001, with the HTTP 404 of a URL
    the interface does not define."""

    http_status = 404


class MalformedBody(InvalidParameters):
    """The body is not valid JSON (status_codes.asciidoc: HTTP 400)."""

    http_status = 400


def as_sent(value: bytes, at_most: int = 16) -> str:
    """A header value for an error message, as the caller wrote it, cut short: its bytes read as UTF-8 when they are
    UTF-8 (what most clients send), else as ISO-8859-1, as HTTP has read header bytes (RFC 9110, 5.5) and as Python's
    http.client and requests send text. Read as UTF-8 alone, "café" sent in ISO-8859-1 was quoted with a replacement
    character (U+FFFD) for the "é": not what the caller sent, and no clue to it."""
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        text = value.decode("latin-1")
    return text if len(text) <= at_most else text[:at_most] + "..."


def decoded(raw: bytes, kind: type[T], what: str) -> T:
    """A request body as `kind`: MalformedBody (HTTP 400) for one that is no valid JSON (status_codes.asciidoc:
    "When a message does not contain a valid JSON string, the HTTP error 400 - Bad request MUST be returned"),
    InvalidParameters ("{what}: ...", HTTP 200) for valid JSON that is not a `kind`."""
    try:
        return msgspec.json.decode(raw, type=kind)
    except msgspec.ValidationError as exc:
        check_json(raw)  # decoding stops at the first value of the wrong type: what follows may be no JSON at all
        raise InvalidParameters(f"{what}: {exc}") from None
    except (msgspec.DecodeError, RecursionError) as exc:
        raise _not_json(raw, exc) from None


def check_json(raw: bytes) -> None:
    """MalformedBody unless raw is one valid JSON value (checked without building it)."""
    try:
        msgspec.json.decode(raw, type=msgspec.Raw)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise _not_json(raw, exc) from None


def check_utf8(raw: bytes) -> None:
    """MalformedBody unless raw is UTF-8 (RFC 8259, 8.1: JSON exchanged between systems "MUST be encoded using UTF-8");
    msgspec does not look at the bytes of the fields it skips, and a relayed body is mostly not decoded at all."""
    if raw.isascii():  # nearly every body: no copy made
        return
    try:
        str(raw, "utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedBody(f"the request body is not valid JSON: it is not UTF-8 (byte {exc.start} is "
                            f"0x{raw[exc.start]:02x})") from None  # fmt: skip


def _not_json(raw: bytes, exc: Exception) -> MalformedBody:
    if not raw.strip():  # looked at only once decoding failed: a body that decodes costs nothing more
        return MalformedBody(EMPTY_BODY)
    why = NESTED_TOO_DEEPLY if isinstance(exc, RecursionError) else exc
    return MalformedBody(f"the request body is not valid JSON: {why}")


class BodyTooLarge(ClientError):
    """The body is larger than the hub accepts."""

    http_status = 413


class EncodedBody(ClientError):
    """A request body with a content coding (gzip) the hub does not undo (RFC 9110, 15.5.16: HTTP 415)."""

    http_status = 415


class BodyTooSlow(ClientError):
    """The client announced a body and did not send all of it in time."""

    http_status = 408


class ServerError(OcpiError):
    """Generic server error."""

    status_code = 3000


class UnableToUseClientApi(ServerError):
    """The hub could not use the party's API (e.g. its versions during registration)."""

    status_code = 3001


class UnsupportedVersion(ServerError):
    """No OCPI version in common."""

    status_code = 3002


class NoMatchingEndpoints(ServerError):
    """Required endpoints missing."""

    status_code = 3003


class HubError(OcpiError):
    """Generic hub error."""

    status_code = 4000


class AnswerTooLarge(HubError):
    """A party's answer is larger than the hub takes (OCPI_HUB_MAX_BODY_BYTES)."""


class AnswerNotRelayable(HubError):
    """A party answered with an HTTP status no HTTP server can send on (one outside 200-599)."""


class AnswerUnreadable(HubError):
    """A party answered with bytes the hub cannot read as an HTTP answer: it did get the request."""


class ReceiverRefusedHub(HubError):
    """The receiver answered HTTP 401 to the hub's token B: relayed as it came, the caller would take it for a refusal
    of its own token at the hub."""


class ForwardingLoop(HubError):
    """A request that carries the hub's own mark among those of the hubs it passed (hub.request_context.
    HUB_INSTANCE_HEADER): the hub sent it, and it came back to it, straight or through other hubs; forwarded again, it
    would go round until the connections ran out."""

    def __init__(self) -> None:
        super().__init__("the request came back to the hub it left: it carries the hub's own mark in its "
                         "X-OCPI-Hub-Instance header (a receiver's endpoint leads back to the hub, or a party copied "
                         "that header from a request the hub sent it, which it must not); the hub does not forward it "
                         "again")  # fmt: skip


class TooManyHubs(HubError):
    """A request that passed more hubs than the hub forwards through (hub.request_context.MAX_HUBS_PASSED, counted in
    its HUB_INSTANCE_HEADER): a loop through other hubs that none of them closed, or a header grown without end."""

    def __init__(self, hubs: int) -> None:
        super().__init__(f"the request passed {hubs} hubs already (X-OCPI-Hub-Instance); the hub does not forward it "
                         "further: a receiver's endpoint may lead round through hubs")  # fmt: skip


class ShareInUse(HubError):
    """For half the forward deadline, no connection to the receiver's server was free for the caller: its whole share
    was in flight there, or all the hub's connections were (routing.fair_share). The request was not forwarded: not
    4002, which says the message was forwarded."""


class BroadcastsPending(HubError):
    """The calling platform has as many broadcast copies still in delivery in this hub process as the hub keeps of
    one platform's (hub.ocpi.broadcast): its broadcast is not forwarded, to any party."""


class HubUrlsSpent(HubError):
    """The calling platform was handed as many bytes of hub URLs (paging Links, response_url results) this UTC day
    as the hub keeps of one platform's (OCPI_HUB_KEPT_URL_BYTES_PER_DAY, storage.routing_state): a request that needs
    one is not relayed (a command not forwarded; a page's answer not relayed, lest it be taken for the last)."""


class UnknownReceiver(HubError):
    """The TO address is unknown."""

    status_code = 4001


class ForwardTimeout(HubError):
    """The message was forwarded but the receiver did not answer in time."""

    status_code = 4002


class ReceiverNotConnected(HubError):
    """The receiving party is not connected or cannot be reached."""

    status_code = 4003


class ReceiverNotCalled(ReceiverNotConnected):
    """Not tried: the receiver's address is not one this hub process calls parties at (routing.party_addresses). Says
    nothing of the party, which is not suspected offline for it: one instance set up without the operator's allowance
    must not take the party off every instance (an upgrade walkthrough saw it)."""


class ReceiverLeft(ReceiverNotConnected):
    """Not sent: the receiver left the hub, or stopped being CONNECTED, after the request was routed to it (a broadcast
    copy that waited for its turn). Says nothing of its server, which is not suspected offline for it."""


class ReceiverNotResolved(ReceiverNotConnected):
    """The receiver's host name did not resolve: the caller is told no more than of an address the hub does not call
    (routing.forward_failures.NOT_CALLABLE); the hub's log line party_not_reached says which it was."""


# What the drivers raise when their server is away (stopped, restarting, unreachable, not answering), as opposed
# to a query or command the server refused.
OUTAGES = (
    OSError,  # asyncpg connecting: refused, reset, unreachable
    asyncpg.PostgresConnectionError,  # the connection broke during a query
    asyncpg.CannotConnectNowError,  # starting up or shutting down
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    redis.ConnectionError,
    redis.TimeoutError,
    TimeoutError,  # asyncpg: no answer within hub.runtime.DATABASE_TIMEOUT_S (an OSError too, named for the reader)
)


def unavailable(exc: BaseException) -> str:
    """What to tell a caller when one of OUTAGES came: which server is away, and what its driver said."""
    service = "Redis" if isinstance(exc, redis.RedisError) else "PostgreSQL"  # redis-py wraps its OSErrors
    # asyncpg's timeouts (hub.runtime.DATABASE_TIMEOUT_S) are TimeoutErrors that say nothing
    said = str(exc) or ("no answer in time" if isinstance(exc, TimeoutError) else "")
    return f"the hub's {service} is unavailable ({type(exc).__name__}{': ' if said else ''}{said})"
