"""The answer to a request whose routing-log row was not committed in time (strict mode: storage.log_waiters), and
what its row says the caller was answered."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import msgspec
import structlog

from hub.ocpi.wire import Envelope

if TYPE_CHECKING:
    from hub.ocpi.exchange import Exchange
    from hub.ocpi.relay import Relay
    from routing.forward import Answer

log = structlog.get_logger()

_own_envelope = msgspec.json.Decoder(Envelope)


def answer_late(relay: Relay, exchange: Exchange, answer: Answer, reason: str) -> Answer:
    """What the caller is answered instead of answer, its row not committed in time for reason; the row says so: a row
    still queued (the database away) is changed before it is written, one in the batch being written, its content fixed
    by its hash, is amended once that batch is committed."""
    entry = exchange.entry
    answer, code, told = _instead(relay, exchange, answer, reason)
    took = time.perf_counter() - exchange.started
    late = f"the caller was answered {code} after {took:.1f} s instead: {told}"
    if entry.chained_at is None:
        entry.ocpi_status_code, entry.error = code, f"{entry.error}; {late}" if entry.error else late
    else:
        relay.routing_log.amend(entry, answer.status, code, told)
        log.error("routing_log_row_not_as_answered", error=late)  # its request_id: bound by the relay
    return answer


def _instead(relay: Relay, exchange: Exchange, answer: Answer, reason: str) -> tuple[Answer, int, str]:
    """The answer (its OCPI status, its message) of a request whose row was not committed in time: 4000 for an
    exchange that went through, or whose routing was cut short (saying how far it went); a refusal keeps its own
    status and reason (a 401 stays 401) and claims no exchange, as nothing was forwarded."""
    entry = exchange.entry
    if exchange.cut_short:  # the hub's own 4000, saying how far it went: still said
        told = f"{entry.error}; {reason}"
        return relay.hub_answer(exchange, 200, 4000, told), 4000, told
    if entry.routing != "rejected":
        told = f"{reason}; the exchange itself went through"
        return relay.hub_answer(exchange, 200, 4000, told), 4000, told
    try:  # the hub's own answer (Relay.hub_answer): nothing was forwarded
        refusal = _own_envelope.decode(answer.body).status_message or "refused"
    except msgspec.DecodeError:  # not one it wrote; a late row must not make a refusal a 500
        refusal = "refused"
    row = reason.replace("this exchange's row", "its row").replace("this exchange", "its row")
    told = f"{refusal}: the hub refused this request and forwarded nothing; {row}"
    code = entry.ocpi_status_code or 2000
    late = relay.hub_answer(exchange, answer.status, code, told)
    if "allow" in answer.headers:
        late.headers["allow"] = answer.headers["allow"]
    return late, code, told


# uvicorn cancels the requests still in flight at a forced quit (a second Ctrl-C), and once its 30 s of graceful
# shutdown are over: such a request is answered at once with this reason, where uvicorn answered a plain-text 500.
STOPPED = ("the hub was stopped before the routing log could commit this exchange (a forced quit, or the end of the "
           "30 s shutdown grace period)")  # fmt: skip
STOPPED_WHILE_ROUTED = ("the hub was stopped while it routed this request (a forced quit, or the end of the 30 s "
                        "shutdown grace period)")  # fmt: skip


def taken_as_the_answer() -> None:
    """A cancel of the request's task (uvicorn's, at a stop) taken as the answer to give at once: the task goes on as
    one not cancelled, so that a deadline it sets from here on (asyncio.timeout) ends as a timeout, not as a cancel."""
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()
