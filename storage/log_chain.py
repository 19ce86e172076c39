"""A routing-log writer's hash chain: each row it appends, as the record the database takes, hashed over the one before.

One chain per writer (a new chain_id each start). A row's hash is keyed (storage.log_row.row_hash) and covers the row's
id too, taken from ids reserved ahead (storage.log_ids), so that an edited, inserted, deleted or renumbered row is
detectable by `storage.log_verify.verify()`. Chaining holds the event loop ~15 us a row.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Any

from storage.log_ids import ReservedIds
from storage.log_object_ids import ids_of_entry
from storage.log_row import GENESIS, LogEntry, in_record_order, row_content, row_hash, stored_text


class LogChain:
    """The chain's head (seq and hash of its last row) moves on with each row chained; a row the database refuses is
    taken back by rewinding to the head before it."""

    def __init__(self, key: bytes, body_cap: int, ids: ReservedIds) -> None:
        self.key = key  # the chain's (storage.secrets.routing_log_key)
        self._body_cap = body_cap
        self._ids = ids  # for the next rows
        self.chain_id = uuid.uuid4()
        self.text = str(self.chain_id)
        self.head: tuple[int, bytes] = (0, GENESIS)  # seq and hash of the last row chained
        self.amendments = 0  # the number of its last amendment (storage.log_amendment.amendment_records)

    def rewind(self, head: tuple[int, bytes]) -> None:
        """Back to a head before: the rows chained since are not in the log (the database refused them)."""
        self.head = head

    def link(self, entry: LogEntry) -> tuple[Any, ...]:
        """The row of an exchange, chained: a routing_log_timed_row record (its content, prev_hash, hash, object_id,
        listed_ids, id, receiver_ms, connection_wait_ms: migration 0021)."""
        last_seq, prev_hash = self.head
        seq = last_seq + 1  # the chain moves on only once the row is complete
        values = row_content(entry, self.text, seq, self._body_cap)
        object_id, listed_ids = ids_of_entry(entry)
        if object_id is not None:
            object_id = stored_text(object_id).upper()  # a CiString: searched upper-cased (storage.log_search)
        if listed_ids is not None:
            listed_ids = [stored_text(found).upper() for found in listed_ids]  # CiStrings, as object_id
        values["object_id"], values["listed_ids"] = object_id, listed_ids
        # the id reserved for it; a row chained again (a refused batch, row by row) keeps the one it was given
        if entry.row_id is None:
            entry.row_id = self._ids.next()
        hashed = row_hash(self.key, prev_hash, values, entry.row_id)
        self.head = entry.chained_at = seq, hashed
        return (*in_record_order(values), prev_hash, hashed, object_id, listed_ids, entry.row_id, entry.receiver_ms,
                entry.connection_wait_ms)  # fmt: skip


def location_records(batch: list[LogEntry]) -> list[tuple[Any, ...]]:
    """The CDR Locations a batch's rows rewrote, as relayed_location_entry records (written with the rows)."""
    return [
        (e.relayed_location[0], e.caller_platform_id, e.receiver_platform_id, e.from_country_code, e.from_party_id,
         e.to_country_code, e.to_party_id, e.module, e.relayed_location[1])
        for e in batch if e.relayed_location is not None
    ]  # fmt: skip


def bare(entry: LogEntry, refused: str) -> LogEntry:
    """A row the database refused, without the values a party chose (bodies, headers, OCPI status), to be chained
    instead: its exchange still has its row, which says what is missing and why. A relayed CDR Location stays: the
    caller holds its URL."""
    return replace(
        entry, ocpi_status_code=None, request_headers=None, response_headers=None, request_body=b"",
        response_body=b"",
        error=f"{entry.error + '; ' if entry.error else ''}stored without its bodies, headers and OCPI status code: "
        f"the database refused the row ({refused})"[:2000],
    )  # fmt: skip
