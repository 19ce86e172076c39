"""A hub serving with a role that cannot rewrite history (storage.serving_role, migration 0022): migrations, the grants
and retention run as the owner of the hub's tables (OCPI_HUB_OWNER_DATABASE_URL); the hub appends its rows,
amendments, holds and audit trail entries as the serving role, and PostgreSQL refuses that role any UPDATE, DELETE,
TRUNCATE or DDL of them (auditors asked for it)."""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from storage.secrets import TokenBox, key_check_value
from tests.conftest import (
    OUTPUT,
    ROOT,
    SECRET_KEY,
    Services,
    hub_env,
    register_at_hub,
    start_hub,
    unique_party_id,
)
from tests.log_rows import run_on, sql, varied_entries, write
from tests.parties import Party
from tests.test_routing import party_key, push_location
from tests.test_routing_log_amendments import TOLD, _answered_4000_while_committed


@dataclass(frozen=True)
class Roles:
    owner_url: str  # the role owning the database and the hub's tables
    serving_url: str
    serving: str  # the serving role's name


def _as(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{parts.hostname}:{parts.port}"))


@pytest.fixture
def roles(services: Services) -> Iterator[Roles]:
    """A database owned by a role of its own (not a superuser), and a serving role, dropped afterwards."""
    tag = secrets.token_hex(4)
    owner, serving, database = f"hub_owner_{tag}", f"hub_serving_{tag}", f"serving_role_{tag}"
    url = services.database_url.rsplit("/", 1)[0] + f"/{database}"

    async def admin(conn: asyncpg.Connection, *statements: str) -> None:
        for statement in statements:
            await conn.execute(statement)

    try:
        run_on(services.database_url, lambda conn: admin(conn, f"CREATE ROLE {owner} LOGIN PASSWORD '{tag}'",
                                                          f"CREATE ROLE {serving} LOGIN PASSWORD '{tag}'",
                                                          f'CREATE DATABASE "{database}" OWNER {owner}'))  # fmt: skip
        # as PostgreSQL 15 and later have it: only the database's owner creates objects in schema public
        run_on(url, lambda conn: conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC"))
        yield Roles(_as(url, owner, tag), _as(url, serving, tag), serving)
    finally:
        run_on(services.database_url, lambda conn: admin(conn, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)',
                                                          f"DROP ROLE IF EXISTS {owner}",
                                                          f"DROP ROLE IF EXISTS {serving}"))  # fmt: skip


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hub.cli", *args], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=120)  # fmt: skip


def _granted(services: Services, roles: Roles, tmp_path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """The schema migrated and the serving role granted, as the owner: the owner's commands' environment, and the
    serving hub's (without the owner's URL, as an operator deploys it)."""
    env = hub_env(services, tmp_path, OCPI_HUB_DATABASE_URL=roles.serving_url,
                  OCPI_HUB_OWNER_DATABASE_URL=roles.owner_url)  # fmt: skip
    serving_env = {k: v for k, v in env.items() if k != "OCPI_HUB_OWNER_DATABASE_URL"}
    refused = _cli(serving_env, "migrate")
    assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr
    assert f"role {roles.serving} may not apply the migrations" in refused.stderr, refused.stderr
    assert "OCPI_HUB_OWNER_DATABASE_URL" in refused.stderr
    migrated = _cli(env, "migrate", "--grant-serving-role", roles.serving)  # as the migrate job of deploy/ runs
    assert migrated.returncode == 0, migrated.stderr
    said, granted = migrated.stdout.split("\n", 1)
    assert said.startswith("ocpi-hub: applied ") and json.loads(granted)["role"] == roles.serving, migrated.stdout
    return env, serving_env


def _refused(url: str, statement: str, *args: object) -> type[Exception] | None:
    """The class of the error PostgreSQL answers statement with (None: it ran), rolled back either way."""

    async def attempt(conn: asyncpg.Connection) -> type[Exception] | None:
        try:
            async with conn.transaction():
                await conn.execute(statement, *args)
                raise _RanAndRolledBack
        except _RanAndRolledBack:
            return None
        except asyncpg.PostgresError as exc:
            return type(exc)

    return run_on(url, attempt)


class _RanAndRolledBack(Exception):
    pass


def test_the_serving_role_is_granted_appends_to_the_log_and_no_change_of_it(
    services: Services, roles: Roles, tmp_path: Path
) -> None:
    env, _ = _granted(services, roles, tmp_path)
    granted = json.loads(_cli(env, "grant-serving-role", roles.serving).stdout)["granted"]  # again: the same
    for appended in ("routing_log", "routing_log_amendment", "audit_trail", "relayed_location"):
        assert granted[appended] == ["SELECT", "INSERT"], (appended, granted[appended])
    assert granted["routing_log_hold"] == ["SELECT", "INSERT", "UPDATE (released_by, released_at)"]
    assert granted["routing_log_chain"] == ["SELECT", "INSERT", "UPDATE (last_seq, last_hash, amendments)"]
    assert granted["audit_trail_head"] == ["SELECT", "INSERT", "UPDATE (last_id, last_hash, mac)"]
    # read only; the last is the key's check, which the owner's migrate records (storage.secret_key_check)
    read = ("routing_log_floor", "routing_log_amendment_dropped", "routing_log_dropped_partition", "secret_key_check")
    for kept in read:
        assert granted[kept] == ["SELECT"], (kept, granted[kept])
    assert {t for t, may in granted.items() if "DELETE" in may} == {"platform_endpoint", "credentials_token", "auditor"}
    assert {t for t, may in granted.items() if "UPDATE" in may} == {"platform", "party_role", "client_info_push",
                                                                    "platform_endpoint", "spent_token"}  # fmt: skip
    assert not [t for t, may in granted.items() if {"TRUNCATE", "REFERENCES", "TRIGGER"} & set(may)]
    # every table of the hub is one the grants chose for: a later migration's table is added to them
    assert all(granted.values()), [t for t, may in granted.items() if not may]

    owner = urlsplit(roles.owner_url).username
    for role, why in ((owner, "owns the hub's tables"), ("no_such_role", "there is no role")):
        refused = _cli(env, "grant-serving-role", role or "")
        assert refused.returncode == 1 and why in refused.stderr, refused.stderr


def test_a_hub_serving_with_that_role_logs_requests_amendments_holds_and_its_audit_trail_and_verifies(
    services: Services, roles: Roles, tmp_path: Path, start_party: Callable[..., Party]
) -> None:
    _, serving_env = _granted(services, roles, tmp_path)
    hub = start_hub(serving_env, OUTPUT / "serving-role-hub.log")
    try:
        cpo = register_at_hub(hub, start_party, ("CPO", "NL", unique_party_id()))
        emsp = register_at_hub(hub, start_party, ("EMSP", "NL", unique_party_id()))
        answer = push_location(cpo, hub.base, party_key(emsp))
        assert answer.status_code == 200 and answer.json()["status_code"] == 1000, answer.text
        with hub.admin() as admin:
            pushed = {"module": "locations", "method": "PUT"}  # not the hub's own pull sync's GETs
            rows = admin.get("/admin/api/routing-log", params=pushed).json()["items"]
            assert [(r["method"], r["ocpi_status_code"]) for r in rows] == [("PUT", 1000)]
            hold = admin.post("/admin/api/holds", json={"correlation_id": rows[0]["correlation_id"],
                                                        "reason": "dispute 2026-311"})  # fmt: skip
            assert hold.status_code == 201, hold.text
            released = admin.post(f"/admin/api/holds/{hold.json()['id']}/release")
            assert released.status_code == 200 and released.json()["released_at"] is not None, released.text
            assert admin.post(f"/admin/api/holds/{hold.json()['id']}/release").status_code == 409
            exported = admin.get("/admin/api/routing-log/export", params={"format": "ndjson", "method": "PUT"})
            assert exported.status_code == 200 and '"manifest"' in exported.text.splitlines()[-1], exported.text
            assert admin.get("/admin/api/stats").status_code == 200
            verified = admin.get("/admin/api/routing-log/verify").json()
            assert verified["ok"] is True, verified
            trail = [e["action"] for e in admin.get("/admin/api/audit-trail").json()["items"]]
            assert trail[:8] == ["verify", "stats", "export_sent", "export_manifest", "export", "release_hold",
                                 "set_hold", "search"], trail  # fmt: skip
    finally:
        stopped = hub.stop()
    assert stopped == 0, hub.log()
    # the partitions the hub created at its start (as the owner, through migration 0022's function) are the owner's
    owner = urlsplit(roles.owner_url).username
    tables = sql(roles.owner_url, "SELECT DISTINCT tableowner FROM pg_tables WHERE tablename LIKE 'routing_log%'")
    assert [t["tableowner"] for t in tables] == [owner]

    # the amendment of a row whose commit stalled past its caller's deadline, written by the serving role's writer
    asyncio.run(_answered_4000_while_committed(roles.serving_url, blocker_url=roles.owner_url))
    amended = sql(roles.owner_url, "SELECT message FROM routing_log_amendment")
    assert [a["message"] for a in amended] == [TOLD]
    verify = _cli(serving_env, "verify")
    assert verify.returncode == 0 and json.loads(verify.stdout)["ok"] is True, verify.stdout + verify.stderr


def test_postgresql_refuses_the_serving_role_any_change_of_the_log_and_retention_runs_as_the_owner(
    services: Services, roles: Roles, tmp_path: Path
) -> None:
    env, serving_env = _granted(services, roles, tmp_path)
    old = datetime.now(UTC).replace(day=10) - timedelta(days=500)
    partition = f"routing_log_{old:%Y}m{old:%m}"
    sql(roles.owner_url, "SELECT routing_log_add_partition($1)", old)
    entries = varied_entries(old, 4, [("QR", "AAA")], uuid.uuid4().hex[:8])
    for n, entry in enumerate(entries):
        entry.received_at = old + timedelta(hours=n) if n < 2 else datetime.now(UTC)
    write(roles.serving_url, entries)  # the hub's writer, as the serving role
    held = _cli(serving_env, "hold", "set", "--correlation-id", entries[0].correlation_id, "--reason", "dispute 7")
    assert held.returncode == 0, held.stderr
    row = sql(roles.serving_url, "SELECT min(id) FROM routing_log")[0][0]
    entry = sql(roles.serving_url, "SELECT max(id) FROM audit_trail")[0][0]

    denied = asyncpg.InsufficientPrivilegeError
    for statement, args in (
        ("UPDATE routing_log SET http_status = 500 WHERE id = $1", (row,)),
        ("DELETE FROM routing_log WHERE id = $1", (row,)),
        ("UPDATE audit_trail SET action = 'nothing' WHERE id = $1", (entry,)),
        ("DELETE FROM audit_trail WHERE id = $1", (entry,)),
        ("UPDATE routing_log_amendment SET message = 'nothing'", ()),
        ("DELETE FROM routing_log_amendment", ()),
        ("UPDATE routing_log_hold SET reason = 'nothing'", ()),
        ("DELETE FROM routing_log_hold", ()),
        ("DELETE FROM routing_log_floor", ()),
        (f"DELETE FROM {partition}", ()),  # a partition reached by its own name
        ("TRUNCATE routing_log", ()),
        ("TRUNCATE audit_trail", ()),
        (f"DROP TABLE {partition}", ()),
        (f"ALTER TABLE routing_log DETACH PARTITION {partition}", ()),
        ("ALTER TABLE audit_trail DISABLE TRIGGER ALL", ()),
        ("CREATE TABLE routing_log_forged (LIKE routing_log)", ()),
        ("SELECT routing_log_add_partition(now() - interval '10 years')", ()),
        ("SELECT routing_log_ensure_partitions(121)", ()),
    ):
        refused = _refused(roles.serving_url, statement, *args)
        wanted = asyncpg.InvalidParameterValueError if "121" in statement else denied
        assert refused is wanted, (statement, refused)
    # a hold is released once, and not brought back in force (migration 0022's trigger, whatever the role)
    unreleased = "UPDATE routing_log_hold SET released_at = NULL, released_by = NULL"
    assert _refused(roles.serving_url, "UPDATE routing_log_hold SET released_at = now(), released_by = 'x'") is None
    released = _cli(serving_env, "hold", "release", str(json.loads(held.stdout)["id"]))
    assert released.returncode == 0, released.stderr
    for url in (roles.serving_url, roles.owner_url):
        assert _refused(url, unreleased) is asyncpg.IntegrityConstraintViolationError

    # retention is the owner's: the serving role's is refused and drops nothing
    keep = ("retention", "--keep", "400d")
    assert (run := _cli(serving_env, *keep)).returncode == 1 and "permission denied" in run.stderr, run.stderr
    held_again = _cli(serving_env, "hold", "set", "--correlation-id", entries[1].correlation_id, "--reason", "d 8")
    kept = _cli(env, *keep)
    assert kept.returncode == 0, kept.stderr
    assert json.loads(kept.stdout)["held"] == {partition: [json.loads(held_again.stdout)["id"]]}
    assert _cli(serving_env, "hold", "release", str(json.loads(held_again.stdout)["id"])).returncode == 0
    dropped = _cli(env, *keep)
    assert dropped.returncode == 0 and json.loads(dropped.stdout)["dropped"] == [partition], dropped.stderr
    verify = _cli(serving_env, "verify")
    assert verify.returncode == 0 and json.loads(verify.stdout)["rows"] == 2, verify.stdout + verify.stderr


def test_the_owners_migrate_records_the_key_check_and_the_serving_role_cannot_plant_one(
    services: Services, roles: Roles, tmp_path: Path
) -> None:
    # the check of the hub's key (storage.secret_key_check, migration 0025): recorded by migrate, as the owner
    env, serving_env = _granted(services, roles, tmp_path)
    recorded = sql(roles.owner_url, "SELECT value FROM secret_key_check")
    assert [r["value"] for r in recorded] == [key_check_value(SECRET_KEY)]
    wrong = _cli(serving_env | {"OCPI_HUB_SECRET_KEY": TokenBox.generate_key()}, "verify")
    assert wrong.returncode == 1 and "set up with another secret key" in wrong.stderr, wrong.stderr
    # the check deleted (by the owner: the serving role may not): the serving role cannot plant one of its own
    sql(roles.owner_url, "DELETE FROM secret_key_check")
    unrecorded = _cli(serving_env, "verify")
    assert unrecorded.returncode == 1 and f"role {roles.serving} may not record one" in unrecorded.stderr
    assert "ocpi-hub migrate" in unrecorded.stderr and "Traceback" not in unrecorded.stderr
    assert _cli(env, "migrate").returncode == 0  # the owner's migrate records it again
    assert _cli(serving_env, "verify").returncode == 0


def test_a_temporary_table_named_as_a_coming_partition_does_not_stop_that_partition_being_made(
    empty_database: str,
) -> None:
    # routing_log_ensure_partitions runs with search_path "the hub's schema, pg_temp": a caller's temporary table of a
    # partition's name was found by the unqualified to_regclass of routing_log_add_partition, which then made none
    write(empty_database, [])  # the schema
    now = datetime.now(UTC)
    year, month_index = divmod(now.year * 12 + now.month - 1 + 100, 12)
    month = f"routing_log_{year}m{month_index + 1:02d}"  # the last one routing_log_ensure_partitions(100) makes

    async def made_beside_a_temporary_table(conn: asyncpg.Connection) -> list[str]:
        await conn.execute(f"CREATE TEMP TABLE {month} ()")
        return [row[0] for row in await conn.fetch("SELECT routing_log_ensure_partitions(100)")]

    made = run_on(empty_database, made_beside_a_temporary_table)
    assert month in made
    attached = sql(empty_database, "SELECT inhrelid::regclass::text FROM pg_inherits"
                                   " WHERE inhparent = 'routing_log'::regclass")  # fmt: skip
    assert month in [row[0] for row in attached]
