"""What the benchmarks share: ports and processes, the fast parties, a hub and its servers, the load generators
(wrk and bench/paced_load.c) and the figures they give, the CPU time spent per request and the machine's speed.

bench/routing.py, bench/mixed_traffic.py, bench/instructions.py, bench/bytecodes.py and bench/location_cache.py
are built from these.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import timeit
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import asyncpg
import httpx
import redis

from storage.directory import PROPAGATION_S

ROOT = Path(__file__).resolve().parent.parent
# A location of the size of the spec's example (about 1.5 kB), written for this benchmark.
LOCATION = {
    "country_code": "NL", "party_id": "CPO", "id": "LOC1", "publish": True, "name": "Gent Zuid",
    "address": "F.Rooseveltlaan 3A", "city": "Gent", "postal_code": "9000", "country": "BEL",
    "coordinates": {"latitude": "51.047599", "longitude": "3.729944"}, "parking_type": "ON_STREET",
    "evses": [{"uid": f"3256{n}", "evse_id": f"BE*BEC*E04123456{n}", "status": "AVAILABLE",
               "capabilities": ["RESERVABLE"], "floor_level": "-1", "physical_reference": str(n),
               "connectors": [{"id": "1", "standard": "IEC_62196_T2", "format": "CABLE", "power_type": "AC_3_PHASE",
                               "max_voltage": 220, "max_amperage": 16, "tariff_ids": ["11"],
                               "last_updated": "2015-03-16T10:10:02Z"}],
               "last_updated": "2015-06-28T08:12:01Z"} for n in range(3)],
    "operator": {"name": "BeCharged"}, "time_zone": "Europe/Brussels", "last_updated": "2015-06-29T20:39:09Z",
}  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            httpx.get(url, timeout=5)
            return
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")


@contextlib.contextmanager
def process(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Result:
    name: str
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int = 0
    rows_per_s: float | None = None
    requests: int = 0
    cpu_us: float | None = None  # CPU time of the server's processes per request
    machine_us: float | None = None  # CPU time of every process on the machine per request
    receiver_us: float | None = None  # CPU time of the receiving party per request (grows as its rate falls)
    postgres_us: float | None = None  # CPU time of PostgreSQL's processes per request
    p99_runs: list[float] = field(default_factory=list)  # paced: the p99 of each repeated run
    # paced: how busy the machine's cores were during each repeated run (every process's CPU time / wall time / cores)
    busy_runs: list[float] = field(default_factory=list)
    baseline: Result | None = None  # paced: the direct runs made beside these
    error_kinds: dict[str, int] = field(default_factory=dict)  # paced: "HTTP 500" or "ECONNRESET": how many


def _own_cpu_seconds(process: Path) -> float:
    """User + system CPU time of one process, from its /proc directory."""
    fields = (process / "stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and all its descendants (uvicorn's or granian's workers), from /proc."""
    total, pending = 0.0, [pid]
    while pending:
        current = pending.pop()
        with contextlib.suppress(OSError):
            total += _own_cpu_seconds(Path(f"/proc/{current}"))
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(child) for child in (task / "children").read_text().split()]
    return total


def postgres_cpu_seconds() -> float:
    """CPU time of every PostgreSQL process on the machine (the server the benchmark writes to, embedded or not)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and (entry / "comm").read_text().startswith("postgres"):
                total += _own_cpu_seconds(entry)
    return total


def machine_cpu_seconds() -> float:
    """CPU time every process on the machine has spent (load generator, receiver, hub, PostgreSQL and Redis alike),
    from /proc/stat: user, nice, system, irq, softirq and steal."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    return sum(int(fields[i]) for i in (0, 1, 2, 5, 6, 7)) / os.sysconf("SC_CLK_TCK")


def machine_speed() -> float:
    """ms for a fixed piece of pure Python (the best of five): how fast this shared machine ran at that moment, so
    that tables of different runs or days can be told apart by it (lower is faster)."""

    def work() -> int:
        return sum(len(json.dumps(LOCATION)) for _ in range(200))

    return min(timeit.repeat(work, number=1, repeat=5)) * 1000


