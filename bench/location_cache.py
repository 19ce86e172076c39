"""Location cache benchmark: GET All answered by the hub from Redis, forwarded to the CPO, and by the CPO itself.

    python -m bench.location_cache [--locations 10000] [--page 1000] [--duration 15] [--connections 4 32]

Starts a fast CPO party (bench/paging.py on granian) holding --locations copies of the spec's example location and
an eMSP party (bench/receiver.py), registers both at a fresh `ocpi-hub serve` (the CPO's registration starts the
hub's pull sync, which fills the cache page by page; `ocpi-hub sync locations --full` is timed after it), and
walks every page of GET All by following the Link headers: with one client, then with wrk at each connection
count (a Lua script in which every connection walks to the last page and starts again). Three ways, side by side:
the CPO directly (baseline), the hub forwarding to the CPO (OCPI-to = the CPO), and the hub answering from its
cache (OCPI-to = the hub). Also Redis memory per cached location. Uses OCPI_HUB_DATABASE_URL / OCPI_HUB_REDIS_URL
when set (a throwaway database and key prefix, both removed afterwards), the embedded servers otherwise.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from bench.harness import LOOPBACK, ROOT, backing_services, free_port, process, register, require, wait_http
from bench.paging import Run, run_walkers, walk
from hub.ocpi.hub_answers import MAX_LIMIT
from storage.location_cache import SNAPSHOT_TTL_S

CPO, EMSP, HUB = ("NL", "CPO"), ("NL", "EMS"), ("NL", "HUB")


@dataclass
class Fill:
    hub: str
    sync_s: float
    cli_sync_s: float
    used_before: int
    used_after: int
    doc_bytes: int
    index_bytes: int
    json_bytes: int
    snapshots: int = 0
    snapshot_bytes: float = 0.0


def measure(name: str, url: str, headers: dict[str, str], args: argparse.Namespace, work: Path) -> list[Run]:
    runs = [walk(url, headers, args.locations, args.duration)]
    runs += [run_walkers(url, headers, c, args.page, args.duration, work) for c in args.connections]
    for run in runs:
        run.setup = name
    return runs


def cache_size(client: redis.Redis, prefix: str) -> tuple[int, int, int]:
    """MEMORY USAGE of the cache's documents and of its indexes, and the total length of the JSON documents."""
    docs = list(client.scan_iter(match=f"{prefix}locations:doc:*", count=1000))
    indexes = [k for k in client.scan_iter(match=f"{prefix}locations:by-owner:*", count=1000)]
    indexes += [k for k in (f"{prefix}locations:{name}" for name in ("all", "hidden", "order")) if client.exists(k)]
    pipe = client.pipeline(transaction=False)
    for key in docs + indexes:
        pipe.memory_usage(key, samples=0)
    for key in docs:
        pipe.strlen(key)
    answers = pipe.execute()
    return sum(answers[: len(docs)]), sum(answers[len(docs) : len(docs) + len(indexes)]), sum(answers[-len(docs) :])


def used_memory(client: redis.Redis) -> int:
    time.sleep(0.5)  # let a lazy free or a client buffer settle
    return int(client.info("memory")["used_memory"])  # type: ignore[index]


def fill(
    label: str, hub: str, admin_token: str, cpo_url: str, client: redis.Redis, env: dict[str, str], count: int
) -> Fill:
    """Register the CPO: the hub's pull sync fills the cache; then time a full `ocpi-hub sync locations`."""
    prefix = env["OCPI_HUB_REDIS_PREFIX"]
    before, started = used_memory(client), time.perf_counter()
    register(hub, admin_token, cpo_url, ("CPO", *CPO))
    synced = f"{prefix}locations:synced:{CPO[0]}/{CPO[1]}"
    while not client.exists(synced):
        if time.perf_counter() - started > 600:
            raise RuntimeError("the hub did not sync the CPO's locations within 10 minutes")
        time.sleep(0.05)
    sync_s = time.perf_counter() - started
    after = used_memory(client)
    cached = int(client.zcard(f"{prefix}locations:all"))  # type: ignore[arg-type]
    if cached != count:
        raise RuntimeError(f"the hub cached {cached} locations, not {count}")
    doc_bytes, index_bytes, json_bytes = cache_size(client, prefix)
    started = time.perf_counter()
    command = [sys.executable, "-m", "hub.cli", "sync", "locations", "--party", "-".join(CPO), "--full"]
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
    cli_sync_s = time.perf_counter() - started
    if done.returncode != 0 or json.loads(done.stdout)[0]["locations"] != count:
        raise RuntimeError(f"ocpi-hub sync locations failed: {done.stdout} {done.stderr[-500:]}")
    return Fill(label, sync_s, cli_sync_s, before, after, doc_bytes, index_bytes, json_bytes)


