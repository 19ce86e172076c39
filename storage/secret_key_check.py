"""The database's record of the secret key it was set up with (migration 0025): recorded by the migration, with the key
that verifies what the database already holds keyed (storage.migrate), and compared by every later command, so that an
instance given another key is refused at start."""

from __future__ import annotations

import hmac

import asyncpg
import structlog

from storage.migrate import MigrationRefused, another_secret_key
from storage.secrets import key_check_value
from storage.sql import QUERIES

log = structlog.get_logger()


async def check_recorded_key(conn: asyncpg.Connection, secret_key: str, source: str) -> None:
    """MigrationRefused unless secret_key is the key the database was set up with (source: where the key came from,
    for the message). With none recorded (its owner deleted it to put the database under a new key, deploy/README.md),
    this key is: the first start keys the routing log's chains and the audit trail with it, and every instance that
    follows must have the same. Two first starts at once with different keys: one records, the other finds that one's
    value and is refused."""
    mine = key_check_value(secret_key)
    recorded = await conn.fetchval(QUERIES["recorded_secret_key_check"])
    if recorded is None:
        try:
            if await conn.fetchval(QUERIES["record_secret_key_check"], mine) is not None:
                log.info("secret_key_check_recorded", source=source)
        except asyncpg.InsufficientPrivilegeError:
            role = await conn.fetchval("SELECT current_user")
            raise MigrationRefused(
                f"the database holds no check of the hub's secret key yet, and role {role} may not record one: run "
                "ocpi-hub migrate as the owner of the hub's tables (OCPI_HUB_OWNER_DATABASE_URL) with the hub's "
                "OCPI_HUB_SECRET_KEY first"
            ) from None
        recorded = await conn.fetchval(QUERIES["recorded_secret_key_check"])
    if not hmac.compare_digest(recorded, mine):
        raise another_secret_key(source)
