"""The OCPI Authorization header: who is calling an OCPI endpoint, and what the hub sends a party (the admin API's
bearer tokens: hub/admin/actors.py)."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from litestar.connection import ASGIConnection
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult

from hub.errors import Unauthorized
from hub.request_context import REQUEST_IDS, check_ids, check_one_authorization, check_repeated
from storage.directory import Directory, Platform
from storage.secrets import token_hash

# transport_and_format.asciidoc: token A is valid on "credentials" and "versions" only, elsewhere HTTP 401.
REGISTRATION_PATHS = frozenset({"/ocpi/versions", "/ocpi/2.2.1", "/ocpi/2.2.1/credentials"})


@dataclass(frozen=True, slots=True)
class Caller:
    platform: Platform
    token_kind: str  # "A": invitation (registration only), "C": registered
    token: str
    expires_at: datetime | None = None  # a token A's expiry (None: never, or a token C)


KNOWN_HEADERS_MAX = 10_000  # headers remembered per directory: a caller padding its header cannot grow it further


def identify(directory: Directory, header: str | None) -> Caller | None:
    """The caller behind an Authorization header: 'Token <base64(token)>', or the raw token of 2.1.1-era parties."""
    if not header:
        return None
    if (known := directory.known_headers.get(header)) is not None:
        return Caller(*known)
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "token" or not (value := value.strip()):
        return None
    for token in (base64_decoded(value), value):
        if token is not None and (grant := directory.tokens.get(token_hash(token))) is not None:
            if len(directory.known_headers) < KNOWN_HEADERS_MAX:
                directory.known_headers[header] = (grant[0], grant[1], token, grant[2])
            return Caller(grant[0], grant[1], token, grant[2])
    return None


def base64_decoded(value: str) -> str | None:
    """The text value is the Base64 encoding of, or None when it is none."""
    try:
        decoded = base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    return decoded if decoded.isprintable() else None


def authorization(token: str, encoding: str = "base64") -> str:
    """transport_and_format.asciidoc, Authorization header: 'Token ' + base64(UTF-8 token); raw for 2.1.1-era peers."""
    if encoding == "raw":
        return f"Token {token}"
    return "Token " + base64.b64encode(token.encode("utf-8")).decode("ascii")


T = TypeVar("T")
_OTHER_SCHEMES = frozenset({"basic", "bearer", "digest", "apikey", "negotiate"})
MISSING = "missing Authorization header: send 'Authorization: Token <base64 of your token>'"


def why_unknown(directory: Directory, header: str | None) -> str:
    """What was wrong with an Authorization header identify() found no caller behind, never quoting the token. On the
    refusal path only: the lookup of a token sent with a trailing newline costs a decode and a hash."""
    if not header:
        return MISSING
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "token":
        # named only when it is a scheme: a header of a bare token would be echoed otherwise
        named = f"the {scheme} scheme" if value and scheme.lower() in _OTHER_SCHEMES else "no Token scheme"
        return f"the Authorization header uses {named}: send 'Authorization: Token <base64 of your token>'"
    if not (value := value.strip()):
        return "the Authorization header holds no token: send 'Authorization: Token <base64 of your token>'"
    if (removed := _looked_up(directory.removed_tokens, value)) is not None:
        return (
            "unknown credentials token: it belonged to a platform removed from the hub on "
            f"{removed.astimezone(UTC):%Y-%m-%d}; ask the hub operator for a new invitation"
        )
    if (spent := _looked_up(directory.spent_tokens, value)) is not None:
        return _spent(*spent)
    try:
        decoded = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return (
            "unknown credentials token: it is not valid Base64, nor a token of this hub as it is (send "
            "'Authorization: Token <base64 of your token>')"
        )
    stripped = decoded.rstrip(b"\r\n").decode("utf-8", "replace")
    if decoded.endswith(b"\n") and stripped and token_hash(stripped) in directory.tokens:
        return (
            "the token the Authorization header encodes ends with a newline (as `echo TOKEN | base64` makes): "
            "encode the token alone (`printf %s TOKEN | base64`)"
        )
    return "unknown credentials token"


def expired(at: datetime) -> str:
    """Why an invitation's token A is refused once it expired (OCPI_HUB_INVITATION_TTL_S)."""
    return f"the invitation expired on {at.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}: ask the hub operator for a new one"


