"""One platform in the admin API (GET /admin/api/parties/{id}) and `ocpi-hub parties list|show|remove` on the running
hub's storage, removal doing what DELETE /admin/api/parties/{id} does; taking a platform off the hub, and who may."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import httpx

from tests.conftest import Hub, unique_party_id
from tests.parties import token_header
from tests.test_admin_and_cli import _cli, _platform_id
from tests.test_hub_client_info import _pushes_about, _wait_for
from tests.test_routing import _roles, party_key


def test_the_admin_api_shows_one_platform_as_the_list_shows_it(hub: Hub) -> None:
    pid = unique_party_id()
    invitation = hub.invite("One", ("CPO", "NL", pid), ("EMSP", "NL", pid))
    platform_id = invitation["platform_id"]
    with hub.admin() as admin:
        listed = [i for i in admin.get("/admin/api/parties").json()["items"] if i["platform_id"] == platform_id]
        answer = admin.get(f"/admin/api/parties/{platform_id}")
        assert answer.status_code == 200, answer.text
        shown = answer.json()
        assert shown["platform_id"] == platform_id and shown["name"] == "One" and shown["state"] == "INVITED"
        assert shown["roles"] == listed and shown["endpoints"] == [] and shown["last_seen"] is None
        assert shown["invitation_expires_at"] == invitation["expires_at"]
        assert admin.get("/admin/api/parties/999999999").status_code == 404
        assert admin.get("/admin/api/parties/abc").status_code == 404


def test_cli_parties_lists_shows_and_removes_only_with_yes(hub: Hub) -> None:
    pid = unique_party_id()
    invitation = hub.invite("Cli party", ("CPO", "NL", pid))
    platform_id = invitation["platform_id"]
    listed = _cli(hub, "parties", "list")
    assert listed.returncode == 0, listed.stderr
    assert any(i["platform_id"] == platform_id for i in json.loads(listed.stdout)["items"])
    shown = _cli(hub, "parties", "show", str(platform_id))
    assert shown.returncode == 0 and json.loads(shown.stdout)["name"] == "Cli party", shown.stderr
    assert _cli(hub, "parties", "show", "999999999").returncode == 1
    refused = _cli(hub, "parties", "remove", str(platform_id))
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert httpx.get(hub.versions_url, headers=token_header(invitation["token_a"])).status_code == 200
    removed = _cli(hub, "parties", "remove", str(platform_id), "--yes")
    assert removed.returncode == 0, removed.stderr
    assert json.loads(removed.stdout)["was"] == "INVITED"
    assert httpx.get(hub.versions_url, headers=token_header(invitation["token_a"])).status_code == 401
    with hub.admin() as admin:
        trail = admin.get("/admin/api/audit-trail").json()["items"]
    [entry] = [
        t for t in trail if t["action"] == "unregister_platform" and t["parameters"]["platform_id"] == platform_id
    ]
    assert entry["parameters"] == {"platform_id": platform_id, "name": "Cli party", "via": "cli"}
    assert entry["actor_kind"] == "admin" and entry["actor_name"].startswith("ocpi-hub parties (")
    assert _cli(hub, "parties", "remove", str(platform_id), "--yes").returncode == 1


def test_cli_parties_says_an_id_that_is_not_a_number_is_not_a_platform_id(hub: Hub) -> None:
    # A walkthrough: `parties show abc` answered "needs a platform id", one having been given.
    for given, said in ((["abc"], "'abc' is not a platform id, a number"), ([], "parties show needs a platform id")):
        done = _cli(hub, "parties", "show", *given)
        assert done.returncode == 2 and said in done.stderr, done.stderr


def test_a_removed_platforms_token_is_refused_saying_it_was_removed_and_when(hub: Hub, connect_party, db) -> None:  # type: ignore[no-untyped-def]
    cpo = connect_party(_roles("CPO"))
    platform_id = _platform_id(hub, party_key(cpo))
    invitation = hub.invite("Withdrawn", ("CPO", "NL", unique_party_id()))
    with hub.admin() as admin:
        for removed in (platform_id, invitation["platform_id"]):
            assert admin.delete(f"/admin/api/parties/{removed}").status_code == 200
    day = db.run(db.fetchval("SELECT unregistered_at FROM platform WHERE id = $1", platform_id))
    # on the credentials module (the hub's own) and on a relayed one alike, token C or an invitation's token A
    for token, url in ((cpo.hub_token, f"{hub.base}/ocpi/2.2.1/credentials"),
                       (cpo.hub_token, f"{hub.base}/ocpi/2.2.1/receiver/locations/NL/ABC/1"),
                       (invitation["token_a"], hub.versions_url)):  # fmt: skip
        answer = httpx.get(url, headers=token_header(token))
        assert answer.status_code == 401, answer.text
        message = answer.json()["status_message"]
        assert f"belonged to a platform removed from the hub on {day:%Y-%m-%d}" in message, message
    # a token never issued is still only unknown
    answer = httpx.get(hub.versions_url, headers=token_header("never-issued"))
    assert answer.json()["status_message"] == "unknown credentials token"


def test_the_operator_takes_a_platform_off_the_hub_and_the_party_is_told(hub: Hub, connect_party, db) -> None:
    watcher = connect_party(_roles("EMSP"))
    cpo = connect_party(_roles("CPO"))
    key = party_key(cpo)
    platform_id = _platform_id(hub, key)
    with hub.admin() as admin:
        before = datetime.now(UTC)
        answer = admin.delete(f"/admin/api/parties/{platform_id}")
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"platform_id": platform_id, "name": cpo.name, "was": "REGISTERED",
                                 "party_told": True, "party_answer": None}  # fmt: skip
        again = admin.delete(f"/admin/api/parties/{platform_id}")
        assert again.status_code == 404 and "unregistered already" in again.json()["error"]
        trail = admin.get("/admin/api/audit-trail").json()["items"]
        [left] = [i for i in admin.get("/admin/api/parties").json()["items"] if i["platform_id"] == platform_id]
    # when it left, for an auditor asking (an UNREGISTERED role showed no time: found by a walkthrough)
    assert left["status"] == "UNREGISTERED" and datetime.fromisoformat(left["status_since"]) >= before
    assert next(t["parameters"] for t in trail if t["action"] == "unregister_platform") == {
        "platform_id": platform_id, "name": cpo.name}  # fmt: skip
    # credentials.asciidoc: "Both parties must end any automated communication": the party heard it, with token B
    told = [r for r in cpo.received if (r.method, r.path) == ("DELETE", "/ocpi/2.2.1/credentials")]
    assert len(told) == 1 and cpo.hub_credentials is None
    rows = db.run(db.fetch("SELECT routing, module, method, http_status, ocpi_status_code FROM routing_log "
                           "WHERE module = 'credentials' AND to_party_id = $1", key[1]))  # fmt: skip
    assert [tuple(r.values()) for r in rows] == [("hub", "credentials", "DELETE", 200, 1000)]
    # The party's token stops working, nobody reaches it any more, and the others hear it is SUSPENDED.
    assert httpx.get(f"{hub.base}/ocpi/2.2.1/credentials", headers=token_header(cpo.hub_token)).status_code == 401
    refused = watcher.call(hub.base, "GET", "sender/locations", to=key)  # not "unknown": the list says SUSPENDED
    assert refused.json()["status_code"] == 4003, refused.text
    assert f"{key[0]}-{key[1]} has left the hub (status SUSPENDED)" in refused.json()["status_message"]
    assert not [r for r in cpo.functional() if r.method == "GET"]
    assert _wait_for(lambda: "SUSPENDED" in [p["status"] for p in _pushes_about(watcher, key)])
    # Its party id is free for a new invitation.
    assert hub.invite("Successor", ("CPO", *key))["platform_id"] != platform_id


def test_withdrawing_an_unused_invitation_stops_its_token_a(hub: Hub) -> None:
    pid = unique_party_id()
    invitation = hub.invite("Never came", ("CPO", "NL", pid))
    with hub.admin() as admin:
        answer = admin.delete(f"/admin/api/parties/{invitation['platform_id']}")
        assert answer.status_code == 200, answer.text
        assert answer.json()["was"] == "INVITED" and answer.json()["party_told"] is None
        assert admin.delete("/admin/api/parties/999999999").status_code == 404
    assert httpx.get(hub.versions_url, headers=token_header(invitation["token_a"])).status_code == 401


def test_an_auditor_cannot_take_a_platform_off_the_hub(hub: Hub) -> None:
    invitation = hub.invite("Stays", ("CPO", "NL", unique_party_id()))
    name = f"auditor-{unique_party_id()}"
    token = json.loads(_cli(hub, "auditor", "add", name).stdout)["token"]
    answer = httpx.delete(f"{hub.base}/admin/api/parties/{invitation['platform_id']}",
                          headers={"Authorization": f"Bearer {token}"})  # fmt: skip
    assert answer.status_code == 403
    assert httpx.get(hub.versions_url, headers=token_header(invitation["token_a"])).status_code == 200
