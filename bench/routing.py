"""Routing benchmark: a fast receiver called directly and through the hub, side by side, in one run.

    python -m bench.routing [--duration 10] [--connections 32 128] [--rates 500 2000]

Starts a fast OCPI party (bench/receiver.c), registers it and a sender at a fresh hub, then loads
(a) the party directly, (b) the same push through bench/bare_relay.py (uvicorn + aiohttp + group commit with
nothing of the hub: the floor of what this stack costs on this machine) and (c) the same push through the hub,
with wrk (saturation, at each connection count) and bench/paced_load.c (open loop, paced at each of --rates),
and prints requests/s, p50/p99 latency, log rows committed per second and the CPU time the server's processes
spent per request (steadier than the rates on a shared machine: time spent waiting for a core is not in it), and, for
the wrk runs, the CPU time every process on the machine spent per request (what caps the rate on 2 shared cores). Uses
OCPI_HUB_DATABASE_URL / OCPI_HUB_REDIS_URL when set (a throwaway database and key prefix), the embedded servers
otherwise. Everything runs on this machine and stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import asyncpg

from bench.harness import (
    LOCATION,
    Parties,
    Result,
    backing_services,
    bare_relay,
    bench_parties,
    count_rows,
    free_port,
    hub_env,
    load,
    machine_speed,
    print_machine_speed,
    process,
    require,
    routed_push,
    wait_http,
)


def bench_bare(workers: int, database_url: str, parties: Parties, args, work: Path) -> list[Result]:  # type: ignore[no-untyped-def]
    """bench/bare_relay.py: uvicorn + aiohttp + group commit and nothing of the hub, as the floor of the table."""
    launch = bare_relay(workers, database_url, parties.direct)
    name = f"bare relay {workers} worker{'s' if workers > 1 else ''} (no hub)"
    with process(launch.command, launch.env, log := work / f"bare-{workers}.log") as relay:
        wait_http(f"{launch.base}/ocpi/versions")
        results = load(name, launch.target, args, work, relay.pid, lambda: count_rows(database_url, "bare_relay_log"),
                       parties.direct, parties.receiver_pid)  # fmt: skip
    return _said_why(results, log)


_hub_runs = itertools.count(1)


def bench_hub(  # type: ignore[no-untyped-def]
    name: str,
    workers: int,
    mode: str,
    server: str,
    services: tuple[str, str, str],
    parties: Parties,
    args,
    work: Path,
) -> list[Result]:
    port, admin_token = free_port(), secrets.token_urlsafe(32)
    env = hub_env(services, work, mode, admin_token)
    hub = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "hub.cli", "serve", "--port", str(port), "--workers", str(workers),
               "--server", server]  # fmt: skip
    with process(command, env, log := work / f"hub-{server}-{workers}-{mode}.log") as hub_process:
        wait_http(f"{hub}/ocpi/versions")
        run = next(_hub_runs)  # the hubs of one benchmark share its database: each registers parties of its own
        target = routed_push(hub, admin_token, parties.receiver, parties.sender, (f"C{run:02X}", f"E{run:02X}"))
        database_url = services[0]
        results = load(name, target, args, work, hub_process.pid, lambda: count_rows(database_url), parties.direct,
                       parties.receiver_pid)  # fmt: skip
    return _said_why(results, log)


def _said_why(results: list[Result], log: Path, lines: int = 20) -> list[Result]:
    """Runs with errors: the last lines the server wrote of what went wrong (its log goes with the run's files)."""
    if any(r.errors for r in results):
        said = [line for line in log.read_text(errors="replace").splitlines() if _is_trouble(line)]
        print(f"\n{log.name}: {len(said)} error lines, the last {min(lines, len(said))}:", *said[-lines:],
              sep="\n", file=sys.stderr)  # fmt: skip
    return results


def _is_trouble(line: str) -> bool:
    return any(word in line for word in ("Error", "error", "Exception", "Traceback", '"level":"warning"'))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10, help="seconds per load run (default 10)")
    parser.add_argument("--connections", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--rates", type=int, nargs="+", default=[500, 2000],
                        help="request rates of the paced runs (default 500, below what this machine saturates at, "
                        "and 2000, issue 4's figure)")  # fmt: skip
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="paced runs per rate, each beside a direct one; the table shows medians (default 3)",
    )
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="hub worker counts to measure")
    parser.add_argument("--modes", nargs="+", default=["strict"], choices=["strict", "async"])
    parser.add_argument("--servers", nargs="+", default=["uvicorn"], choices=["uvicorn", "granian"])
    parser.add_argument("--no-bare", action="store_true", help="skip the bare relay (bench/bare_relay.py) rows")
    args = parser.parse_args()
    require("wrk", "gcc")
    speed_before = machine_speed()
    work = Path(tempfile.mkdtemp(prefix="ocpi-hub-bench-"))
    try:
        with bench_parties(work) as parties, backing_services(work) as services:
            commits = asyncio.run(commit_latency(services[0], args.duration))
            results = load("direct", parties.direct, args, work, parties.receiver_pid)
            if not args.no_bare:
                for workers in args.workers:
                    results += bench_bare(workers, services[0], parties, args, work)
            for server in args.servers:
                for mode in args.modes:
                    for workers in args.workers:
                        name = f"hub {server} {workers} worker{'s' if workers > 1 else ''} {mode}"
                        results += bench_hub(name, workers, mode, server, services, parties, args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_table(results, args)
    print(f"\n{commits}")
    print_machine_speed(speed_before)


async def commit_latency(database_url: str, seconds: float) -> str:
    """One-row commits, one every 2 ms for `seconds`, before any load: the floor under every strict-mode latency
    (and the bare relay's), and the disk's tail, which a group commit can share but not hide."""
    conn = await asyncpg.connect(database_url)
    times: list[float] = []
    table = f"commit_probe_{secrets.token_hex(4)}"  # not a TEMP table: its commits write no WAL, so wait for no disk
    try:
        await conn.execute(f"CREATE TABLE {table} (id bigserial, body bytea)")
        ends = time.monotonic() + seconds
        while time.monotonic() < ends:
            started = time.perf_counter()
            await conn.execute(f"INSERT INTO {table} (body) VALUES ($1)", bytes(600))
            times.append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(0.002)
        sync = await conn.fetchval("SHOW synchronous_commit")
    finally:
        await conn.execute(f"DROP TABLE IF EXISTS {table}")
        await conn.close()
    times.sort()
    at = [times[min(len(times) - 1, int(len(times) * q))] for q in (0.5, 0.99, 0.999)]
    return (f"PostgreSQL commits of one row on this machine, before the runs (synchronous_commit={sync}): p50 "
            f"{at[0]:.2f} ms, p99 {at[1]:.2f}, p99.9 {at[2]:.2f}, max {times[-1]:.2f} over {len(times):,} commits; "
            f"{sum(t > 50 for t in times)} took over 50 ms")  # fmt: skip


_COLUMNS = (("run", 44), ("req/s", 9), ("p50 ms", 7), ("p99 ms", 7), ("errors", 6), ("log rows/s", 10),
            ("CPU us/req", 10), ("machine us/req", 14), ("receiver us/req", 15), ("PostgreSQL us/req", 17))  # fmt: skip


def _row(cells: Iterable[str]) -> str:
    """A markdown table row: the run's name to the left, figures to the right."""
    aligned = (cell.ljust(width) if i == 0 else cell.rjust(width)
               for i, (cell, (_, width)) in enumerate(zip(cells, _COLUMNS, strict=True)))  # fmt: skip
    return "| " + " | ".join(aligned) + " |"


def print_table(results: list[Result], args: argparse.Namespace) -> None:
    print(f"\nrouting benchmark: PUT of a {len(json.dumps(LOCATION))}-byte location, {args.duration}s per run, "
          f"{os.cpu_count()} cores shared by load generator, receiver, hub, PostgreSQL and Redis\n")  # fmt: skip
    print(_row(title for title, _ in _COLUMNS))
    print("|" + "|".join("-" * (width + 2) for _, width in _COLUMNS) + "|")
    for r in results:
        print(_row((r.name, f"{r.rps:,.0f}", f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}", str(r.errors),
                    _figure(r.rows_per_s), _figure(r.cpu_us), _figure(r.machine_us), _figure(r.receiver_us),
                    _figure(r.postgres_us))))  # fmt: skip
    print("\nCPU us/req: the server's own processes (receiver, bare relay or hub workers); machine us/req: every "
          f"process on the machine, load generator included. {os.cpu_count()} cores allow {os.cpu_count()} s of CPU "
          f"per second: a run whose machine us/req is N cannot go faster than {os.cpu_count()}e6 / N req/s. Receiver "
          "and PostgreSQL us/req: what the receiving party and the database spent on each request. Paced runs "
          "cost more a request than wrk's: fewer requests share a wake-up, and a group commit holds "
          "fewer rows.")  # fmt: skip
    for r in results:
        if r.error_kinds:
            print(f"errors of {r.name}: " + ", ".join(f"{kind} {n}" for kind, n in sorted(r.error_kinds.items())))
    print(f"\npaced runs: the median of {args.repeat}, each run beside a direct one (p99 of each run in brackets; "
          "cores busy: every process's CPU time over the run's wall time and the cores, load generator included). "
          "Near 100% busy, requests queue for a core and the p99 grows whatever the hub does.")  # fmt: skip
    for r in results:
        if r.baseline is not None:
            base = r.baseline
            print(f"added over the direct call at {r.name.split('paced ')[1]} ({r.name.split(',')[0]}): "
                  f"p50 {r.p50_ms - base.p50_ms:+.2f} ms, p99 {r.p99_ms - base.p99_ms:+.2f} ms "
                  f"[{_list(r.p99_runs)} over direct {_list(base.p99_runs)}]; cores busy "
                  f"{_percent(r.busy_runs)} (direct {_percent(base.busy_runs)})")  # fmt: skip


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _list(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def _percent(values: list[float]) -> str:
    return ", ".join(f"{v:.0%}" for v in values)


if __name__ == "__main__":
    main()
