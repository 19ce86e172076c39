"""The one path of every functional-module request: authenticate, decide, forward, rewrite, log, answer.

Raw ASGI, below Litestar's routing: this is the hot path. Every request that reaches it leaves exactly one
routing-log row, rejected ones included, and in strict mode the row is committed before the caller is answered.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

import msgspec
import structlog
from litestar.datastructures import State
from litestar.types import HTTPScope, Receive, Send

from hub.auth import identify, suspended, why_unknown
from hub.envelope import ocpi_timestamp
from hub.errors import OUTAGES, ForwardingLoop, OcpiError, Unauthorized, check_utf8, unavailable
from hub.metrics import count_request
from hub.ocpi import hub_answers, relayed_urls
from hub.ocpi.exchange import Exchange, Job
from hub.ocpi.functional_module import relay_module
from hub.ocpi.late_answer import STOPPED, STOPPED_WHILE_ROUTED, answer_late, taken_as_the_answer
from hub.ocpi.relayed_urls import CDR_LOCATIONS, PAGES, RESULTS
from hub.ocpi.row_parties import name_the_parties, row_of_a_refusal
from hub.ocpi.wire import Envelope
from hub.request_body import BodyDeadlines, read_body, refuse_announced, refuse_encoded
from hub.request_context import (
    HUB_INSTANCE_HEADER,
    MAX_ID_LENGTH,
    check_ids,
    check_marks,
    check_one_authorization,
    check_repeated,
    hubs_passed,
    log_request,
    request_ids,
)
from routing.forward import Answer, ocpi_status_of
from routing.request import SLASHES, PartyKey
from storage.log_row import LogEntry
from storage.log_waiters import LogUnavailable

if TYPE_CHECKING:
    import aiohttp
    import asyncpg

    from hub.settings import Settings
    from routing.fair_share import CallerShares
    from routing.still_alive import StillAlive
    from storage.directory import DirectoryCache, Platform
    from storage.location_cache import LocationCache
    from storage.routing_log import RoutingLogWriter
    from storage.routing_state import NoRoomToday, RoutingState

log = structlog.get_logger()

PREFIX = "/ocpi/2.2.1/"
CLIENT_INFO = "/ocpi/2.2.1/sender/hubclientinfo"
# The hub's own routes under PREFIX, which Litestar answers: version details, credentials, hubclientinfo (configuration
# modules, between a party and the hub, not routed)
OWN_ROUTES = frozenset((PREFIX.rstrip("/"), f"{PREFIX}credentials", CLIENT_INFO))
LOGGED_REQUEST_HEADERS = ("content-type", "content-encoding", "ocpi-to-country-code", "ocpi-to-party-id",
                          "ocpi-from-country-code", "ocpi-from-party-id", "x-request-id",
                          "x-correlation-id")  # fmt: skip
_envelope = msgspec.json.Encoder()


def _bound_ids() -> tuple[contextvars.ContextVar[Any], contextvars.ContextVar[Any]]:
    """The context variables structlog binds request_id and correlation_id in (merge_contextvars reads them into every
    log line), set by the relay itself: bind_contextvars builds their names, looks them up and collects tokens on
    every call, a dozen times the work."""
    tokens = structlog.contextvars.bind_contextvars(request_id=None, correlation_id=None)
    structlog.contextvars.reset_contextvars(**tokens)
    return tokens["request_id"].var, tokens["correlation_id"].var


_REQUEST_ID, _CORRELATION_ID = _bound_ids()


class Relay:
    # What the lifespan opens, held as plain attributes (`serve`): Litestar's State answers an attribute through
    # __getattr__ after a failed lookup has built an AttributeError: 0.8 us, a dozen times a request.
    pool: asyncpg.Pool
    directory: DirectoryCache
    routing_log: RoutingLogWriter
    routing: RoutingState
    locations: LocationCache
    forward_session: aiohttp.ClientSession
    forward_shares: CallerShares
    still_alive: StillAlive
    last_seen: dict[int, datetime]  # platform id -> last message, written to the database in batches

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.tasks: set[asyncio.Task[None]] = set()
        self.broadcast_copies: dict[int, int] = {}  # platform id -> its copies in delivery (hub.ocpi.broadcast)
        self.bodies = BodyDeadlines(settings.forward_timeout_s)
        self.hub_instance = settings.hub_instance  # hub.request_context.HUB_INSTANCE_HEADER
        self.address_refusals_told: dict[int, float] = {}  # platform id -> when a line on its address was logged
        # platform id -> the refusal of hub URLs for its requests this process made last (hub.ocpi.relayed_urls)
        self.urls_spent: dict[int, NoRoomToday] = {}

    def serve(self, state: State) -> None:
        """Start relaying with the resources the lifespan put in the app's state."""
        self.pool, self.directory, self.routing_log = state.pool, state.directory, state.routing_log
        self.routing, self.locations, self.forward_session = state.routing, state.locations, state.forward_session
        self.forward_shares = state.forward_shares
        self.still_alive, self.last_seen = state.still_alive, state.last_seen

    @staticmethod
    def handles(path: str) -> bool:
        """Whether the relay answers path: every one under /ocpi/2.2.1/ but the routes the hub serves itself, as
        Litestar routes them (slashes doubled or trailing), so that an unknown module's, one with an empty segment
        ("/ocpi/2.2.1//sender/locations") or one that is no URL of the hub at all is refused here, after its token,
        with its row (routing.request.parse)."""
        if "//" in path:
            path = SLASHES.sub("/", path)
        return path.startswith(PREFIX) and path.rstrip("/") not in OWN_ROUTES

    async def __call__(self, scope: HTTPScope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}  # lower-case
        path = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1").split("?", 1)[0]
        request_id, correlation_id = request_ids(headers)
        # Every request runs in a task (and context) of its own: bound without unbinding, nothing leaks.
        _REQUEST_ID.set(request_id)
        _CORRELATION_ID.set(correlation_id)
        entry = LogEntry(
            received_at=datetime.now(UTC), request_id=request_id[:MAX_ID_LENGTH],
            correlation_id=correlation_id[:MAX_ID_LENGTH],
            module=_module_of(path), method=scope["method"], path=path,
            query=scope["query_string"].decode("latin-1"), routing="rejected",
            request_headers={k: headers[k] for k in LOGGED_REQUEST_HEADERS if k in headers},
        )  # fmt: skip
        exchange = Exchange(scope, headers, entry, started)
        looked_up = False  # whether _authenticate looked the caller up by its token: a refusal before that does it here
        try:
            self._refuse_at_once(exchange)
            repeated = len(headers) < len(cast("list[tuple[bytes, bytes]]", scope["headers"]))  # a name came twice
            looked_up = True  # from here on: two tokens, as no token or an unknown one, name nobody in the row
            if repeated:
                check_one_authorization(scope["headers"])
            # the caller first: a request no token of the hub's authenticates is answered 401 whatever else is wrong
            # with it (transport_and_format.asciidoc), its ids and body included; its row keeps the ids cut to
            # MAX_ID_LENGTH. Its body is not read: anyone could have the hub hold OCPI_HUB_MAX_BODY_BYTES a request
            # otherwise (uvicorn buffers 64 KiB of it, and drops the rest as it comes once the answer is sent).
            caller = await self._authenticate(exchange)
            await self._read_body(exchange, receive)
            if exchange.hubs_passed:  # the marks of the hubs it passed, read before its token for a loop
                check_marks(exchange.hubs_passed)
            check_ids(request_id, correlation_id)
            if repeated:
                check_repeated(scope["headers"])
            answer = await self._route(exchange, caller, path)
        except OcpiError as exc:
            answer = self.hub_answer(exchange, exc.http_status, exc.status_code, exc.message)
            entry.error = exc.detail
            if exc.allow:  # RFC 9110, 15.5.6: a 405 names the methods that are allowed
                answer.headers["allow"] = exc.allow
        except OUTAGES as exc:  # PostgreSQL or Redis away (restarting, failing over): no bug, and said as it is
            answer = self._cut_short(exchange, unavailable(exc), "the receiver did get it")
            log.error("service_unavailable", error=entry.error, path=path)
        except asyncio.CancelledError:  # the hub stopping: uvicorn cancels the requests in flight; answered, and logged
            taken_as_the_answer()
            sent = "it was sent to the receiver, whose answer the hub did not wait for"
            answer = self._cut_short(exchange, STOPPED_WHILE_ROUTED, sent)
        except Exception as exc:  # a bug of the hub: still an OCPI answer (no HTTP error: hub.envelope), and a row
            log.exception("relay_failed", path=path)
            answer = self.hub_answer(exchange, 200, 3000, "internal error of the hub; it has been logged")
            entry.error = f"internal error: {exc!r}"
        try:
            if entry.from_country_code is None or exchange.caller is None:  # refused before it was routed
                row_of_a_refusal(entry, exchange.caller, self.directory.current, headers, looked_up=looked_up)
            entry.http_status, entry.response_body = answer.status, answer.body
            entry.response_headers = _logged_response_headers(answer.headers)
            entry.ocpi_status_code = entry.ocpi_status_code or ocpi_status_of(answer.body)
            entry.duration_ms = round((time.perf_counter() - started) * 1000, 3)
            answer = await self._recorded(exchange, answer)
            while exchange.background:
                self._spawn(exchange.background.pop(0))
        finally:  # the caller's row not written (a bug, or the request's task cancelled): what waited for it never runs
            for job in exchange.background:
                job.abandon()
        answer.headers["x-request-id"] = request_id
        answer.headers["x-correlation-id"] = _answered_correlation_id(entry, correlation_id)
        await _send(send, answer)
        count_request(entry.module, entry.method, entry.routing, entry.ocpi_status_code)
        log_request(entry.method, path, answer.status, started, routine=entry.ocpi_status_code == 1000)

    async def _recorded(self, exchange: Exchange, answer: Answer) -> Answer:
        """The caller's row queued (async mode) or committed (strict mode), and what the caller is then answered: its
        row says so when that is not answer."""
        try:
            await self.routing_log.record(exchange.entry)
        except LogUnavailable as exc:
            return answer_late(self, exchange, answer, str(exc))
        except asyncio.CancelledError:  # the hub stopping: the cancel is this answer, given at once
            taken_as_the_answer()
            return answer_late(self, exchange, answer, STOPPED)
        return answer

    def _cut_short(self, exchange: Exchange, why: str, if_forwarded: str) -> Answer:
        """The answer to a request whose routing was cut short by why (PostgreSQL or Redis away, the hub stopping): OCPI
        4000, and its row saying whether it had been forwarded."""
        entry, exchange.cut_short = exchange.entry, True
        entry.error = f"{why}; {if_forwarded if entry.forwarded_request_id else 'nothing was forwarded'}"
        return self.hub_answer(exchange, 200, 4000, entry.error)

    def _refuse_at_once(self, exchange: Exchange) -> None:
        """What is refused before the body is read, and before the caller's token (a request come back carries a token
        the hub gave no one): a request this hub sent that came back to it (straight or through other hubs), one that
        passed too many hubs, and one announcing a body larger than the hub takes."""
        headers = exchange.headers
        if HUB_INSTANCE_HEADER in headers:  # another hub's request, or this hub's come back: rare, so parsed only then
            passed = hubs_passed(cast("list[tuple[bytes, bytes]]", exchange.scope["headers"]))
            if self.hub_instance in passed:
                raise ForwardingLoop
            exchange.hubs_passed = ", ".join((*passed, self.hub_instance))
        if "expect" in headers:  # 100-continue: uvicorn sends it on the first receive()
            refuse_announced(headers, self.settings.max_body_bytes)

    async def _read_body(self, exchange: Exchange, receive: Receive) -> None:
        """The request's body into its row, then refused unless it is JSON text the hub can forward, cache and log:
        uncompressed, UTF-8, all of it. A refused body stays in the row (its bytes, for the auditor)."""
        body = exchange.entry.request_body = await read_body(self.bodies.guarded(receive),
                                                             self.settings.max_body_bytes, exchange.scope)  # fmt: skip
        if body and "content-encoding" in exchange.headers:  # a GET with the header and no body goes on
            refuse_encoded(exchange.headers)
        check_utf8(body)

    async def _authenticate(self, exchange: Exchange) -> Platform:
        """The calling platform, by its token C (also exchange.caller); any other Authorization is refused, HTTP 401."""
        header = exchange.headers.get("authorization")
        caller = identify(self.directory.current, header)
        if caller is None and header:
            await self.directory.catch_up()  # a token C another hub process issued a moment ago
            caller = identify(self.directory.current, header)
        if caller is None:
            raise Unauthorized(why_unknown(self.directory.current, header))
        if caller.platform.state == "SUSPENDED":
            name_the_parties(exchange.entry, caller.platform, exchange.headers)
            raise Unauthorized(suspended(caller.platform))
        if caller.token_kind != "C":  # the row names the platform it was given to, as found here
            name_the_parties(exchange.entry, caller.platform, exchange.headers)
            raise Unauthorized("token A is only valid for versions and credentials: register first")
        exchange.caller = caller.platform
        exchange.entry.caller_platform_id = caller.platform.id
        self.last_seen[caller.platform.id] = exchange.entry.received_at
        if any(role.status == "OFFLINE" for role in caller.platform.roles):
            self.still_alive.suspect(caller.platform.id)  # it is talking again: check its own server now
        return caller.platform

    async def _route(self, exchange: Exchange, caller: Platform, path: str) -> Answer:
        if path.startswith((PAGES, RESULTS, CDR_LOCATIONS)):
            return await relayed_urls.follow(self, exchange, path)
        if path.startswith(hub_answers.SNAPSHOTS):
            exchange.sender = next(iter(caller.roles), None)
            return await hub_answers.follow(self, exchange, path)
        return await relay_module(self, exchange, path)

    def hub_answer(self, exchange: Exchange, http_status: int, status_code: int, message: str | None) -> Answer:
        """An answer from the hub itself: OCPI-from is the hub, OCPI-to the caller's party when known."""
        settings = self.settings
        body = _envelope.encode(Envelope(status_code=status_code, timestamp=ocpi_timestamp(), status_message=message))
        headers = {"content-type": "application/json", "ocpi-from-country-code": settings.country_code,
                   "ocpi-from-party-id": settings.party_id}  # fmt: skip
        to = exchange.sender.key if exchange.sender else _callers_own(exchange)
        if to:
            headers |= {"ocpi-to-country-code": to[0], "ocpi-to-party-id": to[1]}
        if exchange.entry.routing == "rejected" or status_code != 1000:
            exchange.entry.ocpi_status_code = status_code
        return Answer(http_status, headers, body)

    def _spawn(self, job: Job) -> None:
        task = asyncio.create_task(job.work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        task.add_done_callback(lambda _: job.release())  # also when cancelled before it ran

    async def drain(self) -> None:
        """Finish broadcast deliveries in flight (at shutdown)."""
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)