def bench_hub(
    workers: int, cpo_url: str, emsp_url: str, args: argparse.Namespace, work: Path
) -> tuple[list[Run], Fill]:
    label = f"hub ({args.server}, {workers} worker{'s' if workers > 1 else ''})"
    stage = work / f"hub-{workers}"
    stage.mkdir()
    with (
        backing_services(stage) as (database_url, redis_url, prefix),
        contextlib.closing(redis.Redis.from_url(redis_url)) as client,
    ):
        port, admin_token = free_port(), secrets.token_urlsafe(32)
        env = {k: v for k, v in os.environ.items() if not k.startswith("OCPI_HUB_")} | {
            "OCPI_HUB_DATABASE_URL": database_url, "OCPI_HUB_REDIS_URL": redis_url, "OCPI_HUB_REDIS_PREFIX": prefix,
            "OCPI_HUB_DATA_DIR": str(stage / "data"), "OCPI_HUB_ADMIN_TOKEN": admin_token,
            "OCPI_HUB_COUNTRY_CODE": HUB[0], "OCPI_HUB_PARTY_ID": HUB[1], "OCPI_HUB_PARTY_NETWORKS_ALLOWED": LOOPBACK,
        }  # fmt: skip
        hub = f"http://127.0.0.1:{port}"
        command = [sys.executable, "-m", "hub.cli", "serve", "--port", str(port), "--workers", str(workers),
                   "--server", args.server]  # fmt: skip
        with process(command, env, stage / "hub.log"):
            wait_http(f"{hub}/ocpi/versions")
            token = register(hub, admin_token, emsp_url, ("EMSP", *EMSP))
            result = fill(label, hub, admin_token, cpo_url, client, env, args.locations)
            time.sleep(1.2)  # every worker has the new directory
            headers = {"Authorization": "Token " + base64.b64encode(token.encode()).decode(),
                       "OCPI-from-country-code": EMSP[0], "OCPI-from-party-id": EMSP[1]}  # fmt: skip
            url = f"{hub}/ocpi/2.2.1/sender/locations?limit={args.page}"
            to_cpo = headers | {"OCPI-to-country-code": CPO[0], "OCPI-to-party-id": CPO[1]}
            to_hub = headers | {"OCPI-to-country-code": HUB[0], "OCPI-to-party-id": HUB[1]}
            runs = measure(f"{label} forwarding to the CPO", url, to_cpo, args, stage)
            runs += measure(f"{label} from its cache", url, to_hub, args, stage)
            snapshots = list(client.scan_iter(match=f"{prefix}locations:snapshot:*", count=1000))
            sizes = [client.memory_usage(key, samples=0) or 0 for key in snapshots]
            result.snapshots, result.snapshot_bytes = len(sizes), sum(sizes) / max(1, len(sizes))
    return runs, result


def machine(redis_url: str | None) -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "unknown CPU")  # fmt: skip
    facts = f"{os.cpu_count()} cores ({model}), load average {os.getloadavg()[0]:.2f} at start"
    if redis_url:
        with contextlib.closing(redis.Redis.from_url(redis_url)) as client:
            facts += f", Redis {client.info('server')['redis_version']}"  # type: ignore[index]
    return facts


def _table(columns: list[tuple[str, int]], rows: list[list[str]]) -> None:
    """A Markdown table; a negative width aligns its column left."""

    def line(cells: list[str]) -> str:
        return (
            "| "
            + " | ".join(f"{c:<{-w}}" if w < 0 else f"{c:>{w}}" for c, (_, w) in zip(cells, columns, strict=True))
            + " |"
        )

    print("\n".join([line([n for n, _ in columns]), "|" + "|".join("-" * (abs(w) + 2) for _, w in columns) + "|"]))
    print("\n".join(line(row) for row in rows))


