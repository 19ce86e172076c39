"""The routing log: a row per exchange, committed before the answer, group-committed, hash-chained, searchable."""

from __future__ import annotations

import asyncio
import getpass
import json
import subprocess
import sys
import uuid
import zlib
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from storage.log_body import RAW_BODY, SMALL_BODY_BYTES
from storage.log_row import COLUMNS, floor_mac, keyed_hash_covers_id, legacy_hash, row_hash
from tests.conftest import LOG_KEY, ROOT, Hub, Services, hub_env
from tests.log_rows import numbered_log, sql, verified
from tests.test_routing import LOCATION, _roles, party_key


def test_each_relayed_request_leaves_one_row_with_its_bodies_and_no_tokens(hub: Hub, connect_party, db) -> None:
    cpo, emsp = connect_party(_roles("CPO")), connect_party(_roles("EMSP"))
    cc, pid = party_key(cpo)
    location = LOCATION | {"party_id": pid, "name": "Parking garage at the central station, level -2, bays 14 to 20"}
    answer = cpo.call(hub.base, "PUT", f"receiver/locations/{cc}/{pid}/LOC1", to=party_key(emsp), body=location,
                      headers={"X-Request-ID": "row-1", "X-Correlation-ID": "row-corr"})  # fmt: skip
    # Strict mode: the row is committed before the answer, so it is there the moment the answer is.
    [row] = db.run(db.fetch("SELECT * FROM routing_log WHERE request_id = 'row-1'"))
    assert row["correlation_id"] == "row-corr"
    assert row["forwarded_request_id"] == emsp.functional()[0].headers["X-Request-ID"]
    assert (row["from_country_code"], row["from_party_id"], row["to_party_id"]) == (cc, pid, party_key(emsp)[1])
    assert (row["module"], row["interface"], row["method"], row["routing"]) == ("locations", "receiver", "PUT",
                                                                                "direct")  # fmt: skip
    assert (row["http_status"], row["ocpi_status_code"]) == (200, 1000) and row["duration_ms"] > 0
    sent = emsp.functional()[0].body
    assert len(sent) >= SMALL_BODY_BYTES and zlib.decompress(row["request_body"]) == sent
    # the receiver's short envelope is kept as it came: compressing it would save a few bytes for 5 us
    assert len(answer.content) < SMALL_BODY_BYTES and row["response_body"] == RAW_BODY + answer.content
    assert len(row["hash"]) == 32 and len(row["prev_hash"]) == 32
    # the hub's own log names its chain, apart from the database (a chain deleted whole with its head is missed)
    started = [json.loads(line) for line in hub.log().splitlines() if "routing_log_chain_started" in line]
    assert str(row["chain_id"]) in [line["chain_id"] for line in started]
    everything = str(dict(row))
    for secret in (cpo.hub_token, emsp.token_b, "Authorization", "authorization"):
        assert secret not in everything


def test_rejected_requests_leave_a_row_too(hub: Hub, connect_party, db) -> None:
    cpo = connect_party(_roles("CPO"))
    for n, (path, to) in enumerate([("sender/locations", ("ZZ", "ZZZ")), ("sender/nothing", None)]):
        cpo.call(hub.base, "GET", path, to=to, headers={"X-Request-ID": f"rejected-{n}"})
    rows = db.run(db.fetch("SELECT request_id, routing, ocpi_status_code, http_status, error FROM routing_log "
                           "WHERE request_id LIKE 'rejected-%' ORDER BY request_id"))  # fmt: skip
    assert [(r["routing"], r["ocpi_status_code"], r["http_status"]) for r in rows] == [
        ("rejected", 4001, 200),
        ("rejected", 2000, 404),
    ]
    assert all(r["error"] for r in rows)


