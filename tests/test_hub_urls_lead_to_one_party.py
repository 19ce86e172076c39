"""A hub URL (a response_url for a result, a paging Link, a relayed CDR's Location) leads to the one party it was
handed out for: OCPI-to headers naming another are refused, none at all are fine (open routing)."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest

from tests.conftest import Hub, unique_party_id
from tests.parties import envelope, token_header
from tests.test_admin_and_cli import _platform_id
from tests.test_departed_party import _leave
from tests.test_hub_client_info import _wait_for
from tests.test_routing import _roles, party_key

RESULT_PATH = "/ocpi/2.2.1/commands/sender/R1"  # where the test eMSP answers 1000
COMMAND = ("POST", "receiver/commands/START_SESSION", {"location_id": "L1", "token": {"uid": "T1"}})
HUB = ("NL", "HUB")
CHARGING_PROFILE = ("PUT", "receiver/chargingprofiles/S1", {"charging_profile": {"charging_rate_unit": "W"}})


@pytest.mark.parametrize("request_", [COMMAND, CHARGING_PROFILE], ids=["command", "charging-profile"])
@pytest.mark.parametrize("addressed", ["another-emsp", "the-hub"])
def test_a_result_addressed_to_another_party_than_the_requester_is_refused_with_2001_and_not_forwarded(
    hub: Hub, connect_party, db, request_: tuple[str, str, dict], addressed: str
) -> None:
    emsp, cpo, other_emsp = connect_party(_roles("EMSP")), connect_party(_roles("CPO")), connect_party(_roles("EMSP"))
    method, path, body = request_
    response_url = f"{emsp.base}{RESULT_PATH}"
    sent = emsp.call(hub.base, method, path, to=party_key(cpo), body=body | {"response_url": response_url})
    assert sent.json()["status_code"] == 1000, sent.text
    [forwarded] = cpo.functional()
    response_url = json.loads(forwarded.body)["response_url"]  # the hub's
    wrong = party_key(other_emsp) if addressed == "another-emsp" else ("NL", "HUB")
    request_id = str(uuid.uuid4())
    refused = cpo.call(hub.base, "POST", response_url, to=wrong, body={"result": "ACCEPTED"},
                       headers={"X-Request-ID": request_id})  # fmt: skip
    assert refused.json()["status_code"] == 2001, refused.text
    emsp_name = "-".join(party_key(emsp))
    assert refused.json()["status_message"] == (
        f"the result posted to this response_url is for {emsp_name}, which sent the request it answers, but the "
        f"OCPI-to headers name {'-'.join(wrong)}: nothing was forwarded; send it with OCPI-to {emsp_name}, or without "
        "OCPI-to headers"
    )
    assert emsp.functional() == [] and other_emsp.functional() == []
    [row] = db.run(db.fetch("SELECT routing, ocpi_status_code, forwarded_request_id FROM routing_log "
                            "WHERE request_id = $1", request_id))  # fmt: skip
    assert (row["routing"], row["ocpi_status_code"], row["forwarded_request_id"]) == ("rejected", 2001, None)
    # Addressed to the requester (in any case: CiString), or not addressed at all, it goes through.
    named = cpo.call(hub.base, "POST", response_url, to=tuple(p.lower() for p in party_key(emsp)),  # type: ignore[arg-type]
                     body={"result": "ACCEPTED"})  # fmt: skip
    assert named.json()["status_code"] == 1000, named.text
    unnamed = cpo.call(hub.base, "POST", response_url, body={"result": "ACCEPTED"})
    assert unnamed.json()["status_code"] == 1000, unnamed.text
    assert [r.path for r in emsp.functional()] == [RESULT_PATH, RESULT_PATH]


def test_a_result_posted_with_ocpi_from_of_another_platform_is_refused_with_2001_and_not_forwarded(
    hub: Hub, connect_party
) -> None:
    emsp, cpo, other_cpo = connect_party(_roles("EMSP")), connect_party(_roles("CPO")), connect_party(_roles("CPO"))
    method, path, body = COMMAND
    sent = emsp.call(
        hub.base, method, path, to=party_key(cpo), body=body | {"response_url": f"{emsp.base}{RESULT_PATH}"}
    )
    assert sent.json()["status_code"] == 1000, sent.text
    response_url = json.loads(cpo.functional()[0].body)["response_url"]  # the hub's
    spoofed = cpo.call(hub.base, "POST", response_url, from_=party_key(other_cpo), body={"result": "ACCEPTED"})
    assert spoofed.json()["status_code"] == 2001, spoofed.text
    assert spoofed.json()["status_message"].startswith(
        f"OCPI-from {'-'.join(party_key(other_cpo))} is not a party of the calling platform"
    )
    assert emsp.functional() == []
    own = cpo.call(hub.base, "POST", response_url, body={"result": "ACCEPTED"})  # its own OCPI-from
    assert own.json()["status_code"] == 1000, own.text


@pytest.mark.parametrize("gone", ["left the hub", "suspended"])
def test_a_result_for_a_requester_no_longer_connected_answers_4003_and_its_row_names_both_ends(
    hub: Hub, connect_party, db, gone: str
) -> None:
    # The result cannot be posted again later (mod_commands: "OCPI does not allow/require retries"): the auditor
    # looking for the eMSP's lost result finds the row under that eMSP, and from the CPO party the command went to (the
    # second of its platform's, which posts without routing headers), as a row of a result relayed is.
    emsp = connect_party(_roles("EMSP"))
    cpo = connect_party(("CPO", "NL", unique_party_id()), ("CPO", "NL", unique_party_id()))
    to_cpo = (cpo.roles[1][1], cpo.roles[1][2])
    method, path, body = COMMAND
    sent = emsp.call(hub.base, method, path, to=to_cpo, body=body | {"response_url": f"{emsp.base}{RESULT_PATH}"})
    assert sent.json()["status_code"] == 1000, sent.text
    response_url = json.loads(cpo.functional()[0].body)["response_url"]
    if gone == "left the hub":
        _leave(emsp, hub)
    else:
        with hub.admin() as admin:
            suspended = admin.post(f"/admin/api/parties/{_platform_id(hub, party_key(emsp))}/suspend",
                                   json={"reason": "test"})  # fmt: skip
            assert suspended.status_code == 200, suspended.text
    request_id = str(uuid.uuid4())
    result = httpx.post(response_url, headers=token_header(cpo.hub_token or "") | {"X-Request-ID": request_id},
                        json={"result": "ACCEPTED"})  # fmt: skip
    assert result.json()["status_code"] == 4003, result.text
    # worded as a direct request to the eMSP is refused (routing.decide.why_not_sendable)
    told = ("has left the hub (status SUSPENDED)" if gone == "left the hub"
            else "is suspended by the hub operator: nothing is routed to it until it is resumed")  # fmt: skip
    assert result.json()["status_message"] == f"the party behind {response_url.removeprefix(hub.base)} {told}"
    assert (result.headers["OCPI-to-country-code"], result.headers["OCPI-to-party-id"]) == to_cpo
    assert [r.path for r in emsp.functional()] == []
    [row] = db.run(db.fetch("SELECT routing, from_country_code, from_party_id, to_country_code, to_party_id, "
                            "forwarded_request_id FROM routing_log WHERE request_id = $1", request_id))  # fmt: skip
    assert dict(row) == {"routing": "rejected", "from_country_code": to_cpo[0], "from_party_id": to_cpo[1],
                         "to_country_code": party_key(emsp)[0], "to_party_id": party_key(emsp)[1],
                         "forwarded_request_id": None}  # fmt: skip


def test_a_paging_link_followed_with_ocpi_to_of_another_party_is_refused_and_not_forwarded(
    hub: Hub, connect_party
) -> None:
    emsp, cpo, other_cpo = connect_party(_roles("EMSP")), connect_party(_roles("CPO")), connect_party(_roles("CPO"))
    cpo.objects["locations"] = [{"id": f"L{i}"} for i in range(15)]
    link = emsp.call(hub.base, "GET", "sender/locations", to=party_key(cpo)).headers["Link"]
    url = link.split(">")[0].lstrip("<")
    refused = emsp.call(hub.base, "GET", url, to=party_key(other_cpo))
    assert refused.json()["status_code"] == 2001, refused.text
    assert refused.json()["status_message"].startswith(f"this page is of the list of {'-'.join(party_key(cpo))}")
    assert len(cpo.functional()) == 1 and other_cpo.functional() == []
    page = emsp.call(hub.base, "GET", url, to=party_key(cpo)).json()["data"]
    assert [o["id"] for o in page] == [f"L{i}" for i in range(10, 15)]


def test_a_cache_page_link_followed_with_ocpi_to_of_another_party_is_refused_with_a_row(
    hub: Hub, connect_party, db
) -> None:
    emsp, cpo = connect_party(_roles("EMSP")), connect_party(_roles("CPO"))
    cc, pid = party_key(cpo)
    for n in range(2):
        location = {"country_code": cc, "party_id": pid, "id": f"PAGE{n}", "publish": True,
                    "last_updated": "2026-11-25T08:00:00Z"}  # fmt: skip
        pushed = cpo.call(hub.base, "PUT", f"receiver/locations/{cc}/{pid}/PAGE{n}", to=party_key(emsp), body=location)
        assert pushed.json()["status_code"] == 1000, pushed.text
    query = f"sender/locations?country_code={cc}&party_id={pid}&limit=1"
    # the cache is written off the pushes' path: a page of both, whenever that is
    first = _wait_for(lambda: (page := emsp.call(hub.base, "GET", query, to=HUB)).headers.get("X-Total-Count") == "2"
                      and page, timeout=30)  # fmt: skip
    url = first.headers["Link"].split(">")[0].lstrip("<")
    request_id = str(uuid.uuid4())
    refused = emsp.call(hub.base, "GET", url, to=party_key(cpo), headers={"X-Request-ID": request_id})
    assert refused.json()["status_code"] == 2001, refused.text
    assert refused.json()["status_message"] == (
        "this page is of the hub's own list of locations (GET All via the hub), but the OCPI-to headers name "
        f"{cc}-{pid}: nothing was forwarded; send it with OCPI-to NL-HUB, or without OCPI-to headers"
    )
    [row] = db.run(db.fetch("SELECT routing, ocpi_status_code, from_party_id, to_party_id FROM routing_log "
                            "WHERE request_id = $1", request_id))  # fmt: skip
    assert tuple(row) == ("rejected", 2001, party_key(emsp)[1], pid)
    for to in (HUB, None):
        followed = emsp.call(hub.base, "GET", url, to=to)
        assert followed.json()["status_code"] == 1000 and len(followed.json()["data"]) == 1, followed.text
    assert cpo.functional() == []


def test_a_paging_link_followed_for_a_party_its_platform_has_since_left_out_of_its_credentials_is_refused(
    hub: Hub, connect_party
) -> None:
    # Its direct requests are refused (2001, status SUSPENDED); the next page of a list it had begun was forwarded as
    # it.
    kept, dropped = _roles("EMSP"), _roles("EMSP")
    platform, cpo = connect_party(kept, dropped), connect_party(_roles("CPO"))
    cpo.objects["tariffs"] = [{"id": f"T{i}"} for i in range(15)]
    link = platform.call(hub.base, "GET", "sender/tariffs", from_=dropped[1:], to=party_key(cpo)).headers["Link"]
    platform.roles = [kept]
    answer = httpx.put(f"{hub.base}/ocpi/2.2.1/credentials", headers=token_header(platform.hub_token or ""),
                       json=platform.credentials(platform.token_b)).json()  # fmt: skip
    assert answer["status_code"] == 1000, answer
    platform.hub_token = answer["data"]["token"]
    refused = platform.call(hub.base, "GET", link.split(">")[0].lstrip("<"), from_=kept[1:]).json()
    assert refused["status_code"] == 2001 and "status SUSPENDED" in refused["status_message"], refused
    assert len(cpo.functional()) == 1  # the first page only


@pytest.mark.parametrize(
    ("request_", "status", "answered"),
    [(COMMAND, 200, envelope({"result": "REJECTED", "timeout": 30})),
     (COMMAND, 200, envelope({"result": "UNKNOWN_SESSION", "timeout": 30})),
     (COMMAND, 200, envelope(None, 2001, "no such location")),
     (COMMAND, 500, envelope(None, 3000, "down")),
     (COMMAND, 502, {"detail": "bad gateway"}),
     (COMMAND, 401, envelope(None, 2000, "unknown token")),
     (CHARGING_PROFILE, 200, envelope({"result": "UNKNOWN_SESSION", "timeout": 30})),
     (CHARGING_PROFILE, 200, envelope({"result": "NOT_SUPPORTED", "timeout": 30}))],
    ids=["command-rejected", "command-unknown-session", "command-ocpi-2001", "command-http-500",
         "command-not-ocpi", "command-hub-token-refused", "charging-profile-unknown-session",
         "charging-profile-not-supported"],
)  # fmt: skip
def test_a_response_url_whose_request_the_cpo_refused_is_released_and_a_later_result_is_refused_as_unknown(
    hub: Hub, connect_party, request_: tuple[str, str, dict], status: int, answered: dict
) -> None:
    # mod_commands.asciidoc, CommandResponseType (and mod_charging_profiles.asciidoc, ChargingProfileResponseType):
    # only ACCEPTED says a result will be sent to the response_url. The hub kept its own for 48 hours all the same,
    # and a stray POST to it was relayed to the requester.
    emsp, cpo = connect_party(_roles("EMSP")), connect_party(_roles("CPO"))
    method, path, body = request_
    interface, module, rest = path.split("/", 2)
    cpo.canned[(method, f"/ocpi/2.2.1/{module}/{interface}/{rest}")] = (status, json.dumps(answered).encode(), {})
    emsp.call(hub.base, method, path, to=party_key(cpo), body=body | {"response_url": f"{emsp.base}{RESULT_PATH}"})
    [forwarded] = cpo.functional()
    response_url = json.loads(forwarded.body)["response_url"]
    assert response_url.startswith(f"{hub.base}/ocpi/2.2.1/results/"), response_url
    stray = cpo.call(hub.base, "POST", response_url, body={"result": "ACCEPTED"})
    assert stray.status_code == 404, stray.text
    assert stray.json()["status_message"].endswith("is unknown, expired, or not yours"), stray.text
    assert emsp.functional() == []
