"""The role a hub serves with when its tables belong to another (OCPI_HUB_OWNER_DATABASE_URL): granted exactly what
serving needs, so that it appends to the routing log, its amendments and the audit trail and can neither change nor
delete a row of them, nor run DDL (queries.sql, grant_serving_role; migration 0022)."""

from __future__ import annotations

from typing import Any

import asyncpg

from storage.sql import QUERIES


class RoleRefused(Exception):
    """A role that cannot be the serving role, or none by that name: nothing was granted."""


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def grant_serving_role(conn: asyncpg.Connection, role: str) -> dict[str, Any]:
    """Grant role what serving the hub needs and nothing else (what it held before is revoked), run as the owner of
    the hub's tables; what it may do now, table by table."""
    found = await conn.fetchrow(QUERIES["serving_role_candidate"], role)
    if found is None:
        raise RoleRefused(f"there is no role {role!r}: create it first (CREATE ROLE {_quoted(role)} LOGIN PASSWORD "
                          "...)")  # fmt: skip
    if found["superuser"]:
        raise RoleRefused(f"role {role!r} is a superuser: no grant holds it back; serve with a role of its own")
    if found["owner"]:
        raise RoleRefused(f"role {role!r} owns the hub's tables (or is a member of their owner): it could change and "
                          "drop them whatever it is granted; serve with a role of its own")  # fmt: skip
    if found["creates"]:
        raise RoleRefused(f"role {role!r} may create objects in schema {found['schema']!r} (PostgreSQL before 15 "
                          f"grants that to PUBLIC): REVOKE CREATE ON SCHEMA {_quoted(found['schema'])} FROM PUBLIC "
                          "(and from the role), then grant again")  # fmt: skip
    grants = QUERIES["grant_serving_role"].format(schema=_quoted(found["schema"]), role=_quoted(role),
                                                  audit_trail_ids=found["audit_trail_ids"])  # fmt: skip
    async with conn.transaction():
        await conn.execute(grants)
    return await privileges(conn, role)


async def privileges(conn: asyncpg.Connection, role: str) -> dict[str, Any]:
    """What role may do to each table of the hub: its privileges, and the only columns it may update if not all."""
    rows = await conn.fetch(QUERIES["role_privileges"], role)
    return {r["table"]: [*r["privileges"], *([f"UPDATE ({', '.join(r['updates'])})"] if r["updates"] else [])]
            for r in rows}  # fmt: skip