_ECHO = "import os\nwhile os.read(0, 1):\n    os.write(1, b'x')\n"


def wake_up_round_trip_us(trips: int = 20_000) -> float:
    """us for a byte sent to another process over a pipe and back (the median of trips): two wake-ups of a sleeping
    process, as every hop of a routed request (load generator, hub, receiver, PostgreSQL) pays. Long where the machine
    halts an idle core at once and a hypervisor must wake it (README, "One worker or two, and the machine's
    wake-ups")."""
    took = []
    # leaving the with closes both pipes (the echo's read then ends its loop) and waits for it
    with subprocess.Popen([sys.executable, "-c", _ECHO], stdin=subprocess.PIPE, stdout=subprocess.PIPE) as echo:
        assert echo.stdin is not None and echo.stdout is not None
        send, back = echo.stdin.fileno(), echo.stdout.fileno()
        for _ in range(trips):
            started = time.perf_counter()
            os.write(send, b"x")
            if not os.read(back, 1):
                raise RuntimeError(f"the echo process ended (exit status {echo.wait()})")
            took.append(time.perf_counter() - started)
    return statistics.median(took) * 1e6


def print_machine_speed(before: float) -> None:
    print(f"\nmachine speed: a fixed piece of Python took {before:.1f} ms before the runs and "
          f"{machine_speed():.1f} ms after them (lower is faster; compare tables by it); a wake-up round trip between "
          f"two processes {wake_up_round_trip_us():.1f} us")  # fmt: skip


_PACKAGES = {"wrk": "wrk", "gcc": "gcc", "valgrind": "valgrind", "callgrind_control": "valgrind"}


def require(*tools: str) -> None:
    """Exit, naming the Debian package to install, when a tool the benchmark runs is missing."""
    for tool in tools:
        if shutil.which(tool) is None:
            sys.exit(f"bench needs {tool}: apt-get install {_PACKAGES[tool]}")


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def run_wrk(target: Target, connections: int, duration: int, work: Path) -> Result:
    script = work / "put.lua"
    lines = ['wrk.method = "PUT"', f"wrk.body = {json.dumps(target.body.decode())}"]
    lines += [f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in target.headers.items()]
    script.write_text("\n".join(lines) + "\n")
    out = subprocess.run(["wrk", "-t", "2", "-c", str(connections), "-d", f"{duration}s", "--latency", "-s",
                          str(script), target.url], capture_output=True, text=True, check=True).stdout  # fmt: skip
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    failed = int(errors.group(1)) if errors else 0
    failed += sum(int(n) for n in socket_errors.groups()) if socket_errors else 0
    return Result(f"wrk -c{connections}", rps, _ms(*p50.groups()), _ms(*p99.groups()), failed, requests=requests)  # type: ignore[union-attr]


def compiled(program: str, work: Path) -> Path:
    """bench/{program}.c compiled with gcc into work, once a run."""
    binary = work / program
    if not binary.exists():
        subprocess.run(["gcc", "-O2", "-o", str(binary), str(ROOT / "bench" / f"{program}.c")], check=True)
    return binary


def run_paced(target: Target, rate: int, duration: int, work: Path) -> Result:
    """bench/paced_load.c: one request every 1/rate s (hey -q fires its workers in bursts; wrk cannot pace). The
    result's busy_runs holds how busy the machine's cores were meanwhile (load generator included)."""
    generator = compiled("paced_load", work)
    payload, headers = work / "body.json", work / "headers.txt"
    payload.write_bytes(target.body)
    headers.write_text("".join(f"{name}: {value}\r\n" for name, value in target.headers.items()))
    url = urllib.parse.urlsplit(target.url)
    path = url.path + (f"?{url.query}" if url.query else "")
    machine, started = machine_cpu_seconds(), time.monotonic()
    out = subprocess.run([str(generator), url.hostname or "127.0.0.1", str(url.port), path, str(rate), str(duration),
                          str(payload), str(headers)], capture_output=True, text=True, check=True).stdout  # fmt: skip
    busy = (machine_cpu_seconds() - machine) / (time.monotonic() - started) / (os.cpu_count() or 1)
    figures = json.loads(out)
    return Result(f"paced {rate}/s", figures["rps"], figures["p50_ms"], figures["p99_ms"], figures["errors"],
                  error_kinds=figures["error_kinds"], busy_runs=[busy])  # fmt: skip


