"""Broadcast push and the URLs the hub rewrites (response_url, paging Link, CDR Location); open routing is in
test_open_routing.py."""

from __future__ import annotations

import json
import re
import secrets
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import redis as redis_sync

from tests.conftest import OUTPUT, Hub, Services, hub_env, start_hub
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


def test_a_push_without_ocpi_to_headers_is_broadcast_saying_so(hub: Hub, connect_party) -> None:
    cpo, emsp = connect_party(_roles("CPO")), connect_party(_roles("EMSP"))
    cc, pid = party_key(cpo)
    told = {}
    for to in (("NL", "HUB"), None):
        answer = cpo.call(
            hub.base, "PUT", f"receiver/locations/{cc}/{pid}/LOC1", to=to, body=LOCATION | {"party_id": pid}
        )
        assert answer.json()["status_code"] == 1000, answer.text
        told[to] = answer.json()["status_message"]
    assert re.fullmatch(r"broadcast to \d+ part(y|ies)", told[("NL", "HUB")]), told
    assert re.fullmatch(r"no OCPI-to headers: broadcast to \d+ part(y|ies)", told[None]), told
    assert len(_wait_for(lambda: emsp.functional()[1:])) == 1


def test_broadcast_is_refused_for_sessions_and_cdrs(hub: Hub, connect_party) -> None:
    cpo = connect_party(_roles("CPO"))
    cc, pid = party_key(cpo)
    answer = cpo.call(hub.base, "PUT", f"receiver/sessions/{cc}/{pid}/S1", to=("NL", "HUB"), body={"id": "S1"})
    assert answer.json()["status_code"] == 2001
    assert "broadcast push is not allowed for sessions" in answer.json()["status_message"]


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


def test_a_result_posted_without_a_correlation_id_is_answered_with_the_one_of_its_command(
    hub: Hub, connect_party, db
) -> None:
    # transport_and_format.asciidoc: "every response to this request SHALL contain the same ID". A result sent
    # without X-Correlation-ID joins its command's conversation (relayed on, and its row, with the command's): the
    # CPO's answer says so too, not a new one that no row and no party has.
    emsp, cpo = connect_party(_roles("EMSP")), connect_party(_roles("CPO"))
    sent = emsp.call(hub.base, "POST", "receiver/commands/STOP_SESSION", to=party_key(cpo),
                     body={"response_url": f"{emsp.base}/ocpi/2.2.1/commands/sender/5", "session_id": "S1"},
                     headers={"X-Correlation-ID": "stop-corr-1"})  # fmt: skip
    assert sent.json()["status_code"] == 1000, sent.text
    response_url = json.loads(cpo.functional()[0].body)["response_url"]
    result = httpx.post(response_url, headers=token_header(cpo.hub_token) | {"X-Request-ID": "stop-result-1"},
                        json={"result": "ACCEPTED"})  # fmt: skip
    assert result.json()["status_code"] == 1000, result.text
    assert (result.headers["X-Request-ID"], result.headers["X-Correlation-ID"]) == ("stop-result-1", "stop-corr-1")
    [delivered] = [r for r in emsp.functional() if r.path.endswith("/commands/sender/5")]
    assert delivered.headers["X-Correlation-ID"] == "stop-corr-1"
    [row] = db.run(db.fetch("SELECT correlation_id FROM routing_log WHERE request_id = 'stop-result-1'"))
    assert row["correlation_id"] == "stop-corr-1"
    # one sent with a correlation id of its own keeps it, in its answer as on its way
    own = httpx.post(response_url, headers=token_header(cpo.hub_token) | {"X-Correlation-ID": "cpo-own-1"},
                     json={"result": "ACCEPTED"})  # fmt: skip
    assert own.headers["X-Correlation-ID"] == "cpo-own-1"
    [*_, last] = [r for r in emsp.functional() if r.path.endswith("/commands/sender/5")]
    assert last.headers["X-Correlation-ID"] == "cpo-own-1"


