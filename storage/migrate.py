"""Applies the numbered SQL files in storage/migrations once each, in order, under an advisory lock; a file that
needs the hub's keys has a Python half, run in the same transaction."""

from __future__ import annotations

import re
from collections.abc import Awaitable
from importlib.resources import files

import asyncpg
import structlog

from storage.audit_trail import seal_unchained
from storage.log_row import floor_mac, seal_mac
from storage.secret_key_witnesses import keyed_data_not_verifying
from storage.secrets import TokenBox, audit_trail_key, key_check_value, routing_log_key
from storage.sql import QUERIES

log = structlog.get_logger()

# Any constant works; it only has to be the same in every hub process sharing the database.
_MIGRATION_LOCK = 0x0C91_4B0B

_SCHEMA_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migration (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)"""


def migration_files() -> list[tuple[int, str, str]]:
    """(version, file name, SQL) for every migration shipped with the package, ordered by version."""
    found = []
    for entry in files("storage").joinpath("migrations").iterdir():
        match = re.fullmatch(r"(\d{4})_\w+\.sql", entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    return sorted(found)


class MigrationRefused(Exception):
    """A migration that would do harm with what it was given: nothing of it is applied."""


async def _seal_unkeyed_chains(conn: asyncpg.Connection, secret_key: str, key_source: str) -> None:
    """0012's Python half: every chain written so far has unkeyed hashes (storage.log_row.legacy_hash). Its head and
    its retention floors are MAC'd now, in the migration's transaction, so that none of its rows, and none of the
    gaps retention left, can be changed later without the key. A chain sealed later than this would take whatever
    someone had written into the database meanwhile, so nothing else ever seals one. Sealed under another key than
    the hub's, they would never verify: a key that does not open the stored tokens is refused."""
    await check_secret_key(conn, secret_key, "migration 0012 would seal the routing log's chains under it")
    log_key = routing_log_key(secret_key)
    heads = await conn.fetch("SELECT chain_id, last_seq, last_hash FROM routing_log_chain")
    await conn.executemany(
        QUERIES["seal_chain"],
        [(h["chain_id"], h["last_seq"], h["last_hash"], seal_mac(log_key, *h.values())) for h in heads],
    )
    floors = await conn.fetch("SELECT chain_id, seq, hash FROM routing_log_floor")
    await conn.executemany(
        "UPDATE routing_log_floor SET mac = $4 WHERE chain_id = $1 AND seq = $2 AND hash = $3",
        [
            (
                f["chain_id"],
                f["seq"],
                f["hash"],
                floor_mac(log_key, f["chain_id"], f["seq"], f["hash"], None, None, None),
            )
            for f in floors
        ],
    )
    if heads or floors:  # a fresh database has no chain to seal
        log.info("routing_log_chains_sealed", chains=len(heads), floors=len(floors))


async def _seal_unchained_trail(conn: asyncpg.Connection, secret_key: str, key_source: str) -> None:
    """0019's Python half: the audit trail's head, no entry chained yet, MAC'd (storage.audit_trail)."""
    await check_secret_key(conn, secret_key, "migration 0019 would seal the audit trail under it")
    await seal_unchained(conn, audit_trail_key(routing_log_key(secret_key)))


async def _record_secret_key_check(conn: asyncpg.Connection, secret_key: str, key_source: str) -> None:
    """0025's Python half: the key's check value (storage.secret_key_check) recorded, once the key is shown to be the
    one the database holds keyed data with. Where no party token tells it, its keyed hashes do (storage.
    secret_key_witnesses): recorded unchecked, another key would be taken for the hub's by every later start. Refused,
    the migration is not applied, and the next start checks again."""
    await check_secret_key(conn, secret_key, "migration 0025 would record it as the key the database was set up with")
    if not_verifying := await keyed_data_not_verifying(conn, secret_key):
        raise another_secret_key(key_source, not_verifying)
    await conn.execute(QUERIES["record_secret_key_check"], key_check_value(secret_key))
    log.info("secret_key_check_recorded", source=key_source)


