"""The `ocpi-hub` command: its arguments and backing services; serving in hub.serve, one-offs in hub.cli_commands."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib.metadata
import os
import socket
import sys

import asyncpg
import redis.asyncio as redis

from hub.cli_commands import COMMANDS, run
from hub.cli_output import OUTPUT_FAILED, OutputError, out
from hub.serve import PUBLIC_URL_FILE, serve
from hub.settings import VARIABLES, Settings, SettingsError

COMMANDS_HELP = """commands:
  serve     run the hub (starts embedded PostgreSQL/Valkey when no URLs are set)
  migrate   apply the database migrations and exit [--grant-serving-role ROLE: then grant-serving-role ROLE]
  invite    create a platform with its roles and print its token A and the hub's versions URL
  connect   register the hub at a party that gave the hub a versions URL and a token A
  demo      the hub with two demo CPOs and two demo eMSPs exchanging traffic, and the console to watch it
  sync      pull the CPOs' locations into the hub's cache: ocpi-hub sync locations [--party NL-ABC] [--full]
  auditor   read-only tokens of the auditor API: ocpi-hub auditor add NAME | list | remove NAME
  retention drop routing-log partitions older than a period, and what the hub keeps beside them (delivered
            ClientInfo changes, relayed CDR URLs): ocpi-hub retention --keep 400d [--dry-run]
  hold      legal holds that keep disputed rows from retention: ocpi-hub hold set --reason TEXT (--correlation-id ID
            | --object-id ID | --party NL-ABC --since T --until T) | list | release ID
  verify    recompute the routing log's hash chains, no HTTP time limit: ocpi-hub verify [--since T] [--until T]
            [--heads FILE | --checkpoint FILE]
  heads     print every hash chain's head, to keep outside the database: ocpi-hub heads > heads.json
  checkpoint
            print every chain's head and the audit trail's, signed, to keep outside the hub: ocpi-hub checkpoint
  verify-checkpoint
            check a checkpoint's signature, no database or secret needed: ocpi-hub verify-checkpoint FILE
            [--public-key KEY]; exit 0 signed by the key, 1 not, 2 unreadable
  grant-serving-role
            as the owner of the hub's tables (OCPI_HUB_OWNER_DATABASE_URL), grant the role the hub serves with what
            serving needs, to append to the routing log and never change or delete it: ocpi-hub grant-serving-role NAME
  verify-export
            check an export's signed manifest, no database or secret needed: ocpi-hub verify-export FILE
            [--manifest FILE] [--public-key KEY]; exit 0 checked, 1 not what the hub signed, 2 unreadable
  version   print the installed ocpi-hub's version (also: ocpi-hub --version)
