"""Routing-log rows a writer could not commit before it closed, kept on disk for the next writer to write: saved at its
close (ClosingSpool), written by the next writer to open there (write_spooled)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import asyncpg
import msgspec
import structlog

from storage.log_row import COLUMNS, CONTENT_COLUMNS, seal_mac
from storage.sql import QUERIES

log = structlog.get_logger()

# Rows a writer could not commit before it closed, kept as they were chained (msgpack: datetimes and bytes as such).
SPOOL_SUFFIX = ".routing-log-spool"
_encoder, _decoder = msgspec.msgpack.Encoder(), msgspec.msgpack.Decoder()

# The writer's append (storage.log_connection): a batch of records, locations and amendments to its chain, and no ids
# reserved; False if the chain had the batch already.
_Records = list[tuple[Any, ...]]
Append = Callable[[uuid.UUID, _Records, _Records, _Records, int], Awaitable[tuple[bool, list[int]]]]
_SEQ, _HASH = CONTENT_COLUMNS.index("seq"), len(COLUMNS) - 1  # in a record: its seq, its hash
# A record's length: COLUMNS, then object_id, listed_ids, id, receiver_ms and connection_wait_ms. One spooled by an
# earlier version ends sooner: without the times (before migration 0021), without id too (before 0014), or without
# listed_ids too (before keyed hashes); the missing values are None.
_RECORD_LENGTH = len(COLUMNS) + 5
# An amendment's: routing_log_amendment_numbered (migration 0016). One spooled by the version before ends without its
# number and number_mac (routing_log_amendment_entry, 0015): None, an unnumbered amendment as that version wrote them.
_AMENDMENT_LENGTH = 10


def save(spool_dir: Path, chain_id: str, parts: list[dict[str, Any]]) -> Path:
    """The parts of a chain (records and locations, as they were chained; the amendments of its rows last, in a part
    without rows) in a file of spool_dir: written aside, synced, then renamed, so a file there is whole."""
    spool_dir.mkdir(parents=True, exist_ok=True)
    path = spool_dir / f"{chain_id}{SPOOL_SUFFIX}"
    temporary = path.with_suffix(".partial")
    with temporary.open("wb") as file:
        file.write(_encoder.encode({"chain_id": chain_id, "keyed": True, "parts": parts}))
        file.flush()
        os.fsync(file.fileno())
    temporary.rename(path)
    return path


class ClosingSpool:
    """What a writer could not write before it closed, in its chain's file of spool_dir: a part per batch of rows (their
    records and locations, as they were chained), and the amendments of its rows in parts of their own, added after
    the file was first saved too (it is saved again, whole). Said in the hub's own log, with what is lost when the
    file cannot be saved (no spool_dir, a full or read-only disk)."""

    def __init__(self, spool_dir: Path | None, chain_id: str) -> None:
        self._spool_dir, self._chain_id = spool_dir, chain_id
        self.parts: list[dict[str, Any]] = []
        self.saved = 0  # rows and amendments in the file

    def add_rows(self, records: _Records, locations: _Records) -> None:
        if records:
            self.parts.append({"records": records, "locations": locations})

    def add_amendments(self, amendments: _Records) -> None:
        # Alone in their part: a hub of a previous version (rolling upgrade) fails on it, keeping the file for this
        # version, rather than writing the rows and dropping the amendments: one before 0015 on a part without rows,
        # 0015's on amendments with numbers (0016), which its routing_log_amendment_entry cannot take.
        if amendments:
            self.parts.append({"records": [], "locations": [], "amendments": amendments})

    @property
    def held(self) -> int:
        """The rows and amendments in its parts."""
        return sum(len(part["records"]) + len(part.get("amendments", ())) for part in self.parts)

    def save(self) -> bool:
        """The parts saved (the rows and amendments not saved yet said in the hub's log); False if they are lost."""
        rows = sum(len(part["records"]) for part in self.parts)
        amendments = self.held - rows
        first, added = not self.saved, self.held - self.saved
        try:
            if self._spool_dir is None:
                raise OSError("the writer has no spool dir")
            path = save(self._spool_dir, self._chain_id, self.parts)
        except OSError as exc:
            if first:
                log.error("routing_log_rows_lost", rows=rows, amendments=amendments, chain_id=self._chain_id,
                          error=str(exc))  # fmt: skip
            else:
                log.error("routing_log_amendments_lost", amendments=added, chain_id=self._chain_id, error=str(exc))
            return False
        if first:
            log.error("routing_log_rows_spooled", rows=rows, amendments=amendments, path=str(path))
        else:
            log.error("routing_log_amendments_spooled", amendments=added, chain_id=self._chain_id)
        self.saved += added
        return True


async def write_spooled(spool_dir: Path, append: Append, pool: asyncpg.Pool, key: bytes) -> None:
    """The rows an earlier writer kept in spool_dir, each file claimed by a lock on it (several workers share a data
    dir; a lock goes with the process that held it, so a file whose writer died is taken by the next); a part the
    database has already (committed as its answer was lost, or by a writer that died halfway) is not written again.
    Rows a hub from before keyed hashes spooled are hashed as it chained them: their chain is sealed at the last of
    them, under key (the chain's, storage.secrets.routing_log_key), on a connection of pool."""
    # "{chain}.{pid}": a file a hub before locks claimed by renaming it, left where its process died
    for path in sorted([*spool_dir.glob(f"*{SPOOL_SUFFIX}"), *spool_dir.glob("*.[0-9]*")]):
        with _claimed(path) as claimed:
            if claimed is None:
                continue  # another worker has it, or has written it
            try:
                written, amended = await _write_spool_file(claimed.read(), append, pool, key)
            except Exception as exc:  # the database away again, or a damaged file: kept for the next start
                log.error("routing_log_spool_not_written", path=str(path), error=f"{type(exc).__name__}: {exc}")
                continue
            path.unlink()  # under the lock: no other worker reads it once it is written
        log.warning("routing_log_spool_written", path=str(path), rows=written, amendments=amended)


@contextlib.contextmanager
def _claimed(path: Path) -> Iterator[BinaryIO | None]:
    """The file at path, open and locked for this process alone; None if another holds it, or it is gone."""
    with contextlib.ExitStack() as held:
        try:
            file = held.enter_context(path.open("rb"))
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # locked after a writer unlinked it: no longer there to write
            taken = os.stat(path).st_ino == os.fstat(file.fileno()).st_ino
        except (FileNotFoundError, BlockingIOError):
            taken = False
        yield file if taken else None


async def _write_spool_file(content: bytes, append: Append, pool: asyncpg.Pool, key: bytes) -> tuple[int, int]:
    """(rows written, amendments sent: the database keeps each once)."""
    spooled = _decoder.decode(content)
    chain_id, written, amended = uuid.UUID(spooled["chain_id"]), 0, 0
    records, keyed = [], spooled.get("keyed", False)
    for part in spooled["parts"]:
        # migrations 0015 and 0016
        amendments = [(*amendment, *(None,) * (_AMENDMENT_LENGTH - len(amendment)))
                      for amendment in part.get("amendments", ())]  # fmt: skip
        amended += len(amendments)
        if not part["records"] and amendments:
            await append(chain_id, [], [], amendments, 0)
            continue
        records = [(*record, *(None,) * (_RECORD_LENGTH - len(record))) for record in part["records"]]
        appended, _ = await append(chain_id, records, [tuple(loc) for loc in part["locations"]], amendments, 0)
        if appended:
            written += len(records)
    if not keyed and records:
        await _seal(pool, key, chain_id, records[-1][_SEQ], records[-1][_HASH])
    return written, amended


async def _seal(pool: asyncpg.Pool, key: bytes, chain_id: uuid.UUID, last_seq: int, last_hash: bytes) -> None:
    """A chain of unkeyed hashes spooled by a hub before keyed hashes, written now: sealed where it ends (as
    migration 0012 sealed the chains in the database), so that it verifies as it was chained."""
    mac = seal_mac(key, chain_id, last_seq, last_hash)
    async with pool.acquire() as conn, conn.transaction():
        # only the spool's own last row, as the spool has it: a head someone moved on made the appends skip rows
        if [r["hash"] for r in await conn.fetch(QUERIES["hashes_at"], chain_id, last_seq)] != [last_hash]:
            log.error("routing_log_spooled_chain_not_sealed", chain_id=str(chain_id), last_seq=last_seq,
                      error="the database does not hold the spool's last row as the spool has it")  # fmt: skip
            return
        await conn.execute(QUERIES["seal_chain"], chain_id, last_seq, last_hash, mac)
    log.warning("routing_log_spooled_chain_sealed", chain_id=str(chain_id), last_seq=last_seq)
