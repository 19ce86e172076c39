"""The operator's actions on a registered platform's credentials: taking it off the hub, and renewing its tokens.

Each one tells the party on its credentials endpoint, as a message of the hub's own with a routing-log row."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import asyncpg
import httpx
import msgspec
import structlog
from litestar import Request, Response, delete, post
from litestar.datastructures import State

from hub import party_api
from hub.admin.actors import Actor, actor_of, record_action
from hub.admin.api import AdminError, json_response
from hub.admin.endpoints import retry_in_s
from hub.errors import AnswerTooLarge, OcpiError
from hub.ocpi.credentials import connection_of, hub_credentials, match_roles
from hub.ocpi.wire import Credentials
from hub.party_api import Fetched, hub_request
from routing.forward import ocpi_status_of
from storage import platforms
from storage.directory import Platform
from storage.routing_log import LogUnavailable
from storage.secrets import new_token, token_hash
from storage.sql import QUERIES

log = structlog.get_logger()

T = TypeVar("T")
HIDDEN = "(not logged)"  # in place of a credentials token in the routing log, which auditors read


class Unregistered(msgspec.Struct):
    platform_id: int
    name: str
    was: str  # the platform's state before: INVITED or REGISTERED
    party_told: bool | None  # None: an invitation never used, there was no party to tell
    party_answer: str | None  # what went wrong telling the party, if anything


class Rotated(msgspec.Struct):
    platform_id: int
    name: str
    rotated: bool
    version: str
    endpoints: int  # the party's endpoints, fetched again with its new token B
    token_encoding: str


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


@delete("/parties/{platform_id:int}", status_code=200)
async def unregister_platform(request: Request, platform_id: int) -> Response[bytes]:
    """The operator takes a platform off the hub (an invitation not used yet is withdrawn the same way)."""
    return json_response(await take_off_hub(request.app.state, actor_of(request), platform_id))


async def take_off_hub(state: State, actor: Actor, platform_id: int, via: str | None = None) -> Unregistered:
    """Takes a platform off the hub, for the admin API and the console (via: where the operator acted, for the audit
    trail).

    Its tokens stop working on every hub process, its roles are pushed as SUSPENDED to the other parties, its party
    ids are free for a new invitation, and a registered party is told with a DELETE on its own credentials endpoint
    (credentials.asciidoc, Unregistering: "Both parties must end any automated communication"). The hub's side is
    done first: a party that does not answer cannot keep itself on the hub."""
    known = state.directory.current.platforms.get(platform_id)  # its token B, to tell the party
    async with state.pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(QUERIES["lock_platform"], platform_id)
        if row is None or row["state"] == "UNREGISTERED":
            raise AdminError(404, f"no platform {platform_id} is on the hub (never invited, or unregistered already)")
        await platforms.unregister(conn, platform_id)
        await record_action(conn, actor, "unregister_platform", {"platform_id": platform_id, "name": row["name"]}
                            | _via(via))  # fmt: skip
    await state.directory.changed()
    if known is not None:
        await state.locations.forget_platform(known.roles)
        await state.departures.left(known.roles)  # its routing entries go in the background
    told, answer = None, None
    if row["state"] == "REGISTERED":
        answer = await _tell_party(state, known) if known is not None else "the hub did not know its token B"
        told = answer is None
    log.info("platform_unregistered_by_operator", platform_id=platform_id, platform=row["name"], party_told=told,
             party_answer=answer)  # fmt: skip
    return Unregistered(platform_id, row["name"], row["state"], told, answer)


def _via(via: str | None) -> dict[str, str]:
    return {"via": via} if via else {}


async def _tell_party(state: State, platform: Platform) -> str | None:
    """DELETE on the party's credentials endpoint; None when the party took it, else what went wrong."""
    try:
        await _message_party(state, platform, "DELETE", lambda answer, url: None)
    except PartyFailed as failed:
        return str(failed)
    return None


@post("/parties/{platform_id:int}/credentials", status_code=200)
async def rotate_credentials(request: Request, platform_id: int) -> Response[bytes]:
    """The operator has the hub renew a registered platform's tokens both ways."""
    return json_response(await rotate(request.app.state, actor_of(request), platform_id))