def test_a_nul_character_in_an_id_is_logged_without_holding_up_the_log(hub: Hub, connect_party, db) -> None:
    # PostgreSQL text holds no NUL: an id "%00" in a path, or "\\u0000" in a CDR's JSON id, once made the writer retry
    # its batch forever, and every later caller waited for a commit that never came.
    cpo, emsp = connect_party(_roles("CPO")), connect_party(_roles("EMSP"))
    cc, pid = party_key(cpo)
    pushed = cpo.call(hub.base, "PUT", f"receiver/locations/{cc}/{pid}/A%00B", to=party_key(emsp),
                      body=LOCATION | {"id": "A\x00B", "party_id": pid}, headers={"X-Request-ID": "nul-1"})  # fmt: skip
    cdr = cpo.call(hub.base, "POST", "receiver/cdrs", to=party_key(emsp), content=b'{"id": "C\\u0000D"}',
                   headers={"X-Request-ID": "nul-2", "Content-Type": "application/json"})  # fmt: skip
    after = cpo.call(hub.base, "PUT", f"receiver/locations/{cc}/{pid}/LOC1", to=party_key(emsp),
                     body=LOCATION | {"party_id": pid}, headers={"X-Request-ID": "nul-3"})  # fmt: skip
    # a NUL in a path segment is no id (types.asciidoc: no non-printable characters): refused before forwarding, and
    # logged all the same (routing.shapes); one in a body's id is relayed
    assert [(a.status_code, a.json()["status_code"]) for a in (pushed, cdr, after)] == [(404, 2001), (201, 1000),
                                                                                          (200, 1000)]  # fmt: skip
    rows = db.run(db.fetch("SELECT request_id, path, object_id FROM routing_log WHERE request_id LIKE 'nul-%' "
                           "ORDER BY request_id"))  # fmt: skip
    assert [(r["request_id"], r["object_id"]) for r in rows] == [("nul-1", "A\ufffdB"), ("nul-2", "C\ufffdD"),
                                                                 ("nul-3", "LOC1")]  # fmt: skip
    assert rows[0]["path"].endswith("/A%00B")  # the path as it came, percent-encoded
    with hub.admin() as admin:  # an auditor searching for the id as the party spelt it finds the row
        found = admin.get("/admin/api/routing-log", params={"object_id": "A\x00B"}).json()["items"]
    assert [row["request_id"] for row in found] == ["nul-1"]


def test_admin_search_by_correlation_id_pages_with_a_cursor_without_gaps(hub: Hub, connect_party) -> None:
    cpo, emsp = connect_party(_roles("CPO")), connect_party(_roles("EMSP"))
    cc, pid = party_key(cpo)
    correlation = str(uuid.uuid4())
    for n in range(7):
        cpo.call(
            hub.base,
            "GET",
            f"receiver/locations/{cc}/{pid}/L{n}",
            to=party_key(emsp),
            headers={"X-Correlation-ID": correlation, "X-Request-ID": f"{correlation}-{n}"},
        )
    found, cursor = [], None
    with hub.admin() as admin:
        while True:
            page = admin.get("/admin/api/routing-log", params={"correlation_id": correlation, "limit": 3}
                             | ({"cursor": cursor} if cursor else {})).json()  # fmt: skip
            found += [item["request_id"] for item in page["items"]]
            if not (cursor := page["next_cursor"]):
                break
        assert sorted(found) == [f"{correlation}-{n}" for n in range(7)] and len(set(found)) == 7
        by_request = admin.get("/admin/api/routing-log", params={"request_id": f"{correlation}-3"}).json()
        assert [i["path"] for i in by_request["items"]] == [f"/ocpi/2.2.1/receiver/locations/{cc}/{pid}/L3"]
        # which platforms: a party id held by two platforms one after the other is told apart (an auditor's ask)
        platforms = {i["party_id"]: i["platform_id"] for i in admin.get("/admin/api/parties").json()["items"]}
        [item] = by_request["items"]
        expected = (platforms[pid], platforms[party_key(emsp)[1]])
        assert (item["caller_platform_id"], item["receiver_platform_id"]) == expected
        for platform_id, found in ((expected[0], 7), (expected[1], 7), (max(platforms.values()) + 1, 0)):
            on = admin.get("/admin/api/routing-log", params={"correlation_id": correlation, "platform": platform_id})
            assert len(on.json()["items"]) == found, on.text
        assert admin.get("/admin/api/routing-log", params={"cursor": "%%%"}).status_code == 400
        assert httpx.get(f"{hub.base}/admin/api/routing-log").status_code == 401
        verdict = admin.get("/admin/api/routing-log/verify").json()
    assert verdict["ok"] is True and verdict["rows"] > 7 and verdict["first_bad_id"] is None


