"""Shared fixtures: real PostgreSQL and Redis (embedded, or the servers named in the environment) and a real hub.

With OCPI_HUB_DATABASE_URL / OCPI_HUB_REDIS_URL set, the run uses a throwaway database on that server and a key
prefix of its own in that Redis, and removes both at the end; otherwise it starts embedded servers in a temporary
data dir. Either way two test runs can share the machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import psutil
import pytest
import redis

from storage.secrets import routing_log_key
from tests.parties import Party, free_port

ROOT = Path(__file__).resolve().parent.parent


def _output_of_this_run() -> Path:
    """test-output/, where the tests write their hubs' logs and the console's screenshots; test-output/run-PID/ while
    another run in this checkout holds it (its lock goes with that run's process): the two runs' session hubs both
    wrote test-output/hub.log, and each run's tests read the other's lines in it."""
    shared = ROOT / "test-output"
    shared.mkdir(exist_ok=True)
    lock = (shared / ".lock").open("a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        return shared / f"run-{os.getpid()}"
    _HELD.append(lock)  # for as long as this run's process lives
    return shared


_HELD: list[IO[str]] = []
OUTPUT = _output_of_this_run()


@dataclass(frozen=True)
class Services:
    database_url: str
    redis_url: str
    redis_prefix: str


def _with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    database_url = os.environ.get("OCPI_HUB_DATABASE_URL")
    redis_url = os.environ.get("OCPI_HUB_REDIS_URL")
    prefix = f"ocpi-hub-test-{secrets.token_hex(4)}:"
    stops = []
    try:  # what started is stopped even when the run is stopped while the rest starts (SIGTERM, Ctrl-C)
        if database_url:
            server_url, throwaway = database_url, f"ocpi_hub_test_{secrets.token_hex(6)}"
            asyncio.run(_admin_sql(server_url, f'CREATE DATABASE "{throwaway}"'))
            stops.append(lambda: asyncio.run(_admin_sql(server_url, f'DROP DATABASE "{throwaway}" WITH (FORCE)')))
            database_url = _with_database(server_url, throwaway)
        else:
            from storage.embedded import EmbeddedPostgres

            postgres = EmbeddedPostgres(_embedded_dir(tmp_path_factory))
            database_url = postgres.start()
            stops.append(postgres.stop)
        if redis_url:
            stops.append(lambda: _delete_prefix(redis_url, prefix))
        else:
            from storage.embedded import EmbeddedValkey

            valkey = EmbeddedValkey(_embedded_dir(tmp_path_factory))
            redis_url = valkey.start()
            stops.append(valkey.stop)
        yield Services(database_url, redis_url, prefix)
    finally:
        for stop in reversed(stops):
            stop()


def _embedded_dir(factory: pytest.TempPathFactory) -> Path:
    path = factory.getbasetemp() / "embedded"
    path.mkdir(exist_ok=True)
    return path


async def _admin_sql(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _delete_prefix(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url)
    for key in client.scan_iter(match=f"{prefix}*"):
        client.delete(key)
    client.close()


@dataclass
class Hub:
    """A running `ocpi-hub serve` process."""

    base: str
    admin_token: str
    process: subprocess.Popen[bytes]
    env: dict[str, str]
    log_path: Path

    @property
    def versions_url(self) -> str:
        return f"{self.base}/ocpi/versions"

    def admin(self) -> httpx.Client:
        return httpx.Client(base_url=self.base, headers={"Authorization": f"Bearer {self.admin_token}"}, timeout=30)

    def invite(self, name: str, *roles: tuple[str, str, str]) -> dict:
        with self.admin() as client:
            answer = client.post(
                "/admin/api/invitations",
                json={"name": name, "roles": [{"role": r, "country_code": c, "party_id": p} for r, c, p in roles]},
            )
        assert answer.status_code == 201, answer.text
        return answer.json()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode


SECRET_KEY = "zQ0m3yq0kTqfX7b1x8mKpU0m4HnJ0u2yR3Xc6cYHq2Y="  # every test hub's OCPI_HUB_SECRET_KEY
LOG_KEY = routing_log_key(SECRET_KEY)  # so the rows tests write themselves verify at a test hub too


LOOPBACK = "127.0.0.0/8,::1/128"


def fresh_env(data_dir: Path | None = None, **settings: str) -> dict[str, str]:
    """The environment of an ocpi-hub as on a fresh machine: none of this one's OCPI_HUB_ variables, so no storage URLs
    (it starts or reuses the embedded servers, under data_dir where given), and settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCPI_HUB_")}
    if data_dir is not None:
        env["OCPI_HUB_DATA_DIR"] = str(data_dir)
    return env | settings


def embedded_servers_under(directory: Path) -> list[psutil.Process]:
    """The embedded PostgreSQL's and Valkey's processes running on a data dir under directory."""
    found = []
    for process in psutil.process_iter(["name", "cmdline", "cwd"]):
        with_dir = " ".join(process.info["cmdline"] or []) + " " + (process.info["cwd"] or "")
        if str(directory) in with_dir and process.info["name"] in ("postgres", "valkey-server"):
            found.append(process)
    return found


def wait_until(condition: Callable[[], object], timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def hub_env(services: Services, data_dir: Path, **extra: str) -> dict[str, str]:
    env = fresh_env(data_dir)
    env.update(
        OCPI_HUB_DATABASE_URL=services.database_url,
        OCPI_HUB_REDIS_URL=services.redis_url,
        OCPI_HUB_REDIS_PREFIX=services.redis_prefix,
        OCPI_HUB_ADMIN_TOKEN=secrets.token_urlsafe(32),
        OCPI_HUB_SECRET_KEY=SECRET_KEY,
        OCPI_HUB_COUNTRY_CODE="NL",
        OCPI_HUB_PARTY_ID="HUB",
        OCPI_HUB_FORWARD_TIMEOUT_S="2",
        OCPI_HUB_SYNC_CHECK_S="0.5",
        # the test parties serve on 127.0.0.1, which a hub calls parties at only when allowed
        OCPI_HUB_PARTY_NETWORKS_ALLOWED=LOOPBACK,
    )
    env.update(extra)
    return env


class PortTaken(RuntimeError):
    """The port free_port() gave was bound by someone else before the server got to it."""


def lost_the_port(output: str) -> bool:
    return "address already in use" in output.lower()


@contextlib.contextmanager
def two_hub_processes(env: dict[str, str], data_dir: Path, log_name: str) -> Iterator[tuple[Hub, Hub]]:
    """Two hub processes on one environment (the second with a data directory of its own), stopped afterwards."""
    first = start_hub(env, OUTPUT / f"{log_name}.log")
    try:
        second = start_hub(env | {"OCPI_HUB_DATA_DIR": str(data_dir)}, OUTPUT / f"{log_name}-2.log")
        try:
            yield first, second
        finally:
            second.stop()
    finally:
        first.stop()


SERVE = ("hub.cli", "serve")
# the hub as an ASGI server runs it without the CLI (README, Run it): its lifespan checks what serve checks
UVICORN_FACTORY = ("uvicorn", "--factory", "hub.app:create_app")


def start_hub(
    env: dict[str, str],
    log_path: Path,
    *args: str,
    timeout: float = 60,
    host: str = "127.0.0.1",
    port: int = 0,
    command: tuple[str, ...] = SERVE,
) -> Hub:
    """A hub serving on host, at port (0: a free one): `ocpi-hub serve`, or command (a module run with -m, taking
    --host and --port)."""
    if port:
        return _start_hub_on(host, port, env, log_path, *args, timeout=timeout, command=command)
    try:
        return _start_hub_on(host, free_port(), env, log_path, *args, timeout=timeout, command=command)
    except PortTaken:  # free_port() only finds a port that was free: one retry with a fresh one
        return _start_hub_on(host, free_port(), env, log_path, *args, timeout=timeout, command=command)


def _start_hub_on(
    host: str, port: int, env: dict[str, str], log_path: Path, *args: str, timeout: float, command: tuple[str, ...]
) -> Hub:
    env = {"OCPI_HUB_PUBLIC_URL": f"http://{host}:{port}"} | env
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", *command, "--host", host, "--port", str(port), *args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    hub = Hub(f"http://{host}:{port}", env.get("OCPI_HUB_ADMIN_TOKEN", ""), process, env, log_path)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                problem = PortTaken if lost_the_port(hub.log()) else RuntimeError
                raise problem(f"hub exited with {process.returncode}:\n{hub.log()}")
            try:
                if httpx.get(hub.versions_url, timeout=1).status_code == 401:
                    return hub
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"hub did not answer within {timeout}s:\n{hub.log()}")
    except BaseException:  # no answer, or the run stopped (SIGTERM, Ctrl-C) while it started: no hub left behind
        hub.stop()
        raise


@pytest.fixture(scope="session")
def hub(services: Services, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    data_dir = tmp_path_factory.mktemp("hub-data")
    running = start_hub(hub_env(services, data_dir), OUTPUT / "hub.log")
    try:
        yield running
    finally:
        running.stop()


class Db:
    """A direct database connection for checking what the hub stored: `db.run(db.fetch(sql, ...))`."""

    def __init__(self, url: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.conn: asyncpg.Connection = self.loop.run_until_complete(asyncpg.connect(url))

    def run(self, coroutine):  # type: ignore[no-untyped-def]
        return self.loop.run_until_complete(coroutine)

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self.conn, name)

    def close(self) -> None:
        self.loop.run_until_complete(self.conn.close())
        self.loop.close()


@pytest.fixture
def db(services: Services) -> Iterator[Db]:
    connection = Db(services.database_url)
    try:
        yield connection
    finally:
        connection.close()


_party_numbers = itertools.count(36 * 36)  # "100": every party id of a test session is distinct


def unique_party_id() -> str:
    n = next(_party_numbers)
    digits = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    return digits[n // 1296 % 36] + digits[n // 36 % 36] + digits[n % 36]


@pytest.fixture
def start_party() -> Iterator[Callable[..., Party]]:
    """Starts test parties (real HTTP servers) and stops them after the test."""
    started: list[Party] = []

    def start(*roles: tuple[str, str, str], **options: object) -> Party:
        party = Party(roles=list(roles), **options).start()  # type: ignore[arg-type]
        started.append(party)
        return party

    yield start
    for party in started:
        party.stop()


def register_at_hub(
    hub: Hub, start_party: Callable[..., Party], *roles: tuple[str, str, str], **options: object
) -> Party:
    """A test party invited by the operator of `hub` and registered there through the real handshake."""
    party = start_party(*roles, **options)
    answer = party.register_at(hub.versions_url, hub.invite(party.name, *roles)["token_a"])
    assert answer.json()["status_code"] == 1000, answer.text
    return party


@pytest.fixture
def connect_party(hub: Hub, start_party: Callable[..., Party]) -> Callable[..., Party]:
    """A test party invited by the operator and registered at the session's hub."""

    def connect(*roles: tuple[str, str, str], **options: object) -> Party:
        return register_at_hub(hub, start_party, *roles, **options)

    return connect


@pytest.fixture
def cpo_and_emsp(connect_party: Callable[..., Party]) -> tuple[Party, Party]:
    """A CPO and an eMSP, each a platform of its own registered at the session's hub."""
    cpo = connect_party(("CPO", "NL", unique_party_id()), name="CPO")
    emsp = connect_party(("EMSP", "NL", unique_party_id()), name="eMSP")
    return cpo, emsp


@contextlib.contextmanager
def scratch_database(services: Services, prefix: str = "scratch") -> Iterator[str]:
    """The URL of a database of its own on the test server, dropped afterwards."""
    name = f"{prefix}_{secrets.token_hex(6)}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(services.database_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield services.database_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        asyncio.run(admin(f'DROP DATABASE "{name}" WITH (FORCE)'))


@pytest.fixture
def empty_database(services: Services) -> Iterator[str]:
    """A database of its own on the test server, dropped afterwards."""
    with scratch_database(services) as url:
        yield url


@pytest.hookimpl(tryfirst=True)  # before pytest's own tmp_path plugin reads --basetemp
def pytest_configure(config: pytest.Config) -> None:
    OUTPUT.mkdir(parents=True, exist_ok=True)
    if config.option.basetemp is None:
        # pytest's default root, /tmp/pytest-of-<user>, is shared by every run of that user, and each run that starts
        # takes group and other permissions off it. The embedded PostgreSQL of a run in progress runs as a system user
        # of its own and then loses its data directory ("PANIC: could not open file .../global/pg_control:
        # Permission denied"). Each run gets a root of its own; it is removed when the run passed.
        basetemp = Path(tempfile.mkdtemp(prefix="ocpi-hub-tests-"))
        config.option.basetemp = str(basetemp)
        config.add_cleanup(lambda: _remove_if_passed(config, basetemp))
    # A run stopped by SIGTERM (a CI job's time limit, `timeout`) ends as Ctrl-C does, through every fixture's
    # teardown: Python's default would exit at once and leave the embedded servers and hubs it started running.
    signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"stopped by {signal.Signals(signum).name}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    session.config.stash[_PASSED] = exitstatus == 0


_PASSED = pytest.StashKey[bool]()


def _remove_if_passed(config: pytest.Config, basetemp: Path) -> None:
    if config.stash.get(_PASSED, False):
        shutil.rmtree(basetemp, ignore_errors=True)
    else:
        print(f"\nthe failed run's temporary files (embedded servers' logs, hub data) are kept in {basetemp}")
