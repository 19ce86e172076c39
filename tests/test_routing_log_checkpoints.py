"""Checkpoints an auditor keeps outside the hub: every chain's head and the audit trail's, signed with the hub's
Ed25519 key. Checked against later, they show history before them rewritten even by someone holding the hub's secret
key (who can recompute every keyed hash, so that a plain verify passes); a checkpoint changed since is refused."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hub.admin.actors import Actor
from hub.admin.checkpoint import recorded_checkpoint
from hub.admin.verify import recorded_verify
from hub.checkpoint import saved_heads
from hub.export_manifest import signed
from hub.settings import Settings, SettingsError
from storage.audit_trail import entry_hash, head_mac
from storage.log_row import amendment_mac, amendment_number_mac, row_hash
from storage.partitions import drop_before
from storage.secrets import audit_trail_key, export_signing_key
from tests.conftest import (
    LOG_KEY,
    OUTPUT,
    ROOT,
    SECRET_KEY,
    Hub,
    Services,
    hub_env,
    register_at_hub,
    scratch_database,
    start_hub,
)
from tests.log_rows import numbered_entry, numbered_log, sql, varied_entries, write
from tests.test_auditor_tokens import _auditor, _cli
from tests.test_routing import _roles, party_key, push_location

AUDITOR = Actor("keeper", "auditor")


@pytest.fixture(scope="module")
def checkpoint_hub(services: Services, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    """A hub on a database of its own, writing a checkpoint to its log every second."""
    with scratch_database(services, "checkpoints") as url:
        env = hub_env(services, tmp_path_factory.mktemp("checkpoint-hub"), OCPI_HUB_DATABASE_URL=url,
                      OCPI_HUB_CHECKPOINT_LOG_S="1")  # fmt: skip
        hub = start_hub(env, OUTPUT / "hub-checkpoints.log")
        try:
            yield hub
        finally:
            hub.stop()


def _verify_offline(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """verify-checkpoint as an auditor runs it: no OCPI_HUB_* variable, no database, no secret."""
    return subprocess.run([sys.executable, "-m", "hub.cli", "verify-checkpoint", *map(str, args)],
                          env={"PATH": "/usr/bin"}, cwd=ROOT, capture_output=True, text=True, timeout=60)  # fmt: skip


def test_a_checkpoint_verifies_after_more_requests_are_routed_and_checks_offline(
    checkpoint_hub: Hub, start_party: Any, tmp_path: Path
) -> None:
    hub = checkpoint_hub
    cpo = register_at_hub(hub, start_party, _roles("CPO"))
    emsp = register_at_hub(hub, start_party, _roles("EMSP"))
    assert push_location(cpo, hub.base, party_key(emsp)).json()["status_code"] == 1000
    with _auditor(hub, "keeper") as auditor:
        taken = auditor.get("/admin/api/routing-log/checkpoint")
        assert taken.status_code == 200, taken.text
        checkpoint = taken.json()
        published = auditor.get("/admin/api/routing-log/export/public-key").json()
        assert checkpoint["key_fingerprint"] == published["fingerprint"] and checkpoint["hub"] == hub.base
        assert checkpoint["taken_by"] == {"kind": "auditor", "name": "keeper"}
        assert checkpoint["audit_trail"]["entry_id"] >= 1 and len(checkpoint["audit_trail"]["hash"]) == 64
        assert all(c["row_id"] is not None and len(c["last_hash"]) == 64 for c in checkpoint["chains"])
        for _ in range(3):  # the hub's chain moves on past the checkpoint
            assert push_location(cpo, hub.base, party_key(emsp)).json()["status_code"] == 1000
        checked = auditor.post("/admin/api/routing-log/verify", json=checkpoint)
        assert checked.status_code == 200, checked.text
        result = checked.json()
        assert result["ok"] is True and result["heads_checked"] == len(checkpoint["chains"]), result
        trail = auditor.get("/admin/api/audit-trail").json()["items"]
    verified = next(e for e in trail if e["action"] == "verify")
    assert verified["parameters"]["checkpoint_id"] == checkpoint["checkpoint_id"] and verified["parameters"]["ok"]
    kept = next(e for e in trail if e["action"] == "checkpoint" and e["actor_name"] == "keeper")
    assert kept["parameters"]["checkpoint_id"] == checkpoint["checkpoint_id"]
    assert kept["parameters"]["signature"] == checkpoint["signature"]

    # kept as a file: ocpi-hub verify --checkpoint, and its signature checked anywhere with the public key alone
    (tmp_path / "checkpoint.json").write_text(json.dumps(checkpoint))
    (tmp_path / "hub.pem").write_text(published["public_key_pem"])
    on_the_hub = _cli(hub, "verify", "--checkpoint", str(tmp_path / "checkpoint.json"))
    assert on_the_hub.returncode == 0 and json.loads(on_the_hub.stdout)["ok"] is True, on_the_hub.stderr
    offline = _verify_offline(tmp_path / "checkpoint.json", "--public-key", tmp_path / "hub.pem")
    assert offline.returncode == 0 and f"OK: checkpoint {checkpoint['checkpoint_id']}" in offline.stderr, offline


def test_the_hub_writes_checkpoints_to_its_log_and_ocpi_hub_checkpoint_prints_one(
    checkpoint_hub: Hub, tmp_path: Path
) -> None:
    printed = _cli(checkpoint_hub, "checkpoint")
    assert printed.returncode == 0, printed.stderr
    assert json.loads(printed.stdout)["taken_by"]["name"].startswith("ocpi-hub checkpoint (")
    deadline = time.monotonic() + 30
    while not (lines := [line for line in checkpoint_hub.log().splitlines() if '"routing_log_checkpoint"' in line]):
        assert time.monotonic() < deadline, checkpoint_hub.log()[-3000:]
        time.sleep(0.2)
    logged = json.loads(lines[0])
    assert logged["checkpoint"]["taken_by"] == {"kind": "hub", "name": "hub"}
    # the log line itself, as log shipping keeps it, is what verify and verify-checkpoint take
    (tmp_path / "line.json").write_text(lines[0])
    assert _verify_offline(tmp_path / "line.json").returncode == 0
    checked = _cli(checkpoint_hub, "verify", "--checkpoint", str(tmp_path / "line.json"))
    assert checked.returncode == 0, (checked.stdout, checked.stderr)


def test_a_checkpoint_changed_or_signed_by_another_key_is_refused_and_checks_nothing(
    checkpoint_hub: Hub, tmp_path: Path
) -> None:
    with checkpoint_hub.admin() as admin:
        checkpoint = admin.get("/admin/api/routing-log/checkpoint").json()
        changed = checkpoint | {"taken_at": "2020-01-01T00:00:00Z"}
        refused = admin.post("/admin/api/routing-log/verify", json=changed)
        assert refused.status_code == 400, refused.text
        assert "nothing was checked: its signature does not verify: it was changed after the hub signed it" in (
            refused.json()["error"])  # fmt: skip
        other = signed({k: v for k, v in checkpoint.items() if k not in ("public_key", "signature")},
                       Ed25519PrivateKey.generate())  # fmt: skip
        foreign = admin.post("/admin/api/routing-log/verify", json=other)
        assert foreign.status_code == 400 and f"not by {checkpoint['key_fingerprint']}" in foreign.json()["error"]
        unsigned = admin.post("/admin/api/routing-log/verify", json={**checkpoint, "signature": None})
        assert unsigned.status_code == 400 and "signature is missing or not base64" in unsigned.json()["error"]
        in_a_url = admin.get("/admin/api/routing-log/verify", params={"checkpoint": json.dumps(checkpoint)})
        assert in_a_url.status_code == 400 and "POST the checkpoint file" in in_a_url.json()["error"]
    (tmp_path / "changed.json").write_text(json.dumps(changed))
    cli = _cli(checkpoint_hub, "verify", "--checkpoint", str(tmp_path / "changed.json"))
    assert cli.returncode == 2 and "its signature does not verify" in cli.stderr and not cli.stdout
    offline = _verify_offline(tmp_path / "changed.json")
    assert offline.returncode == 1 and "FAILED: its signature does not verify" in offline.stderr
    (tmp_path / "heads.json").write_text(json.dumps({"taken_at": checkpoint["taken_at"], "chains": []}))
    not_one = _cli(checkpoint_hub, "verify", "--checkpoint", str(tmp_path / "heads.json"))
    assert not_one.returncode == 2 and "not a checkpoint" in not_one.stderr


def test_a_chain_of_the_checkpoint_the_log_does_not_hold_is_named(checkpoint_hub: Hub) -> None:
    with checkpoint_hub.admin() as admin:
        checkpoint = admin.get("/admin/api/routing-log/checkpoint").json()
        made_up = str(uuid.uuid4())
        chains = [*checkpoint["chains"], {"chain_id": made_up, "last_seq": 4, "last_hash": "cd" * 32,
                                          "amendments": 0, "row_id": 77}]  # fmt: skip
        unsigned = {k: v for k, v in checkpoint.items() if k not in ("public_key", "signature")}
        # as the hub signed it: the chain was in the log then, and is gone with its head since
        resigned = signed(unsigned | {"chains": chains}, export_signing_key(SECRET_KEY))
        answer = admin.post("/admin/api/routing-log/verify", json=resigned).json()
    assert answer["ok"] is False, answer
    assert answer["problems"] == [f"chain {made_up}: seqs 1 to 4 are gone (every row, and its head; seq 4 was its last"
                                  f" row in checkpoint {checkpoint['checkpoint_id']} taken at "
                                  f"{_iso(checkpoint['taken_at'])}), and retention did not drop them: rows were "
                                  "deleted"]  # fmt: skip


def test_the_consoles_verify_page_takes_a_checkpoint_downloaded_there(checkpoint_hub: Hub) -> None:
    with httpx.Client(base_url=checkpoint_hub.base, timeout=30) as console:
        assert console.post("/console/sign-in", data={"token": checkpoint_hub.admin_token}).status_code == 303
        downloaded = console.get("/console/checkpoint")
        assert downloaded.status_code == 200 and "ocpi-hub-checkpoint-" in downloaded.headers["content-disposition"]
        checked = console.post("/console/verify", data={"heads": downloaded.text})
        changed = json.loads(downloaded.text) | {"hub": "http://elsewhere"}
        refused = console.post("/console/verify", data={"heads": json.dumps(changed)})
    chains = len(json.loads(downloaded.text)["chains"])
    assert checked.status_code == 200 and "Chain intact" in checked.text, checked.text
    assert f"Every row up to the {chains} saved head" in checked.text
    assert refused.status_code == 400 and "What was pasted: the checkpoint is refused, nothing was checked: its " \
        "signature does not verify" in " ".join(refused.text.split())  # fmt: skip


def _iso(text: str) -> str:
    return datetime.fromisoformat(text).isoformat()


def _settings(services: Services, url: str, tmp_path: Path) -> Settings:
    return Settings.from_env(hub_env(services, tmp_path, OCPI_HUB_DATABASE_URL=url)).with_secrets()


def _checkpoint(url: str, settings: Settings) -> bytes:
    async def take() -> dict[str, Any]:
        conn = await asyncpg.connect(url)
        try:
            return await recorded_checkpoint(conn, settings, AUDITOR, {})
        finally:
            await conn.close()

    return json.dumps(asyncio.run(take())).encode()


def _verified(url: str, settings: Settings, checkpoint: bytes | None) -> Any:
    async def run() -> Any:
        conn = await asyncpg.connect(url)
        try:
            saved = saved_heads(checkpoint, settings.export_signing_key) if checkpoint else None
            return await recorded_verify(conn, LOG_KEY, AUDITOR, {}, (None, None), saved)
        finally:
            await conn.close()

    return asyncio.run(run())


def _rewrite_as_an_insider(url: str, chain_id: uuid.UUID, seq: int) -> None:
    """The row at seq changed, and every hash from it to the chain's head computed again with the hub's key."""
    rows = sql(url, "SELECT * FROM routing_log WHERE chain_id = $1 AND seq >= $2 - 1 ORDER BY seq", chain_id, seq)
    prev = rows[0]["hash"]
    for row in rows[1:]:
        values = dict(row) | ({"http_status": 502} if row["seq"] == seq else {})
        hashed = row_hash(LOG_KEY, prev, values, row["id"])
        sql(url, "UPDATE routing_log SET http_status = $1, prev_hash = $2, hash = $3 WHERE id = $4",
            values["http_status"], prev, hashed, row["id"])  # fmt: skip
        prev = hashed
    sql(url, "UPDATE routing_log_chain SET last_hash = $1 WHERE chain_id = $2", prev, chain_id)


def test_history_rewritten_with_the_key_passes_a_plain_verify_and_not_the_checkpoint(
    services: Services, empty_database: str, tmp_path: Path
) -> None:
    settings = _settings(services, empty_database, tmp_path)
    chain = numbered_log(empty_database, 6).chain_id
    checkpoint = _checkpoint(empty_database, settings)
    write(empty_database, [numbered_entry(n) for n in range(6, 9)])  # another chain, after the checkpoint
    assert _verified(empty_database, settings, checkpoint).ok

    _rewrite_as_an_insider(empty_database, chain, 3)
    assert _verified(empty_database, settings, None).ok  # the key holder's rewrite: every hash matches
    result = _verified(empty_database, settings, checkpoint)
    taken = json.loads(checkpoint)
    head_row = next(c["row_id"] for c in taken["chains"] if c["chain_id"] == str(chain))
    assert not result.ok and result.first_bad_id == head_row, result
    assert result.problems == [f"row {head_row}: seq 6 of chain {chain} is not the row it was at checkpoint "
                               f"{taken['checkpoint_id']} taken at {_iso(taken['taken_at'])}, their last of it: the "
                               "chain was rewritten"]  # fmt: skip
    file = tmp_path / "checkpoint.json"
    file.write_bytes(checkpoint)
    env = hub_env(services, tmp_path, OCPI_HUB_DATABASE_URL=empty_database)
    cli = subprocess.run([sys.executable, "-m", "hub.cli", "verify", "--checkpoint", str(file)], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert cli.returncode == 1 and f"seq 6 of chain {chain} is not the row" in cli.stdout, cli.stderr


def _rewrite_the_trail_as_an_insider(url: str, entry_id: int) -> None:
    """The entry's parameters changed, and every hash from it to the trail's head computed again with the key."""
    key = audit_trail_key(LOG_KEY)
    sql(url, """UPDATE audit_trail SET parameters = '{"forged": true}' WHERE id = $1""", entry_id)
    entries = sql(url, "SELECT * FROM audit_trail WHERE id >= $1 ORDER BY id", entry_id)
    prev = entries[0]["prev_hash"]
    for entry in entries:
        hashed = entry_hash(key, prev, entry)
        sql(url, "UPDATE audit_trail SET prev_hash = $1, hash = $2 WHERE id = $3", prev, hashed, entry["id"])
        prev = hashed
    upto = sql(url, "SELECT unchained_upto FROM audit_trail_head")[0][0]
    sql(url, "UPDATE audit_trail_head SET last_id = $1, last_hash = $2, mac = $3", entries[-1]["id"], prev,
        head_mac(key, upto, entries[-1]["id"], prev))  # fmt: skip


def test_the_audit_trail_rewritten_with_the_key_up_to_the_checkpoint_is_named(
    services: Services, empty_database: str, tmp_path: Path
) -> None:
    settings = _settings(services, empty_database, tmp_path)
    numbered_log(empty_database, 2)
    _checkpoint(empty_database, settings)  # the trail's first entry
    checkpoint = _checkpoint(empty_database, settings)
    entry = json.loads(checkpoint)["audit_trail"]["entry_id"]
    _rewrite_the_trail_as_an_insider(empty_database, entry)
    assert _verified(empty_database, settings, None).ok
    said = _verified(empty_database, settings, checkpoint).problems
    assert said == [f"audit trail entry {entry} is not the entry it was in checkpoint "
                    f"{json.loads(checkpoint)['checkpoint_id']} taken at {_iso(json.loads(checkpoint)['taken_at'])}: "
                    "the trail was rewritten up to it"], said  # fmt: skip
    sql(empty_database, "DELETE FROM audit_trail WHERE id = $1", entry)
    said = _verified(empty_database, settings, checkpoint).problems
    assert any(f"audit trail entry {entry}, its last in checkpoint" in p and "is gone" in p for p in said), said


def test_rows_retention_dropped_before_the_checkpoint_are_said_so_not_taken_for_tampering(
    services: Services, empty_database: str, tmp_path: Path
) -> None:
    settings = _settings(services, empty_database, tmp_path)
    write(empty_database, [])  # the schema
    old = datetime.now(UTC) - timedelta(days=600)
    sql(empty_database, "SELECT routing_log_add_partition($1)", old)
    partly = varied_entries(old, 4, [("QC", "AAA")], uuid.uuid4().hex[:8])
    for entry in partly[2:]:
        entry.received_at = datetime.now(UTC)
    partly_dropped = write(empty_database, partly).chain_id  # seqs 1 and 2 in the old month, 3 and 4 now
    dropped = write(empty_database, varied_entries(old, 3, [("QC", "AAB")], uuid.uuid4().hex[:8])).chain_id
    checkpoint = _checkpoint(empty_database, settings)
    taken = json.loads(checkpoint)
    named = f"checkpoint {taken['checkpoint_id']} taken at {_iso(taken['taken_at'])}"

    async def retention() -> None:
        conn = await asyncpg.connect(empty_database)
        try:
            await drop_before(conn, datetime.now(UTC) - timedelta(days=400), key=LOG_KEY)
        finally:
            await conn.close()

    asyncio.run(retention())
    assert sql(empty_database, "SELECT count(*) FROM routing_log")[0][0] == 2
    result = _verified(empty_database, settings, checkpoint)
    assert result.ok, result.problems
    assert sorted(result.notes) == sorted([
        f"chain {dropped}: seq 3, its last row in {named}, was dropped by retention, the floor it left holds the same "
        "hash",
        f"chain {partly_dropped}: 2 of its 4 rows up to seq 4, its last in {named}, were dropped by retention: checked "
        "by the floors it left, not against the checkpoint",
    ])  # fmt: skip


@pytest.mark.parametrize("value", ["-1", "soon", "inf", "0.001", "0.5"])
def test_the_checkpoint_interval_is_a_second_or_more_or_0_for_none(value: str) -> None:
    # below a second, each checkpoint's audit-trail entry would queue on the trail's head lock faster than it is taken
    assert Settings.from_env({"OCPI_HUB_CHECKPOINT_LOG_S": "0"}).checkpoint_log_s == 0
    assert Settings.from_env({"OCPI_HUB_CHECKPOINT_LOG_S": "1"}).checkpoint_log_s == 1
    with pytest.raises(SettingsError, match="OCPI_HUB_CHECKPOINT_LOG_S must be 1 second or more, or 0 for none"):
        Settings.from_env({"OCPI_HUB_CHECKPOINT_LOG_S": value})


def _amend_as_an_insider(url: str, chain_id: uuid.UUID, seq: int) -> None:
    """An amendment of the row at seq, long after it was written, MAC'd and numbered with the hub's key: the log now
    says its caller was answered something else (what a serving role holding OCPI_HUB_SECRET_KEY may INSERT)."""
    [row] = sql(url, "SELECT hash, received_at FROM routing_log WHERE chain_id = $1 AND seq = $2", chain_id, seq)
    number = sql(url, "SELECT coalesce(amendments, 0) + 1 FROM routing_log_chain WHERE chain_id = $1", chain_id)[0][0]
    values = (row["received_at"], 502, None, "forged: the CPO never answered", datetime.now(UTC))
    sql(url, "INSERT INTO routing_log_amendment (chain_id, seq, row_received_at, http_status, ocpi_status_code, "
             "message, answered_at, mac, number, number_mac) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        chain_id, seq, *values, amendment_mac(LOG_KEY, row["hash"], chain_id, seq, values), number,
        amendment_number_mac(LOG_KEY, chain_id, number, seq))  # fmt: skip
    sql(url, "UPDATE routing_log_chain SET amendments = $1 WHERE chain_id = $2", number, chain_id)


def test_an_amendment_of_a_row_before_the_checkpoint_written_after_it_is_named(
    services: Services, empty_database: str, tmp_path: Path
) -> None:
    settings = _settings(services, empty_database, tmp_path)
    chain = numbered_log(empty_database, 6).chain_id
    checkpoint = _checkpoint(empty_database, settings)
    _amend_as_an_insider(empty_database, chain, 2)
    assert _verified(empty_database, settings, None).ok  # the key holder's amendment: every MAC matches
    result = _verified(empty_database, settings, checkpoint)
    taken = json.loads(checkpoint)
    assert result.notes == [
        f"chain {chain}: seq 2, before its last in checkpoint {taken['checkpoint_id']} taken at "
        f"{_iso(taken['taken_at'])}, was amended since (amendment 1, after the 0 it counted; its "
        "caller was answered HTTP 502, OCPI None): from a commit that stalled around the "
        "checkpoint, or written later by someone holding the secret key"
    ]


def test_a_hub_logging_warnings_only_still_writes_its_checkpoints_to_its_log(
    services: Services, tmp_path: Path
) -> None:
    """OCPI_HUB_LOG_LEVEL=warning keeps routine lines out, not the checkpoints log shipping is there to keep."""
    with scratch_database(services, "checkpoints_warning") as url:
        env = hub_env(services, tmp_path, OCPI_HUB_DATABASE_URL=url, OCPI_HUB_CHECKPOINT_LOG_S="1",
                      OCPI_HUB_LOG_LEVEL="warning")  # fmt: skip
        hub = start_hub(env, OUTPUT / "hub-checkpoints-warning.log")
        try:
            deadline = time.monotonic() + 30
            with hub.admin() as admin:
                # two taken: the first one's line was written before the second was taken (one loop, in turn)
                while len([e for e in admin.get("/admin/api/audit-trail").json()["items"]
                           if e["action"] == "checkpoint"]) < 2:  # fmt: skip
                    assert time.monotonic() < deadline, hub.log()[-3000:]
                    time.sleep(0.2)
            lines = [line for line in hub.log().splitlines() if '"routing_log_checkpoint"' in line]
            assert lines and json.loads(lines[0])["checkpoint"]["taken_by"]["kind"] == "hub", hub.log()[-3000:]
        finally:
            hub.stop()