def test_the_hash_of_a_row_is_the_one_its_chain_was_written_with() -> None:
    # Rows written by earlier releases must go on verifying: the canonical form a row is hashed in may not change.
    row: dict[str, Any] = dict(
        received_at=datetime(2026, 12, 1, 4, 30, 0, 123456, tzinfo=UTC), chain_id=uuid.UUID(
        "6a1e3f0c-2b9d-4c7e-8f00-1d2e3f405162"), seq=7, request_id="req-1", forwarded_request_id="fwd-1",
        correlation_id="cor-1", from_country_code="NL", from_party_id="CPO", to_country_code="DE", to_party_id="EMS",
        caller_platform_id=1, receiver_platform_id=2, module="locations", interface="receiver", method="PUT",
        path="/ocpi/2.2.1/receiver/locations/NL/CPO/LOC1", query="", routing="direct", http_status=200,
        ocpi_status_code=1000, duration_ms=1.25, error=None, request_headers='{"x-request-id": "req-1"}',
        response_headers=None, request_body=zlib.compress(b"{}"), request_body_size=2, response_body=None,
        response_body_size=0,
    )  # fmt: skip
    expected = "ff87fb1eb8543deb53cf25f502e5c66efd6138888a0fac58caff39cb1dd3c4be"  # before keyed hashes
    assert legacy_hash(bytes(32), row).hex() == expected
    assert legacy_hash(bytes(32), row | {"request_headers": {"x-request-id": "req-1"}}).hex() == expected
    assert legacy_hash(bytes(32), row | {"seq": 8}).hex() != expected
    row["object_id"], row["listed_ids"] = "LOC1", None
    keyed = "015417b45da786d204173ed34a6c4e909d60c365e3cb159a7a4a84e2df9710bb"
    assert row_hash(b"k" * 32, bytes(32), row, None).hex() == keyed  # before ids were hashed (migration 0014)
    assert row_hash(b"k" * 32, bytes(32), row | {"request_headers": {"x-request-id": "req-1"}}, None).hex() == keyed
    for other in ({"seq": 8}, {"object_id": "LOC2"}, {"listed_ids": ["CDR1"]}):
        assert row_hash(b"k" * 32, bytes(32), row | other, None).hex() != keyed
    assert row_hash(b"j" * 32, bytes(32), row, None).hex() != keyed
    with_id = "849d76348d0a5a51c7d0c83779c8e7e47faa741b60a7a0477181c7738eeae7f4"  # id 52 hashed too
    assert row_hash(b"k" * 32, bytes(32), row, 52).hex() == with_id
    assert row_hash(b"k" * 32, bytes(32), row, 53).hex() != with_id
    for stored_id, covered in ((52, True), (53, None)):  # as verify reads a row: either form, under the key
        stored = row | {"id": stored_id, "prev_hash": bytes(32)}
        assert keyed_hash_covers_id(b"k" * 32, stored | {"hash": bytes.fromhex(with_id)}) is covered
        assert keyed_hash_covers_id(b"k" * 32, stored | {"hash": bytes.fromhex(keyed)}) is False  # id not hashed
    # Migration 0021: the receiver's part of the duration and the wait for a connection, hashed where a row has either;
    # a row without them (written before, by the previous version, or that sent nothing to a party) as it was.
    untimed = {"receiver_ms": None, "connection_wait_ms": None}
    assert row_hash(b"k" * 32, bytes(32), row | untimed, 52).hex() == with_id
    timed = row | {"receiver_ms": 812.5, "connection_wait_ms": 0.0}
    with_times = "97906aac5f5ab3300f446dc6a0b07c6f4b5c34fa8f02ed64bc2501b074eef0e3"  # 812.5 and 0.0 hashed too
    assert row_hash(b"k" * 32, bytes(32), timed, 52).hex() == with_times
    assert row_hash(b"k" * 32, bytes(32), timed | {"connection_wait_ms": 0}, 52).hex() == with_times  # as read back
    for other in ({"receiver_ms": 312.5}, {"receiver_ms": None}, {"connection_wait_ms": None}):
        assert row_hash(b"k" * 32, bytes(32), timed | other, 52).hex() != with_times, other
    waited = row | {"receiver_ms": None, "connection_wait_ms": 1000.0}  # not forwarded: no connection was free
    not_a_null = waited | {"receiver_ms": float("nan")}  # which JSON writes as null
    assert row_hash(b"k" * 32, bytes(32), not_a_null, 52) != row_hash(b"k" * 32, bytes(32), waited, 52)
    stored = timed | {"id": 52, "prev_hash": bytes(32), "hash": bytes.fromhex(with_times)}
    assert keyed_hash_covers_id(b"k" * 32, stored) is True
    assert keyed_hash_covers_id(b"k" * 32, stored | untimed) is None  # its times taken away
    assert keyed_hash_covers_id(b"k" * 32, stored | {"hash": bytes.fromhex(with_id)}) is None  # times added


