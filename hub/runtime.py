"""What the hub runs on: the configured PostgreSQL and Redis, or embedded ones started under the data dir."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import replace

import asyncpg
import redis.asyncio as redis
import structlog
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from hub.data_dir_serves import CommandRecord, ServeRecord, command_recorded
from hub.settings import Settings
from storage.embedded import EmbeddedPostgres, EmbeddedValkey
from storage.embedded.server import EmbeddedServer
from storage.migrate import MigrationRefused, check_secret_key, migrate, migration_files, pending
from storage.secret_key_check import check_recorded_key

log = structlog.get_logger()


@contextlib.contextmanager
def backing_services(settings: Settings, serve: ServeRecord | None = None) -> Iterator[Settings]:
    """Settings whose database and Redis URLs point at running servers. Embedded ones stop with the last serve or
    command on the data dir to end, whichever started them (serve: this one's record there; else this command's,
    hub.data_dir_serves.command_recorded)."""
    with contextlib.ExitStack() as stack:
        database_url, redis_url = settings.database_url, settings.redis_url
        # a command is recorded on the data dir before it starts or reuses them, as a serve is (serve_recorded)
        command = (
            None
            if serve is not None or (database_url and redis_url)
            else stack.enter_context(command_recorded(settings.data_dir))
        )
        if not database_url:
            postgres = EmbeddedPostgres(settings.data_dir)
            database_url = postgres.start()
            _stopped_on_exit(postgres, serve, command)
        if not redis_url:
            valkey = EmbeddedValkey(settings.data_dir)
            redis_url = valkey.start()
            _stopped_on_exit(valkey, serve, command)
        yield replace(settings, database_url=database_url, redis_url=redis_url)


def _stopped_on_exit(server: EmbeddedServer, serve: ServeRecord | None, command: CommandRecord | None) -> None:
    if serve is not None:
        serve.last_out.callback(server.stop, whoever_started_it=True)
    elif command is not None:
        command.servers.append(server)


REDIS_TIMEOUT_S = 5.0  # connecting to Redis, and each read of an answer
# Connecting to PostgreSQL, and each statement of the hub's own pool unless it says otherwise (the auditor's
# searches, exports and verifications do): what a party's request waits at most for a server that stopped answering.
DATABASE_TIMEOUT_S = 10.0
AUDIT_QUERY_TIMEOUT_S = 300.0  # one fetch of an auditor's export or verification: a big log takes a while


async def open_database(database_url: str, max_size: int) -> asyncpg.Pool:
    """The hub's PostgreSQL pool. asyncpg waits 60 s to connect and for ever for an answer by default: a server
    that stopped answering without closing anything (frozen, a stalled disk, a lost network) would hold every
    request that needs it."""
    return await asyncpg.create_pool(database_url, min_size=1, max_size=max_size, timeout=DATABASE_TIMEOUT_S,
                                     command_timeout=DATABASE_TIMEOUT_S)  # fmt: skip


def open_redis(redis_url: str) -> redis.Redis:
    """The hub's Redis client. Redis answers in well under a millisecond: one that takes seconds is away, and
    nothing the hub does must wait on it for longer.

    A command that finds its pooled connection broken (Redis restarted or failed over since the connection was last
    used) is sent once more on a new connection: without that, every idle connection in the pool failed one request
    with 4000 after Redis was back. Only a broken connection is retried, never a timeout (a hung Redis costs a request
    REDIS_TIMEOUT_S once, not twice). What the hub sends may run twice when the first try ran and only its answer
    was lost: SET, ZADD, SADD and HSET of the same values and its scripts come to the same; a second INCR or PUBLISH
    of the directory's generation costs a reload; a SET NX that ran reads as not taken, which skips one probe or
    pull sync until its lock expires."""
    return redis.Redis.from_url(
        redis_url,
        socket_connect_timeout=REDIS_TIMEOUT_S,
        socket_timeout=REDIS_TIMEOUT_S,
        retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
    )


async def check_redis(redis_url: str, serving: bool = False) -> None:
    """Fail at start with a clear message rather than on the first request; for a hub about to serve, warn of a Redis
    that evicts keys."""
    client = open_redis(redis_url)
    try:
        await client.ping()
        if serving:
            await warn_of_eviction(client)
    finally:
        await client.aclose()


# What a Redis at its maxmemory drops, by its maxmemory-policy's first word: every policy but noeviction evicts
_EVICTED = {
    "allkeys": "any key: cached locations while the marks saying a CPO's cache is whole stay (a GET All via the hub "
    "then misses them), the owner index open routing finds receivers by, command results and paging links",
    "volatile": "keys with an expiry before their time: command results, paging links and GET All snapshots, the owner "
    "index open routing finds receivers by, the claims that give each probe and pull sync to one hub",
}


async def warn_of_eviction(client: redis.Redis) -> None:
    """Warn (redis_eviction_policy) when Redis evicts keys at its maxmemory: the hub keeps the location cache, and the
    marks saying it is whole, in Redis on the understanding that nothing drops a key but the hub. Said, not refused: a
    managed Redis may not let the operator change it. Nor is a Redis that does not show its configuration refused
    (CONFIG, disabled or renamed on most managed Redis, or left out of the hub's user's ACL): said at info."""
    try:
        config = await client.config_get("maxmemory*")  # one pattern: Redis before 7 takes no list of names
    except redis.RedisError as exc:
        log.info("redis_eviction_policy_unknown", error=str(exc),
                 message="could not read Redis's maxmemory-policy (CONFIG GET): keep it at noeviction "
                 "(deploy/README.md, Scaling, says why)")  # fmt: skip
        return
    policy, limit = config.get("maxmemory-policy") or "noeviction", config.get("maxmemory") or "0"
    maxmemory = int(limit) if limit.isdigit() else 0
    if policy == "noeviction" or not maxmemory:  # without a maxmemory, Redis evicts nothing whatever its policy
        return
    evicted = _EVICTED.get(policy.split("-")[0], _EVICTED["allkeys"])
    log.warning("redis_eviction_policy", policy=policy, maxmemory=maxmemory,
                message=f"Redis evicts keys at its maxmemory ({maxmemory} bytes) with maxmemory-policy {policy}: it "
                f"can drop {evicted}; set maxmemory-policy noeviction and size Redis by the caps per CPO "
                "(deploy/README.md, Scaling)")  # fmt: skip


async def migrate_database(database_url: str, secret_key: str, apply: bool, key_source: str) -> list[str]:
    """The migrations applied now (apply: serve, demo and migrate), or, for any other command, MigrationRefused when
    some are pending: a migration may change what running hubs of the previous version can write, so it is applied
    as deploy/README.md says, never by the way. Either way MigrationRefused for another secret key than the hub's
    (key_source: where it came from), which the stored party tokens or the database's record of the key tell (and, at
    the migration that records it, what the database holds keyed: storage.secret_key_witnesses)."""
    conn = await asyncpg.connect(database_url)
    try:
        if apply:
            applied = await migrate(conn, secret_key, key_source)
        elif waiting := await pending(conn):
            if len(waiting) == len(migration_files()):
                raise MigrationRefused("the database holds no hub yet: run ocpi-hub migrate (or serve) first")
            raise MigrationRefused(
                f"the database lacks migration {', '.join(waiting)}; this command applies none: run ocpi-hub migrate "
                "first (see deploy/README.md, Upgrades: whether the running hubs must be stopped for it)"
            )
        else:
            applied = []
        await check_secret_key(conn, secret_key, "this command would misread the routing log's hashes and the tokens")
        await check_recorded_key(conn, secret_key, key_source)
        return applied
    finally:
        await conn.close()


async def check_at_start(settings: Settings) -> None:
    """What `ocpi-hub serve` and demo check before they start the hub (hub.cli), for a hub an ASGI server runs on
    hub.app:create_app itself (uvicorn --factory, granian): the schema up to date and the secret key the database's,
    as every command beside serve finds them (MigrationRefused otherwise: migrations stay `ocpi-hub migrate`'s to
    apply); Redis answering, and a warning of one that evicts keys. Nothing when the command checked them
    (Settings.start_checked): once per start, not once more per worker."""
    if settings.start_checked:
        return
    try:
        await migrate_database(settings.database_url or "", settings.secret_key or "", False,
                               settings.secret_key_source)  # fmt: skip
    except MigrationRefused as exc:  # the ASGI server says the start failed, with a traceback: this line says why
        log.error("hub_not_started", error=str(exc))
        raise
    await check_redis(settings.redis_url or "", serving=True)


async def stop_background_tasks(tasks: Iterable[asyncio.Task[None]], recancel_after_s: float = 0.5) -> None:
    """Cancel the lifespan's background tasks and wait until every one has ended. A cancel can be lost inside a
    client library (redis-py's asyncio client drops one that lands in a pipeline, redis/redis-py#2028): a task
    still running after a moment is cancelled again, so shutdown never waits forever on one."""
    pending = set(tasks)
    for task in pending:
        task.cancel()
    while pending:
        done, pending = await asyncio.wait(pending, timeout=recancel_after_s)
        for task in done:
            if not task.cancelled() and (error := task.exception()) is not None:
                log.error("background_task_failed", task=task.get_name(), error=repr(error))
        for task in pending:
            log.warning("background_task_ignored_a_cancel", task=task.get_name())
            task.cancel()
