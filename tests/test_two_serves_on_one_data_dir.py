"""Two `ocpi-hub serve`s on one data dir: allowed, said, and the commands beside them name one that still runs."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from tests.conftest import OUTPUT, ROOT, SECRET_KEY, Hub, Services, hub_env, start_hub, unique_party_id
from tests.test_serve_and_storage import _processes_under as _embedded_under
from tests.test_serve_and_storage import _wait_until


def _invitations_versions_url(env: dict[str, str]) -> str:
    """The versions URL `ocpi-hub invite` hands out, without OCPI_HUB_PUBLIC_URL: the one recorded in the data dir."""
    invited = subprocess.run([sys.executable, "-m", "hub.cli", "invite", "--name", "Shared Co", "--role",
                              f"CPO:NL:{unique_party_id()}"], env=env, cwd=ROOT, capture_output=True, text=True,
                             timeout=60)  # fmt: skip
    assert invited.returncode == 0, invited.stderr
    return str(json.loads(invited.stdout)["versions_url"])


def test_the_commands_beside_two_serves_on_one_data_dir_name_one_still_running_and_the_second_warns(
    services: Services, tmp_path: Path
) -> None:
    # Two hub processes on one data dir (behind a local load balancer, say) share its embedded servers. Once the
    # second stopped, `ocpi-hub invite` handed out its dead URL in token A invitations while the first went on serving.
    env = hub_env(services, tmp_path)
    assert "OCPI_HUB_PUBLIC_URL" not in env  # start_hub gives each serve its own
    first = start_hub(env, OUTPUT / "first-serve-on-a-data-dir.log")
    hubs: list[Hub] = [first]
    try:
        second = start_hub(env, OUTPUT / "second-serve-on-a-data-dir.log")
        hubs.append(second)
        lines = [json.loads(line) for line in second.log().splitlines() if line.startswith("{")]
        [warning] = [line for line in lines if line.get("event") == "data_dir_shared"]
        assert warning["level"] == "warning" and warning["serves"] == [{"pid": first.process.pid, "url": first.base}]
        assert f"runs on {tmp_path} (pid {first.process.pid} at {first.base})" in warning["message"]
        assert "data_dir_shared" not in first.log()
        assert _invitations_versions_url(env) == second.versions_url  # the one started last
        assert second.stop() == 0
        assert _invitations_versions_url(env) == first.versions_url
        # One killed outright (SIGKILL, a crash) leaves its record behind, which is not taken for a running serve's.
        killed = start_hub(env, OUTPUT / "killed-serve-on-a-data-dir.log")
        hubs.append(killed)
        killed.process.kill()
        killed.process.wait(10)
        assert _invitations_versions_url(env) == first.versions_url
    finally:
        for hub in reversed(hubs):
            hub.stop()
    # none runs: the URL of the last that ran, where a hub started again on its port is found
    assert _invitations_versions_url(env) == first.versions_url


def test_the_embedded_servers_stop_with_the_last_serve_on_the_data_dir_whichever_started_them(tmp_path: Path) -> None:
    # They stopped with the serve that started them: the second serve went on running on a database and a Redis that
    # were gone, failing every request; and the second, had it been the last, left them running for good.
    data_dir = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCPI_HUB_")} | {
        "OCPI_HUB_DATA_DIR": str(data_dir), "OCPI_HUB_SECRET_KEY": SECRET_KEY,
        "OCPI_HUB_ADMIN_TOKEN": secrets.token_urlsafe(32)}  # fmt: skip
    first = start_hub(env, OUTPUT / "first-serve-on-embedded-servers.log", timeout=120)
    hubs: list[Hub] = [first]
    try:
        second = start_hub(env, OUTPUT / "second-serve-on-embedded-servers.log")
        hubs.append(second)
        assert first.stop() == 0
        party_id = unique_party_id()
        second.invite("Outlasting Co", ("CPO", "NL", party_id))
        with second.admin() as admin:
            assert party_id in {party["party_id"] for party in admin.get("/admin/api/parties").json()["items"]}
        assert httpx.get(f"{second.base}/ready", timeout=10).json() == {"status": "ready"}  # PostgreSQL and Redis
        # Two stopping at once: one of them, the last, stops the embedded servers
        third = start_hub(env, OUTPUT / "third-serve-on-embedded-servers.log")
        hubs.append(third)
        for hub in (second, third):
            hub.process.send_signal(signal.SIGTERM)
        assert [hub.stop() for hub in (second, third)] == [0, 0]
        assert _wait_until(lambda: not _embedded_under(data_dir)), [p.cmdline() for p in _embedded_under(data_dir)]
    finally:
        for hub in reversed(hubs):
            hub.stop()
        for left in _embedded_under(data_dir):
            left.kill()