@pytest.mark.parametrize(
    ("tamper", "bad_row"),
    [
        ("UPDATE routing_log SET http_status = 500 WHERE request_id = 'r17'", "r17"),
        ("UPDATE routing_log SET request_body = NULL WHERE request_id = 'r5'", "r5"),
        ("DELETE FROM routing_log WHERE request_id = 'r10'", "r11"),
        ("DELETE FROM routing_log WHERE seq = (SELECT max(seq) FROM routing_log)", "r28"),
        ("DELETE FROM routing_log WHERE seq = 1", "r1"),
    ],
)
def test_verify_detects_an_edited_or_deleted_row(empty_database: str, tamper: str, bad_row: str) -> None:
    numbered_log(empty_database, 30)
    assert verified(empty_database).ok
    result = verified(empty_database, tamper)
    assert result.ok is False and result.problems

    async def bad_request_id() -> str:
        conn = await asyncpg.connect(empty_database)
        try:
            return await conn.fetchval("SELECT request_id FROM routing_log WHERE id = $1", result.first_bad_id)
        finally:
            await conn.close()

    # rows are chained in the order record() was called: r0 is seq 1
    assert asyncio.run(bad_request_id()) == bad_row


def test_verify_detects_a_chain_all_of_whose_rows_were_deleted_but_not_one_retention_dropped(
    empty_database: str,
) -> None:
    # A chain with no rows left was never looked at: a process's whole chain could go unseen (found by an auditor's
    # walkthrough). Retention dropping a whole chain leaves its last row's hash as a floor.
    chain = numbered_log(empty_database, 3).chain_id
    gone = verified(empty_database, f"DELETE FROM routing_log WHERE chain_id = '{chain}'")
    assert gone.ok is False and f"chain {chain}: its head is seq 3, and none of its rows is left" in gone.problems[0]
    [head] = sql(empty_database, "SELECT chain_id, last_seq, last_hash FROM routing_log_chain")
    mac = floor_mac(LOG_KEY, *head.values(), None, None, None)  # as a floor of before the upgrade
    sql(empty_database, "INSERT INTO routing_log_floor (chain_id, seq, hash, mac) VALUES ($1, $2, $3, $4)", *head, mac)
    assert verified(empty_database).ok