def _callers_own(exchange: Exchange) -> PartyKey | None:
    """The party the OCPI-from headers name, if it is one of the caller's: an answer refusing a request that claimed
    another platform's party is not addressed to that party."""
    headers, caller = exchange.headers, exchange.caller
    country, party = headers.get("ocpi-from-country-code"), headers.get("ocpi-from-party-id")
    if not (country and party and caller):
        return None
    key = (country.upper(), party.upper())
    return key if any(role.key == key for role in caller.roles) else None


def _answered_correlation_id(entry: LogEntry, sent: str) -> str:
    """The X-Correlation-ID the caller sent, or the hub made up for it; the one of the command a result sent without
    one joined (relayed_urls.follow), which its row and the party it was relayed to have."""
    return entry.correlation_id if entry.correlation_id != sent[:MAX_ID_LENGTH] else sent


def _logged_response_headers(headers: dict[str, str]) -> dict[str, str] | None:
    """An answer's headers as its row keeps them: an OCPI answer's JSON type goes without saying; any other (a proxy's
    HTML error page) is the auditor's clue."""
    kept = headers.copy()
    if kept.get("content-type", "").startswith("application/json"):
        del kept["content-type"]
    return kept or None


def _module_of(path: str) -> str:
    """The module a path names, for the log row of a request rejected before it was parsed; cut as the row's ids are:
    the column is indexed, and a B-tree entry has a size limit (an anonymous caller's 8,000 characters stalled the
    routing log's writer)."""
    parts = (SLASHES.sub("/", path) if "//" in path else path).split("/")  # as Relay.handles read it
    if len(parts) > 4 and parts[3] in ("sender", "receiver"):
        return parts[4][:MAX_ID_LENGTH]
    return parts[3][:MAX_ID_LENGTH] if len(parts) > 3 else ""


async def _send(send: Send, answer: Answer) -> None:
    headers = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in answer.headers.items()]
    headers.append((b"content-length", b"%d" % len(answer.body)))  # one write of the body, not chunked
    start: Any = {"type": "http.response.start", "status": answer.status, "headers": headers}
    await send(start)
    await send({"type": "http.response.body", "body": answer.body, "more_body": False})
