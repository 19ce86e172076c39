"""`serve --workers 2` told to stop (SIGTERM) while its workers are starting: every worker stops, and serve exits well
within the grace period (Kubernetes sends SIGTERM during rollouts, also right after a start)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import asyncpg
import httpx
import psutil
import pytest

from hub.cli import UNWINDING_S, run_until_stopped, stop_asked
from hub.ocpi.late_answer import STOPPED, STOPPED_WHILE_ROUTED
from hub.serve import STOPS_ASKED, WORKERS_KILL_AFTER_S
from storage.embedded import EmbeddedPostgres
from storage.migrate import migration_files
from tests.conftest import (
    OUTPUT,
    ROOT,
    SECRET_KEY,
    Hub,
    Services,
    embedded_servers_under,
    fresh_env,
    hub_env,
    register_at_hub,
    start_hub,
)
from tests.log_rows import sql, verified
from tests.parties import Party, free_port
from tests.test_outages import _server_processes
from tests.test_routing import _roles, party_key

# A stop during start-up takes a worker's start and its shutdown: seconds. Well under granian's kill of a worker that
# does not stop (WORKERS_KILL_AFTER_S), so that a worker killed there fails this too.
STOPPED_WITHIN_S = 20


class Serve:
    """An `ocpi-hub serve` process and every process it started, recorded while it runs."""

    def __init__(self, process: subprocess.Popen[bytes], log_path: Path) -> None:
        self.process, self.log_path = process, log_path
        self.started: dict[int, psutil.Process] = {}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def look(self) -> None:
        try:
            for child in psutil.Process(self.process.pid).children(recursive=True):
                self.started.setdefault(child.pid, child)
        except psutil.Error:  # serve has exited: what it started was recorded while it ran
            pass

    def still_running(self) -> list[str]:
        running = []
        for child in self.started.values():
            try:
                if child.is_running() and child.status() != psutil.STATUS_ZOMBIE:
                    running.append(f"{child.pid} {' '.join(child.cmdline())[:100]}")
            except psutil.Error:
                pass
        return running

    def kill_all(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        for child in self.started.values():
            with contextlib.suppress(psutil.Error):
                child.kill()  # psutil checks it is still the process recorded, not another given its pid since
        self.process.wait(10)


def _start_serve(services: Services, data_dir: Path, server: str) -> Serve:
    port = free_port()
    env = hub_env(services, data_dir) | {"OCPI_HUB_PUBLIC_URL": f"http://127.0.0.1:{port}"}
    log_path = OUTPUT / f"hub-stopped-while-starting-{server}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "hub.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
             "--workers", "2", "--server", server],
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
        )  # fmt: skip
    return Serve(process, log_path)


def _workers_forked_none_started(serve: Serve) -> bool:
    # both workers exist and build the app: granian's, forked, had not yet put their own signal handlers in place
    return len(serve.started) >= 2 and '"hub_started"' not in serve.log()


def _one_worker_started(serve: Serve) -> bool:
    return serve.log().count('"hub_started"') == 1


def _came(serve: Serve, moment: Callable[[Serve], bool]) -> bool:
    """Whether the moment came; False when both workers had started before it was seen."""
    deadline = time.monotonic() + 60
    while not moment(serve):
        assert serve.process.poll() is None and time.monotonic() < deadline, serve.log()
        if serve.log().count('"hub_started"') == 2:
            return False
        serve.look()
        time.sleep(0.005)
    return True


def _stopped_entirely(serve: Serve, data_dir: Path, within_s: float = STOPPED_WITHIN_S) -> None:
    serve.process.send_signal(signal.SIGTERM)
    told = time.monotonic()
    while serve.process.poll() is None and time.monotonic() - told < within_s:
        serve.look()  # a worker started by now is one of the serve's too
        time.sleep(0.02)
    assert serve.process.poll() == 0, f"exit {serve.process.poll()} {time.monotonic() - told:.1f} s on:\n{serve.log()}"
    time.sleep(0.5)  # what serve stopped is gone from the process table, not only on its way out
    assert serve.still_running() == [], serve.log()
    assert not list(data_dir.glob("metrics-*"))  # serve went through its own way out


@pytest.mark.parametrize("moment", [_workers_forked_none_started, _one_worker_started], ids=lambda m: m.__name__)
@pytest.mark.parametrize("server", ["granian", "uvicorn"])
def test_sigterm_while_workers_start_stops_every_worker_and_serve_within_seconds(
    services: Services, tmp_path: Path, server: str, moment: Callable[[Serve], bool]
) -> None:
    for attempt in range(3):  # both workers may start within the same few milliseconds: the moment is missed then
        serve = _start_serve(services, tmp_path / str(attempt), server)
        try:
            came = _came(serve, moment)
            _stopped_entirely(serve, tmp_path / str(attempt))
        finally:
            serve.kill_all()
        if came:
            return
    pytest.fail(f"{moment.__name__} did not come in 3 starts")


@pytest.mark.parametrize("server", ["granian", "uvicorn"])
def test_a_worker_that_does_not_stop_is_killed_and_serve_exits_within_the_grace_period(
    services: Services, tmp_path: Path, server: str
) -> None:
    serve = _start_serve(services, tmp_path, server)
    try:
        assert _came(serve, lambda serve: False) is False  # until both workers have started
        stuck = next(json.loads(line)["pid"] for line in serve.log().splitlines() if '"hub_started"' in line)
        os.kill(stuck, signal.SIGSTOP)  # as a worker stuck in its shutdown: it takes no signal but SIGKILL
        # Compose gives 45 s, Kubernetes 60 s (deploy/)
        _stopped_entirely(serve, tmp_path, within_s=WORKERS_KILL_AFTER_S + 8)
    finally:
        serve.kill_all()


def _serve_on_embedded_servers(data_dir: Path, log_name: str, *args: str) -> Serve:
    """`ocpi-hub serve` as on a fresh machine: no storage URLs, so it starts the embedded servers under data_dir."""
    return _serve(fresh_env(data_dir, OCPI_HUB_SECRET_KEY=SECRET_KEY), log_name, *args)


def _serve(env: dict[str, str], log_name: str, *args: str) -> Serve:
    log_path = OUTPUT / log_name
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "hub.cli", "serve", "--port", str(free_port()), *args],
                                   env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)  # fmt: skip
    return Serve(process, log_path)


@pytest.mark.parametrize("after", ['"migration_applied"', '"hub_serving"'])
def test_sigterm_while_serve_migrates_or_starts_its_server_stops_the_embedded_servers_it_started(
    tmp_path: Path, after: str
) -> None:
    # SIGTERM killed serve outright until the server took the signal over: the embedded PostgreSQL it had started
    # for a fresh data dir went on running, with no serve to stop it. And one that came just before uvicorn took the
    # signals over was swallowed: serve went on serving (seen on CI, 20 s without an exit).
    serve = _serve_on_embedded_servers(tmp_path / "data", "hub-stopped-while-migrating.log")
    try:
        deadline = time.monotonic() + 120
        while after not in serve.log():  # the embedded servers run, serve migrates their database, or then serves
            assert serve.process.poll() is None and time.monotonic() < deadline, serve.log()
            time.sleep(0.005)
        assert embedded_servers_under(tmp_path / "data")
        _stopped_entirely(serve, tmp_path)
        assert embedded_servers_under(tmp_path / "data") == []
    finally:
        serve.kill_all()
        for left in embedded_servers_under(tmp_path / "data"):
            left.kill()


def test_a_stop_while_serve_talks_to_postgresql_cancels_what_it_awaits_and_closes_its_connection(
    services: Services,
) -> None:
    # Before serve's server takes the signals over, a stop was a KeyboardInterrupt raised wherever the main thread
    # was: in asyncpg's reading of an answer it broke the connection, and serve failed with a ValueError out of
    # asyncpg or waited for ever for an answer it had read (seen on CI, 20 s without an exit). A client as busy as a
    # migration, stopped at random moments: in 30 such stops the KeyboardInterrupt broke it 5 times.
    name = f"stopped-{secrets.token_hex(4)}"

    async def busy() -> None:
        named = {"application_name": name}
        conn = await asyncpg.connect(services.database_url, command_timeout=5, server_settings=named)
        try:
            async with conn.transaction():
                await conn.execute("CREATE TEMP TABLE counted (n integer)")
                for n in range(100_000):  # seconds of statements: the stop comes among them
                    await conn.execute("INSERT INTO counted VALUES ($1)", n)
        finally:
            await conn.close()

    shuffled, asked, outcomes = random.Random(7), len(STOPS_ASKED), []
    handler = signal.signal(signal.SIGTERM, stop_asked)
    try:
        for _ in range(20):
            stop = threading.Timer(shuffled.uniform(0.02, 0.1), os.kill, (os.getpid(), signal.SIGTERM))
            stop.start()
            began = time.monotonic()
            try:
                run_until_stopped(busy())
                outcomes.append("finished")
            except KeyboardInterrupt:
                outcomes.append("stopped" if time.monotonic() - began < 3 else "stopped late")
            except Exception as exc:
                outcomes.append(f"{type(exc).__name__}: {exc}")
            finally:
                stop.join()
    finally:
        signal.signal(signal.SIGTERM, handler)
        del STOPS_ASKED[asked:]
    assert outcomes == ["stopped"] * 20
    left = "SELECT count(*) AS left FROM pg_stat_activity WHERE application_name = $1"
    deadline = time.monotonic() + 5
    while sql(services.database_url, left, name)[0]["left"] and time.monotonic() < deadline:  # closed: soon gone
        time.sleep(0.05)
    assert sql(services.database_url, left, name)[0]["left"] == 0


def test_serve_stopped_at_any_migration_exits_at_once_and_the_next_start_applies_the_rest_once_each(
    services: Services, empty_database: str, tmp_path: Path
) -> None:
    # A SIGTERM's KeyboardInterrupt, raised wherever the loop was, broke asyncpg in the middle of reading an answer:
    # serve waited for ever for it (seen on CI, 20 s without an exit) or failed with a ValueError out of asyncpg. A
    # rollout may stop a start at any moment: each start here is stopped a few milliseconds into its migrations.
    env = hub_env(services, tmp_path / "data", OCPI_HUB_DATABASE_URL=empty_database)
    shuffled, applied = random.Random(4), []
    for start in range(len(migration_files()) + 1):
        serve = _serve(env, f"hub-stopped-migrating-{start}.log")
        try:
            deadline = time.monotonic() + 60
            while '"migration_applied"' not in serve.log() and '"hub_serving"' not in serve.log():
                assert serve.process.poll() is None and time.monotonic() < deadline, serve.log()
                time.sleep(0.002)
            time.sleep(shuffled.uniform(0, 0.03))
            _stopped_entirely(serve, tmp_path / "data")
            lines = [json.loads(line) for line in serve.log().splitlines() if line.startswith("{")]
        finally:
            serve.kill_all()
        assert [line for line in lines if line["level"] == "error"] == []
        applied += [line["migration"] for line in lines if line["event"] == "migration_applied"]
        if any(line["event"] == "hub_serving" for line in lines):
            break
    assert start > 3  # stopped while migrating, not only once they were done
    # What a stopped migration had done was rolled back and applied again by the next start: each once, in order.
    # One stopped as its COMMIT went out may be committed without its line, which serve did not get to write.
    names = [row["name"] for row in sql(empty_database, "SELECT name FROM schema_migration ORDER BY version")]
    assert names == [name for _, name, _ in migration_files()]
    assert applied == sorted(set(applied)) and len(applied) >= len(names) - 3, applied
    assert verified(empty_database).ok


def test_a_stop_while_serve_migrates_a_postgresql_that_stopped_answering_ends_serve_within_seconds(
    services: Services, tmp_path: Path
) -> None:
    # The cancelled migration's rollback, its advisory unlock and the close of its connection each waited for ever
    # for a PostgreSQL frozen (here: its processes stopped by a signal; a stalled disk, a lost network): serve never
    # exited, and an orchestrator killed it at the end of its grace period.
    postgres = EmbeddedPostgres(tmp_path / "pg")
    url = postgres.start()
    env = hub_env(services, tmp_path / "data", OCPI_HUB_DATABASE_URL=url)
    serve, frozen = _serve(env, "hub-stopped-migrating-a-frozen-postgresql.log"), []
    try:
        deadline = time.monotonic() + 60
        while '"migration_applied"' not in serve.log():
            assert serve.process.poll() is None and time.monotonic() < deadline, serve.log()
            time.sleep(0.002)
        postmaster = postgres._live_pid()
        assert postmaster is not None
        frozen = _server_processes(postmaster)
        for stopped in frozen:
            os.kill(stopped, signal.SIGSTOP)
        serve.process.send_signal(signal.SIGTERM)
        told = time.monotonic()
        assert serve.process.wait(STOPPED_WITHIN_S) == 0, serve.log()
        assert time.monotonic() - told < 4 * UNWINDING_S  # each of its awaits given up after UNWINDING_S
    finally:
        for stopped in frozen:
            os.kill(stopped, signal.SIGCONT)
        serve.kill_all()
        postgres.stop()
    url = postgres.start()  # the migration stopped was rolled back, none left half applied
    try:
        recorded = [row["name"] for row in sql(url, "SELECT name FROM schema_migration ORDER BY version")]
    finally:
        postgres.stop()
    logged = [line["migration"] for line in map(json.loads, serve.log().splitlines())
              if line["event"] == "migration_applied"]  # fmt: skip
    assert recorded == [name for _, name, _ in migration_files()][: len(recorded)]
    # one whose COMMIT PostgreSQL had taken as it froze is in, without its line (seen on CI)
    assert recorded[: len(logged)] == logged and len(recorded) - len(logged) <= 1, (recorded, logged)


@pytest.mark.parametrize("server", [(), ("--workers", "2"), ("--server", "granian")], ids=" ".join)
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_a_stop_asked_for_again_and_again_while_serve_stops_ends_it_cleanly_with_its_embedded_servers(
    tmp_path: Path, stop: signal.Signals, server: tuple[str, ...]
) -> None:
    # An operator pressing Ctrl-C again while the hub stops, an orchestrator repeating its SIGTERM: one that came while
    # Python finalized killed serve (exit -15 or -2) after a clean stop, which reads as a crash to whoever watches.
    # The same with two workers, and with granian, whose workers and signals are its own.
    named = "".join(f"-{arg.lstrip('-')}" for arg in server)
    serve = _serve_on_embedded_servers(
        tmp_path / "data", f"hub-stopped-again-and-again-{stop.name}{named}.log", *server
    )
    started = int(server[1]) if server[:1] == ("--workers",) else 1  # a hub_started line from each worker
    try:
        deadline = time.monotonic() + 120
        while serve.log().count('"hub_started"') < started:
            assert serve.process.poll() is None and time.monotonic() < deadline, serve.log()
            time.sleep(0.01)
        serve.look()
        told = time.monotonic()
        while serve.process.poll() is None and time.monotonic() - told < STOPPED_WITHIN_S:
            with contextlib.suppress(ProcessLookupError):
                serve.process.send_signal(stop)  # every 10 ms until it has exited: one comes at each step of its stop
            time.sleep(0.01)
        assert serve.process.poll() == 0, f"exit {serve.process.poll()}:\n{serve.log()}"
        time.sleep(0.5)
        assert serve.still_running() == [], serve.log()
        assert embedded_servers_under(tmp_path / "data") == []
        # a second SIGINT is uvicorn's forced quit: said as such, not as a failed lifespan, with the clients closed
        assert [line for line in serve.log().splitlines() if '"error"' in line] == []
    finally:
        serve.kill_all()
        for left in embedded_servers_under(tmp_path / "data"):
            left.kill()


@pytest.mark.parametrize("mode", ["async", "strict"])
def test_the_rows_of_requests_in_flight_at_a_forced_quit_are_written_at_the_next_start_as_they_were_answered(
    services: Services, empty_database: str, tmp_path: Path, mode: str
) -> None:
    # A second Ctrl-C (uvicorn's forced quit) cancelled the hub's shutdown at every await. Async mode answers before
    # the row is committed: the rows of requests already answered were neither committed nor spooled. Strict mode
    # answers once it is: uvicorn cancelled the requests waiting for their rows, and answered their callers with a
    # plain-text 500, while their rows said they were answered otherwise.
    env = hub_env(services, tmp_path / "data", OCPI_HUB_DATABASE_URL=empty_database, OCPI_HUB_LOG_MODE=mode)

    async def forced_quit(hub: Hub) -> list[object]:
        blocker = await asyncpg.connect(empty_database)
        try:
            async with blocker.transaction():
                await blocker.execute("LOCK TABLE routing_log_chain IN EXCLUSIVE MODE")  # the rows stay uncommitted
                async with httpx.AsyncClient(base_url=hub.base, timeout=30) as client:
                    # refused (no token), and logged as any functional request
                    calls = [asyncio.create_task(client.get("/ocpi/2.2.1/locations",
                                                            headers={"X-Correlation-ID": f"quit-{n}"}))
                             for n in range(5)]  # fmt: skip
                    await asyncio.wait(calls, timeout=1)  # answered (async), or waiting for their rows (strict)
                    told = time.monotonic()
                    while hub.process.poll() is None and time.monotonic() - told < STOPPED_WITHIN_S:
                        with contextlib.suppress(ProcessLookupError):
                            hub.process.send_signal(signal.SIGINT)  # Ctrl-C, again and again: a forced quit
                        await asyncio.sleep(0.01)
                    return await asyncio.gather(*calls, return_exceptions=True)
        finally:
            await blocker.close()

    hub = start_hub(env, OUTPUT / f"hub-forced-to-quit-{mode}.log")
    try:
        answers = asyncio.run(forced_quit(hub))
        assert hub.process.wait(10) == 0, hub.log()
        assert '"hub_stop_forced"' in hub.log()
        assert [path.suffix for path in (tmp_path / "data" / "routing-log-spool").iterdir()] == [".routing-log-spool"]
    finally:
        hub.stop()
    again = start_hub(env, OUTPUT / f"hub-forced-to-quit-{mode}-again.log")  # writes the spool file first
    assert again.stop() == 0, again.log()
    rows = sql(empty_database, "SELECT r.correlation_id, r.http_status, r.error, a.http_status AS amended, a.message "
               "FROM routing_log AS r LEFT JOIN routing_log_amendment AS a USING (chain_id, seq) "
               "WHERE r.correlation_id LIKE 'quit-%' ORDER BY r.correlation_id")  # fmt: skip
    assert [row["correlation_id"] for row in rows] == [f"quit-{n}" for n in range(5)]
    assert [getattr(answer, "status_code", answer) for answer in answers] == [401] * 5
    assert all(answer.json()["status_code"] == 2000 for answer in answers)  # type: ignore[union-attr]
    if mode == "async":
        assert {(row["http_status"], row["amended"]) for row in rows} == {(401, None)}
    else:  # the hub's refusal, still: the rows of the batch being written amended, those still queued saying so
        stopped = STOPPED.split(" this exchange")[0]  # a refusal's words name its row, not an exchange
        assert all(stopped in answer.json()["status_message"] for answer in answers)  # type: ignore[union-attr]
        for row in rows:
            said = row["error"] if row["amended"] is None else row["message"]
            assert stopped in said, dict(row)
    assert verified(empty_database).ok


@pytest.mark.parametrize("mode", ["strict", "async"])
def test_a_request_being_forwarded_at_a_forced_quit_is_answered_and_has_its_row(
    services: Services, empty_database: str, tmp_path: Path, start_party: Callable[..., Party], mode: str
) -> None:
    # uvicorn cancels the requests still in flight at a forced quit (a second Ctrl-C) and when its 30 s grace period
    # is over. One waiting for a slow receiver got uvicorn's plain-text 500, and no routing-log row at all.
    env = hub_env(services, tmp_path / "data", OCPI_HUB_DATABASE_URL=empty_database, OCPI_HUB_LOG_MODE=mode,
                  OCPI_HUB_FORWARD_TIMEOUT_S="30")  # fmt: skip
    hub = start_hub(env, OUTPUT / f"hub-forced-to-quit-mid-forward-{mode}.log")
    try:
        cpo = register_at_hub(hub, start_party, _roles("CPO"), delay_s=5.0)
        emsp = register_at_hub(hub, start_party, _roles("EMSP"))
        with concurrent.futures.ThreadPoolExecutor(1) as pool:  # the eMSP reads the CPO's sessions: forwarded
            push = pool.submit(emsp.call, hub.base, "GET", "sender/sessions", to=party_key(cpo),
                               headers={"X-Correlation-ID": "cut-short"})  # fmt: skip
            deadline = time.monotonic() + 30
            while not [r for r in cpo.functional() if "/sessions" in r.path]:  # sent on: the hub waits for the CPO
                assert time.monotonic() < deadline and not push.done(), hub.log()
                time.sleep(0.01)
            while hub.process.poll() is None and time.monotonic() < deadline:
                with contextlib.suppress(ProcessLookupError):
                    hub.process.send_signal(signal.SIGINT)  # Ctrl-C, again and again: a forced quit
                time.sleep(0.01)
            answer = push.result(30)
        assert hub.process.wait(10) == 0, hub.log()
    finally:
        hub.stop()
    assert answer.status_code == 200 and answer.json()["status_code"] == 4000, answer.text
    assert STOPPED_WHILE_ROUTED in answer.json()["status_message"]
    start_hub(env, OUTPUT / f"hub-forced-to-quit-mid-forward-{mode}-again.log").stop()  # writes what was spooled
    [row] = sql(empty_database, "SELECT routing, http_status, ocpi_status_code, error, forwarded_request_id "
                "FROM routing_log WHERE correlation_id = 'cut-short'")  # fmt: skip
    assert (row["routing"], row["http_status"], row["ocpi_status_code"]) == ("direct", 200, 4000), dict(row)
    assert row["error"].startswith(f"{STOPPED_WHILE_ROUTED}; it was sent to the receiver"), dict(row)
    assert row["forwarded_request_id"]
    assert verified(empty_database).ok
