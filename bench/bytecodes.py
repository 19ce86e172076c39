"""Python bytecodes per routed request, by function: where the interpreter's share of bench.instructions goes.

    python -m bench.bytecodes [--requests 500] [--top 60] [--mode strict]

bench/instructions.py counts a request's CPU instructions, four fifths of which the interpreter executes; callgrind
sees them as the interpreter's C functions, not as the Python functions they run for. This benchmark starts the hub
(one worker) with a trace function that counts the bytecodes each Python function executes (sys.settrace, opcode
events), sends --warmup PUTs, switches counting on (SIGUSR1), sends --requests more, switches it off (SIGUSR2: the
counts go to a file) and prints the bytecodes a request by package and the functions executing most. A bytecode is a
unit of the interpreter's work, not of time (a call costs more than a load), and tracing makes the hub about 30 times
slower, so group commits and the location cache's batches are smaller than under load: their per-batch work weighs
more here than at full rate. Only for comparing where the hub's Python work goes, before and after a change.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import secrets
import signal
import sys
import tempfile
import time
from pathlib import Path

from bench.harness import (
    ROOT,
    backing_services,
    bench_parties,
    free_port,
    hub_env,
    process,
    require,
    routed_push,
    wait_http,
)
from bench.instructions import _send
from bench.tracing_hub import COUNTS_FILE


def _place(filename: str) -> str:
    """A code object's file, short: the repository's files as in it, a package's from its package, the stdlib's."""
    path = Path(filename)
    if path.is_relative_to(ROOT) and ".venv" not in path.parts:
        return str(path.relative_to(ROOT))
    parts = path.parts
    for marker in ("site-packages", "dist-packages"):
        if marker in parts:
            return "/".join(parts[parts.index(marker) + 1 :])
    return f"stdlib/{path.name}" if path.suffix == ".py" else filename


def report(counts: list[tuple[str, int, str, int]], requests: int, top: int) -> None:
    total = sum(count for *_, count in counts)
    print(f"\n{total / requests:,.0f} bytecodes a routed request ({requests} PUTs)\n")
    by_package: collections.Counter[str] = collections.Counter()
    for filename, _, _, count in counts:
        by_package[_place(filename).split("/")[0]] += count
    print("by package (or the hub's top-level package):")
    for package, count in by_package.most_common(20):
        print(f"  {count / requests:>8,.0f}  {count / total:6.1%}  {package}")
    print(f"\nthe {top} functions executing most:")
    for filename, line, name, count in counts[:top]:
        print(f"  {count / requests:>8,.0f}  {_place(filename)}:{line} {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=500, help="requests counted (default 500)")
    parser.add_argument("--warmup", type=int, default=300, help="requests sent before counting (default 300)")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight (default 8)")
    parser.add_argument("--mode", default="strict", choices=["strict", "async"])
    parser.add_argument("--top", type=int, default=60, help="functions listed (default 60)")
    args = parser.parse_args()
    require("gcc")
    with tempfile.TemporaryDirectory(prefix="ocpi-hub-bytecodes-") as folder:
        work = Path(folder)
        with bench_parties(work) as parties, backing_services(work) as services:
            port, admin_token = free_port(), secrets.token_urlsafe(32)
            base = f"http://127.0.0.1:{port}"
            env = hub_env(services, work, args.mode, admin_token) | {COUNTS_FILE: str(work / "counts.json")}
            command = [sys.executable, "-m", "bench.tracing_hub", "serve", "--port", str(port), "--workers", "1"]
            with process(command, env, work / "hub.log") as hub:
                wait_http(f"{base}/ocpi/versions", timeout=300)
                target = routed_push(base, admin_token, parties.receiver, parties.sender, ("CBC", "EBC"), timeout=120)
                asyncio.run(_send(target, args.warmup, args.concurrency))
                hub.send_signal(signal.SIGUSR1)
                time.sleep(0.5)  # the signal is handled between two bytecodes of the hub's loop
                asyncio.run(_send(target, args.requests, args.concurrency))
                hub.send_signal(signal.SIGUSR2)
                deadline = time.monotonic() + 60
                while not (work / "counts.json").exists() and time.monotonic() < deadline:
                    time.sleep(0.2)
            counts = [tuple(row) for row in json.loads((work / "counts.json").read_text())]
    report(counts, args.requests, args.top)  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
