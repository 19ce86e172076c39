"""`ocpi-hub demo`: one command starts the hub and four demo parties that register and exchange every kind of
message through it, and Ctrl-C stops all of it."""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import OUTPUT, ROOT, hub_env
from tests.parties import free_port
from tests.test_serve_and_storage import _processes_under, _wait_until

READY = re.compile(r"Open the console: (http://\S+)/console")
PARTY_URL = re.compile(r", serves (http://127\.0\.0\.1:\d+)/ocpi/versions")


@dataclass
class RunningDemo:
    process: subprocess.Popen[str]
    base: str
    admin_token: str
    data_dir: Path
    output: list[str]

    def admin(self) -> httpx.Client:
        return httpx.Client(base_url=self.base, headers={"Authorization": f"Bearer {self.admin_token}"}, timeout=30)


def _demo_env(request: pytest.FixtureRequest, data_dir: Path) -> dict[str, str]:
    """The machine's servers (throwaway database and key prefix) when the environment names them; otherwise the
    demo's own default: embedded PostgreSQL and Valkey under its data dir."""
    if os.environ.get("OCPI_HUB_DATABASE_URL"):
        env = hub_env(request.getfixturevalue("services"), data_dir)
        env.pop("OCPI_HUB_FORWARD_TIMEOUT_S")
        return env
    return {k: v for k, v in os.environ.items() if not k.startswith("OCPI_HUB_")} | {"OCPI_HUB_DATA_DIR": str(data_dir)}


def _reader(process: subprocess.Popen[str], lines: queue.Queue[str | None], log: Path) -> None:
    assert process.stdout is not None
    with log.open("w") as copy:
        for line in process.stdout:
            copy.write(line)
            copy.flush()
            lines.put(line)
    lines.put(None)


@pytest.fixture
def demo(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RunningDemo]:
    data_dir = tmp_path / "demo-data"
    env = _demo_env(request, data_dir)
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "hub.cli", "demo", "--port", str(port), "--interval", "0.5"],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_reader, args=(process, lines, OUTPUT / "demo.log"), daemon=True).start()
    output: list[str] = []
    deadline = time.monotonic() + 120
    base = None
    try:
        while base is None:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            if line is None:
                raise AssertionError(f"demo exited with {process.wait()}:\n{''.join(output)}")
            output.append(line)
            if match := READY.search(line):
                base = match.group(1)
    except queue.Empty:
        process.kill()
        raise AssertionError("demo did not print the console URL within 120 s:\n" + "".join(output)) from None
    admin_token = env.get("OCPI_HUB_ADMIN_TOKEN") or (data_dir / "admin-token").read_text().strip()
    running = RunningDemo(process, base, admin_token, data_dir, output)
    try:
        yield running
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


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
    # a card the eMSP does not know: its 2004 is relayed and logged
    assert any(r["ocpi_status_code"] == 2004 and r["path"].endswith("/authorize") for r in rows)

    party_urls = PARTY_URL.findall("".join(demo.output))
    assert len(party_urls) == 4
    demo.process.send_signal(signal.SIGINT)
    assert demo.process.wait(60) == 0
    for url in [demo.base, *party_urls]:
        assert _port_closed(url), f"{url} still answers after the demo stopped"
    assert _wait_until(lambda: not _processes_under(demo.data_dir)), "embedded servers still running"
