"""The `ocpi-hub` command's arguments and its help: what each command takes, checked before anything runs."""

from __future__ import annotations

import argparse
import importlib.metadata
import re

from hub.settings_variables import VARIABLES

COMMANDS_HELP = """commands:
  serve     run the hub (starts embedded PostgreSQL/Valkey when no URLs are set)
  migrate   apply the database migrations and exit [--grant-serving-role ROLE: then grant-serving-role ROLE]
  invite    create a platform with its roles and print its token A and the hub's versions URL
  connect   register the hub at a party that gave the hub a versions URL and a token A
  demo      the hub with two demo CPOs and two demo eMSPs exchanging traffic, and the console to watch it
  parties   the platforms on the hub: ocpi-hub parties list | show ID | remove ID --yes (as DELETE
            /admin/api/parties/ID: its tokens stop working, the party is told) | suspend ID --reason TEXT
            (its requests refused, nothing routed to it, until) | resume ID
  sync      pull the CPOs' locations into the hub's cache: ocpi-hub sync locations [--party NL-ABC] [--full];
            read again the eMSPs' tokens or the CPOs' recent sessions into the owner index that open routing uses:
            ocpi-hub sync tokens|sessions [--party NL-ABC]
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ocpi-hub",
        description="An OCPI 2.2.1 roaming hub: parties register once and reach every other party through it.",
        epilog=COMMANDS_HELP + "\n" + _variables_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=version())
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
        help="run the hub with demo parties that register and exchange traffic (data in ./.ocpi-hub-demo, or"
        " OCPI_HUB_DATA_DIR)",
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
    invite.add_argument(
        "--expires-in",
        type=_expires_in,
        metavar="DURATION",
        help="how long its token A stays valid: 14d, 12h, 30m or seconds; 0: never (default:"
        " OCPI_HUB_INVITATION_TTL_S, 14 days)",
    )
    parties = commands.add_parser(
        "parties", help="list the platforms' roles, show one platform, remove, suspend or resume one"
    )
    # as hold's below, an action of its own each: `parties list 7` listed all, `parties show 7 --yes` showed one
    party_actions = parties.add_subparsers(dest="action", required=True, metavar="ACTION")
    party_actions.add_parser("list", help="every platform's roles")
    party_show = party_actions.add_parser("show", help="one platform")
    party_show.add_argument("id", nargs="?", help="the platform's id")
    party_remove = party_actions.add_parser("remove", help="take a platform off the hub (its tokens stop working)")
    party_remove.add_argument("id", nargs="?", help="the platform's id")
    party_remove.add_argument("--yes", action="store_true", help="yes, take the platform off the hub")
    party_suspend = party_actions.add_parser("suspend", help="stop a platform for a while (its requests refused)")
    party_suspend.add_argument("id", nargs="?", help="the platform's id")
    party_suspend.add_argument("--reason", required=True,
                               help="why: told to the platform with every request the hub refuses")  # fmt: skip
    party_resume = party_actions.add_parser(
        "resume", help="end a suspension: its tokens work and it is routed to again"
    )
    party_resume.add_argument("id", nargs="?", help="the platform's id")
    sync = commands.add_parser("sync", help="pull the CPOs' locations into the hub's cache, or read again the eMSPs' "
                               "tokens or the CPOs' recent sessions for open routing (progress on stderr)")  # fmt: skip
    sync.add_argument("what", choices=["locations", "tokens", "sessions"], help="what to sync")
    sync.add_argument("--party", metavar="CC-PARTY", type=_party, help="one party only, e.g. NL-ABC")
    sync.add_argument("--full", action="store_true",
                      help="locations: everything, not only what changed since the last sync")  # fmt: skip
    auditor = commands.add_parser("auditor", help="add, list or remove auditor tokens (read-only access to the log)")
    auditor_actions = auditor.add_subparsers(dest="action", required=True, metavar="ACTION")  # `list NAME` listed all
    auditor_actions.add_parser("add", help="a new auditor and its token").add_argument(
        "name", nargs="?", help="the auditor's name"
    )
    auditor_actions.add_parser("list", help="every auditor")
    auditor_actions.add_parser("remove", help="revoke an auditor's token").add_argument(
        "name", nargs="?", help="the auditor's name"
    )
    retention = commands.add_parser(
        "retention",
        help="drop the routing log's monthly partitions before --keep, and what the hub keeps beside them",
    )
    retention.add_argument("--keep", required=True, metavar="DAYS", help="how much to keep, e.g. 400d")
    retention.add_argument("--dry-run", action="store_true", help="only say what it would drop and delete")
    hold = commands.add_parser("hold", help="set, list or release legal holds (retention keeps what they cover)")
    # an action of its own each: an option one does not take is refused, not ignored (`hold list --reason x` listed all)
    hold_actions = hold.add_subparsers(dest="action", required=True, metavar="ACTION")
    hold_set = hold_actions.add_parser("set", help="a new hold: --reason and what it covers")
    hold_set.add_argument("--reason", help="why: the dispute's reference")
    hold_set.add_argument("--correlation-id", metavar="ID", help="hold one X-Correlation-ID's rows")
    hold_set.add_argument(
        "--object-id", metavar="ID", help="hold the rows about one location, session, CDR, token, tariff"
    )
    hold_set.add_argument(
        "--party", metavar="CC-PARTY", type=_party, help="hold the rows a party sent or received, --since to --until"
    )
    hold_set.add_argument("--since", metavar="TIME", help="with --party: from TIME (ISO 8601)")
    hold_set.add_argument("--until", metavar="TIME", help="with --party: until TIME, excluded (ISO 8601)")
    hold_actions.add_parser("list", help="every hold, those in force first")
    hold_release = hold_actions.add_parser("release", help="release a hold")
    hold_release.add_argument("id", nargs="?", help="the hold's id")
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


def version() -> str:
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


_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def _expires_in(raw: str) -> int:
    """An invitation's lifetime in seconds: '14d', '12h', '30m', '90s' or '90'; 0 for never, ten years at most."""
    number, unit = (raw[:-1], raw[-1]) if raw[-1:] in _UNITS else (raw, "s")
    if not number.isascii() or not number.isdigit() or len(number) > 9 or int(number) * _UNITS[unit] > 10 * 365 * 86400:
        raise argparse.ArgumentTypeError(f"{raw!r} is no duration: a whole number of days, hours, minutes or seconds"
                                         " such as 14d, 12h, 30m, 90 (0: never), ten years at most")  # fmt: skip
    return int(number) * _UNITS[unit]


