"""Start, reuse and stop of a server kept under a data directory and shared by the processes using it."""

from __future__ import annotations

import abc
import contextlib
import fcntl
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
# Another process may hold the lock for an initdb plus two start attempts.
LOCK_TIMEOUT = 3 * START_TIMEOUT


class EmbeddedServiceError(Exception):
    """An embedded server could not be started, or its data dir lock could not be taken in time."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _log_tail(path: Path, lines: int = 25) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return "(no log written)"


def read_pid(path: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int(path.read_text().split()[0])
    return None


def alive(pid: int | None, name: str, workdir: Path) -> bool:
    """True if pid is a live server of ours: both servers chdir into their data dir, which guards against pid reuse."""
    if pid is None:
        return False
    try:
        proc = psutil.Process(pid)
        if name not in proc.name() or proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return Path(proc.cwd()).resolve() == workdir.resolve()
    except psutil.AccessDenied:
        return True  # cannot see its cwd: assume it is ours rather than start a second server on the same files
    except psutil.Error:
        return False


def survivors(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Processes still running after up to timeout seconds. Zombies count as gone: a container's init may take
    seconds to reap an exited daemon, and psutil's own wait would wait for that."""
    deadline = time.monotonic() + timeout
    while True:
        running = []
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                if proc.status() != psutil.STATUS_ZOMBIE:
                    running.append(proc)
        if not running or time.monotonic() > deadline:
            return running
        time.sleep(0.05)


def kill(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL, the process and its children (orphaned backends would keep shared memory busy)."""
    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return
    for send in (psutil.Process.terminate, psutil.Process.kill):
        for p in procs:
            with contextlib.suppress(psutil.Error):
                send(p)
        if not (procs := survivors(procs, timeout)):
            return


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Exclusive flock so two processes never initdb/start/stop the same data dir at once; bounded, never hangs."""
    deadline = time.monotonic() + LOCK_TIMEOUT
    with path.open("a") as fh:
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise EmbeddedServiceError(f"timed out after {LOCK_TIMEOUT:.0f}s waiting for {path}") from None
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class EmbeddedServer(abc.ABC):
    """Start/reuse/stop logic shared by both servers; subclasses say how to launch, probe and halt theirs."""

    kind = ""  # process name; also names the lock file
    # An installation may leave the embedded servers out (the container image does: it always gets server URLs).
    not_installed: str | None = None  # then the package it lacks for this server

    def __init__(self, data_dir: Path, workdir: str, pid_file: str, log_file: str) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.workdir = self.data_dir / workdir
        self.pid_file = self.workdir / pid_file
        self.log_file = self.workdir / log_file
        self.owned = False

    def start(self) -> str:
        if (package := self.not_installed) is not None:
            setting = "OCPI_HUB_DATABASE_URL" if self.kind == "postgres" else "OCPI_HUB_REDIS_URL"
            raise EmbeddedServiceError(f"{setting} is not set and this installation has no embedded {self.kind} "
                                       f"(package {package}): set {setting}, or install {package}")  # fmt: skip
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with _locked(self.data_dir / f".{self.kind}.lock"):
            self._prepare()
            port = self._running_port()
            if port is None:
                port = self._start_new()
                self.owned = True
        return self._url(port)

    def stop(self, whoever_started_it: bool = False) -> None:
        """Stop the server this process started; whoever_started_it: the last serve or command on the data dir."""
        if self.owned or whoever_started_it:
            with _locked(self.data_dir / f".{self.kind}.lock"):
                self._halt()
            self.owned = False

    def _live_pid(self) -> int | None:
        pid = read_pid(self.pid_file)
        return pid if alive(pid, self.kind, self.workdir) else None

    def _running_port(self) -> int | None:
        """Port of a server already running on this data dir (maybe still starting); None when we must start one."""
        deadline = time.monotonic() + START_TIMEOUT
        while (pid := self._live_pid()) is not None:
            port = self._recorded_port()
            if port is not None and self._answers(port):
                return port
            if time.monotonic() > deadline:
                raise EmbeddedServiceError(self._failure(f"{self.kind} (pid {pid}) runs, 127.0.0.1:{port} is silent"))
            time.sleep(0.1)
        return None  # no pidfile, or a stale one: the server we start overwrites it

    def _start_new(self) -> int:
        for attempt in (1, 2):
            port = _free_port()
            try:
                problem = self._launch(port)
            except BaseException:  # interrupted while it starts (SIGTERM, Ctrl-C): not left running either
                self._halt()
                raise
            if problem is None:
                return port
            self._halt()  # never leave a half-started server behind
            if attempt == 1 and "already in use" in _log_tail(self.log_file):
                continue  # lost the race for the free port: one retry with a fresh one
            raise EmbeddedServiceError(self._failure(f"{self.kind} failed to start in {self.workdir}: {problem}"))
        raise AssertionError("unreachable")

    def _failure(self, message: str) -> str:
        return f"{message}\n--- tail of {self.log_file} ---\n{_log_tail(self.log_file)}"

    # _prepare runs first under the lock; _launch starts the server on port and waits until it answers, returning
    # None or what went wrong.
    @abc.abstractmethod
    def _prepare(self) -> None: ...
    @abc.abstractmethod
    def _launch(self, port: int) -> str | None: ...
    @abc.abstractmethod
    def _answers(self, port: int) -> bool: ...
    @abc.abstractmethod
    def _recorded_port(self) -> int | None: ...
    @abc.abstractmethod
    def _halt(self) -> None: ...
    @abc.abstractmethod
    def _url(self, port: int) -> str: ...
