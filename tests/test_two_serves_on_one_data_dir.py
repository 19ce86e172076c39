"""Serves and commands on one data dir: two serves allowed and said, the commands beside them naming one that still
runs, and the embedded servers running until the last serve or command on them ends."""

from __future__ import annotations

import fcntl
import json
import secrets
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx

from tests.conftest import (
    LOOPBACK,
    OUTPUT,
    ROOT,
    SECRET_KEY,
    Hub,
    Services,
    embedded_servers_under,
    fresh_env,
    hub_env,
    register_at_hub,
    start_hub,
    unique_party_id,
    wait_until,
)
from tests.parties import Party, free_port
from tests.test_admin_and_cli import _cli
from tests.test_location_cache import _location
from tests.test_routing import _roles, party_key


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
    env = _on_embedded_servers(data_dir := tmp_path / "data")
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
        # waited for, not stopped again: Hub.stop() sends one more SIGTERM to a serve still running, which the last of
        # them may take while Python finalizes, after its handlers are gone (exit -15), as it stops the servers
        assert [hub.process.wait(60) for hub in (second, third)] == [0, 0]
        _embedded_servers_stop(data_dir)
    finally:
        _stop_all(hubs[::-1], [], [], data_dir)


def test_a_command_running_as_the_last_serve_stops_keeps_the_embedded_servers_until_it_ends(
    tmp_path: Path, start_party
) -> None:
    # The last serve to stop stopped the embedded servers under an `ocpi-hub sync` still pulling a CPO's locations
    # beside it: the sync failed half-way, with what it had read not written.
    env = _on_embedded_servers(data_dir := tmp_path / "data")
    hub = start_hub(env, OUTPUT / "serve-stopping-beside-a-sync.log", timeout=120)
    sync, cpo = None, None
    roles = _roles("CPO")
    try:
        cpo = register_at_hub(hub, start_party, roles)
        cpo.objects["locations"] = [_location(party_key(cpo), "L1", "2026-12-01T10:00:00Z")]
        assert wait_until(lambda: _synced_at(hub, roles[2]), 60)  # the hub's own first sync, at its registration
        synced_by_the_hub = _synced_at(hub, roles[2])
        pulls = len(cpo.syncs())
        cpo.held, cpo.held_paths = threading.Event(), ("/ocpi/2.2.1/locations/sender",)
        command = [sys.executable, "-m", "hub.cli", "sync", "locations", "--party", "-".join(party_key(cpo))]
        sync = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert wait_until(lambda: len(cpo.syncs()) > pulls, 60), sync.poll() is None or sync.communicate()
        assert hub.stop() == 0  # the last serve, while the sync waits for the CPO's answer
        assert embedded_servers_under(data_dir), "the serve stopped the servers the sync works on"
        cpo.held.set()
        _, stderr = sync.communicate(timeout=60)
        assert sync.returncode == 0, stderr
        # the last to end stops them, though a serve started them
        _embedded_servers_stop(data_dir)
    finally:
        _stop_all([hub], [cpo], [sync], data_dir)
    # started again, the hub keeps what the sync wrote
    again = start_hub(env, OUTPUT / "serve-after-the-sync.log", timeout=120)
    try:
        assert _synced_at(again, roles[2]) > synced_by_the_hub
    finally:
        _stop_all([again], [], [], data_dir)


def test_a_command_that_started_the_embedded_servers_leaves_them_to_another_still_running_on_them(
    tmp_path: Path, start_party
) -> None:
    # A command stopped the embedded servers it had started as it ended, unless a serve ran: another command working
    # on them beside it (a sync of tokens beside one of locations, no hub running) failed half-way.
    env = _on_embedded_servers(data_dir := tmp_path / "data")
    hub = start_hub(env, OUTPUT / "serve-before-two-syncs.log", timeout=120)
    syncs: list[subprocess.Popen[str]] = []
    cpo, emsp = None, None
    try:
        cpo = register_at_hub(hub, start_party, roles := _roles("CPO"))
        emsp = register_at_hub(hub, start_party, _roles("EMSP"))
        assert wait_until(lambda: _synced_at(hub, roles[2]), 60)
        assert hub.stop() == 0
        assert wait_until(lambda: not embedded_servers_under(data_dir))  # no command ran: the serve stopped them
        for party, module in ((cpo, "locations"), (emsp, "tokens")):
            pulls = len(party.owner_pulls(module))
            party.held, party.held_paths = threading.Event(), (f"/ocpi/2.2.1/{module}/sender",)
            command = [sys.executable, "-m", "hub.cli", "sync", module, "--party", "-".join(party_key(party))]
            syncs.append(subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True))  # fmt: skip
            assert wait_until(lambda: len(party.owner_pulls(module)) > pulls, 60), syncs[-1].communicate()  # noqa: B023
        cpo.held.set()  # the sync that started the servers ends first
        assert syncs[0].wait(60) == 0, syncs[0].communicate()
        assert embedded_servers_under(data_dir), "the first sync stopped the servers the second works on"
        emsp.held.set()
        assert syncs[1].wait(60) == 0, syncs[1].communicate()
        _embedded_servers_stop(data_dir)
    finally:
        _stop_all([hub], [cpo, emsp], syncs, data_dir)