"""


def _variables_help() -> str:
    width = max(len(name) for name, _, _ in VARIABLES)
    lines = [f"  {name:<{width}}  {meaning} (default: {default})" for name, default, meaning in VARIABLES]
    return "environment variables (all optional):\n" + "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ocpi-hub",
        description="An OCPI 2.2.1 roaming hub: parties register once and reach every other party through it.",
        epilog=COMMANDS_HELP + "\n" + _variables_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve", help="run the hub", epilog=_variables_help(), formatter_class=argparse.RawDescriptionHelpFormatter
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=_port, default=8080, help="port to listen on (default 8080; 0: any free port)")
    serve.add_argument("--workers", type=_workers, default=1, help="worker processes (default 1)")
    serve.add_argument(
        "--server",
        choices=("uvicorn", "granian"),
        default="uvicorn",
        help="ASGI server: uvicorn with uvloop and httptools (default; measured faster for the hub's"
        " relay path, see bench/routing.py) or granian (which answers bytes that are not HTTP with an empty 400)",
    )
    demo = commands.add_parser(
        "demo",
        help="run the hub with demo parties that register and exchange traffic (data in ./.ocpi-hub-demo)",
    )
    demo.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    demo.add_argument("--port", type=_port, default=8080, help="port to listen on (default 8080; 0: any free port)")
    demo.add_argument("--interval", type=float, default=2.0, help="seconds between demo messages (default 2)")
    migrate = commands.add_parser("migrate", help="apply database migrations and exit")
    migrate.add_argument("--grant-serving-role", metavar="ROLE", help="then grant-serving-role ROLE (its grants kept"
                         " up to date at every upgrade)")  # fmt: skip
    invite = commands.add_parser("invite", help="create a platform and print its token A (JSON)")
    invite.add_argument("--name", required=True, help="the platform's name, e.g. the company")
    invite.add_argument(
        "--role",
        action="append",
        required=True,
        metavar="ROLE:CC:PARTY",
        help="a role it may register, e.g. CPO:NL:ABC (repeat for several)",
    )
    sync = commands.add_parser("sync", help="pull every CPO's locations into the hub's cache (progress on stderr)")
    sync.add_argument("what", choices=["locations"], help="what to sync")
    sync.add_argument("--party", metavar="CC-PARTY", help="one CPO only, e.g. NL-ABC")
    sync.add_argument("--full", action="store_true", help="everything, not only what changed since the last sync")
    auditor = commands.add_parser("auditor", help="add, list or remove auditor tokens (read-only access to the log)")
    auditor.add_argument("action", choices=["add", "list", "remove"], help="what to do")
    auditor.add_argument("name", nargs="?", help="the auditor's name (add, remove)")
    retention = commands.add_parser(
        "retention",
        help="drop the routing log's monthly partitions before --keep, and what the hub keeps beside them",
    )
    retention.add_argument("--keep", required=True, metavar="DAYS", help="how much to keep, e.g. 400d")
    retention.add_argument("--dry-run", action="store_true", help="only say what it would drop and delete")
    hold = commands.add_parser("hold", help="set, list or release legal holds (retention keeps what they cover)")
    hold.add_argument("action", choices=["set", "list", "release"], help="what to do")
    hold.add_argument("id", nargs="?", help="the hold's id (release)")
    hold.add_argument("--reason", help="why: the dispute's reference (set)")
    hold.add_argument("--correlation-id", metavar="ID", help="hold one X-Correlation-ID's rows")
    hold.add_argument("--object-id", metavar="ID", help="hold the rows about one location, session, CDR, token, tariff")
    hold.add_argument("--party", metavar="CC-PARTY", help="hold the rows a party sent or received, --since to --until")
    hold.add_argument("--since", metavar="TIME", help="with --party: from TIME (ISO 8601)")
    hold.add_argument("--until", metavar="TIME", help="with --party: until TIME, excluded (ISO 8601)")
    verify = commands.add_parser(
        "verify", help="recompute the routing log's hash chains; exit 1 if a row was changed, inserted or deleted"
    )
    verify.add_argument("--since", metavar="TIME", help="only rows received at or after TIME (ISO 8601)")
    verify.add_argument("--until", metavar="TIME", help="only rows received before TIME (ISO 8601)")
    verify.add_argument("--heads", metavar="FILE", help="heads ocpi-hub heads printed earlier: each row still there")
    verify.add_argument(
        "--checkpoint", metavar="FILE", help="a checkpoint taken earlier: signed, and each row still there"
    )
    commands.add_parser("heads", help="print every hash chain's head, to keep outside the database for verify --heads")
    commands.add_parser("checkpoint", help="print a signed checkpoint of the chains, for verify --checkpoint later")
    signed = commands.add_parser(
        "verify-checkpoint", help="check a checkpoint's signature with the hub's public key (no database, no secret)"
    )
    signed.add_argument("file", help="the checkpoint (JSON), or a line of the hub's log carrying one")
    signed.add_argument("--public-key", metavar="KEY", help="the hub's public key (PEM file, or its base64)")
    grant = commands.add_parser(
        "grant-serving-role", help="grant the role the hub serves with what serving needs (run as the tables' owner)"
    )
    grant.add_argument("role", help="the PostgreSQL role of OCPI_HUB_DATABASE_URL, created beforehand")
    check = commands.add_parser(
        "verify-export", help="check a routing-log export against its signed manifest (no database, no secret)"
    )
    check.add_argument("file", help="the export, NDJSON (its manifest is its last line) or CSV")
    check.add_argument("--manifest", metavar="FILE", help="a CSV export's manifest, downloaded beside it")
    check.add_argument(
        "--public-key", metavar="KEY", help="the hub's public key (PEM file, or its base64): who signed it"
    )
    commands.add_parser("version", help="print the installed ocpi-hub's version")
    connect = commands.add_parser("connect", help="register the hub at a party (the hub must be running)")
    connect.add_argument("--versions-url", required=True, help="the party's versions URL")
    connect.add_argument("--token-a", required=True, help="the token A the party gave the hub operator")
    connect.add_argument("--name", help="the platform's name (default: the versions URL's host)")
    return parser


def _version() -> str:
    """The version of the ocpi-hub package installed, as its metadata says (pyproject.toml when installed)."""
    try:
        return f"ocpi-hub {importlib.metadata.version('ocpi-hub')}"
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that pip did not install
        return "ocpi-hub (not installed: no package metadata)"


def _port(raw: str) -> int:
    """A TCP port, 0 to 65535: a value out of range was a traceback of bind()'s."""
    if not raw.isascii() or not raw.isdigit() or len(raw) > 5 or int(raw) > 65535:
        raise argparse.ArgumentTypeError(f"{raw!r} is no port: a whole number from 0 (any free port) to 65535")
    return int(raw)