@pytest.mark.parametrize(
    "rehash",
    [
        lambda prev, values: legacy_hash(prev, values),  # the plain SHA-256 chain, which passed before keyed hashes
        lambda prev, values: row_hash(b"a guessed key".ljust(32), prev, values, values.get("id")),
    ],
    ids=["sha256", "guessed-key"],
)
def test_someone_who_can_write_to_the_database_cannot_rewrite_a_chain_without_the_hubs_key(
    empty_database: str, rehash: Callable[[bytes, dict[str, Any]], bytes]
) -> None:
    numbered_log(empty_database, 6)
    rows = sql(empty_database, f"SELECT id, {', '.join(COLUMNS)}, object_id, listed_ids FROM routing_log ORDER BY seq")
    edits = {3: {"http_status": 500}, 4: {"object_id": "L999"}}  # by seq: an outcome, what an auditor searches by
    prev = rows[0]["hash"]
    for row in rows[1:]:  # each hash from seq 2 on recomputed, and the head
        values = dict(row) | edits.get(row["seq"], {})
        values["hash"] = rehash(prev, values)
        sql(empty_database, "UPDATE routing_log SET http_status = $2, object_id = $3, prev_hash = $4, hash = $5 "
                            "WHERE id = $1", row["id"], values["http_status"], values["object_id"], prev,
                            values["hash"])  # fmt: skip
        prev = values["hash"]
    sql(empty_database, "UPDATE routing_log_chain SET last_hash = $1", prev)
    result = verified(empty_database)
    assert result.ok is False and result.first_bad_id == rows[1]["id"], result.problems
    assert "the row was changed" in result.problems[0]


def test_a_floor_not_written_by_retention_does_not_hide_rows_deleted_from_a_chain(empty_database: str) -> None:
    # A floor says "retention dropped the rows up to here": forged, it would explain away any gap.
    numbered_log(empty_database, 6)
    [gone] = sql(empty_database, "DELETE FROM routing_log WHERE seq = 3 RETURNING chain_id, seq, hash")
    assert verified(empty_database).ok is False
    floor = "INSERT INTO routing_log_floor (chain_id, seq, hash, mac) VALUES ($1, $2, $3, $4)"
    sql(empty_database, floor, *gone, floor_mac(b"a guessed key".ljust(32), *gone.values(), None, None, None))
    result = verified(empty_database)
    assert result.ok is False
    assert f"chain {gone['chain_id']}: the retention floor at seq 3 does not verify" in result.problems[0]
    assert f"seq 3 of chain {gone['chain_id']}, between row" in " ".join(result.problems)


def test_ocpi_hub_verify_checks_the_chains_from_the_command_line_and_fails_on_a_changed_row(
    services: Services, empty_database: str, tmp_path: Path
) -> None:
    numbered_log(empty_database, 5)

    def verify_command(*args: str) -> subprocess.CompletedProcess[str]:
        env = hub_env(services, tmp_path, OCPI_HUB_DATABASE_URL=empty_database)
        return subprocess.run([sys.executable, "-m", "hub.cli", "verify", *args], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=120)  # fmt: skip

    good = verify_command()
    assert good.returncode == 0, good.stderr
    assert json.loads(good.stdout) | {"problems": []} == {"ok": True, "rows": 5, "first_bad_id": None, "problems": [],
                                                          "heads_checked": None, "trail_entries": 0,
                                                          "trail_unchained": 0, "notes": []}  # fmt: skip
    assert json.loads(verify_command("--since", "2000-01-01T00:00:00Z").stdout)["rows"] == 5

    changed = sql(empty_database, "UPDATE routing_log SET http_status = 500 WHERE seq = 3 RETURNING id")[0]["id"]
    bad = verify_command()
    assert bad.returncode == 1
    answer = json.loads(bad.stdout)
    assert answer["ok"] is False and answer["first_bad_id"] == changed and "was changed" in answer["problems"][0]

    wrong = verify_command("--since", "yesterday")
    assert wrong.returncode == 2 and "--since must be an ISO 8601 time" in wrong.stderr
    trail = sql(empty_database, "SELECT actor_kind, actor_name, action, parameters FROM audit_trail ORDER BY id")
    assert [tuple(row)[:3] for row in trail] == [("admin", f"ocpi-hub verify ({getpass.getuser()})", "verify")] * 3
    assert json.loads(trail[-1]["parameters"]) == {"ok": False, "rows": 5, "first_bad_id": changed}  # its outcome


