"""A routing-log row for each of a party's own credentials requests: its registration, its updates, its reads and its
unregistration (credentials.asciidoc), their tokens hidden.

The hub's calls while it handles one (the party's versions and details, fetched with its new token) share its
X-Correlation-ID, so an auditor finds a registration whole, and when a platform left on its own DELETE. The row is
committed before the answer leaves, as a relayed request's is; a routing log that cannot take it in time is logged,
and the answer, whose work is done, goes all the same.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import structlog
from litestar.types import ASGIApp, HTTPScope, Message, Receive, ReceiveMessage, Send
from litestar.utils.path import normalize_path

from hub.auth import identify
from hub.envelope import whole_number
from hub.errors import Unauthorized
from hub.ocpi.relay import LOGGED_REQUEST_HEADERS
from hub.ocpi.row_parties import name_the_caller
from hub.own_messages import tokens_hidden
from hub.request_context import MAX_ID_LENGTH, check_one_authorization, request_ids
from routing.forward import ocpi_status_of
from storage.log_row import LogEntry
from storage.log_waiters import LogUnavailable

if TYPE_CHECKING:
    from litestar.datastructures import State

log = structlog.get_logger()

PATH = "/ocpi/2.2.1/credentials"


def is_credentials(path: str) -> bool:
    """Whether Litestar routes path to the credentials handlers: it takes "//ocpi/2.2.1//credentials/" for the
    credentials path too (slashes doubled or trailing), and each path that reaches them has its rows."""
    return "credentials" in path and normalize_path(path) == PATH


async def logged(inner: ASGIApp, state: State, scope: HTTPScope, receive: Receive, send: Send) -> None:
    """inner (Litestar) answers the request; its answer is held until the row is recorded."""
    started, received_at = time.perf_counter(), datetime.now(UTC)
    headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
    try:  # before Litestar: a DELETE ends its token
        check_one_authorization(scope["headers"])
        caller = identify(state.directory.current, headers.get("authorization"))
    except Unauthorized:  # two tokens name nobody, as in the relay's rows (Litestar refuses the request too)
        caller = None
    sent: list[bytes] = []
    answer: list[Message] = []

    async def receive_kept() -> ReceiveMessage:
        message = await receive()
        if message["type"] == "http.request":
            sent.append(message.get("body", b""))
        return message

    async def hold(message: Message) -> None:
        answer.append(message)

    await inner(scope, receive_kept, hold)
    start = next((m for m in answer if m["type"] == "http.response.start"), None)
    if start is not None:
        answered = {name.decode("latin-1"): value.decode("latin-1") for name, value in start["headers"]}
        body = b"".join(m.get("body", b"") for m in answer if m["type"] == "http.response.body")
        request_id, correlation_id = request_ids(answered)  # as the answer echoes them
        entry = LogEntry(
            received_at=received_at, request_id=request_id[:MAX_ID_LENGTH],
            correlation_id=correlation_id[:MAX_ID_LENGTH], module="credentials", method=scope["method"],
            path=scope["path"], routing="hub", http_status=start["status"], ocpi_status_code=ocpi_status_of(body),
            to_country_code=state.settings.country_code, to_party_id=state.settings.party_id,
            request_headers={k: headers[k] for k in LOGGED_REQUEST_HEADERS if k in headers},
            request_body=tokens_hidden(b"".join(sent)), response_body=tokens_hidden(body),
        )  # fmt: skip
        if caller is not None:
            entry.caller_platform_id = caller.platform.id
            name_the_caller(entry, caller.platform, headers)
        elif identify(state.directory.current, headers.get("authorization")) is None:  # nor one issued meanwhile
            # refused before Litestar read the body: its row keeps the size it announced, as the relay's does
            entry.keep_anonymous_request_short(whole_number(headers.get("content-length", "")))
        entry.duration_ms = round((time.perf_counter() - started) * 1000, 3)
        try:
            await state.routing_log.record(entry)
        except LogUnavailable:
            log.error("credentials_request_not_logged_in_time", request_id=entry.request_id, method=entry.method)
    for message in answer:
        await send(message)
