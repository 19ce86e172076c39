"""The database's record of the secret key it was set up with (migration 0025): recorded by the first command to run
with a key, compared by every later one, so that an instance given another key is refused at start."""

from __future__ import annotations

import hmac

import asyncpg
import structlog

from storage.migrate import MigrationRefused
from storage.secrets import key_check_value
from storage.sql import QUERIES

log = structlog.get_logger()


async def check_recorded_key(conn: asyncpg.Connection, secret_key: str, source: str) -> None:
    """MigrationRefused unless secret_key is the key the database was set up with (source: where the key came from,
    for the message). With none recorded yet, this key is: the first start keys the routing log's chains and the audit
    trail with it, and every instance that follows must have the same. Two first starts at once with different keys:
    one records, the other finds that one's value and is refused."""
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
        raise MigrationRefused(
            f"this database was set up with another secret key than this one ({source}): a hub with it would write "
            "routing-log rows and audit-trail entries that verify finds changed, unlike those of the hub's other "
            "instances, and could not read the party tokens they store. Give every instance the hub's key: "
            "OCPI_HUB_SECRET_KEY as the others have it (a hub started without it generated its key in its data dir, "
            "OCPI_HUB_DATA_DIR, as secret.key)"
        )