def suspended(platform: Platform) -> str:
    """Why a suspended platform's requests are refused (migration 0026): since when, and the operator's reason."""
    since = f" since {platform.suspended_at.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}" if platform.suspended_at else ""
    reason = f" ({platform.suspended_reason})" if platform.suspended_reason else ""
    return (
        f"this platform is suspended by the hub operator{since}{reason}: the hub takes and routes nothing of it, and "
        "sends it nothing, until the operator resumes it"
    )


def _looked_up(by_hash: Mapping[bytes, T], value: str) -> T | None:
    """What by_hash holds of the token the header's value encodes (or is, raw): the hashes of tokens the hub issued and
    no longer takes, so only such a token is told more than "unknown"."""
    for token in (base64_decoded(value), value):
        if token is not None and (found := by_hash.get(token_hash(token))) is not None:
            return found
    return None


def _spent(platform: str, kind: str, at: datetime) -> str:
    """Why a token a credentials exchange replaced is refused (credentials.asciidoc), naming no more than its platform
    and the day."""
    if kind == "A":  # credentials.asciidoc: token A serves the registration only, the hub answers it with token C
        return (
            f"this is the token A platform {platform} registered with on {at.astimezone(UTC):%Y-%m-%d}; it is no "
            "longer valid (credentials.asciidoc): send the token the hub returned in its credentials answer (token C)"
        )
    return (
        f"this is a token C of platform {platform} that an update of its credentials replaced on "
        f"{at.astimezone(UTC):%Y-%m-%d}; it is no longer valid (credentials.asciidoc): send the token C of the latest "
        "credentials exchange (the hub's answer to your PUT, or the hub's own PUT)"
    )


class CredentialsTokenAuth(AbstractAuthenticationMiddleware):
    """Authenticates every OCPI request against the in-memory directory (no database round trip); then, as the relay
    does once it knows the caller, refuses an X-Request-ID or X-Correlation-ID the hub cannot log and pass on as it
    came (too long, not printable ASCII: check_ids), or that came twice with different values (the ids RequestContext
    took, echoed and bound to the request: request.state). Every one of the hub's own OCPI routes alike: versions,
    version details, credentials (whose rows hold the ids, and whose POST and PUT pass the correlation id on to the
    party) and hubclientinfo."""

    async def authenticate_request(self, connection: ASGIConnection) -> AuthenticationResult:
        state = connection.app.state
        check_one_authorization(connection.scope["headers"])  # as the relay: two tokens name no one caller
        header = connection.headers.get("authorization")
        if not header:
            raise Unauthorized(MISSING)
        caller = identify(state.directory.current, header)
        if caller is None:
            await state.directory.catch_up()  # a token C another hub process issued a moment ago
            caller = identify(state.directory.current, header)
        if caller is None:
            raise Unauthorized(why_unknown(state.directory.current, header))
        if caller.platform.state == "SUSPENDED":
            raise Unauthorized(suspended(caller.platform))
        if caller.token_kind == "A" and caller.expires_at is not None and caller.expires_at <= datetime.now(UTC):
            raise Unauthorized(expired(caller.expires_at))
        if caller.token_kind == "A" and connection.scope["path"].rstrip("/") not in REGISTRATION_PATHS:
            raise Unauthorized("token A is only valid for versions and credentials: register first")
        state.last_seen[caller.platform.id] = datetime.now(UTC)
        ids = connection.scope["state"]
        check_ids(ids["request_id"], ids["correlation_id"])
        check_repeated(connection.scope["headers"], REQUEST_IDS)
        return AuthenticationResult(user=caller, auth=caller.token_kind)
