"""create_app(): the Litestar application and the lifespan that owns its pool, Redis client and HTTP client."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ipaddress
import os
import re
from collections.abc import AsyncIterator, Iterable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

import anyio
import structlog
from litestar import Litestar, Request, Response
from litestar.datastructures import State
from litestar.middleware import DefineMiddleware
from litestar.types import ASGIApp, Receive, Scope, Send

from hub import client_info, metrics
from hub.admin import endpoints
from hub.admin.actors import identify_admin_caller
from hub.admin.api import admin_router, render_admin_error
from hub.admin.checkpoint import log_checkpoints
from hub.auth import CredentialsTokenAuth
from hub.console import console_router, problem_page, template_config
from hub.console.headers import with_console_headers
from hub.envelope import ocpi_response, render_ocpi_error
from hub.errors import OUTAGES, ForwardingLoop, unavailable
from hub.logs import configure_logging
from hub.ocpi import credentials, credentials_log, versions
from hub.ocpi.relay import Relay
from hub.party_client import PartyClient
from hub.request_context import HUB_INSTANCE_HEADER, PROBE_PATHS, RequestContext
from hub.runtime import DATABASE_TIMEOUT_S, check_at_start, open_database, open_redis, stop_background_tasks
from hub.settings import Settings
from routing import owner_pull
from routing.fair_share import CallerShares
from routing.forward import open_session
from routing.party_addresses import ALLOWANCE, PartyAddresses, refused_urls
from routing.pull_sync import PullSync, run_scheduled
from routing.still_alive import StillAlive
from storage import partitions
from storage.departed import Departures
from storage.directory import DirectoryCache, Platform
from storage.location_cache import LocationCache
from storage.routing_log import RoutingLogWriter
from storage.routing_state import RoutingState
from storage.secrets import TokenBox
from storage.sql import QUERIES

if TYPE_CHECKING:
    import asyncpg

log = structlog.get_logger()

LAST_SEEN_FLUSH_S = 10.0
# At shutdown, after the requests in flight (up to 30 s): how long the last routing-log rows may take to commit
# before they are kept on disk instead. Ample for a database that answers; within the grace periods of deploy/.
LOG_DRAIN_S = 5.0
_WITHOUT_OCPI_TOKEN = ["^/admin/", "^/console", *(f"^{path}$" for path in sorted(PROBE_PATHS))]


class _ShieldedExits(contextlib.AsyncExitStack):
    """The lifespan's resources, closed in reverse order with their awaits shielded from cancellation, after the stop's
    first step (_stop_working, pushed last). uvicorn's forced quit (a second Ctrl-C while the hub stops) skips the app's
    shutdown, and the lifespan is cancelled instead, inside an anyio cancel scope that cancels every await again: the
    routing log's last rows were neither committed nor spooled, and the clients were left open ("Unclosed client
    session")."""

    async def __aexit__(self, *exc_details: Any) -> bool | None:
        with anyio.CancelScope(shield=True):
            suppressed = await super().__aexit__(*exc_details)
        return suppressed


async def _stop_working(state: State, relay: Relay, tasks: list[asyncio.Task[None]]) -> None:
    """The requests in flight are answered (uvicorn waited for them, unless it was forced to quit); what is left:
    broadcast copies, the last routing-log rows (or their spool file), the background loops, last_seen."""
    log.info("hub_stopping", pid=os.getpid())
    await relay.drain()
    await stop_background_tasks(tasks)
    try:
        await _write_last_seen(state)
    except OUTAGES as exc:  # a party's last_seen is a hint, not a record: not worth waiting for
        log.warning("last_seen_not_written", error=unavailable(exc))


async def _close_pool(pool: asyncpg.Pool) -> None:
    try:
        async with asyncio.timeout(DATABASE_TIMEOUT_S):  # closing talks to the server, which may not answer
            await pool.close()
    except TimeoutError:
        pool.terminate()