_PYTHON_HALF = {12: _seal_unkeyed_chains, 19: _seal_unchained_trail, 25: _record_secret_key_check}


def another_secret_key(source: str, not_verifying: list[str] | None = None) -> MigrationRefused:
    """The refusal of a key other than the one the database was set up with (source: where the key came from),
    told by its check value, or before one was recorded by what the database holds keyed (not_verifying)."""
    told = "" if not not_verifying else (
        f" It holds no check of its key yet, and what it holds keyed does not verify with this one: "
        f"{', '.join(not_verifying)} (if this is the hub's key, they were changed instead: the previous version's "
        "ocpi-hub verify tells)"
    )  # fmt: skip
    return MigrationRefused(
        f"this database was set up with another secret key than this one ({source}): a hub with it would write "
        "routing-log rows and audit-trail entries that verify finds changed, unlike those of the hub's other "
        "instances, and could not read the party tokens they store. Give every instance the hub's key: "
        "OCPI_HUB_SECRET_KEY as the others have it (a hub started without it generated its key in its data dir, "
        f"OCPI_HUB_DATA_DIR, as secret.key).{told}"
    )


async def check_secret_key(conn: asyncpg.Connection, secret_key: str, harm: str) -> None:
    """MigrationRefused, saying harm, unless secret_key opens the party tokens stored in the database (if any): a hub
    with another key could not call the parties, and would find every keyed routing-log row changed."""
    sample = await conn.fetchval("SELECT token_b FROM platform WHERE token_b IS NOT NULL LIMIT 1")
    try:
        box = TokenBox(secret_key)
        if sample is not None:
            box.open(sample)
    except ValueError:
        raise MigrationRefused(
            f"OCPI_HUB_SECRET_KEY does not open the party tokens stored in this database, so it is not the key the hub "
            f"wrote them with, and {harm}. Set the hub's key (a hub started without one generated it in its data dir, "
            "OCPI_HUB_DATA_DIR, as secret.key)"
        ) from None


async def migrate(conn: asyncpg.Connection, secret_key: str, key_source: str = "OCPI_HUB_SECRET_KEY") -> list[str]:
    """Bring the schema up to date; returns the names of the files applied now. secret_key: OCPI_HUB_SECRET_KEY
    (key_source: where it came from, for a refusal of it)."""
    applied_now = []
    await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
    try:
        if not await pending(conn):  # no DDL then: a role serving the hub may not run any (storage.serving_role)
            return []
        role = await conn.fetchval("SELECT current_user")
        await _as_owner(conn.execute(_SCHEMA_TABLE), role, "the migrations (schema_migration first)")
        done = {row["version"] for row in await conn.fetch("SELECT version FROM schema_migration")}
        for version, name, sql in migration_files():
            if version in done:
                continue
            async with conn.transaction():
                await _as_owner(conn.execute(sql), role, f"migration {name}")
                if (python_half := _PYTHON_HALF.get(version)) is not None:
                    await python_half(conn, secret_key, key_source)
                await conn.execute("INSERT INTO schema_migration (version, name) VALUES ($1, $2)", version, name)
            log.info("migration_applied", migration=name)
            applied_now.append(name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
    return applied_now


async def _as_owner(statement: Awaitable[object], role: str, name: str) -> None:
    """MigrationRefused, saying what to do, when the connection's role does not own the hub's tables: a role serving
    the hub (OCPI_HUB_DATABASE_URL with OCPI_HUB_OWNER_DATABASE_URL set) applies no migration."""
    try:
        await statement
    except asyncpg.InsufficientPrivilegeError as exc:
        raise MigrationRefused(
            f"role {role} may not apply {name} ({exc}): run ocpi-hub migrate with the URL of the role owning the hub's "
            "tables (OCPI_HUB_OWNER_DATABASE_URL) before the hub serves with this one"
        ) from None


async def pending(conn: asyncpg.Connection) -> list[str]:
    """Names of migrations not yet applied (for readiness checks)."""
    exists = await conn.fetchval("SELECT to_regclass('schema_migration') IS NOT NULL")
    done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migration")} if exists else set()
    return [name for version, name, _ in migration_files() if version not in done]