@pytest.mark.parametrize(
    ("path", "body", "acts_on"),
    [
        ("receiver/commands/STOP_SESSION", {"session_id": "{id}"}, "session"),
        ("receiver/commands/RESERVE_NOW", {"reservation_id": "{id}", "location_id": "L1"}, "reservation"),
        ("receiver/chargingprofiles/{id}", {"charging_profile": {"charging_rate_unit": "W"}}, "session"),
    ],
    ids=["stop-session", "reserve-now", "charging-profile"],
)
def test_a_request_and_its_asynchronous_result_are_found_by_what_it_acts_on_whatever_correlation_id_the_result_has(
    hub: Hub, connect_party, path: str, body: dict, acts_on: str
) -> None:
    # An auditor with a disputed session or reservation finds the command about it, and its result: a CPO that posts
    # the result with an X-Correlation-ID of its own puts it in another conversation.
    emsp, cpo = connect_party(_roles("EMSP")), connect_party(_roles("CPO"))
    object_id = f"{acts_on}-{secrets.token_hex(4)}"
    module = path.split("/")[1]
    callback = f"{emsp.base}/ocpi/2.2.1/{module}/sender/{object_id}"
    body = json.loads(json.dumps(body).replace("{id}", object_id)) | {"response_url": callback}
    sent = emsp.call(hub.base, "PUT" if "chargingprofiles" in path else "POST", path.replace("{id}", object_id),
                     to=party_key(cpo), body=body, headers={"X-Request-ID": f"{object_id}-request"})  # fmt: skip
    assert sent.json()["status_code"] == 1000, sent.text
    [forwarded] = cpo.functional()
    result = httpx.post(json.loads(forwarded.body)["response_url"], json={"result": "ACCEPTED"},
                        headers=token_header(cpo.hub_token) | {"X-Request-ID": f"{object_id}-result",
                                                               "X-Correlation-ID": "the-cpo-s-own"})  # fmt: skip
    assert result.json()["status_code"] == 1000, result.text
    with hub.admin() as admin:
        found = admin.get("/admin/api/routing-log", params={"object_id": object_id}).json()["items"]
    assert sorted(item["request_id"] for item in found) == [f"{object_id}-request", f"{object_id}-result"]


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
    body = {"response_url": f"{emsp.base}/cmd/7", "location_id": "L1", "token": {"uid": "T1"},
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
        f"receiver/chargingprofiles/S1?duration=900&response_url={scsp.base}/r%3Fid%3D7&x=%7Ea%20b",
        to=party_key(cpo),
    )
    assert answer.json()["status_code"] == 1000
    [got] = cpo.functional()
    duration, response_url, extra = got.raw_path.partition("?")[2].split("&")
    assert (duration, extra) == ("duration=900", "x=%7Ea%20b")
    assert response_url.startswith("response_url=") and scsp.base not in got.query and "results" in got.query


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


def test_a_paging_link_followed_with_an_offset_or_limit_of_the_callers_asks_the_receiver_for_those(
    hub: Hub, connect_party
) -> None:
    # They were dropped: the page at the Link's own offset came back (an eMSP developer's walkthrough).
    emsp = connect_party(_roles("EMSP"))
    cpo = connect_party(_roles("CPO"), page_size=10)
    cpo.objects["locations"] = [{"id": f"L{i:03d}"} for i in range(30)]
    link = emsp.call(hub.base, "GET", "sender/locations?limit=10", to=party_key(cpo)).headers["Link"]
    url = link.split(">")[0].lstrip("<")
    lowered = emsp.call(hub.base, "GET", f"{url}?offset=9")
    assert [o["id"] for o in lowered.json()["data"]][:2] == ["L009", "L010"], lowered.text
    assert [r.query for r in cpo.functional()][-1] == "limit=10&offset=9"


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
    # objects it does not combine it answers in the OCPI envelope, not with a transport 404. Without OCPI-to it is no
    # open routing either ("Open Routing Requests are possible for GET (Not GET ALL)"): 4001, the receiver unknown.
    emsp = connect_party(_roles("EMSP"))
    request_id = f"get-all-{module}-{secrets.token_hex(4)}"
    answer = emsp.call(hub.base, "GET", f"sender/{module}?limit=10", to=to, headers={"X-Request-ID": request_id})
    assert answer.status_code == 200, answer.text
    assert answer.json()["status_code"] == (2000 if to else 4001), answer.text
    message = answer.json()["status_message"]
    assert "locations only" in message and "OCPI-to-country-code and OCPI-to-party-id" in message
    assert to or message.startswith(f"no OCPI-to headers on a GET All of {module}:"), message
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

    def copies_logged() -> set[str]:
        return {r["to_party_id"] for r in db.run(db.fetch(query, request_id))}

    # A copy's row is written once it is delivered, each with its own commit: the CPO may have its copy, and the rows
    # of the shared hub's other CPOs be in, before its own (seen in CI on a slow machine).
    _wait_for(lambda: party_key(cpo)[1] in copies_logged())
    time.sleep(0.5)  # every copy goes out at once: had the eMSP been one, it would be here by now
    assert emsp.functional() == [] and party_key(emsp)[1] not in copies_logged()


def test_ocpi_to_naming_the_callers_own_party_or_half_given_says_so(hub: Hub, connect_party) -> None:
    emsp = connect_party(_roles("EMSP"))
    cc, pid = party_key(emsp)
    itself = emsp.call(hub.base, "GET", "sender/locations/L1", to=(cc, pid)).json()
    assert itself["status_code"] == 4000 and itself["status_message"].startswith(
        f"the OCPI-to headers name the calling platform's own party: receiver {cc}-{pid} does not implement"
    ), itself
    for header, missing in (("OCPI-to-country-code", "OCPI-to-party-id"), ("OCPI-to-party-id", "OCPI-to-country-code")):
        half = emsp.call(hub.base, "GET", "sender/locations/L1", headers={header: "NL"}).json()
        assert half["status_code"] == 2001 and half["status_message"] == (
            f"{missing} is missing: {header} ('NL') comes with it"
        ), half