def create_app(settings: Settings | None = None) -> ASGIApp:
    """The hub as an ASGI app. Settings come from the environment unless given (the CLI resolves them first)."""
    settings = settings or Settings.from_env().with_secrets()
    database_url, redis_url = settings.database_url, settings.redis_url
    if not database_url or not redis_url:
        raise RuntimeError("create_app needs OCPI_HUB_DATABASE_URL and OCPI_HUB_REDIS_URL; `ocpi-hub serve` sets them")
    configure_logging(settings.log_level)

    @contextlib.asynccontextmanager
    async def resources(app: Litestar) -> AsyncIterator[None]:
        await check_at_start(settings)  # serve's checks, for an ASGI server that runs create_app itself
        pool = await open_database(database_url, max_size=10)
        redis_client = open_redis(redis_url)
        http = PartyClient(settings)
        forward_session = open_session(settings.forward_timeout_s, settings.party_keep_alive_s, http.party_addresses,
                                       settings.party_connections)  # fmt: skip
        token_box = TokenBox(settings.secret_key or "")
        directory = DirectoryCache(pool, redis_client, settings.redis_prefix, token_box)
        await directory.reload()
        _tell_party_address_policy(directory.current.platforms.values(), http.party_addresses)
        async with pool.acquire() as conn:
            created = await partitions.ensure_partitions(conn, settings.log_partitions_ahead)
        writer = RoutingLogWriter(
            pool,
            key=settings.routing_log_key,
            body_cap=settings.log_body_max_bytes,
            strict=settings.log_mode == "strict",
            commit_timeout_s=settings.forward_timeout_s,
            spool_dir=settings.data_dir / "routing-log-spool",
            drain_timeout_s=LOG_DRAIN_S,
        )
        writer.on_commit, writer.on_write_failed = metrics.routing_log_committed, metrics.routing_log_write_failed
        writer.on_waiting = metrics.routing_log_rows_waiting
        # both write only what names parties the directory holds on the platforms they were seen on: nothing brings a
        # departed party back, or gives its id's next platform what the old one sent
        locations = LocationCache(redis_client, settings.redis_prefix, directory, settings.max_locations_per_cpo,
                                      settings.max_location_bytes_per_cpo)  # fmt: skip
        routing = RoutingState(redis_client, settings.redis_prefix, settings.owner_index_period_s, directory)
        async with _ShieldedExits() as resources_open:  # closed last, once all that uses them has stopped
            resources_open.push_async_callback(_close_pool, pool)
            resources_open.push_async_callback(redis_client.aclose)
            resources_open.push_async_callback(http.aclose)
            resources_open.push_async_callback(forward_session.close)
            for running in (writer.running(), routing.running(), locations.updating()):
                await resources_open.enter_async_context(running)
            departures = Departures(pool, redis_client, settings.redis_prefix, routing, locations,
                                    settings.forward_timeout_s)  # fmt: skip
            app.state.update(
                pool=pool,
                redis=redis_client,
                http=http,
                directory=directory,
                token_box=token_box,
                forward_session=forward_session,
                forward_shares=CallerShares(settings.party_connections),
                routing_log=writer,
                routing=routing,
                locations=locations,
                departures=departures,
                location_sync_wake=asyncio.Event(),
            )
            hub_party = (settings.country_code, settings.party_id)
            app.state.still_alive = StillAlive(
                pool, redis_client, settings.redis_prefix, http, directory, hub_party, writer.record,
                settings.still_alive_s, settings.offline_probe_s,
            )  # fmt: skip
            relay.serve(app.state)
            sync = PullSync(http, app.state.locations, redis_client, settings.redis_prefix, hub_party, writer.record,
                            directory=lambda: directory.current)  # fmt: skip
            listings = (owner_pull.tokens(), owner_pull.sessions(settings.owner_index_period_s))
            pulls = [owner_pull.OwnerPull(listing, http, routing, redis_client, settings.redis_prefix, hub_party,
                                          writer.record, lambda: directory.current, settings.pull_page_limit)
                     for listing in listings]  # fmt: skip
            tasks = [
                asyncio.create_task(directory.watch(), name="directory_watch"),
                asyncio.create_task(_flush_last_seen(app.state), name="last_seen_flush"),
                asyncio.create_task(client_info.run_pushes(app.state), name="client_info_pushes"),
                asyncio.create_task(app.state.still_alive.run(), name="still_alive"),
                asyncio.create_task(endpoints.run_refreshes(app.state), name="endpoints_refresh"),
                asyncio.create_task(partitions.maintain(pool, settings.log_partitions_ahead), name="log_partitions"),
                asyncio.create_task(departures.run(), name="departed_parties"),
                asyncio.create_task(
                    run_scheduled(
                        sync,
                        lambda: directory.current,
                        app.state.location_sync_wake,
                        settings.sync_interval_s,
                        settings.sync_check_s,
                    ),
                    name="pull_sync",
                ),
                asyncio.create_task(
                    owner_pull.run_scheduled(pulls, settings.sync_check_s),
                    name="owner_pull",
                ),
                asyncio.create_task(log_checkpoints(pool, redis_client, settings), name="routing_log_checkpoints"),
            ]
            # the first step of the stop, before the resources it uses close (shielded as they are)
            resources_open.push_async_callback(_stop_working, app.state, relay, tasks)
            log.info(
                "hub_started",
                public_url=settings.public_url,
                platforms=len(directory.current.platforms),
                log_chain=str(writer.chain_id),
                pid=os.getpid(),  # a worker restarted after it died starts with a pid of its own
                partitions_created=created,
            )
            with _settled_garbage_collector():
                yield
        log.info("hub_stopped", pid=os.getpid())

    app = Litestar(
        route_handlers=[
            versions.versions,
            versions.version_details,
            *credentials.HANDLERS,
            client_info.list_client_infos,
            metrics.health,
            metrics.ready,
            metrics.metrics,
            admin_router(),
            *console_router(),
        ],
        state=State({"settings": settings, "last_seen": {}}),
        lifespan=[resources],
        middleware=[DefineMiddleware(CredentialsTokenAuth, exclude=_WITHOUT_OCPI_TOKEN)],
        exception_handlers={Exception: render_error},
        request_max_body_size=settings.max_body_bytes,
        openapi_config=None,
        template_config=template_config(),
        logging_config=None,
    )
    relay = Relay(settings)

    litestar = RequestContext(app, settings.hub_instance)
    own_mark = (HUB_INSTANCE_HEADER.encode(), settings.hub_instance.encode())

    async def dispatch(scope: Scope, receive: Receive, send: Send) -> None:
        # Functional modules take the relay's raw path; versions, credentials and admin go through Litestar.
        if scope["type"] == "http" and relay.handles(scope["path"]):
            await relay(scope, receive, send)  # type: ignore[arg-type]
        elif scope["type"] == "http" and _carries(scope["headers"], own_mark):
            await _came_back(scope, send, own_mark)
        elif scope["type"] == "http" and credentials_log.is_credentials(scope["path"]):
            await credentials_log.logged(litestar, app.state, scope, relay.bodies.guarded(receive), send)  # type: ignore[arg-type]
        elif scope["type"] == "http":
            routed = _as_routed(scope["path"])
            if routed.startswith("/admin/api"):
                await identify_admin_caller(app.state, scope)
            elif routed == "/console" or routed.startswith("/console/"):
                send = with_console_headers(routed, send)
            await litestar(scope, relay.bodies.guarded(receive), send)
        else:
            await litestar(scope, receive, send)

    return dispatch


