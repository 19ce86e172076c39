"""The receiver's part of a row's duration (migration 0021): a slow party's delay is its own and not the hub's, in the
database, the auditor API, the exports, the console and stats; rows that sent nothing to a party have none; a changed
time fails verify, while rows of before the migration and of the previous version verify as they did."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

from storage.log_chain import LogChain
from storage.log_ids import ReservedIds
from storage.log_row import COLUMNS
from storage.log_spool import save
from storage.migrate import migrate
from storage.routing_log import RoutingLogWriter
from storage.sql import QUERIES
from tests.conftest import LOG_KEY, SECRET_KEY, Hub
from tests.log_rows import migrate_up_to, numbered_entry, previous_version, run_on, sql, verified
from tests.test_auditor_api import _export
from tests.test_credentials_rotation import console_page
from tests.test_hub_client_info import _wait_for
from tests.test_routing import LOCATION, _roles, party_key

DELAY_MS = 600  # the slow party's, well within the test hub's forward timeout (2 s)
_HASH = COLUMNS.index("hash")  # in a record as a chain links it
# 0016's append (its storage/queries.sql), as an instance of the previous version calls it through a rolling upgrade
APPEND_0016 = ("SELECT appended, next_ids FROM append_routing_log_numbered($1::routing_log_row[], $2, $3, $4,"
               " $5::relayed_location_entry[], $6::routing_log_amendment_numbered[], $7)")  # fmt: skip


def _push(cpo, base: str, to: tuple[str, str], request_id: str):  # type: ignore[no-untyped-def]
    cc, pid = party_key(cpo)
    return cpo.call(base, "PUT", f"receiver/locations/{cc}/{pid}/LOC1", to=to, body=LOCATION | {"party_id": pid},
                    headers={"X-Request-ID": request_id})  # fmt: skip


def _times(db, request_id: str) -> list[dict]:  # type: ignore[no-untyped-def]
    query = ("SELECT routing, from_party_id, to_party_id, duration_ms, receiver_ms, connection_wait_ms FROM routing_log"
             " WHERE request_id = $1 ORDER BY id")  # fmt: skip
    return [dict(r) for r in db.run(db.fetch(query, request_id))]


def test_a_slow_receivers_delay_is_its_part_of_the_duration_not_the_hubs(hub: Hub, connect_party, db) -> None:
    cpo = connect_party(_roles("CPO"))
    slow = connect_party(_roles("EMSP"), delay_s=DELAY_MS / 1000)
    request_id = f"slow-{uuid.uuid4().hex}"
    assert _push(cpo, hub.base, party_key(slow), request_id).json()["status_code"] == 1000
    [row] = _times(db, request_id)
    assert row["receiver_ms"] >= DELAY_MS and row["connection_wait_ms"] == 0.0  # a connection was free at once
    hubs_part = row["duration_ms"] - row["receiver_ms"] - row["connection_wait_ms"]
    assert 0 <= hubs_part < DELAY_MS, row  # the party's delay is not in it

    # refused (an unknown receiver): nothing went to a party
    refused = f"refused-{uuid.uuid4().hex}"
    assert _push(cpo, hub.base, ("ZZ", "ZZZ"), refused).json()["status_code"] == 4001
    [row] = _times(db, refused)
    assert (row["routing"], row["receiver_ms"], row["connection_wait_ms"]) == ("rejected", None, None)

    # a broadcast: the hub answers its caller itself; each copy went to a party, and the slow one's took its time
    broadcast = f"broadcast-{uuid.uuid4().hex}"
    assert _push(cpo, hub.base, ("NL", "HUB"), broadcast).json()["status_code"] == 1000
    slow_pid = party_key(slow)[1]
    rows = _wait_for(lambda: (found := _times(db, broadcast)) and slow_pid in {r["to_party_id"] for r in found}
                     and found)  # fmt: skip
    [own] = [r for r in rows if r["from_party_id"] == party_key(cpo)[1]]
    assert (own["routing"], own["receiver_ms"], own["connection_wait_ms"]) == ("broadcast", None, None)
    [copy] = [r for r in rows if r["to_party_id"] == slow_pid]
    assert copy["receiver_ms"] >= DELAY_MS and copy["connection_wait_ms"] == 0.0


def test_the_api_the_exports_the_console_and_stats_show_the_receivers_part_and_verify_stays_ok(
    hub: Hub, connect_party
) -> None:
    since = datetime.now(UTC) - timedelta(seconds=1)
    cpo = connect_party(_roles("CPO"))
    slow = connect_party(_roles("EMSP"), delay_s=DELAY_MS / 1000)
    request_id = f"shown-{uuid.uuid4().hex}"
    assert _push(cpo, hub.base, party_key(slow), request_id).json()["status_code"] == 1000
    with hub.admin() as admin:
        [item] = admin.get("/admin/api/routing-log", params={"request_id": request_id}).json()["items"]
        message = admin.get(f"/admin/api/routing-log/{item['id']}").json()
        [exported] = [json.loads(line) for line in _export(admin, {"request_id": request_id}).text.splitlines()[:-1]]
        [as_csv] = list(csv.DictReader(io.StringIO(_export(admin, {"request_id": request_id, "format": "csv"}).text)))
        party = "-".join(party_key(slow))
        stats = admin.get("/admin/api/stats", params={"party": party, "module": "locations"}).json()
        verdict = admin.get("/admin/api/routing-log/verify", params={"since": since.isoformat()}).json()
    receiver_ms = item["receiver_ms"]
    assert receiver_ms >= DELAY_MS and item["connection_wait_ms"] == 0.0
    assert (message["receiver_ms"], message["connection_wait_ms"]) == (receiver_ms, 0.0)
    assert message["integrity"]["hash_ok"] is True
    assert (exported["receiver_ms"], exported["connection_wait_ms"]) == (receiver_ms, 0.0)
    assert (float(as_csv["receiver_ms"]), float(as_csv["connection_wait_ms"])) == (receiver_ms, 0.0)
    [received] = [i for i in stats["items"] if (i["party"], i["direction"]) == (party, "received")]
    assert received["receiver_p50_ms"] == received["receiver_p99_ms"] == receiver_ms  # its one row
    assert received["p50_ms"] == item["duration_ms"]
    page = console_page(hub, f"/console/log/{item['id']}")
    assert f'<dd id="receiver-time"><span class="mono">{receiver_ms:.1f} ms</span>' in page, page
    assert (verdict["ok"], verdict["problems"]) == (True, [])


def test_the_hubs_own_calls_to_a_party_have_the_receivers_part_too(hub: Hub, connect_party, db) -> None:
    # Calls over the control plane (registration, pull sync, still-alive probes), and ClientInfo pushes, which go out
    # in the hub's own share of the connections to a party.
    emsp = connect_party(_roles("EMSP"))
    cpo = connect_party(_roles("CPO"))  # registered: its locations pulled, the eMSP told of it
    query = ("SELECT module, method, error, receiver_ms, connection_wait_ms FROM routing_log WHERE routing = 'hub'"
             " AND to_party_id = $1 AND receiver_platform_id IS NOT NULL ORDER BY id")  # fmt: skip

    def own_calls(party, module: str, method: str = "GET"):  # type: ignore[no-untyped-def]
        rows = db.run(db.fetch(query, party_key(party)[1]))
        return [r for r in rows if (r["module"], r["method"]) == (module, method)]

    versions = own_calls(cpo, "versions")  # the hub's calls while it registered
    assert versions and all(r["receiver_ms"] is not None and r["connection_wait_ms"] is None for r in versions)
    [page, *_] = _wait_for(lambda: own_calls(cpo, "locations"))  # its pull sync
    assert page["receiver_ms"] is not None and page["connection_wait_ms"] is None
    [push, *_] = _wait_for(lambda: own_calls(emsp, "hubclientinfo", "PUT"))
    assert push["receiver_ms"] is not None and push["connection_wait_ms"] == 0.0

    cpo.stop()  # a forward that cannot connect (4003) has the hub probe the party at once
    answer = emsp.call(hub.base, "GET", f"sender/locations/{uuid.uuid4().hex[:8]}", to=party_key(cpo))
    assert answer.json()["status_code"] == 4003
    [forwarded] = _times(db, answer.headers["x-request-id"])
    assert forwarded["receiver_ms"] is not None  # the attempt to connect
    probe = _wait_for(lambda: [r for r in own_calls(cpo, "versions") if r["error"]])[0]
    assert probe["receiver_ms"] is not None and probe["connection_wait_ms"] is None


def test_rows_of_before_the_migration_and_of_the_previous_version_verify_and_a_changed_time_does_not(
    empty_database: str,
) -> None:
    previous, this = LogChain(LOG_KEY, 1024, ReservedIds()), LogChain(LOG_KEY, 1024, ReservedIds())
    old, new = [numbered_entry(n) for n in (1, 2, 3)], [numbered_entry(n) for n in (4, 5, 6)]
    new[0].receiver_ms, new[0].connection_wait_ms = 812.5, 0.0
    new[1].connection_wait_ms = 1000.0  # waited in vain: not forwarded
    # new[2]: sent to no party (refused)

    async def write(conn) -> None:  # type: ignore[no-untyped-def]
        await migrate_up_to(conn, 20)
        records = [previous_version(previous.link(entry)) for entry in old[:2]]
        await conn.fetchrow(APPEND_0016, records, previous.chain_id, 2, records[-1][_HASH], [], [], 0)
        await migrate(conn, SECRET_KEY)  # 0021, while an instance of the previous version goes on writing
        record = previous_version(previous.link(old[2]))
        await conn.fetchrow(APPEND_0016, [record], previous.chain_id, 3, record[_HASH], [], [], 0)
        records = [this.link(entry) for entry in new]
        await conn.fetchrow(QUERIES["append_routing_log"], records, this.chain_id, 3, records[-1][_HASH], [], [], 0)

    run_on(empty_database, write)
    stored = sql(empty_database, "SELECT request_id, receiver_ms, connection_wait_ms FROM routing_log ORDER BY id")
    assert [tuple(r) for r in stored] == [("r1", None, None), ("r2", None, None), ("r3", None, None),
                                          ("r4", 812.5, 0.0), ("r5", None, 1000.0), ("r6", None, None)]  # fmt: skip
    result = verified(empty_database)
    assert (result.ok, result.rows) == (True, 6), result.problems
    ids = {r["request_id"]: r["id"] for r in sql(empty_database, "SELECT id, request_id FROM routing_log")}
    for tamper, restore, changed in [
        ("receiver_ms = 312.5", "receiver_ms = 812.5", "r4"),  # the party made faster
        ("receiver_ms = NULL, connection_wait_ms = NULL", "receiver_ms = 812.5, connection_wait_ms = 0", "r4"),
        ("connection_wait_ms = 0", "connection_wait_ms = 1000", "r5"),
        ("receiver_ms = 5", "receiver_ms = NULL", "r2"),  # a row of the previous version given a time
        ("receiver_ms = 5", "receiver_ms = NULL", "r6"),
    ]:
        result = verified(empty_database, f"UPDATE routing_log SET {tamper} WHERE request_id = '{changed}'")
        assert (result.ok, result.first_bad_id) == (False, ids[changed]), (tamper, result.problems)
        sql(empty_database, f"UPDATE routing_log SET {restore} WHERE request_id = '{changed}'")
        assert verified(empty_database).ok


def test_a_spool_the_previous_version_left_is_written_its_rows_without_times(
    empty_database: str, tmp_path: Path
) -> None:
    chain = LogChain(LOG_KEY, 1024, ReservedIds())
    save(tmp_path, chain.text, [{"records": [previous_version(chain.link(numbered_entry(n))) for n in (1, 2)],
                                 "locations": []}])  # fmt: skip

    async def start() -> None:
        conn = await asyncpg.connect(empty_database)
        await migrate(conn, SECRET_KEY)
        await conn.close()
        pool = await asyncpg.create_pool(empty_database, min_size=1, max_size=2)
        async with RoutingLogWriter(pool, key=LOG_KEY, body_cap=1024, spool_dir=tmp_path).running():
            pass
        await pool.close()

    asyncio.run(asyncio.wait_for(start(), 60))
    assert list(tmp_path.iterdir()) == []
    stored = sql(empty_database, "SELECT request_id, receiver_ms, connection_wait_ms FROM routing_log ORDER BY seq")
    assert [tuple(r) for r in stored] == [("r1", None, None), ("r2", None, None)]
    result = verified(empty_database)
    assert (result.ok, result.rows) == (True, 2), result.problems
