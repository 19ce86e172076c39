"""Broadcast push, open routing and the URLs the hub rewrites (response_url, paging Link, CDR Location)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import secrets
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import redis as redis_sync
import redis.asyncio as redis

from storage.routing_state import RoutingState
from tests.conftest import OUTPUT, Hub, Services, hub_env, start_hub, unique_party_id
from tests.parties import token_header
from tests.test_routing import LOCATION, _roles, party_key


def _wait_for(condition, timeout: float = 5.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := condition():
            return found
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_broadcast_push_reaches_every_party_of_the_opposite_role_and_logs_each_copy(
    hub: Hub, connect_party, db
) -> None:
    cpo = connect_party(_roles("CPO"))
    emsps = [connect_party(_roles("EMSP")) for _ in range(2)]
    other = connect_party(_roles("OTHER"))
    fellow_cpo = connect_party(_roles("CPO"))
    cc, pid = party_key(cpo)
    body = LOCATION | {"party_id": pid}
    answer = cpo.call(
        hub.base,
        "PUT",
        f"receiver/locations/{cc}/{pid}/LOC1",
        to=("NL", "HUB"),
        body=body,
        headers={"X-Request-ID": "bcast-1"},
    )
    assert answer.json()["status_code"] == 1000
    assert answer.headers["OCPI-from-party-id"] == "HUB" and answer.headers["OCPI-to-party-id"] == pid
    for receiver in [*emsps, other]:
        [got] = _wait_for(receiver.functional)
        assert got.path == f"/ocpi/2.2.1/locations/receiver/{cc}/{pid}/LOC1"  # the owner stays in the URL
        assert (got.headers["OCPI-from-party-id"], got.headers["OCPI-to-party-id"]) == ("HUB", receiver.roles[0][2])
        assert json.loads(got.body) == body
    assert fellow_cpo.functional() == []
    query = "SELECT routing, to_party_id, from_party_id, http_status FROM routing_log WHERE request_id = 'bcast-1'"
    # A copy's row is written once that copy is answered; the session's earlier parties get copies too (in any order).
    receivers = {p.roles[0][2] for p in [*emsps, other]}
    rows = _wait_for(lambda: (found := db.run(db.fetch(query))) and receivers <= {r["to_party_id"] for r in found}
                     and found)  # fmt: skip
    assert [(r["routing"], r["to_party_id"]) for r in rows if r["from_party_id"] == pid] == [("broadcast", "HUB")]
    copies = {r["to_party_id"]: r["http_status"] for r in rows if r["from_party_id"] == "HUB"}
    assert all(copies[p.roles[0][2]] == 200 for p in [*emsps, other])


def test_broadcast_is_refused_for_sessions_and_cdrs(hub: Hub, connect_party) -> None:
    cpo = connect_party(_roles("CPO"))
    cc, pid = party_key(cpo)
    answer = cpo.call(hub.base, "PUT", f"receiver/sessions/{cc}/{pid}/S1", to=("NL", "HUB"), body={"id": "S1"})
    assert answer.json()["status_code"] == 2001
    assert "broadcast push is not allowed for sessions" in answer.json()["status_message"]


def test_open_routing_sends_a_command_to_the_owner_of_its_location(hub: Hub, connect_party) -> None:
    cpo, other_cpo = connect_party(_roles("CPO")), connect_party(_roles("CPO"))
    emsp = connect_party(_roles("EMSP"))
    cc, pid = party_key(cpo)
    location_id = f"LOC-{unique_party_id()}"
    for _ in range(2):  # its owner seen again: still the one owner
        cpo.call(
            hub.base,
            "PUT",
            f"receiver/locations/{cc}/{pid}/{location_id}",
            to=party_key(emsp),
            body=LOCATION | {"id": location_id},
        )
        time.sleep(0.2)  # the owner index is written in batches
    answer = emsp.call(hub.base, "POST", "receiver/commands/START_SESSION",
                       body={"response_url": "https://emsp.example/cmd/9", "location_id": location_id,
                             "token": {"uid": "T"}})  # fmt: skip
    assert answer.json()["status_code"] == 1000, answer.text
    assert [r.path for r in cpo.functional()] == ["/ocpi/2.2.1/commands/receiver/START_SESSION"]
    assert other_cpo.functional() == []


def test_open_routing_sends_a_real_time_authorization_to_the_token_owner(hub: Hub, connect_party) -> None:
    emsp, cpo = connect_party(_roles("EMSP")), connect_party(_roles("CPO"))
    cc, pid = party_key(emsp)
    uid = f"TOK{unique_party_id()}"
    emsp.call(hub.base, "PUT", f"receiver/tokens/{cc}/{pid}/{uid}", to=party_key(cpo), body={"uid": uid})
    time.sleep(0.2)
    answer = cpo.call(hub.base, "POST", f"sender/tokens/{uid}/authorize?type=RFID", body={})
    assert answer.json()["status_code"] == 1000, answer.text
    [got] = [r for r in emsp.functional() if r.path.endswith("/authorize")]
    assert got.query == "type=RFID"


def test_a_token_broadcast_makes_its_emsp_the_receiver_of_open_authorizations(hub: Hub, connect_party) -> None:
    emsp, cpo = connect_party(_roles("EMSP")), connect_party(_roles("CPO"))
    cc, pid = party_key(emsp)
    uid = f"TOK{unique_party_id()}"
    pushed = emsp.call(hub.base, "PUT", f"receiver/tokens/{cc}/{pid}/{uid}", to=("NL", "HUB"), body={"uid": uid})
    assert pushed.json()["status_code"] == 1000, pushed.text
    assert _wait_for(lambda: [r for r in cpo.functional() if r.path.endswith(uid)])  # the copy went out
    answer = _wait_for(lambda: (a := cpo.call(hub.base, "POST", f"sender/tokens/{uid}/authorize", body={})).json()
                       ["status_code"] == 1000 and a)  # fmt: skip
    assert [r.path for r in emsp.functional() if r.path.endswith(f"/{uid}/authorize")], answer.text


def test_an_open_session_patch_goes_to_the_emsp_of_that_cpos_session_though_another_cpo_uses_its_id(
    hub: Hub, connect_party
) -> None:
    # Session ids are unique per CPO only; a PATCH's URL names the CPO, so the hub can tell the two sessions apart.
    pairs = [(connect_party(_roles("CPO")), connect_party(_roles("EMSP"))) for _ in range(2)]
    session_id = f"S-{unique_party_id()}"
    for cpo, emsp in pairs:
        cc, pid = party_key(cpo)
        put = cpo.call(hub.base, "PUT", f"receiver/sessions/{cc}/{pid}/{session_id}", to=party_key(emsp),
                       body={"id": session_id, "country_code": cc, "party_id": pid})  # fmt: skip
        assert put.json()["status_code"] == 1000, put.text
    time.sleep(0.2)  # the owner index is written in batches
    (cpo, emsp), (_, other_emsp) = pairs
    cc, pid = party_key(cpo)
    patched = cpo.call(hub.base, "PATCH", f"receiver/sessions/{cc}/{pid}/{session_id}", body={"kwh": 1.5})
    assert patched.json()["status_code"] == 1000, patched.text
    assert [r.method for r in emsp.functional()] == ["PUT", "PATCH"]
    assert [r.method for r in other_emsp.functional()] == ["PUT"]


def test_an_open_session_get_goes_to_the_emsp_the_session_was_pushed_to(hub: Hub, connect_party) -> None:
    # transport_and_format.asciidoc: "Open Routing Requests are possible for GET (Not GET ALL), POST, PUT, PATCH and
    # DELETE": the hub knows the receiver of a session it relayed, for a GET as for a PATCH.
    cpo, emsp, other_emsp = connect_party(_roles("CPO")), connect_party(_roles("EMSP")), connect_party(_roles("EMSP"))
    cc, pid = party_key(cpo)
    session_id = f"S-{unique_party_id()}"
    put = cpo.call(hub.base, "PUT", f"receiver/sessions/{cc}/{pid}/{session_id}", to=party_key(emsp),
                   body={"id": session_id, "country_code": cc, "party_id": pid})  # fmt: skip
    assert put.json()["status_code"] == 1000, put.text
    answer = _wait_for(lambda: (a := cpo.call(hub.base, "GET", f"receiver/sessions/{cc}/{pid}/{session_id}")).json()
                       ["status_code"] == 1000 and a)  # fmt: skip
    assert answer.headers["OCPI-from-party-id"] == party_key(emsp)[1]
    assert [r.method for r in emsp.functional()] == ["PUT", "GET"]
    assert other_emsp.functional() == []


def test_open_request_the_hub_cannot_place_answers_a_clear_error(hub: Hub, connect_party) -> None:
    emsp = connect_party(_roles("EMSP"))
    answer = emsp.call(
        hub.base,
        "POST",
        "receiver/commands/START_SESSION",
        body={"response_url": "https://x/y", "location_id": "NEVER-SEEN"},
    )
    assert answer.json()["status_code"] == 4001
    assert "OCPI-to" in answer.json()["status_message"]
    # The hub reads an open request's body to route it: one that is no JSON is HTTP 400 (status_codes.asciidoc).
    broken = emsp.call(hub.base, "POST", "receiver/commands/START_SESSION", content=b'{"location_id": "LOC1", ')
    assert (broken.status_code, broken.json()["status_code"]) == (400, 2001), broken.text
    assert "not valid JSON" in broken.json()["status_message"]


def test_open_routing_refuses_a_location_id_two_cpos_have_and_forwards_nothing(hub: Hub, connect_party, db) -> None:
    # Location.id is unique "within the CPO's platform" only: the hub must not guess which CPO is meant.
    cpos, emsp = [connect_party(_roles("CPO")) for _ in range(2)], connect_party(_roles("EMSP"))
    location_id = f"LOC1-{unique_party_id()}"
    for cpo in cpos:
        cc, pid = party_key(cpo)
        answer = cpo.call(hub.base, "PUT", f"receiver/locations/{cc}/{pid}/{location_id}", to=party_key(emsp),
                          body=LOCATION | {"id": location_id, "party_id": pid})  # fmt: skip
        assert answer.json()["status_code"] == 1000, answer.text
        time.sleep(0.2)  # the owner index is written in batches: the second owner arrives in a batch of its own
    request_id = f"ambiguous-{location_id}"
    answer = emsp.call(hub.base, "POST", "receiver/commands/START_SESSION", headers={"X-Request-ID": request_id},
                       body={"response_url": "https://emsp.example/cmd/1", "location_id": location_id,
                             "token": {"uid": "T"}})  # fmt: skip
    assert answer.json()["status_code"] == 4001, answer.text
    message = answer.json()["status_message"]
    assert f"location {location_id} belongs to several parties" in message
    assert all(f"{cc}-{pid}" in message for cc, pid in map(party_key, cpos))
    assert "OCPI-to-country-code and OCPI-to-party-id" in message
    assert [cpo.functional() for cpo in cpos] == [[], []]
    query = "SELECT routing, to_party_id, ocpi_status_code FROM routing_log WHERE request_id = $1"
    rows = _wait_for(lambda: db.run(db.fetch(query, request_id)))
    assert [tuple(row) for row in rows] == [("rejected", None, 4001)]


def test_a_location_id_a_cpo_that_left_the_hub_also_had_is_routed_to_the_cpo_still_on_it(
    hub: Hub, connect_party
) -> None:
    # The owner index keeps what it saw; a party taken off the hub owns nothing to route to any more.
    gone, staying = connect_party(_roles("CPO")), connect_party(_roles("CPO"))
    emsp = connect_party(_roles("EMSP"))
    location_id = f"LOC1-{unique_party_id()}"
    for cpo in (gone, staying):
        cc, pid = party_key(cpo)
        answer = cpo.call(hub.base, "PUT", f"receiver/locations/{cc}/{pid}/{location_id}", to=party_key(emsp),
                          body=LOCATION | {"id": location_id, "party_id": pid})  # fmt: skip
        assert answer.json()["status_code"] == 1000, answer.text
        time.sleep(0.2)  # each owner in a batch of its own
    with hub.admin() as admin:
        [platform] = [p for p in admin.get("/admin/api/parties").json()["items"] if p["party_id"] == party_key(gone)[1]]
        assert admin.delete(f"/admin/api/parties/{platform['platform_id']}").status_code == 200
    body = {"response_url": "https://emsp.example/cmd/1", "location_id": location_id, "token": {"uid": "T"}}
    answer = emsp.call(hub.base, "POST", "receiver/commands/START_SESSION", body=body)
    assert answer.json()["status_code"] == 1000, answer.text
    assert [r.path for r in staying.functional() if "commands" in r.path] == [
        "/ocpi/2.2.1/commands/receiver/START_SESSION"
    ]
    assert not [r for r in gone.functional() if "commands" in r.path]


def test_open_routing_refuses_an_authorization_of_a_token_uid_two_emsps_have(hub: Hub, connect_party) -> None:
    emsps, cpo = [connect_party(_roles("EMSP")) for _ in range(2)], connect_party(_roles("CPO"))
    uid = f"TOK{unique_party_id()}"
    for emsp in emsps:
        cc, pid = party_key(emsp)
        emsp.call(hub.base, "PUT", f"receiver/tokens/{cc}/{pid}/{uid}", to=party_key(cpo), body={"uid": uid})
    time.sleep(0.2)  # both owners may also land in one batch of the owner index
    answer = cpo.call(hub.base, "POST", f"sender/tokens/{uid}/authorize?type=RFID", body={})
    assert answer.json()["status_code"] == 4001, answer.text
    assert f"token {uid} belongs to several parties" in answer.json()["status_message"]
    assert [emsp.functional() for emsp in emsps] == [[], []]


def test_an_owner_seen_again_stays_the_one_owner_and_another_makes_the_id_ambiguous(services: Services) -> None:
    async def run() -> None:
        client = redis.Redis.from_url(services.redis_url)
        state = RoutingState(client, f"{services.redis_prefix}owners-{secrets.token_hex(4)}:", owners_period_s=3600)
        try:
            async with state.running(interval_s=0.01):
                state.note_owner("locations", "LOC1", ("NL", "AAA"), ())
                state.note_owner("locations", "LOC1", ("NL", "AAA"), ())
                await asyncio.sleep(0.1)
                state.note_owner("locations", "LOC1", ("NL", "AAA"), ())
                await asyncio.sleep(0.1)
                assert await state.owners("locations", "LOC1") == [("NL", "AAA")]
                assert await state.owner("locations", "LOC1") == ("NL", "AAA")
                state.note_owner("locations", "LOC1", ("DE", "BBB"), ())
                assert await state.owners("locations", "LOC1") == [("DE", "BBB"), ("NL", "AAA")]  # not yet written
                await asyncio.sleep(0.1)
                state.note_owner("locations", "LOC1", ("NL", "AAA"), ())
                await asyncio.sleep(0.1)
                assert await state.owners("locations", "LOC1") == [("DE", "BBB"), ("NL", "AAA")]
                assert await state.owner("locations", "LOC1") is None
        finally:
            await client.aclose()

    asyncio.run(run())


def test_command_result_is_relayed_to_the_original_response_url_via_another_hub_process(
    hub: Hub, connect_party, services: Services, tmp_path: Path
) -> None:
    emsp, cpo = connect_party(_roles("EMSP")), connect_party(_roles("CPO"))
    original = f"{emsp.base}/ocpi/2.2.1/commands/sender/START_SESSION/42"
    answer = emsp.call(hub.base, "POST", "receiver/commands/START_SESSION", to=party_key(cpo),
                       body={"response_url": original, "location_id": "L1", "token": {"uid": "T1"}},
                       headers={"X-Correlation-ID": "cmd-corr-1"})  # fmt: skip
    assert answer.json()["data"] == {"result": "ACCEPTED", "timeout": 30}
    [command] = cpo.functional()
    replaced = json.loads(command.body)["response_url"]
    assert replaced.startswith(f"{hub.base}/ocpi/2.2.1/results/") and "emsp" not in replaced
    assert json.loads(command.body)["token"] == {"uid": "T1"}
    # The CPO posts its result later, without routing headers, to another hub process behind the same URL.
    second = start_hub(hub_env(services, tmp_path, OCPI_HUB_ADMIN_TOKEN=hub.admin_token), OUTPUT / "hub-3.log")
    try:
        result = httpx.post(replaced.replace(hub.base, second.base), headers=token_header(cpo.hub_token),
                            json={"result": "ACCEPTED"})  # fmt: skip
    finally:
        second.stop()
    assert result.json()["status_code"] == 1000, result.text
    [delivered] = [r for r in emsp.functional() if r.path.endswith("/START_SESSION/42")]
    assert json.loads(delivered.body) == {"result": "ACCEPTED"}
    assert delivered.headers["X-Correlation-ID"] == "cmd-corr-1"
    assert (delivered.headers["OCPI-from-party-id"], delivered.headers["OCPI-to-party-id"]) == (
        party_key(cpo)[1],
        party_key(emsp)[1],
    )
    # Nobody but the CPO that got the command may post to that URL.
    stranger = httpx.post(replaced, headers=token_header(emsp.hub_token), json={"result": "REJECTED"})
    assert stranger.status_code == 404


DAY_S = 24 * 3600


@pytest.mark.parametrize(
    ("command", "expiry_date", "kept_s"),
    [
        # mod_commands: the CPO cancels a reservation by posting CANCELED_RESERVATION to the RESERVE_NOW's
        # response_url, at any time before expiry_date: kept until then and a day
        ("RESERVE_NOW", 5 * DAY_S, 6 * DAY_S),
        ("RESERVE_NOW", "9999-12-31T23:59:59Z", 90 * DAY_S),  # capped
        ("RESERVE_NOW", "next Tuesday", 2 * DAY_S),  # the CPO judges the command; the hub keeps its default
        ("RESERVE_NOW", None, 2 * DAY_S),
        ("START_SESSION", None, 2 * DAY_S),
    ],
    ids=["reserve-5-days", "reserve-year-9999", "reserve-unparsable-expiry", "reserve-no-expiry", "start-session"],
)
def test_a_command_response_url_is_kept_until_its_reservation_ends(  # type: ignore[no-untyped-def]
    hub: Hub, connect_party, services: Services, command, expiry_date, kept_s
) -> None:
    emsp, cpo = connect_party(_roles("EMSP")), connect_party(_roles("CPO"))
    body = {"response_url": "https://emsp.example/cmd/7", "location_id": "L1", "token": {"uid": "T1"},
            "reservation_id": "R1"}  # fmt: skip
    if isinstance(expiry_date, int):
        expiry_date = datetime.fromtimestamp(time.time() + expiry_date, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if expiry_date is not None:
        body["expiry_date"] = expiry_date
    answer = emsp.call(hub.base, "POST", f"receiver/commands/{command}", to=party_key(cpo), body=body)
    assert answer.json()["status_code"] == 1000, answer.text
    [got] = cpo.functional()
    key = json.loads(got.body)["response_url"].rsplit("/", 1)[1]
    client = redis_sync.Redis.from_url(services.redis_url)
    try:
        ttl = client.ttl(f"{services.redis_prefix}results:{key}")
    finally:
        client.close()
    assert kept_s - 120 <= ttl <= kept_s


def test_charging_profile_response_url_in_the_query_is_rewritten_and_the_rest_of_the_query_kept_as_written(
    hub: Hub, connect_party
) -> None:
    scsp, cpo = connect_party(_roles("SCSP")), connect_party(_roles("CPO"))
    # The parameters the hub has no reason to touch reach the CPO as the SCSP wrote them (a re-encoding would turn
    # "%7E" into "~" and "a%20b" into "a+b"): bodies and queries pass through, but for the response_url.
    answer = scsp.call(
        hub.base,
        "GET",
        "receiver/chargingprofiles/S1?duration=900&response_url=https://scsp.example/r%3Fid%3D7&x=%7Ea%20b",
        to=party_key(cpo),
    )
    assert answer.json()["status_code"] == 1000
    [got] = cpo.functional()
    duration, response_url, extra = got.raw_path.partition("?")[2].split("&")
    assert (duration, extra) == ("duration=900", "x=%7Ea%20b")
    assert response_url.startswith("response_url=") and "scsp.example" not in got.query and "results" in got.query


def test_a_charging_profile_get_without_a_duration_in_whole_seconds_is_refused_and_not_forwarded(
    hub: Hub, connect_party
) -> None:
    # mod_charging_profiles.asciidoc, GET {session_id}?duration={duration}&response_url={url}: duration, int, required.
    scsp, cpo = connect_party(_roles("SCSP")), connect_party(_roles("CPO"))
    for query, said in (("response_url=https://scsp.example/r", "is required"),
                        ("duration=15m&response_url=https://scsp.example/r", "is required, got '15m'"),
                        ("duration=-900&response_url=https://scsp.example/r", "is required, got '-900'")):  # fmt: skip
        answer = scsp.call(hub.base, "GET", f"receiver/chargingprofiles/S1?{query}", to=party_key(cpo))
        assert answer.json()["status_code"] == 2001, answer.text
        assert answer.json()["status_message"].startswith("the duration query parameter") and said in answer.text
    assert cpo.functional() == []


def test_an_open_active_charging_profile_update_goes_to_the_party_that_set_a_profile_on_that_cpos_session(
    hub: Hub, connect_party
) -> None:
    # mod_charging_profiles.asciidoc, Sender PUT: the CPO calls it only for a session whose Sender "has at least once
    # successfully called the charging profile Receiver PUT interface", so that Sender is the receiver.
    senders = {"modules": {"chargingprofiles": ["SENDER"]}}
    scsp, emsp = connect_party(_roles("SCSP"), **senders), connect_party(_roles("EMSP"), **senders)
    cpo, other_cpo = connect_party(_roles("CPO")), connect_party(_roles("CPO"))
    session_id = f"S-{unique_party_id()}"
    profile = {"charging_profile": {"charging_rate_unit": "W"}, "response_url": "https://scsp.example/r/1"}
    put = scsp.call(hub.base, "PUT", f"receiver/chargingprofiles/{session_id}", to=party_key(cpo), body=profile)
    assert put.json()["status_code"] == 1000, put.text
    update = {"start_date_time": "2026-12-04T10:00:00Z", "charging_profile": {"charging_rate_unit": "W"}}
    answer = _wait_for(lambda: (a := cpo.call(hub.base, "PUT", f"sender/chargingprofiles/{session_id}",
                                              body=update)).json()["status_code"] == 1000 and a)  # fmt: skip
    assert answer.headers["OCPI-from-party-id"] == party_key(scsp)[1]
    [got] = scsp.functional()
    assert (got.method, got.path.endswith(f"/{session_id}"), json.loads(got.body)) == ("PUT", True, update)
    # Another CPO's session of the same id had no profile set by anyone: the hub cannot tell, and says so.
    unknown = other_cpo.call(hub.base, "PUT", f"sender/chargingprofiles/{session_id}", body=update)
    assert unknown.json()["status_code"] == 4001 and "OCPI-to" in unknown.json()["status_message"], unknown.text
    # Once a second Sender set a profile on the session, an update could be for either: refused, both named.
    put = emsp.call(hub.base, "PUT", f"receiver/chargingprofiles/{session_id}", to=party_key(cpo), body=profile)
    assert put.json()["status_code"] == 1000, put.text
    refused = _wait_for(lambda: (a := cpo.call(hub.base, "PUT", f"sender/chargingprofiles/{session_id}",
                                               body=update)).json()["status_code"] == 4001 and a)  # fmt: skip
    assert "several parties" in refused.json()["status_message"] and party_key(emsp)[1] in refused.text
    seen_by_scsp = len(scsp.functional())  # an update sent before the second Sender's note was written reached it
    again = cpo.call(hub.base, "PUT", f"sender/chargingprofiles/{session_id}", body=update)
    assert again.json()["status_code"] == 4001 and len(scsp.functional()) == seen_by_scsp and emsp.functional() == []


def test_paging_links_lead_back_through_the_hub_to_the_end_without_gaps(hub: Hub, connect_party) -> None:
    emsp = connect_party(_roles("EMSP"))
    cpo = connect_party(_roles("CPO"), page_size=7)
    cpo.objects["locations"] = [{"id": f"L{i:03d}"} for i in range(50)]
    seen, url, pages = [], "sender/locations?limit=7", 0
    while url:
        answer = emsp.call(hub.base, "GET", url, to=party_key(cpo))
        assert answer.json()["status_code"] == 1000, answer.text
        assert answer.headers["X-Total-Count"] == "50" and answer.headers["X-Limit"] == "7"
        seen += [o["id"] for o in answer.json()["data"]]
        link = answer.headers.get("Link")
        url = link.split(">")[0].lstrip("<") if link else None
        assert url is None or (url.startswith(f"{hub.base}/ocpi/2.2.1/pages/") and cpo.base not in link)
        pages += 1
    assert seen == [f"L{i:03d}" for i in range(50)] and pages == 8
    # The party's own query (offset/limit) reached it on every page.
    assert [r.query for r in cpo.functional()][-1] == "limit=7&offset=49"


def test_cdr_location_is_rewritten_and_leads_to_the_emsp(hub: Hub, connect_party) -> None:
    cpo, emsp = connect_party(_roles("CPO")), connect_party(_roles("EMSP"))
    answer = cpo.call(hub.base, "POST", "receiver/cdrs", to=party_key(emsp), body={"id": "CDR-77"})
    assert answer.status_code == 201
    location = answer.headers["Location"]
    assert location.startswith(f"{hub.base}/ocpi/2.2.1/relayed-cdrs/")
    fetched = cpo.call(hub.base, "GET", location)
    assert fetched.json()["data"] == {"id": "CDR-77", "served_by": emsp.name}
    assert emsp.functional()[-1].path == "/ocpi/2.2.1/cdrs/receiver/CDR-77"
    assert cpo.call(hub.base, "GET", location.replace("relayed-cdrs/", "relayed-cdrs/x")).status_code == 404


@pytest.mark.parametrize("to", [("NL", "HUB"), None])
def test_get_all_on_a_receiver_interface_is_refused(hub: Hub, connect_party, to) -> None:  # type: ignore[no-untyped-def]
    cpo = connect_party(_roles("CPO"))
    cc, pid = party_key(cpo)
    answer = cpo.call(hub.base, "GET", f"receiver/locations/{cc}/{pid}/L1", to=to)
    assert answer.json()["status_code"] in (2001, 4001)


def test_stopping_while_owner_notes_are_written_finishes_and_keeps_every_note(services: Services) -> None:
    # redis-py drops a cancel that lands inside a pipeline (redis/redis-py#2028): a flusher stopped by cancelling it
    # could go on sleeping forever and the hub never exit (seen: SIGTERM under load, the lifespan stuck here).
    async def run() -> None:
        client = redis.Redis.from_url(services.redis_url)
        prefix = f"{services.redis_prefix}owners-{secrets.token_hex(4)}:"
        noted = 0
        try:
            for round_ in range(20):
                state = RoutingState(client, prefix, owners_period_s=3600)
                async with contextlib.AsyncExitStack() as stack:
                    await stack.enter_async_context(state.running(interval_s=0.0005))
                    until = time.monotonic() + random.uniform(0.001, 0.02)
                    while time.monotonic() < until:
                        state.note_owner("locations", f"L{noted}", ("NL", f"R{round_}"), ())
                        noted += 1
                        await asyncio.sleep(0)
                    closing = asyncio.ensure_future(stack.aclose())
                    done, _ = await asyncio.wait({closing}, timeout=5)
                    assert done, f"round {round_}: the owner-note flusher did not stop"
            stored = await client.hgetall(f"{prefix}owners:locations")
            assert len(stored) == noted
        finally:
            await client.aclose()

    asyncio.run(run())


def test_a_broadcast_whose_body_is_no_json_answers_400_and_no_party_gets_a_copy(hub: Hub, connect_party, db) -> None:
    cpo, emsp = connect_party(_roles("CPO")), connect_party(_roles("EMSP"))
    cc, pid = party_key(cpo)
    answer = cpo.call(hub.base, "PATCH", f"receiver/locations/{cc}/{pid}/LOC1", to=("NL", "HUB"), content=b"{",
                      headers={"X-Request-ID": "bcast-no-json", "Content-Type": "application/json"})  # fmt: skip
    assert answer.status_code == 400 and answer.json()["status_code"] == 2001, answer.text
    assert "not valid JSON" in answer.json()["status_message"]
    query = "SELECT routing, http_status FROM routing_log WHERE request_id = 'bcast-no-json'"
    time.sleep(0.5)  # copies would go out right after the answer
    assert [(r["routing"], r["http_status"]) for r in db.run(db.fetch(query))] == [("rejected", 400)]
    assert emsp.functional() == []


@pytest.mark.parametrize("to", [("NL", "HUB"), None])
@pytest.mark.parametrize("module", ["tariffs", "cdrs"])
def test_get_all_via_the_hub_of_a_module_it_does_not_combine_answers_an_ocpi_error(
    hub: Hub, connect_party, db, module: str, to
) -> None:  # type: ignore[no-untyped-def]
    # transport_and_format.asciidoc, GET All via Hubs: the hub advertises every Sender interface; for a module whose
    # objects it does not combine it answers in the OCPI envelope, not with a transport 404.
    emsp = connect_party(_roles("EMSP"))
    request_id = f"get-all-{module}-{secrets.token_hex(4)}"
    answer = emsp.call(hub.base, "GET", f"sender/{module}?limit=10", to=to, headers={"X-Request-ID": request_id})
    assert answer.status_code == 200, answer.text
    assert answer.json()["status_code"] == 2000
    assert "locations only" in answer.json()["status_message"] and "OCPI-to" in answer.json()["status_message"]
    assert answer.headers["OCPI-from-party-id"] == "HUB"
    rows = db.run(db.fetch("SELECT routing, http_status FROM routing_log WHERE request_id = $1", request_id))
    assert [(r["routing"], r["http_status"]) for r in rows] == [("rejected", 200)]


def test_a_broadcast_from_other_reaches_the_cpos_and_not_the_emsps_whatever_the_module(
    hub: Hub, connect_party, db
) -> None:
    # transport_and_format.asciidoc, Broadcast Push: "Messages from "Other" are only sent to CPOs and not to eMSPs
    # though." Recipients follow the sender's role; the module only decides who implements its Receiver interface.
    every_receiver = {m: ["SENDER", "RECEIVER"] for m in ("locations", "tariffs", "tokens")}
    other = connect_party(_roles("OTHER"))
    cpo = connect_party(_roles("CPO"), modules=every_receiver)
    emsp = connect_party(_roles("EMSP"), modules=every_receiver)
    cc, pid = party_key(other)
    request_id = f"bcast-other-{pid}"
    answer = other.call(hub.base, "PUT", f"receiver/tariffs/{cc}/{pid}/T1", to=("NL", "HUB"),
                        body={"id": "T1", "currency": "EUR"}, headers={"X-Request-ID": request_id})  # fmt: skip
    assert answer.json()["status_code"] == 1000, answer.text
    [got] = _wait_for(cpo.functional)
    assert got.path == f"/ocpi/2.2.1/tariffs/receiver/{cc}/{pid}/T1"
    query = "SELECT to_party_id FROM routing_log WHERE request_id = $1 AND from_party_id = 'HUB'"
    copies = _wait_for(lambda: {r["to_party_id"] for r in db.run(db.fetch(query, request_id))})
    time.sleep(0.5)  # every copy goes out at once: had the eMSP been one, it would be here by now
    assert party_key(cpo)[1] in copies and emsp.functional() == []
