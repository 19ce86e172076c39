"""Who is calling the admin API: the admin token or an auditor token, resolved to an Actor; auditor tokens."""

from __future__ import annotations

import contextlib
import hmac
from dataclasses import dataclass
from typing import Any

import asyncpg
import msgspec
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.exceptions import PermissionDeniedException
from litestar.handlers import BaseRouteHandler
from litestar.types import Scope

from hub.errors import OUTAGES, Unauthorized
from storage.audit_trail import append
from storage.log_row import stored_text
from storage.secrets import new_token, token_hash
from storage.sql import QUERIES

ADMIN = "admin"
AUDITOR = "auditor"
HUB = "hub"  # the hub itself, acting on its own (the audit trail's actor of an endpoints refresh nobody asked for)
# Route handlers an auditor may call carry opt={READ_ONLY: True}; every other admin route needs the admin token.
READ_ONLY = "auditor_may_read"
AUDITOR_MAY_HOLD = "auditor_may_hold"  # setting a legal hold (hub/admin/holds.py): it only keeps rows longer


@dataclass(frozen=True, slots=True)
class Actor:
    name: str
    kind: str  # ADMIN or AUDITOR


class AuditorExists(Exception):
    """An auditor of that name exists already."""


def bearer_token(header: str | None) -> str | None:
    """The token of an 'Authorization: Bearer <token>' header, or None."""
    scheme, _sep, value = (header or "").strip().partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None


async def resolve_actor(pool: asyncpg.Pool, admin_token: str, token: str | None) -> Actor | None:
    """The admin or the auditor holding this bearer token, or None. Auditor tokens are looked up at each call, so a
    removed auditor is refused at once on every hub process."""
    if not token:
        return None
    if hmac.compare_digest(token.encode(), admin_token.encode()):
        return Actor(ADMIN, ADMIN)
    async with pool.acquire() as conn:
        name = await conn.fetchval(QUERIES["auditor_by_token"], token_hash(token))
    return Actor(name, AUDITOR) if name is not None else None


_SEND = "send 'Authorization: Bearer <admin token or auditor token>'"


def unauthorized(header: str | None) -> str:
    """Why a call is refused 401, in the caller's terms: a wrong token was answered as if none had been sent."""
    scheme, _sep, value = (header or "").strip().partition(" ")
    if not value.strip():
        return f"admin API: {_SEND}"
    if scheme.lower() != "bearer":
        return f"admin API: the Authorization header is not of the Bearer scheme: {_SEND}"
    return (
        "admin API: the bearer token is neither the admin token (OCPI_HUB_ADMIN_TOKEN, or the data dir's admin-token"
        " file) nor an auditor's"
    )


async def identify_admin_caller(state: State, scope: Scope) -> None:
    """/admin/api: who calls, found before Litestar picks a route, and kept in the scope (None: the token is no one's).
    Litestar answers a wrong URL or method (404, 405) before any guard; render_admin_error answers those 401 to a caller
    without a token, who should learn only that it needs one, not what the API has. Left out of the scope when the
    database cannot tell now: actor_guard asks again, and its error says why."""
    header = next((value for name, value in scope["headers"] if name == b"authorization"), b"")
    with contextlib.suppress(*OUTAGES):
        actor = await resolve_actor(state.pool, state.settings.admin_token, bearer_token(header.decode("latin-1")))
        scope.setdefault("state", {})["actor"] = actor


async def actor_guard(connection: ASGIConnection, handler: BaseRouteHandler) -> None:
    """Guard of /admin/api: 'Authorization: Bearer <admin or auditor token>'; auditors may only read."""
    state = connection.app.state
    known = connection.scope["state"]
    actor = known["actor"] if "actor" in known else await resolve_actor(
        state.pool, state.settings.admin_token, bearer_token(connection.headers.get("authorization"))
    )  # fmt: skip
    if actor is None:
        raise Unauthorized(unauthorized(connection.headers.get("authorization")))
    if actor.kind == AUDITOR and not (handler.opt.get(READ_ONLY) or handler.opt.get(AUDITOR_MAY_HOLD)):
        raise PermissionDeniedException(
            detail=f"auditor {actor.name!r} may only read the routing log, parties, stats, the heads and checkpoints,"
            f" verify and the audit trail, and set holds; {connection.scope.get('method')} {connection.scope['path']}"
            " needs the admin token"
        )
    connection.scope["state"]["actor"] = actor


def actor_of(connection: ASGIConnection) -> Actor:
    actor: Actor = connection.scope["state"]["actor"]
    return actor


_encoder = msgspec.json.Encoder()


async def record_action(
    conn: asyncpg.Connection, key: bytes, actor: Actor, action: str, parameters: dict[str, Any]
) -> int:
    """One entry of the audit trail, chained under key (Settings.audit_trail_key; storage.audit_trail): who did what
    to the routing log or to a platform, with which parameters (text as jsonb holds it: a NUL in a search value or
    cursor, which jsonb refuses, as the routing log stores it); its id."""
    stored = {name: stored_text(value) if isinstance(value, str) else value for name, value in parameters.items()}
    return await append(conn, key, (actor.kind, actor.name), action, _encoder.encode(stored).decode())


async def add_auditor(conn: asyncpg.Connection, name: str) -> str:
    """A new auditor and its token (shown once, stored as SHA-256)."""
    token = new_token()
    try:
        await conn.execute(QUERIES["insert_auditor"], name, token_hash(token))
    except asyncpg.UniqueViolationError:
        raise AuditorExists(f"an auditor named {name!r} exists already; remove it first to issue a new token") from None
    return token


async def remove_auditor(conn: asyncpg.Connection, name: str) -> bool:
    return await conn.fetchval(QUERIES["delete_auditor"], name) is not None


async def list_auditors(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    return [
        {"name": r["name"], "created_at": r["created_at"].isoformat()}
        for r in await conn.fetch(QUERIES["list_auditors"])
    ]
