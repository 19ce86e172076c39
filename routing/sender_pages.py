"""One page of a party's Sender list, as the hub asks for it on its own (pull sync, token pull): a routing-log row each.

transport_and_format.asciidoc, Pagination: a page's `Link: <url>; rel="next"` leads to the next one until the last,
`X-Total-Count` counts the whole list. The next page's URL is checked as any URL a party gives (a page's redirect is
not followed): one leading off the party's hosts ends the list as failed, since taken as the last page it would drop
the rest.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import NamedTuple

import httpx
import msgspec

from hub.envelope import whole_number
from hub.errors import AnswerTooLarge
from hub.own_messages import hub_request
from hub.party_client import PartyClient
from routing.forward import OcpiStatusCode
from routing.link_header import next_url as next_url_of
from routing.rewrite import resolved, why_not_callable
from storage.directory import Directory, PartyRole, Platform
from storage.log_row import LogEntry

Record = Callable[[LogEntry], Awaitable[None]]


class _Page(msgspec.Struct):
    status_code: OcpiStatusCode
    data: list[msgspec.Raw] | None = None  # each object as the party sent it


class Page(NamedTuple):
    objects: list[msgspec.Raw] | None  # None: the page could not be read (why says so)
    next_url: str | None
    total: int | None  # X-Total-Count
    why: str  # what the party answered: HTTP and OCPI status, and the error if any


def listing_parties(directory: Directory, module: str, roles: tuple[str, ...]) -> list[tuple[Platform, PartyRole]]:
    """Every connected party of one of roles whose registered platform has a `module` Sender."""
    return [
        (platform, role)
        for platform in directory.platforms.values()
        if platform.state == "REGISTERED" and platform.endpoint(module, "SENDER")
        for role in platform.roles
        if role.role in roles and role.status == "CONNECTED"
    ]


async def sender_page(
    http: PartyClient, record: Record | None, hub: tuple[str, str], platform: Platform, role: PartyRole, url: str,
    module: str, correlation: str,
) -> Page:  # fmt: skip
    """One page of the party's `module` Sender at url, its row written (with record) in the conversation correlation."""
    started = time.perf_counter()
    entry, headers = hub_request(hub, platform, role, "GET", url, module, interface="sender",
                                 correlation_id=correlation, routing_headers=True)  # fmt: skip
    objects, next_url, total = None, None, None
    try:
        response = await http.fetch("GET", url, headers, redirects=False, row=entry)
        entry.http_status, entry.response_body = response.status_code, response.content
        page = msgspec.json.decode(response.content, type=_Page)
        entry.ocpi_status_code = page.status_code
        if response.status_code == 200 and page.status_code == 1000:
            objects = page.data or []
            if found := next_url_of(response.headers.get("link", "")):  # httpx joins several fields with ", "
                next_url = resolved(found, url)
                if why := why_not_callable(next_url, platform, http.hub_url):
                    entry.error = f"its Link to the next page is not followed: {next_url[:200]!r}: {why}"
                    objects, next_url = None, None
            total = whole_number(response.headers.get("x-total-count", ""))
    except (httpx.HTTPError, AnswerTooLarge, msgspec.DecodeError, RecursionError) as exc:
        entry.error = f"{type(exc).__name__}: {exc}"
    entry.duration_ms = round((time.perf_counter() - started) * 1000, 3)
    if record is not None:
        await record(entry)
    said = [f"HTTP {entry.http_status}"] if entry.http_status else []  # 0: no answer
    said += [f"OCPI {entry.ocpi_status_code}"] if entry.ocpi_status_code is not None else []
    return Page(objects, next_url, total, ", ".join([*said, entry.error] if entry.error else said))
