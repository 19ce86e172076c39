"""Many parties on one hub: what registering them, the ClientInfo pushes each registration sets off, and a broadcast
to all of them cost, beside the same fan-out sent straight to the parties.

    python -m bench.many_parties [--parties 100 300] [--broadcasts 20]

One fast party process (bench/receiver.py on granian) plays every party, each under a path of its own (/p/{n}). A
fresh hub (2 workers, strict log) gets one CPO, then eMSPs up to each count of --parties, in steps. For each step it
prints:

- registrations/s: the operator's invitations, then every party's credentials POST, 16 at a time;
- the ClientInfo pushes those registrations set off (two changes per party, PLANNED and CONNECTED, each PUT to every
  other connected party: the hub owes n^2 pushes for n parties) and how long until the last was delivered;
- a broadcast: the CPO PUTs a tariff addressed to the hub --broadcasts times, one after the other; the caller's p50
  (the hub answers before the copies go out) and the copies the hub delivered and logged per second, beside the same
  PUTs sent by one aiohttp client straight to every party, all at once (the fan-out without the hub);
- the CPU time the hub's processes spent per push and per broadcast copy.

Uses OCPI_HUB_DATABASE_URL / OCPI_HUB_REDIS_URL when set (a throwaway database and key prefix), embedded servers
otherwise. Everything runs on this machine and stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import asyncpg
import httpx

from bench.harness import (
    PROPAGATION_S,
    backing_services,
    cpu_seconds,
    free_port,
    hub_env,
    machine_speed,
    print_machine_speed,
    process,
    register,
    wait_http,
)

TARIFF = {
    "country_code": "NL", "party_id": "CPO", "id": "T1", "currency": "EUR", "last_updated": "2026-11-25T10:00:00Z",
    "elements": [{"price_components": [{"type": "ENERGY", "price": 0.30, "step_size": 1}]}],
}  # fmt: skip
AT_ONCE = 16  # registrations in flight
PUSHES = "SELECT count(*) FROM routing_log WHERE module = 'hubclientinfo'"
COPIES = "SELECT count(*) FROM routing_log WHERE routing = 'broadcast' AND from_party_id = 'HUB'"  # broadcast copies


def _token(raw: str) -> str:
    return "Token " + base64.b64encode(raw.encode()).decode()


async def _register(client: httpx.AsyncClient, hub: str, admin: dict[str, str], parties: list[tuple[int, str, str]],
                    party_base: str) -> float:  # fmt: skip
    """Invite, then register, every (n, role, party id) given; the seconds it took. Returns once all are in."""
    started = time.monotonic()
    invited = []
    for n, role, party_id in parties:
        roles = [{"role": role, "country_code": "NL", "party_id": party_id}]
        answer = await client.post(f"{hub}/admin/api/invitations", headers=admin, json={"name": party_id,
                                                                                       "roles": roles})  # fmt: skip
        answer.raise_for_status()
        invited.append((n, roles, answer.json()["token_a"]))
    await asyncio.sleep(PROPAGATION_S)  # every worker knows the new tokens A
    gate = asyncio.Semaphore(AT_ONCE)

    async def one(n: int, roles: list[dict[str, str]], token_a: str) -> None:
        credentials = {"token": secrets.token_urlsafe(16), "url": f"{party_base}/p/{n}/ocpi/versions",
                       "roles": [r | {"business_details": {"name": r["party_id"]}} for r in roles]}  # fmt: skip
        async with gate:
            answer = await client.post(f"{hub}/ocpi/2.2.1/credentials", headers={"Authorization": _token(token_a)},
                                       json=credentials)  # fmt: skip
        if answer.json().get("status_code") != 1000:
            raise RuntimeError(f"party {n} did not register: {answer.text}")

    await asyncio.gather(*(one(*invitation) for invitation in invited))
    return time.monotonic() - started


async def _until(database_url: str, sql: str, done: int, timeout: float = 600) -> float:
    """Seconds until sql's count reaches done."""
    started = time.monotonic()
    conn = await asyncpg.connect(database_url)
    try:
        while (count := await conn.fetchval(sql)) < done:
            if time.monotonic() - started > timeout:
                raise RuntimeError(f"{count} of {done} after {timeout} s: {sql}")
            await asyncio.sleep(0.05)
    finally:
        await conn.close()
    return time.monotonic() - started


