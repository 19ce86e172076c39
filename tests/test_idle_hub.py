"""An idle hub does not chatter at the database: its background loops sleep until there is work, and a change any
hub process makes wakes them within a second."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import asyncpg
import pytest

from tests.conftest import OUTPUT, ROOT, Hub, Services, hub_env, register_at_hub, start_hub, two_hub_processes
from tests.parties import Party
from tests.test_hub_client_info import _wait_for
from tests.test_routing import _roles


def _table_reads(database_url: str, table: str) -> int:
    """How often the table was read (sequential and index scans), as PostgreSQL counts them: a backend reports what
    it read within a second, or within ten once it is idle."""

    async def fetch() -> int:
        conn = await asyncpg.connect(database_url)
        try:
            sql = "SELECT seq_scan + coalesce(idx_scan, 0) FROM pg_stat_user_tables WHERE relname = $1"
            return int(await conn.fetchval(sql, table))
        finally:
            await conn.close()

    return asyncio.run(fetch())


def _reads_while_idle(database_url: str, table: str, seconds: float) -> int:
    time.sleep(11)  # what came before is counted: an idle backend reports its reads within ten seconds
    before = _table_reads(database_url, table)
    time.sleep(seconds)
    return _table_reads(database_url, table) - before


@pytest.fixture
def two_hubs(services: Services, empty_database: str, tmp_path: Path) -> Iterator[tuple[Hub, Hub]]:
    """Two hub processes with a database and cache of their own: no other test's hub reads or changes them."""
    env = hub_env(services, tmp_path / "hub", OCPI_HUB_DATABASE_URL=empty_database,
                  OCPI_HUB_REDIS_PREFIX=f"{services.redis_prefix}idle-two:")  # fmt: skip
    with two_hub_processes(env, tmp_path / "hub-2", "hub-idle") as hubs:
        yield hubs


def test_an_idle_hub_does_not_ask_the_database_for_pending_client_info_pushes_every_second(
    services: Services, empty_database: str, tmp_path: Path, start_party
) -> None:
    env = hub_env(services, tmp_path / "hub", OCPI_HUB_DATABASE_URL=empty_database,
                  OCPI_HUB_REDIS_PREFIX=f"{services.redis_prefix}idle-pushes:")  # fmt: skip
    hub = start_hub(env, OUTPUT / "hub-idle-pushes.log")
    try:
        register_at_hub(hub, start_party, _roles("EMSP"))  # two changes pushed (PLANNED, CONNECTED), then none
        # Once a second would be 6 reads or more; asleep until the directory changes, or for a minute, it is none
        # (PostgreSQL may count the last pushes late).
        assert _reads_while_idle(empty_database, "client_info_push", 6) <= 2
    finally:
        hub.stop()


def _pushed_after_s(watcher: Party, about: tuple[str, str]) -> float:
    """How long after the change its ClientInfo reached the watcher: last_updated is the time of the transaction that
    made the change, on the database server, on this machine."""
    cc, pid = about
    [push] = _wait_for(lambda: [r for r in watcher.client_infos() if r.path.endswith(f"/{cc}/{pid}")], timeout=5)
    changed = datetime.fromisoformat(json.loads(push.body)["last_updated"].replace("Z", "+00:00")).timestamp()
    return time.time() - (time.monotonic() - push.at) - changed


def test_a_change_made_on_one_of_two_idle_hub_processes_is_pushed_within_a_second(
    two_hubs: tuple[Hub, Hub], empty_database: str, start_party
) -> None:
    first, second = two_hubs
    watcher = register_at_hub(first, start_party, _roles("EMSP"))
    assert _reads_while_idle(empty_database, "client_info_push", 4) <= 2  # both asleep: not 8 reads or more
    # An invitation on the second process queues the PLANNED ClientInfo of the party invited.
    _, cc, pid = roles = _roles("CPO")
    second.invite("Invited on the second", roles)
    assert _pushed_after_s(watcher, (cc, pid)) < 1
    # One from a command-line process, which pushes nothing itself: the hub processes wake on its announcement.
    _, cc, pid = _roles("CPO")
    done = subprocess.run(
        [sys.executable, "-m", "hub.cli", "invite", "--name", "Invited from the shell", "--role", f"CPO:{cc}:{pid}"],
        env=second.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert _pushed_after_s(watcher, (cc, pid)) < 1


def test_an_idle_hub_asks_the_database_for_silent_platforms_only_when_the_next_is_due(
    services: Services, empty_database: str, tmp_path: Path, start_party
) -> None:
    env = hub_env(services, tmp_path / "hub", OCPI_HUB_DATABASE_URL=empty_database, OCPI_HUB_STILL_ALIVE_S="12",
                  OCPI_HUB_OFFLINE_PROBE_S="0.5",
                  OCPI_HUB_REDIS_PREFIX=f"{services.redis_prefix}idle-alive:")  # fmt: skip
    hub = start_hub(env, OUTPUT / "hub-idle-still-alive.log")
    try:
        cpo = register_at_hub(hub, start_party, _roles("CPO"))  # the registration wakes the check, asleep till then
        registered = time.monotonic()
        # Each read of the platform table counts: a check every probe interval (0.5 s) would be 12 or more.
        assert _reads_while_idle(empty_database, "platform", 6) <= 2
        # Silent for 12 s since it registered: probed then, not before, and not much later.
        [probe] = _wait_for(lambda: [r for r in cpo.received if r.method == "GET" and r.path == "/ocpi/versions"
                                     and r.at > registered], timeout=15)  # fmt: skip
        assert 11 < probe.at - registered < 13.5
    finally:
        hub.stop()
