"""A routing-log row: its columns, what an exchange becomes in them, and the keyed hash that chains the rows.

storage.routing_log writes rows, storage.log_verify recomputes their hashes, the auditor API reads their bodies
back; all three take the row's form from here. The ids a row is found by are storage.log_object_ids's, its bodies'
stored form storage.log_body's.

A row's hash is an HMAC-SHA-256 under a key derived from OCPI_HUB_SECRET_KEY (storage.secrets.routing_log_key), so
that someone who can write to the database but does not hold the key cannot change a row and recompute its chain.
Chains written before keyed hashes (plain SHA-256, legacy_hash) were sealed when the hub was upgraded (migration
0012 and storage.migrate): their last row's hash, MAC'd, so that none of their rows can change either.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import math
import operator
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import msgspec

from storage.log_body import stored_body

GENESIS = bytes(32)  # the prev_hash of a chain's first row
# characters of an anonymous request's path, its query and each logged request header its row keeps (an OCPI URL of
# the hub, its ids and its headers are far shorter): LogEntry.keep_anonymous_request_short
ANONYMOUS_TEXT_MAX = 512
MAX_INT4 = 2**31 - 1  # the largest request_body_size the column (integer) holds
_canonical = msgspec.json.Encoder(order="sorted")

# Hashed and written in this order; id, prev_hash and hash are not part of the content (a keyed hash takes the id
# after it: row_hash).
CONTENT_COLUMNS = (
    "received_at", "chain_id", "seq", "request_id", "forwarded_request_id", "correlation_id",
    "from_country_code", "from_party_id", "to_country_code", "to_party_id", "caller_platform_id",
    "receiver_platform_id", "module", "interface", "method", "path", "query", "routing", "http_status",
    "ocpi_status_code", "duration_ms", "error", "request_headers", "response_headers", "request_body",
    "request_body_size", "response_body", "response_body_size",
)  # fmt: skip
COLUMNS = (*CONTENT_COLUMNS, "prev_hash", "hash")
# A keyed hash covers the object id and the listed ids too (written after the hash columns): auditors find rows by them.
KEYED_CONTENT_COLUMNS = (*CONTENT_COLUMNS, "object_id", "listed_ids")
# Of duration_ms, the receiver's part and the wait for a connection to it (migration 0021), written after the id. A
# keyed hash covers them where a row has either, after its content (_keyed_content); a row without them (written
# before 0021, by a hub of the previous version, or one that sent nothing to a party) is hashed as before.
TIMING_COLUMNS = ("receiver_ms", "connection_wait_ms")
in_column_order = operator.itemgetter(*CONTENT_COLUMNS)  # a row's content, as a tuple in CONTENT_COLUMNS' order
_in_keyed_order = operator.itemgetter(*KEYED_CONTENT_COLUMNS)
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")  # PostgreSQL text holds no NUL; UTF-8 has no lone surrogate


@dataclass(slots=True)
class LogEntry:
    """One exchange as the hub saw it. Bodies are raw bytes here; the writer compresses and caps them."""

    received_at: datetime
    request_id: str
    correlation_id: str
    module: str
    method: str
    path: str
    routing: str
    http_status: int = 0
    duration_ms: float = 0.0
    # of duration_ms, from sending the request to a party until its whole answer was read (or the send failed):
    # routing.forward, hub.party_client; None where nothing was sent to a party
    receiver_ms: float | None = None
    connection_wait_ms: float | None = None  # how long it waited for a connection it could take (routing.fair_share)
    forwarded_request_id: str | None = None
    query: str = ""
    interface: str | None = None
    from_country_code: str | None = None
    from_party_id: str | None = None
    to_country_code: str | None = None
    to_party_id: str | None = None
    caller_platform_id: int | None = None
    receiver_platform_id: int | None = None
    ocpi_status_code: int | None = None
    error: str | None = None
    request_headers: dict[str, str] | None = None
    response_headers: dict[str, str] | None = None
    request_body: bytes = b""
    response_body: bytes = b""
    # the size of a request body the row keeps no more of (keep_anonymous_request_short); None: request_body is it
    request_body_size: int | None = None
    # (key, url) of a CDR Location the hub rewrote; stored in relayed_location in the same transaction
    relayed_location: tuple[str, str] | None = None
    object_id: str | None = None  # where the hub knows it and log_object_ids could not tell it (a result's)
    related_ids: list[str] | None = None  # its listed_ids, where the hub knows them (a result's: its command's)
    waiter: asyncio.Future[None] | None = field(default=None, repr=False)
    waiting_since: float = field(default=0.0, repr=False)  # the event loop's time when the caller began to wait
    # (seq, hash) of its row once chained: its content is fixed, hashed into the writer's chain (an amendment names it)
    chained_at: tuple[int, bytes] | None = field(default=None, repr=False)
    row_id: int | None = field(default=None, repr=False)  # the id its row was hashed with, kept if chained again

    def keep_anonymous_request_short(self, announced_size: int | None) -> None:
        """The row of a caller no registered party's token names (none, an unknown one, a token A on a functional
        module) keeps no body, which the relay does not read (it checks the token first), but the size its
        Content-Length announced, and at most ANONYMOUS_TEXT_MAX characters of its path, its query and each request
        header it logs: anyone could fill the log's disk otherwise, up to the log's body cap and a request's 64 KiB
        head a request. The size says what came; the path and headers, cut, say where to."""
        self.request_body, self.request_body_size = b"", min(announced_size or 0, MAX_INT4)
        self.path, self.query = _cut_short(self.path), _cut_short(self.query)
        if self.request_headers:
            self.request_headers = {name: _cut_short(value) for name, value in self.request_headers.items()}


def _cut_short(text: str) -> str:
    if len(text) <= ANONYMOUS_TEXT_MAX:
        return text
    return f"{text[:ANONYMOUS_TEXT_MAX]}... ({len(text):,} characters, cut: no registered party sent it)"


class BodyDigest(bytes):
    """A stored body's SHA-256 in place of the body (the database's sha256() of it), which is all a row's hash takes of
    it: rows checked without reading their bodies (a conversation's, storage.log_row_check)."""


# What content_hash turns into text before hashing, by position in CONTENT_COLUMNS (the columns' types are fixed).
_RECEIVED_AT, _CHAIN_ID = CONTENT_COLUMNS.index("received_at"), CONTENT_COLUMNS.index("chain_id")
_BODIES = tuple(CONTENT_COLUMNS.index(name) for name in ("request_body", "response_body"))
_HEADERS = tuple(CONTENT_COLUMNS.index(name) for name in ("request_headers", "response_headers"))


def row_hash(key: bytes, prev_hash: bytes, values: Mapping[str, Any], row_id: int | None) -> bytes:
    """HMAC-SHA-256 under key over the previous hash and the row's content (KEYED_CONTENT_COLUMNS and, where it has
    them, TIMING_COLUMNS) in the canonical form of legacy_hash, followed by the row's id where it was chosen before
    hashing (row_id; migration 0014)."""
    content = _keyed_content(values)
    return _keyed(key, prev_hash, content if row_id is None else [*content, row_id])


def keyed_hash_covers_id(key: bytes, row: Mapping[str, Any]) -> bool | None:
    """How a row as stored (its id, prev_hash and hash among its columns) matches its keyed hash: over its id (True),
    over its content alone (False: written before migration 0014, or while no id could be reserved), or not at all
    (None). Either form is keyed, so neither can be made to match a changed row, id included, without the key."""
    content = _keyed_content(row)
    prev_hash, stored = row["prev_hash"], row["hash"]
    if hmac.compare_digest(_keyed(key, prev_hash, [*content, row["id"]]), stored):
        return True
    if hmac.compare_digest(_keyed(key, prev_hash, content), stored):
        return False
    return None


def _keyed_content(values: Mapping[str, Any]) -> list[Any]:
    """The content a keyed hash covers: KEYED_CONTENT_COLUMNS canonical, then [receiver_ms, connection_wait_ms] as one
    more item where either is set (migration 0021). Whether they are is the row's own: a row given them, or one that
    had them and lost them, no longer matches; one without them keeps the hash it was written with. The item, a list,
    is never taken for an id, which follows it (row_hash)."""
    content = _canonical_content(_in_keyed_order(values))
    receiver, wait = values.get("receiver_ms"), values.get("connection_wait_ms")
    if receiver is not None or wait is not None:
        content.append([_time(receiver), _time(wait)])
    return content


def _time(value: float | None) -> float | str | None:
    """A time as hashed: a float, as float8 gives it back (an int 0 written is read as 0.0); NaN or an infinity, which
    JSON would write as null, as text, so that none can stand in for a null."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else str(value)


def _keyed(key: bytes, prev_hash: bytes, content: list[Any]) -> bytes:
    return hmac.digest(key, prev_hash + _canonical.encode(content), "sha256")


def amendment_mac(key: bytes, row_hash: bytes, chain_id: uuid.UUID | str, seq: int, values: Sequence[Any]) -> bytes:
    """The keyed hash of an amendment (migration 0015): over the amended row's hash (which covers its id), its place
    in its chain, and the amendment's content, values: the row's received_at, http_status, ocpi_status_code, message,
    answered_at. Marked as an amendment's, so that it can pass for no row's hash."""
    received_at, http_status, ocpi_status_code, message, answered_at = values
    content = ["answered_instead", str(chain_id), seq, received_at.isoformat(), http_status, ocpi_status_code,
               message, answered_at.isoformat()]  # fmt: skip
    return _keyed(key, row_hash, content)


def amendment_number_mac(key: bytes, chain_id: uuid.UUID, number: int, seq: int) -> bytes:
    """The MAC of an amendment's number along its chain (migration 0016), with the seq of the row it amends: a number
    missing, its amendment deleted, shows; the record of its deletion (kept by a trigger) says which row it was of."""
    return _mark_mac(key, b"amendment", chain_id, number, str(seq).encode())


def legacy_hash(prev_hash: bytes, values: Mapping[str, Any]) -> bytes:
    """The hash of a row of a chain written before keyed hashes: SHA-256 over the previous hash and the row's content
    (CONTENT_COLUMNS) in a canonical JSON form: the columns in order, the time in ISO 8601, the chain id as text, each
    stored (compressed) body by its SHA-256 in hex, the headers as a JSON object (given as one, or as the JSON text
    the database returns)."""
    return hashlib.sha256(prev_hash + _canonical.encode(_canonical_content(in_column_order(values)))).digest()


def _canonical_content(content: tuple[Any, ...]) -> list[Any]:
    canonical = list(content)
    canonical[_RECEIVED_AT] = canonical[_RECEIVED_AT].isoformat()
    canonical[_CHAIN_ID] = str(canonical[_CHAIN_ID])
    for at in _BODIES:
        if (body := canonical[at]) is not None:
            canonical[at] = body.hex() if type(body) is BodyDigest else hashlib.sha256(body).hexdigest()
    for at in _HEADERS:
        if isinstance(headers := canonical[at], str):
            canonical[at] = msgspec.json.decode(headers)
    return canonical


def seal_mac(key: bytes, chain_id: uuid.UUID, last_seq: int, last_hash: bytes) -> bytes:
    """The MAC of a seal: the last row of a chain written before keyed hashes, when the hub was upgraded."""
    return _mark_mac(key, b"sealed", chain_id, last_seq, last_hash)


def floor_mac(
    key: bytes,
    chain_id: uuid.UUID,
    seq: int,
    hash_: bytes,
    prev_hash: bytes | None,
    next_apart: bool | None,
    prev_apart: bool | None,
) -> bytes:
    """The MAC of a retention floor: a row retention dropped, its hash (which the next row continues from), its
    prev_hash (the hash of the row before), and whether the rows after and before it were not dropped with it (None:
    a floor from before the upgrade, which kept only the hash)."""
    flags = b"" if next_apart is None or prev_apart is None else bytes((next_apart, prev_apart))
    return _mark_mac(key, b"floor", chain_id, seq, hash_, prev_hash, flags)


def _mark_mac(key: bytes, kind: bytes, chain_id: uuid.UUID, seq: int, *parts: bytes | None) -> bytes:
    try:
        packed = seq.to_bytes(8, "big", signed=True)
    except OverflowError:  # not a bigint: cannot verify
        packed = b"out of range"
    # each part with its length, so that none can pass for another
    joined = b"".join(len(part or b"").to_bytes(4, "big") + (part or b"") for part in parts)
    return hmac.digest(key, kind + b"\0" + chain_id.bytes + packed + joined, "sha256")


def row_content(entry: LogEntry, chain_text: str, seq: int, body_cap: int) -> dict[str, Any]:
    """The row of an exchange by column (CONTENT_COLUMNS and TIMING_COLUMNS), as written and hashed: text PostgreSQL
    can hold, party ids in capitals, headers as a dict (as the hash takes them; in_record_order writes them as JSON
    text), bodies cut at body_cap and compressed."""
    e, requested, responded = entry, entry.request_headers, entry.response_headers
    # Every text of the row at once (a None as "None"): nearly always ASCII without a NUL, taken as it is; else each
    # again through stored_text. Not a call of it per column and header value: two dozen a row, 3% of a relayed PUT.
    every_text = (f"{e.request_id}{e.forwarded_request_id}{e.correlation_id}{e.from_country_code}{e.from_party_id}"
                  f"{e.to_country_code}{e.to_party_id}{e.module}{e.interface}{e.method}{e.path}{e.query}{e.routing}"
                  f"{e.error}{''.join(requested.values()) if requested else ''}"
                  f"{''.join(responded.values()) if responded else ''}")  # fmt: skip
    plain = every_text.isascii() and "\x00" not in every_text
    row = {
        "received_at": e.received_at,
        "chain_id": chain_text,  # text, as the hash takes it; asyncpg parses it for the uuid column
        "seq": seq,
        "request_id": e.request_id,
        "forwarded_request_id": e.forwarded_request_id,
        "correlation_id": e.correlation_id,
        "from_country_code": None if e.from_country_code is None else e.from_country_code.upper(),
        "from_party_id": None if e.from_party_id is None else e.from_party_id.upper(),
        "to_country_code": None if e.to_country_code is None else e.to_country_code.upper(),
        "to_party_id": None if e.to_party_id is None else e.to_party_id.upper(),
        "caller_platform_id": e.caller_platform_id,
        "receiver_platform_id": e.receiver_platform_id,
        "module": e.module,
        "interface": e.interface,
        "method": e.method,
        "path": e.path,
        "query": e.query,
        "routing": e.routing,
        "http_status": e.http_status,
        "ocpi_status_code": e.ocpi_status_code,
        "duration_ms": e.duration_ms,
        "error": e.error,
        "request_headers": requested or None,
        "response_headers": responded or None,
        "request_body": stored_body(e.request_body, body_cap),
        "request_body_size": len(e.request_body) if e.request_body_size is None else e.request_body_size,
        "response_body": stored_body(e.response_body, body_cap),
        "response_body_size": len(e.response_body),
        "receiver_ms": e.receiver_ms,  # not in CONTENT_COLUMNS: TIMING_COLUMNS (the chain's record ends with them)
        "connection_wait_ms": e.connection_wait_ms,
    }
    if not plain:
        _store_texts(row, entry)
    return row


_TEXT_COLUMNS = ("request_id", "forwarded_request_id", "correlation_id", "module", "interface", "method", "path",
                 "query", "routing", "error")  # fmt: skip
_PARTY_COLUMNS = ("from_country_code", "from_party_id", "to_country_code", "to_party_id")


def _store_texts(row: dict[str, Any], entry: LogEntry) -> None:
    """The texts of a row with one PostgreSQL cannot hold as it came, each through stored_text."""
    for name in _TEXT_COLUMNS:
        row[name] = _text_or_none(getattr(entry, name))
    for name in _PARTY_COLUMNS:
        row[name] = _party_or_none(getattr(entry, name))
    row["request_headers"] = _stored_headers(entry.request_headers)
    row["response_headers"] = _stored_headers(entry.response_headers)


def stored_text(text: str) -> str:
    """text as PostgreSQL can hold it: a NUL (an id "%00" in a path, "\\u0000" in a JSON body) or a lone surrogate
    (a party's header bytes that were not UTF-8) becomes U+FFFD; anything else is stored as it came. A search
    value goes through it too, so that it finds what was stored."""
    return text if text.isascii() and "\x00" not in text else _UNSTORABLE.sub("\ufffd", text)


def _text_or_none(text: str | None) -> str | None:
    return None if text is None else stored_text(text)


def _party_or_none(party: str | None) -> str | None:
    """A CiString party code, stored upper-cased so that a search finds every spelling."""
    return None if party is None else stored_text(party).upper()


def _stored_headers(headers: dict[str, str] | None) -> dict[str, str] | None:
    return {name: stored_text(value) for name, value in headers.items()} if headers else None


def in_record_order(values: Mapping[str, Any]) -> list[Any]:
    """The content of a row (row_content) as the database takes it: in CONTENT_COLUMNS' order, its headers as the JSON
    text the row's hash read them as (_canonical_content)."""
    record = list(in_column_order(values))
    for at in _HEADERS:
        if record[at] is not None:
            record[at] = _canonical.encode(record[at]).decode()
    return record
