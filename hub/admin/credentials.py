"""The hub's own messages to a registered party's credentials endpoint, sent for the operator's actions on it.

Unregistering (hub/admin/unregistering.py) and token rotation (hub/admin/rotation.py) each tell the party on its
credentials endpoint, as a message of the hub's own with a routing-log row."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import httpx
import msgspec
import structlog
from litestar.datastructures import State

from hub.errors import AnswerTooLarge, OcpiError
from hub.own_messages import hub_request, tokens_hidden
from hub.party_client import Fetched
from routing.forward import ocpi_status_of
from storage.directory import Platform
from storage.log_waiters import LogUnavailable

log = structlog.get_logger()

T = TypeVar("T")


class PartyFailed(Exception):
    """A message to the party's credentials endpoint did not go through; the message says what went wrong."""


class TakenButFailed(PartyFailed):
    """The party took the hub's PUT (HTTP 200, OCPI 1000), but a later step failed; the message says which. The party
    now calls with the new token C and expects its new token B (credentials.asciidoc, Updating), so the hub keeps
    them: token_b is the party's new token B, or None when its answer held none the hub could read; versions_url the
    versions URL its answer named when that is not the one the hub had (the party says its versions are there now);
    roles_unmatched when the roles it answered are not the platform's, so the refresh that finishes the rotation must
    find the roles the party lists matching before it does (hub/admin/endpoints.py)."""

    def __init__(
        self,
        message: str,
        token_b: str | None = None,
        versions_url: str | None = None,
        *,
        roles_unmatched: bool = False,
    ) -> None:
        super().__init__(message)
        self.token_b, self.versions_url, self.roles_unmatched = token_b, versions_url, roles_unmatched


class _Said(msgspec.Struct):
    status_message: str | None = None


def audited_via(via: str | None) -> dict[str, str]:
    return {"via": via} if via else {}


async def message_party(
    state: State,
    platform: Platform,
    method: str,
    read: Callable[[Fetched, str], T],
    body: bytes = b"",
    correlation_id: str | None = None,
) -> T:
    """method on the party's credentials endpoint with its token B, as a routing-log row of its own (routing 'hub',
    tokens hidden), in the conversation correlation_id if given; what read makes of an answer HTTP 200, OCPI 1000.
    PartyFailed saying what went wrong otherwise; TakenButFailed when the party took the message but read raises an
    OcpiError on its answer."""
    url = platform.endpoint("credentials", "SENDER") or platform.endpoint("credentials", "RECEIVER")
    if not url:
        raise PartyFailed("its version details list no credentials endpoint")
    settings = state.settings
    to = platform.roles[0] if platform.roles else None
    entry, headers = hub_request((settings.country_code, settings.party_id), platform, to, method, url,
                                 "credentials", correlation_id=correlation_id, body=body)  # fmt: skip
    entry.request_body = tokens_hidden(body)
    started = time.perf_counter()
    result: tuple[T] | None = None
    taken = False
    try:
        response = await state.http.fetch(method, url, headers, body or None, row=entry)
        entry.http_status, entry.response_body = response.status_code, tokens_hidden(response.content)
        entry.ocpi_status_code = ocpi_status_of(response.content)
        if response.status_code != 200 or entry.ocpi_status_code != 1000:
            entry.error = (f"{method} {url} answered HTTP {response.status_code}, OCPI status "
                           f"{entry.ocpi_status_code}{_what_it_said(entry.response_body)}")  # fmt: skip
        else:
            result = (read(response, url),)
    except (httpx.HTTPError, httpx.InvalidURL, AnswerTooLarge) as exc:
        entry.error = f"{method} {url} failed: {type(exc).__name__}: {exc}"
    except OcpiError as exc:
        entry.error, taken = exc.message, True
    entry.duration_ms = round((time.perf_counter() - started) * 1000, 3)
    try:
        await state.routing_log.record(entry)
    except LogUnavailable:
        log.error("credentials_message_not_logged_in_time", request_id=entry.request_id, method=method)
    if taken:
        raise TakenButFailed(f"its answer held no credentials the hub can read: {entry.error}")
    if result is None:
        raise PartyFailed(entry.error or f"{method} {url} failed")
    return result[0]


def _what_it_said(body: bytes) -> str:
    """The status_message of the party's answer, or the start of a body that is no OCPI envelope."""
    try:
        said = msgspec.json.decode(body, type=_Said).status_message
    except (msgspec.DecodeError, RecursionError):
        said = body[:200].decode("utf-8", errors="replace").strip()
    return f': "{said}"' if said else ""
