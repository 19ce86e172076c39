"""`ocpi-hub demo`: one command starts the hub and four demo parties that register and exchange every kind of
message through it, and Ctrl-C stops all of it."""

from __future__ import annotations

import re
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import OUTPUT, embedded_servers_under, fresh_env, start_hub, wait_until
from tests.demo_process import RunningDemo, demo_env, start_demo

PARTY_URL = re.compile(r", serves (http://127\.0\.0\.1:\d+)/ocpi/versions")


@pytest.fixture
def demo(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RunningDemo]:
    data_dir = tmp_path / "demo-data"
    running = start_demo(demo_env(request, data_dir), data_dir, OUTPUT / "demo.log", interval_s=0.5)
    try:
        yield running
    finally:
        running.stop()


def _all_rows(client: httpx.Client) -> list[dict]:
    rows, cursor = [], None
    while True:
        page = client.get("/admin/api/routing-log", params={"limit": 500} | ({"cursor": cursor} if cursor else {}))
        assert page.status_code == 200, page.text
        rows += page.json()["items"]
        if not (cursor := page.json()["next_cursor"]):
            return rows


def _kinds(rows: list[dict]) -> set[tuple[str, str, str]]:
    """(module, method, what) of each row that went through, with `what` the last meaningful path part."""
    found = set()
    for row in rows:
        if row["http_status"] >= 300 or row["ocpi_status_code"] != 1000:
            continue
        path = row["path"]
        what = "authorize" if path.endswith("/authorize") else "result" if "/results/" in path else row["routing"]
        if "/commands/START_SESSION" in path:
            what = "START_SESSION"
        found.add((row["module"], row["method"], what))
    return found


def _port_closed(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, int(port))) != 0


def test_demo_registers_four_parties_exchanges_every_kind_of_message_and_stops_cleanly_on_ctrl_c(
    demo: RunningDemo,
) -> None:
    with demo.admin() as admin:
        parties = admin.get("/admin/api/parties").json()["items"]
        assert {(p["role"], p["country_code"], p["party_id"], p["status"]) for p in parties} == {
            ("CPO", "NL", "ECO", "CONNECTED"), ("CPO", "BE", "VLT", "CONNECTED"),
            ("EMSP", "DE", "MFX", "CONNECTED"), ("EMSP", "NL", "EVD", "CONNECTED"),
        }  # fmt: skip
        rows = _all_rows(admin)
    kinds = _kinds(rows)
    for expected in [
        ("locations", "PUT", "broadcast"),  # a CPO pushes its locations to every eMSP
        ("locations", "PATCH", "broadcast"),  # an EVSE status change
        ("locations", "GET", "hub"),  # GET All via the hub, from its cache
        ("locations", "GET", "direct"),  # one location from its CPO
        ("tokens", "PUT", "direct"),  # an eMSP pushes its tokens to a CPO
        ("tokens", "POST", "authorize"),  # real-time authorization, open routing to the token's eMSP
        ("commands", "POST", "START_SESSION"),
        ("commands", "POST", "result"),  # the CommandResult through the hub's response_url
        ("sessions", "PUT", "direct"),
        ("sessions", "PATCH", "direct"),
        ("cdrs", "POST", "open"),  # the CDR goes to the eMSP of its cdr_token
    ]:
        assert expected in kinds, f"no {expected} in the routing log: {sorted(kinds)}"
    # the command and its result share one conversation
    [command] = [r for r in rows if r["path"].endswith("/commands/START_SESSION")][-1:]
    conversation = {r["path"].split("/")[3] for r in rows if r["correlation_id"] == command["correlation_id"]}
    assert conversation == {"receiver", "results"}
    # a card the eMSP does not know: its 2004 is relayed and logged; nothing else failed
    unknown_cards = [r for r in rows if r["ocpi_status_code"] == 2004 and r["path"].endswith("/authorize")]
    assert unknown_cards
    failed = [r for r in rows if r not in unknown_cards and (r["http_status"] >= 400 or r["ocpi_status_code"] != 1000)]
    assert failed == [], failed

    party_urls = PARTY_URL.findall("".join(demo.output))
    assert len(party_urls) == 4
    demo.process.send_signal(signal.SIGINT)
    assert demo.process.wait(60) == 0
    for url in [demo.base, *party_urls]:
        assert _port_closed(url), f"{url} still answers after the demo stopped"
    assert wait_until(lambda: not embedded_servers_under(demo.data_dir)), "embedded servers still running"