def _tell_party_address_policy(platforms: Iterable[Platform], policy: PartyAddresses) -> None:
    """At start, each registered party URL at an address this hub does not call (an upgrade walkthrough started a new
    instance without the operator's allowance, and nothing it logged said why its forwards failed), and an allowance
    that lets parties reach what it is there to keep from them."""
    if any(net.prefixlen == 0 or (net.version == 4 and _METADATA in net) for net in policy.allowed):
        log.warning("party_networks_allowed_too_broad", setting=ALLOWANCE, allowed=[str(n) for n in policy.allowed],
                    why="it lets a party's URL reach a cloud's metadata service (169.254.169.254; fd00:ec2::254 within "
                    "::/0) or any address of the hub's network")  # fmt: skip
    for platform in platforms:
        urls = [u for u in (platform.versions_url, platform.version_url, *platform.endpoints.values()) if u]
        for url, why in refused_urls(dict.fromkeys(urls), policy) if platform.state == "REGISTERED" else ():
            log.error("party_address_not_allowed", platform=platform.name, url=url[:200], why=why, setting=ALLOWANCE)


_METADATA = ipaddress.ip_address("169.254.169.254")


def _carries(headers: Iterable[tuple[bytes, bytes]], own_mark: tuple[bytes, bytes]) -> bool:
    """Whether the hub's mark is among those of the hubs a request passed (hub.request_context.hubs_passed)."""
    name, mark = own_mark
    return any(n == name and mark in value for n, value in headers)


