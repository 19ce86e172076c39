"""The routing log's partitions: created ahead by the hub, a default partition that loses no row, the migration
of an unpartitioned log, and `ocpi-hub retention` dropping whole old months while the chain stays verifiable."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import msgspec
import structlog.testing

from storage.log_row import COLUMNS, LogEntry, legacy_hash
from storage.log_spool import SPOOL_SUFFIX
from storage.partitions import RoutingLogBusy, drop_before
from storage.routing_log import RoutingLogWriter
from storage.secrets import TokenBox
from tests.conftest import LOG_KEY, ROOT, SECRET_KEY, Services, hub_env
from tests.log_rows import migrate_up_to, sql, unkeyed_chain, varied_entries, verified, write


def _month(months_back: int, day: int = 10) -> datetime:
    now = datetime.now(UTC)
    index = now.year * 12 + now.month - 1 - months_back
    return datetime(index // 12, index % 12 + 1, day, 12, 0, tzinfo=UTC)


def _partition(at: datetime) -> str:
    return f"routing_log_{at:%Y}m{at:%m}"


def _retention(services: Services, database_url: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = hub_env(services, tmp_path, OCPI_HUB_DATABASE_URL=database_url)
    return subprocess.run([sys.executable, "-m", "hub.cli", "retention", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def test_the_hub_creates_this_months_and_the_next_months_partitions_at_start(hub, db) -> None:  # type: ignore[no-untyped-def]
    names = {r["relname"] for r in db.run(db.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'routing_log'::regclass"))}  # fmt: skip
    ahead = {_partition(_month(-n, 1)) for n in range(4)}  # OCPI_HUB_LOG_PARTITIONS_AHEAD defaults to 3
    assert ahead <= names and "routing_log_default" in names
    indexes = db.run(db.fetchval("SELECT count(*) FROM pg_indexes WHERE tablename = $1", _partition(_month(-3, 1))))
    assert indexes == 14  # the partition created ahead has every index of the parent


def test_rows_no_partition_covers_wait_in_the_default_partition_and_move_into_their_month(
    empty_database: str,
) -> None:
    tag = uuid.uuid4().hex[:8]
    write(empty_database, varied_entries(datetime(2001, 6, 3, tzinfo=UTC), 25, [("QD", "AAA")], tag))
    where = "SELECT tableoid::regclass::text AS part, count(*) FROM routing_log GROUP BY 1"
    assert [tuple(r) for r in sql(empty_database, where)] == [("routing_log_default", 25)]
    [created] = sql(empty_database, "SELECT routing_log_add_partition('2001-06-20T00:00:00Z')")
    assert created[0] == "routing_log_2001m06"
    assert [tuple(r) for r in sql(empty_database, where)] == [("routing_log_2001m06", 25)]
    result = verified(empty_database)
    assert (result.ok, result.rows) == (True, 25)


def _old_rows(count: int) -> list[tuple]:
    """Rows as a release before keyed hashes chained them, alternating between January and February 2025."""
    return unkeyed_chain([(datetime(2025, 1, 20, tzinfo=UTC), datetime(2025, 2, 20, tzinfo=UTC))[n % 2]
                          for n in range(count)])  # fmt: skip


_INSERT_ROW = (
    f"INSERT INTO routing_log ({', '.join(COLUMNS)}) VALUES ({', '.join(f'${n + 1}' for n in range(len(COLUMNS)))})"
)


def _written_by_an_earlier_release(database_url: str, schema_version: int, rows: list[tuple]) -> None:
    """The database as a release with the migrations up to schema_version left it, holding one chain of rows."""

    async def run() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            await migrate_up_to(conn, schema_version)
            await conn.executemany(_INSERT_ROW, rows)
            await conn.execute(
                "INSERT INTO routing_log_chain (chain_id, last_seq, last_hash) VALUES ($1, $2, $3)",
                rows[-1][1], len(rows), rows[-1][-1],
            )  # fmt: skip
        finally:
            await conn.close()

    asyncio.run(run())


def test_migrating_an_unpartitioned_log_keeps_every_row_its_id_and_its_chain(empty_database: str) -> None:
    _written_by_an_earlier_release(empty_database, 3, _old_rows(30))
    ids_before = [tuple(r) for r in sql(empty_database, "SELECT id, request_id, hash FROM routing_log ORDER BY id")]
    write(empty_database, [LogEntry(received_at=datetime.now(UTC), request_id="new-0", correlation_id="new",
                                    module="tokens", method="GET", path="/ocpi/2.2.1/receiver/tokens/NL/ABC/T1",
                                    interface="receiver", routing="direct")])  # fmt: skip
    after = sql(empty_database, "SELECT id, request_id, hash, object_id, tableoid::regclass::text AS part"
                                " FROM routing_log ORDER BY id")  # fmt: skip
    assert [tuple(r)[:3] for r in after[:30]] == ids_before
    assert after[0]["object_id"] == "S0" and after[30]["object_id"] == "T1"
    assert after[30]["id"] > ids_before[-1][0]
    assert {r["part"] for r in after[:30]} == {"routing_log_2025m01", "routing_log_2025m02"}
    result = verified(empty_database)
    assert (result.ok, result.rows) == (True, 31), result.problems


def test_a_chain_of_unkeyed_hashes_is_sealed_at_the_upgrade_so_its_rows_cannot_be_rewritten_either(
    empty_database: str,
) -> None:
    # Rows from before keyed hashes verify as they were written, up to their chain's last row when the hub was
    # upgraded; a row added after it, or an edit with the plain SHA-256 chain recomputed after it, no longer passes.
    rows = _old_rows(9)
    _written_by_an_earlier_release(empty_database, 11, rows[:8])
    with structlog.testing.capture_logs() as logged:
        write(empty_database, [])  # the upgrade: 0012 seals the chain
    sealing = [(line["chains"], line["floors"]) for line in logged if line["event"] == "routing_log_chains_sealed"]
    assert sealing == [(1, 0)], sealing
    assert verified(empty_database).ok
    [sealed] = sql(empty_database, "SELECT chain_id, last_seq, last_hash FROM routing_log_sealed_chain")
    assert tuple(sealed) == (rows[0][1], 8, rows[7][-1])

    sql(empty_database, _INSERT_ROW, *rows[8])  # as the earlier release would have chained it
    sql(empty_database, "UPDATE routing_log_chain SET last_seq = 9, last_hash = $1", rows[8][-1])
    added = verified(empty_database)
    assert added.ok is False and "a row after seq 8, where its chain of unkeyed hashes was sealed" in added.problems[0]
    sql(empty_database, "DELETE FROM routing_log WHERE seq = 9")
    sql(empty_database, "UPDATE routing_log_chain SET last_seq = 8, last_hash = $1", rows[7][-1])
    assert verified(empty_database).ok

    stored = sql(empty_database, f"SELECT id, {', '.join(COLUMNS)} FROM routing_log ORDER BY seq")
    prev = stored[3]["prev_hash"]
    for row in stored[3:]:  # seq 4 says 500, and every hash from there on is recomputed, the head's too
        values = dict(row) | ({"http_status": 500} if row["seq"] == 4 else {})
        digest = legacy_hash(prev, values)
        sql(empty_database, "UPDATE routing_log SET http_status = $2, prev_hash = $3, hash = $4 WHERE id = $1",
            row["id"], values["http_status"], prev, digest)  # fmt: skip
        prev = digest
    sql(empty_database, "UPDATE routing_log_chain SET last_hash = $1", prev)
    rewritten = verified(empty_database)
    assert rewritten.ok is False and "rows were rewritten" in rewritten.problems[0], rewritten.problems


def test_a_fresh_database_logs_no_sealing_of_chains_it_has_not(empty_database: str) -> None:
    # A fresh start logged routing_log_chains_sealed with chains 0, as if an upgrade had sealed something.
    with structlog.testing.capture_logs() as logged:
        write(empty_database, [])  # every migration, 0012 among them
    assert [line for line in logged if line["event"] == "routing_log_chains_sealed"] == []


def test_rows_a_hub_before_keyed_hashes_spooled_are_written_after_the_upgrade_and_their_chain_sealed_on(
    empty_database: str, tmp_path: Path
) -> None:
    # The database was away when that hub stopped: rows 4 and 5 of its chain waited in its spool, hashed as it chained
    # them, while the upgrade sealed the chain at row 3.
    rows = _old_rows(5)
    _written_by_an_earlier_release(empty_database, 11, rows[:3])
    write(empty_database, [])  # the upgrade
    chain_id = rows[0][1]
    spooled = {"chain_id": str(chain_id), "parts": [{"records": [(*row, None) for row in rows[3:]], "locations": []}]}
    (tmp_path / f"{chain_id}{SPOOL_SUFFIX}").write_bytes(msgspec.msgpack.encode(spooled))

    async def start_with_the_spool() -> None:
        pool = await asyncpg.create_pool(empty_database, min_size=1, max_size=2)
        try:
            async with RoutingLogWriter(pool, key=LOG_KEY, body_cap=1024, spool_dir=tmp_path).running():
                pass
        finally:
            await pool.close()

    asyncio.run(start_with_the_spool())
    assert not list(tmp_path.iterdir())  # written
    assert [r["seq"] for r in sql(empty_database, "SELECT seq FROM routing_log ORDER BY seq")] == [1, 2, 3, 4, 5]
    assert tuple(sql(empty_database, "SELECT last_seq, last_hash FROM routing_log_sealed_chain")[0]) == (5, rows[4][-1])
    result = verified(empty_database)
    assert result.ok, result.problems


def test_the_upgrade_to_keyed_hashes_refuses_a_secret_key_that_does_not_open_the_stored_tokens(
    services: Services, empty_database: str, tmp_path: Path
) -> None:
    # Sealed under another key than the hub's, the chains of before could never verify again.
    _written_by_an_earlier_release(empty_database, 11, _old_rows(3))
    sql(empty_database, "INSERT INTO platform (name, token_b) VALUES ('a CPO', $1)", TokenBox(SECRET_KEY).seal("b"))

    def migrate_with(secret_key: str) -> subprocess.CompletedProcess[str]:
        env = hub_env(services, tmp_path, OCPI_HUB_DATABASE_URL=empty_database, OCPI_HUB_SECRET_KEY=secret_key)
        return subprocess.run([sys.executable, "-m", "hub.cli", "migrate"], env=env, cwd=ROOT, capture_output=True,
                              text=True, timeout=120)  # fmt: skip

    refused = migrate_with(TokenBox.generate_key())
    assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr
    assert "OCPI_HUB_SECRET_KEY does not open the party tokens stored in this database" in refused.stderr
    assert sql(empty_database, "SELECT to_regclass('routing_log_sealed_chain') IS NULL AS absent")[0]["absent"]
    assert migrate_with(SECRET_KEY).returncode == 0
    assert verified(empty_database).ok and len(sql(empty_database, "SELECT * FROM routing_log_sealed_chain")) == 1


def test_retention_drops_whole_old_months_and_the_chain_verifies_from_the_first_remaining_row(
    services: Services, empty_database: str, tmp_path: Path
) -> None:
    write(empty_database, [])  # the schema
    old, older, recent = _month(20), _month(16), _month(2)
    for month in (old, older, recent):
        sql(empty_database, "SELECT routing_log_add_partition($1)", month)
    # One chain whose rows jump between months (as a slow request received before a month's end does), and a row
    # no partition covers: it waits in the default partition, which retention never touches.
    times = [old, older, old, recent, older, datetime.now(UTC), datetime(2001, 1, 5, tzinfo=UTC), older, recent]
    entries = varied_entries(old, len(times), [("QR", "AAA")], uuid.uuid4().hex[:8])
    for n, (entry, at) in enumerate(zip(entries, times, strict=True)):
        entry.received_at = at + timedelta(seconds=n)
    write(empty_database, entries)
    assert verified(empty_database).ok

    dry = _retention(services, empty_database, tmp_path, "--keep", "400d", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["dropped"] == [_partition(old), _partition(older)]
    assert sql(empty_database, "SELECT count(*) FROM routing_log")[0][0] == len(times)

    done = _retention(services, empty_database, tmp_path, "--keep", "400d")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["dropped"] == [_partition(old), _partition(older)]
    kept = [r["request_id"] for r in sql(empty_database, "SELECT request_id FROM routing_log ORDER BY seq")]
    assert kept == [entries[n].request_id for n in (3, 5, 6, 8)]
    result = verified(empty_database)
    assert (result.ok, result.rows) == (True, 4), result.problems
    assert _retention(services, empty_database, tmp_path, "--keep", "400d").stdout.count("routing_log_") == 0
    # what each run dropped is in the audit trail, with who ran it (it was not: found by an auditor's walkthrough)
    trail = sql(empty_database, "SELECT actor_name, parameters FROM audit_trail WHERE action = 'retention' ORDER BY id")
    assert [json.loads(t["parameters"])["dropped"] for t in trail] == [[_partition(old), _partition(older)]] * 2 + [[]]
    assert [json.loads(t["parameters"])["dry_run"] for t in trail] == [True, False, False]
    assert trail[0]["actor_name"].startswith("ocpi-hub retention (")

    sql(empty_database, "DELETE FROM routing_log WHERE request_id = $1", entries[5].request_id)
    assert verified(empty_database).ok is False


def test_retention_deletes_delivered_clientinfo_changes_and_relayed_cdr_urls_from_before_the_cut(
    services: Services, empty_database: str, tmp_path: Path
) -> None:
    write(empty_database, [])  # the schema
    [platform] = sql(empty_database, "INSERT INTO platform (name, state) VALUES ('p', 'REGISTERED') RETURNING id")
    now = datetime.now(UTC)
    changes = {"delivered long ago": (now - timedelta(days=500), now - timedelta(days=500)),
               "delivered lately": (now - timedelta(days=500), now - timedelta(days=10)),
               "never delivered": (now - timedelta(days=500), None)}  # fmt: skip
    for party_id, (created, delivered) in changes.items():
        sql(empty_database, "INSERT INTO client_info_push (platform_id, role, country_code, party_id, status, "
            "last_updated, created_at, delivered_at) VALUES ($1, 'CPO', 'NL', $2, 'CONNECTED', $3, $3, $4)",
            platform["id"], party_id, created, delivered)  # fmt: skip
    for key, days in (("old-cdr", 500), ("recent-cdr", 10)):  # a CDR POST's Location, as the hub relayed it
        sql(empty_database, "INSERT INTO relayed_location VALUES ($1, $2, $2, 'NL', 'CPO', 'NL', 'MSP', 'cdrs', "
            "'http://cpo.example/cdrs/1', $3)", key, platform["id"], now - timedelta(days=days))  # fmt: skip

    def left() -> tuple[list[str], list[str]]:
        return ([r[0] for r in sql(empty_database, "SELECT party_id FROM client_info_push ORDER BY id")],
                [r[0] for r in sql(empty_database, "SELECT key FROM relayed_location ORDER BY key")])  # fmt: skip

    before = left()
    dry = _retention(services, empty_database, tmp_path, "--keep", "400d", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["deleted"] == {"client_info_changes": 1, "relayed_cdr_locations": 1}
    assert left() == before
    done = _retention(services, empty_database, tmp_path, "--keep", "400d")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["deleted"] == {"client_info_changes": 1, "relayed_cdr_locations": 1}
    assert left() == (["delivered lately", "never delivered"], ["recent-cdr"])


def test_retention_wants_a_number_of_days(services: Services, empty_database: str, tmp_path: Path) -> None:
    write(empty_database, [])  # the schema: a command other than serve and migrate applies no migration
    given = [[f"--keep={keep}"] for keep in ("400", "1y", "0d", "-5d", "99999999999999d")]  # the last overflowed once
    for keep in [*given, ["--keep", "-5d"]]:  # argparse took "-5d" for an option: "expected one argument"
        answer = _retention(services, empty_database, tmp_path, *keep)
        assert answer.returncode == 2 and "--keep must be a number of days" in answer.stderr, (keep, answer.stderr)


def test_retention_gives_way_to_the_hubs_writes_while_a_long_query_holds_the_log(empty_database: str) -> None:
    # A DROP waits for its lock behind every query on routing_log, and every write asked for after it waits too: an
    # auditor's long export would stall the hub's commits for as long as it runs.
    write(empty_database, [])  # the schema
    sql(empty_database, "SELECT routing_log_add_partition($1)", _month(20))
    old_rows = varied_entries(_month(20), 3, [("QR", "AAA")], uuid.uuid4().hex[:8])

    async def run() -> tuple[float, Exception | None, list[str]]:
        export, other = await asyncpg.connect(empty_database), await asyncpg.connect(empty_database)
        pool = await asyncpg.create_pool(empty_database, min_size=1, max_size=2)
        writer = RoutingLogWriter(pool, key=LOG_KEY, body_cap=1024)
        try:
            async with writer.running():
                await asyncio.gather(*(writer.record(entry) for entry in old_rows))
                async with export.transaction():
                    await export.fetch("SELECT count(*) FROM routing_log")  # holds the table until it ends
                    cut = datetime.now(UTC) - timedelta(days=400)
                    dropping = asyncio.create_task(drop_before(other, cut, key=LOG_KEY, lock_timeout_s=0.3, attempts=2))
                    await asyncio.sleep(0.1)  # the DROP is waiting for its lock
                    started = time.monotonic()
                    await writer.record(varied_entries(datetime.now(UTC), 1, [("QR", "AAA")], "now")[0])
                    waited = time.monotonic() - started
                    busy = await asyncio.gather(dropping, return_exceptions=True)
                    await asyncio.sleep(3)  # the export goes on a while after retention gave up
                # the export is over
                dropped = await drop_before(other, cut, key=LOG_KEY, lock_timeout_s=0.3, attempts=2)
            return waited, busy[0], [p.name for p in dropped.dropped]
        finally:
            await pool.close()
            await export.close()
            await other.close()

    waited, busy, dropped = asyncio.run(asyncio.wait_for(run(), 60))
    assert waited < 1.5  # at most a lock timeout, not the whole export
    assert isinstance(busy, RoutingLogBusy) and "run retention again later" in str(busy)
    assert dropped == [_partition(_month(20))]
    assert verified(empty_database).ok


def _hold(services: Services, database_url: str, tmp_path: Path, *args: str) -> dict:  # type: ignore[type-arg]
    env = hub_env(services, tmp_path, OCPI_HUB_DATABASE_URL=database_url)
    done = subprocess.run([sys.executable, "-m", "hub.cli", "hold", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def test_hold_release_says_an_id_that_is_not_a_number_is_not_a_holds_id(
    services: Services, empty_database: str, tmp_path: Path
) -> None:
    write(empty_database, [])  # the schema
    env = hub_env(services, tmp_path, OCPI_HUB_DATABASE_URL=empty_database)
    for given, said in ((["abc"], "'abc' is not a hold's ID, a number"), ([], "hold release needs the hold's ID")):
        done = subprocess.run([sys.executable, "-m", "hub.cli", "hold", "release", *given], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert done.returncode == 2 and said in done.stderr, done.stderr


def test_hold_set_asks_for_reason_only_when_it_is_missing(
    services: Services, empty_database: str, tmp_path: Path
) -> None:
    # A walkthrough: every invalid hold ended "(set needs --reason)", a --reason given included.
    write(empty_database, [])  # the schema
    env = hub_env(services, tmp_path, OCPI_HUB_DATABASE_URL=empty_database)
    for given, asked in ((["--reason", "d 7", "--correlation-id", ""], False), (["--object-id", "S1"], True)):
        done = subprocess.run([sys.executable, "-m", "hub.cli", "hold", "set", *given], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert done.returncode == 2 and "invalid hold: " in done.stderr, done.stderr
        assert ("(set needs --reason)" in done.stderr) is asked, done.stderr


def test_retention_keeps_a_partition_holding_a_row_under_a_legal_hold_until_the_hold_is_released(
    services: Services, empty_database: str, tmp_path: Path
) -> None:
    # An auditor's walkthrough: retention deleted the rows of a disputed session; nothing could stop it.
    write(empty_database, [])  # the schema
    old, older, recent = _month(20), _month(16), _month(2)
    for month in (old, older, recent):
        sql(empty_database, "SELECT routing_log_add_partition($1)", month)
    times = [old, older, old, recent, older, old, recent]
    entries = varied_entries(old, len(times), [("QR", "AAA"), ("QR", "BBB")], uuid.uuid4().hex[:8])
    for n, (entry, at) in enumerate(zip(entries, times, strict=True)):
        entry.received_at = at + timedelta(seconds=n)
        entry.correlation_id = f"disputed-{uuid.uuid4()}" if n == 2 else entry.correlation_id
    write(empty_database, entries)

    hold = _hold(services, empty_database, tmp_path, "set", "--correlation-id", entries[2].correlation_id,
                 "--reason", "dispute 2026-117: a session billed twice")  # fmt: skip
    assert (hold["correlation_id"], hold["released_at"]) == (entries[2].correlation_id, None)
    assert hold["set_by"].startswith("ocpi-hub hold (")
    around = [(older + timedelta(days=d)).isoformat() for d in (-1, 1)]  # rows 1 (from BBB) and 4 (to BBB)
    party = _hold(services, empty_database, tmp_path, "set", "--party", "qr-bbb", "--since", around[0], "--until",
                  around[1], "--reason", "a roaming partner's claim for that week")  # fmt: skip
    assert party["party"] == "QR-BBB"

    dry = _retention(services, empty_database, tmp_path, "--keep", "400d", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    planned = json.loads(dry.stdout)
    assert (planned["dropped"], planned["held"]) == ([], {_partition(old): [hold["id"]],
                                                          _partition(older): [party["id"]]})  # fmt: skip
    assert planned["rows"] == {_partition(old): 3, _partition(older): 2}
    _hold(services, empty_database, tmp_path, "release", str(party["id"]))

    done = _retention(services, empty_database, tmp_path, "--keep", "400d")
    assert done.returncode == 0, done.stderr
    assert (json.loads(done.stdout)["dropped"], json.loads(done.stdout)["held"]) == (
        [_partition(older)], {_partition(old): [hold["id"]]})  # fmt: skip
    kept = [r["request_id"] for r in sql(empty_database, "SELECT request_id FROM routing_log ORDER BY seq")]
    assert kept == [entries[n].request_id for n in (0, 2, 3, 5, 6)]  # the held row's whole month
    result = verified(empty_database)
    assert (result.ok, result.rows) == (True, 5), result.problems

    released = _hold(services, empty_database, tmp_path, "release", str(hold["id"]))
    assert released["released_by"].startswith("ocpi-hub hold (") and released["released_at"] is not None
    assert [h["id"] for h in _hold(services, empty_database, tmp_path, "list")["items"]] == [party["id"], hold["id"]]
    again = _retention(services, empty_database, tmp_path, "--keep", "400d")
    assert (json.loads(again.stdout)["dropped"], json.loads(again.stdout)["held"]) == ([_partition(old)], {})
    result = verified(empty_database)
    assert (result.ok, result.rows) == (True, 2), result.problems
    trail = sql(empty_database, "SELECT action, parameters FROM audit_trail WHERE action LIKE '%hold' ORDER BY id")
    assert [(t["action"], json.loads(t["parameters"])["id"]) for t in trail] == [
        ("set_hold", hold["id"]), ("set_hold", party["id"]), ("release_hold", party["id"]),
        ("release_hold", hold["id"])]  # fmt: skip
