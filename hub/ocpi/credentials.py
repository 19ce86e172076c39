"""The hub's credentials endpoint: a party registers (POST), updates (PUT), reads (GET) and unregisters (DELETE)."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
import msgspec
import structlog
from litestar import HttpMethod, Request, Response, delete, get, post, put, route
from litestar.datastructures import State

from hub import party_api
from hub.auth import Caller, base64_decoded
from hub.envelope import decode_body, ocpi_response
from hub.errors import InvalidParameters, MethodNotAllowed, Unauthorized
from hub.ocpi.wire import BusinessDetails, Credentials, CredentialsRole
from hub.own_messages import Trace
from hub.settings import Settings
from storage import platforms
from storage.directory import Directory
from storage.secrets import TokenBox, new_token, token_hash

log = structlog.get_logger()


def hub_credentials(settings: Settings, token: str) -> Credentials:
    # credentials.asciidoc: "A Hub SHALL only report itself as role: Hub."
    role = CredentialsRole("HUB", BusinessDetails(settings.name), settings.party_id, settings.country_code)
    return Credentials(token=token, url=settings.versions_url, roles=[role])


def check_unique_roles(claimed: Sequence[CredentialsRole]) -> None:
    """credentials.asciidoc: "Every role needs a unique combination of: role, party_id and country_code" (CiStrings,
    so in any case); InvalidParameters naming the first one listed twice."""
    seen = set()
    for claim in claimed:
        if (key := (claim.role, claim.country_code.upper(), claim.party_id.upper())) in seen:
            raise InvalidParameters(f"role {claim.role} {claim.country_code}-{claim.party_id} is listed twice")
        seen.add(key)


def match_roles(claimed: Sequence[CredentialsRole], held: Sequence[asyncpg.Record]) -> list[tuple[int, object]]:
    """(party_role id, business details) for each claimed role; every one must be a role this platform holds."""
    check_unique_roles(claimed)
    by_key = {(r["role"], r["country_code"].upper(), r["party_id"].upper()): r["id"] for r in held}
    matched: dict[int, object] = {}
    foreign = []
    for claim in claimed:
        role_id = by_key.get((claim.role, claim.country_code.upper(), claim.party_id.upper()))
        if role_id is None:
            foreign.append(f"{claim.role} {claim.country_code}-{claim.party_id}")
        else:
            matched[role_id] = msgspec.to_builtins(claim.business_details)
    if foreign:
        granted = ", ".join(f"{r['role']} {r['country_code']}-{r['party_id']}" for r in held) or "none"
        raise InvalidParameters(
            f"roles not granted to this platform by the hub operator: {', '.join(foreign)} (granted: {granted})"
        )
    return list(matched.items())


def connection_of(
    box: TokenBox, theirs: Credentials, discovery: party_api.Discovery, roles: Sequence[tuple[int, object]]
) -> platforms.Connection:
    """What an exchange leaves to store: the party's token B sealed, the endpoints its 2.2.1 details list."""
    return platforms.Connection(
        versions_url=theirs.url,
        version=discovery.version,
        version_url=discovery.version_url,
        token_b_sealed=box.seal(theirs.token),
        token_encoding=discovery.token_encoding,
        endpoints=endpoint_rows(discovery),
        roles=roles,
    )


def endpoint_rows(discovery: party_api.Discovery) -> list[tuple[str, str, str]]:
    """(identifier, interface role, url) of each endpoint the party listed; the last one where it listed one twice."""
    return list({(e.identifier, e.role): (e.identifier, e.role, e.url) for e in discovery.endpoints}.values())


# The methods of the credentials endpoint a platform may use with its token A (invited) and C (registered): the Allow
# header of the 405 for the others (RFC 9110, 15.5.6)
INVITED_TAKES, REGISTERED_TAKES = ("GET", "POST"), ("GET", "PUT", "DELETE")
TAKES = tuple(dict.fromkeys(INVITED_TAKES + REGISTERED_TAKES))  # GET, POST, PUT, DELETE: the endpoint's methods


@route("/ocpi/2.2.1/credentials", http_method=HttpMethod.OPTIONS)
async def allowed_methods() -> Response[None]:
    """The methods of the endpoint, as the Allow of Litestar's 405 names them. Litestar's own OPTIONS answer names
    those of the first handler registered for a path only (GET: litestar-org/litestar#4169, fixed in Litestar 3)."""
    return Response(None, status_code=204, headers={"Allow": ", ".join((*TAKES, "OPTIONS"))})


@get("/ocpi/2.2.1/credentials")
async def read_credentials(request: Request[Caller, str, State]) -> Response[bytes]:
    return ocpi_response(hub_credentials(request.app.state.settings, request.user.token))


@post("/ocpi/2.2.1/credentials")
async def register(request: Request[Caller, str, State]) -> Response[bytes]:
    if request.user.token_kind != "A":
        raise MethodNotAllowed(
            "this platform is already registered: PUT updates its credentials, DELETE unregisters", REGISTERED_TAKES
        )
    return await _exchange(request, expected_state="INVITED")