async def _count(database_url: str, sql: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return int(await conn.fetchval(sql))
    finally:
        await conn.close()


async def _broadcasts(client: httpx.AsyncClient, hub: str, token_c: str, times: int) -> list[float]:
    """The CPO's tariff PUT to the hub's own party id (a broadcast), times, one after the other: each answer's ms."""
    headers = {"Authorization": _token(token_c), "Content-Type": "application/json",
               "OCPI-from-country-code": "NL", "OCPI-from-party-id": "CPO",
               "OCPI-to-country-code": "NL", "OCPI-to-party-id": "HUB"}  # fmt: skip
    body, took = json.dumps(TARIFF).encode(), []
    for _ in range(times):
        started = time.perf_counter()
        answer = await client.put(f"{hub}/ocpi/2.2.1/receiver/tariffs/NL/CPO/T1", headers=headers, content=body)
        took.append((time.perf_counter() - started) * 1000)
        if answer.json().get("status_code") != 1000:
            raise RuntimeError(f"the broadcast was refused: {answer.text}")
    return took


async def _direct_fan_out(party_base: str, parties: range, times: int) -> float:
    """The same PUT sent straight to every party, all at once, times over, by one aiohttp session: copies/s."""
    body = json.dumps(TARIFF).encode()
    headers = {"Authorization": _token("x"), "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as session:
        started = time.monotonic()

        async def put(n: int) -> None:
            url = f"{party_base}/p/{n}/ocpi/2.2.1/tariffs/receiver/NL/CPO/T1"
            async with session.put(url, data=body, headers=headers) as answer:
                await answer.read()

        for _ in range(times):
            await asyncio.gather(*(put(n) for n in parties))
        return len(parties) * times / (time.monotonic() - started)


async def bench(hub: str, hub_pid: int, admin_token: str, token_c: str, database_url: str, party_base: str,
                args) -> list[str]:  # type: ignore[no-untyped-def]  # fmt: skip
    admin = {"Authorization": f"Bearer {admin_token}"}
    rows = []
    async with httpx.AsyncClient(timeout=120) as client:
        registered = 0
        for target in args.parties:
            pushes_before = await _count(database_url, PUSHES)
            cpu = cpu_seconds(hub_pid)
            new = [(n, "EMSP", f"{n:03X}") for n in range(registered + 1, target + 1)]
            took = await _register(client, hub, admin, new, party_base)
            settled = took + await _until(database_url, "SELECT (count(*) = 0)::int FROM client_info_push "
                                                        "WHERE delivered_at IS NULL", 1)  # fmt: skip
            pushes = await _count(database_url, PUSHES) - pushes_before
            push_cpu = (cpu_seconds(hub_pid) - cpu) * 1e6 / max(pushes, 1)
            registered = target
            await asyncio.sleep(1)  # the workers' directories hold every party
            copies_before = await _count(database_url, COPIES)
            cpu, started = cpu_seconds(hub_pid), time.monotonic()
            answered = await _broadcasts(client, hub, token_c, args.broadcasts)
            expected = copies_before + registered * args.broadcasts
            await _until(database_url, COPIES, expected)
            hub_copies_s = registered * args.broadcasts / (time.monotonic() - started)
            copy_cpu = (cpu_seconds(hub_pid) - cpu) * 1e6 / (registered * args.broadcasts)
            direct_s = await _direct_fan_out(party_base, range(1, registered + 1), args.broadcasts)
            rows.append(f"| {registered + 1:7,} | {len(new) / took:15,.1f} | {pushes:9,} | {settled:10.1f} | "
                        f"{push_cpu:12,.0f} | {statistics.median(answered):9.2f} | {hub_copies_s:12,.0f} | "
                        f"{direct_s:15,.0f} | {copy_cpu:12,.0f} |")  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parties", type=int, nargs="+", default=[100, 300],
                        help="eMSP counts to grow the hub to, in steps (default 100 300)")  # fmt: skip
    parser.add_argument("--broadcasts", type=int, default=20, help="broadcasts at each step (default 20)")
    args = parser.parse_args()
    speed_before = machine_speed()
    work = Path(tempfile.mkdtemp(prefix="ocpi-hub-bench-"))
    try:
        party_port, hub_port, admin_token = free_port(), free_port(), secrets.token_urlsafe(32)
        party_base, hub = f"http://127.0.0.1:{party_port}", f"http://127.0.0.1:{hub_port}"
        granian = [sys.executable, "-m", "granian", "--interface", "rsgi", "--no-ws", "--log-level", "warning",
                   "--port", str(party_port), "bench.receiver:app"]  # fmt: skip
        with backing_services(work) as services, process(granian, dict(os.environ), work / "parties.log"):
            wait_http(f"{party_base}/ocpi/versions")
            env = hub_env(services, work, "strict", admin_token)
            command = [sys.executable, "-m", "hub.cli", "serve", "--port", str(hub_port), "--workers", "2"]
            with process(command, env, work / "hub.log") as hub_process:
                wait_http(f"{hub}/ocpi/versions")
                token_c = register(
                    hub, admin_token, f"{party_base}/p/0", ("CPO", "NL", "CPO")
                )  # the broadcasts' sender
                rows = asyncio.run(bench(hub, hub_process.pid, admin_token, token_c, services[0], party_base, args))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        "\nmany parties: one CPO and n eMSPs on one hub (2 workers, strict log), one party process playing them all\n"
    )
    print("| parties | registrations/s | ClientInfo pushes | pushes done in s | CPU us/push | broadcast answer p50 ms "
          "| copies/s via hub | copies/s direct | CPU us/copy |")  # fmt: skip
    print("|---------|-----------------|-------------------|------------------|-------------|-------------------------"
          "|------------------|-----------------|-------------|")  # fmt: skip
    for row in rows:
        print(row)
    print("\nClientInfo pushes: every registration's PLANNED and CONNECTED changes, each PUT to every other connected "
          "party (n^2 for n parties); 'done in' counts from the first invitation. copies/s direct: the same PUTs from "
          "one aiohttp client straight to the parties, all at once.")  # fmt: skip
    print_machine_speed(speed_before)


if __name__ == "__main__":
    main()