async def _sql(url: str, sql: str) -> object:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


def count_rows(database_url: str, table: str = "routing_log") -> int:
    return int(asyncio.run(_sql(database_url, f"SELECT count(*) FROM {table}")))  # type: ignore[call-overload]


@dataclass(frozen=True)
class Target:
    url: str
    headers: dict[str, str]
    body: bytes


def load(
    name: str,
    target: Target,
    args: argparse.Namespace,
    work: Path,
    server: int,
    rows: Callable[[], int] | None = None,
    direct: Target | None = None,
    receiver: int | None = None,
) -> list[Result]:
    """wrk at each connection count (with log rows committed per second when rows counts them), then paced runs;
    each with the CPU time the server's processes (pid `server` and its workers) spent per request. The wrk runs
    also give the CPU time per request of the receiving party (pid `receiver`) and of PostgreSQL.

    The paced runs are repeated --repeat times and reported as medians. With `direct`, each is preceded by the same
    paced run against the receiver directly: the baseline of "added over the direct call" is then measured beside
    it, on the machine as busy as it was then, rather than minutes earlier."""
    results = []
    for connections in args.connections:
        before, started, cpu = rows() if rows else 0, time.monotonic(), cpu_seconds(server)
        machine, postgres, party = machine_cpu_seconds(), postgres_cpu_seconds(), cpu_seconds(receiver or server)
        result = run_wrk(target, connections, args.duration, work)
        requests = max(result.requests, 1)
        result.machine_us = (machine_cpu_seconds() - machine) * 1e6 / requests
        result.postgres_us = (postgres_cpu_seconds() - postgres) * 1e6 / requests
        result.receiver_us = (cpu_seconds(receiver or server) - party) * 1e6 / requests
        if rows:
            time.sleep(0.5)  # async mode: let the last batch land before counting
            result.rows_per_s = (rows() - before) / (time.monotonic() - started - 0.5)
        result.cpu_us = (cpu_seconds(server) - cpu) * 1e6 / max(result.requests, 1)
        result.name = f"{name}, {result.name}"
        results.append(result)
    for rate in args.rates:
        runs, baselines = [], []
        for _ in range(args.repeat):
            if direct is not None:
                baselines.append(run_paced(direct, rate, args.duration, work))
            cpu, machine, postgres = cpu_seconds(server), machine_cpu_seconds(), postgres_cpu_seconds()
            party = cpu_seconds(receiver or server)
            runs.append(run_paced(target, rate, args.duration, work))
            requests = rate * args.duration
            runs[-1].machine_us = (machine_cpu_seconds() - machine) * 1e6 / requests
            runs[-1].postgres_us = (postgres_cpu_seconds() - postgres) * 1e6 / requests
            runs[-1].receiver_us = (cpu_seconds(receiver or server) - party) * 1e6 / requests
            time.sleep(0.5 if rows else 0)
            runs[-1].cpu_us = (cpu_seconds(server) - cpu) * 1e6 / requests
        paced = median(f"{name}, paced {rate}/s", runs)
        paced.baseline = median(f"direct, paced {rate}/s", baselines) if baselines else None
        results.append(paced)
    return results


def median(name: str, runs: list[Result]) -> Result:
    """The median of each figure over repeated runs (errors: their sum)."""
    mid = statistics.median
    kinds: collections.Counter[str] = collections.Counter()
    for run in runs:
        kinds.update(run.error_kinds)

    def middle(figure: Callable[[Result], float | None]) -> float | None:
        values = [value for r in runs if (value := figure(r)) is not None]
        return mid(values) if values else None

    return Result(name, mid([r.rps for r in runs]), mid([r.p50_ms for r in runs]), mid([r.p99_ms for r in runs]),
                  sum(r.errors for r in runs), cpu_us=middle(lambda r: r.cpu_us),
                  machine_us=middle(lambda r: r.machine_us), receiver_us=middle(lambda r: r.receiver_us),
                  postgres_us=middle(lambda r: r.postgres_us),
                  p99_runs=[r.p99_ms for r in runs], busy_runs=[b for r in runs for b in r.busy_runs],
                  error_kinds=dict(kinds))  # fmt: skip


