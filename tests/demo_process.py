"""Runs `ocpi-hub demo` as a subprocess for the tests: the demo's own embedded servers, or the machine's servers
(a throwaway database and key prefix) when OCPI_HUB_DATABASE_URL is set, as in conftest.py."""

from __future__ import annotations

import asyncio
import os
import queue
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, Services, _admin_sql, _with_database, fresh_env, hub_env

READY = re.compile(r"Open the console: (http://\S+)/console")
AUDITOR = re.compile(r"auditor token: (\S+)")


@dataclass
class RunningDemo:
    process: subprocess.Popen[str]
    base: str
    admin_token: str
    auditor_token: str
    data_dir: Path
    output: list[str]
    env: dict[str, str]

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Another `ocpi-hub` command on the demo's database (its embedded servers are reused while it runs)."""
        return subprocess.run([sys.executable, "-m", "hub.cli", *args], env=self.env, cwd=ROOT, capture_output=True,
                              text=True, timeout=120)  # fmt: skip

    def admin(self) -> httpx.Client:
        return httpx.Client(base_url=self.base, headers={"Authorization": f"Bearer {self.admin_token}"}, timeout=30)

    def stop(self) -> None:
        """Ctrl-C, as a person would: the demo stops its parties, the hub and the embedded servers it started."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def demo_env(request: pytest.FixtureRequest, data_dir: Path) -> dict[str, str]:
    """The machine's servers when the environment names them, with a database and key prefix of this demo's own
    (its parties' ids are fixed); otherwise the demo's own default: embedded PostgreSQL and Valkey under its data
    dir."""
    if os.environ.get("OCPI_HUB_DATABASE_URL"):
        services: Services = request.getfixturevalue("services")
        name = f"ocpi_hub_demo_{secrets.token_hex(6)}"
        asyncio.run(_admin_sql(services.database_url, f'CREATE DATABASE "{name}"'))
        drop = f'DROP DATABASE "{name}" WITH (FORCE)'
        request.addfinalizer(lambda: asyncio.run(_admin_sql(services.database_url, drop)))
        database_url = _with_database(services.database_url, name)
        own = Services(database_url, services.redis_url, f"{services.redis_prefix}{name}:")
        env = hub_env(own, data_dir)
        env.pop("OCPI_HUB_FORWARD_TIMEOUT_S")
        return env
    return fresh_env(data_dir)


def _reader(process: subprocess.Popen[str], lines: queue.Queue[str | None], log: Path) -> None:
    assert process.stdout is not None
    with log.open("w") as copy:
        for line in process.stdout:
            copy.write(line)
            copy.flush()
            lines.put(line)
    lines.put(None)


def start_demo(env: dict[str, str], data_dir: Path, log: Path, interval_s: float, timeout: float = 120) -> RunningDemo:
    """Starts the demo and returns once it printed the console URL, i.e. once its opening traffic went through."""
    process = subprocess.Popen(  # port 0: the demo binds a free port itself, before anything else, and prints its URL
        [sys.executable, "-m", "hub.cli", "demo", "--port", "0", "--interval", str(interval_s)],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_reader, args=(process, lines, log), daemon=True).start()
    output: list[str] = []
    deadline = time.monotonic() + timeout
    base = auditor = None
    try:
        while base is None or auditor is None:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            if line is None:
                raise AssertionError(f"demo exited with {process.wait()}:\n{''.join(output)}")
            output.append(line)
            if match := READY.search(line):
                base = match.group(1)
            if match := AUDITOR.search(line):
                auditor = match.group(1)
    except queue.Empty:
        process.kill()
        raise AssertionError(f"demo did not print the console URL within {timeout} s:\n" + "".join(output)) from None
    admin_token = env.get("OCPI_HUB_ADMIN_TOKEN") or (data_dir / "admin-token").read_text().strip()
    return RunningDemo(process, base, admin_token, auditor, data_dir, output, env)
