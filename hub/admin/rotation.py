"""The operator has the hub renew a registered platform's tokens both ways (credentials.asciidoc, Updating)."""

from __future__ import annotations

from typing import Any

import asyncpg
import msgspec
import structlog
from litestar import Request, Response, post
from litestar.datastructures import State

from hub import party_api
from hub.admin.actors import Actor, actor_of, record_action
from hub.admin.api import AdminError, check_platform_id, json_response, takes_no_body, takes_no_parameters
from hub.admin.credentials import PartyFailed, TakenButFailed, audited_via, message_party
from hub.admin.endpoints import retry_in_s
from hub.envelope import path_number
from hub.errors import OcpiError
from hub.ocpi.credentials import connection_of, hub_credentials, issued_by_the_hub, match_roles
from hub.ocpi.wire import Credentials
from hub.own_messages import Trace
from hub.party_client import Fetched
from storage import platforms
from storage.secrets import new_token, token_hash
from storage.sql import QUERIES

log = structlog.get_logger()


class Rotated(msgspec.Struct):
    platform_id: int
    name: str
    rotated: bool
    version: str
    endpoints: int  # the party's endpoints, fetched again with its new token B
    token_encoding: str
    # whether the party answered another token B than the one the hub held: a party that keeps its token leaves a
    # leaked one working, which the rotation (after a leak of the hub's database) was to end
    token_b_renewed: bool


@post("/parties/{platform_id:str}/credentials", status_code=200)
async def rotate_credentials(request: Request, platform_id: str) -> Response[bytes]:
    """The operator has the hub renew a registered platform's tokens both ways."""
    takes_no_parameters(request)
    await takes_no_body(request)
    return json_response(await rotate(request.app.state, actor_of(request), path_number(platform_id, "platform_id")))


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
    the party said (409 if the platform changed meanwhile).

    One rotation of a platform at a time, across hub processes (409 to another meanwhile): the party would take
    two PUTs one after the other, and the hub would be left holding the tokens of the one the party replaced, locked
    out both ways (an operator's double click did it)."""
    check_platform_id(platform_id)
    async with state.pool.acquire() as turn:
        if not await turn.fetchval(QUERIES["take_rotation_turn"], platform_id):
            raise AdminError(409, f"the credentials of platform {platform_id} are being rotated already, by another "
                                  "request; see its outcome in the audit trail before rotating again")  # fmt: skip
        try:
            return await _rotate(state, actor, platform_id, via)
        finally:  # given back with the rotation, not whenever the pool next resets this connection
            await turn.execute(QUERIES["end_rotation_turn"], platform_id)


async def _rotate(state: State, actor: Actor, platform_id: int, via: str | None) -> Rotated:
    token_c = new_token()
    async with state.pool.acquire() as conn, conn.transaction():
        name, old_token_b = await _registered(conn, platform_id)
        await conn.execute(QUERIES["insert_token"], token_hash(token_c), platform_id, "C")
    await state.directory.changed()  # every hub process takes the new token C before the party can use it
    audited = {"platform_id": platform_id, "name": name} | audited_via(via)
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
            await record_action(conn, state.settings.audit_trail_key, actor, "rotate_credentials", audited)
    except (PartyFailed, platforms.StaleExchange) as exc:
        await _withdraw(state, actor, audited, token_c, str(exc))
        raise _rotation_error(platform_id, exc) from None
    finally:
        await state.directory.changed()
    box = state.token_box  # sealed with a random IV each time: compared opened
    renewed = old_token_b is None or box.open(connection.token_b_sealed) != box.open(old_token_b)
    log.info("platform_credentials_rotated_by_operator", platform_id=platform_id, platform=name,
             endpoints=len(connection.endpoints), token_encoding=connection.token_encoding)  # fmt: skip
    if not renewed:
        log.warning("party_kept_its_token_b", platform_id=platform_id, platform=name,
                    error="the party answered the token B the hub held: that token still works")  # fmt: skip
    return Rotated(platform_id, name, True, connection.version, len(connection.endpoints), connection.token_encoding,
                   renewed)  # fmt: skip


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


async def _registered(conn: asyncpg.Connection, platform_id: int) -> tuple[str, bytes | None]:
    """The name of the platform and its token B (sealed) as the database holds them, the platform locked until the
    transaction ends; AdminError unless it is registered."""
    row = await conn.fetchrow(QUERIES["lock_platform"], platform_id)
    if row is None or row["state"] == "UNREGISTERED":
        raise AdminError(404, f"no platform {platform_id} is on the hub (never invited, or unregistered already)")
    if row["state"] != "REGISTERED":
        raise AdminError(
            409, f"platform {platform_id} has not registered yet: it holds only a token A, no token to rotate"
        )
    return row["name"], row["token_b"]


async def _exchange(state: State, platform_id: int, token_c: str) -> platforms.Connection:
    """PUT the hub's credentials holding token C with the party's current token B, then fetch the party's endpoints
    with the new token B it answered (as the hub does for a party's PUT: that proves the token works)."""
    platform = state.directory.current.platforms.get(platform_id)
    if platform is None or not platform.token_b:
        raise platforms.StaleExchange(f"platform {platform_id} is no longer registered")
    settings = state.settings
    # the PUT and the fetch with the new token B are one conversation: an auditor finds the rotation's calls together
    trace = Trace.to_platform((settings.country_code, settings.party_id), platform, state.routing_log.record)
    ours = msgspec.json.encode(hub_credentials(settings, token_c))
    theirs = await message_party(state, platform, "PUT", _their_credentials, ours, trace.correlation_id)
    moved_to = theirs.url if theirs.url != platform.versions_url else None
    if issued_by_the_hub(state.directory.current, theirs.token):  # as at registration (hub/ocpi/credentials.py)
        raise TakenButFailed("the token B it answered is one the hub issued (as it is or Base64-encoded), which the "
                             "hub does not call a party with", None, moved_to)  # fmt: skip
    try:
        async with state.pool.acquire() as conn:
            roles = match_roles(theirs.roles, await platforms.held_roles(conn, platform_id))
    except OcpiError as exc:
        raise TakenButFailed(f"the roles it answered do not match: {exc.message}", theirs.token, moved_to,
                             roles_unmatched=True) from None  # fmt: skip
    try:
        discovery = await party_api.discover(
            state.http, theirs.url, theirs.token, party=platform.name, hub_url=settings.public_url, trace=trace
        )
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
        await record_action(
            conn,
            state.settings.audit_trail_key,
            actor,
            "rotate_credentials",
            audited | {"failed": answered.reason, "kept": kept},
        )
    log.warning("platform_credentials_rotation_unfinished", platform_id=audited["platform_id"],
                platform=audited["name"], reason=str(taken), new_token_b=bool(taken.token_b),
                new_versions_url=taken.versions_url)  # fmt: skip


async def _withdraw(state: State, actor: Actor, audited: dict[str, Any], token_c: str, reason: str) -> None:
    """The rotation failed before the party took it: the new token C goes, the old tokens stay; the attempt is in the
    audit trail."""
    async with state.pool.acquire() as conn, conn.transaction():
        await conn.execute(QUERIES["delete_token"], token_hash(token_c))
        await record_action(
            conn,
            state.settings.audit_trail_key,
            actor,
            "rotate_credentials",
            audited | {"failed": reason, "kept": "the old tokens"},
        )
    log.warning("platform_credentials_rotation_failed", platform_id=audited["platform_id"], platform=audited["name"],
                reason=reason)  # fmt: skip
