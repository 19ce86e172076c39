"""One ClientInfo push to a party's hubclientinfo Receiver (mod_hub_client_info.asciidoc, Push model), and what came
of it: taken, refused or unanswered (hub.client_info decides what the party is sent next)."""

from __future__ import annotations

import time
from enum import StrEnum

import msgspec
import structlog
from litestar.datastructures import State

from hub.errors import OcpiError
from hub.metrics import CLIENT_INFO_PUSHES
from hub.own_messages import hub_request
from hub.request_context import HUB_INSTANCE_HEADER
from routing.fair_share import HUB_ITSELF
from routing.forward import forward, ocpi_status_of
from routing.request import endpoint_url
from storage.directory import Platform
from storage.log_waiters import LogUnavailable

log = structlog.get_logger()


class ClientInfo(msgspec.Struct):
    party_id: str
    country_code: str
    role: str
    status: str
    last_updated: str


class PushResult(StrEnum):
    """What came of a push (ocpi_hub_client_info_pushes_total{result}). Only a push TAKEN is delivered; the party is
    pushed the role of any other again, as it is then, at a later round."""

    TAKEN = "taken"  # HTTP 2xx and an OCPI status 1xxx, or HTTP 2xx and no body
    # any other answer: an HTTP error (4xx, 5xx), an OCPI error (2xxx, 3xxx) with HTTP 2xx, a body that is no OCPI reply
    REFUSED = "refused"
    UNANSWERED = "unanswered"  # timed out, not connected to, an answer the hub could not read, or not sent at all


async def put(state: State, platform: Platform, info: ClientInfo, body: bytes) -> PushResult:
    """One push, logged as a routing-log row of its own (routing 'hub') and counted by its result."""
    started = time.perf_counter()
    url = endpoint_url(platform.endpoint("hubclientinfo", "RECEIVER") or "", f"/{info.country_code}/{info.party_id}")
    to = next(r for r in platform.roles if r.status == "CONNECTED")
    settings = state.settings
    hub = (settings.country_code, settings.party_id)
    entry, headers = hub_request(hub, platform, to, "PUT", url, "hubclientinfo", interface="receiver", body=body)
    headers[HUB_INSTANCE_HEADER] = settings.hub_instance
    try:
        # the hub's own messages have a share of their own in the connections to the party (routing.fair_share)
        answer = await forward(state.forward_session, "PUT", url, headers, body, settings.forward_timeout_s,
                               settings.max_body_bytes, state.forward_shares, HUB_ITSELF, row=entry)  # fmt: skip
        entry.http_status, entry.response_body = answer.status, answer.body
        entry.ocpi_status_code = status = ocpi_status_of(answer.body)
        # mod_hub_client_info.asciidoc, Push model: "Any changes to ClientInfo [...] are sent to the connected party":
        # one answered with an HTTP or OCPI error, or with a body that is no OCPI envelope, was not taken. A 2xx with no
        # body at all (204) was: the party's server took the PUT, and pushing it again every round would not change
        # its answer (the row keeps the answer as it came).
        ocpi_success = status is not None and 1000 <= status < 2000
        taken = 200 <= answer.status < 300 and (ocpi_success or not answer.body.strip())
        result = PushResult.TAKEN if taken else PushResult.REFUSED
        # a server error (a proxy's 502 or 503 before a server that is down): the still-alive probe judges an answer of
        # the party's versions endpoint the same way (routing.still_alive)
        suspect = answer.status >= 500
    except OcpiError as exc:
        entry.http_status, entry.ocpi_status_code, entry.error = exc.http_status, exc.status_code, exc.detail
        result, suspect = PushResult.UNANSWERED, exc.status_code in (4002, 4003)
    if suspect:
        state.still_alive.suspect(platform.id)
    if result is PushResult.REFUSED:
        log.warning("client_info_push_refused", platform_id=platform.id, platform=platform.name,
                    party=f"{to.country_code}-{to.party_id}", about=f"{info.country_code}-{info.party_id} {info.role}",
                    status=info.status, http_status=entry.http_status, ocpi_status=entry.ocpi_status_code,
                    request_id=entry.request_id)  # fmt: skip
    CLIENT_INFO_PUSHES.labels(result).inc()
    entry.duration_ms = round((time.perf_counter() - started) * 1000, 3)
    try:
        await state.routing_log.record(entry)
    except LogUnavailable:
        log.error("client_info_push_not_logged_in_time", request_id=entry.request_id)
    return result
