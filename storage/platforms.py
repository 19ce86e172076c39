"""Writes to the platform registry: invitations, credentials exchanges and unregistrations."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg
import msgspec

from storage.sql import QUERIES

# Serialises role claims, so two invitations cannot hand out the same party id at the same moment.
_INVITATION_LOCK = 0x0C91_1417


@dataclass(frozen=True, slots=True)
class RoleClaim:
    role: str
    country_code: str
    party_id: str


@dataclass(frozen=True, slots=True)
class Connection:
    """What a finished credentials exchange leaves behind."""

    versions_url: str
    version: str
    version_url: str
    token_b_sealed: bytes
    token_encoding: str  # how the party takes token B in the Authorization header: "base64" or "raw"
    endpoints: Sequence[tuple[str, str, str]]  # (identifier, interface role, url)
    roles: Sequence[tuple[int, object]]  # (party_role id, the business details the party sent for it)


class PartyTaken(Exception):
    """One of the requested party ids is held by another platform (or is the hub's own)."""

    def __init__(self, taken: list[str]) -> None:
        super().__init__(f"already held by another platform: {', '.join(taken)}")
        self.taken = taken


async def create_platform(
    conn: asyncpg.Connection,
    name: str,
    roles: Sequence[RoleClaim],
    token_hash: bytes,
    hub_party: tuple[str, str],
    expires_in_s: float | None,
) -> tuple[int, datetime | None]:
    """A new platform holding roles (status PLANNED) and a registration-only token (kind A) expiring expires_in_s
    from now (None: never); the platform's id and when its token A expires."""
    async with conn.transaction():
        platform_id: int = await conn.fetchval(QUERIES["insert_platform"], name)
        await claim_roles(conn, platform_id, roles, hub_party)
        expires_at = await conn.fetchval(QUERIES["insert_invitation_token"], token_hash, platform_id, expires_in_s)
    return platform_id, expires_at


async def claim_roles(
    conn: asyncpg.Connection, platform_id: int, roles: Sequence[RoleClaim], hub_party: tuple[str, str]
) -> list[int]:
    """Reserve roles for a platform (status PLANNED); PartyTaken if any party id is held elsewhere."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _INVITATION_LOCK)
        wanted = {(r.country_code.upper(), r.party_id.upper()) for r in roles}
        taken = [f"{c}-{p} (the hub itself)" for c, p in sorted(wanted) if (c, p) == hub_party]
        # A party id routes to one platform: OCPI-to headers name country code and party id, not the role.
        rows = await conn.fetch(QUERIES["roles_held"], [r.country_code for r in roles], [r.party_id for r in roles])
        taken += sorted({f"{row['role']} {row['country_code']}-{row['party_id']}" for row in rows})
        if taken:
            raise PartyTaken(taken)
        return [
            row["id"]
            for row in await conn.fetch(
                QUERIES["insert_party_roles"],
                platform_id,
                [r.role for r in roles],
                [r.country_code for r in roles],
                [r.party_id for r in roles],
            )
        ]


class StaleExchange(Exception):
    """The platform changed state, or the token used is gone, while the exchange was under way."""


async def store_connection(
    conn: asyncpg.Connection,
    platform_id: int,
    connection: Connection,
    *,
    expected_state: str,
    presented_token: bytes,
    new_token: bytes,
) -> None:
    """Record a credentials exchange (POST or PUT): endpoints replaced, the listed roles connected and the others
    not (_store_roles), the party's token rotated (the one it used kept as spent)."""
    async with conn.transaction():
        await _lock_unchanged(conn, platform_id, expected_state, presented_token)
        await conn.execute(
            QUERIES["store_connection"],
            platform_id,
            connection.versions_url,
            connection.version,
            connection.version_url,
            connection.token_b_sealed,
            connection.token_encoding,
        )
        await _replace_endpoints(conn, platform_id, connection.endpoints)
        await _store_roles(conn, platform_id, connection.roles)
        await _replace_tokens(conn, platform_id, new_token)


@dataclass(frozen=True, slots=True)
class Answered:
    """What a party's answer to a rotation it took held, as far as the hub could read it."""

    token_b_sealed: bytes | None  # its new token B; None: its answer held none the hub could read
    versions_url: str | None  # the versions URL it named; None: as token_b_sealed
    reason: str  # why the hub could not finish the rotation
    retry_in_s: float  # when the hub first tries again to fetch the endpoints with that token B from that URL
    checks_roles: bool = False  # the roles it answered did not match (the console says so while the refresh is due)


async def switch_rotated_tokens(
    conn: asyncpg.Connection, platform_id: int, answered: Answered, new_token: bytes
) -> None:
    """A rotation the party took but the hub could not finish: from now on the party calls with the new token C
    only, and is called with its new token B at the versions URL it named (with neither read from its answer, the
    old ones stay). The endpoints, version and roles stay as they were, and with a new token B their refresh is
    pending. StaleExchange if the platform left REGISTERED or the new token C is gone."""
    async with conn.transaction():
        await _lock_unchanged(conn, platform_id, "REGISTERED", new_token)
        await conn.execute(QUERIES["switch_rotated_tokens"], platform_id, answered.token_b_sealed,
                           answered.versions_url, answered.retry_in_s, answered.reason,
                           answered.checks_roles)  # fmt: skip
        await _replace_tokens(conn, platform_id, new_token)


async def store_refreshed_endpoints(conn: asyncpg.Connection, platform_id: int, connection: Connection) -> bool:
    """The version and endpoints fetched again from the platform's versions URL with its token B (both as stored, and
    named in connection) replace the stored ones, and the roles the party's credentials list (checked) are stored as a
    credentials exchange stores them; its tokens stay. False, and nothing stored, if its versions URL or token B changed
    meanwhile (its own PUT, or another rotation, fetched endpoints of their own)."""
    async with conn.transaction():
        stored = await conn.fetchval(
            QUERIES["store_refreshed_endpoints"], platform_id, connection.versions_url, connection.token_b_sealed,
            connection.version, connection.version_url, connection.token_encoding,
        )  # fmt: skip
        if stored is None:
            return False
        await _replace_endpoints(conn, platform_id, connection.endpoints)
        await _store_roles(conn, platform_id, connection.roles)
    return True


async def _replace_tokens(conn: asyncpg.Connection, platform_id: int, new_token: bytes) -> None:
    """The platform's new token C is left alone; the hashes of the tokens it replaced are kept as spent (migration
    0031): a call with one is told it was spent, and when (hub.auth.why_unknown)."""
    await conn.execute(QUERIES["spend_tokens"], platform_id, new_token)
    await conn.execute(QUERIES["insert_token"], new_token, platform_id, "C")


async def _store_roles(conn: asyncpg.Connection, platform_id: int, roles: Sequence[tuple[int, object]]) -> None:
    """The roles the party listed are connected, with the business details it sent; the connected ones it no longer
    lists are SUSPENDED (never listed ones stay PLANNED)."""
    for role_id, business_details in roles:
        details = msgspec.json.encode(business_details).decode() if business_details else None
        await conn.execute(QUERIES["connect_role"], role_id, details)
    await conn.execute(QUERIES["drop_unlisted_roles"], platform_id, [role_id for role_id, _ in roles])


async def _replace_endpoints(
    conn: asyncpg.Connection, platform_id: int, endpoints: Sequence[tuple[str, str, str]]
) -> None:
    await conn.execute(QUERIES["delete_endpoints"], platform_id)
    await conn.execute(QUERIES["insert_endpoints"], platform_id, [e[0] for e in endpoints], [e[1] for e in endpoints],
                       [e[2] for e in endpoints])  # fmt: skip


async def _lock_unchanged(conn: asyncpg.Connection, platform_id: int, expected_state: str, token: bytes) -> None:
    """Locks the platform until the transaction ends; StaleExchange unless it is in expected_state and the token
    used for the exchange is still one of its own."""
    platform = await conn.fetchrow(QUERIES["lock_platform"], platform_id)
    still_valid = await conn.fetchval(QUERIES["token_of_platform"], token, platform_id)
    if platform is None or platform["state"] != expected_state or not still_valid:
        raise StaleExchange(f"platform {platform_id} is no longer {expected_state}")


async def held_roles(conn: asyncpg.Connection, platform_id: int) -> list[asyncpg.Record]:
    return await conn.fetch(QUERIES["platform_roles"], platform_id)


async def unregister(conn: asyncpg.Connection, platform_id: int) -> None:
    """The platform leaves: its tokens stop working, its party ids become free for a new invitation. Its tokens' hashes
    stay, with no platform to name (the directory loads those of a registered or invited platform only): a call with
    one is told the platform was removed, and when (hub.auth.why_unknown)."""
    async with conn.transaction():
        await conn.execute(QUERIES["unregister_platform"], platform_id)
        await conn.execute(QUERIES["unregister_roles"], platform_id)
