"""HubClientInfo: the hub's list of parties, and the ClientInfo pushes on every change of a party's status."""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from tests.conftest import Hub, Services, hub_env, register_at_hub, start_hub
from tests.log_rows import sql
from tests.parties import Party, token_header
from tests.test_departed_party import _leave
from tests.test_routing import _roles, party_key

# types.asciidoc DateTime: string(25), RFC 3339 in UTC, at most milliseconds ("2015-06-29T20:39:09.123Z")
OCPI_DATETIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,3})?Z")


def _wait_for(condition, timeout: float = 10.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := condition():
            return found
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def _pushes_about(party, about) -> list[dict]:  # type: ignore[no-untyped-def]
    cc, pid = about
    return [json.loads(r.body) for r in party.client_infos()
            if r.method == "PUT" and r.path == f"/ocpi/2.2.1/hubclientinfo/receiver/{cc}/{pid}"]  # fmt: skip


def test_every_status_change_is_pushed_to_the_other_connected_parties(hub: Hub, connect_party, start_party, db) -> None:
    watcher = connect_party(_roles("EMSP"))
    newcomer_roles = _roles("CPO", "DE")
    newcomer = start_party(newcomer_roles)
    key = party_key(newcomer)
    token_a = hub.invite(newcomer.name, newcomer_roles)["token_a"]
    assert _wait_for(lambda: [p["status"] for p in _pushes_about(watcher, key)] == ["PLANNED"])
    newcomer.register_at(hub.versions_url, token_a)
    assert _wait_for(lambda: [p["status"] for p in _pushes_about(watcher, key)] == ["PLANNED", "CONNECTED"])
    httpx.delete(f"{hub.base}/ocpi/2.2.1/credentials", headers=token_header(newcomer.hub_token))
    pushes = _wait_for(lambda: (p := _pushes_about(watcher, key)) and len(p) == 3 and p)
    assert [p["status"] for p in pushes] == ["PLANNED", "CONNECTED", "SUSPENDED"]
    assert all(OCPI_DATETIME.fullmatch(p["last_updated"]) for p in pushes), pushes
    assert pushes[1] | {"last_updated": "x"} == {"party_id": key[1], "country_code": "DE", "role": "CPO",
                                                 "status": "CONNECTED", "last_updated": "x"}  # fmt: skip
    # A configuration module: the pushes carry no routing headers.
    received = [r for r in watcher.client_infos() if r.path.endswith(f"/{key[0]}/{key[1]}")]
    assert all("OCPI-to-party-id" not in r.headers and "OCPI-from-party-id" not in r.headers for r in received)
    # The party itself is not told about its own status, and each push is a row of the routing log.
    assert _pushes_about(newcomer, key) == []
    # The hub writes a push's row once the push is answered: the watcher can have the third before the log does.
    mine = _wait_for(lambda: len(found := _push_rows(db, key, to=party_key(watcher))) == 3 and found)
    assert [(r["routing"], r["method"], r["http_status"]) for r in mine] == [("hub", "PUT", 200)] * 3
    time.sleep(0.5)  # and no more come
    assert len(_push_rows(db, key, to=party_key(watcher))) == 3


def _push_rows(db, about: tuple[str, str], to: tuple[str, str]) -> list:  # type: ignore[no-untyped-def]
    """The routing-log rows of the ClientInfo pushes about a party to another."""
    rows = db.run(db.fetch(
        "SELECT routing, module, method, http_status, to_party_id FROM routing_log WHERE module = 'hubclientinfo' "
        "AND path LIKE $1 ORDER BY id", f"%/{about[0]}/{about[1]}"))  # fmt: skip
    return [r for r in rows if r["to_party_id"] == to[1]]


def _an_emsp_and_a_cpo_yet_to_register(connect_party, start_party) -> tuple[Party, Party, tuple[str, str]]:  # type: ignore[no-untyped-def]
    """A connected eMSP, and a CPO whose server is up but which is not invited yet: its invitation (PLANNED) and its
    registration (CONNECTED, _invite_and_register) are the changes the eMSP is pushed."""
    emsp = connect_party(_roles("EMSP"))
    newcomer = start_party(_roles("CPO"))
    return emsp, newcomer, party_key(newcomer)


def _invite_and_register(hub: Hub, newcomer: Party) -> None:
    newcomer.register_at(hub.versions_url, hub.invite(newcomer.name, *newcomer.roles)["token_a"])


@contextlib.contextmanager
def _push_turn_held(db) -> Iterator[None]:  # type: ignore[no-untyped-def]
    """The test holds the hub's ClientInfo push turn (as storage/queries.sql takes it): the changes made meanwhile are
    pushed in one round once it ends."""
    db.run(db.execute("BEGIN"))
    # the hub may hold it a moment, pushing earlier changes
    assert _wait_for(lambda: db.run(db.fetchval("SELECT pg_try_advisory_xact_lock(210846855)")))
    try:
        yield
    finally:
        db.run(db.execute("COMMIT"))


def test_one_hub_process_pushes_at_a_time_so_changes_arrive_in_their_order(
    hub: Hub, connect_party, start_party, db
) -> None:
    # With two processes pushing side by side, a watcher could get CONNECTED and then the PLANNED before it (seen
    # in CI). Pushing takes a turn (an advisory lock); here the test holds the turn a while.
    watcher, newcomer, key = _an_emsp_and_a_cpo_yet_to_register(connect_party, start_party)
    with _push_turn_held(db):
        _invite_and_register(hub, newcomer)  # two changes
        time.sleep(2.5)  # while the turn is taken, a hub with pending changes looks again every second
        assert _pushes_about(watcher, key) == []  # no hub process pushed while another had the turn
    pushes = _wait_for(lambda: len(found := _pushes_about(watcher, key)) >= 2 and found)
    assert [p["status"] for p in pushes] == ["PLANNED", "CONNECTED"]


def test_a_party_too_slow_for_a_push_holds_up_no_other_partys_pushes_and_is_not_sent_the_rest_of_that_round(
    hub: Hub, connect_party, start_party, db
) -> None:
    fast, newcomer, key = _an_emsp_and_a_cpo_yet_to_register(connect_party, start_party)
    slow = connect_party(_roles("EMSP"))
    slow.drip.add(f"/ocpi/2.2.1/hubclientinfo/receiver/{key[0]}/{key[1]}")  # never answers: the hub's 2 s timeout
    with _push_turn_held(db):  # one round pushes both changes
        _invite_and_register(hub, newcomer)
    pushes = _wait_for(lambda: len(found := _pushes_about(fast, key)) >= 2 and found)
    assert [p["status"] for p in pushes] == ["PLANNED", "CONNECTED"]
    # Both came at once: the fast party did not wait for the slow one's timeout between them.
    arrived = [r.at for r in fast.client_infos() if r.path.endswith(f"/{key[0]}/{key[1]}")]
    assert arrived[1] - arrived[0] < 0.5, arrived
    # The slow party got the first push only: the round did not spend a second timeout on it. The newcomer as it is
    # now (CONNECTED) comes again in a later round, as what a party did not take is
    # (test_a_party_that_did_not_answer_a_push_is_pushed_that_role_as_it_is_now_once_it_answers_again).
    _wait_for(lambda: _push_rows(db, key, to=party_key(slow)), timeout=5)  # written once the push timed out
    time.sleep(1.0)  # a second push in that round would have come by now
    first, *later = [p["status"] for p in _pushes_about(slow, key)]
    assert first == "PLANNED" and set(later) <= {"CONNECTED"}
    arrived = [r.at for r in slow.client_infos() if r.path.endswith(f"/{key[0]}/{key[1]}")]
    assert all(at - arrived[0] > 1.9 for at in arrived[1:]), arrived  # after the first timed out (2 s)
    slow.drip.clear()  # it answers again: caught up, not a timeout in each round of the tests after this one
    assert [r["http_status"] for r in _push_rows(db, key, to=party_key(fast))] == [200, 200]


def test_a_push_answered_after_the_databases_idle_in_transaction_timeout_is_delivered_once(
    services: Services, empty_database: str, tmp_path: Path, start_party
) -> None:
    # Many operators cap idle transactions (idle_in_transaction_session_timeout). A push round must not hold one open
    # while it waits for the parties: the database would end it, and every push of the round would be sent again.
    database = empty_database.rsplit("/", 1)[1]
    sql(empty_database, f'ALTER DATABASE "{database}" SET idle_in_transaction_session_timeout = 1000')
    env = hub_env(services, tmp_path / "hub", OCPI_HUB_DATABASE_URL=empty_database,
                  OCPI_HUB_REDIS_PREFIX=f"{services.redis_prefix}idle-tx-{tmp_path.name}:",
                  OCPI_HUB_FORWARD_TIMEOUT_S="8")  # fmt: skip
    hub = start_hub(env, tmp_path / "hub.log")
    try:
        watcher = register_at_hub(hub, start_party, _roles("EMSP"), delay_s=2.0)  # answers each push after 2 s
        newcomer = register_at_hub(hub, start_party, _roles("CPO"))
        key = party_key(newcomer)
        assert _wait_for(lambda: [p["status"] for p in _pushes_about(watcher, key)] == ["PLANNED", "CONNECTED"],
                         timeout=20)  # fmt: skip
        time.sleep(3.0)  # a round that failed to mark its pushes delivered would send them again within this
        assert [p["status"] for p in _pushes_about(watcher, key)] == ["PLANNED", "CONNECTED"]
        assert sql(empty_database, "SELECT count(*) FROM client_info_push WHERE delivered_at IS NULL")[0][0] == 0
    finally:
        hub.stop()
    assert "client_info_push_failed" not in hub.log()


def test_client_info_list_is_paginated_filtered_by_date_and_excludes_the_caller(hub: Hub, connect_party) -> None:
    since = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    reader = connect_party(_roles("EMSP"))
    others = [connect_party(_roles("CPO")) for _ in range(5)]
    until = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    url = f"{hub.base}/ocpi/2.2.1/sender/hubclientinfo?limit=2&date_from={since}&date_to={until}"
    seen, totals = [], set()
    while url:
        answer = httpx.get(url, headers=token_header(reader.hub_token))
        assert answer.status_code == 200 and answer.json()["status_code"] == 1000, answer.text
        totals.add(answer.headers["X-Total-Count"])
        assert answer.headers["X-Limit"] == "2"  # the limit applied, not the hub's maximum
        seen += answer.json()["data"]
        url = answer.headers["Link"].split(">")[0].lstrip("<") if "Link" in answer.headers else None
    # Parties of earlier tests may change status in the window (the still-alive check): they may be listed too.
    ours = [i for i in seen if i["party_id"] in {p.roles[0][2] for p in others}]
    assert totals == {str(len(seen))} and len({(i["country_code"], i["party_id"]) for i in seen}) == len(seen)
    assert sorted(i["party_id"] for i in ours) == sorted(p.roles[0][2] for p in others)
    assert reader.roles[0][2] not in {i["party_id"] for i in seen}
    assert {i["status"] for i in ours} == {"CONNECTED"}
    assert all(OCPI_DATETIME.fullmatch(i["last_updated"]) for i in seen), seen
    assert "OCPI-from-party-id" not in answer.headers
    capped = httpx.get(f"{hub.base}/ocpi/2.2.1/sender/hubclientinfo?limit=5000", headers=token_header(reader.hub_token))
    assert capped.headers["X-Limit"] == "1000"  # "X-Limit HTTP header should be set to 100 as well", at a max of 100
    # limit=0: the total alone, X-Limit the upper limit "not the number of objects returned", no Link to more of none
    counted = httpx.get(f"{hub.base}/ocpi/2.2.1/sender/hubclientinfo?limit=0", headers=token_header(reader.hub_token))
    assert (counted.json()["status_code"], counted.json()["data"], counted.headers["X-Limit"]) == (1000, [], "1000")
    assert int(counted.headers["X-Total-Count"]) >= len(others) and "Link" not in counted.headers


def test_client_info_list_rejects_a_malformed_date_and_token_a(hub: Hub, connect_party) -> None:
    reader, _ = connect_party(_roles("EMSP")), connect_party(_roles("CPO"))  # one party on the list at least
    for date in ("yesterday", "9999-12-31T23:59:59-01:00"):  # the second is past the year 9999 in UTC
        bad = httpx.get(f"{hub.base}/ocpi/2.2.1/sender/hubclientinfo?date_from={date}",
                        headers=token_header(reader.hub_token))  # fmt: skip
        assert bad.json()["status_code"] == 2001 and "date_from" in bad.json()["status_message"]
    swapped = httpx.get(f"{hub.base}/ocpi/2.2.1/sender/hubclientinfo",
                        params={"date_from": "2026-11-25T10:00:00Z", "date_to": "2026-11-24T10:00:00Z"},
                        headers=token_header(reader.hub_token)).json()  # fmt: skip
    assert (
        swapped["status_code"] == 2001
        and "date_to (2026-11-24T10:00:00Z) is before date_from" in swapped["status_message"]
    ), swapped
    # an offset past every list is an empty page (it used to overflow PostgreSQL's bigint: a 500)
    far = httpx.get(f"{hub.base}/ocpi/2.2.1/sender/hubclientinfo", params={"offset": str(10**30)},
                    headers=token_header(reader.hub_token))  # fmt: skip
    assert far.json()["status_code"] == 1000 and far.json()["data"] == [] and int(far.headers["X-Total-Count"]) > 0
    # offset and limit are digits 0-9, not what else Python's int() reads (1_000, a space, an Arabic-Indic three)
    for name, value in [("limit", "1_0"), ("offset", " 5"), ("limit", "\u0663"), ("offset", "+1")]:
        bad = httpx.get(f"{hub.base}/ocpi/2.2.1/sender/hubclientinfo", params={name: value},
                        headers=token_header(reader.hub_token))  # fmt: skip
        assert bad.json()["status_code"] == 2001, (name, value, bad.text)  # as a malformed date_from
        assert f"{name} must be a whole number" in bad.json()["status_message"], bad.text
    token_a = hub.invite("Not yet", _roles("CPO"))["token_a"]
    assert httpx.get(f"{hub.base}/ocpi/2.2.1/sender/hubclientinfo", headers=token_header(token_a)).status_code == 401


def test_a_party_that_did_not_answer_a_push_is_pushed_that_role_as_it_is_now_once_it_answers_again(
    hub: Hub, connect_party, start_party, db
) -> None:
    slow, newcomer, key = _an_emsp_and_a_cpo_yet_to_register(connect_party, start_party)
    path = f"/ocpi/2.2.1/hubclientinfo/receiver/{key[0]}/{key[1]}"
    slow.drip.add(path)  # its pushes about the newcomer time out (2 s); its versions answer: it stays CONNECTED
    _invite_and_register(hub, newcomer)
    _wait_for(lambda: _push_rows(db, key, to=party_key(slow)), timeout=5)  # written once the push timed out
    time.sleep(2.5)  # the CONNECTED after the PLANNED, if a round of its own pushed it, timed out too
    slow.drip.discard(path)
    connect_party(_roles("CPO"))  # the next change makes a round
    # the newcomer as it is now, pushed again though the round of its change is over and marked delivered
    answered = ("SELECT count(*) FROM routing_log WHERE module = 'hubclientinfo' AND path LIKE $1 "
                "AND to_party_id = $2 AND ocpi_status_code = 1000")  # fmt: skip
    assert _wait_for(lambda: db.run(db.fetchval(answered, f"%/{key[0]}/{key[1]}", party_key(slow)[1])) == 1, 15)
    assert _pushes_about(slow, key)[-1]["status"] == "CONNECTED"


def test_a_party_that_answered_a_push_with_a_server_error_is_pushed_that_role_as_it_is_now_once_it_answers_again(
    hub: Hub, connect_party, start_party, db
) -> None:
    # A proxy in front of a server that is down answers 503: the party did not take the change, as the still-alive
    # probe judges an answer of its versions endpoint (routing.still_alive), and is caught up as one that timed out.
    emsp, newcomer, key = _an_emsp_and_a_cpo_yet_to_register(connect_party, start_party)
    path = f"/ocpi/2.2.1/hubclientinfo/receiver/{key[0]}/{key[1]}"
    emsp.canned[("PUT", path)] = (503, b"<html>503 Service Unavailable</html>", {"Content-Type": "text/html"})
    _invite_and_register(hub, newcomer)
    pending = "SELECT count(*) FROM client_info_push WHERE party_id = $1 AND delivered_at IS NULL"
    _wait_for(lambda: _push_rows(db, key, to=party_key(emsp)) and db.run(db.fetchval(pending, key[1])) == 0)
    assert {r["http_status"] for r in _push_rows(db, key, to=party_key(emsp))} == {503}
    del emsp.canned[("PUT", path)]
    connect_party(_roles("CPO"))  # the next change makes a round
    assert _wait_for(lambda: [r for r in _push_rows(db, key, to=party_key(emsp)) if r["http_status"] == 200], 15)
    assert _pushes_about(emsp, key)[-1]["status"] == "CONNECTED"


def test_a_party_whose_status_changes_while_a_client_pages_through_the_client_infos_moves_no_other_off_its_pages(
    services: Services, empty_database: str, tmp_path: Path, start_party
) -> None:
    # transport_and_format.asciidoc, Paginated Response: "the sequence of objects mustn't change", "order the objects
    # by creation date ascending". Ordered by last_updated, a party suspended after the first page moved to the end,
    # the others one page up: the next page's offset skipped one, which its client never heard of.
    env = hub_env(services, tmp_path / "hub", OCPI_HUB_DATABASE_URL=empty_database,
                  OCPI_HUB_REDIS_PREFIX=f"{services.redis_prefix}paging-{tmp_path.name}:")  # fmt: skip
    hub = start_hub(env, tmp_path / "hub.log")
    try:
        reader = register_at_hub(hub, start_party, _roles("EMSP"))
        cpos = [register_at_hub(hub, start_party, _roles("CPO")) for _ in range(3)]
        url: str | None = f"{hub.base}/ocpi/2.2.1/sender/hubclientinfo?limit=1"
        seen: list[str] = []
        while url:
            answer = httpx.get(url, headers=token_header(reader.hub_token or ""))
            seen += [info["party_id"] for info in answer.json()["data"]]
            if len(seen) == 1:  # the first page read: its party's platform is suspended
                with hub.admin() as admin:
                    items = admin.get("/admin/api/parties").json()["items"]
                    platform = next(i["platform_id"] for i in items if i["party_id"] == seen[0])
                    assert admin.post(f"/admin/api/parties/{platform}/suspend", json={"reason": "test"}).is_success
            url = answer.headers["Link"].split(">")[0].lstrip("<") if "Link" in answer.headers else None
        assert seen[:3] == [cpo.roles[0][2] for cpo in cpos], seen
    finally:
        hub.stop()


REFUSALS = {
    "http_4xx": (400, b'{"status_code": 2001, "status_message": "unknown party", "timestamp": "2026-12-06T10:00:00Z"}'),
    "ocpi_2001_in_http_200": (200, b'{"status_code": 2001, "status_message": "missing field", "timestamp": "x"}'),
    "no_ocpi_body": (200, b'{"detail": "not here"}'),
}


@pytest.mark.parametrize("refusal", REFUSALS)
def test_a_party_that_refused_a_push_is_pushed_that_role_as_it_is_now_once_it_takes_pushes_again(
    hub: Hub, connect_party, start_party, db, refusal: str
) -> None:
    # mod_hub_client_info.asciidoc: "Any changes to ClientInfo [...] are sent to the connected party": a push answered
    # with anything but HTTP 2xx and OCPI 1xxx did not tell it. Its server answers: it is not probed, and is pushed the
    # role again at the hub's next round, once a round, not over and over.
    emsp, newcomer, key = _an_emsp_and_a_cpo_yet_to_register(connect_party, start_party)
    path = f"/ocpi/2.2.1/hubclientinfo/receiver/{key[0]}/{key[1]}"
    http_status, body = REFUSALS[refusal]
    emsp.canned[("PUT", path)] = (http_status, body, {"Content-Type": "application/json"})
    refused_before = _refused_pushes(hub)
    _invite_and_register(hub, newcomer)
    pending = "SELECT count(*) FROM client_info_push WHERE party_id = $1 AND delivered_at IS NULL"
    _wait_for(lambda: len(_push_rows(db, key, to=party_key(emsp))) >= 2 and db.run(db.fetchval(pending, key[1])) == 0)
    time.sleep(1)
    refused = len(_pushes_about(emsp, key))
    time.sleep(2)  # no change meanwhile: no round pushes it again before LONGEST_SLEEP_S (another test's party may)
    assert len(_pushes_about(emsp, key)) - refused <= 2
    rows = db.run(db.fetch(
        "SELECT http_status, ocpi_status_code FROM routing_log WHERE module = 'hubclientinfo' AND path LIKE $1 "
        "AND to_party_id = $2", f"%/{key[0]}/{key[1]}", party_key(emsp)[1]))  # fmt: skip
    ocpi_status = None if refusal == "no_ocpi_body" else 2001
    assert {(r["http_status"], r["ocpi_status_code"]) for r in rows} == {(http_status, ocpi_status)}
    assert _refused_pushes(hub) - refused_before >= len(rows)
    told = [json.loads(line) for line in hub.log().splitlines() if '"client_info_push_refused"' in line]
    assert {"party": "-".join(party_key(emsp)), "about": f"{key[0]}-{key[1]} CPO", "http_status": http_status,
            "ocpi_status": ocpi_status}.items() <= told[-1].items()  # fmt: skip
    statuses = "SELECT status FROM party_role WHERE party_id = $1"
    assert [r["status"] for r in db.run(db.fetch(statuses, party_key(emsp)[1]))] == ["CONNECTED"]
    del emsp.canned[("PUT", path)]
    connect_party(_roles("CPO"))  # the next change makes a round
    taken = ("SELECT count(*) FROM routing_log WHERE module = 'hubclientinfo' AND path LIKE $1 "
             "AND to_party_id = $2 AND http_status = 200 AND ocpi_status_code = 1000")  # fmt: skip
    assert _wait_for(lambda: db.run(db.fetchval(taken, f"%/{key[0]}/{key[1]}", party_key(emsp)[1])) == 1, 15)
    assert _pushes_about(emsp, key)[-1]["status"] == "CONNECTED"


REFUSAL = (*REFUSALS["http_4xx"], {"Content-Type": "application/json"})


@pytest.mark.parametrize("http_status", [204, 200])
def test_a_push_answered_with_http_2xx_and_no_body_is_taken_and_not_pushed_again(
    hub: Hub, connect_party, start_party, db, http_status: int
) -> None:
    # The spec wants an OCPI envelope in every answer, yet a 204 (or an empty 200) says the party's server took the
    # PUT. Counted as refused, it was pushed again at every round, each time with a warning, and never taken.
    emsp, newcomer, key = _an_emsp_and_a_cpo_yet_to_register(connect_party, start_party)
    emsp.canned[("PUT", f"/ocpi/2.2.1/hubclientinfo/receiver/{key[0]}/{key[1]}")] = (http_status, b"", {})
    _invite_and_register(hub, newcomer)
    pending = "SELECT count(*) FROM client_info_push WHERE party_id = $1 AND delivered_at IS NULL"
    _wait_for(lambda: len(_push_rows(db, key, to=party_key(emsp))) >= 2 and db.run(db.fetchval(pending, key[1])) == 0)
    connect_party(_roles("CPO"))  # another change: a round that would push a refused role again
    time.sleep(2)
    assert [p["status"] for p in _pushes_about(emsp, key)] == ["PLANNED", "CONNECTED"]
    assert [r["http_status"] for r in _push_rows(db, key, to=party_key(emsp))] == [http_status, http_status]
    platform = db.run(db.fetchval("SELECT platform_id FROM party_role WHERE party_id = $1", party_key(emsp)[1]))
    assert db.run(db.fetchval("SELECT client_info_refused FROM platform WHERE id = $1", platform)) == []
    about = f"{key[0]}-{key[1]} CPO"
    assert not [line for line in hub.log().splitlines() if '"client_info_push_refused"' in line and about in line]


def test_a_party_refusing_the_pushes_about_one_party_is_still_pushed_the_changes_of_the_parties_after_it(
    hub: Hub, connect_party, start_party, db
) -> None:
    # A party that chokes on one party's ClientInfo (its data, a party id it cannot store) answers every push about it
    # with an error. The changes after it in a round, and in the catch-up of what it did not take, reach it all the
    # same.
    emsp, unwanted, unwanted_key = _an_emsp_and_a_cpo_yet_to_register(connect_party, start_party)
    other = start_party(_roles("CPO"))
    emsp.canned[("PUT", f"/ocpi/2.2.1/hubclientinfo/receiver/{unwanted_key[0]}/{unwanted_key[1]}")] = REFUSAL
    with _push_turn_held(db):  # one round pushes the four changes, those about the unwanted party first
        _invite_and_register(hub, unwanted)
        _invite_and_register(hub, other)
    key = party_key(other)
    assert _wait_for(lambda: [p["status"] for p in _pushes_about(emsp, key)] == ["PLANNED", "CONNECTED"])
    assert [r["http_status"] for r in _push_rows(db, key, to=party_key(emsp))] == [200, 200]
    # What it refused, it is pushed again, as it is then, at a later round, and takes once it can.
    del emsp.canned[("PUT", f"/ocpi/2.2.1/hubclientinfo/receiver/{unwanted_key[0]}/{unwanted_key[1]}")]
    connect_party(_roles("CPO"))  # the next change makes a round
    taken = _wait_for(lambda: [r for r in _push_rows(db, unwanted_key, to=party_key(emsp)) if r["http_status"] == 200])
    assert len(taken) == 1 and _pushes_about(emsp, unwanted_key)[-1]["status"] == "CONNECTED"


def test_a_refused_role_whose_party_left_and_registers_again_is_no_longer_kept_as_refused(
    hub: Hub, connect_party, start_party, db
) -> None:
    # The roles a party refused are kept for it (migration 0030) until it takes them. One whose party left, its party
    # id then held by a new role, was never pushed again, so never taken: it stayed in the list for good.
    emsp, old, key = _an_emsp_and_a_cpo_yet_to_register(connect_party, start_party)
    path = f"/ocpi/2.2.1/hubclientinfo/receiver/{key[0]}/{key[1]}"
    emsp.canned[("PUT", path)] = REFUSAL
    _invite_and_register(hub, old)
    emsp_platform = db.run(db.fetchval("SELECT platform_id FROM party_role WHERE party_id = $1", party_key(emsp)[1]))
    refused = "SELECT client_info_refused FROM platform WHERE id = $1"
    [old_role] = _wait_for(lambda: db.run(db.fetchval(refused, emsp_platform)))
    with _push_turn_held(db):  # one round finds the old role left and its party id held by a new one
        _leave(old, hub)
        new = start_party(*old.roles)
        token_a = hub.invite(new.name, *new.roles)["token_a"]
    del emsp.canned[("PUT", path)]
    new.register_at(hub.versions_url, token_a)
    assert _wait_for(lambda: _pushes_about(emsp, key)[-1]["status"] == "CONNECTED")
    assert _wait_for(lambda: db.run(db.fetchval(refused, emsp_platform)) == [])
    assert old_role < db.run(db.fetchval("SELECT max(id) FROM party_role WHERE party_id = $1", key[1]))


def test_a_party_refusing_every_push_is_sent_three_a_round(hub: Hub, connect_party, db) -> None:
    # A refusal does not stop a round, but a party that refuses every push is not sent a round's worth of them each
    # round: after three refused in a row, the rest wait for a later round. It refuses every ClientInfo, so that the
    # changes of parties earlier tests left on the shared hub (going OFFLINE) may join the round without breaking the
    # row of refusals.
    emsp = connect_party(_roles("EMSP"))
    platform_id = db.run(db.fetchval("SELECT platform_id FROM party_role WHERE party_id = $1", party_key(emsp)[1]))
    newcomers = [_roles("CPO") for _ in range(5)]
    paths = [f"/ocpi/2.2.1/hubclientinfo/receiver/{c}/{p}" for _, c, p in newcomers]
    with _push_turn_held(db):  # one round pushes the five changes
        emsp.canned_under[("PUT", "/ocpi/2.2.1/hubclientinfo/receiver/")] = REFUSAL
        before = len(emsp.client_infos())
        for n, roles in enumerate(newcomers):
            hub.invite(f"newcomer {n}", roles)  # PLANNED
    told = _wait_for(lambda: [e for line in hub.log().splitlines() if '"client_info_pushes_skipped"' in line
                              and (e := json.loads(line))["platform_id"] == platform_id])  # fmt: skip
    assert told[0]["why"] == "3 refused in a row"
    sent = [r.path for r in emsp.client_infos()[before:]][:3]
    about = {f"{c}-{p} CPO PLANNED": path for (_, c, p), path in zip(newcomers, paths, strict=True)}
    assert [a for a in told[0]["about"] if a in about] == [a for a, path in about.items() if path not in sent]
    assert len([path for path in sent if path in paths]) + len([a for a in told[0]["about"] if a in about]) == 5
    # Those it was not sent come at a later round (here after the changes of a party it takes).
    emsp.canned_under.clear()
    connect_party(_roles("CPO"))
    assert _wait_for(lambda: {r.path for r in emsp.client_infos()} >= set(paths))


def _refused_pushes(hub: Hub) -> float:
    metrics = httpx.get(f"{hub.base}/metrics", timeout=10).text
    found = re.search(r'^ocpi_hub_client_info_pushes_total\{result="refused"\} (\S+)$', metrics, re.MULTILINE)
    return float(found[1]) if found else 0.0