class BareRelay(NamedTuple):
    command: list[str]
    env: dict[str, str]
    base: str
    target: Target  # the benchmark's PUT, sent through it


def bare_relay(workers: int, database_url: str, direct: Target) -> BareRelay:
    """How to start bench/bare_relay.py on a free port in front of the receiver, and the PUT to send through it."""
    port = free_port()
    env = dict(os.environ) | {"BARE_RELAY_TARGET": direct.url, "BARE_RELAY_DATABASE_URL": database_url}
    command = [sys.executable, "-m", "uvicorn", "--port", str(port), "--workers", str(workers), "--no-access-log",
               "--log-level", "warning", "--loop", "uvloop", "--http", "httptools", "--lifespan", "on",
               "bench.bare_relay:app"]  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    url = f"{base}/ocpi/2.2.1/locations/receiver/NL/CPO/LOC1"
    target = Target(url, {"Content-Type": "application/json"}, json.dumps(LOCATION).encode())
    return BareRelay(command, env, base, target)


@dataclass(frozen=True)
class Parties:
    receiver: str  # base URLs of the two fast parties
    sender: str
    receiver_pid: int
    direct: Target  # the benchmark's PUT, sent to the receiver directly


@contextlib.contextmanager
def bench_parties(work: Path) -> Iterator[Parties]:
    """A receiving and a sending party (bench/receiver.c), answering, for as long as the block runs."""
    receiver_port, sender_port = free_port(), free_port()
    receiver, sender = f"http://127.0.0.1:{receiver_port}", f"http://127.0.0.1:{sender_port}"
    party, env = str(compiled("receiver", work)), dict(os.environ)
    with (
        process([party, str(receiver_port)], env, work / "receiver.log") as receiving,
        process([party, str(sender_port)], env, work / "sender.log"),
    ):
        wait_http(f"{receiver}/ocpi/versions")
        wait_http(f"{sender}/ocpi/versions")
        direct = Target(f"{receiver}/ocpi/2.2.1/locations/receiver/NL/CPO/LOC1",
                        {"Content-Type": "application/json", "Authorization": "Token eA=="},
                        json.dumps(LOCATION).encode())  # fmt: skip
        yield Parties(receiver, sender, receiving.pid, direct)


def register(hub: str, admin_token: str, party_url: str, role: tuple[str, str, str], timeout: float = 30) -> str:
    """Invite and register a party whose versions are served by the benchmark receiver; returns its token C."""
    admin = {"Authorization": f"Bearer {admin_token}"}
    roles = [{"role": role[0], "country_code": role[1], "party_id": role[2]}]
    invitation = httpx.post(
        f"{hub}/admin/api/invitations", headers=admin, json={"name": role[2], "roles": roles}, timeout=timeout
    )
    if invitation.status_code != 201:
        raise RuntimeError(f"the invitation of {role} failed: {invitation.status_code} {invitation.text}")
    token_a = invitation.json()["token_a"]
    auth = {"Authorization": "Token " + base64.b64encode(token_a.encode()).decode()}
    credentials = {"token": secrets.token_urlsafe(16), "url": f"{party_url}/ocpi/versions",
                   "roles": [r | {"business_details": {"name": role[2]}} for r in roles]}  # fmt: skip
    # With several workers, the one that did not take the invitation knows token A once its directory reloads
    time.sleep(PROPAGATION_S)
    answer = httpx.post(f"{hub}/ocpi/2.2.1/credentials", headers=auth, json=credentials, timeout=timeout).json()
    if answer["status_code"] != 1000:
        raise RuntimeError(f"registration failed: {answer}")
    return str(answer["data"]["token"])