async def rotate(state: State, actor: Actor, platform_id: int, via: str | None = None) -> Rotated:
    """Renews a registered platform's tokens both ways by a PUT of the hub's credentials to the party, for the admin
    API and the console (credentials.asciidoc, Updating the credentials: "When one of the connecting platforms
    suspects that a credentials token is compromised, that platform SHALL initiate a credentials token update as soon
    as possible").

    The new token C works beside the old one while the party handles the PUT (it may call the hub with it before it
    answers). Once the party's new token B has fetched its endpoints again, one transaction stores that token B and
    the endpoints and leaves only the new token C. If the PUT does not go through, the new token C is withdrawn and
    the old tokens stay. If the party took it but a later step fails, the hub keeps the new token C only and the
    party's new token B and versions URL, if it could read them, with the endpoints and roles from before until it
    fetches the endpoints again (hub/admin/endpoints.py). Either way AdminError 502, saying which step failed and what
    the party said (409 if the platform changed meanwhile)."""
    token_c = new_token()
    async with state.pool.acquire() as conn, conn.transaction():
        name = await _registered(conn, platform_id)
        await conn.execute(QUERIES["insert_token"], token_hash(token_c), platform_id, "C")
    await state.directory.changed()  # every hub process takes the new token C before the party can use it
    audited = {"platform_id": platform_id, "name": name} | _via(via)
    try:
        try:
            connection = await _exchange(state, platform_id, token_c)
        except TakenButFailed as taken:
            # credentials.asciidoc, PUT: "If successful, the server must generate a new credentials token for the
            # client and respond with the client's updated credentials": the party took it, it holds the new token C
            await _keep_new_tokens(state, actor, audited, token_c, taken)
            raise _rotation_error(platform_id, taken) from None
        async with state.pool.acquire() as conn, conn.transaction():
            # the new token C must still be there: a PUT of the party's own, or its DELETE, would have dropped it
            new_c = token_hash(token_c)
            await platforms.store_connection(
                conn, platform_id, connection, expected_state="REGISTERED", presented_token=new_c, new_token=new_c
            )
            await record_action(conn, actor, "rotate_credentials", audited)
    except (PartyFailed, platforms.StaleExchange) as exc:
        await _withdraw(state, actor, audited, token_c, str(exc))
        raise _rotation_error(platform_id, exc) from None
    finally:
        await state.directory.changed()
    log.info("platform_credentials_rotated_by_operator", platform_id=platform_id, platform=name,
             endpoints=len(connection.endpoints), token_encoding=connection.token_encoding)  # fmt: skip
    return Rotated(platform_id, name, True, connection.version, len(connection.endpoints), connection.token_encoding)


def _rotation_error(platform_id: int, exc: Exception) -> AdminError:
    if isinstance(exc, platforms.StaleExchange):
        return AdminError(409, f"platform {platform_id} changed during the rotation (it updated its credentials "
                               "itself, or left the hub); the hub abandoned the rotation")  # fmt: skip
    failed = f"rotating the credentials of platform {platform_id} failed"
    if isinstance(exc, TakenButFailed):
        switched = ("the new token C and to the party's new token B" if exc.token_b
                    else "the new token C and keeps calling the party with its old token B")  # fmt: skip
        return AdminError(502, f"{failed}: the party took the PUT; the hub switched to {switched}; but {exc}; "
                               f"{_endpoints_kept(exc)}; check with the party")  # fmt: skip
    return AdminError(502, f"{failed}: {exc}; nothing was rotated, the old tokens still work")


def _endpoints_kept(taken: TakenButFailed) -> str:
    if not taken.token_b:
        return "the endpoints from before are kept"
    url = f"the new versions URL the party named ({taken.versions_url}) and " if taken.versions_url else ""
    roles = " and finds the roles the party lists match" if taken.roles_unmatched else ""
    again = f"until it fetches them again with the new token B{roles} (it tries again on its own)"
    return f"the hub keeps {url}the endpoints from before, {again}"


async def _registered(conn: asyncpg.Connection, platform_id: int) -> str:
    """The name of the platform, locked until the transaction ends; AdminError unless it is registered."""
    row = await conn.fetchrow(QUERIES["lock_platform"], platform_id)
    if row is None or row["state"] == "UNREGISTERED":
        raise AdminError(404, f"no platform {platform_id} is on the hub (never invited, or unregistered already)")
    if row["state"] != "REGISTERED":
        raise AdminError(
            409, f"platform {platform_id} has not registered yet: it holds only a token A, no token to rotate"
        )
    name: str = row["name"]
    return name


async def _exchange(state: State, platform_id: int, token_c: str) -> platforms.Connection:
    """PUT the hub's credentials holding token C with the party's current token B, then fetch the party's endpoints
    with the new token B it answered (as the hub does for a party's PUT: that proves the token works)."""
    platform = state.directory.current.platforms.get(platform_id)
    if platform is None or not platform.token_b:
        raise platforms.StaleExchange(f"platform {platform_id} is no longer registered")
    ours = msgspec.json.encode(hub_credentials(state.settings, token_c))
    theirs = await _message_party(state, platform, "PUT", _their_credentials, ours)
    moved_to = theirs.url if theirs.url != platform.versions_url else None
    try:
        async with state.pool.acquire() as conn:
            roles = match_roles(theirs.roles, await platforms.held_roles(conn, platform_id))
    except OcpiError as exc:
        raise TakenButFailed(f"the roles it answered do not match: {exc.message}", theirs.token, moved_to,
                             roles_unmatched=True) from None  # fmt: skip
    try:
        discovery = await party_api.discover(state.http, theirs.url, theirs.token, party=platform.name)
    except OcpiError as exc:
        raise TakenButFailed(
            f"fetching its endpoints with its new token B failed: {exc.message}", theirs.token, moved_to
        ) from None
    return connection_of(state.token_box, theirs, discovery, roles)


