"""Applies the numbered SQL files in storage/migrations once each, in order, under an advisory lock."""

from __future__ import annotations

import re
from importlib.resources import files

import asyncpg
import structlog

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


async def migrate(conn: asyncpg.Connection) -> list[str]:
    """Bring the schema up to date; returns the names of the files applied now."""
    applied_now = []
    await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
    try:
        await conn.execute(_SCHEMA_TABLE)
        done = {row["version"] for row in await conn.fetch("SELECT version FROM schema_migration")}
        for version, name, sql in migration_files():
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migration (version, name) VALUES ($1, $2)", version, name)
            log.info("migration_applied", migration=name)
            applied_now.append(name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
    return applied_now


async def pending(conn: asyncpg.Connection) -> list[str]:
    """Names of migrations not yet applied (for readiness checks)."""
    exists = await conn.fetchval("SELECT to_regclass('schema_migration') IS NOT NULL")
    done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migration")} if exists else set()
    return [name for version, name, _ in migration_files() if version not in done]
