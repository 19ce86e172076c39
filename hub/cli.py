"""The `ocpi-hub` command: its backing services; arguments in hub.cli_args, serving in hub.serve, one-offs in
hub.cli_commands and hub.cli_audit."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import signal
import socket
import sys
from collections.abc import Coroutine, Iterator
from pathlib import Path
from types import FrameType
from typing import TypeVar

import asyncpg
import redis.asyncio as redis
import structlog

from hub.cli_args import build_parser, keep_joined, version
from hub.cli_audit import AUDIT_COMMANDS
from hub.cli_commands import COMMANDS, run
from hub.cli_output import OUTPUT_FAILED, OutputError, out
from hub.data_dir_serves import Serve, hub_url, running_serves, serve_recorded
from hub.logs import configure_logging
from hub.serve import STOPS_ASKED, serve
from hub.settings import Settings, SettingsError

T = TypeVar("T")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(keep_joined(sys.argv[1:] if argv is None else argv))
    if args.command == "version":
        return _written(version())
    if args.command == "verify-export":  # an auditor's machine: no settings, no database, no secret
        from hub.export_manifest import verify_export

        return verify_export(Path(args.file), Path(args.manifest) if args.manifest else None, args.public_key)
    if args.command == "verify-checkpoint":  # as verify-export
        from hub.checkpoint import verify_checkpoint

        return verify_checkpoint(Path(args.file), args.public_key)
    listening = None
    if args.command in ("serve", "demo"):  # the port first: one in use fails at once, before anything starts
        try:
            listening = _listen(args.host, args.port)
        except OSError as exc:
            print(f"ocpi-hub: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
            return 1
        args.port = listening.getsockname()[1]  # --port 0: the free port the system gave
        if args.command == "serve":  # uvicorn or granian binds it again itself, in this process or in its workers
            listening.close()
            listening = None
    try:
        with _stops_of_serve() if args.command == "serve" else contextlib.nullcontext():
            return _main(args, listening)
    except KeyboardInterrupt:
        if args.command != "serve":
            raise
        return 0  # a stop asked for, before serving began
    finally:
        if listening is not None:
            listening.close()


@contextlib.contextmanager
def _stops_of_serve() -> Iterator[None]:
    # Until uvicorn or granian takes the signal over, SIGTERM stops serve as Ctrl-C does, through the stops of what it
    # started: it killed serve outright, leaving running the embedded PostgreSQL it was migrating.
    for stop in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop, stop_asked)
    try:
        yield
    finally:
        # Stopped by now. A stop asked for again (a second Ctrl-C, an orchestrator repeating its SIGTERM) finds nothing
        # left to stop, yet while Python finalizes, which puts back the default of every signal it handled, it killed
        # serve: exit -15 after a clean stop. Ignored signals are left ignored.
        for stop in (signal.SIGTERM, signal.SIGINT):
            signal.signal(stop, signal.SIG_IGN)


def stop_asked(signum: int, frame: FrameType | None) -> None:
    """SIGTERM (and Ctrl-C's SIGINT) before serve's server takes the signals over: a KeyboardInterrupt, as Ctrl-C, and
    kept in hub.serve.STOPS_ASKED, in case it was raised where Python ignores it (a finalizer). While serve migrates
    or checks Redis (run_until_stopped), its task cancelled instead."""
    STOPS_ASKED.append(signum)
    if (task := _running.task) is not None:
        if not _running.told:  # a second stop would cut the first one's unwinding short
            _running.told = True
            task.get_loop().call_soon_threadsafe(_cancelled_until_done, task)
        return
    raise KeyboardInterrupt


class _Running:
    """The task run_until_stopped runs, while it runs, and whether a stop was asked for meanwhile."""

    task: asyncio.Task[object] | None = None
    told = False


_running = _Running()


# What a cancelled task awaits may not end: with PostgreSQL frozen, the cancel asyncpg sends it and the close of the
# connection wait for ever, and so did serve, SIGTERM or not. Cancelled again after this long, the connection is
# dropped (PostgreSQL rolls the migration back once it runs again).
UNWINDING_S = 2.0


def _cancelled_until_done(task: asyncio.Task[object]) -> None:
    """As asyncio.run on Ctrl-C: cancelled, what it awaits unwinds (a migration's transaction rolled back, its
    connection closed), then KeyboardInterrupt; cancelled again every UNWINDING_S until it has."""
    if not task.done():
        task.cancel()
        task.get_loop().call_later(UNWINDING_S, _cancelled_until_done, task)


def run_until_stopped(main: Coroutine[object, object, T]) -> T:
    """asyncio.run(main), which a stop asked for cancels (stop_asked), then KeyboardInterrupt. A stop's
    KeyboardInterrupt raised wherever the loop was broke what it was in the middle of: raised in asyncpg's reading of
    an answer, it left serve waiting for ever for the answer it had read, or failing with a ValueError out of asyncpg
    (seen on CI, 20 s without an exit)."""

    async def stoppable() -> T:
        _running.task, _running.told = asyncio.current_task(), False
        try:
            return await main
        finally:
            _running.task = None

    stops = len(STOPS_ASKED)
    try:
        done = asyncio.run(stoppable())
    except asyncio.CancelledError:
        if len(STOPS_ASKED) == stops:
            raise
        raise KeyboardInterrupt from None
    if len(STOPS_ASKED) > stops:  # asked for as it finished: stopped all the same
        raise KeyboardInterrupt
    return done


def _written(text: str) -> int:
    try:
        out(text)
    except OutputError as exc:
        print(f"ocpi-hub: {exc}", file=sys.stderr)
        return OUTPUT_FAILED
    return 0


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


def _main(args: argparse.Namespace, listening: socket.socket | None) -> int:
    try:
        port = getattr(args, "port", 8080)
        env = dict(os.environ)
        if args.command == "demo":  # the demo's data stays apart from a real hub's ./.ocpi-hub
            env.setdefault("OCPI_HUB_DATA_DIR", ".ocpi-hub-demo")
            env.setdefault("OCPI_HUB_LOG_LEVEL", "warning")
            # the demo's parties listen on 127.0.0.1, which a hub does not call parties at unless allowed
            env.setdefault("OCPI_HUB_PARTY_NETWORKS_ALLOWED", "127.0.0.0/8,::1/128")
        settings = Settings.from_env(env, host=getattr(args, "host", "127.0.0.1"), port=port)
        # its own log level: a command beside serve says what it takes from the serve's settings (not the log level)
        configure_logging(settings.log_level, sys.stdout if args.command == "serve" else sys.stderr)
        if args.command in ("serve", "demo"):
            settings = dataclasses.replace(settings, listen=(args.host, port))
        else:
            settings = _of_the_running_hub(settings, env, args.command, getattr(args, "grant_serving_role", None))
        settings = settings.with_secrets()
    except SettingsError as exc:
        print(f"ocpi-hub: configuration error: {exc}", file=sys.stderr)
        return 2
    from hub.runtime import backing_services, check_redis, migrate_database
    from storage.embedded import EmbeddedServiceError
    from storage.migrate import MigrationRefused

    try:
        with contextlib.ExitStack() as stack:
            # a serve is recorded on its data dir before it starts or reuses the embedded servers there, which the
            # last serve to stop there stops (hub.data_dir_serves)
            serving = (
                stack.enter_context(serve_recorded(settings.data_dir, settings.public_url, env))
                if args.command == "serve"
                else None
            )
            ready = stack.enter_context(backing_services(settings, serving))
            assert ready.database_url is not None
            owner_url = ready.owner_database_url or ready.database_url  # migrations and retention run as the owner
            applies = args.command in ("serve", "demo", "migrate")
            applied = run_until_stopped(migrate_database(owner_url, settings.secret_key or "", applies,
                                                         settings.secret_key_source))  # fmt: skip
            if args.command in OWNER_COMMANDS:
                ready = dataclasses.replace(ready, database_url=owner_url)
            run_until_stopped(check_redis(ready.redis_url or "", serving=args.command in ("serve", "demo")))
            ready = dataclasses.replace(ready, start_checked=True)  # the hub's lifespan checks none of it again
            if args.command == "migrate":
                out(_migrated(applied))
                args.role = args.grant_serving_role
                return run(COMMANDS["grant-serving-role"], ready, args) if args.role is not None else 0
            if serving is not None:
                return serve(ready, args.host, args.port, args.workers, args.server, serving.others)
            if listening is not None:
                return _demo(ready, args, listening)
            command = COMMANDS.get(args.command) or AUDIT_COMMANDS.get(args.command)
            return run(command, ready, args) if command else 0
    except OutputError as exc:
        print(f"ocpi-hub: {exc}", file=sys.stderr)
        return OUTPUT_FAILED
    except (EmbeddedServiceError, MigrationRefused) as exc:
        print(f"ocpi-hub: {exc}", file=sys.stderr)
        return 1
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"ocpi-hub: {_database_problem(exc, args.command, settings)}", file=sys.stderr)
        return 1
    except redis.RedisError as exc:
        print(f"ocpi-hub: cannot use Redis (OCPI_HUB_REDIS_URL): {exc}", file=sys.stderr)
        return 1


# The commands that connect as the owner of the hub's tables when OCPI_HUB_OWNER_DATABASE_URL is set
OWNER_COMMANDS = ("migrate", "retention", "grant-serving-role")


def _database_problem(exc: OSError | asyncpg.PostgresError, command: str, settings: Settings) -> str:
    owners = settings.owner_database_url and command in OWNER_COMMANDS
    setting = "OCPI_HUB_OWNER_DATABASE_URL" if owners else "OCPI_HUB_DATABASE_URL"
    if not isinstance(exc, asyncpg.InsufficientPrivilegeError):
        return f"cannot use the database ({setting}): {exc}"
    return (
        f"{exc}: the role of {setting} may not; migrate, retention and grant-serving-role run as the owner of the "
        "hub's tables (OCPI_HUB_OWNER_DATABASE_URL), the others as a role it granted (ocpi-hub grant-serving-role)"
    )


def _migrated(applied: list[str]) -> str:
    """What `ocpi-hub migrate` did, on stdout: a deploy script's output shows that it ran, and where the schema is."""
    from storage.migrate import migration_files

    done = f"applied {', '.join(applied)}" if applied else "no migration was pending"
    return f"ocpi-hub: {done}; the database is up to date at migration {migration_files()[-1][1]}"


def _of_the_running_hub(settings: Settings, env: dict[str, str], command: str, grant: str | None) -> Settings:
    """The settings of a command that works beside `ocpi-hub serve` (invite, sync, verify, connect...): that hub's
    storage, which it does not create (run elsewhere, it would start a new embedded PostgreSQL of its own and hand
    out tokens of a hub that is not running), and the URL and settings of the serve started last still running on
    the data dir, for those its own environment does not set (hub.data_dir_serves.HANDED_ON); with none running, the
    URL of the last that ran there, unless OCPI_HUB_PUBLIC_URL names one (an invitation's versions_url, the URL connect
    gives the party)."""
    from storage.embedded.postgres import EmbeddedPostgres

    embedded = settings.database_url is None and EmbeddedPostgres.not_installed is None  # else start() says why not
    if embedded and not (EmbeddedPostgres(settings.data_dir).pgdata / "PG_VERSION").is_file():
        raise SettingsError(
            f"`ocpi-hub {command}` found no hub in {settings.data_dir} (no embedded PostgreSQL there, and "
            "OCPI_HUB_DATABASE_URL is not set): run it in the directory `ocpi-hub serve` runs in, or set "
            "OCPI_HUB_DATA_DIR, or the database and Redis URLs, to the running hub's"
        )
    makes_key = command == "migrate" and grant is None  # a new hub's; a grant's audit-trail entry needs the hub's key
    if not makes_key and settings.secret_key is None and not (settings.data_dir / "secret.key").is_file():
        # One made here would not be the hub's: refused once a party's token is stored, but until then (the first
        # invitations) it would key the audit-trail entries the command writes, which verify then finds changed.
        raise SettingsError(
            f"`ocpi-hub {command}` has no secret key: OCPI_HUB_SECRET_KEY is not set and {settings.data_dir} holds no "
            "secret.key: set OCPI_HUB_SECRET_KEY to the hub's, or run it in the directory `ocpi-hub serve` runs in "
            "(or with its OCPI_HUB_DATA_DIR)"
        )
    if running := running_serves(settings.data_dir):
        return _of_the_serve(env, running[-1], settings.data_dir)
    if settings.public_url_known or (recorded := hub_url(settings.data_dir)) is None:
        return settings
    return Settings.from_env(env | {"OCPI_HUB_PUBLIC_URL": recorded})


# A command beside serve acting as another hub than the one running there is almost always a mistake: said, not refused
IDENTITY = (("OCPI_HUB_COUNTRY_CODE", "country_code"), ("OCPI_HUB_PARTY_ID", "party_id"),
            ("OCPI_HUB_PUBLIC_URL", "public_url"))  # fmt: skip


def _of_the_serve(env: dict[str, str], newest: Serve, data_dir: Path) -> Settings:
    """The settings of a command beside a running serve: those its environment sets, and that serve's for the rest."""
    its = newest.settings | {"OCPI_HUB_PUBLIC_URL": newest.url}
    taken = {name: value for name, value in its.items() if not env.get(name, "").strip()}
    settings, serves = Settings.from_env(env | taken), Settings.from_env(its)
    running = f"the `ocpi-hub serve` running on {data_dir} (pid {newest.pid})"
    log = structlog.get_logger()
    if taken:
        said = ", ".join(f"{name}={value}" for name, value in taken.items())
        log.info("settings_of_the_running_serve", pid=newest.pid, taken=taken,
                 message=f"took {said} from {running}, unset here")  # fmt: skip
    for name, field in IDENTITY:
        if (here := getattr(settings, field)) != (there := getattr(serves, field)):
            log.warning("not_the_running_hub", pid=newest.pid, variable=name, here=here, serve=there,
                        message=f"{name} is {here} here but {there} in {running}: this command acts as another hub "
                        f"than the one running; unset {name} to act as that one")  # fmt: skip
    return settings


def _demo(settings: Settings, args: argparse.Namespace, listening: socket.socket) -> int:
    from hub.demo.run import run_demo

    if args.interval <= 0:
        print("ocpi-hub: --interval must be a positive number of seconds", file=sys.stderr)
        return 2
    try:
        return asyncio.run(run_demo(settings, listening, args.interval))
    except KeyboardInterrupt:  # Ctrl-C before the demo took over the signal: still a clean stop
        return 0


if __name__ == "__main__":
    sys.exit(main())
