"""Mixed traffic: pushes through the hub while eMSPs walk a CPO's locations through it, in pages of about 1 MB.

    python -m bench.mixed_traffic [--rate 500] [--walkers 1 4] [--duration 10] [--repeat 3] [--workers 2]

bench/routing.py measures one kind of request at a time. A hub in production relays small pushes (a status
change, a session update) while eMSPs pull whole location lists, and a forwarded page of 1,000 locations is over a
megabyte that the hub reads, checks, relays and logs (compressed) on the same event loop as the pushes. This shows
what the pages cost the pushes: a CPO's location PUT (bench/routing.py's) paced at --rate through the hub, alone
and beside --walkers wrk connections that each follow the Link pages of GET All, forwarded to a CPO holding
--locations (bench/paging.py), over and over. Each paced run is made beside the same paced run against the
receiver directly, and the table shows medians of --repeat; also the pages/s the walkers got and the CPU time
the hub's processes spent. Uses OCPI_HUB_DATABASE_URL / OCPI_HUB_REDIS_URL when set (a throwaway database and
key prefix), the embedded servers otherwise.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from bench.harness import (
    Result,
    backing_services,
    bench_parties,
    cpu_seconds,
    free_port,
    hub_env,
    machine_speed,
    median,
    print_machine_speed,
    process,
    register,
    require,
    routed_push,
    run_paced,
    wait_http,
)
from bench.paging import EXAMPLE, Run, run_walkers


@dataclass
class Mixed:
    name: str
    pushes: Result  # median of the repeats
    direct: Result  # the direct runs beside them
    pages_per_s: float | None = None
    hub_cpu_s: float = 0.0  # per second of the run, median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=int, default=500, help="pushes per second (default 500)")
    parser.add_argument("--walkers", type=int, nargs="+", default=[1, 4], help="wrk connections walking pages")
    parser.add_argument("--locations", type=int, default=4000, help="locations the CPO holds (default 4000)")
    parser.add_argument("--page", type=int, default=1000, help="locations per page (default 1000, about 1.3 MB)")
    parser.add_argument("--duration", type=int, default=10, help="seconds per run (default 10)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each kind; the table shows medians")
    parser.add_argument("--workers", type=int, default=2, help="hub workers (default 2)")
    args = parser.parse_args()
    require("wrk", "gcc")
    speed_before = machine_speed()
    work = Path(tempfile.mkdtemp(prefix="ocpi-hub-bench-"))
    granian = [sys.executable, "-m", "granian", "--interface", "rsgi", "--no-ws", "--log-level", "warning"]
    cpo_port, port, admin_token = free_port(), free_port(), secrets.token_urlsafe(32)
    cpo_url, hub = f"http://127.0.0.1:{cpo_port}", f"http://127.0.0.1:{port}"
    cpo_env = dict(os.environ) | {"BENCH_CPO": "NL-CPO", "BENCH_CPO_LOCATIONS": str(args.locations)}
    try:
        with (
            bench_parties(work) as parties,
            backing_services(work) as services,
            process([*granian, "--port", str(cpo_port), "bench.paging:app"], cpo_env, work / "cpo.log"),
        ):
            wait_http(f"{cpo_url}/ocpi/versions")
            command = [sys.executable, "-m", "hub.cli", "serve", "--port", str(port), "--workers", str(args.workers)]
            with process(command, hub_env(services, work, "strict", admin_token), work / "hub.log") as hub_process:
                wait_http(f"{hub}/ocpi/versions")
                push = routed_push(hub, admin_token, parties.receiver, cpo_url, ("CPO", "EMS"))
                token = register(hub, admin_token, parties.receiver, ("EMSP", "NL", "EWK"))
                _pull_sync_done(services, "NL/CPO")  # the CPO's registration started it: not measured here
                run_paced(push, args.rate, 3, work)  # warm-up, not reported
                walk_headers = {"Authorization": "Token " + base64.b64encode(token.encode()).decode(),
                                "OCPI-from-country-code": "NL", "OCPI-from-party-id": "EWK",
                                "OCPI-to-country-code": "NL", "OCPI-to-party-id": "CPO"}  # fmt: skip
                walk_url = f"{hub}/ocpi/2.2.1/sender/locations?limit={args.page}"

                def measured(name: str, walkers: int) -> Mixed:
                    runs, directs, pages, cpus = [], [], [], []
                    for _ in range(args.repeat):
                        directs.append(run_paced(parties.direct, args.rate, args.duration, work))
                        walking = _Walkers(walk_url, walk_headers, walkers, args.page, args.duration + 2, work)
                        time.sleep(1 if walkers else 0)  # the pages are flowing before the pushes start
                        cpu = cpu_seconds(hub_process.pid)
                        runs.append(run_paced(push, args.rate, args.duration, work))
                        cpus.append((cpu_seconds(hub_process.pid) - cpu) / args.duration)
                        if (pages_per_s := walking.result()) is not None:
                            pages.append(pages_per_s)
                    mid = statistics.median
                    return Mixed(
                        name, median(name, runs), median("direct", directs), mid(pages) if pages else None, mid(cpus)
                    )

                results = [measured("pushes alone", 0)]
                results += [measured(f"pushes beside {n} walker{'s' if n > 1 else ''}", n) for n in args.walkers]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(results, args)
    print_machine_speed(speed_before)


def _pull_sync_done(services: tuple[str, str, str], party: str, timeout_s: float = 300) -> None:
    _, redis_url, prefix = services
    with contextlib.closing(redis.Redis.from_url(redis_url)) as client:
        deadline = time.monotonic() + timeout_s
        while not client.exists(f"{prefix}locations:synced:{party}"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the hub's pull sync of {party} did not finish within {timeout_s:g} s")
            time.sleep(0.1)


class _Walkers:
    """wrk walking the pages in a thread of its own, for `duration` seconds (none for 0 walkers)."""

    def __init__(self, url: str, headers: dict[str, str], walkers: int, page: int, duration: int, work: Path):
        self._run: Run | BaseException | None = None
        self._thread = threading.Thread(target=self._walk, args=(url, headers, walkers, page, duration, work))
        if walkers:
            self._thread.start()

    def _walk(self, url: str, headers: dict[str, str], walkers: int, page: int, duration: int, work: Path) -> None:
        try:
            self._run = run_walkers(url, headers, walkers, page, duration, work)
        except BaseException as exc:
            self._run = exc

    def result(self) -> float | None:
        """Pages per second the walkers got (None: there were none); a failed walk or an error ends the bench."""
        if not self._thread.is_alive() and self._run is None:
            return None
        self._thread.join()
        if isinstance(self._run, BaseException):
            raise RuntimeError("the walkers failed") from self._run
        assert self._run is not None
        if self._run.errors:
            raise RuntimeError(f"the walkers got {self._run.errors} answers that were not a page")
        return self._run.pages_per_s


def report(results: list[Mixed], args: argparse.Namespace) -> None:
    page_kb = args.page * len(json.dumps(EXAMPLE, separators=(",", ":"))) / 1024
    print(f"\nmixed traffic: a location PUT paced at {args.rate}/s through the hub ({args.workers} workers, strict), "
          f"alone and beside wrk walkers following GET All forwarded to a CPO of {args.locations:,} locations in "
          f"pages of {args.page:,} (about {page_kb:,.0f} kB), {args.duration}s per run, medians of "
          f"{args.repeat}\n")  # fmt: skip
    print("| run | pushes/s | p50 ms | p99 ms | over direct p50 / p99 ms | errors | pages/s | hub CPU s/s |")
    print("|---|---|---|---|---|---|---|---|")
    for m in results:
        p, d = m.pushes, m.direct
        pages = f"{m.pages_per_s:.1f}" if m.pages_per_s is not None else "-"
        print(f"| {m.name} | {p.rps:,.0f} | {p.p50_ms:.2f} | {p.p99_ms:.2f} | {p.p50_ms - d.p50_ms:+.2f} / "
              f"{p.p99_ms - d.p99_ms:+.2f} | {p.errors} | {pages} | {m.hub_cpu_s:.2f} |")  # fmt: skip
    print("\np99 of each push run: " + "; ".join(f"{m.name}: {', '.join(f'{v:.2f}' for v in m.pushes.p99_runs)}"
                                                 for m in results))  # fmt: skip


if __name__ == "__main__":
    main()