def test_a_second_demo_on_the_same_data_updates_its_parties_registrations(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    data_dir = tmp_path / "demo-data"
    env = demo_env(request, data_dir)
    for run, how in enumerate(("registered (invitation, credentials handshake)", "updated its registration")):
        demo = start_demo(env, data_dir, OUTPUT / f"demo-again-{run}.log", interval_s=3600)
        try:
            assert "".join(demo.output).count(how) == 4, "".join(demo.output)
            with demo.admin() as admin:
                parties = admin.get("/admin/api/parties").json()["items"]
            assert [p["status"] for p in parties] == ["CONNECTED"] * 4
            demo.process.send_signal(signal.SIGINT)
            assert demo.process.wait(60) == 0
        finally:
            demo.stop()


def test_a_party_whose_tokens_were_renewed_or_that_was_taken_off_the_hub_comes_back_on_the_next_run(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    data_dir = tmp_path / "demo-data"
    env = demo_env(request, data_dir)
    demo = start_demo(env, data_dir, OUTPUT / "demo-operator-0.log", interval_s=3600)
    try:
        with demo.admin() as admin:
            ids = {f"{p['country_code']}-{p['party_id']}": p["platform_id"]
                   for p in admin.get("/admin/api/parties").json()["items"]}  # fmt: skip
            rotated = admin.post(f"/admin/api/parties/{ids['NL-EVD']}/credentials")
            assert rotated.status_code == 200 and rotated.json()["rotated"], rotated.text
            taken_off = admin.delete(f"/admin/api/parties/{ids['BE-VLT']}")
            assert taken_off.status_code == 200 and taken_off.json()["party_told"], taken_off.text
        demo.process.send_signal(signal.SIGINT)
        assert demo.process.wait(60) == 0
    finally:
        demo.stop()
    demo = start_demo(env, data_dir, OUTPUT / "demo-operator-1.log", interval_s=3600)
    try:
        output = "".join(demo.output)
        assert output.count("updated its registration") == 3, output  # NL-EVD with the hub's renewed token
        assert re.search(r"BE-VLT +Voltera Belgium +registered \(invitation", output), output  # its ids were free
        with demo.admin() as admin:
            parties = admin.get("/admin/api/parties").json()["items"]
        assert sorted(p["status"] for p in parties) == ["CONNECTED"] * 4 + ["UNREGISTERED"]
    finally:
        demo.stop()


def test_a_serve_started_beside_the_demo_keeps_the_embedded_servers_the_demo_started_and_stops_them_last(
    tmp_path: Path,
) -> None:
    # The demo stopped the embedded servers it had started as it ended, under a serve started meanwhile on its data dir,
    # which went on serving on a database and a Redis that were gone.
    data_dir = tmp_path / "demo-data"
    env = fresh_env(data_dir)
    demo = start_demo(env, data_dir, OUTPUT / "demo-beside-a-serve.log", interval_s=5)
    try:
        hub = start_hub(env, OUTPUT / "serve-beside-the-demo.log")
        try:
            demo.stop()
            assert demo.process.returncode == 0
            hub.admin_token = demo.admin_token  # the data dir's
            with hub.admin() as admin:
                parties = admin.get("/admin/api/parties")
            assert parties.status_code == 200 and len(parties.json()["items"]) == 4, parties.text
            assert httpx.get(f"{hub.base}/ready", timeout=10).json() == {"status": "ready"}  # PostgreSQL and Redis
        finally:
            assert hub.stop() == 0
        assert wait_until(lambda: not embedded_servers_under(data_dir)), "embedded servers still running"
    finally:
        demo.stop()
        for left in embedded_servers_under(data_dir):
            left.kill()
