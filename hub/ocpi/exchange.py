"""One request in flight through the relay, as each of its steps (relay, broadcast, hub answers, hub URLs) sees it."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from litestar.types import Scope

from storage.directory import PartyRole, Platform
from storage.log_row import LogEntry


@dataclass(slots=True)
class Job:
    """Work to start once the caller's row is committed, and release, which gives back what it was admitted with:
    called exactly once, when its task is done (run, failed or cancelled before it ran) or when it is abandoned
    unstarted (the caller's row not written)."""

    work: Coroutine[Any, Any, None]
    release: Callable[[], None]

    def abandon(self) -> None:
        self.work.close()
        self.release()


@dataclass(slots=True)
class Exchange:
    """One request in flight: what arrived, who sent it, and the log row it becomes."""

    scope: Scope
    headers: dict[str, str]
    entry: LogEntry
    started: float
    caller: Platform | None = None
    sender: PartyRole | None = None
    background: list[Job] = field(default_factory=list)
    # what the hub's forwards of it carry as HUB_INSTANCE_HEADER when it came through other hubs: their marks and the
    # hub's own (hub.request_context.hubs_passed); empty: the hub's own alone
    hubs_passed: str = ""
    # its routing cut short (PostgreSQL or Redis away, the hub stopping): answered 4000 by the hub, entry.error saying
    # how far it went (Relay._cut_short)
    cut_short: bool = False
