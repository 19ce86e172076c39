"""A hub instance given another secret key than the one the database was set up with is refused at start, also before
any party registered (no stored token to tell): storage.secret_key_check, migration 0025; and at the upgrade to 0025,
by what the database already holds keyed (storage.secret_key_witnesses)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from storage.migrate import MigrationRefused, migrate
from storage.secret_key_check import check_recorded_key
from storage.secrets import TokenBox, key_check_value
from tests.conftest import OUTPUT, ROOT, SECRET_KEY, UVICORN_FACTORY, Services, hub_env, start_hub
from tests.log_rows import numbered_log, sql

SET_UP_WITH_ANOTHER = "this database was set up with another secret key than this one"


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hub.cli", *args], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=120)  # fmt: skip


def _serve(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`ocpi-hub serve` that is expected to refuse: its exit; a hub that starts instead fails the test (stopped)."""
    process = subprocess.Popen([sys.executable, "-m", "hub.cli", "serve", "--port", "0"], env=env, cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        stdout, stderr = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.terminate()
        stdout, stderr = process.communicate(timeout=30)
        pytest.fail(f"the hub started with another secret key than the database's:\n{stdout}{stderr}")
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def test_a_second_start_with_another_secret_key_is_refused_on_a_database_without_parties(
    services: Services, empty_database: str, tmp_path: Path
) -> None:
    env = hub_env(services, tmp_path / "first", OCPI_HUB_DATABASE_URL=empty_database)
    first = start_hub(env, OUTPUT / "secret-key-check-first.log")
    assert first.stop() == 0, first.log()
    assert not sql(empty_database, "SELECT id FROM platform WHERE token_b IS NOT NULL")  # no token tells a key
    [check] = sql(empty_database, "SELECT value FROM secret_key_check")
    assert check["value"] == key_check_value(SECRET_KEY) and SECRET_KEY.encode() not in check["value"]
    trail = sql(empty_database, "SELECT count(*) FROM audit_trail")

    other = TokenBox.generate_key()
    refused = _serve(env | {"OCPI_HUB_SECRET_KEY": other})
    assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr
    assert f"{SET_UP_WITH_ANOTHER} (OCPI_HUB_SECRET_KEY)" in refused.stderr, refused.stderr
    assert "secret.key" in refused.stderr
    # a second instance without the setting, on a data dir of its own: its generated key is refused, named where it is
    elsewhere = {k: v for k, v in env.items() if k != "OCPI_HUB_SECRET_KEY"} | {
        "OCPI_HUB_DATA_DIR": str(tmp_path / "2")
    }
    refused = _serve(elsewhere)
    assert refused.returncode == 1, refused.stderr
    assert f"{SET_UP_WITH_ANOTHER} ({tmp_path / '2' / 'secret.key'}, OCPI_HUB_SECRET_KEY being unset)" in refused.stderr
    # every command that uses the key, too
    verify = _cli(env | {"OCPI_HUB_SECRET_KEY": other}, "verify")
    assert verify.returncode == 1 and SET_UP_WITH_ANOTHER in verify.stderr, verify.stderr
    assert sql(empty_database, "SELECT count(*) FROM audit_trail") == trail  # nothing written under the other key
    assert sql(empty_database, "SELECT value FROM secret_key_check") == [check]

    again = start_hub(env, OUTPUT / "secret-key-check-again.log")
    assert again.stop() == 0, again.log()
    assert _cli(env, "verify").returncode == 0


def test_two_first_starts_with_different_keys_at_once_record_one_and_refuse_the_other(empty_database: str) -> None:
    other = TokenBox.generate_key()

    async def scenario() -> list[BaseException | None]:
        connections = [await asyncpg.connect(empty_database) for _ in range(2)]
        try:
            await migrate(connections[0], SECRET_KEY)
            await connections[0].execute("DELETE FROM secret_key_check")  # its owner puts it under a new key
            return await asyncio.gather(check_recorded_key(connections[0], SECRET_KEY, "OCPI_HUB_SECRET_KEY"),
                                        check_recorded_key(connections[1], other, "OCPI_HUB_SECRET_KEY"),
                                        return_exceptions=True)  # fmt: skip
        finally:
            for conn in connections:
                await conn.close()

    outcomes = asyncio.run(scenario())
    assert sorted(type(o).__name__ for o in outcomes) == ["MigrationRefused", "NoneType"], outcomes
    recorded = sql(empty_database, "SELECT value FROM secret_key_check")
    winner = SECRET_KEY if outcomes[0] is None else other
    assert [r["value"] for r in recorded] == [key_check_value(winner)]
    assert all(SET_UP_WITH_ANOTHER in str(o) for o in outcomes if isinstance(o, MigrationRefused))


def _before_the_key_check(database_url: str) -> None:
    """The database as a hub of the previous version left it: no migration 0025, no check of its key."""
    sql(database_url, "DROP TABLE secret_key_check")
    sql(database_url, "DELETE FROM schema_migration WHERE version = 25")


def test_an_upgrade_to_the_key_check_with_another_key_than_the_audit_trails_is_refused(
    services: Services, empty_database: str, tmp_path: Path
) -> None:
    env = hub_env(services, tmp_path / "first", OCPI_HUB_DATABASE_URL=empty_database)
    first = start_hub(env, OUTPUT / "secret-key-check-upgrade-first.log")
    try:
        first.invite("Invited before the check", ("CPO", "NL", "KCU"))
    finally:
        assert first.stop() == 0, first.log()
    assert not sql(empty_database, "SELECT id FROM platform WHERE token_b IS NOT NULL")  # no token tells a key
    [newest] = sql(empty_database, "SELECT id, action FROM audit_trail WHERE hash IS NOT NULL ORDER BY id DESC LIMIT 1")
    _before_the_key_check(empty_database)

    other = env | {"OCPI_HUB_SECRET_KEY": TokenBox.generate_key()}
    refused = _serve(other)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr
    assert f"{SET_UP_WITH_ANOTHER} (OCPI_HUB_SECRET_KEY)" in refused.stderr, refused.stderr
    assert f"audit trail entry {newest['id']} ({newest['action']})" in refused.stderr, refused.stderr
    # refused, the migration is not applied: the next command with the other key is refused as well
    migrate_again = _cli(other, "migrate")
    assert migrate_again.returncode == 1 and SET_UP_WITH_ANOTHER in migrate_again.stderr, migrate_again.stderr
    assert not sql(empty_database, "SELECT version FROM schema_migration WHERE version = 25")

    again = start_hub(env, OUTPUT / "secret-key-check-upgrade-again.log")
    assert again.stop() == 0, again.log()
    assert [r["value"] for r in sql(empty_database, "SELECT value FROM secret_key_check")] == [
        key_check_value(SECRET_KEY)
    ]
    assert _cli(env, "verify").returncode == 0


def test_an_upgrade_to_the_key_check_with_another_key_than_the_routing_logs_is_refused(empty_database: str) -> None:
    numbered_log(empty_database, 3)  # rows keyed with SECRET_KEY's routing-log key
    sql(empty_database, "DELETE FROM audit_trail_head")  # the routing log alone tells the key (no entry either)
    _before_the_key_check(empty_database)
    [newest] = sql(empty_database, "SELECT id FROM routing_log ORDER BY received_at DESC, id DESC LIMIT 1")

    async def scenario() -> None:
        conn = await asyncpg.connect(empty_database)
        try:
            with pytest.raises(MigrationRefused, match=f"{SET_UP_WITH_ANOTHER}.*routing-log row {newest['id']}"):
                await migrate(conn, TokenBox.generate_key())
            assert await migrate(conn, SECRET_KEY) == ["0025_secret_key_check.sql"]
        finally:
            await conn.close()

    asyncio.run(scenario())
    assert [r["value"] for r in sql(empty_database, "SELECT value FROM secret_key_check")] == [
        key_check_value(SECRET_KEY)
    ]


def test_the_app_an_asgi_server_runs_itself_refuses_to_start_with_another_secret_key_and_says_why(
    services: Services, empty_database: str, tmp_path: Path
) -> None:
    # uvicorn --factory hub.app:create_app, without the CLI: the key was not checked, and the hub served with it
    env = hub_env(services, tmp_path, OCPI_HUB_DATABASE_URL=empty_database)
    assert _cli(env, "migrate").returncode == 0  # the database set up with the hub's key
    with pytest.raises(RuntimeError, match="hub exited") as refused:  # one that starts all the same is stopped
        start_hub(env | {"OCPI_HUB_SECRET_KEY": TokenBox.generate_key()}, OUTPUT / "secret-key-check-uvicorn.log",
                  command=UVICORN_FACTORY).stop()  # fmt: skip
    [said] = [json.loads(line) for line in str(refused.value).splitlines() if '"hub_not_started"' in line]
    assert said["level"] == "error" and f"{SET_UP_WITH_ANOTHER} (OCPI_HUB_SECRET_KEY)" in said["error"], said
    assert "Application startup failed" in str(refused.value)
    recorded = sql(empty_database, "SELECT value FROM secret_key_check")
    assert [r["value"] for r in recorded] == [key_check_value(SECRET_KEY)]
    # the hub's own key starts it, on the same server
    started = start_hub(env, OUTPUT / "secret-key-check-uvicorn-again.log", command=UVICORN_FACTORY)
    started.stop()  # uvicorn ends by the SIGTERM it was stopped with, once it shut the hub down
    assert '"hub_stopped"' in started.log() and "hub_not_started" not in started.log(), started.log()
