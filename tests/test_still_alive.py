"""Still-alive: a party that stops answering goes OFFLINE (announced, failing fast) and comes back CONNECTED."""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from storage.log_body import body_of
from tests.conftest import OUTPUT, Db, Hub, Services, hub_env, register_at_hub, scratch_database, start_hub
from tests.parties import Party
from tests.test_hub_client_info import _pushes_about, _wait_for
from tests.test_routing import _roles, party_key


@pytest.fixture
def deployment(services: Services) -> Iterator[Services]:
    """A database and a Redis prefix of the test's own, as a deployment has: the hubs here probe only the parties of
    the test. On the session's, a hub probing after 1 s of silence probed every platform earlier tests left behind,
    and the session's hub, seeing the CPO go OFFLINE, took its probe for its own 30 s (the probe claims are shared): a
    CPO back a moment later was not probed, and not CONNECTED, within the test's wait (a full CI run under load)."""
    with scratch_database(services, "still_alive") as url:
        yield Services(url, services.redis_url, f"{services.redis_prefix}still-alive-{secrets.token_hex(3)}:")


@pytest.fixture
def db(deployment: Services) -> Iterator[Db]:
    """The test's own database, where its hub writes."""
    connection = Db(deployment.database_url)
    try:
        yield connection
    finally:
        connection.close()


