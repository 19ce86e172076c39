"""What a database holds keyed with its secret key, checked against a key before its first check value is recorded.

A database upgraded to migration 0025 with no party token (storage.migrate.check_secret_key) has only its keyed hashes
to tell which key it was set up with: the audit trail's head and newest chained entry (storage.audit_trail), and the
routing log's newest row (storage.log_row.row_hash). Three rows at most, each found by an index, each verified on its
own: no chain is walked.
"""

from __future__ import annotations

import hmac

import asyncpg

from storage.audit_trail import entry_hash, head_mac
from storage.log_row import keyed_hash_covers_id
from storage.secrets import audit_trail_key, routing_log_key
from storage.sql import QUERIES


async def keyed_data_not_verifying(conn: asyncpg.Connection, secret_key: str) -> list[str]:
    """What the database holds keyed that secret_key does not verify, as a message names it (empty: all of it does,
    or it holds nothing keyed yet). A key that verifies none of it is another key; one that verifies some of it and
    not the rest is another key too, or the rest was changed: either way not a key to record unchecked."""
    log_key = routing_log_key(secret_key)
    trail_key = audit_trail_key(log_key)
    wrong = []
    head = await conn.fetchrow(QUERIES["audit_trail_head"])
    if head is not None and head["mac"] is not None:
        mac = head_mac(trail_key, head["unchained_upto"], head["last_id"], head["last_hash"])
        if not hmac.compare_digest(mac, head["mac"]):
            wrong.append("the audit trail's head")
    entry = await conn.fetchrow(QUERIES["newest_audit_trail_entry"])
    if entry is not None and not hmac.compare_digest(entry_hash(trail_key, entry["prev_hash"], entry), entry["hash"]):
        wrong.append(f"audit trail entry {entry['id']} ({entry['action']})")
    row = await conn.fetchrow(QUERIES["newest_routing_log_row"])
    if row is not None and not row["unkeyed"] and _row_not_verifying(log_key, row):
        wrong.append(f"routing-log row {row['id']}")
    return wrong


def _row_not_verifying(log_key: bytes, row: asyncpg.Record) -> bool:
    """Whether the row's keyed hash, over its id or over its content alone, is not the one stored. A row whose hash
    cannot be computed at all (headers nested deeper than a decoder follows) tells nothing of the key."""
    try:
        return keyed_hash_covers_id(log_key, row) is None
    except (ValueError, TypeError, AttributeError, RecursionError, OverflowError):
        return False