def _workers(raw: str) -> int:
    """1 or more: 0 was taken, said "with 0 worker(s)" and served with one."""
    if not raw.isascii() or not raw.isdigit() or len(raw) > 4 or int(raw) < 1:
        raise argparse.ArgumentTypeError(f"{raw!r} is no number of worker processes: a whole number, 1 or more")
    return int(raw)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(_keep_joined(sys.argv[1:] if argv is None else argv))
    if args.command == "version":
        return _written(_version())
    if args.command == "verify-export":  # an auditor's machine: no settings, no database, no secret
        from pathlib import Path

        from hub.export_manifest import verify_export

        return verify_export(Path(args.file), Path(args.manifest) if args.manifest else None, args.public_key)
    if args.command == "verify-checkpoint":  # as verify-export
        from pathlib import Path

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
        return _main(args, listening)
    finally:
        if listening is not None:
            listening.close()


def _written(text: str) -> int:
    try:
        out(text)
    except OutputError as exc:
        print(f"ocpi-hub: {exc}", file=sys.stderr)
        return OUTPUT_FAILED
    return 0


def _keep_joined(argv: list[str]) -> list[str]:
    """`--keep -5d` read as `--keep=-5d`: argparse takes "-5d" for an option (only "-5" looks like a number to it) and
    said "expected one argument", where every other bad --keep gets the message saying what --keep takes."""
    joined = list(argv)
    for i in range(len(joined) - 1, 0, -1):
        if joined[i - 1] == "--keep" and joined[i].startswith("-") and joined[i][1:2].isdigit():
            joined[i - 1 : i + 1] = [f"--keep={joined[i]}"]
    return joined


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
        if args.command in ("serve", "demo"):
            settings = dataclasses.replace(settings, listen=(args.host, port))
        else:
            settings = _of_the_running_hub(settings, env, args.command, getattr(args, "grant_serving_role", None))
        settings = settings.with_secrets()
    except SettingsError as exc:
        print(f"ocpi-hub: configuration error: {exc}", file=sys.stderr)
        return 2
    from hub.logs import configure_logging
    from hub.runtime import backing_services, check_redis, migrate_database
    from storage.embedded import EmbeddedServiceError
    from storage.migrate import MigrationRefused

    configure_logging(settings.log_level, sys.stdout if args.command == "serve" else sys.stderr)
    try:
        with backing_services(settings) as ready:
            assert ready.database_url is not None
            owner_url = ready.owner_database_url or ready.database_url  # migrations and retention run as the owner
            applies = args.command in ("serve", "demo", "migrate")
            applied = asyncio.run(migrate_database(owner_url, settings.secret_key or "", applies))
            if args.command in OWNER_COMMANDS:
                ready = dataclasses.replace(ready, database_url=owner_url)
            asyncio.run(check_redis(ready.redis_url or ""))
            if args.command == "migrate":
                out(_migrated(applied))
                args.role = args.grant_serving_role
                return run(COMMANDS["grant-serving-role"], ready, args) if args.role is not None else 0
            if args.command == "serve":
                return serve(ready, args.host, args.port, args.workers, args.server)
            if listening is not None:
                return _demo(ready, args, listening)
            command = COMMANDS.get(args.command)
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
    out tokens of a hub that is not running), and the URL that hub serves at, recorded in the data dir by serve,
    unless OCPI_HUB_PUBLIC_URL names one (an invitation's versions_url, the URL connect gives the party)."""
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
    recorded = settings.data_dir / PUBLIC_URL_FILE
    if settings.public_url_known or not recorded.is_file():
        return settings
    return Settings.from_env(env | {"OCPI_HUB_PUBLIC_URL": recorded.read_text().strip()})


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