def test_a_command_waiting_for_a_serve_busy_on_the_data_dir_says_so_then_goes_on(tmp_path: Path) -> None:
    # A command started while the last serve on the data dir stopped the embedded servers (under the data dir's lock,
    # up to about 40 s) waited for it without a word: it looked hung.
    env = _on_embedded_servers(data_dir := tmp_path / "data")
    assert start_hub(env, OUTPUT / "serve-before-a-waiting-command.log", timeout=120).stop() == 0
    assert wait_until(lambda: not embedded_servers_under(data_dir))
    said = OUTPUT / "command-waiting-for-the-data-dir.log"
    command = None
    try:
        with (data_dir / "serving" / ".lock").open("a") as lock, said.open("w") as stderr:
            fcntl.flock(lock, fcntl.LOCK_EX)  # as the last serve holds it while it stops the servers
            command = subprocess.Popen([sys.executable, "-m", "hub.cli", "parties", "list"], env=env, cwd=ROOT,
                                       stdout=subprocess.PIPE, stderr=stderr, text=True)  # fmt: skip
            assert wait_until(lambda: '"data_dir_busy"' in said.read_text(), 30), said.read_text()
            assert command.poll() is None and not embedded_servers_under(data_dir)  # waiting, not yet started them
        stdout, _ = command.communicate(timeout=120)  # the lock let go: it starts the servers, lists, stops them
        assert command.returncode == 0, said.read_text()
        assert json.loads(stdout) == {"items": []}
        _embedded_servers_stop(data_dir)
    finally:
        _stop_all([], [], [command], data_dir)


def test_the_embedded_servers_a_killed_serve_left_stop_with_the_next_command_to_end_there(tmp_path: Path) -> None:
    # A serve killed outright (SIGKILL, a crash), the only one on its data dir, left the embedded servers running
    # until a later serve there stopped: a command run meanwhile left them running too, not having started them.
    env = _on_embedded_servers(data_dir := tmp_path / "data")
    hub = start_hub(env, OUTPUT / "serve-killed-on-embedded-servers.log", timeout=120)
    try:
        hub.process.kill()
        hub.process.wait(10)
        assert embedded_servers_under(data_dir)  # servers of their own: they outlive it
        listed = subprocess.run([sys.executable, "-m", "hub.cli", "parties", "list"], env=env, cwd=ROOT,
                                capture_output=True, text=True, timeout=120)  # fmt: skip
        assert listed.returncode == 0, listed.stderr
        _embedded_servers_stop(data_dir)  # the last on the data dir to end
    finally:
        _stop_all([hub], [], [], data_dir)


def _on_embedded_servers(data_dir: Path) -> dict[str, str]:
    """The environment of a serve or a command without server URLs: the embedded servers in data_dir."""
    return fresh_env(data_dir, OCPI_HUB_SECRET_KEY=SECRET_KEY, OCPI_HUB_PARTY_NETWORKS_ALLOWED=LOOPBACK,
                     OCPI_HUB_ADMIN_TOKEN=secrets.token_urlsafe(32))  # fmt: skip


def _embedded_servers_stop(data_dir: Path) -> None:
    if not wait_until(lambda: not embedded_servers_under(data_dir)):
        raise AssertionError(f"still running: {[p.cmdline() for p in embedded_servers_under(data_dir)]}")


def _stop_all(
    hubs: list[Hub], held: list[Party | None], commands: list[subprocess.Popen[str] | None], data_dir: Path
) -> None:
    """After a test on embedded servers: its parties' held answers let go, its commands and serves stopped, and any
    embedded server still running in data_dir killed."""
    for party in held:
        if party is not None and party.held is not None:
            party.held.set()
    for command in commands:
        if command is not None and command.poll() is None:
            command.kill()
    for hub in hubs:
        hub.stop()
    for left in embedded_servers_under(data_dir):
        left.kill()