@pytest.fixture
def probing_hub(deployment: Services, tmp_path: Path, request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    silence = request.param
    env = hub_env(deployment, tmp_path / "hub", OCPI_HUB_STILL_ALIVE_S=silence, OCPI_HUB_OFFLINE_PROBE_S="0.5",
                  OCPI_HUB_FORWARD_TIMEOUT_S="20")  # fmt: skip
    running = start_hub(env, OUTPUT / f"hub-still-alive-{silence}.log")
    yield running
    running.stop()


def _connect(hub: Hub, start_party, role: str) -> Party:  # type: ignore[no-untyped-def]
    return register_at_hub(hub, start_party, _roles(role))


def _status(hub: Hub, party: Party) -> str:
    with hub.admin() as admin:
        [item] = [i for i in admin.get("/admin/api/parties").json()["items"] if i["party_id"] == party.roles[0][2]]
    return str(item["status"])


def _statuses_pushed(watcher: Party, about: tuple[str, str], count: int) -> list[str]:
    """The statuses of the ClientInfo pushes the watcher got about a party, once there are `count` of them."""
    pushes = _wait_for(lambda: len(found := _pushes_about(watcher, about)) >= count and found)
    return [p["status"] for p in pushes]


def _push_rows(db, about: tuple[str, str]) -> list[tuple[object, ...]]:  # type: ignore[no-untyped-def]
    rows = db.run(
        db.fetch(
            "SELECT chain_id, seq, request_id, to_party_id, received_at FROM routing_log "
            "WHERE module = 'hubclientinfo' AND path LIKE $1 ORDER BY id",
            f"%/{about[0]}/{about[1]}",
        )
    )
    return [tuple(r) for r in rows]


def _request_ids(watcher: Party, about: tuple[str, str]) -> list[str | None]:
    return [r.headers.get("X-Request-ID") for r in watcher.client_infos() if r.path.endswith(f"/{about[0]}/{about[1]}")]


def _versions_probes(party: Party) -> int:
    return sum(1 for r in party.received if r.method == "GET" and r.path == "/ocpi/versions")


@pytest.mark.parametrize("probing_hub", ["1"], indirect=True)
def test_a_silent_party_is_probed_goes_offline_fails_fast_and_comes_back(probing_hub: Hub, start_party, db) -> None:
    hub = probing_hub
    watcher, cpo = _connect(hub, start_party, "EMSP"), _connect(hub, start_party, "CPO")
    cc, pid = key = party_key(cpo)
    # Still alive: after a second of silence the hub GETs the versions of a party that is up; it stays CONNECTED.
    _wait_for(lambda: _versions_probes(cpo) >= 2)
    assert _status(hub, cpo) == "CONNECTED"
    registration = ["PLANNED", "CONNECTED"]
    # Seen once in a full CI run: each of the two pushed twice. The rows tell a second push by the hub (two rows per
    # status) from one push that reached the party twice (one row per status, X-Request-IDs repeated).
    if (pushed := _statuses_pushed(watcher, key, 2)) != registration:
        print("push rows:", *_push_rows(db, key), "X-Request-IDs received:", *_request_ids(watcher, key), sep="\n")
    assert pushed == registration
    cpo.stop()
    _wait_for(lambda: _status(hub, cpo) == "OFFLINE")
    assert _statuses_pushed(watcher, key, 3) == [*registration, "OFFLINE"]
    # No request can be sent to it: 4003 at once, naming the reason, not after the 20 s forward timeout.
    answer = watcher.call(hub.base, "GET", f"sender/locations/{cc}/{pid}/LOC1", to=key,
                          headers={"X-Request-ID": "to-offline"})  # fmt: skip
    assert answer.json()["status_code"] == 4003 and "OFFLINE" in answer.json()["status_message"]
    [row] = db.run(db.fetch("SELECT error, duration_ms FROM routing_log WHERE request_id = 'to-offline'"))
    assert "OFFLINE" in row["error"] and row["duration_ms"] < 20_000
    # The hub keeps probing; once the party answers again it is CONNECTED, announced, and reachable.
    cpo.resume()
    _wait_for(lambda: _status(hub, cpo) == "CONNECTED")
    assert _statuses_pushed(watcher, key, 4) == [*registration, "OFFLINE", "CONNECTED"]
    watcher.call(hub.base, "GET", f"sender/locations/{cc}/{pid}/LOC1", to=key, headers={"X-Request-ID": "back"})
    assert [r.headers["X-Correlation-ID"] for r in cpo.functional()][-1:] and any(
        r.path.endswith("/LOC1") for r in cpo.functional())  # fmt: skip
    probes = db.run(db.fetch("SELECT http_status, ocpi_status_code, error FROM routing_log WHERE module = 'versions' "
                             "AND to_party_id = $1", pid))  # fmt: skip
    assert any(p["error"] for p in probes) and any(p["http_status"] == 200 for p in probes)
    # a probe's row has the OCPI status of the answer, as any other call's (found by a CPO developer's walkthrough)
    assert all(p["ocpi_status_code"] == 1000 for p in probes if p["http_status"] == 200), probes


@pytest.mark.parametrize("probing_hub", ["300"], indirect=True)
def test_a_failed_forward_makes_the_hub_probe_at_once(probing_hub: Hub, start_party) -> None:
    hub = probing_hub
    emsp, cpo = _connect(hub, start_party, "EMSP"), _connect(hub, start_party, "CPO")
    cc, pid = key = party_key(cpo)
    cpo.stop()
    answer = emsp.call(hub.base, "GET", f"sender/locations/{cc}/{pid}/LOC1", to=key)
    assert answer.json()["status_code"] == 4003 and "OFFLINE" not in answer.json()["status_message"]
    # Within the test's wait, long before 300 s of silence would have found it.
    _wait_for(lambda: _status(hub, cpo) == "OFFLINE")
    assert _statuses_pushed(emsp, key, 3) == ["PLANNED", "CONNECTED", "OFFLINE"]


@pytest.mark.parametrize("probing_hub", ["300"], indirect=True)
def test_a_receiver_answering_a_gateway_error_is_probed_at_once_and_goes_offline_when_its_versions_fail_too(
    probing_hub: Hub, start_party
) -> None:
    # Found by a spec review: a CPO whose load balancer answered 503 to everything stayed CONNECTED for as long as
    # requests reached it. Any answer counted as a message from it, and only a forward that failed to connect or timed
    # out made the hub probe at once (a ClientInfo push's 5xx did).
    hub = probing_hub
    emsp, cpo = _connect(hub, start_party, "EMSP"), _connect(hub, start_party, "CPO")
    cc, pid = key = party_key(cpo)
    cpo.canned_under[("GET", "/ocpi/2.2.1/locations/")] = (503, b"<html>Service Unavailable</html>",
                                                          {"Content-Type": "text/html"})  # fmt: skip
    probes = _versions_probes(cpo)
    answer = emsp.call(hub.base, "GET", f"sender/locations/{cc}/{pid}/LOC1", to=key)
    assert (answer.status_code, answer.text) == (503, "<html>Service Unavailable</html>")  # relayed as it came
    _wait_for(lambda: _versions_probes(cpo) > probes)  # at once, not after 300 s of silence
    assert _status(hub, cpo) == "CONNECTED"  # its versions answer: its server is there
    cpo.versions_status = 503  # its whole server behind the failing gateway
    assert emsp.call(hub.base, "GET", f"sender/locations/{cc}/{pid}/LOC1", to=key).status_code == 503
    _wait_for(lambda: _status(hub, cpo) == "OFFLINE")
    assert _statuses_pushed(emsp, key, 3) == ["PLANNED", "CONNECTED", "OFFLINE"]


@contextlib.contextmanager
def _a_cpo_probed_every_30_s(
    deployment: Services, tmp_path: Path, start_party: Callable[..., Party], log: str
) -> Iterator[tuple[Hub, Party, Party]]:
    """A hub of its own as deployed (still-alive after 300 s of silence, OFFLINE parties probed every 30 s; forwards
    given up after 1 s), with an eMSP and a CPO registered: (hub, eMSP, CPO)."""
    env = hub_env(deployment, tmp_path / "hub", OCPI_HUB_STILL_ALIVE_S="300", OCPI_HUB_OFFLINE_PROBE_S="30",
                  OCPI_HUB_FORWARD_TIMEOUT_S="1")  # fmt: skip
    hub = start_hub(env, OUTPUT / log)
    try:
        yield hub, _connect(hub, start_party, "EMSP"), _connect(hub, start_party, "CPO")
    finally:
        hub.stop()


def test_a_failed_forward_is_probed_at_once_though_a_probe_found_the_party_alive_a_moment_before(
    deployment: Services, tmp_path: Path, start_party
) -> None:
    # Found by a CPO developer's walkthrough: a probe claims its party for OCPI_HUB_OFFLINE_PROBE_S (30 s by default)
    # in every hub process; after a timeout's probe found the CPO alive, the CPO went down, and the forwards that then
    # failed to connect were not probed "at once" (README): it stayed CONNECTED for half a minute.
    with _a_cpo_probed_every_30_s(deployment, tmp_path, start_party, "hub-still-alive-suspects.log") as (
        hub, emsp, cpo):  # fmt: skip
        cc, pid = key = party_key(cpo)
        cpo.delay_s, probes = 2.0, _versions_probes(cpo)  # the registration's GET of its versions among them
        assert emsp.call(hub.base, "GET", f"sender/locations/{cc}/{pid}/LOC1", to=key).json()["status_code"] == 4002
        _wait_for(lambda: _versions_probes(cpo) > probes)  # alive: its versions answer at once
        assert _status(hub, cpo) == "CONNECTED"
        cpo.stop()
        assert emsp.call(hub.base, "GET", f"sender/locations/{cc}/{pid}/LOC1", to=key).json()["status_code"] == 4003
        _wait_for(lambda: _status(hub, cpo) == "OFFLINE", timeout=8)  # within a few seconds, not 30


def test_an_offline_party_that_keeps_calling_is_probed_once_a_probe_interval_not_at_every_call(
    deployment: Services, tmp_path: Path, start_party, db
) -> None:  # type: ignore[no-untyped-def]
    # From a review: an OFFLINE platform's calls make it a suspect ("it is talking again"), and suspects of a failed
    # forward had been given a claim of 2 s: a CPO whose server is down but whose client keeps pushing was probed 15
    # times as often as OCPI_HUB_OFFLINE_PROBE_S says.
    with _a_cpo_probed_every_30_s(deployment, tmp_path, start_party, "hub-still-alive-offline-callers.log") as (
        hub, emsp, cpo):  # fmt: skip
        cc, pid = key = party_key(cpo)
        cpo.stop()
        assert emsp.call(hub.base, "GET", f"sender/locations/{cc}/{pid}/LOC1", to=key).json()["status_code"] == 4003
        _wait_for(lambda: _status(hub, cpo) == "OFFLINE")
        query = "SELECT count(*) FROM routing_log WHERE module = 'versions' AND to_party_id = $1 AND error IS NOT NULL"
        probes = db.run(db.fetchval(query, pid))
        for n in range(12):  # its client still calls, for 6 s
            cpo.call(hub.base, "PUT", f"receiver/locations/{cc}/{pid}/L{n}", to=party_key(emsp),
                     body={"id": f"L{n}", "country_code": cc, "party_id": pid})  # fmt: skip
            time.sleep(0.5)
        assert db.run(db.fetchval(query, pid)) - probes <= 1


@pytest.mark.parametrize("probing_hub", ["1"], indirect=True)
def test_a_probes_row_hides_a_credentials_token_in_the_answer(probing_hub: Hub, start_party, db) -> None:
    # as the row of any other call of the hub's own (hub/own_messages.py): auditors read the log
    cpo = _connect(probing_hub, start_party, "CPO")
    answer = b'{"status_code": 1000, "timestamp": "2026-01-01T00:00:00Z", "data": {"token": "a-party-secret"}}'
    cpo.canned[("GET", "/ocpi/versions")] = (200, answer, {"Content-Type": "application/json"})
    probes = "SELECT response_body FROM routing_log WHERE module = 'versions' AND to_party_id = $1"

    def answers_with_a_token() -> list[str]:
        bodies = [body_of(r["response_body"]).decode() for r in db.run(db.fetch(probes, cpo.roles[0][2]))]
        return [body for body in bodies if '"token"' in body]

    [answered, *_] = _wait_for(answers_with_a_token)
    assert "a-party-secret" not in answered and '"token":"(not logged)"' in answered


@pytest.mark.parametrize("probing_hub", ["1"], indirect=True)
def test_a_party_back_from_offline_is_pushed_once_the_client_info_it_missed_meanwhile(
    probing_hub: Hub, start_party, db
) -> None:  # type: ignore[no-untyped-def]
    hub = probing_hub
    away, watcher, unchanged = (_connect(hub, start_party, role) for role in ("EMSP", "EMSP", "CPO"))
    assert _statuses_pushed(away, party_key(unchanged), 2) == ["PLANNED", "CONNECTED"]
    # delivered: one still pending as it goes OFFLINE would be pushed to it again once it is back
    pending = "SELECT count(*) FROM client_info_push WHERE delivered_at IS NULL"
    assert _wait_for(lambda: db.run(db.fetchval(pending)) == 0)
    time.sleep(1.1)  # what it misses is taken from a second before it goes OFFLINE (storage/queries.sql)
    away.stop()
    assert _statuses_pushed(watcher, party_key(away), 1) == ["OFFLINE"]  # the watcher came after it was CONNECTED
    newcomer = _connect(hub, start_party, "CPO")  # PLANNED, then CONNECTED, while it is away
    assert _statuses_pushed(watcher, party_key(newcomer), 2) == ["PLANNED", "CONNECTED"]
    before = len(away.client_infos())

    away.resume()
    # once the probe finds it CONNECTED again: the newcomer as it is now, once; not what did not change meanwhile
    assert _wait_for(lambda: [p["status"] for p in _pushes_about(away, party_key(newcomer))] == ["CONNECTED"], 20)
    assert _statuses_pushed(watcher, party_key(away), 2) == ["OFFLINE", "CONNECTED"]
    assert _wait_for(lambda: db.run(db.fetchval(
        "SELECT p.client_info_missed_since IS NULL FROM platform p JOIN party_role r ON r.platform_id = p.id "
        "WHERE r.party_id = $1", away.roles[0][2])))  # fmt: skip
    time.sleep(1.0)  # and none twice
    assert [p["status"] for p in _pushes_about(away, party_key(newcomer))] == ["CONNECTED"]
    assert len(away.client_infos()) == before + 1


def _probed_offline(hub: Hub, party: Party) -> None:
    """Its versions broken, its other endpoints still served: the hub's probe finds it OFFLINE."""
    party.versions_status = 500
    _wait_for(lambda: _status(hub, party) == "OFFLINE")


def _assert_refused_as_offline(answer) -> None:  # type: ignore[no-untyped-def]
    assert answer.json()["status_code"] == 4003 and "OFFLINE" in answer.json()["status_message"], answer.text


@pytest.mark.parametrize("probing_hub", ["1"], indirect=True)
def test_a_page_link_of_a_party_gone_offline_is_answered_4003_at_once_and_not_forwarded(
    probing_hub: Hub, start_party
) -> None:
    # A direct GET to an OFFLINE party was refused at once, the next page of its list was forwarded to it: a party
    # not answering held its caller until the forward timeout (mod_hub_client_info.asciidoc: "No requests can be sent").
    hub = probing_hub
    emsp, cpo = _connect(hub, start_party, "EMSP"), _connect(hub, start_party, "CPO")
    cpo.objects["locations"] = [{"id": f"L{i}"} for i in range(15)]
    link = emsp.call(hub.base, "GET", "sender/locations", to=party_key(cpo)).headers["link"]
    _probed_offline(hub, cpo)
    asked = len(cpo.functional())
    _assert_refused_as_offline(emsp.call(hub.base, "GET", link[1:].split(">")[0]))
    assert len(cpo.functional()) == asked


@pytest.mark.parametrize("probing_hub", ["1"], indirect=True)
def test_a_result_for_an_emsp_gone_offline_is_answered_4003_at_once_and_not_forwarded(
    probing_hub: Hub, start_party
) -> None:
    # mod_hub_client_info.asciidoc, OFFLINE: "No requests can be sent", a result posted to a response_url the hub
    # handed out included, as any other routing to the party.
    hub = probing_hub
    emsp, cpo = _connect(hub, start_party, "EMSP"), _connect(hub, start_party, "CPO")
    command = {
        "location_id": "L1",
        "token": {"uid": "T1"},
        "response_url": f"{emsp.base}/ocpi/2.2.1/commands/sender/R1",
    }
    sent = emsp.call(hub.base, "POST", "receiver/commands/START_SESSION", to=party_key(cpo), body=command)
    assert sent.json()["status_code"] == 1000, sent.text
    response_url = json.loads(cpo.functional()[0].body)["response_url"]
    _probed_offline(hub, emsp)
    _assert_refused_as_offline(cpo.call(hub.base, "POST", response_url, body={"result": "ACCEPTED"}))
    assert emsp.functional() == []