def _workers(raw: str) -> int:
    """1 or more: 0 was taken, said "with 0 worker(s)" and served with one."""
    if not raw.isascii() or not raw.isdigit() or len(raw) > 4 or int(raw) < 1:
        raise argparse.ArgumentTypeError(f"{raw!r} is no number of worker processes: a whole number, 1 or more")
    return int(raw)


def _party(raw: str) -> str:
    """NL-ABC: `sync --party NLX` said no CPO NLX was connected (exit 1), `hold set --party NLX` quoted a regex."""
    if not re.fullmatch(r"[A-Za-z]{2}-[A-Za-z0-9]{3}", raw):
        raise argparse.ArgumentTypeError(
            f"{raw!r} is no party: its country code, a dash and its party id, such as NL-ABC"
        )
    return raw


def keep_joined(argv: list[str]) -> list[str]:
    """`--keep -5d` read as `--keep=-5d`: argparse takes "-5d" for an option (only "-5" looks like a number to it) and
    said "expected one argument", where every other bad --keep gets the message saying what --keep takes."""
    joined = list(argv)
    for i in range(len(joined) - 1, 0, -1):
        if joined[i - 1] == "--keep" and joined[i].startswith("-") and joined[i][1:2].isdigit():
            joined[i - 1 : i + 1] = [f"--keep={joined[i]}"]
    return joined