def _synced_at(hub: Hub, party_id: str) -> str:
    """When the hub's cache last took the whole list of locations of the CPO party_id ("" not yet)."""
    with hub.admin() as admin:
        [party] = [p for p in admin.get("/admin/api/parties").json()["items"] if p["party_id"] == party_id]
    return str(party["locations_synced_at"] or "")


def _said(stderr: str, event: str) -> list[dict]:
    return [line for line in map(json.loads, filter(lambda s: s.startswith("{"), stderr.splitlines()))
            if line.get("event") == event]  # fmt: skip


def test_the_commands_beside_a_serve_take_its_settings_theirs_do_not_set_and_warn_of_another_identity(
    services: Services, tmp_path: Path
) -> None:
    # The hub DE-HBX calls its parties on 127.0.0.1 (allowed there). A command beside it run without those variables
    # acted as NL-HUB (invited a CPO DE-HBX, the running hub's own id) and refused to call a party on 127.0.0.1.
    env = hub_env(services, tmp_path, OCPI_HUB_COUNTRY_CODE="DE", OCPI_HUB_PARTY_ID="HBX")
    assert env["OCPI_HUB_PARTY_NETWORKS_ALLOWED"] == LOOPBACK
    beside = {k: v for k, v in env.items() if k not in ("OCPI_HUB_COUNTRY_CODE", "OCPI_HUB_PARTY_ID",
                                                        "OCPI_HUB_PARTY_NETWORKS_ALLOWED")}  # fmt: skip
    hub = start_hub(env, OUTPUT / "serve-handing-on-its-settings.log")
    try:
        invited = _cli(hub, "invite", "--name", "Impostor Co", "--role", "CPO:DE:HBX", env=beside)
        assert invited.returncode == 1 and "DE-HBX (the hub itself)" in invited.stderr, invited.stderr
        [took] = _said(invited.stderr, "settings_of_the_running_serve")
        assert took["pid"] == hub.process.pid and took["taken"] == {
            "OCPI_HUB_COUNTRY_CODE": "DE", "OCPI_HUB_PARTY_ID": "HBX", "OCPI_HUB_PARTY_NETWORKS_ALLOWED": LOOPBACK,
            "OCPI_HUB_PUBLIC_URL": hub.base}  # fmt: skip
        assert f"(pid {hub.process.pid})" in took["message"] and not _said(invited.stderr, "not_the_running_hub")
        # a party on 127.0.0.1, where nothing listens: called (and not reached), not refused as not public
        connected = _cli(hub, "connect", "--versions-url", f"http://127.0.0.1:{free_port()}/ocpi/versions",
                         "--token-a", "token-a", env=beside)  # fmt: skip
        assert connected.returncode == 1 and "Traceback" not in connected.stderr, connected.stderr
        assert "no address the hub calls parties at" not in connected.stderr, connected.stderr
        # its own country code wins, said to be another hub's than the one running
        other = _cli(hub, "invite", "--name", "Other Co", "--role", f"CPO:NL:{unique_party_id()}",
                     env=beside | {"OCPI_HUB_COUNTRY_CODE": "BE"})  # fmt: skip
        assert other.returncode == 0, other.stderr
        [warning] = _said(other.stderr, "not_the_running_hub")
        assert warning["level"] == "warning" and (warning["variable"], warning["here"], warning["serve"]) == (
            "OCPI_HUB_COUNTRY_CODE",
            "BE",
            "DE",
        )
        assert "OCPI_HUB_COUNTRY_CODE" not in _said(other.stderr, "settings_of_the_running_serve")[0]["taken"]
    finally:
        hub.stop()
    # none running: as before, its own environment's
    after = _cli(hub, "invite", "--name", "Later Co", "--role", f"CPO:NL:{unique_party_id()}", env=beside)
    assert after.returncode == 0 and not _said(after.stderr, "settings_of_the_running_serve"), after.stderr


def test_a_serve_hands_on_every_setting_but_its_secrets_storage_url_and_log_level() -> None:
    # a variable added later is sorted into one or the other, not left out (or handed on, a secret) unseen
    from hub.data_dir_serves import HANDED_ON, KEPT_BACK
    from hub.settings_variables import VARIABLES

    assert sorted(HANDED_ON + KEPT_BACK) == sorted(name for name, _, _ in VARIABLES)
    assert not {"OCPI_HUB_ADMIN_TOKEN", "OCPI_HUB_SECRET_KEY", "OCPI_HUB_METRICS_TOKEN"} & set(HANDED_ON)
