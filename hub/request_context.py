"""X-Request-ID and X-Correlation-ID on every answer, bound to every log line of the request, and one access line;
the hub's own mark on the answers of its OCPI configuration modules (HUB_INSTANCE_HEADER).

transport_and_format.asciidoc: the X-Request-ID of a request is echoed in its response; the X-Correlation-ID is kept
through the whole chain. A caller that sends neither gets fresh ones. RequestContext wraps Litestar's side of the
hub (versions, credentials, admin, console, probes); the relay, the hot path, does the same itself with
`request_ids` and `log_request`, saving a layer per request.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from random import getrandbits
from typing import Any

import structlog
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from hub.errors import InvalidParameters, TooManyHubs, Unauthorized, as_sent
from hub.logs import debug_enabled

log = structlog.get_logger()

PROBE_PATHS = frozenset(("/health", "/ready", "/metrics"))  # load balancers and Prometheus: no OCPI token
# The longest X-Request-ID / X-Correlation-ID a routed request may carry: the routing log indexes and searches them
# (a B-tree entry has a size limit), and a UUID, which the specification advises, has 36 characters.
MAX_ID_LENGTH = 255
# The hub's mark (Settings.hub_instance: the same on every process of one hub, another on each hub, no secret), both
# ways. On every request the hub sends (forwards, broadcast copies, its own messages): one that arrives carrying it
# left this hub and came back (a party's endpoint that leads to the hub, a party passing on what it got), and is
# refused at once (hub.errors.ForwardingLoop) rather than sent round again: a security review's loop made 65 hops of
# one request, until the connections to the hub ran out. On the answers of the hub's versions, details, credentials
# and hubclientinfo routes: the control plane (hub.party_api) tells by it that a party's URL names the hub under another
# host name or through a proxy, when the hub calls itself.
#
# A request goes round through other hubs too (a party at this hub that is another hub, or a proxy to one, whose party
# leads back here): so the mark travels like Via (RFC 9110, section 7.6.3), a list of the marks of the hubs the request
# passed, oldest first. A hub forwarding a request keeps the marks it came with and adds its own, and refuses one whose
# list holds its own mark, or that passed MAX_HUBS_PASSED hubs already: a header that cannot grow without end.
HUB_INSTANCE_HEADER = "x-ocpi-hub-instance"
MAX_HUBS_PASSED = 8
_HUB_INSTANCE_NAME = HUB_INSTANCE_HEADER.encode()
_MAX_MARK_LENGTH = 64  # this hub's are 24 characters


def hubs_passed(headers: Iterable[tuple[bytes, bytes]]) -> list[str]:
    """The marks of the hubs a request passed (HUB_INSTANCE_HEADER, in one line or several), oldest first; a list as
    long as MAX_HUBS_PASSED (with this hub's, it would be longer) is refused: a loop through other hubs. Read before
    the caller's token, as the loop check needs them (a request come back carries a token the hub gave no one);
    whether each is a hub's mark at all, check_marks tells once the caller is authenticated."""
    marks = [mark.strip() for name, value in headers if name == _HUB_INSTANCE_NAME
             for mark in value.decode("latin-1").split(",") if mark.strip()]  # fmt: skip
    if len(marks) >= MAX_HUBS_PASSED:
        raise TooManyHubs(len(marks))
    return marks


def check_marks(passed: str) -> None:
    """Each mark of a list hubs_passed read, joined with ", ", must be one the hub can pass on as it came: refused
    otherwise (2001), after the caller's token, so that an anonymous caller is answered 401 whatever its headers hold
    (transport_and_format.asciidoc)."""
    for mark in passed.split(", "):
        if len(mark) > _MAX_MARK_LENGTH or not (mark.isascii() and mark.isprintable()):
            shown = as_sent(mark.encode("latin-1"), 40)
            raise InvalidParameters(f"X-OCPI-Hub-Instance holds {shown!r}, no hub's mark (printable ASCII, at "
                                    f"most {_MAX_MARK_LENGTH} characters each, comma-separated)")  # fmt: skip


def new_request_id() -> str:
    """A random (version 4) UUID in text form. A request id names a message and guards nothing, so it is drawn from
    the fast generator rather than the OS (uuid.uuid4: a system call and an object, 3x the time; one or two a
    request)."""
    n = getrandbits(128) & ~(0xF000 << 64) & ~(0xC000 << 48) | (0x4000 << 64) | (0x8000 << 48)  # version, variant
    text = f"{n:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def request_ids(headers: dict[str, str]) -> tuple[str, str]:
    """(X-Request-ID, X-Correlation-ID) of a request, from its lower-cased headers, as sent (echoed as they came:
    transport_and_format.asciidoc, "the response to this request SHALL contain the same ID"); fresh ones where
    missing."""
    request_id = headers.get("x-request-id", "") or new_request_id()
    return request_id, headers.get("x-correlation-id", "") or request_id


def check_ids(request_id: str, correlation_id: str) -> None:
    """A routed request's ids must fit the routing log: a longer one is refused, not cut (a cut X-Correlation-ID
    would no longer match the rest of its chain at the parties). They must be printable ASCII too: the hub sends the
    X-Correlation-ID on to the parties, and its HTTP clients write nothing else into a header as it came (aiohttp
    would send other bytes, httpx fails)."""
    for name, value in (("X-Request-ID", request_id), ("X-Correlation-ID", correlation_id)):
        if len(value) > MAX_ID_LENGTH:
            raise InvalidParameters(f"{name} has {len(value)} characters; the hub takes at most {MAX_ID_LENGTH} (a "
                                    "UUID, which OCPI advises, has 36)")  # fmt: skip
        if not (value.isascii() and value.isprintable()):
            raise InvalidParameters(f"{name} {as_sent(value.encode('latin-1'), 40)!r} holds characters other than "
                                    "printable ASCII, which the hub cannot pass on to the parties as they came (a "
                                    "UUID, which OCPI advises, has none)")  # fmt: skip


# Headers whose one value decides where a request goes or how it is logged: as the spec names them (Authorization, which
# decides who sends it, has check_one_authorization). The ids alone on the hub's own OCPI endpoints, which take no
# routing headers (hub.auth.CredentialsTokenAuth).
REQUEST_IDS = {b"x-request-id": "X-Request-ID", b"x-correlation-id": "X-Correlation-ID"}
SINGLE_VALUED = {
    **{name.lower().encode(): name
       for name in ("OCPI-to-country-code", "OCPI-to-party-id", "OCPI-from-country-code", "OCPI-from-party-id")},
    **REQUEST_IDS,
}  # fmt: skip
_AUTHORIZATION = {b"authorization": "Authorization"}


def check_one_authorization(headers: Iterable[tuple[bytes, bytes]]) -> None:
    """An Authorization that comes more than once with different values is refused with HTTP 401, on the relay and the
    hub's own OCPI endpoints alike: two tokens name no one caller ("the credentials token doesn't match any known
    party", transport_and_format.asciidoc). Its values are never quoted: a token's first characters are part of it (the
    refusal is in the routing log too, which auditors read)."""
    if (twice := _differing(headers, _AUTHORIZATION)) is not None:
        raise Unauthorized(f"Authorization came {len(twice[1])} times with different values: the hub cannot tell "
                           "which one is meant")  # fmt: skip


def check_repeated(headers: Iterable[tuple[bytes, bytes]], names: dict[bytes, str] = SINGLE_VALUED) -> None:
    """A header of names that comes more than once with different values is refused, not taken by position (RFC 9110,
    section 5.3: only a list-valued field may come in several lines), after the caller's token, on the relay and the
    hub's own OCPI endpoints alike. The relay checks first that some name comes twice: its dict of the headers is
    shorter than the list."""
    if (twice := _differing(headers, names)) is not None:
        name, given = twice
        shown = ", ".join(repr(as_sent(value)) for value in given[:3])
        raise InvalidParameters(f"{names[name]} came {len(given)} times with different values ({shown}): the hub "
                                "cannot tell which one is meant")  # fmt: skip


def _differing(headers: Iterable[tuple[bytes, bytes]], names: dict[bytes, str]) -> tuple[bytes, list[bytes]] | None:
    """The first of names that came with different values, and its values in the order they came; None: none did."""
    values: dict[bytes, list[bytes]] = {}
    for name, value in headers:
        if name in names:
            values.setdefault(name, []).append(value)
    return next(((name, given) for name, given in values.items() if len(set(given)) > 1), None)


def log_request(method: str, path: str, status: int | None, started: float, routine: bool = False) -> None:
    # Probes and scrapes every few seconds, and routine relays (whose routing-log rows say more), would drown the
    # requests that matter: debug level.
    routine = routine or path in PROBE_PATHS
    if routine and not debug_enabled():
        return
    (log.debug if routine else log.info)(
        "http_request", method=method, path=path, status=status,
        duration_ms=round((time.perf_counter() - started) * 1000, 2),
    )  # fmt: skip


class RequestContext:
    def __init__(self, app: ASGIApp, hub_instance: str | None = None) -> None:
        self.app = app
        self.own = [(HUB_INSTANCE_HEADER.encode(), hub_instance.encode())] if hub_instance else []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id, correlation_id = request_ids(
            {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]
             if name in (b"x-request-id", b"x-correlation-id")}
        )  # fmt: skip
        scope.setdefault("state", {}).update(request_id=request_id, correlation_id=correlation_id)
        extra = [
            (b"x-request-id", request_id.encode("latin-1")),
            (b"x-correlation-id", correlation_id.encode("latin-1")),
            *(self.own if scope["path"].startswith("/ocpi/") else ()),  # what the control plane calls, nothing else
        ]
        outcome: dict[str, Any] = {"status": None}
        started = time.perf_counter()

        async def send_with_ids(message: Message) -> None:
            if message["type"] == "http.response.start":
                outcome["status"] = message["status"]
                present = {name.lower() for name, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []), *(h for h in extra if h[0] not in present)]
            await send(message)

        with structlog.contextvars.bound_contextvars(request_id=request_id, correlation_id=correlation_id):
            try:
                await self.app(scope, receive, send_with_ids)
            finally:
                log_request(str(scope.get("method")), scope["path"], outcome["status"], started)
