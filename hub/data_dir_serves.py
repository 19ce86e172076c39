"""The `ocpi-hub serve`s running on a data dir, each recorded there while it runs: the URL and settings the commands
beside use. The other commands on the embedded servers are recorded too, and the last serve or command to end there
stops the embedded servers, whoever started them."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, NamedTuple

import structlog

if TYPE_CHECKING:
    from collections.abc import Iterator

    from storage.embedded.server import EmbeddedServer

log = structlog.get_logger()

PUBLIC_URL_FILE = "public-url"  # in the data dir: the URL of the serve started last there still running, else the last
# In the data dir: a file per running serve, named PID-RANDOM (pids repeat across containers sharing a volume), holding
# its URL and locked by it for as long as it lives. A serve killed (SIGKILL, a crash) leaves its file, but not its lock.
SERVES_DIR = "serving"
# In the data dir: a file per other command running on the embedded servers there (an `ocpi-hub sync` or a long
# export beside the hub), named and locked as a serve's.
COMMANDS_DIR = "commands"
BUSY_SAID_S = 1.0  # a wait for serving/.lock longer than this is said (data_dir_busy)

# The settings a serve records for the commands beside it, which take those their own environment does not set (an
# `ocpi-hub connect` acting as NL-HUB beside a DE-HBX hub, or refusing the parties that hub calls on its private
# network). Not the secrets (admin token, secret key, metrics token: a record is as readable as the data dir), nor the
# storage (database and Redis URLs may hold passwords; a command finds the hub's storage as serve does, and the record
# by the data dir), nor the public URL (the record's url), nor the log level (how much the command itself says).
HANDED_ON = (
    "OCPI_HUB_COUNTRY_CODE", "OCPI_HUB_PARTY_ID", "OCPI_HUB_NAME", "OCPI_HUB_PARTY_NETWORKS_ALLOWED",
    "OCPI_HUB_REDIS_PREFIX", "OCPI_HUB_FORWARD_TIMEOUT_S", "OCPI_HUB_PARTY_KEEP_ALIVE_S", "OCPI_HUB_PARTY_CONNECTIONS",
    "OCPI_HUB_MAX_BODY_BYTES", "OCPI_HUB_KEEP_ALIVE_S", "OCPI_HUB_LOG_MODE", "OCPI_HUB_LOG_BODY_MAX_BYTES",
    "OCPI_HUB_LOG_PARTITIONS_AHEAD", "OCPI_HUB_SYNC_INTERVAL_S", "OCPI_HUB_CHECKPOINT_LOG_S",
    "OCPI_HUB_INVITATION_TTL_S", "OCPI_HUB_SYNC_CHECK_S", "OCPI_HUB_PULL_PAGE_LIMIT", "OCPI_HUB_MAX_LOCATIONS_PER_CPO",
    "OCPI_HUB_MAX_LOCATION_BYTES_PER_CPO", "OCPI_HUB_STILL_ALIVE_S", "OCPI_HUB_OFFLINE_PROBE_S",
    "OCPI_HUB_OWNER_INDEX_PERIOD_S", "OCPI_HUB_KEPT_URL_BYTES_PER_DAY",
)  # fmt: skip
KEPT_BACK = (
    "OCPI_HUB_ADMIN_TOKEN", "OCPI_HUB_SECRET_KEY", "OCPI_HUB_METRICS_TOKEN", "OCPI_HUB_DATABASE_URL",
    "OCPI_HUB_OWNER_DATABASE_URL", "OCPI_HUB_REDIS_URL", "OCPI_HUB_DATA_DIR", "OCPI_HUB_PUBLIC_URL",
    "OCPI_HUB_LOG_LEVEL",
)  # fmt: skip


class Serve(NamedTuple):
    pid: int
    url: str
    settings: dict[str, str]  # those of HANDED_ON set in its environment


class ServeRecord(NamedTuple):
    """A serve recorded on its data dir: the other serves running there as it started, and what the last serve to stop
    there stops, whichever serve started it (the embedded servers, hub.runtime.backing_services)."""

    others: list[Serve]
    last_out: contextlib.ExitStack


@contextlib.contextmanager
def serve_recorded(data_dir: Path, url: str, env: dict[str, str]) -> Iterator[ServeRecord]:
    """This serve recorded in data_dir (its URL, and the settings of env it hands on) and its URL in public-url while it
    runs, and the other serves running there (two serves on a data dir share its embedded servers: two hub processes
    behind a local load balancer, say). On its way out its record goes, and public-url names another running serve if
    there is one; else this one, the last to run there, which runs last_out. All under serving/.lock: of two serves
    stopping at once, the second sees the first gone and stops the embedded servers; a serve starting, recorded before
    it starts or reuses them, is seen by one stopping, or starts them anew once that one has stopped them. A read-only
    data dir stops nothing: nothing is recorded there."""
    serves = data_dir / SERVES_DIR
    record, others = None, []
    with contextlib.suppress(OSError), _changing(serves):
        others = running_serves(data_dir, remove_dead=True)
        record = _record(serves, url, {name: value for name in HANDED_ON if (value := env.get(name, "").strip())})
        _write_public_url(data_dir, url)
    last_out = contextlib.ExitStack()
    try:
        yield ServeRecord(others, last_out)
    finally:
        with _changing(serves):
            if record is not None:
                with contextlib.suppress(OSError), record:
                    Path(record.name).unlink(missing_ok=True)
            running = running_serves(data_dir, remove_dead=record is not None)
            if record is not None:
                with contextlib.suppress(OSError):
                    _write_public_url(data_dir, running[-1].url if running else url)
            # a command still working on them would fail half-way: the last of those stops them
            if running or _running_commands(data_dir):
                last_out.pop_all()  # left to the last of them
            else:
                last_out.close()


class CommandRecord(NamedTuple):
    """A command other than serve recorded on its data dir, and the embedded servers it uses there (appended as it
    starts or reuses them)."""

    servers: list[EmbeddedServer]


@contextlib.contextmanager
def command_recorded(data_dir: Path) -> Iterator[CommandRecord]:
    """A command other than serve on the embedded servers of data_dir, recorded there while it runs. On its way out,
    with no serve and no other command running there, it stops them, whoever started them: a serve that stopped
    while it ran left them to it, and one killed (SIGKILL, a crash) left them to whoever comes next. Recorded before
    the servers start or are reused, as a serve is: a serve stopping meanwhile sees it."""
    commands = data_dir / COMMANDS_DIR
    record = None
    with contextlib.suppress(OSError), _changing(data_dir / SERVES_DIR):
        commands.mkdir(exist_ok=True)
        _running_commands(data_dir, remove_dead=True)
        record = _record(commands, "", {})
    used = CommandRecord([])
    try:
        yield used
    finally:
        with _changing(data_dir / SERVES_DIR):
            if record is not None:
                with contextlib.suppress(OSError), record:
                    Path(record.name).unlink(missing_ok=True)
            if not running_serves(data_dir) and not _running_commands(data_dir):  # else left to the last of them
                for server in used.servers:
                    server.stop(whoever_started_it=True)


def running_serves(data_dir: Path, remove_dead: bool = False) -> list[Serve]:
    """The serves running on data_dir, the last started last."""
    running = []
    for path, record in _held_records(data_dir / SERVES_DIR, remove_dead):
        with contextlib.suppress(OSError, ValueError):
            if serve := _read(int(path.name.split("-")[0]), record.read()):
                running.append((os.fstat(record.fileno()).st_mtime_ns, serve))
    return [serve for _, serve in sorted(running)]


def _running_commands(data_dir: Path, remove_dead: bool = False) -> int:
    """How many commands other than serve run on data_dir's embedded servers."""
    return sum(1 for _ in _held_records(data_dir / COMMANDS_DIR, remove_dead))


