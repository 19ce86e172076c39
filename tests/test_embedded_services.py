"""Embedded PostgreSQL and Valkey: start, reuse across instances and processes, keep data across restarts."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import psutil
import pytest
import redis
import structlog

import storage.embedded.server as embedded
from storage.embedded import EmbeddedPostgres, EmbeddedServiceError, EmbeddedValkey
from storage.embedded.postgres import PG_SYSTEM_USER
from tests.conftest import OUTPUT, ROOT, fresh_env

Server = EmbeddedPostgres | EmbeddedValkey


def _processes_under(root: Path) -> list[psutil.Process]:
    """Servers chdir into their data dir, so the cwd tells which processes a test started."""
    found = []
    for proc in psutil.process_iter(["cwd"]):
        cwd = proc.info["cwd"]
        if cwd and Path(cwd).is_relative_to(root):
            found.append(proc)
    return found


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "data"
    leftovers = _processes_under(tmp_path)
    for proc in leftovers:  # kill them anyway, so a failing test never leaks a server
        proc.kill()
    assert not leftovers, f"servers left running: {leftovers}"


@pytest.fixture
def track() -> Iterator[Callable[[Server], Server]]:
    """Register servers to be stopped at teardown (stop() is a no-op for the ones not owned)."""
    servers: list[Server] = []

    def add(server: Server) -> Server:
        servers.append(server)
        return server

    yield add
    for server in reversed(servers):
        server.stop()


def sql(dsn: str, *statements: str) -> Any:
    """Run statements on a fresh connection and return the value of the last one."""

    async def run() -> Any:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            result = None
            for statement in statements:
                result = await conn.fetchval(statement)
            return result
        finally:
            await conn.close()

    return asyncio.run(run())


def kill_hard(pid: int) -> None:
    """Simulate a crash: SIGKILL the server and its children and wait until they are gone."""
    proc = psutil.Process(pid)
    procs = [proc, *proc.children(recursive=True)]
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):  # a backend may exit on its own meanwhile
            p.kill()
    assert not embedded.survivors(procs, timeout=10)


def test_postgres_starts_and_accepts_queries(data_dir: Path, track: Callable[[Server], Server]) -> None:
    pg = track(EmbeddedPostgres(data_dir))
    dsn = pg.start()

    assert pg.owned
    assert dsn.startswith("postgresql://postgres@127.0.0.1:")
    assert sql(dsn, "SELECT 1") == 1
    assert sql(dsn, "SHOW server_encoding") == "UTF8"
    if os.geteuid() == 0:
        pid = int((data_dir / "postgres" / "postmaster.pid").read_text().split()[0])
        assert psutil.Process(pid).username() == PG_SYSTEM_USER


def test_postgres_restart_reuses_existing_cluster(data_dir: Path, track: Callable[[Server], Server]) -> None:
    first = EmbeddedPostgres(data_dir)
    dsn = first.start()
    sql(dsn, "CREATE TABLE kept (v int)", "INSERT INTO kept VALUES (42)")
    first.stop()
    assert not first.owned
    with pytest.raises(OSError):
        sql(dsn, "SELECT 1")

    second = track(EmbeddedPostgres(data_dir))
    assert sql(second.start(), "SELECT v FROM kept") == 42
    assert second.owned


def test_second_start_reuses_running_server_without_owning_it(
    data_dir: Path, track: Callable[[Server], Server]
) -> None:
    owner = track(EmbeddedPostgres(data_dir))
    dsn = owner.start()

    guest = EmbeddedPostgres(data_dir)
    assert guest.start() == dsn
    assert not guest.owned
    guest.stop()
    assert sql(dsn, "SELECT 1") == 1

    owner.stop()
    with pytest.raises(OSError):
        sql(dsn, "SELECT 1")


# Started as a separate process: prints what start() returned, then stops once told to on stdin.
CHILD = """
import sys
from pathlib import Path
from storage.embedded import EmbeddedPostgres, EmbeddedValkey
server = {"EmbeddedPostgres": EmbeddedPostgres, "EmbeddedValkey": EmbeddedValkey}[sys.argv[1]](Path(sys.argv[2]))
print(server.start(), server.owned, flush=True)
sys.stdin.readline()
server.stop()
"""


@pytest.mark.parametrize("server_class", [EmbeddedPostgres, EmbeddedValkey])
def test_processes_starting_at_once_share_one_server(server_class: type[Server], data_dir: Path) -> None:
    project = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(project)}
    argv = [sys.executable, "-c", CHILD, server_class.__name__, str(data_dir)]
    children = [
        subprocess.Popen(argv, cwd=project, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    try:
        started = [child.stdout.readline().split() for child in children if child.stdout]
    finally:
        for child in children:
            child.communicate("\n", timeout=60)

    assert {url for url, _ in started} == {started[0][0]}, started
    assert [owned for _, owned in started].count("True") == 1, started
    assert all(child.returncode == 0 for child in children)


def test_postgres_with_long_data_dir_path_serves_tcp_only(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)  # too long for a unix socket path
    pg = EmbeddedPostgres(deep)
    try:
        assert sql(pg.start(), "SHOW unix_socket_directories") == ""
    finally:
        pg.stop()
    assert not _processes_under(tmp_path)


def test_postgres_starts_after_crash_leaving_stale_pidfile(data_dir: Path, track: Callable[[Server], Server]) -> None:
    crashed = EmbeddedPostgres(data_dir)
    sql(crashed.start(), "CREATE TABLE kept (v int)", "INSERT INTO kept VALUES (7)")
    pid_file = data_dir / "postgres" / "postmaster.pid"
    kill_hard(int(pid_file.read_text().split()[0]))
    assert pid_file.exists()

    restarted = track(EmbeddedPostgres(data_dir))
    assert sql(restarted.start(), "SELECT v FROM kept") == 7  # committed data survives crash recovery
    assert restarted.owned


def test_a_postgres_that_does_not_stop_is_stopped_harder_each_step_said(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Frozen (every process stopped: a stalled disk, a lost mount), it took 94 s to stop with no line at all: an
    # operator took the hub for hung (an operator's drill).
    monkeypatch.setattr("storage.embedded.postgres.STOP_TIMEOUT", 2.0)
    server = EmbeddedPostgres(data_dir)
    server.start()
    postmaster = server._live_pid()
    assert postmaster is not None
    frozen = [postmaster, *(child.pid for child in psutil.Process(postmaster).children(recursive=True))]
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    with structlog.testing.capture_logs() as logs:
        server.stop()
    assert [entry.get("next") for entry in logs if entry["event"] == "embedded_postgres_slow_to_stop"] == [
        "pg_ctl stop -m immediate", "killed"]  # fmt: skip
    assert not [pid for pid in frozen if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]


def test_failed_postgres_start_reports_log_and_leaves_nothing_running(
    data_dir: Path, track: Callable[[Server], Server]
) -> None:
    pg = EmbeddedPostgres(data_dir)
    pg.start()
    pg.stop()
    with (data_dir / "postgres" / "postgresql.conf").open("a") as conf:
        conf.write("\nnot_a_real_setting = on\n")

    broken = track(EmbeddedPostgres(data_dir))
    with pytest.raises(EmbeddedServiceError, match="not_a_real_setting"):
        broken.start()
    assert not broken.owned
    assert not _processes_under(data_dir)


@pytest.mark.parametrize("server_class", [EmbeddedPostgres, EmbeddedValkey])
def test_port_taken_meanwhile_is_retried_with_a_fresh_port(
    server_class: type[Server], data_dir: Path, track: Callable[[Server], Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        ports = iter([taken, embedded._free_port()])
        monkeypatch.setattr(embedded, "_free_port", lambda: next(ports))

        url = track(server_class(data_dir)).start()

    assert f":{taken}/" not in url


def test_valkey_starts_and_answers_ping(data_dir: Path, track: Callable[[Server], Server]) -> None:
    valkey = track(EmbeddedValkey(data_dir))
    url = valkey.start()

    assert valkey.owned
    assert url.startswith("redis://127.0.0.1:")
    with redis.Redis.from_url(url) as client:
        assert client.ping()


def test_valkey_keeps_data_across_restart(data_dir: Path, track: Callable[[Server], Server]) -> None:
    first = EmbeddedValkey(data_dir)
    with redis.Redis.from_url(first.start()) as client:
        client.set("session:1", "alive")
    first.stop()
    assert not first.owned

    second = track(EmbeddedValkey(data_dir))
    with redis.Redis.from_url(second.start()) as client:
        assert client.get("session:1") == b"alive"


def test_valkey_second_start_reuses_running_server_without_owning_it(
    data_dir: Path, track: Callable[[Server], Server]
) -> None:
    owner = track(EmbeddedValkey(data_dir))
    url = owner.start()

    guest = EmbeddedValkey(data_dir)
    assert guest.start() == url
    assert not guest.owned
    guest.stop()
    with redis.Redis.from_url(url) as client:
        assert client.ping()

    owner.stop()
    with redis.Redis.from_url(url) as client, pytest.raises(redis.ConnectionError):
        client.ping()


def test_valkey_stale_pidfile_is_ignored(data_dir: Path, track: Callable[[Server], Server]) -> None:
    crashed = EmbeddedValkey(data_dir)
    crashed.start()
    pid_file = data_dir / "valkey" / "valkey.pid"
    kill_hard(int(pid_file.read_text()))
    assert pid_file.exists()

    restarted = track(EmbeddedValkey(data_dir))
    with redis.Redis.from_url(restarted.start()) as client:
        assert client.ping()
    assert restarted.owned


def test_a_test_run_stopped_by_sigterm_stops_the_servers_and_the_hub_it_started(tmp_path: Path) -> None:
    # A CI job's time limit, or `timeout`, ends a run with SIGTERM. Python's default exit skipped every fixture's
    # teardown and left the run's embedded PostgreSQL and Valkey, and its hubs, running (seen here).
    basetemp = tmp_path / "run"
    env = fresh_env()  # its own embedded servers

    def started_by_the_run() -> dict[str, list[psutil.Process]]:
        found: dict[str, list[psutil.Process]] = {"servers": [], "hubs": []}
        for proc in psutil.process_iter(["cwd"]):
            with contextlib.suppress(psutil.Error):
                if proc.info["cwd"] and Path(proc.info["cwd"]).is_relative_to(basetemp):
                    found["servers"].append(proc)
                elif proc.environ().get("OCPI_HUB_DATA_DIR", "").startswith(str(basetemp)):
                    found["hubs"].append(proc)
        return found

    test = "tests/test_routing.py::test_routed_requests_leave_nothing_that_only_the_garbage_collector_can_free"
    run = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--basetemp={basetemp}",
                            test], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not all(started_by_the_run().values()):  # the servers and a hub, as the test is under way
            assert run.poll() is None and time.monotonic() < deadline, "the run ended before its hub started"
            time.sleep(0.1)
        run.send_signal(signal.SIGTERM)
        output = run.communicate(timeout=60)[0].decode()
        assert "KeyboardInterrupt: stopped by SIGTERM" in output
        assert started_by_the_run() == {"servers": [], "hubs": []}
    finally:
        run.kill()
        for proc in [p for procs in started_by_the_run().values() for p in procs]:
            with contextlib.suppress(psutil.Error):
                proc.kill()


def test_a_test_run_started_beside_another_in_this_checkout_writes_its_output_apart() -> None:
    # Two runs in one checkout both wrote test-output/hub.log, their session hubs' log: each run's tests then read the
    # other hub's lines there (its port, its chain), or NUL bytes where one truncated the file under the other.
    probe = "import os, tests.conftest as c; print(c.OUTPUT, os.getpid())"
    output, pid = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60,
                                 check=True).stdout.split()  # fmt: skip
    assert OUTPUT == ROOT / "test-output"  # this run's, which holds it
    assert Path(output) == ROOT / "test-output" / f"run-{pid}"
