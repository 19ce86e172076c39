"""The operator suspends a registered platform for a while and resumes it (POST /admin/api/parties/{id}/suspend and
/resume, `ocpi-hub parties suspend|resume`, the console): its requests refused saying why, nothing routed or broadcast
to it, its roles OFFLINE for the others; resumed, all of it works again."""

from __future__ import annotations

import json
import time

import httpx

from tests.conftest import Hub, unique_party_id
from tests.parties import token_header
from tests.test_admin_and_cli import _cli, _platform_id
from tests.test_hub_client_info import _pushes_about, _wait_for
from tests.test_operations import _metric
from tests.test_routing import _roles, party_key, push_location


def _status_message(answer: httpx.Response) -> str:
    return str(answer.json()["status_message"])


def test_a_suspended_platform_is_refused_saying_why_and_gets_nothing_until_it_is_resumed(
    hub: Hub, connect_party, db
) -> None:  # type: ignore[no-untyped-def]
    cpo, emsp = connect_party(_roles("CPO"), name="CPO"), connect_party(_roles("EMSP"), name="Suspended eMSP")
    watcher = connect_party(_roles("EMSP"), name="Watcher")
    emsp_id = _platform_id(hub, party_key(emsp))
    with hub.admin() as admin:
        answer = admin.post(f"/admin/api/parties/{emsp_id}/suspend", json={"reason": "invoice 42 unpaid"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["state"] == "SUSPENDED" and answer.json()["suspended_reason"] == "invoice 42 unpaid"
        shown = admin.get(f"/admin/api/parties/{emsp_id}").json()
    assert shown["state"] == "SUSPENDED" and shown["suspended_reason"] == "invoice 42 unpaid", shown
    assert [r["status"] for r in shown["roles"]] == ["OFFLINE"] and shown["roles"][0]["suspended_at"]
    # its own requests, relayed or to the hub's own modules, are refused saying why
    for url in (f"{hub.base}/ocpi/2.2.1/receiver/locations/NL/X/1", f"{hub.base}/ocpi/2.2.1/credentials"):
        refused = httpx.get(url, headers=token_header(emsp.hub_token))
        assert refused.status_code == 401, refused.text
        assert "suspended by the hub operator since" in _status_message(refused)
        assert "(invoice 42 unpaid)" in _status_message(refused)
    # nothing is routed to it: 4003 saying it is suspended, and nothing reached it
    before = len(emsp.functional())
    routed = push_location(cpo, hub.base, party_key(emsp))
    assert routed.json()["status_code"] == 4003, routed.text
    assert "is suspended by the hub operator" in _status_message(routed)
    assert len(emsp.functional()) == before
    # the other parties see its role OFFLINE
    assert _wait_for(lambda: "OFFLINE" in [p["status"] for p in _pushes_about(watcher, party_key(emsp))])
    # on purpose: the operator's alert on parties OFFLINE (deploy/prometheus) leaves it out
    status = {"party": "-".join(party_key(emsp)), "role": "EMSP"}
    assert _metric(hub, "ocpi_hub_party_status", **status, status="OFFLINE", suspended="true") == 1
    assert _metric(hub, "ocpi_hub_party_status", **status, suspended="false") == 0
    # the relayed module's refusal is a row of the routing log, naming the caller
    row = db.run(db.fetchrow("SELECT routing FROM routing_log WHERE caller_platform_id = $1 AND http_status = 401 "
                             "AND module = 'locations' ORDER BY id DESC LIMIT 1", emsp_id))  # fmt: skip
    assert row is not None and row["routing"] == "rejected"

    with hub.admin() as admin:
        assert admin.post(f"/admin/api/parties/{emsp_id}/suspend", json={"reason": "again"}).status_code == 409
        answer = admin.post(f"/admin/api/parties/{emsp_id}/resume")
        assert answer.status_code == 200 and answer.json()["state"] == "REGISTERED", answer.text
        assert admin.post(f"/admin/api/parties/{emsp_id}/resume").status_code == 409
        trail = admin.get("/admin/api/audit-trail").json()["items"]
    actions = [t["action"] for t in trail if t["parameters"].get("platform_id") == emsp_id]
    assert "suspend_platform" in actions and "resume_platform" in actions
    # its token works again at once; its role comes back CONNECTED once the probe finds it answering
    assert httpx.get(hub.versions_url, headers=token_header(emsp.hub_token)).status_code == 200
    assert _wait_for(lambda: _pushes_about(watcher, party_key(emsp))[-1]["status"] == "CONNECTED", timeout=20)
    assert _metric(hub, "ocpi_hub_party_status", **status, status="CONNECTED", suspended="false") == 1
    assert push_location(cpo, hub.base, party_key(emsp)).json()["status_code"] == 1000
    assert len(emsp.functional()) == before + 1


def test_a_suspended_party_gets_no_broadcast_copy(hub: Hub, connect_party) -> None:  # type: ignore[no-untyped-def]
    cpo = connect_party(_roles("CPO"))
    emsp, other = connect_party(_roles("EMSP")), connect_party(_roles("EMSP"))
    with hub.admin() as admin:
        suspended = _platform_id(hub, party_key(emsp))
        assert admin.post(f"/admin/api/parties/{suspended}/suspend", json={"reason": "test"}).status_code == 200
    answer = push_location(cpo, hub.base, ("NL", "HUB"))
    assert answer.json()["status_code"] == 1000, answer.text
    _wait_for(other.functional)
    time.sleep(0.3)  # the copies go out together: had it got one, it would have by now
    assert emsp.functional() == []


def test_suspension_is_refused_for_an_invitation_and_without_a_one_line_reason(hub: Hub) -> None:
    invited = hub.invite("Not yet", ("CPO", "NL", unique_party_id()))["platform_id"]
    with hub.admin() as admin:
        answer = admin.post(f"/admin/api/parties/{invited}/suspend", json={"reason": "x"})
        assert answer.status_code == 409 and "has not registered yet" in answer.json()["error"], answer.text
        # a final newline too: msgspec's pattern check let "$" match before it
        for body in ({}, {"reason": ""}, {"reason": "a\nb"}, {"reason": "late\n"}, {"reason": "x", "until": "no"}):
            answer = admin.post(f"/admin/api/parties/{invited}/suspend", json=body)
            assert answer.status_code == 400 and "invalid suspension" in answer.json()["error"], (body, answer.text)
        assert admin.post("/admin/api/parties/999999999/suspend", json={"reason": "x"}).status_code == 404
        assert admin.post(f"/admin/api/parties/{invited}/resume").status_code == 409


def test_cli_parties_suspend_and_resume(hub: Hub, connect_party) -> None:  # type: ignore[no-untyped-def]
    emsp = connect_party(_roles("EMSP"))
    platform_id = _platform_id(hub, party_key(emsp))
    missing = _cli(hub, "parties", "suspend", str(platform_id))
    assert missing.returncode == 2 and "--reason" in missing.stderr
    suspended = _cli(hub, "parties", "suspend", str(platform_id), "--reason", "maintenance of the contract")
    assert suspended.returncode == 0, suspended.stderr
    assert json.loads(suspended.stdout)["state"] == "SUSPENDED"
    # the running hub hears of it through Redis
    assert _wait_for(lambda: httpx.get(hub.versions_url, headers=token_header(emsp.hub_token)).status_code == 401)
    resumed = _cli(hub, "parties", "resume", str(platform_id))
    assert resumed.returncode == 0 and json.loads(resumed.stdout)["state"] == "REGISTERED", resumed.stderr
    assert _wait_for(lambda: httpx.get(hub.versions_url, headers=token_header(emsp.hub_token)).status_code == 200)
    with hub.admin() as admin:
        trail = admin.get("/admin/api/audit-trail").json()["items"]
    [entry] = [t for t in trail if t["action"] == "suspend_platform" and t["parameters"]["platform_id"] == platform_id]
    assert entry["parameters"]["via"] == "cli" and entry["parameters"]["reason"] == "maintenance of the contract"
    assert _cli(hub, "parties", "resume", str(platform_id)).returncode == 1
