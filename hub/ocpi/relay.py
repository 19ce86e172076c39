"""The one path of every functional-module request: authenticate, decide, forward, rewrite, log, answer.

Raw ASGI, below Litestar's routing: this is the hot path. Every request that reaches it leaves exactly one
routing-log row, rejected ones included, and in strict mode the row is committed before the caller is answered.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

import msgspec
import structlog
import yarl
from litestar.datastructures import State
from litestar.types import HTTPScope, Receive, Send

from hub.auth import authorization, identify, why_unknown
from hub.envelope import ocpi_timestamp
from hub.errors import (
    OUTAGES,
    ForwardingLoop,
    ForwardTimeout,
    InvalidParameters,
    OcpiError,
    ReceiverNotCalled,
    ReceiverNotConnected,
    ReceiverNotResolved,
    ReceiverRefusedHub,
    ShareInUse,
    Unauthorized,
    check_utf8,
    unavailable,
)
from hub.metrics import count_request
from hub.ocpi import broadcast, hub_answers, relayed_urls
from hub.ocpi.exchange import Exchange, Job
from hub.ocpi.relayed_urls import CDR_LOCATIONS, PAGES, RESULTS
from hub.ocpi.row_parties import name_the_parties, row_of_a_refusal
from hub.ocpi.wire import Envelope
from hub.request_body import BodyDeadlines, read_body, refuse_announced, refuse_encoded
from hub.request_context import (
    HUB_INSTANCE_HEADER,
    MAX_ID_LENGTH,
    check_ids,
    check_repeated,
    hubs_passed,
    log_request,
    new_request_id,
    request_ids,
)
from routing import open_routing
from routing.decide import Delivery, decide
from routing.forward import Answer, forward, ocpi_status_of
from routing.party_addresses import ALLOWANCE
from routing.request import SLASHES, Incoming, PartyKey, endpoint_url, parse
from routing.rewrite import callback_ttl_s, response_url_of, why_not_callable, with_response_url
from routing.shapes import check_patch, check_shape
from storage.directory import PartyRole
from storage.location_document import too_large
from storage.location_writer import not_cached
from storage.log_object_ids import REQUEST, ids_of_entry
from storage.log_row import LogEntry
from storage.log_waiters import LogUnavailable
from storage.routing_state import Relayed, new_key

if TYPE_CHECKING:
    import aiohttp
    import asyncpg

    from hub.settings import Settings
    from routing.fair_share import CallerShares
    from routing.still_alive import StillAlive
    from storage.directory import DirectoryCache
    from storage.location_cache import LocationCache
    from storage.routing_log import RoutingLogWriter
    from storage.routing_state import RoutingState

log = structlog.get_logger()

PREFIX = "/ocpi/2.2.1/"
CLIENT_INFO = "/ocpi/2.2.1/sender/hubclientinfo"
LOGGED_REQUEST_HEADERS = ("content-type", "content-encoding", "ocpi-to-country-code", "ocpi-to-party-id",
                          "ocpi-from-country-code", "ocpi-from-party-id", "x-request-id",
                          "x-correlation-id")  # fmt: skip
_own_envelope = msgspec.json.Decoder(Envelope)
_envelope = msgspec.json.Encoder()


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

    def serve(self, state: State) -> None:
        """Start relaying with the resources the lifespan put in the app's state."""
        self.pool, self.directory, self.routing_log = state.pool, state.directory, state.routing_log
        self.routing, self.locations, self.forward_session = state.routing, state.locations, state.forward_session
        self.forward_shares = state.forward_shares
        self.still_alive, self.last_seen = state.still_alive, state.last_seen

    @staticmethod
    def handles(path: str) -> bool:
        """Whether path is a functional module's: as Litestar would route it, so that one with an empty segment
        ("/ocpi/2.2.1//sender/locations") is refused here, with its row (routing.request.parse)."""
        if "//" in path:
            path = SLASHES.sub("/", path)
        if path.startswith(CLIENT_INFO):  # a configuration module the hub serves itself, not routed
            return False
        return path.startswith(PREFIX) and path.split("/", 4)[3] in (
            "sender",
            "receiver",
            "pages",
            "results",
            "relayed-cdrs",
            "snapshots",
        )

    async def __call__(self, scope: HTTPScope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}  # lower-case
        path = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1").split("?", 1)[0]
        request_id, correlation_id = request_ids(headers)
        # Every request runs in a task (and context) of its own: bound without unbinding, nothing leaks.
        structlog.contextvars.bind_contextvars(request_id=request_id, correlation_id=correlation_id)
        entry = LogEntry(
            received_at=datetime.now(UTC), request_id=request_id[:MAX_ID_LENGTH],
            correlation_id=correlation_id[:MAX_ID_LENGTH],
            module=_module_of(path), method=scope["method"], path=path,
            query=scope["query_string"].decode("latin-1"), routing="rejected",
            request_headers={k: headers[k] for k in LOGGED_REQUEST_HEADERS if k in headers},
        )  # fmt: skip
        exchange = Exchange(scope, headers, entry, started)
        looked_up = False  # whether _route looked the caller up by its token: a refusal before that does it here
        try:
            self._refuse_at_once(exchange)
            entry.request_body = await read_body(self.bodies.guarded(receive), self.settings.max_body_bytes, scope)
            if entry.request_body and "content-encoding" in headers:  # a GET with the header and no body goes on
                refuse_encoded(headers)
            check_utf8(entry.request_body)  # what the hub forwards, caches and logs is JSON text, all of it
            check_ids(request_id, correlation_id)
            if len(headers) < len(cast("list[tuple[bytes, bytes]]", scope["headers"])):  # a name came twice
                check_repeated(scope["headers"])
            looked_up = True
            answer = await self._route(exchange, path)
        except OcpiError as exc:
            answer = self.hub_answer(exchange, exc.http_status, exc.status_code, exc.message)
            entry.error = exc.detail
            if exc.allow:  # RFC 9110, 15.5.6: a 405 names the methods that are allowed
                answer.headers["allow"] = exc.allow
        except OUTAGES as exc:  # PostgreSQL or Redis away (restarting, failing over): no bug, and said as it is
            went = "the receiver did get it" if entry.forwarded_request_id else "nothing was forwarded"
            entry.error = f"{unavailable(exc)}; {went}"
            answer = self.hub_answer(exchange, 200, 4000, entry.error)
            log.error("service_unavailable", error=entry.error, path=path)
        except Exception as exc:  # a bug of the hub: still an OCPI answer, and still a row in the log
            log.exception("relay_failed", path=path)
            answer = self.hub_answer(exchange, 500, 3000, "internal error of the hub; it has been logged")
            entry.error = f"internal error: {exc!r}"
        try:
            if entry.from_country_code is None or exchange.caller is None:  # refused before it was routed
                row_of_a_refusal(entry, exchange.caller, self.directory.current, headers, looked_up=looked_up)
            entry.http_status, entry.response_body = answer.status, answer.body
            # an OCPI answer's JSON type goes without saying; any other (a proxy's HTML error page): the auditor's clue
            entry.response_headers = {
                k: v for k, v in answer.headers.items() if k != "content-type" or not v.startswith("application/json")
            } or None
            entry.ocpi_status_code = entry.ocpi_status_code or ocpi_status_of(answer.body)
            entry.duration_ms = round((time.perf_counter() - started) * 1000, 3)
            try:
                await self.routing_log.record(entry)
            except LogUnavailable as exc:
                answer, code, told = self._late_answer(exchange, answer, str(exc))
                took = time.perf_counter() - started
                late = f"the caller was answered {code} after {took:.1f} s instead: {told}"
                if entry.chained_at is None:  # still queued (the database away): its row says what the caller got
                    entry.ocpi_status_code, entry.error = code, f"{entry.error}; {late}" if entry.error else late
                else:  # in the batch being written, its content fixed by its hash: amended once it is committed
                    self.routing_log.amend(entry, answer.status, code, told)
                    log.error("routing_log_row_not_as_answered", request_id=request_id, error=late)
            while exchange.background:
                self._spawn(exchange.background.pop(0))
        finally:  # the caller's row not written (a bug, or the request's task cancelled): what waited for it never runs
            for job in exchange.background:
                job.abandon()
        answer.headers["x-request-id"], answer.headers["x-correlation-id"] = request_id, correlation_id
        await _send(send, answer)
        count_request(entry.module, entry.method, entry.routing, entry.ocpi_status_code)
        log_request(entry.method, path, answer.status, started, routine=entry.ocpi_status_code == 1000)

    def _late_answer(self, exchange: Exchange, answer: Answer, reason: str) -> tuple[Answer, int, str]:
        """The answer (its OCPI status, its message) of a request whose row was not committed in time: 4000 for an
        exchange that went through; a refusal keeps its own status and reason (a 401 stays 401) and claims no exchange,
        as nothing was forwarded."""
        entry = exchange.entry
        if entry.routing != "rejected":
            told = f"{reason}; the exchange itself went through"
            return self.hub_answer(exchange, 200, 4000, told), 4000, told
        try:  # the hub's own answer (hub_answer): nothing was forwarded
            refusal = _own_envelope.decode(answer.body).status_message or "refused"
        except msgspec.DecodeError:  # not one it wrote; a late row must not make a refusal a 500
            refusal = "refused"
        row = reason.replace("this exchange's row", "its row").replace("this exchange", "its row")
        told = f"{refusal}: the hub refused this request and forwarded nothing; {row}"
        code = entry.ocpi_status_code or 2000
        late = self.hub_answer(exchange, answer.status, code, told)
        if "allow" in answer.headers:
            late.headers["allow"] = answer.headers["allow"]
        return late, code, told

    def _refuse_at_once(self, exchange: Exchange) -> None:
        """What is refused before the body is read: a request this hub sent that came back to it (straight or through
        other hubs), one that passed too many hubs, and one announcing a body larger than the hub takes."""
        headers = exchange.headers
        if HUB_INSTANCE_HEADER in headers:  # another hub's request, or this hub's come back: rare, so parsed only then
            passed = hubs_passed(cast("list[tuple[bytes, bytes]]", exchange.scope["headers"]))
            if self.hub_instance in passed:
                raise ForwardingLoop
            exchange.hubs_passed = ", ".join((*passed, self.hub_instance))
        if "expect" in headers:  # 100-continue: uvicorn sends it on the first receive()
            refuse_announced(headers, self.settings.max_body_bytes)

    async def _route(self, exchange: Exchange, path: str) -> Answer:
        header = exchange.headers.get("authorization")
        caller = identify(self.directory.current, header)
        if caller is None and header:
            await self.directory.catch_up()  # a token C another hub process issued a moment ago
            caller = identify(self.directory.current, header)
        if caller is None:
            raise Unauthorized(why_unknown(self.directory.current, header))
        if caller.token_kind != "C":  # the row names the platform it was given to, as found here
            name_the_parties(exchange.entry, caller.platform, exchange.headers)
            raise Unauthorized("token A is only valid for versions and credentials: register first")
        exchange.caller = caller.platform
        exchange.entry.caller_platform_id = caller.platform.id
        self.last_seen[caller.platform.id] = exchange.entry.received_at
        if any(role.status == "OFFLINE" for role in caller.platform.roles):
            self.still_alive.suspect(caller.platform.id)  # it is talking again: check its own server now
        if path.startswith((PAGES, RESULTS, CDR_LOCATIONS)):
            return await relayed_urls.follow(self, exchange, path)
        if path.startswith(hub_answers.SNAPSHOTS):
            exchange.sender = next(iter(caller.platform.roles), None)
            return await hub_answers.follow(self, exchange, path)
        return await self._relay_module(exchange, path)

    async def _relay_module(self, exchange: Exchange, path: str) -> Answer:
        entry, caller = exchange.entry, exchange.caller
        assert caller is not None
        incoming = parse(entry.method, path, entry.query, exchange.headers, entry.request_body)
        entry.interface = incoming.interface
        if incoming.to is not None:  # as addressed, for the row of a request refused below (an unknown receiver)
            entry.to_country_code, entry.to_party_id = incoming.to
        check_shape(incoming)
        check_patch(incoming)
        settings = self.settings
        hub = (settings.country_code, settings.party_id)
        hint = None
        if incoming.to is None:
            hint = await open_routing.open_hint(incoming, caller, self.routing, self.directory.current.parties,
                                                self.locations.owners_seen_by)  # fmt: skip
        route = decide(incoming, caller, self.directory.current, hub, hint)
        exchange.sender = route.sender
        callback_url = response_url_of(incoming)  # a body it is read from that is no JSON: rejected, as in decide
        if callback_url is not None and (why := why_not_callable(callback_url, caller, settings.public_url)):
            raise InvalidParameters(f"response_url is refused: {why}")
        entry.routing = route.kind
        entry.from_country_code, entry.from_party_id = route.sender.country_code, route.sender.party_id
        if route.kind == "hub":
            return await hub_answers.answer(self, exchange, incoming)
        if route.kind == "broadcast":
            broadcast.check_room(self, caller.id, route)  # before anything of it is noted
            if route.deliveries:  # the URL names the owner (checked in decide): a token's eMSP for open routing
                open_routing.note_seen(incoming, caller, route.deliveries[0], self.routing)
            self._note_location(exchange, incoming)
            return broadcast.push(self, exchange, incoming, route)
        delivery = route.deliveries[0]
        body, query = incoming.body, incoming.query
        forwarded_as = None
        if callback_url is not None:
            entry.object_id, entry.related_ids = ids_of_entry(entry)  # read once: the writer takes them from the entry
            key = new_key()  # kept only once the body with it is sure to go (with_response_url may refuse it)
            body, query = with_response_url(incoming, callback_url, f"{self.settings.public_url}{RESULTS}{key}")
            # its result's row names the request it answers by both its ids, found by either (storage.log_search)
            forwarded_as = new_request_id()
            answers = [f"{REQUEST}{request_id}" for request_id in (entry.request_id, forwarded_as)]
            await self.routing.remember("results", Relayed(
                url=callback_url, module=incoming.module, interface="sender", caller_platform_id=delivery.platform.id,
                target_platform_id=caller.id, caller_party=delivery.to.key, target_party=route.sender.key,
                correlation_id=entry.correlation_id, object_id=entry.object_id,
                related_ids=(*(entry.related_ids or ()), *answers)), callback_ttl_s(incoming), key)  # fmt: skip
        url = endpoint_url(delivery.url, incoming.suffix)
        answer = await self.call_party(exchange, delivery, route.sender, incoming.method, url, query, body,
                                       forwarded_as)  # fmt: skip
        if 200 <= answer.status < 300:
            open_routing.note_seen(incoming, caller, delivery, self.routing)
            self._note_location(exchange, incoming)
        called = f"{url}?{query}" if query else url
        await relayed_urls.rewrite(self, exchange, answer, delivery, called, incoming.module, incoming.interface)
        return answer

    async def call_party(
        self,
        exchange: Exchange,
        delivery: Delivery,
        sender: PartyRole,
        method: str,
        url: str,
        query: str,
        body: bytes,
        forwarded_as: str | None = None,
    ) -> Answer:
        """Forward to the receiver with its token B, a new X-Request-ID (forwarded_as where chosen before) and the same
        X-Correlation-ID."""
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
            HUB_INSTANCE_HEADER: exchange.hubs_passed or self.hub_instance,
        }
        if body:
            headers["Content-Type"] = exchange.headers.get("content-type", "application/json")
        target = yarl.URL(f"{url}?{query}" if query else url, encoded=True)
        timeout = self.settings.forward_timeout_s
        try:
            # a broadcast copy counts in the share of the platform that pushed it (routing.fair_share)
            answer = await forward(self.forward_session, method, target, headers, body, timeout,
                                   self.settings.max_body_bytes, self.forward_shares, caller.id,
                                   f"{to.country_code}-{to.party_id}")  # fmt: skip
        except ReceiverNotCalled:  # its address is not one this process calls: no sign the party is away
            if self._first_in_a_minute(platform.id):
                log.error("party_address_not_allowed", platform=platform.name, url=url[:200], setting=ALLOWANCE)
            raise
        except (ForwardTimeout, ReceiverNotConnected) as exc:
            if isinstance(exc, ReceiverNotResolved) and self._first_in_a_minute(platform.id):
                log.warning("party_not_reached", platform=platform.name, reason=exc.detail[:400], setting=ALLOWANCE)
            self.still_alive.suspect(platform.id)
            raise
        except ShareInUse:  # the caller's own requests held every slot of its share: nothing went to the receiver
            entry.forwarded_request_id = None
            raise
        self.last_seen[platform.id] = datetime.now(UTC)  # a message received from it (still-alive)
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

    def _note_location(self, exchange: Exchange, incoming: Incoming) -> None:
        """A location PUT or PATCH that went through updates the cache (queued: off the caller's path), as the caller's:
        the URL names one of its parties (routing.decide.check_client_owned)."""
        segments, caller = incoming.segments, exchange.caller
        pushed = incoming.module == "locations" and incoming.interface == "receiver"
        if pushed and caller and incoming.method in ("PUT", "PATCH") and len(segments) >= 3:
            if incoming.method == "PUT" and len(segments) == 3 and (refused := too_large(incoming.body)):
                exchange.entry.error = str(refused)  # the caller's row says so: its answer is the receiver's
                not_cached(refused, path=segments)
                return
            self.locations.submit((segments[0], segments[1]), caller.id, incoming.method, segments[2:], incoming.body)

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

    def _first_in_a_minute(self, platform_id: int) -> bool:
        """Whether a line about a party's address goes to the log now: one a minute for each party at most."""
        if time.monotonic() - self.address_refusals_told.get(platform_id, -60.0) < 60:
            return False
        self.address_refusals_told[platform_id] = time.monotonic()
        return True

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


def _module_of(path: str) -> str:
    """The module a path names, for the log row of a request rejected before it was parsed."""
    parts = (SLASHES.sub("/", path) if "//" in path else path).split("/")  # as Relay.handles read it
    if len(parts) > 4 and parts[3] in ("sender", "receiver"):
        return parts[4]
    return parts[3] if len(parts) > 3 else ""


async def _send(send: Send, answer: Answer) -> None:
    headers = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in answer.headers.items()]
    headers.append((b"content-length", b"%d" % len(answer.body)))  # one write of the body, not chunked
    start: Any = {"type": "http.response.start", "status": answer.status, "headers": headers}
    await send(start)
    await send({"type": "http.response.body", "body": answer.body, "more_body": False})