def report(runs: list[Run], fills: list[Fill], args: argparse.Namespace, facts: str) -> None:
    from bench.paging import EXAMPLE

    n, size = args.locations, len(json.dumps(EXAMPLE, separators=(",", ":")))
    print(f"\nlocation cache benchmark: GET All of {n:,} locations, each the spec's example ({size:,} bytes; ids, "
          f"coordinates, last_updated varied), walked by Link in pages of {args.page:,} (the hub's maximum is "
          f"{MAX_LIMIT:,}), {args.duration}s per run\nmachine: {facts}; wrk, the hub, the CPO party, PostgreSQL and "
          "Redis share these cores\n")  # fmt: skip
    _table([("setup", -46), ("load", -14), ("pages/s", 7), ("objects/s", 9), ("1st page ms", 11), ("p50 ms", 7),
            ("p99 ms", 7), ("errors", 6)],
           [[r.setup, r.load, f"{r.pages_per_s:,.1f}", f"{r.objects_per_s:,.0f}",
             f"{r.first_ms:,.1f}" if r.first_ms is not None else "-", f"{r.p50_ms:,.1f}", f"{r.p99_ms:,.1f}",
             str(r.errors)] for r in runs])  # fmt: skip
    found = {(r.setup, r.load): r for r in runs}
    for r in runs:
        forwarded = found.get((r.setup.replace(" from its cache", " forwarding to the CPO"), r.load))
        direct = found.get(("CPO directly", r.load))
        if r.setup.endswith(" from its cache") and forwarded and direct:
            print(f"{r.setup}, {r.load}: {r.pages_per_s / forwarded.pages_per_s:.2f}x the pages/s of forwarding, "
                  f"{r.pages_per_s / direct.pages_per_s:.2f}x the CPO's own")  # fmt: skip
    print()
    _table([("Redis, cache filled by pull sync", -32), ("sync s", 6), ("CLI s", 5), ("used_memory +", 13),
            ("per loc.", 8), ("doc + index/loc.", 16), ("JSON/loc.", 9), ("GET All snapshot", 22)],
           [[f.hub, f"{f.sync_s:.1f}", f"{f.cli_sync_s:.1f}", f"{(f.used_after - f.used_before) / 2**20:.1f} MB",
             f"{(f.used_after - f.used_before) / n:,.0f} B", f"{f.doc_bytes / n:,.0f} + {f.index_bytes / n:,.0f} B",
             f"{f.json_bytes / n:,.0f} B", f"{f.snapshot_bytes / 1024:,.0f} kB each, {f.snapshots} left"]
            for f in fills])  # fmt: skip
    print("sync s: the CPO's registration to the end of the hub's own pull sync; CLI s: `ocpi-hub sync locations "
          "--full` after it, process start included. used_memory +: INFO memory before/after that first sync, over "
          "the whole server (other clients move it); doc + index/loc.: MEMORY USAGE of the cache's keys per location "
          "(its JSON document; its entries in the two sorted sets). A GET All snapshot lists every location id and "
          f"lives {SNAPSHOT_TTL_S // 60} minutes; the number left is what the runs above started.")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--locations", type=int, default=10_000, help="locations the CPO holds (default 10000)")
    parser.add_argument("--page", type=int, default=MAX_LIMIT, help=f"page size (limit), at most {MAX_LIMIT}")
    parser.add_argument("--duration", type=int, default=15, help="seconds per run (default 15)")
    parser.add_argument("--connections", type=int, nargs="+", default=[4, 32], help="wrk connections (walkers)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="hub worker counts to measure")
    parser.add_argument("--server", default="uvicorn", choices=["uvicorn", "granian"])
    args = parser.parse_args()
    if not 1 <= args.page <= MAX_LIMIT or args.locations % args.page:
        sys.exit(f"--page must be 1..{MAX_LIMIT} and divide --locations, so that every page is full")
    require("wrk")
    facts = machine(os.environ.get("OCPI_HUB_REDIS_URL"))
    work = Path(tempfile.mkdtemp(prefix="ocpi-hub-bench-"))
    cpo_port, emsp_port = free_port(), free_port()
    cpo_url, emsp_url = f"http://127.0.0.1:{cpo_port}", f"http://127.0.0.1:{emsp_port}"
    granian = [sys.executable, "-m", "granian", "--interface", "rsgi", "--no-ws", "--log-level", "warning"]
    cpo_env = dict(os.environ) | {"BENCH_CPO": "-".join(CPO), "BENCH_CPO_LOCATIONS": str(args.locations)}
    runs: list[Run] = []
    fills: list[Fill] = []
    try:
        with (
            process([*granian, "--port", str(cpo_port), "bench.paging:app"], cpo_env, work / "cpo.log"),
            process([*granian, "--port", str(emsp_port), "bench.receiver:app"], dict(os.environ), work / "emsp.log"),
        ):
            wait_http(f"{cpo_url}/ocpi/versions")
            wait_http(f"{emsp_url}/ocpi/versions")
            direct = f"{cpo_url}/ocpi/2.2.1/locations/sender?limit={args.page}"
            runs += measure("CPO directly", direct, {"Authorization": "Token eA=="}, args, work)
            for workers in args.workers:
                hub_runs, hub_fill = bench_hub(workers, cpo_url, emsp_url, args, work)
                runs, fills = runs + hub_runs, [*fills, hub_fill]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(runs, fills, args, facts)


if __name__ == "__main__":
    main()
