"""The `ocpi-hub serve`s running on a data dir, each recorded there while it runs: the URL the commands beside use."""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
from pathlib import Path
from typing import IO, TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from collections.abc import Iterator

PUBLIC_URL_FILE = "public-url"  # in the data dir: the URL of the serve started last there still running, else the last
# In the data dir: a file per running serve, named PID-RANDOM (pids repeat across containers sharing a volume), holding
# its URL and locked by it for as long as it lives. A serve killed (SIGKILL, a crash) leaves its file, but not its lock.
SERVES_DIR = "serving"


class Serve(NamedTuple):
    pid: int
    url: str


@contextlib.contextmanager
def serve_recorded(data_dir: Path, url: str) -> Iterator[list[Serve]]:
    """This serve recorded in data_dir and its URL in public-url while it runs, and the other serves running there
    (two serves on a data dir share its embedded servers: two hub processes behind a local load balancer, say). On
    its way out its record goes, and public-url names another running serve if there is one, else this one, the last
    to run there. A read-only data dir stops nothing."""
    serves = data_dir / SERVES_DIR
    record, others = None, []
    with contextlib.suppress(OSError):
        serves.mkdir(parents=True, exist_ok=True)
        with _changing(serves):
            others = running_serves(data_dir, remove_dead=True)
            record = _record(serves, url)
            _write_public_url(data_dir, url)
    try:
        yield others
    finally:
        if record is not None:
            with contextlib.suppress(OSError), record, _changing(serves):
                Path(record.name).unlink(missing_ok=True)
                running = running_serves(data_dir, remove_dead=True)
                _write_public_url(data_dir, running[-1].url if running else url)


def running_serves(data_dir: Path, remove_dead: bool = False) -> list[Serve]:
    """The serves running on data_dir, the last started last."""
    try:
        records = [path for path in (data_dir / SERVES_DIR).iterdir() if not path.name.startswith(".")]
    except OSError:
        return []
    running = []
    for path in records:
        with contextlib.suppress(OSError, ValueError), path.open() as record:
            try:
                fcntl.flock(record, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:  # its serve holds it
                if url := record.read().strip():
                    running.append((os.fstat(record.fileno()).st_mtime_ns, Serve(int(path.name.split("-")[0]), url)))
                continue
            if remove_dead:
                path.unlink()
    return [serve for _, serve in sorted(running)]


def hub_url(data_dir: Path) -> str | None:
    """The URL of the serve started last on data_dir still running, else that of the last that ran there."""
    if running := running_serves(data_dir):
        return running[-1].url
    with contextlib.suppress(OSError):
        return (data_dir / PUBLIC_URL_FILE).read_text().strip() or None
    return None


def _record(serves: Path, url: str) -> IO[str]:
    record = (serves / f"{os.getpid()}-{secrets.token_hex(4)}").open("x")
    fcntl.flock(record, fcntl.LOCK_EX)  # before anyone reads it: a reader takes a record without its lock for dead
    record.write(url + "\n")
    record.flush()
    return record


@contextlib.contextmanager
def _changing(serves: Path) -> Iterator[None]:
    """One serve at a time changes the records and public-url: two stopping at once would each name the other."""
    with (serves / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _write_public_url(data_dir: Path, url: str) -> None:
    written = data_dir / f".{PUBLIC_URL_FILE}.{os.getpid()}"
    written.write_text(url + "\n")
    written.replace(data_dir / PUBLIC_URL_FILE)  # whole: a command beside it never reads half of it