def test_heads_kept_outside_the_database_show_a_chains_newest_rows_or_a_whole_chain_deleted_since(
    services: Services, empty_database: str, tmp_path: Path
) -> None:
    # What no key shows: rows deleted from the end of a chain with its head moved back, or a chain with its head.
    truncated, deleted = numbered_log(empty_database, 5).chain_id, numbered_log(empty_database, 3).chain_id
    env = hub_env(services, tmp_path, OCPI_HUB_DATABASE_URL=empty_database)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "hub.cli", *args], env=env, cwd=ROOT, capture_output=True,
                              text=True, timeout=120)  # fmt: skip

    heads = tmp_path / "heads.json"
    heads.write_text(cli("heads").stdout)
    saved = {c["chain_id"]: c for c in json.loads(heads.read_text())["chains"]}
    assert {chain_id: c["last_seq"] for chain_id, c in saved.items()} == {str(truncated): 5, str(deleted): 3}
    assert json.loads(cli("verify", "--heads", str(heads)).stdout) | {"problems": []} == {
        "ok": True, "rows": 8, "first_bad_id": None, "problems": [], "heads_checked": 2, "trail_entries": 1,
        "trail_unchained": 0, "notes": []}  # fmt: skip

    sql(empty_database, "DELETE FROM routing_log WHERE chain_id = $1 AND seq > 3", truncated)
    sql(empty_database, "UPDATE routing_log_chain SET last_seq = 3, last_hash = (SELECT hash FROM routing_log WHERE "
                        "chain_id = $1 AND seq = 3) WHERE chain_id = $1", truncated)  # fmt: skip
    sql(empty_database, "DELETE FROM routing_log WHERE chain_id = $1", deleted)
    sql(empty_database, "DELETE FROM routing_log_chain WHERE chain_id = $1", deleted)
    assert cli("verify").returncode == 0  # the chains left are whole
    checked = cli("verify", "--heads", str(heads))
    assert checked.returncode == 1
    problems = json.loads(checked.stdout)["problems"]
    assert [p.split(":")[0] for p in problems] == [f"chain {truncated}", f"chain {deleted}"]
    assert "seqs 4 to 5 are gone (after seq 3, where its head is now; seq 5 was its last row in" in problems[0]
    assert "seqs 1 to 3 are gone (every row, and its head; seq 3 was its last row in" in problems[1]

    # Retention dropping a chain whole leaves a floor at its last row: that head is accounted for.
    last_hash = bytes.fromhex(saved[str(deleted)]["last_hash"])
    sql(empty_database, "INSERT INTO routing_log_floor (chain_id, seq, hash, mac) VALUES ($1, 3, $2, $3)", deleted,
        last_hash, floor_mac(LOG_KEY, deleted, 3, last_hash, None, None, None))  # fmt: skip
    assert [p.split(":")[0] for p in json.loads(cli("verify", "--heads", str(heads)).stdout)["problems"]] == [
        f"chain {truncated}"]  # fmt: skip
    heads.write_text("{}")
    wrong = cli("verify", "--heads", str(heads))
    assert wrong.returncode == 2 and "not heads as ocpi-hub heads prints them" in wrong.stderr


def test_a_cdr_fetched_at_the_location_the_hub_gave_its_post_is_found_by_the_cdrs_id(
    hub: Hub, connect_party, db
) -> None:
    # A dispute over a CDR searched by its id found the POST alone, not the CPO's later GET of it (an auditor's
    # walkthrough): that row's path is the hub's URL, which names no CDR.
    cpo, emsp = connect_party(_roles("CPO")), connect_party(_roles("EMSP"))
    cdr_id = f"CDR-{uuid.uuid4().hex[:8]}"
    posted = cpo.call(hub.base, "POST", "receiver/cdrs", to=party_key(emsp), body={"id": cdr_id})
    fetched = cpo.call(hub.base, "GET", posted.headers["location"])
    assert fetched.json()["data"]["id"] == cdr_id
    found = "SELECT request_id, method FROM routing_log WHERE object_id = upper($1) ORDER BY id"  # ids: upper-cased
    rows = db.run(db.fetch(found, cdr_id))
    assert [(r["request_id"], r["method"]) for r in rows] == [
        (posted.headers["x-request-id"], "POST"), (fetched.headers["x-request-id"], "GET")]  # fmt: skip
