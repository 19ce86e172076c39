"""The hub with parts of its hot path switched off, for `python -m bench.instructions --without`: what each part costs a
routed request, in instructions. Never for serving: a hub without its routing log or hash chain is not the product.

    python -m bench.hub_without routing-log,chain-hash -- serve --port 8080 --workers 1

Each part is replaced where the relay reaches it. A replaced name that no longer exists stops the run: a part renamed
in the hub would otherwise be "switched off" without effect, and cost nothing in the table.
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any

import structlog

import hub.ocpi.functional_module
import hub.ocpi.relay
import routing.forward
import routing.open_routing
import storage.log_chain
import storage.log_row
import storage.routing_log
from hub.cli import main
from storage.log_body import RAW_BODY


def _replace(owner: ModuleType | type, name: str, value: Any) -> None:
    if not hasattr(owner, name):
        raise SystemExit(f"bench.hub_without: {owner.__name__}.{name} is gone; update bench/hub_without.py")
    setattr(owner, name, value)


def _nothing(*_: Any, **__: Any) -> None:
    return None


async def _committed_at_once(*_: Any) -> None:
    return None


# part -> (what switching it off leaves out, the names replaced: (module or class, name, replacement))
PARTS: dict[str, tuple[str, list[tuple[ModuleType | type, str, Any]]]] = {
    "routing-log": (
        "no row: nothing chained, hashed, compressed, queued or written",
        [(storage.routing_log.RoutingLogWriter, "record", _committed_at_once)],
    ),
    "chain-hash": (
        "rows written with a zero hash (SHA-256 of bodies, HMAC of content skipped)",
        [(storage.log_chain, "row_hash", lambda _key, _prev, _values, _row_id: bytes(32))],
    ),
    "body-compression": (
        "bodies stored as they came, uncompressed",
        [(storage.log_row, "stored_body", lambda body, cap: RAW_BODY + body[:cap] if body else None)],
    ),
    "location-cache": (
        "relayed location PUTs and PATCHes not applied to the Redis cache",
        [(hub.ocpi.functional_module, "_note_location", _nothing)],
    ),
    "owner-index": (
        "owners of pushed objects not noted in Redis for open routing",
        [(routing.open_routing, "note_seen", _nothing)],
    ),
    "metrics": (
        "no Prometheus counter or histogram updates",
        [(hub.ocpi.relay, "count_request", _nothing), (routing.forward, "observe_forward", _nothing)],
    ),
    "log-lines": (
        "no structlog context binding and no http_request line",
        [(structlog.contextvars, "bind_contextvars", _nothing), (hub.ocpi.relay, "log_request", _nothing)],
    ),
}


def switch_off(parts: list[str]) -> None:
    for part in parts:
        if part not in PARTS:
            raise SystemExit(f"bench.hub_without: no part {part!r}; the parts are {', '.join(PARTS)}")
        for owner, name, replacement in PARTS[part][1]:
            _replace(owner, name, replacement)


if __name__ == "__main__":
    # python -m bench.hub_without PART[,PART...] -- ARGUMENTS OF ocpi-hub
    if len(sys.argv) < 3 or sys.argv[2] != "--":
        raise SystemExit(__doc__)
    switch_off([part for part in sys.argv[1].split(",") if part])
    sys.exit(main(sys.argv[3:]))
