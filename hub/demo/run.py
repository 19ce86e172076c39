"""run_demo(): the hub (served in this process) and the demo parties, registered and talking until Ctrl-C."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import uvicorn

from hub.admin.actors import add_auditor, remove_auditor
from hub.app import create_app
from hub.demo.party import DemoParty
from hub.demo.scenario import Demo, cast, opening, own_objects, trickle
from hub.settings import Settings


class DemoFailed(Exception):
    """The demo could not get going; the message says why."""


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the demo owns SIGINT/SIGTERM: it stops its traffic and parties first, then sets should_exit


def say(line: str) -> None:
    print(line, flush=True)


async def run_demo(settings: Settings, listening: socket.socket, interval_s: float) -> int:
    """Serves the hub on `listening`, a socket the CLI bound before anything else started."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    server = _Server(uvicorn.Config(create_app(settings), lifespan="on", access_log=False, log_level="warning",
                                    timeout_graceful_shutdown=10))  # fmt: skip

    def interrupted() -> None:
        if stop.is_set():
            server.force_exit = True  # a second Ctrl-C: do not wait for connections to close
        stop.set()

    for handled in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(handled, interrupted)
    hub_task = asyncio.create_task(server.serve(sockets=[listening]))
    parties = cast()
    traffic: asyncio.Task[None] | None = None
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            await _until_serving(server, hub_task, stop)
            if stop.is_set():
                return 0
            say(f"ocpi-hub demo: the hub serves {settings.versions_url} (data in {settings.data_dir})")
            for party in parties:
                own_objects(party)
                await party.start()
            await _register(settings, http, parties)
            demo = Demo(settings.public_url, http, parties, say, (settings.country_code, settings.party_id))
            say("\nTraffic through the hub (party -> receiver, what, OCPI status):")
            sign_in = (
                f"Sign in with this auditor token: {await _auditor_token(settings)}\n"
                f"(the admin token, which may also invite parties, is in {_admin_token_source(settings)})"
            )
            traffic = asyncio.create_task(_play(demo, interval_s, sign_in))
            await _first(traffic, stop)
    except DemoFailed as exc:
        say(f"ocpi-hub demo: {exc}")
        return 1
    finally:
        if traffic is not None:
            traffic.cancel()
            await asyncio.gather(traffic, return_exceptions=True)
        server.should_exit = True
        await asyncio.gather(hub_task, return_exceptions=True)
        for party in parties:
            await party.stop()
        for handled in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(handled)
    failed = traffic is not None and traffic.done() and not traffic.cancelled() and traffic.exception()
    if failed:
        say(f"ocpi-hub demo: the traffic stopped: {failed!r}")
        return 1
    say("ocpi-hub demo: stopped")
    return 0


async def _play(demo: Demo, interval_s: float, sign_in: str) -> None:
    await opening(demo)
    say(
        f"\nThe hub works. Open the console: {demo.hub_base}/console\n{sign_in}\n"
        "Traffic keeps trickling in; Ctrl-C stops the hub, the demo parties and the embedded servers.\n"
    )
    await trickle(demo, interval_s)


async def _auditor_token(settings: Settings) -> str:
    """A fresh token of the auditor "demo" (read-only: the log, parties, traffic, verification)."""
    conn = await asyncpg.connect(settings.database_url)
    try:
        await remove_auditor(conn, "demo")
        return await add_auditor(conn, "demo")
    finally:
        await conn.close()


def _admin_token_source(settings: Settings) -> str:
    return "OCPI_HUB_ADMIN_TOKEN" if os.environ.get("OCPI_HUB_ADMIN_TOKEN") else str(settings.data_dir / "admin-token")


async def _first(traffic: asyncio.Task[None], stop: asyncio.Event) -> None:
    waiting = asyncio.create_task(stop.wait())
    await asyncio.wait({traffic, waiting}, return_when=asyncio.FIRST_COMPLETED)
    waiting.cancel()


async def _until_serving(server: uvicorn.Server, hub_task: asyncio.Task[None], stop: asyncio.Event) -> None:
    while not server.started:
        if hub_task.done():
            raise DemoFailed("the hub did not start")
        if stop.is_set():
            return
        await asyncio.sleep(0.05)


async def _register(settings: Settings, http: httpx.AsyncClient, parties: list[DemoParty]) -> None:
    """Each party: the operator invites it (admin API), then it registers through the credentials handshake.

    A later run of the demo on the same data finds its parties registered: they PUT their new URL and token.
    """
    saved_path = settings.data_dir / "demo-parties.json"
    saved = _load(saved_path)
    admin = {"Authorization": f"Bearer {settings.admin_token}"}
    for party in parties:
        label = f"{party.country_code}-{party.party_id}"
        reply, how = None, "updated its registration (credentials PUT)"
        if (hub_token := saved.get(label)) is not None:
            party.hub_token = hub_token
            reply = await party.update_registration(http, settings.versions_url)
        if reply is None or reply.status_code != 1000:
            how = "registered (invitation, credentials handshake)"
            invitation = await http.post(f"{settings.public_url}/admin/api/invitations", headers=admin, json={
                "name": party.name,
                "roles": [{"role": party.role, "country_code": party.country_code, "party_id": party.party_id}],
            })  # fmt: skip
            if invitation.status_code != 201:
                raise DemoFailed(
                    f"cannot invite {label}: {invitation.text}; the data of an earlier demo is in the way,"
                    f" remove {settings.data_dir} (or use another OCPI_HUB_DATA_DIR) and start again"
                )
            reply = await party.register(http, settings.versions_url, invitation.json()["token_a"])
        if reply.status_code != 1000:
            raise DemoFailed(f"{label} could not register: {reply.status_code} {reply.data}")
        saved[label] = party.hub_token or ""
        _save(saved_path, saved)
        party.remember = lambda changed, label=label: _remember(saved_path, label, changed.hub_token)
        say(f"  {party.label:<11} {party.name:<22} {how}, serves {party.versions_url}")


def _remember(path: Path, label: str, hub_token: str | None) -> None:
    """The hub renewed a party's tokens, or took it off the hub, while the demo ran: the next run PUTs with the new
    token, or registers the party again."""
    saved = _load(path)
    if hub_token is None:
        saved.pop(label, None)
    else:
        saved[label] = hub_token
    _save(path, saved)


def _load(path: Path) -> dict[str, str]:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {}


def _save(path: Path, saved: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(saved, indent=2))
    path.chmod(0o600)
