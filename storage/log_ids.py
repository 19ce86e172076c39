"""The row ids a routing-log writer holds for its next rows (migration 0014): a row's id is chosen before it is hashed,
from ids reserved ahead, most of them by the append of the batch before."""

from __future__ import annotations

import time
from collections import deque

import structlog

from storage.log_connection import LogConnection

log = structlog.get_logger()

# Ids held longer than this are let go: ids rise along a chain, and across chains they stay this close to the order of
# writing.
IDS_KEPT_S = 60.0
RESERVE_TIMEOUT_S = 1.0  # a reserve of ids the database does not give at once: the rows are chained without ids


class ReservedIds:
    """Ids reserved for a writer's next rows, lowest first."""

    def __init__(self) -> None:
        self._ids: deque[int] = deque()
        self._reserved_at = 0.0  # when the oldest of those held was reserved

    def __len__(self) -> int:
        return len(self._ids)

    def next(self) -> int | None:
        """The lowest id held, taken; None when none is (the database gives the row its id as it writes it)."""
        return self._ids.popleft() if self._ids else None

    def add(self, ids: list[int]) -> None:
        if not self._ids:
            self._reserved_at = time.monotonic()
        self._ids.extend(sorted(ids))  # above those held: the database reserved them later

    async def reserve(self, connection: LogConnection, rows: int) -> None:
        """Enough ids for rows more rows, when those held are too few or held too long. Without them (the database
        away), rows are chained without ids, and the database gives theirs as it writes them."""
        if time.monotonic() - self._reserved_at > IDS_KEPT_S:
            self._ids.clear()
        if len(self._ids) >= rows:
            return
        try:
            self.add(await connection.reserve_ids(rows - len(self._ids), RESERVE_TIMEOUT_S))
        except Exception as exc:  # the write that follows retries; its rows are hashed without their ids
            log.warning("routing_log_ids_not_reserved", error=f"{type(exc).__name__}: {exc}".rstrip(": "), rows=rows)