def _their_credentials(answer: Fetched, url: str) -> Credentials:
    return party_api.credentials_in(answer, "PUT", url)


async def _keep_new_tokens(
    state: State, actor: Actor, audited: dict[str, Any], token_c: str, taken: TakenButFailed
) -> None:
    """The party took the PUT, a later step failed: the new token C stays alone, the party's new token B and versions
    URL (if any) replace the old ones, the endpoints and roles stay until the endpoints are fetched again; the outcome
    is in the audit trail. StaleExchange if the platform changed meanwhile."""
    sealed = state.token_box.seal(taken.token_b) if taken.token_b else None
    answered = platforms.Answered(sealed, taken.versions_url, f"the party took the PUT, but {taken}",
                                  retry_in_s(state.settings, failures=1), taken.roles_unmatched)  # fmt: skip
    kept = "the new token C, the party's new token B" if taken.token_b else "the new token C, the party's old token B"
    if taken.versions_url:
        kept += f", the new versions URL it named ({taken.versions_url})"
    until = " until the endpoints are fetched again" if sealed else ""
    if sealed and taken.roles_unmatched:
        until += " and the roles the party lists match"
    kept += ", the endpoints and roles from before" + until
    async with state.pool.acquire() as conn, conn.transaction():
        await platforms.switch_rotated_tokens(conn, audited["platform_id"], answered, token_hash(token_c))
        await record_action(conn, actor, "rotate_credentials", audited | {"failed": answered.reason, "kept": kept})
    log.warning("platform_credentials_rotation_unfinished", platform_id=audited["platform_id"],
                platform=audited["name"], reason=str(taken), new_token_b=bool(taken.token_b),
                new_versions_url=taken.versions_url)  # fmt: skip


async def _withdraw(state: State, actor: Actor, audited: dict[str, Any], token_c: str, reason: str) -> None:
    """The rotation failed before the party took it: the new token C goes, the old tokens stay; the attempt is in the
    audit trail."""
    async with state.pool.acquire() as conn, conn.transaction():
        await conn.execute(QUERIES["delete_token"], token_hash(token_c))
        await record_action(conn, actor, "rotate_credentials", audited | {"failed": reason, "kept": "the old tokens"})
    log.warning("platform_credentials_rotation_failed", platform_id=audited["platform_id"], platform=audited["name"],
                reason=reason)  # fmt: skip


async def _message_party(
    state: State, platform: Platform, method: str, read: Callable[[Fetched, str], T], body: bytes = b""
) -> T:
    """method on the party's credentials endpoint with its token B, as a routing-log row of its own (routing 'hub',
    tokens hidden); what read makes of an answer HTTP 200, OCPI 1000. PartyFailed saying what went wrong otherwise;
    TakenButFailed when the party took the message but read raises an OcpiError on its answer."""
    url = platform.endpoint("credentials", "SENDER") or platform.endpoint("credentials", "RECEIVER")
    if not url:
        raise PartyFailed("its version details list no credentials endpoint")
    settings = state.settings
    to = platform.roles[0] if platform.roles else None
    entry, headers = hub_request((settings.country_code, settings.party_id), platform, to, method, url,
                                 "credentials", body=body)  # fmt: skip
    entry.request_body = _tokens_hidden(body)
    started = time.perf_counter()
    result: tuple[T] | None = None
    taken = False
    try:
        response = await state.http.fetch(method, url, headers, body or None)
        entry.http_status, entry.response_body = response.status_code, _tokens_hidden(response.content)
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


def _tokens_hidden(body: bytes) -> bytes:
    """The body as the routing log keeps it: the token of a credentials object (the hub's in its PUT, the party's in
    its answer) replaced, since auditors read the log and these tokens are the keys to both platforms."""
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


def _what_it_said(body: bytes) -> str:
    """The status_message of the party's answer, or the start of a body that is no OCPI envelope."""
    try:
        said = msgspec.json.decode(body, type=_Said).status_message
    except (msgspec.DecodeError, RecursionError):
        said = body[:200].decode("utf-8", errors="replace").strip()
    return f': "{said}"' if said else ""