@put("/ocpi/2.2.1/credentials")
async def update_credentials(request: Request[Caller, str, State]) -> Response[bytes]:
    if request.user.token_kind != "C":
        raise MethodNotAllowed("this platform is not registered yet: POST its credentials first", INVITED_TAKES)
    return await _exchange(request, expected_state="REGISTERED")


@delete("/ocpi/2.2.1/credentials", status_code=200)
async def unregister(request: Request[Caller, str, State]) -> Response[bytes]:
    caller = request.user
    if caller.token_kind != "C":
        raise MethodNotAllowed("this platform is not registered, so it cannot unregister", INVITED_TAKES)
    state = request.app.state
    async with state.pool.acquire() as conn:
        await platforms.unregister(conn, caller.platform.id)
    await state.directory.changed()
    await state.locations.forget_platform(caller.platform.roles)
    await state.departures.left(caller.platform.roles)  # its routing entries go in the background
    log.info("platform_unregistered", platform_id=caller.platform.id, platform=caller.platform.name)
    return ocpi_response(None)


HUBS_OWN_TOKEN = (
    "the credentials' token is one the hub issued (as it is or Base64-encoded); send the token the hub "
    "is to use when it calls your platform (token B)"
)


def issued_by_the_hub(directory: Directory, token: str) -> bool:
    """Whether a token a party hands the hub to call it with (its token B) would, sent as the hub sends it, be read by
    the hub as one of its own: the token itself, or a token whose Base64 decoding is one. The hub sends a token B
    Base64-encoded, or raw to a party that refused that (hub/party_api.py), and reads a header both ways
    (hub/auth.py): a party's calls on such a token would come back to the hub as another platform's requests."""
    decoded = base64_decoded(token)
    return any(t is not None and directory.tokens.get(token_hash(t)) is not None for t in (token, decoded))


def _check_not_the_hubs_own(state: State, theirs: Credentials) -> None:
    """credentials.asciidoc, Credentials object: token is what the hub is to call the party's platform with, url the
    platform's versions endpoint. One of the hub's own there (a party's set-up handed back) would have the hub
    register with itself, calling itself on the party's behalf: refused, saying which."""
    if issued_by_the_hub(state.directory.current, theirs.token):
        raise InvalidParameters(HUBS_OWN_TOKEN)
    if theirs.url.startswith(f"{state.settings.public_url}/ocpi/"):
        raise InvalidParameters(f"the credentials' url {theirs.url} is the hub's own; send your platform's versions "
                                "URL")  # fmt: skip


async def _exchange(request: Request[Caller, str, State], *, expected_state: str) -> Response[bytes]:
    """POST and PUT alike: fetch the party's endpoints with its token B, store them, answer with a new token C."""
    caller = request.user
    state = request.app.state
    theirs = await decode_body(request, Credentials)
    _check_not_the_hubs_own(state, theirs)
    async with state.pool.acquire() as conn:
        roles = match_roles(theirs.roles, await platforms.held_roles(conn, caller.platform.id))
    # The hub's calls while it handles the party's POST or PUT are part of that conversation: its X-Correlation-ID.
    trace = Trace.to_platform((state.settings.country_code, state.settings.party_id), caller.platform,
                              state.routing_log.record, request.state.correlation_id)  # fmt: skip
    discovery = await party_api.discover(
        state.http, theirs.url, theirs.token, party=caller.platform.name, hub_url=state.settings.public_url, trace=trace
    )
    token_c = new_token()
    connection = connection_of(state.token_box, theirs, discovery, roles)
    if expected_state == "INVITED":  # a party id that left a moment ago brings the old platform's index entries along
        await state.departures.before_registering(role.key for role in caller.platform.roles)
    try:
        async with state.pool.acquire() as conn:
            await platforms.store_connection(
                conn,
                caller.platform.id,
                connection,
                expected_state=expected_state,
                presented_token=token_hash(caller.token),
                new_token=token_hash(token_c),
            )
    except platforms.StaleExchange:
        raise Unauthorized("this token was used up by a concurrent credentials exchange") from None
    await state.directory.changed()
    state.location_sync_wake.set()  # a new CPO's locations are pulled into the cache at once
    log.info(
        "platform_registered" if expected_state == "INVITED" else "platform_credentials_updated",
        platform_id=caller.platform.id,
        platform=caller.platform.name,
        endpoints=len(connection.endpoints),
        token_encoding=discovery.token_encoding,
    )
    return ocpi_response(hub_credentials(state.settings, token_c))


# allowed_methods first: registered after another handler of the path, it would clash with the OPTIONS handler
# Litestar adds to that one ("Handler already registered for path ... and http method OPTIONS")
HANDLERS = (allowed_methods, read_credentials, register, update_credentials, unregister)
