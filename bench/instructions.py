"""CPU instructions per routed request, counted by valgrind: the hub beside the bare relay, steady on a busy machine.

    python -m bench.instructions [--requests 1000] [--concurrency 8]

bench/routing.py measures requests/s and latency, which on this shared 2-core machine move by 30% from one hour to
the next with the code unchanged (its machine-speed line shows it). A change of a few per cent in the hub's own cost
drowns in that. This benchmark counts instructions instead (valgrind --tool=callgrind), which do not depend on what
else the machine is doing: the same code, requests and concurrency give the same count within a fraction of a per
cent. It runs, one after the other, bench/bare_relay.py (uvicorn + aiohttp + group commit, none of the hub: the
floor) and the hub in strict and async mode, each in one process under callgrind, sends --warmup requests, zeroes
the counters, sends --requests more (the PUT of bench/routing.py, --concurrency at a time, so that group commits
gather rows as under load) and reads the instructions the server process executed for them. The receiver,
PostgreSQL and Redis run natively and are not counted. Needs valgrind (apt-get install valgrind).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench.harness import (
    LOCATION,
    Target,
    backing_services,
    bare_relay,
    bench_parties,
    free_port,
    hub_env,
    process,
    require,
    routed_push,
    wait_http,
)
from bench.hub_without import PARTS

VALGRIND = ["valgrind", "--tool=callgrind", "--dump-instr=no", "--collect-jumps=no", "--trace-children=no"]


@dataclass
class Count:
    name: str
    instructions_per_request: float
    seconds: float  # wall time of the counted requests under valgrind (about 50 times slower than native)


async def _send(target: Target, requests: int, concurrency: int) -> None:
    """Exactly `requests` PUTs, `concurrency` at a time; every answer must be an OCPI success."""
    remaining = iter(range(requests))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:

        async def worker() -> None:
            for _ in remaining:
                async with session.put(target.url, headers=target.headers, data=target.body) as response:
                    answer = await response.read()
                    if response.status != 200 or b'"status_code":1000' not in answer.replace(b" ", b""):
                        raise RuntimeError(f"{target.url} answered {response.status} {answer[:200]!r}")

        await asyncio.gather(*(worker() for _ in range(concurrency)))


def count(name: str, pid: int, out_file: Path, target: Target, args: argparse.Namespace) -> Count:
    asyncio.run(_send(target, args.warmup, args.concurrency))
    subprocess.run(["callgrind_control", "-z", str(pid)], check=True, capture_output=True)
    started = time.monotonic()
    asyncio.run(_send(target, args.requests, args.concurrency))
    seconds = time.monotonic() - started
    subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True)
    dumps = sorted(out_file.parent.glob(out_file.name + ".*"), key=lambda p: p.stat().st_mtime)
    totals = re.search(r"^(?:totals|summary): (\d+)", dumps[-1].read_text(), re.MULTILINE)
    if totals is None:
        raise RuntimeError(f"no totals in {dumps[-1]}")
    if args.keep:  # for callgrind_annotate: which C functions (zlib, hashlib, the interpreter...) the count is made of
        args.keep.mkdir(parents=True, exist_ok=True)
        shutil.copy(dumps[-1], args.keep / f"callgrind.{re.sub(r'[^a-z]+', '-', name.lower()).strip('-')}")
    return Count(name, int(totals.group(1)) / args.requests, seconds)


@contextlib.contextmanager
def under_callgrind(command: list[str], env: dict[str, str], work: Path, tag: str) -> Iterator[tuple[int, Path]]:
    out_file = work / f"callgrind.{tag}"
    with process([*VALGRIND, f"--callgrind-out-file={out_file}", *command], env, work / f"{tag}.log") as proc:
        yield proc.pid, out_file


def bare(database_url: str, direct: Target, args: argparse.Namespace, work: Path) -> Count:
    launch = bare_relay(1, database_url, direct)  # 1 worker: uvicorn serves in the process callgrind counts
    with under_callgrind(launch.command, launch.env, work, "bare") as (pid, out_file):
        wait_http(f"{launch.base}/ocpi/versions", timeout=300)
        return count("bare relay (no hub)", pid, out_file, launch.target, args)


def hub(mode: str, services: tuple[str, str, str], receiver: str, sender: str, args, work: Path,  # type: ignore[no-untyped-def]
        without: list[str] | None = None, tag: str = "") -> Count:  # fmt: skip
    """The hub in one process under callgrind; without: the parts of bench/hub_without.py switched off."""
    port, admin_token = free_port(), secrets.token_urlsafe(32)
    base = f"http://127.0.0.1:{port}"
    serve = ["serve", "--port", str(port), "--workers", "1"]  # 1 worker: uvicorn serves in the counted process
    command = [sys.executable, "-m", "bench.hub_without", ",".join(without), "--", *serve] if without else \
        [sys.executable, "-m", "hub.cli", *serve]  # fmt: skip
    tag = tag or mode[:2].upper()
    env, label = hub_env(services, work, mode, admin_token), f"hub-{mode}-{tag.lower()}"
    with under_callgrind(command, env, work, label) as (pid, out_file):
        wait_http(f"{base}/ocpi/versions", timeout=300)
        # The runs share the database: each registers parties of its own.
        target = routed_push(base, admin_token, receiver, sender, (f"C{tag}", f"E{tag}"), timeout=120)
        name = f"hub, {mode} log" + (f", without {_named(without)}" if without else "")
        return count(name, pid, out_file, target, args)


def _named(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else f"all {len(parts)} parts"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000, help="requests counted per subject (default 1000)")
    parser.add_argument("--warmup", type=int, default=300, help="requests sent before counting (default 300)")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight (default 8)")
    parser.add_argument("--keep", type=Path, help="copy each subject's callgrind dump into this directory")
    parser.add_argument("--modes", nargs="+", default=["strict", "async"], choices=["strict", "async"])
    parser.add_argument("--without", nargs="+", default=[], choices=list(PARTS), metavar="PART",
                        help="also count the strict hub with each of these parts switched off (bench/hub_without.py), "
                        f"and with all of them: {', '.join(PARTS)}")  # fmt: skip
    args = parser.parse_args()
    if args.without and "strict" not in args.modes:
        parser.error("--without compares with the strict hub: keep strict in --modes")
    require("valgrind", "callgrind_control", "gcc")
    work = Path(tempfile.mkdtemp(prefix="ocpi-hub-instructions-"))
    results: list[Count] = []
    try:
        with bench_parties(work) as parties, backing_services(work) as services:
            results.append(bare(services[0], parties.direct, args, work))
            for mode in args.modes:
                results.append(hub(mode, services, parties.receiver, parties.sender, args, work))
            strict = next(r for r in results if r.name == "hub, strict log") if args.without else None
            offs = [[part] for part in args.without] + ([args.without] if len(args.without) > 1 else [])
            for i, parts in enumerate(offs):
                results.append(hub("strict", services, parties.receiver, parties.sender, args, work, parts, f"{i:02d}"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    floor = results[0].instructions_per_request
    print(f"\ninstructions per routed request (valgrind callgrind, server process only), {args.requests} PUTs of a "
          f"{len(json.dumps(LOCATION))}-byte location, {args.concurrency} in flight, after {args.warmup} "
          "warm-up requests\n")  # fmt: skip
    width = max(len(r.name) for r in results)
    print(f"| {'run':<{width}} | {'instructions/request':>20} | {'over the bare relay':>19} | {'seconds':>7} |")
    print(f"|{'-' * (width + 2)}|{'-' * 22}|{'-' * 21}|{'-' * 9}|")
    for r in results:
        over = r.instructions_per_request - floor
        print(f"| {r.name:<{width}} | {r.instructions_per_request:>20,.0f} | {over:>+19,.0f} | {r.seconds:>7.1f} |")
    if strict is not None:  # what each part costs: the strict hub's count less the count without it
        print("\nwhat a part costs a routed request (the strict hub less the hub without it):\n")
        for r, parts in zip(results[-len(offs) :], offs, strict=True):
            named = _named(parts)
            cost = strict.instructions_per_request - r.instructions_per_request
            what = PARTS[parts[0]][0] if len(parts) == 1 else "all of the above"
            print(f"  {named:<{width - 10}} {cost:>+10,.0f}  ({what})")


if __name__ == "__main__":
    main()
