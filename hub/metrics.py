"""Prometheus metrics: what the hub counts, and the /metrics, /health and /ready endpoints that operators scrape.

With several workers (`ocpi-hub serve --workers N`) each worker is a process of its own: the CLI points
PROMETHEUS_MULTIPROC_DIR at a folder of that serve's own (hub.metrics_dir), and /metrics, whichever worker answers it,
sums them all. Party statuses are read from the directory at scrape time, so they are the same whichever worker answers.
"""

from __future__ import annotations

import asyncio
import hmac
import os
from collections.abc import Iterator

import msgspec
from litestar import Request, Response, get
from litestar.datastructures import State
from litestar.exceptions import NotFoundException
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from hub.admin.actors import bearer_token
from storage.migrate import pending

MODULES = frozenset(("cdrs", "chargingprofiles", "commands", "locations", "sessions", "tariffs", "tokens",
                     "hubclientinfo", "versions"))  # fmt: skip
METHODS = frozenset(("GET", "POST", "PUT", "PATCH", "DELETE"))

REQUESTS = Counter(
    "ocpi_hub_requests", "Functional requests the hub received, by module, method, routing kind and OCPI status",
    ["module", "method", "routing", "ocpi_status"],
)  # fmt: skip
FORWARD_SECONDS = Histogram(
    "ocpi_hub_forward_duration_seconds", "Time a receiving party took to answer a forwarded request", ["receiver"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)  # fmt: skip
CONNECTION_WAITS = Histogram(
    "ocpi_hub_connection_wait_seconds",
    "Time a request waited for a connection to its receiver's server (routing.fair_share), by what it waited for "
    "(caller_share: its platform had half the connections there in flight; connections: none was free for it) and "
    "whether it was then forwarded or answered 4000, not forwarded",
    ["waited_for", "result"], buckets=(0.005, 0.025, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30),
)  # fmt: skip
LOG_BATCH_ROWS = Histogram(
    "ocpi_hub_routing_log_batch_rows", "Rows per routing-log group commit",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)  # fmt: skip
LOG_COMMIT_SECONDS = Histogram(
    "ocpi_hub_routing_log_commit_seconds", "Time of one routing-log group commit",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)  # fmt: skip
LOG_WRITE_FAILURES = Counter(
    "ocpi_hub_routing_log_write_failures", "Routing-log group commits that failed, by kind (retried: PostgreSQL away, "
    "too slow or its connection lost, the batch written again, in strict mode its callers answered 4000 once the "
    "commit timeout passes; refused: a value the database will never take, the batch written again row by row, a "
    "refused row without its bodies)", ["kind"],
)  # fmt: skip
for _kind in ("retried", "refused"):  # exported at 0 from the start: an alert's increase() sees the first failure
    LOG_WRITE_FAILURES.labels(_kind)
LOG_ROWS_WAITING = Gauge(
    "ocpi_hub_routing_log_rows_waiting", "Routing-log rows and amendments the hub accepted and has not committed: "
    "queued for its writer, or in a write that failed and is retried; as of each writer's last commit or failed write, "
    "summed over the workers. In async mode a worker's callers wait for their commit from 20,000 on (storage."
    "routing_log.MAX_QUEUED_ROWS)", multiprocess_mode="livesum",
)  # fmt: skip
LOCATION_CACHE_LOST = Counter(
    "ocpi_hub_location_cache_lost", "CPOs whose location cache this hub process saw synced, then found without its "
    "sync mark: Redis lost its data (restart without persistence, FLUSHALL, failover to an empty replica)",
)  # fmt: skip
CACHE_REQUESTS = Counter(
    "ocpi_hub_location_cache_requests", "Location requests answered from the cache (hit) or not found there (miss); "
    "GET Alls not answered from it as a CPO's cache is over its cap (over_cap: forwarded to the CPO, or refused) or "
    "not synced yet (not_synced: new, or Redis lost its data)",
    ["result"],
)  # fmt: skip
LOCATIONS_OVER_CAP = Counter(
    "ocpi_hub_location_cache_over_cap", "Locations not cached as their CPO's cache holds its cap (storage."
    "location_cap), by CPO and cap: locations (OCPI_HUB_MAX_LOCATIONS_PER_CPO) or bytes (OCPI_HUB_MAX_LOCATION_BYTES_"
    "PER_CPO: a new one refused, or a cached one an update grew past it dropped)", ["party", "cap"],
)  # fmt: skip
HUB_URLS_SPENT = Counter(
    "ocpi_hub_hub_urls_spent", "Requests answered 4000 as their platform was handed OCPI_HUB_KEPT_URL_BYTES_PER_DAY "
    "of hub URLs that UTC day (storage.routing_state), by calling party and kind (pages: a page's Link not relayed; "
    "results: a request with a response_url not forwarded)", ["party", "kind"],
)  # fmt: skip
OWNER_PULLS = Counter(
    "ocpi_hub_owner_pull", "Pulls of a party's list (module: tokens of an eMSP, sessions of a CPO) into the owner "
    "index (routing.owner_pull), by result (ok, failed, stopped: the party left the hub, or the pull lost its lock in "
    "Redis, meanwhile)",
    ["module", "result"],
)  # fmt: skip
OWNERS_PULLED = Counter("ocpi_hub_owner_pull_objects", "Objects read from parties' Senders by owner pulls", ["module"])
OWNER_INDEX_LOST = Counter(
    "ocpi_hub_owner_index_lost", "Parties whose list this hub process saw pulled into the owner index, then found "
    "without its mark: Redis lost its data (restart without persistence, FLUSHALL, failover to an empty replica)",
    ["module"],
)  # fmt: skip
LOCATION_SYNCS = Counter(
    "ocpi_hub_location_sync", "Pull syncs of a CPO's locations, by result and kind (full, incremental, rebuild)",
    ["result", "kind"],
)  # fmt: skip
CLIENT_INFO_PUSHES = Counter(
    "ocpi_hub_client_info_pushes", "ClientInfo pushes to parties' hubclientinfo Receivers (hub.client_info), by result "
    "(taken: HTTP 2xx with OCPI 1xxx; refused: any other answer; unanswered: timed out, not connected or not "
    "readable). A push not taken is pushed again, as the role is then, at a later round",
    ["result"],
)  # fmt: skip


# status_codes.asciidoc: the codes the spec defines, and the ranges it reserves for custom codes (19xx, 29xx, 39xx,
# 49xx), each counted under its range. Any other code a receiver answers is "other": a party must not be able to grow
# the metrics without bound by answering made-up codes (the routing log keeps the code itself).
_SPEC_STATUS_CODES = (1000, 2000, 2001, 2002, 2003, 2004, 3000, 3001, 3002, 3003, 4000, 4001, 4002, 4003)
_STATUS_LABELS: dict[int | None, str] = (
    {code: f"{code // 100}xx" for first in (1900, 2900, 3900, 4900) for code in range(first, first + 100)}
    | {code: str(code) for code in _SPEC_STATUS_CODES}
    | {None: "none"}
)
# Children by label values, looked up once: labels() takes a lock and checks its arguments on every call.
_request_counters: dict[tuple[str, str, str, str], Counter] = {}
_forward_histograms: dict[str, Histogram] = {}
_wait_histograms: dict[tuple[str, str], Histogram] = {}


def count_request(module: str, method: str, routing: str, ocpi_status: int | None) -> None:
    # Module names and methods come from the caller, OCPI status codes from the receiver: unknown ones are folded
    # into "other" so that they cannot grow the label set.
    labels = (module if module in MODULES else "other", method if method in METHODS else "other", routing,
              _STATUS_LABELS.get(ocpi_status, "other"))  # fmt: skip
    if (counter := _request_counters.get(labels)) is None:
        counter = _request_counters[labels] = REQUESTS.labels(*labels)
    counter.inc()


def observe_forward(receiver: str, seconds: float) -> None:
    if (histogram := _forward_histograms.get(receiver)) is None:
        histogram = _forward_histograms[receiver] = FORWARD_SECONDS.labels(receiver)  # one per connected party
    histogram.observe(seconds)


def observe_connection_wait(waited_for: str, forwarded: bool, seconds: float) -> None:
    labels = (waited_for, "forwarded" if forwarded else "not_forwarded")
    if (histogram := _wait_histograms.get(labels)) is None:
        histogram = _wait_histograms[labels] = CONNECTION_WAITS.labels(*labels)  # four at most
    histogram.observe(seconds)


def routing_log_committed(rows: int, seconds: float) -> None:
    LOG_BATCH_ROWS.observe(rows)
    LOG_COMMIT_SECONDS.observe(seconds)


def routing_log_write_failed(kind: str) -> None:
    LOG_WRITE_FAILURES.labels(kind).inc()


def routing_log_rows_waiting(rows: int) -> None:
    LOG_ROWS_WAITING.set(rows)


class PartyStatusCollector(Collector):
    """ocpi_hub_party_status{party, role, status, suspended} = 1 for every role the hub knows, from the directory:
    suspended "true" for the roles of a platform the operator suspended (hub.admin.suspension), OFFLINE on purpose."""

    def __init__(self, state: State) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("ocpi_hub_party_status", "Status of each connected role (1 = current status)",
                                   labels=["party", "role", "status", "suspended"])  # fmt: skip
        for platform in self.state.directory.current.platforms.values():
            suspended = "true" if platform.state == "SUSPENDED" else "false"
            for role in platform.roles:
                family.add_metric([f"{role.country_code}-{role.party_id}", role.role, role.status, suspended], 1)
        yield family


def _registry(state: State) -> CollectorRegistry:
    """The registry /metrics renders: every worker's files with several workers, else this process's counters."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    registry.register(PartyStatusCollector(state))
    return registry


@get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response[bytes]:
    if request.scope.get("raw_path", b"/metrics") != b"/metrics":
        # only as written: a proxy that keeps /metrics off the public port (deploy/Caddyfile) matches that path, and
        # Litestar would serve //metrics or /%6detrics here as well
        raise NotFoundException()
    if (token := request.app.state.settings.metrics_token) is not None:
        given = bearer_token(request.headers.get("authorization"))
        if given is None or not hmac.compare_digest(given.encode(), token.encode()):
            return Response(b"/metrics needs the bearer token of OCPI_HUB_METRICS_TOKEN\n", status_code=401,
                            media_type="text/plain", headers={"WWW-Authenticate": "Bearer"})  # fmt: skip
    registry = request.app.state.get("metrics_registry")
    if registry is None:
        registry = request.app.state.metrics_registry = _registry(request.app.state)
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


@get("/health", include_in_schema=False)
async def health() -> Response[bytes]:
    """The process is up and serving (liveness); says nothing about PostgreSQL or Redis."""
    return Response(b'{"status":"up"}', media_type="application/json")


READY_TIMEOUT_S = 2.0
_json = msgspec.json.Encoder()


@get("/ready", include_in_schema=False)
async def ready(request: Request) -> Response[bytes]:
    """PostgreSQL and Redis answer and every migration is applied (readiness): 503 naming what is not."""
    state = request.app.state
    problems: list[str] = []
    conn = None
    try:
        async with asyncio.timeout(READY_TIMEOUT_S):
            conn = await state.pool.acquire()
            if missing := await pending(conn):
                problems.append(f"migrations not applied: {', '.join(missing)}")
    except Exception as exc:
        problems.append(f"PostgreSQL unreachable: {type(exc).__name__}: {exc}".rstrip(": "))
        if conn is not None:  # given back as it is, its reset would wait on a server that stopped answering (10 s)
            conn.terminate()
    finally:
        if conn is not None:
            await state.pool.release(conn)
    try:
        async with asyncio.timeout(READY_TIMEOUT_S):
            await state.redis.ping()
    except Exception as exc:
        problems.append(f"Redis unreachable: {type(exc).__name__}: {exc}".rstrip(": "))
    if problems:
        return Response(_json.encode({"status": "not ready", "problems": problems}), status_code=503,
                        media_type="application/json")  # fmt: skip
    return Response(b'{"status":"ready"}', media_type="application/json")
