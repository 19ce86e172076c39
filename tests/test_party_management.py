"""One platform in the admin API (GET /admin/api/parties/{id}) and `ocpi-hub parties list|show|remove` on the running
hub's storage, removal doing what DELETE /admin/api/parties/{id} does."""

from __future__ import annotations

import json

import httpx

from tests.conftest import Hub, unique_party_id
from tests.parties import token_header
from tests.test_admin_and_cli import _cli, _platform_id
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
