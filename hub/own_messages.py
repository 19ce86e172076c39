"""The routing-log rows and headers of the messages the hub sends on its own: one row per message and recipient,
routing 'hub', from the hub's party to the recipient's, without its Authorization header or any credentials token
(auditors read the log, and those tokens are the keys to both platforms)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import msgspec
import structlog

from hub.auth import authorization
from hub.request_context import new_request_id
from routing.forward import ocpi_status_of
from storage.log_row import LogEntry
from storage.log_waiters import LogUnavailable

if TYPE_CHECKING:
    from storage.directory import PartyRole, Platform

log = structlog.get_logger()

HIDDEN = "(not logged)"  # in place of a credentials token in the routing log


def own_entry(
    hub: tuple[str, str],
    platform_id: int | None,
    to: tuple[str, str] | None,
    method: str,
    url: str,
    module: str,
    *,
    request_id: str,
    correlation_id: str,
    interface: str | None = None,
    body: bytes = b"",
) -> LogEntry:
    """The row of a message of the hub's own to platform platform_id, addressed to its party to (country code, party
    id): the party's URL as its path, the query apart; no headers."""
    where = urlsplit(url)
    return LogEntry(
        received_at=datetime.now(UTC), request_id=request_id, forwarded_request_id=request_id,
        correlation_id=correlation_id, module=module, interface=interface, method=method,
        path=where._replace(query="", fragment="").geturl(), query=where.query, routing="hub",
        from_country_code=hub[0], from_party_id=hub[1], to_country_code=to[0] if to else None,
        to_party_id=to[1] if to else None, receiver_platform_id=platform_id, request_body=body,
    )  # fmt: skip


def hub_request(
    hub: tuple[str, str],
    platform: Platform,
    to: PartyRole | None,
    method: str,
    url: str,
    module: str,
    *,
    interface: str | None = None,
    correlation_id: str | None = None,
    body: bytes = b"",
    routing_headers: bool = False,
) -> tuple[LogEntry, dict[str, str]]:
    """A message the hub sends on its own (a still-alive probe, a pull-sync page, a ClientInfo push): its
    routing-log row, routing 'hub' from the hub to the party, and its headers: the party's token B and a new
    X-Request-ID, which is also the X-Correlation-ID unless the message continues a conversation. OCPI-to/from
    only where the module takes them (transport_and_format.asciidoc: not on versions or hubclientinfo pushes)."""
    request_id = new_request_id()
    correlation_id = correlation_id or request_id
    entry = own_entry(hub, platform.id, (to.country_code, to.party_id) if to else None, method, url, module,
                      request_id=request_id, correlation_id=correlation_id, interface=interface, body=body)  # fmt: skip
    headers = {"Authorization": authorization(platform.token_b or "", platform.token_encoding),
               "X-Request-ID": request_id, "X-Correlation-ID": correlation_id}  # fmt: skip
    if body:
        headers["Content-Type"] = "application/json"
    if routing_headers and to is not None:
        headers |= {"OCPI-from-country-code": hub[0], "OCPI-from-party-id": hub[1],
                    "OCPI-to-country-code": to.country_code, "OCPI-to-party-id": to.party_id}  # fmt: skip
    return entry, headers


def tokens_hidden(body: bytes) -> bytes:
    """The body as the routing log keeps it: the token of a credentials object (the hub's in its PUT, the party's in
    its answer) replaced."""
    try:
        document = msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError):
        return body
    hidden = False
    for credentials in (document, document.get("data") if isinstance(document, dict) else None):
        if isinstance(credentials, dict) and "token" in credentials:
            credentials["token"] = HIDDEN
            hidden = True
    return msgspec.json.encode(document) if hidden else body


@dataclass(slots=True)
class Trace:
    """The rows of a task of the hub's own that makes several calls to one platform over the control plane (an
    endpoints refresh, a party's registration or credentials update, a rotation, `ocpi-hub connect`: their versions,
    version details and credentials calls): a row per call, each with an X-Request-ID of its own, all in one
    conversation (one X-Correlation-ID), so an auditor finds the task's calls together."""

    hub: tuple[str, str]
    platform_id: int | None  # None until the platform is on the hub (`ocpi-hub connect` reads the versions first)
    to: tuple[str, str] | None  # the recipient's party: (country code, party id) of one of the platform's roles
    record: Callable[[LogEntry], Awaitable[None]]
    correlation_id: str = field(default_factory=new_request_id)

    @classmethod
    def to_platform(
        cls, hub: tuple[str, str], platform: Platform, record: Callable[[LogEntry], Awaitable[None]],
        correlation_id: str | None = None,
    ) -> Trace:  # fmt: skip
        """The trace of calls to a platform the directory holds, each addressed to its first party; in the
        conversation correlation_id if given, else a new one."""
        to = (platform.roles[0].country_code, platform.roles[0].party_id) if platform.roles else None
        return cls(hub, platform.id, to, record, correlation_id or new_request_id())

    def start(self, method: str, url: str, module: str, headers: dict[str, str], body: bytes | None = None) -> LogEntry:
        """The row of a call about to go out, any credentials token in its body hidden; its headers gain the call's
        X-Request-ID and the X-Correlation-ID."""
        entry = own_entry(self.hub, self.platform_id, self.to, method, url, module, request_id=new_request_id(),
                          correlation_id=self.correlation_id, body=tokens_hidden(body) if body else b"")  # fmt: skip
        headers |= {"X-Request-ID": entry.request_id, "X-Correlation-ID": self.correlation_id}
        return entry

    @staticmethod
    def answered(entry: LogEntry, http_status: int, body: bytes) -> None:
        """The party's answer in the row, any credentials token in it hidden."""
        entry.http_status, entry.response_body = http_status, tokens_hidden(body)
        entry.ocpi_status_code = ocpi_status_of(body)

    async def finish(self, entry: LogEntry, started: float, error: str | None = None) -> None:
        """The row written, with how long the call took since started (time.perf_counter()) and, if it failed, why. A
        routing log that cannot take it in time is logged, not raised: the call is over, and its outcome stands."""
        entry.duration_ms = round((time.perf_counter() - started) * 1000, 3)
        entry.error = error
        try:
            await self.record(entry)
        except LogUnavailable:
            log.error("own_message_not_logged_in_time", request_id=entry.request_id, method=entry.method,
                      module=entry.module, platform_id=self.platform_id)  # fmt: skip