async def _came_back(scope: Scope, send: Send, own_mark: tuple[bytes, bytes]) -> None:
    """A request the hub sent that reached one of its own pages (/metrics, the admin API, the console, versions,
    credentials): a party's URL leads to the hub under an address of its own the address policy does not know (a
    host name, an interface's address). Refused, so that nothing of the hub is fetched and relayed to a party; the
    answer carries the mark, so that the control plane says the URL is the hub's own (hub.party_api)."""
    log.warning("request_came_back", path=scope["path"][:200])
    body = bytes(ocpi_response(None, status_code=4000, message=ForwardingLoop().message).content)
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)), own_mark]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def render_error(request: Request, exc: Exception) -> Response[Any]:
    """Every error the hub's Litestar side raises, in the shape of the part its path belongs to: a page of the
    console, the admin API's JSON, an OCPI envelope everywhere else. One handler for the whole app, by path: Litestar
    raises a wrong URL's 404 or a wrong method's 405 before any router is chosen, and a router's own handlers never
    see those."""
    path = _as_routed(request.scope["path"])
    if path == "/console" or path.startswith("/console/"):
        return problem_page(request, exc)
    if path.startswith("/admin/"):
        return render_admin_error(request, exc)
    return render_ocpi_error(request, exc)


def _as_routed(path: str) -> str:
    """A path as Litestar routes it: "//admin/api/parties" reaches the admin API too."""
    return _SLASHES.sub("/", path)


_SLASHES = re.compile("/{2,}")


@contextlib.contextmanager
def _settled_garbage_collector() -> Iterator[None]:
    """What start-up built (the app, its routes, imported modules: about 100,000 objects) lives as long as the
    process: frozen out of the collector's reach, so a full collection no longer scans it while requests wait
    (measured under load: 120 ms pauses, 4 in 10 s). Requests allocate many short-lived objects that reference
    counting frees; collecting the youngest generation every 10,000 rather than 700 allocations finds the same
    cycles at a fraction of the cost (Python 3.13 raised its own default for the same reason)."""
    thresholds = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)
    try:
        yield
    finally:  # an app stopped inside a longer-lived process (tests, the demo) leaves it as it was
        gc.set_threshold(*thresholds)
        gc.unfreeze()


async def _flush_last_seen(state: State) -> None:
    """last_seen is kept in memory per request and written in one batch every few seconds."""
    while True:
        await asyncio.sleep(LAST_SEEN_FLUSH_S)
        try:
            await _write_last_seen(state)
        except Exception as exc:
            log.warning("last_seen_flush_failed", error=str(exc))


async def _write_last_seen(state: State) -> None:
    seen: dict[int, datetime] = state.last_seen
    if not seen:
        return
    batch = dict(seen)
    seen.clear()
    async with state.pool.acquire() as conn:
        await conn.execute(QUERIES["touch_platforms"], list(batch), list(batch.values()))