@contextlib.contextmanager
def backing_services(work: Path) -> Iterator[tuple[str, str, str]]:
    """(database URL, Redis URL, key prefix): a throwaway database on the configured server, or embedded ones."""
    database_url, redis_url = os.environ.get("OCPI_HUB_DATABASE_URL"), os.environ.get("OCPI_HUB_REDIS_URL")
    prefix = f"ocpi-hub-bench-{secrets.token_hex(4)}:"
    with contextlib.ExitStack() as stack:
        if database_url:
            name = f"ocpi_hub_bench_{secrets.token_hex(4)}"
            asyncio.run(_sql(database_url, f'CREATE DATABASE "{name}"'))
            server = database_url
            stack.callback(lambda: asyncio.run(_sql(server, f'DROP DATABASE "{name}" WITH (FORCE)')))
            database_url = database_url.rsplit("/", 1)[0] + f"/{name}"
        else:
            from storage.embedded import EmbeddedPostgres

            postgres = EmbeddedPostgres(work)
            database_url = postgres.start()
            stack.callback(postgres.stop)
        if not redis_url:
            from storage.embedded import EmbeddedValkey

            valkey = EmbeddedValkey(work)
            redis_url = valkey.start()
            stack.callback(valkey.stop)
        else:  # a server others use: what the run's hubs cached under its prefix goes with it
            stack.callback(remove_keys, redis_url, prefix)
        yield database_url, redis_url, prefix


def remove_keys(redis_url: str, prefix: str) -> None:
    with contextlib.closing(redis.Redis.from_url(redis_url)) as client:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        for start in range(0, len(keys), 1000):
            client.unlink(*keys[start : start + 1000])


LOOPBACK = "127.0.0.0/8,::1/128"


def hub_env(services: tuple[str, str, str], work: Path, mode: str, admin_token: str) -> dict[str, str]:
    """The environment of a benchmark hub: the given database and Redis (with the run's key prefix), log mode."""
    database_url, redis_url, prefix = services
    return {k: v for k, v in os.environ.items() if not k.startswith("OCPI_HUB_")} | {
        "OCPI_HUB_DATABASE_URL": database_url, "OCPI_HUB_REDIS_URL": redis_url, "OCPI_HUB_REDIS_PREFIX": prefix,
        "OCPI_HUB_DATA_DIR": str(work / "hub"), "OCPI_HUB_ADMIN_TOKEN": admin_token, "OCPI_HUB_LOG_MODE": mode,
        "OCPI_HUB_PARTY_ID": "HUB", "OCPI_HUB_COUNTRY_CODE": "NL",
        "OCPI_HUB_PARTY_NETWORKS_ALLOWED": LOOPBACK,  # the benchmark's parties serve on 127.0.0.1
    }  # fmt: skip


def routed_push(hub: str, admin_token: str, receiver: str, sender: str, parties: tuple[str, str],
                timeout: float = 30) -> Target:  # fmt: skip
    """Registers a CPO (served by `sender`) and an eMSP (served by `receiver`) with the given party ids, and returns
    the CPO's PUT of LOCATION to the eMSP through the hub, checked once."""
    cpo, emsp = parties
    token = register(hub, admin_token, sender, ("CPO", "NL", cpo), timeout)
    register(hub, admin_token, receiver, ("EMSP", "NL", emsp), timeout)
    time.sleep(PROPAGATION_S)  # every worker has the new directory
    headers = {"Authorization": "Token " + base64.b64encode(token.encode()).decode(),
               "Content-Type": "application/json", "OCPI-from-country-code": "NL", "OCPI-from-party-id": cpo,
               "OCPI-to-country-code": "NL", "OCPI-to-party-id": emsp}  # fmt: skip
    body = json.dumps(LOCATION | {"party_id": cpo}).encode()
    url = f"{hub}/ocpi/2.2.1/receiver/locations/NL/{cpo}/LOC1"
    check = httpx.put(url, headers=headers, content=body, timeout=timeout).json()
    if check.get("status_code") != 1000:
        raise RuntimeError(f"the hub did not relay the benchmark request: {check}")
    return Target(url, headers, body)