def _held_records(records: Path, remove_dead: bool) -> Iterator[tuple[Path, IO[str]]]:
    """The records in the folder records whose process still runs, each open while it is looked at: its process holds
    its lock, which goes with the process however it ends. With remove_dead, those of processes gone are removed."""
    with contextlib.suppress(OSError):
        for path in records.iterdir():
            if path.name.startswith("."):  # serving/.lock
                continue
            with contextlib.suppress(OSError), path.open() as record:
                try:
                    fcntl.flock(record, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:  # its process holds it
                    yield path, record
                    continue
                if remove_dead:
                    path.unlink()


def hub_url(data_dir: Path) -> str | None:
    """The URL of the serve started last on data_dir still running, else that of the last that ran there."""
    if running := running_serves(data_dir):
        return running[-1].url
    with contextlib.suppress(OSError):
        return (data_dir / PUBLIC_URL_FILE).read_text().strip() or None
    return None


def _record(serves: Path, url: str, settings: dict[str, str]) -> IO[str]:
    record = (serves / f"{os.getpid()}-{secrets.token_hex(4)}").open("x")
    fcntl.flock(record, fcntl.LOCK_EX)  # before anyone reads it: a reader takes a record without its lock for dead
    record.write(json.dumps({"url": url, "settings": settings}) + "\n")
    record.flush()
    return record


def _read(pid: int, text: str) -> Serve | None:
    """A record, or the URL alone that a serve of an earlier ocpi-hub recorded."""
    try:
        record = json.loads(text)
        return Serve(pid, str(record["url"]), {str(k): str(v) for k, v in record["settings"].items()})
    except (ValueError, TypeError, KeyError, AttributeError):
        return Serve(pid, url, {}) if (url := text.strip()) and not url.startswith("{") else None


@contextlib.contextmanager
def _changing(serves: Path) -> Iterator[None]:
    """One process at a time changes the records and public-url, or stops the embedded servers as the last: two
    serves stopping at once would each name the other, and each leave them to the other. Without the lock where it
    cannot be taken (a read-only data dir), where no serve is recorded either."""
    lock = None
    with contextlib.suppress(OSError):
        serves.mkdir(parents=True, exist_ok=True)
        lock = (serves / ".lock").open("a")
    with lock or contextlib.nullcontext():
        if lock is not None:
            _locked(lock, serves.parent)
        yield


def _locked(lock: IO[str], data_dir: Path) -> None:
    """The lock taken, and a wait for it longer than BUSY_SAID_S said: a command waiting while the last serve there
    stops the embedded servers under it (about 40 s at most) would look hung. Records change in milliseconds."""
    said_at = time.monotonic() + BUSY_SAID_S
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= said_at:
                break
            time.sleep(0.02)
    log.info("data_dir_busy", data_dir=str(data_dir), waiting_for="another ocpi-hub on this data dir: a serve "
             "stopping the embedded servers as the last to stop there, or starting them")  # fmt: skip
    fcntl.flock(lock, fcntl.LOCK_EX)


def _write_public_url(data_dir: Path, url: str) -> None:
    written = data_dir / f".{PUBLIC_URL_FILE}.{os.getpid()}"
    written.write_text(url + "\n")
    written.replace(data_dir / PUBLIC_URL_FILE)  # whole: a command beside it never reads half of it
