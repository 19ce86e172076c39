"""A row edited, its amendment edited or deleted, or its neighbours deleted in the database shows as such where the row
is shown (the admin API's message and conversation, the console's message page and its conversation), not only to a
later verify; a genuine row shows as genuine: the first and last of its chain, the first kept after retention, the
rows of a chain sealed at the upgrade to keyed hashes (found by an auditor's walkthrough). The console's verify page
links every row its report names."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import asyncpg
import pytest

from hub.admin.routing_log import load_conversation
from storage.log_row_check import row_integrity
from storage.partitions import drop_before
from tests.conftest import LOG_KEY, OUTPUT, Hub, Services, hub_env, scratch_database, start_hub
from tests.log_rows import numbered_entry, numbered_log, run_on, sql, unkeyed_chain, write
from tests.test_credentials_rotation import console_page
from tests.test_log_tampering import FEB, OLD_MONTH
from tests.test_retention import _written_by_an_earlier_release
from tests.test_routing_log_amendment_numbers import _amended_rows


@pytest.fixture(scope="module")
def own_database(services: Services) -> Iterator[str]:
    """A database of the module's own: the rows tampered with here must not fail other tests' verify."""
    with scratch_database(services, "shown") as url:
        yield url


@pytest.fixture(scope="module")
def own_hub(services: Services, own_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    numbered_log(own_database, 1)  # migrated before the hub starts
    env = hub_env(services, tmp_path_factory.mktemp("shown") / "hub", OCPI_HUB_DATABASE_URL=own_database,
                  OCPI_HUB_REDIS_PREFIX=f"{services.redis_prefix}shown:")  # fmt: skip
    running = start_hub(env, OUTPUT / "hub-tampering-shown.log")
    try:
        yield running
    finally:
        running.stop()


def _chain_ids(url: str, rows: int) -> list[int]:
    """The ids of a new chain of rows rows, by seq."""
    chain = numbered_log(url, rows).chain_id
    return [r["id"] for r in sql(url, "SELECT id FROM routing_log WHERE chain_id = $1 ORDER BY seq", chain)]


def _integrity(hub: Hub, row_id: int) -> dict:
    with hub.admin() as admin:
        answer = admin.get(f"/admin/api/routing-log/{row_id}")
    assert answer.status_code == 200, answer.text
    return answer.json()["integrity"]


def _checks(integrity: dict) -> tuple:
    return integrity["hash_ok"], integrity["linked_to_previous"], integrity["linked_to_next"]


def test_genuine_rows_show_as_genuine_the_first_and_last_of_their_chain_too(own_hub: Hub, own_database: str) -> None:
    first, middle, last = _chain_ids(own_database, 3)
    assert _checks(_integrity(own_hub, first)) == (True, None, True)
    assert _checks(_integrity(own_hub, middle)) == (True, True, True)
    assert _integrity(own_hub, last) == {"hash_ok": True, "linked_to_previous": True, "linked_to_next": None,
                                         "amendment_ok": None, "problems": []}  # fmt: skip
    page = console_page(own_hub, f"/console/log/{middle}")
    assert 'id="integrity"' not in page and "matches its hash" in page


def test_a_row_edited_in_the_database_shows_as_changed_on_its_message(own_hub: Hub, own_database: str) -> None:
    ids = _chain_ids(own_database, 5)
    sql(own_database, "UPDATE routing_log SET http_status = 502, ocpi_status_code = 3000 WHERE id = $1", ids[2])
    integrity = _integrity(own_hub, ids[2])
    assert _checks(integrity) == (False, True, True), integrity
    assert f"row {ids[2]}: content does not match its hash" in integrity["problems"][0]
    page = console_page(own_hub, f"/console/log/{ids[2]}")
    assert 'id="integrity"' in page and "This row does not match its hash: it was changed after it was written" in page
    assert "run verify" in page
    assert _checks(_integrity(own_hub, ids[1])) == (True, True, True)  # its neighbours are as written


def test_a_deleted_row_shows_on_the_messages_either_side_of_it(own_hub: Hub, own_database: str) -> None:
    ids = _chain_ids(own_database, 5)
    sql(own_database, "DELETE FROM routing_log WHERE id = $1", ids[2])
    assert _checks(_integrity(own_hub, ids[1])) == (True, True, False)
    after = _integrity(own_hub, ids[3])
    assert _checks(after) == (True, False, True) and "rows are missing" in after["problems"][0], after
    page = console_page(own_hub, f"/console/log/{ids[3]}")
    assert 'id="integrity"' in page and "not linked to its chain" in page


def test_a_chains_newest_row_deleted_shows_on_the_row_before_it(own_hub: Hub, own_database: str) -> None:
    ids = _chain_ids(own_database, 4)
    sql(own_database, "DELETE FROM routing_log WHERE id = $1", ids[-1])
    integrity = _integrity(own_hub, ids[-2])
    assert _checks(integrity) == (True, True, False) and "up to the chain's head at seq 4" in integrity["problems"][0]


def test_a_rows_prev_hash_edited_shows_as_changed_and_unlinked(own_hub: Hub, own_database: str) -> None:
    ids = _chain_ids(own_database, 3)
    sql(own_database, "UPDATE routing_log SET prev_hash = $2 WHERE id = $1", ids[1], bytes(32))
    assert _checks(_integrity(own_hub, ids[1])) == (False, False, True)


def test_an_amendment_changed_or_deleted_shows_on_its_rows_message(own_hub: Hub, own_database: str) -> None:
    # A full verify named them; the row's own page said all was well.
    ids = _amended_rows(own_database, 3)  # r1 .. r3 of one chain, amendments 1 .. 3
    assert _checks(_integrity(own_hub, ids["r1"])) == (True, None, True)
    assert _integrity(own_hub, ids["r1"])["amendment_ok"] is True
    of_row = "FROM routing_log AS r WHERE r.id = $1 AND r.chain_id = a.chain_id AND r.seq = a.seq"
    sql(own_database, f"UPDATE routing_log_amendment AS a SET ocpi_status_code = 1000 {of_row}", ids["r2"])
    sql(own_database, "DELETE FROM routing_log_amendment AS a USING routing_log AS r WHERE r.id = $1"
                      " AND r.chain_id = a.chain_id AND r.seq = a.seq", ids["r3"])  # fmt: skip
    changed = _integrity(own_hub, ids["r2"])
    assert (*_checks(changed), changed["amendment_ok"]) == (True, True, True, False), changed
    assert changed["problems"] == [
        f"row {ids['r2']}: its amendment (what its caller was answered instead) does not "
        "match its keyed hash: the amendment was changed, or moved here from another row"
    ]
    deleted = _integrity(own_hub, ids["r3"])
    assert deleted["amendment_ok"] is False and deleted["problems"] == [
        f"row {ids['r3']}: its amendment (what its caller was answered instead), number 3 of its chain, was deleted"
    ]
    page = console_page(own_hub, f"/console/log/{ids['r2']}")
    assert 'id="integrity"' in page and "What its caller was answered instead (its amendment) is not as the hub" in page
    assert "its amendment is not as the hub wrote it" in page
    assert "its amendment matches its keyed hash" in console_page(own_hub, f"/console/log/{ids['r1']}")


def test_a_conversation_shows_each_rows_integrity_as_its_message_does(own_hub: Hub, own_database: str) -> None:
    # The conversation view did not check its rows: an edited one looked like the others.
    correlation = f"conversation-{uuid.uuid4().hex[:8]}"
    entries = [numbered_entry(n) for n in range(6)]
    for entry in entries:
        entry.correlation_id = correlation
    entries[2].request_body = b'{"id": "L2", "name": "%s"}' % (b"x" * 3000)  # compressed: its digest is the stored one
    entries[2].response_body = b'{"status_code": 1000}'
    chain = write(own_database, entries, body_cap=1024).chain_id
    ids = [r["id"] for r in sql(own_database, "SELECT id FROM routing_log WHERE chain_id = $1 ORDER BY seq", chain)]
    sql(own_database, "UPDATE routing_log SET http_status = 502 WHERE id = $1", ids[1])
    sql(own_database, "DELETE FROM routing_log WHERE id = $1", ids[4])
    with own_hub.admin() as admin:
        items = admin.get(f"/admin/api/routing-log/correlation/{correlation}").json()["items"]
    assert [item["id"] for item in items] == [*ids[:4], ids[5]]
    assert [_checks(item["integrity"]) for item in items] == [
        (True, None, True),
        (False, True, True),
        (True, True, True),
        (True, True, False),
        (True, False, None),
    ]
    for item in items:  # checked together as each is alone
        assert item["integrity"] == _integrity(own_hub, item["id"]), item["id"]
    page = console_page(own_hub, f"/console/log/{ids[2]}")
    assert 'id="conversation-integrity"' in page and "3 of these messages are not as the hub wrote them" in page
    assert all(f'id="tampered-{row_id}"' in page for row_id in (ids[1], ids[3], ids[5]))
    assert f'id="tampered-{ids[2]}"' not in page and f'id="tampered-{ids[0]}"' not in page
    assert f'row <a class="mono" href="/console/log/{ids[1]}">{ids[1]}</a>: content does not match its hash' in page


def _row_integrity(url: str, row_id: int) -> dict:
    async def check(conn: asyncpg.Connection) -> dict:
        row = await conn.fetchrow("SELECT * FROM routing_log WHERE id = $1", row_id)
        return await row_integrity(conn, LOG_KEY, row)

    return run_on(url, check)


def test_the_first_row_kept_after_retention_links_to_its_floor(empty_database: str) -> None:
    write(empty_database, [])
    sql(empty_database, "SELECT routing_log_add_partition($1)", OLD_MONTH)
    entries = [numbered_entry(n) for n in range(5)]
    for entry in entries[:2]:
        entry.received_at = OLD_MONTH
    chain = write(empty_database, entries).chain_id
    run_on(empty_database, lambda conn: drop_before(conn, datetime(2021, 1, 1, tzinfo=UTC), key=LOG_KEY))
    ids = {r["seq"]: r["id"] for r in sql(empty_database, "SELECT seq, id FROM routing_log WHERE chain_id = $1", chain)}
    assert sorted(ids) == [3, 4, 5]  # seq 1 and 2 dropped, a floor at 2
    assert _checks(_row_integrity(empty_database, ids[3])) == (True, True, True)
    sql(empty_database, "DELETE FROM routing_log_floor WHERE chain_id = $1", chain)
    assert _checks(_row_integrity(empty_database, ids[3])) == (True, False, True)


def test_rows_of_a_chain_sealed_at_the_upgrade_to_keyed_hashes_show_as_genuine_until_changed(
    empty_database: str,
) -> None:
    _written_by_an_earlier_release(empty_database, 11, unkeyed_chain([FEB, FEB, FEB]))
    write(empty_database, [])  # the upgrade seals the chain at seq 3
    ids = [
        r["id"] for r in sql(empty_database, "SELECT id FROM routing_log WHERE request_id LIKE 'old-%' ORDER BY seq")
    ]
    assert [_checks(_row_integrity(empty_database, row_id)) for row_id in ids] == [
        (True, None, True), (True, True, True), (True, True, None)]  # fmt: skip
    sql(empty_database, "UPDATE routing_log SET http_status = 502 WHERE id = $1", ids[1])
    assert _checks(_row_integrity(empty_database, ids[1])) == (False, True, True)
    # their conversation checks them as written too, their hashes over their bodies' digests
    items, _more = run_on(empty_database, lambda conn: load_conversation(conn, "old", LOG_KEY))
    assert [_checks(item["integrity"]) for item in items] == [
        (True, None, True), (False, True, True), (True, True, None)]  # fmt: skip


def test_the_console_verify_page_links_every_row_its_report_names(own_hub: Hub, own_database: str) -> None:
    ids = _chain_ids(own_database, 5)
    sql(own_database, "DELETE FROM routing_log WHERE id = $1", ids[2])
    page = console_page(own_hub, "/console/verify?run=true")
    assert "Chain broken" in page
    named = f'row <a class="mono" href="/console/log/{ids[1]}">{ids[1]}</a> (seq 2) and this row (seq 4)'
    assert f'row <a class="mono" href="/console/log/{ids[3]}">{ids[3]}</a>: seq 3 of chain' in page and named in page
