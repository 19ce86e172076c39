"""Broadcast push to receivers that do not all answer well, and what the pushing party and each copy's row are told
(transport_and_format.asciidoc, Broadcast Push; status_codes.asciidoc, 4xxx: a receiver's error goes back to the
client "when the request was not a Broadcast Push")."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Db, Hub, Services, hub_env, register_at_hub, start_hub
from tests.parties import envelope, token_header
from tests.test_routing import LOCATION, _roles, party_key


def _rows(db, request_id: str, count: int, timeout: float = 10.0):  # type: ignore[no-untyped-def]
    query = ("SELECT to_party_id, from_party_id, routing, http_status, ocpi_status_code, error FROM routing_log"
             " WHERE request_id = $1 AND from_party_id = 'HUB'")  # fmt: skip
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = db.run(db.fetch(query, request_id))
        if len(rows) >= count:
            return {row["to_party_id"]: row for row in rows}
        time.sleep(0.1)
    raise AssertionError(f"fewer than {count} copies logged for {request_id}")


def test_a_broadcast_is_answered_at_once_and_each_copys_row_says_how_its_receiver_answered(
    hub: Hub, connect_party, db
) -> None:
    cpo = connect_party(_roles("CPO"))
    cc, pid = party_key(cpo)
    path = f"/ocpi/2.2.1/locations/receiver/{cc}/{pid}/LOC1"
    well = connect_party(_roles("EMSP"))
    slow = connect_party(_roles("EMSP"), delay_s=3.0)  # past the test hub's 2 s forward timeout
    gone = connect_party(_roles("EMSP"))
    refusing = connect_party(_roles("EMSP"))
    refusing.canned[("PUT", path)] = (400, json.dumps(envelope(None, 2001, "no publish")).encode(), {})
    html = connect_party(_roles("EMSP"))
    html.canned[("PUT", path)] = (502, b"<html>Bad Gateway</html>", {"Content-Type": "text/html"})
    gone.stop()
    started = time.monotonic()
    answer = cpo.call(hub.base, "PUT", f"receiver/locations/{cc}/{pid}/LOC1", to=("NL", "HUB"),
                      body=LOCATION | {"party_id": pid}, headers={"X-Request-ID": "bcast-mixed"})  # fmt: skip
    assert time.monotonic() - started < 2.5  # not held up by the slow one (3 s)
    assert answer.status_code == 200 and answer.json()["status_code"] == 1000, answer.text
    copies = _rows(db, "bcast-mixed", 5)
    assert all(row["routing"] == "broadcast" for row in copies.values())

    def told(party):  # type: ignore[no-untyped-def]
        return copies[party_key(party)[1]]

    assert (told(well)["http_status"], told(well)["ocpi_status_code"]) == (200, 1000)
    assert told(slow)["ocpi_status_code"] == 4002
    assert told(gone)["ocpi_status_code"] == 4003
    assert (told(refusing)["http_status"], told(refusing)["ocpi_status_code"]) == (400, 2001)
    assert told(html)["http_status"] == 502 and told(html)["ocpi_status_code"] is None


@pytest.fixture
def hub_of_its_own(services: Services, empty_database: str, tmp_path: Path) -> Iterator[Hub]:
    """A hub of its own with two connections to a party server (one for each calling platform), and time for a copy to
    wait for one."""
    env = hub_env(services, tmp_path / "hub", OCPI_HUB_DATABASE_URL=empty_database,
                  OCPI_HUB_REDIS_PREFIX=f"{services.redis_prefix}bcast-{tmp_path.name}:",
                  OCPI_HUB_FORWARD_TIMEOUT_S="10", OCPI_HUB_PARTY_CONNECTIONS="2")  # fmt: skip
    running = start_hub(env, tmp_path / "hub.log")
    yield running
    running.stop()


def test_a_copy_waiting_for_a_connection_to_a_receiver_that_left_meanwhile_is_not_sent(
    hub_of_its_own: Hub, start_party, empty_database: str
) -> None:
    # mod_hub_client_info.asciidoc: a party that left is SUSPENDED, "no requests should be sent"; a copy decided while
    # it was there, and still waiting for a connection to it when it left, goes nowhere, and its row says why.
    hub, held = hub_of_its_own, threading.Event()
    cpo = register_at_hub(hub, start_party, _roles("CPO"))
    leaving = register_at_hub(hub, start_party, _roles("EMSP"), held=held)
    cc, pid = party_key(cpo)
    try:
        # the first copy takes the pushing platform's share of the connections there, and is held; the second waits
        for n in range(2):
            answer = cpo.call(hub.base, "PUT", f"receiver/locations/{cc}/{pid}/L{n}", to=("NL", "HUB"),
                              body=LOCATION | {"id": f"L{n}", "party_id": pid},
                              headers={"X-Request-ID": f"w-{n}"})  # fmt: skip
            assert answer.json()["status_code"] == 1000, answer.text
        deadline = time.monotonic() + 5
        while not leaving.functional() and time.monotonic() < deadline:
            time.sleep(0.05)
        left = httpx.delete(f"{hub.base}/ocpi/2.2.1/credentials", headers=token_header(leaving.hub_token or ""))
        assert left.json()["status_code"] == 1000, left.text
        time.sleep(1.5)  # the directory has it gone; the second copy still waits (for 5 s at most)
    finally:
        held.set()
    db = Db(empty_database)  # the hub's own database
    try:
        row = _rows(db, "w-1", 1)[party_key(leaving)[1]]
    finally:
        db.close()
    assert row["ocpi_status_code"] == 4003, row
    assert row["error"] == (f"receiver {'-'.join(party_key(leaving))} has left the hub (status SUSPENDED); its copy of "
                            "the broadcast, decided while it was connected, was not sent")  # fmt: skip
    assert sorted(r.path.rsplit("/", 1)[1] for r in leaving.functional()) == ["L0"]


def test_a_token_broadcast_no_cpo_took_yet_still_makes_its_emsp_the_receiver_of_open_authorizations(
    hub_of_its_own: Hub, start_party
) -> None:
    # The URL names the pushing eMSP as the token's owner whether or not a CPO was there to get a copy; a CPO that
    # connects later asks for an authorization without OCPI-to (mod_tokens.asciidoc, Real-time authorization).
    hub = hub_of_its_own
    emsp = register_at_hub(hub, start_party, _roles("EMSP"))
    cc, pid = party_key(emsp)
    uid = f"EARLY-{pid}"
    token = {"uid": uid, "country_code": cc, "party_id": pid, "type": "RFID", "contract_id": "C1", "issuer": "I",
             "valid": True, "whitelist": "ALLOWED", "last_updated": "2026-11-25T10:00:00Z"}  # fmt: skip
    pushed = emsp.call(hub.base, "PUT", f"receiver/tokens/{cc}/{pid}/{uid}", to=("NL", "HUB"), body=token)
    assert pushed.json()["status_message"] == "broadcast to 0 parties", pushed.text
    cpo = register_at_hub(hub, start_party, _roles("CPO"))
    time.sleep(0.5)  # the owner index is written in batches, some ms after the push
    answer = cpo.call(hub.base, "POST", f"sender/tokens/{uid.lower()}/authorize", body={})
    assert answer.json()["status_code"] == 1000, answer.text
    assert answer.headers["OCPI-from-party-id"] == pid


def test_a_token_a_cpo_pushes_as_its_own_makes_it_no_owner_the_authorizations_of_that_uid_go_to(
    hub_of_its_own: Hub, start_party
) -> None:
    # mod_tokens.asciidoc: a token's country_code and party_id are "of the eMSP that 'owns' this Token". A CPO's
    # broadcast of a token in its own name is relayed as any push, but does not make the uid ambiguous for open routing.
    hub = hub_of_its_own
    emsp, cpo = register_at_hub(hub, start_party, _roles("EMSP")), register_at_hub(hub, start_party, _roles("CPO"))
    uid = f"SHARED-{party_key(emsp)[1]}"
    for party in (cpo, emsp):
        cc, pid = party_key(party)
        token = {"uid": uid, "country_code": cc, "party_id": pid, "type": "RFID", "contract_id": "C1", "issuer": "I",
                 "valid": True, "whitelist": "ALLOWED", "last_updated": "2026-11-25T10:00:00Z"}  # fmt: skip
        pushed = party.call(hub.base, "PUT", f"receiver/tokens/{cc}/{pid}/{uid}", to=("NL", "HUB"), body=token)
        assert pushed.json()["status_code"] == 1000, pushed.text
    time.sleep(0.5)  # the owner index is written in batches, some ms after the push
    answer = cpo.call(hub.base, "POST", f"sender/tokens/{uid}/authorize", body={})
    assert answer.json()["status_code"] == 1000, answer.text
    assert answer.headers["OCPI-from-party-id"] == party_key(emsp)[1]
