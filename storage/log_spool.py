"""Routing-log rows a writer could not commit before it closed, kept on disk for the next writer to write."""

from __future__ import annotations

import os
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import structlog

from storage.log_row import COLUMNS, CONTENT_COLUMNS

log = structlog.get_logger()

# Rows a writer could not commit before it closed, kept as they were chained (msgpack: datetimes and bytes as such).
SPOOL_SUFFIX = ".routing-log-spool"
_encoder, _decoder = msgspec.msgpack.Encoder(), msgspec.msgpack.Decoder()

# The writer's append: a batch of records and locations to its chain; False if the chain had it already.
Append = Callable[[uuid.UUID, list[tuple[Any, ...]], list[tuple[Any, ...]]], Awaitable[bool]]
# The writer's seal of a chain of unkeyed hashes at its last row (storage.log_row.legacy_hash): chain, seq, hash.
Seal = Callable[[uuid.UUID, int, bytes], Awaitable[None]]
_SEQ, _HASH = CONTENT_COLUMNS.index("seq"), len(COLUMNS) - 1  # in a record: its seq, its hash


def save(spool_dir: Path, chain_id: str, parts: list[dict[str, Any]]) -> Path:
    """The parts of a chain (records and locations, as they were chained) in a file of spool_dir: written aside,
    synced, then renamed, so a file there is whole."""
    spool_dir.mkdir(parents=True, exist_ok=True)
    path = spool_dir / f"{chain_id}{SPOOL_SUFFIX}"
    temporary = path.with_suffix(".partial")
    with temporary.open("wb") as file:
        file.write(_encoder.encode({"chain_id": chain_id, "keyed": True, "parts": parts}))
        file.flush()
        os.fsync(file.fileno())
    temporary.rename(path)
    return path


async def write_spooled(spool_dir: Path, append: Append, seal: Seal) -> None:
    """The rows an earlier writer kept in spool_dir, each file claimed by renaming it (several workers share
    a data dir); a part the database has already (committed as its answer was lost) is not written again. Rows a
    hub from before keyed hashes spooled are hashed as it chained them: their chain is sealed at the last of them."""
    for path in sorted(spool_dir.glob(f"*{SPOOL_SUFFIX}")):
        claimed = path.with_suffix(f".{os.getpid()}")
        try:
            path.rename(claimed)
        except FileNotFoundError:
            continue  # another worker took it
        try:
            spooled = _decoder.decode(claimed.read_bytes())
            chain_id, written = uuid.UUID(spooled["chain_id"]), 0
            records, keyed = [], spooled.get("keyed", False)
            for part in spooled["parts"]:
                # a record of before keyed hashes ends at object_id; listed_ids came with them
                records = [tuple(record) if keyed else (*record, None) for record in part["records"]]
                if await append(chain_id, records, [tuple(loc) for loc in part["locations"]]):
                    written += len(records)
            if not keyed and records:
                await seal(chain_id, records[-1][_SEQ], records[-1][_HASH])
        except Exception as exc:  # the database away again, or a damaged file: kept for the next start
            claimed.rename(path)
            log.error("routing_log_spool_not_written", path=str(path), error=f"{type(exc).__name__}: {exc}")
            continue
        claimed.unlink()
        log.warning("routing_log_spool_written", path=str(path), rows=written)
