"""The audit trail is tamper-evident: what someone who can write to the database, but does not hold
OCPI_HUB_SECRET_KEY, does to it is named by verify (found by an auditor walkthrough: a DELETE of 32 searches verified
ok); an export's entry says how many rows it sent and their SHA-256."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from hub.admin.actors import ADMIN, Actor, record_action
from storage.audit_trail import verify_trail
from storage.secrets import audit_trail_key
from tests.conftest import LOG_KEY, OUTPUT, Hub, Services, hub_env, start_hub, unique_party_id
from tests.log_rows import migrate_up_to, numbered_entry, run_on, sql, varied_entries, write
from tests.test_auditor_tokens import _auditor, _cli

TRAIL_KEY = audit_trail_key(LOG_KEY)
CHAINED_FROM = 19  # the migration that chains the trail (0019_audit_trail_chain.sql)


def _written_before_the_trail_was_chained(url: str) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(url)
        try:
            await migrate_up_to(conn, CHAINED_FROM - 1)
            await conn.execute("INSERT INTO audit_trail (actor_kind, actor_name, action, parameters) VALUES"
                               " ('admin', 'admin', 'search', '{\"module\": \"cdrs\"}'),"
                               " ('auditor', 'early', 'view', '{\"id\": 1}')")  # fmt: skip
        finally:
            await conn.close()

    asyncio.run(run())


@pytest.fixture
def trail_hub(services: Services, empty_database: str, tmp_path: Path) -> Iterator[tuple[Hub, str]]:
    """A hub upgraded from a release whose trail has two entries, and its database."""
    _written_before_the_trail_was_chained(empty_database)
    env = hub_env(services, tmp_path / "hub", OCPI_HUB_DATABASE_URL=empty_database)
    hub = start_hub(env, OUTPUT / "hub-audit-trail.log")
    try:
        yield hub, empty_database
    finally:
        hub.stop()


def _problems(hub: Hub) -> str:
    """The problems `ocpi-hub verify` finds, which must find some."""
    verified = _cli(hub, "verify")
    assert verified.returncode == 1, (verified.stdout, verified.stderr)
    answer = json.loads(verified.stdout)
    assert answer["ok"] is False
    return " | ".join(answer["problems"])


def test_trail_entries_deleted_edited_or_inserted_in_sql_are_named_by_verify(trail_hub: tuple[Hub, str]) -> None:
    hub, url = trail_hub
    with _auditor(hub, "walker") as auditor:
        for n in range(4):
            assert auditor.get("/admin/api/routing-log", params={"request_id": f"r{n}"}).status_code == 200
        clean = auditor.get("/admin/api/routing-log/verify").json()
    # the two entries from before the upgrade are unchained, not tampered
    assert clean["ok"] is True and clean["trail_unchained"] == 2 and clean["trail_entries"] == 5, clean

    # the walkthrough: searches deleted
    added = sql(url, "SELECT id FROM audit_trail WHERE action = 'add_auditor'")[0]["id"]
    deleted = [r["id"] for r in sql(url, "DELETE FROM audit_trail WHERE action = 'search' AND hash IS NOT NULL"
                                         " RETURNING id")]  # fmt: skip
    assert len(deleted) == 4
    after = sql(url, "SELECT min(id) FROM audit_trail WHERE id > $1", deleted[-1])[0][0]
    assert f"audit trail entry {after} (verify by walker): does not follow entry {added}: entries between them " \
           "were deleted" in _problems(hub)  # fmt: skip
    with hub.admin() as admin:
        said = admin.get("/admin/api/routing-log/verify").json()
    assert said["ok"] is False and said["first_bad_id"] is None  # the routing log itself is whole
    assert any(f"audit trail entry {after} " in problem for problem in said["problems"])

    # an entry edited, one inserted, the head moved
    sql(url, "UPDATE audit_trail SET actor_name = 'someone else' WHERE id = $1", added)
    inserted = sql(url, "INSERT INTO audit_trail (actor_kind, actor_name, action) VALUES ('admin', 'admin', 'search')"
                        " RETURNING id")[0]["id"]  # fmt: skip
    copy = "INSERT INTO audit_trail (actor_kind, actor_name, action, prev_hash, hash) SELECT actor_kind, actor_name,"
    copied = sql(url, f"{copy} action, prev_hash, hash FROM audit_trail WHERE id = $1 RETURNING id", after)[0]["id"]
    problems = _problems(hub)
    assert f"audit trail entry {added} (add_auditor by someone else): content does not match its hash" in problems
    assert f"audit trail entry {inserted} (search by admin): has no hash but was written after the chain" in problems
    assert f"audit trail entry {copied} (verify by walker): content does not match its hash" in problems
    sql(url, "UPDATE audit_trail_head SET unchained_upto = unchained_upto + 1000")
    assert "audit trail: its head does not match its MAC" in _problems(hub)


def test_the_last_trail_entries_deleted_are_found_by_the_head(trail_hub: tuple[Hub, str]) -> None:
    hub, url = trail_hub
    with hub.admin() as admin:
        admin.get("/admin/api/routing-log", params={"module": "cdrs"})
        assert admin.get("/admin/api/routing-log/verify").json()["ok"] is True
    last = sql(url, "DELETE FROM audit_trail WHERE id = (SELECT max(id) FROM audit_trail) RETURNING id")[0]["id"]
    before = sql(url, "SELECT max(id) FROM audit_trail")[0][0]
    assert f"audit trail: its head is entry {last}, its last chained entry is {before}: entries were deleted from " \
           "its end" in _problems(hub)  # fmt: skip


def test_the_trails_head_deleted_is_made_again_by_the_next_action_which_verify_names(
    trail_hub: tuple[Hub, str],
) -> None:
    # An operator's walkthrough: with audit_trail_head deleted, every admin action, verify's record too, was an HTTP 500
    # that said nothing of why.
    hub, url = trail_hub
    with hub.admin() as admin:
        assert admin.get("/admin/api/routing-log", params={"module": "cdrs"}).status_code == 200
    last = sql(url, "SELECT max(id) FROM audit_trail")[0][0]
    sql(url, "DELETE FROM audit_trail_head")
    assert "audit trail: its head (audit_trail_head) is gone" in _problems(hub)  # and its record made the head again
    with hub.admin() as admin:
        answer = admin.get("/admin/api/routing-log", params={"module": "tariffs"})
    assert answer.status_code == 200, answer.text
    [made] = sql(url, "SELECT id, actor_kind, actor_name, parameters::text FROM audit_trail"
                      " WHERE action = 'audit_trail_head_made_again'")  # fmt: skip
    assert (made["actor_kind"], made["actor_name"], json.loads(made["parameters"])) == (
        "hub", "hub", {"after_entry": last, "unchained_upto": 2})  # fmt: skip
    with hub.admin() as admin:
        said = admin.get("/admin/api/routing-log/verify").json()
    assert said["ok"] is False and said["trail_unchained"] == 2
    assert said["problems"] == [
        f"audit trail entry {made['id']} (audit_trail_head_made_again by hub): the trail's head (audit_trail_head) was "
        f"gone when the hub wrote its next entry: it was deleted, and entries after entry {last} may have been "
        "deleted with it, which no longer shows; the hub made a new head from there"
    ]


def test_an_auditor_reads_the_whole_trail_with_what_others_did(hub: Hub) -> None:
    with hub.admin() as admin:
        admin.get("/admin/api/routing-log", params={"object_id": "SEEN-BY-THE-AUDITOR"})
    with _auditor(hub, "outsider") as auditor:
        trail = auditor.get("/admin/api/audit-trail", params={"limit": 20})
    assert trail.status_code == 200, trail.text
    searches = [t for t in trail.json()["items"] if t["action"] == "search" and t["actor_kind"] == ADMIN]
    assert {"object_id": "SEEN-BY-THE-AUDITOR"} in [t["parameters"] for t in searches]


def _sent_entry(hub: Hub, exported: int) -> dict[str, Any]:
    with hub.admin() as admin:
        items = admin.get("/admin/api/audit-trail", params={"limit": 100}).json()["items"]
    return next(t for t in items if t["action"] == "export_sent" and t["parameters"]["export"] == exported)


@pytest.mark.parametrize("export_format", ["ndjson", "csv"])
def test_an_export_entry_holds_the_rows_and_sha256_of_the_bytes_received(
    hub: Hub, services: Services, export_format: str
) -> None:
    write(services.database_url, [numbered_entry(n) for n in range(3)])
    with _auditor(hub, f"exporter-{export_format}") as auditor:
        body = auditor.get("/admin/api/routing-log/export", params={"format": export_format}).content
        trail = auditor.get("/admin/api/audit-trail", params={"limit": 5}).json()["items"]
    started = next(t for t in trail if t["action"] == "export" and t["actor_name"] == f"exporter-{export_format}")
    lines = body.decode().splitlines() if export_format == "ndjson" else list(csv.reader(io.StringIO(body.decode())))
    rows = len(lines) - 1  # a CSV file's header, an NDJSON file's last line: its signed manifest
    assert rows >= 3
    assert _sent_entry(hub, started["id"])["parameters"] == {
        "export": started["id"], "rows": rows, "bytes": len(body), "sha256": hashlib.sha256(body).hexdigest(),
        "complete": True,
    }  # fmt: skip


def test_an_export_cut_short_is_recorded_as_incomplete_with_what_was_sent(hub: Hub, services: Services) -> None:
    start = datetime(2002, 3, 1, tzinfo=UTC)
    write(services.database_url, varied_entries(start, 3000, [("QZ", unique_party_id())], uuid.uuid4().hex[:8]))
    params = {"since": "2002-03-01T00:00:00Z", "until": "2002-03-02T00:00:00Z", "format": "ndjson", "bodies": "true"}
    with _auditor(hub, "quitter") as auditor:
        with auditor.stream("GET", "/admin/api/routing-log/export", params=params) as answer:
            next(answer.iter_raw())  # then gone
        started = next(t for t in auditor.get("/admin/api/audit-trail").json()["items"]
                       if t["action"] == "export" and t["actor_name"] == "quitter")  # fmt: skip
    deadline = time.monotonic() + 10
    while True:
        try:
            sent = _sent_entry(hub, started["id"])["parameters"]
            break
        except StopIteration:
            assert time.monotonic() < deadline, "no export_sent entry"
            time.sleep(0.2)
    assert sent["complete"] is False and 0 < sent["rows"] < 3000 and sent["bytes"] > 0, sent


def _written_at_once(url: str, writers: int, each: int) -> None:
    """each entries by each of writers connections, all at once."""

    async def writer(n: int) -> None:
        conn = await asyncpg.connect(url)
        try:
            for i in range(each):
                await record_action(conn, TRAIL_KEY, Actor(f"w{n}", ADMIN), "search", {"i": i})
        finally:
            await conn.close()

    async def run() -> None:
        await asyncio.gather(*(writer(n) for n in range(writers)))

    asyncio.run(run())


def test_entries_written_at_once_by_many_connections_form_one_chain(empty_database: str) -> None:
    write(empty_database, [])  # the schema
    _written_at_once(empty_database, 6, 15)
    problems: list[str] = []
    assert run_on(empty_database, lambda conn: verify_trail(conn, TRAIL_KEY, problems.append)) == (90, 0)
    assert problems == []


def test_a_head_deleted_under_many_writers_is_made_again_once(empty_database: str) -> None:
    write(empty_database, [])  # the schema
    _written_at_once(empty_database, 6, 2)
    sql(empty_database, "DELETE FROM audit_trail_head")
    _written_at_once(empty_database, 6, 5)
    problems: list[str] = []
    assert run_on(empty_database, lambda conn: verify_trail(conn, TRAIL_KEY, problems.append)) == (12 + 1 + 30, 0)
    assert len(problems) == 1 and " (audit_trail_head_made_again by hub): the trail's head" in problems[0], problems
