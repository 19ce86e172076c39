"""The operator's side: the admin API, `ocpi-hub invite`, `ocpi-hub connect` and the settings check."""

from __future__ import annotations

import getpass
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from storage.log_row import body_of
from tests.conftest import ROOT, Hub, unique_party_id
from tests.parties import Party, envelope, free_port, token_header
from tests.test_hub_client_info import _pushes_about, _wait_for
from tests.test_routing import _roles, party_key


def _cli(hub: Hub, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hub.cli", *args], env=hub.env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def test_admin_api_requires_the_admin_token(hub: Hub) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Token {hub.admin_token}"}):
        answer = httpx.get(f"{hub.base}/admin/api/parties", headers=headers)
        assert answer.status_code == 401
        assert "admin" in answer.json()["error"]


def test_invitation_answers_token_a_and_versions_url(hub: Hub) -> None:
    pid = unique_party_id()
    invitation = hub.invite("Fresh CPO", ("CPO", "NL", pid))
    assert invitation["versions_url"] == hub.versions_url
    assert httpx.get(hub.versions_url, headers=token_header(invitation["token_a"])).status_code == 200
    with hub.admin() as admin:
        items = admin.get("/admin/api/parties").json()["items"]
    [item] = [i for i in items if i["party_id"] == pid]
    assert item == {
        "country_code": "NL",
        "party_id": pid,
        "role": "CPO",
        "platform": "Fresh CPO",
        "platform_id": invitation["platform_id"],
        "status": "PLANNED",
        "registered_at": None,
        "last_seen": None,
        "token_encoding": "base64",
        "endpoints_from_before": None,
        "endpoints_next_try": None,
    }
    # The operator's action is in the audit trail: who invited whom with which roles, never the token A.
    with hub.admin() as admin:
        trail = admin.get("/admin/api/audit-trail").json()["items"]
    [entry] = [t for t in trail if t["action"] == "invite" and t["parameters"]["platform_id"] == item["platform_id"]]
    assert entry["parameters"] == {"platform_id": item["platform_id"], "name": "Fresh CPO", "roles": [f"CPO NL-{pid}"]}
    assert entry["actor_kind"] == "admin" and invitation["token_a"] not in json.dumps(trail)


def test_invitation_for_a_party_id_held_by_another_platform_answers_409(hub: Hub) -> None:
    pid = unique_party_id()
    hub.invite("First", ("CPO", "NL", pid))
    with hub.admin() as admin:
        same_role = admin.post(
            "/admin/api/invitations",
            json={"name": "Second", "roles": [{"role": "CPO", "country_code": "nl", "party_id": pid.lower()}]},
        )
        other_role = admin.post(
            "/admin/api/invitations",
            json={"name": "Third", "roles": [{"role": "EMSP", "country_code": "NL", "party_id": pid}]},
        )
        hub_itself = admin.post(
            "/admin/api/invitations",
            json={"name": "Impostor", "roles": [{"role": "CPO", "country_code": "NL", "party_id": "HUB"}]},
        )
    assert same_role.status_code == 409 and f"NL-{pid}" in same_role.json()["error"]
    assert other_role.status_code == 409
    assert hub_itself.status_code == 409 and "the hub itself" in hub_itself.json()["error"]


@pytest.mark.parametrize(
    "body",
    [
        {"name": "x", "roles": []},
        {"name": "", "roles": [{"role": "CPO", "country_code": "NL", "party_id": "ABC"}]},
        {"name": "x", "roles": [{"role": "CPO", "country_code": "NLD", "party_id": "ABC"}]},
        {"name": "x", "roles": [{"role": "HUB", "country_code": "NL", "party_id": "ABC"}]},
        {"name": "x", "roles": [{"role": "CPO", "country_code": "NL", "party_id": "ABC"}] * 2},
        {"name": "a\x00b", "roles": [{"role": "CPO", "country_code": "NL", "party_id": "ABC"}]},  # PostgreSQL: no NUL
    ],
)
def test_invalid_invitation_answers_400(hub: Hub, body: dict) -> None:
    with hub.admin() as admin:
        answer = admin.post("/admin/api/invitations", json=body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]


def test_cli_invite_prints_the_same_json_and_the_running_hub_accepts_the_token(hub: Hub) -> None:
    pid = unique_party_id()
    result = _cli(hub, "invite", "--name", "CLI Co", "--role", f"CPO:NL:{pid}", "--role", f"EMSP:NL:{pid}")
    assert result.returncode == 0, result.stderr
    invitation = json.loads(result.stdout)
    assert set(invitation) >= {"token_a", "versions_url"}
    assert [r["role"] for r in invitation["roles"]] == ["CPO", "EMSP"]
    # The running hub learns of the new token within a second (directory change announced through Redis).
    import time

    deadline = time.monotonic() + 2
    while httpx.get(hub.versions_url, headers=token_header(invitation["token_a"])).status_code != 200:
        assert time.monotonic() < deadline, "the running hub did not accept the new token A"
        time.sleep(0.05)


def test_a_cli_invitation_is_in_the_audit_trail_as_the_command_lines_never_with_its_token_a(hub: Hub) -> None:
    pid = unique_party_id()
    result = _cli(hub, "invite", "--name", "CLI Audited", "--role", f"CPO:NL:{pid}")
    assert result.returncode == 0, result.stderr
    invitation = json.loads(result.stdout)
    with hub.admin() as admin:
        trail = admin.get("/admin/api/audit-trail").json()["items"]
    [entry] = [
        t for t in trail if t["action"] == "invite" and t["parameters"]["platform_id"] == invitation["platform_id"]
    ]
    assert entry["parameters"] == {"platform_id": invitation["platform_id"], "name": "CLI Audited",
                                   "roles": [f"CPO NL-{pid}"], "via": "cli"}  # fmt: skip
    assert (entry["actor_kind"], entry["actor_name"]) == ("admin", f"ocpi-hub invite ({getpass.getuser()})")
    assert invitation["token_a"] not in json.dumps(trail)


def test_cli_invite_rejects_a_malformed_role(hub: Hub) -> None:
    result = _cli(hub, "invite", "--name", "x", "--role", "CPO-NL-ABC")
    assert result.returncode == 2
    assert "ROLE:CC:PARTY" in result.stderr and "'CPO-NL-ABC' has 1 part, not 3" in result.stderr


def test_connect_registers_the_hub_at_a_party(hub: Hub, start_party, db) -> None:
    pid = unique_party_id()
    party = start_party(("CPO", "DE", pid), ("EMSP", "DE", pid))
    result = _cli(
        hub,
        "connect",
        "--versions-url",
        party.versions_url,
        f"--token-a={party.token_a}",  # a token may start with '-': the = form keeps argparse from misreading it
        "--name",
        "Party That Invited Us",
    )
    assert result.returncode == 0, result.stderr + result.stdout
    connected = json.loads(result.stdout)
    assert {r["role"] for r in connected["roles"]} == {"CPO", "EMSP"}
    # The party received the hub's credentials and checked them against the running hub.
    assert party.hub_credentials["roles"][0]["role"] == "HUB"
    answer = httpx.get(f"{hub.base}/ocpi/2.2.1/credentials", headers=token_header(party.hub_token))
    assert answer.status_code == 200 and answer.json()["status_code"] == 1000
    # The hub stored the party's new token and calls it with that from now on.
    platform = db.run(
        db.fetchrow(
            "SELECT p.state, count(e.*) AS endpoints FROM platform p JOIN platform_endpoint e ON e.platform_id = p.id "
            "WHERE p.id = $1 GROUP BY p.state",
            connected["platform_id"],
        )
    )
    assert platform["state"] == "REGISTERED" and platform["endpoints"] > 3
    with hub.admin() as admin:
        items = [i for i in admin.get("/admin/api/parties").json()["items"] if i["party_id"] == pid]
    assert {i["status"] for i in items} == {"CONNECTED"}


def test_connect_with_a_wrong_token_a_fails_with_a_clear_message(hub: Hub, start_party) -> None:
    party = start_party(("CPO", "DE", unique_party_id()))
    result = _cli(hub, "connect", "--versions-url", party.versions_url, "--token-a", "wrong")
    assert result.returncode == 1
    assert "HTTP 401" in result.stderr
    broken = _cli(hub, "connect", "--versions-url", "http://[::1", "--token-a", "a")  # once a traceback
    assert broken.returncode == 2 and "Traceback" not in broken.stderr and "Invalid IPv6 URL" in broken.stderr


def test_connect_to_a_party_whose_ids_are_taken_undoes_the_registration(hub: Hub, start_party) -> None:
    pid = unique_party_id()
    hub.invite("Owner", ("CPO", "DE", pid))
    party = start_party(("CPO", "DE", pid))
    result = _cli(hub, "connect", "--versions-url", party.versions_url, f"--token-a={party.token_a}")
    assert result.returncode == 1
    assert f"DE-{pid}" in result.stderr
    assert party.hub_credentials is None  # the hub sent DELETE to undo its registration at the party


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("OCPI_HUB_COUNTRY_CODE", "NLD", "two letters"),
        ("OCPI_HUB_PARTY_ID", "TOOLONG", "three letters"),
        ("OCPI_HUB_PUBLIC_URL", "hub.example.com", "OCPI_HUB_PUBLIC_URL"),
        ("OCPI_HUB_DATABASE_URL", "mysql://x", "OCPI_HUB_DATABASE_URL"),
        ("OCPI_HUB_FORWARD_TIMEOUT_S", "soon", "positive number"),
        ("OCPI_HUB_KEEP_ALIVE_S", "1.5", "OCPI_HUB_KEEP_ALIVE_S must be a positive whole number"),
        ("OCPI_HUB_SECRET_KEY", "short", "Fernet key"),
        ("OCPI_HUB_REDIS_PREFIX", "hub*:", "OCPI_HUB_REDIS_PREFIX must not contain"),
    ],
)
def test_bad_settings_are_reported_without_a_traceback(hub: Hub, variable: str, value: str, message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "hub.cli", "migrate"],
        env=hub.env | {variable: value},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_help_documents_every_command_and_variable() -> None:
    from hub.settings import VARIABLES

    result = subprocess.run([sys.executable, "-m", "hub.cli", "--help"], capture_output=True, text=True, cwd=ROOT)
    for word in ("serve", "migrate", "invite", "connect", *(name for name, _, _ in VARIABLES)):
        assert word in result.stdout


@pytest.mark.parametrize(
    ("variable", "url", "message"),
    [
        ("OCPI_HUB_DATABASE_URL", "postgresql://postgres@127.0.0.1:{port}/x", "cannot use the database"),
        ("OCPI_HUB_REDIS_URL", "redis://127.0.0.1:{port}/0", "cannot use Redis"),
    ],
)
def test_unreachable_database_or_redis_stops_serve_with_a_clear_message(
    hub: Hub, variable: str, url: str, message: str
) -> None:
    closed = free_port()  # nothing listens here
    result = subprocess.run([sys.executable, "-m", "hub.cli", "serve", "--port", str(free_port())],
                            env=hub.env | {variable: url.format(port=closed)}, cwd=ROOT, capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    assert result.returncode == 1
    assert message in result.stderr and variable in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["serve", "demo"])
def test_a_port_in_use_is_said_at_once_and_nothing_starts(tmp_path: Path, command: str) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    data_dir = tmp_path / "demo-data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCPI_HUB_")} | {"OCPI_HUB_DATA_DIR": str(data_dir)}
    try:
        result = subprocess.run([sys.executable, "-m", "hub.cli", command, "--port", str(port)], env=env, cwd=ROOT,
                                capture_output=True, text=True, timeout=60)  # fmt: skip
    finally:
        taken.close()
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in result.stderr
    assert "Traceback" not in result.stderr
    assert not data_dir.exists()  # no embedded server started, no secret written


def _platform_id(hub: Hub, party: tuple[str, str]) -> int:
    with hub.admin() as admin:
        items = admin.get("/admin/api/parties").json()["items"]
    return next(i["platform_id"] for i in items if (i["country_code"], i["party_id"]) == party)


def test_the_operator_takes_a_platform_off_the_hub_and_the_party_is_told(hub: Hub, connect_party, db) -> None:
    watcher = connect_party(_roles("EMSP"))
    cpo = connect_party(_roles("CPO"))
    key = party_key(cpo)
    platform_id = _platform_id(hub, key)
    with hub.admin() as admin:
        answer = admin.delete(f"/admin/api/parties/{platform_id}")
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"platform_id": platform_id, "name": cpo.name, "was": "REGISTERED",
                                 "party_told": True, "party_answer": None}  # fmt: skip
        again = admin.delete(f"/admin/api/parties/{platform_id}")
        assert again.status_code == 404 and "unregistered already" in again.json()["error"]
        trail = admin.get("/admin/api/audit-trail").json()["items"]
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
    refused = watcher.call(hub.base, "GET", "sender/locations", to=key)
    assert refused.json()["status_code"] == 4001, refused.text
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


def _rotate(hub: Hub, platform_id: int) -> httpx.Response:
    with hub.admin() as admin:
        return admin.post(f"/admin/api/parties/{platform_id}/credentials")


def _rotations(hub: Hub, platform_id: int) -> list[dict]:
    with hub.admin() as admin:
        trail = admin.get("/admin/api/audit-trail").json()["items"]
    return [t["parameters"] for t in trail if t["action"] == "rotate_credentials"
            and t["parameters"]["platform_id"] == platform_id]  # fmt: skip


def _credentials_messages(db, party_id: str) -> list[dict]:  # type: ignore[no-untyped-def]
    rows = db.run(db.fetch("SELECT routing, module, method, http_status, ocpi_status_code, error, request_body, "
                           "response_body FROM routing_log WHERE module = 'credentials' AND to_party_id = $1",
                           party_id))  # fmt: skip
    return [dict(r) for r in rows]


def _tokens_of(db, platform_id: int) -> int:  # type: ignore[no-untyped-def]
    return db.run(db.fetchval("SELECT count(*) FROM credentials_token WHERE platform_id = $1", platform_id))


def test_the_operator_rotates_a_platforms_tokens_and_both_sides_use_only_the_new_ones(
    hub: Hub, connect_party, db
) -> None:
    emsp = connect_party(_roles("EMSP"))
    cpo = connect_party(_roles("CPO"))
    key = party_key(cpo)
    platform_id = _platform_id(hub, key)
    old_hub_token, old_token_b = cpo.hub_token, cpo.token_b
    answer = _rotate(hub, platform_id)
    assert answer.status_code == 200, answer.text
    assert answer.json() | {"version": None, "endpoints": None} == {
        "platform_id": platform_id, "name": cpo.name, "rotated": True, "version": None, "endpoints": None,
        "token_encoding": "base64"}  # fmt: skip
    # credentials.asciidoc, PUT: the hub sent its credentials with a new token C, authenticated with the old token B,
    # and the party answered with a new token B.
    [put] = [r for r in cpo.received if (r.method, r.path) == ("PUT", "/ocpi/2.2.1/credentials")]
    assert put.headers["Authorization"] == token_header(old_token_b)["Authorization"]
    assert cpo.hub_token not in (None, old_hub_token) and cpo.token_b != old_token_b
    # The party reaches the hub with the new token C only.
    for token, status in ((old_hub_token, 401), (cpo.hub_token, 200)):
        assert httpx.get(f"{hub.base}/ocpi/2.2.1/credentials", headers=token_header(token)).status_code == status
    cc, pid = key
    pushed = cpo.call(hub.base, "GET", f"receiver/locations/{cc}/{pid}/LOC1", to=party_key(emsp))
    assert pushed.status_code == 200 and pushed.json()["status_code"] == 1000, pushed.text
    # The hub reaches the party with its new token B (the party takes no other).
    pulled = emsp.call(hub.base, "GET", "sender/locations", to=key)
    assert pulled.status_code == 200 and pulled.json()["status_code"] == 1000, pulled.text
    assert cpo.functional()[-1].headers["Authorization"] == token_header(cpo.token_b)["Authorization"]
    assert _tokens_of(db, platform_id) == 1
    [message] = _credentials_messages(db, pid)
    assert (message["routing"], message["method"], message["http_status"], message["ocpi_status_code"]) == (
        "hub", "PUT", 200, 1000)  # fmt: skip
    assert _rotations(hub, platform_id) == [{"platform_id": platform_id, "name": cpo.name}]
    # No token in the answer, the routing log (auditors read it) or the hub's log.
    logged = (body_of(message["request_body"]) + body_of(message["response_body"])).decode()
    assert logged.count('"token":"(not logged)"') == 2  # the hub's credentials and the party's answer
    seen = answer.text + hub.log() + logged
    assert not [t for t in (old_hub_token, cpo.hub_token, old_token_b, cpo.token_b) if t and t in seen]


@pytest.mark.parametrize(
    ("status", "body", "said"),
    [
        (200, json.dumps(envelope(None, 2000, "no rotation today")).encode(), "no rotation today"),
        (503, b"<html>down for maintenance</html>", "HTTP 503"),
    ],
)
def test_a_party_refusing_the_rotation_keeps_the_old_tokens_and_the_operator_hears_why(
    hub: Hub, connect_party, db, status: int, body: bytes, said: str
) -> None:
    emsp = connect_party(_roles("EMSP"))
    cpo = connect_party(_roles("CPO"), canned={("PUT", "/ocpi/2.2.1/credentials"): (status, body, {})})
    key = party_key(cpo)
    platform_id = _platform_id(hub, key)
    old_hub_token, old_token_b = cpo.hub_token, cpo.token_b
    answer = _rotate(hub, platform_id)
    assert answer.status_code == 502, answer.text
    error = answer.json()["error"]
    assert said in error and "PUT" in error and "old tokens still work" in error
    # Nothing half-done: the new token C is gone, both old tokens work both ways.
    assert (cpo.hub_token, cpo.token_b) == (old_hub_token, old_token_b)
    assert _tokens_of(db, platform_id) == 1
    cc, pid = key
    pushed = cpo.call(hub.base, "GET", f"receiver/locations/{cc}/{pid}/LOC1", to=party_key(emsp))
    assert pushed.status_code == 200 and pushed.json()["status_code"] == 1000, pushed.text
    pulled = emsp.call(hub.base, "GET", "sender/locations", to=key)
    assert pulled.status_code == 200 and pulled.json()["status_code"] == 1000, pulled.text
    [message] = _credentials_messages(db, pid)
    assert (message["method"], message["http_status"]) == ("PUT", status) and said in message["error"]
    [rotation] = _rotations(hub, platform_id)
    assert said in rotation["failed"]


@pytest.mark.parametrize(
    ("canned", "claims", "token_b", "why"),
    [  # the party takes the PUT, then its versions endpoint fails for its new token B
        ({}, [], "new", "fetching its endpoints with its new token B failed: GET"),
        # it answers HTTP 200, OCPI 1000, but no credentials object: it took the PUT, its token B is unknown
        ({("PUT", "/ocpi/2.2.1/credentials"): (200, json.dumps(envelope("thanks")).encode(), {})}, [], "old",
         "its answer held no credentials the hub can read"),
        # its credentials claim a role the operator never granted it
        ({}, [("EMSP", "NL", "ZZZ")], "new", "the roles it answered do not match: roles not granted to this platform"),
    ],
    ids=["new-token-b-cannot-fetch-the-endpoints", "no-credentials-in-the-answer", "roles-not-granted"],
)  # fmt: skip
def test_a_rotation_the_party_took_but_the_hub_could_not_finish_does_not_lock_the_party_out(
    hub: Hub, connect_party, db, canned: dict, claims: list, token_b: str, why: str
) -> None:
    emsp = connect_party(_roles("EMSP"))
    cpo = connect_party(_roles("CPO"), canned=canned)
    key = party_key(cpo)
    platform_id = _platform_id(hub, key)
    old_hub_token, old_token_b = cpo.hub_token, cpo.token_b
    cpo.versions_status = 500
    cpo.roles += claims  # what its credentials answer to the hub's PUT lists
    answer = _rotate(hub, platform_id)
    assert answer.status_code == 502, answer.text
    switched = {"new": "to the new token C and to the party's new token B",
                "old": "to the new token C and keeps calling the party with its old token B"}[token_b]  # fmt: skip
    assert f"the party took the PUT; the hub switched {switched}; but {why}" in answer.json()["error"]
    kept = {"new": "the hub keeps the endpoints from before, until it fetches them again with the new token B (it "
                   "tries again on its own)",
            "old": "the endpoints from before are kept"}[token_b]  # fmt: skip
    assert answer.json()["error"].endswith(f"; {kept}; check with the party")
    # credentials.asciidoc, PUT: the party took the new token C and uses it from now on; the old one is dead.
    [put] = [r for r in cpo.received if (r.method, r.path) == ("PUT", "/ocpi/2.2.1/credentials")]
    cpo.hub_token = json.loads(put.body)["token"]
    for token, status in ((old_hub_token, 401), (cpo.hub_token, 200)):
        assert httpx.get(f"{hub.base}/ocpi/2.2.1/credentials", headers=token_header(token)).status_code == status
    assert _tokens_of(db, platform_id) == 1
    cc, pid = key
    pushed = cpo.call(hub.base, "GET", f"receiver/locations/{cc}/{pid}/LOC1", to=party_key(emsp))
    assert pushed.status_code == 200 and pushed.json()["status_code"] == 1000, pushed.text
    # The hub reaches the party at the endpoints from before, with the token B the party expects now.
    assert (cpo.token_b != old_token_b) == (token_b == "new")
    pulled = emsp.call(hub.base, "GET", "sender/locations", to=key)
    assert pulled.status_code == 200 and pulled.json()["status_code"] == 1000, pulled.text
    assert cpo.functional()[-1].headers["Authorization"] == token_header(cpo.token_b)["Authorization"]
    [rotation] = _rotations(hub, platform_id)
    assert rotation["failed"].startswith(f"the party took the PUT, but {why}")
    until = " until the endpoints are fetched again" if token_b == "new" else ""
    kept_in_trail = f"the new token C, the party's {token_b} token B, the endpoints and roles from before{until}"
    assert rotation["kept"] == kept_in_trail


def _stored_platform(db, platform_id: int) -> tuple[str, str, list[str]]:  # type: ignore[no-untyped-def]
    """The versions URL, version and endpoint URLs the hub holds for a platform."""
    row = db.run(db.fetchrow("SELECT versions_url, version FROM platform WHERE id = $1", platform_id))
    urls = db.run(db.fetch("SELECT url FROM platform_endpoint WHERE platform_id = $1 ORDER BY url", platform_id))
    return row["versions_url"], row["version"], [u["url"] for u in urls]


def _moves_its_api(party: Party) -> None:
    """The party names its versions at a new URL, under /v2, from its next credentials answer on; that URL answers
    404 until the test lifts it (the new deployment not up yet). The old paths keep working."""
    party.moved_to = "/v2"
    party.canned[("GET", "/v2/ocpi/versions")] = (404, b"not deployed yet", {})


def test_a_rotation_answered_with_a_new_versions_url_keeps_that_url_when_its_endpoints_cannot_be_fetched(
    hub: Hub, connect_party, db
) -> None:
    emsp, cpo = connect_party(_roles("EMSP")), connect_party(_roles("CPO"))
    key = party_key(cpo)
    platform_id = _platform_id(hub, key)
    old_url, version, endpoints = _stored_platform(db, platform_id)
    _moves_its_api(cpo)
    answer = _rotate(hub, platform_id)
    assert answer.status_code == 502, answer.text
    new_url = cpo.versions_url
    assert new_url != old_url and "answered HTTP 404" in answer.json()["error"]
    assert answer.json()["error"].endswith(
        f"; the hub keeps the new versions URL the party named ({new_url}) and the endpoints from before, until it "
        "fetches them again with the new token B (it tries again on its own); check with the party")  # fmt: skip
    [rotation] = _rotations(hub, platform_id)
    assert rotation["kept"] == (f"the new token C, the party's new token B, the new versions URL it named "
                                f"({new_url}), the endpoints and roles from before until the endpoints are fetched "
                                "again")  # fmt: skip
    # The party's versions are where it said; the hub routes on the endpoints from before meanwhile.
    assert _stored_platform(db, platform_id) == (new_url, version, endpoints)
    # and the operator's API says so, as the console does, with when the hub fetches them again
    with hub.admin() as admin:
        items = admin.get("/admin/api/parties").json()["items"]
    [listed] = [i for i in items if i["platform_id"] == platform_id]
    assert "answered HTTP 404" in listed["endpoints_from_before"] and listed["endpoints_next_try"], listed
    [other] = [i for i in items if (i["country_code"], i["party_id"]) == party_key(emsp)]
    assert (other["endpoints_from_before"], other["endpoints_next_try"]) == (None, None), other
    pulled = emsp.call(hub.base, "GET", "sender/locations", to=key)
    assert pulled.status_code == 200 and pulled.json()["status_code"] == 1000, pulled.text
    assert cpo.functional()[-1].path == "/ocpi/2.2.1/locations/sender"
    assert cpo.functional()[-1].headers["Authorization"] == token_header(cpo.token_b)["Authorization"]


def test_the_operator_has_the_hub_fetch_the_endpoints_again_from_the_versions_url_a_rotation_kept(
    hub: Hub, connect_party, db
) -> None:
    emsp, cpo = connect_party(_roles("EMSP")), connect_party(_roles("CPO"))
    key = party_key(cpo)
    platform_id = _platform_id(hub, key)
    _moves_its_api(cpo)
    assert _rotate(hub, platform_id).status_code == 502
    new_url, _, endpoints = _stored_platform(db, platform_id)
    with hub.admin() as admin:
        failed = admin.post(f"/admin/api/parties/{platform_id}/endpoints")
        assert failed.status_code == 502, failed.text
        assert failed.json()["error"].startswith(f"fetching the endpoints of platform {platform_id} from {new_url} "
                                                 f"failed: GET {new_url} answered HTTP 404")  # fmt: skip
        assert failed.json()["error"].endswith("; the hub keeps the endpoints from before; it tries again on its own")
        assert _stored_platform(db, platform_id)[2] == endpoints
        del cpo.canned[("GET", "/v2/ocpi/versions")]  # the party's new deployment is up
        refreshed = admin.post(f"/admin/api/parties/{platform_id}/endpoints")
        assert refreshed.status_code == 200, refreshed.text
        assert refreshed.json() == {"platform_id": platform_id, "name": cpo.name, "versions_url": new_url,
                                    "version": "2.2.1", "endpoints": len(endpoints),
                                    "token_encoding": "base64"}  # fmt: skip
        trail = admin.get("/admin/api/audit-trail").json()["items"]
    assert all(url.startswith(f"{cpo.base}/v2/") for url in _stored_platform(db, platform_id)[2])
    pulled = emsp.call(hub.base, "GET", "sender/locations", to=key)
    assert pulled.status_code == 200 and pulled.json()["status_code"] == 1000, pulled.text
    assert cpo.functional()[-1].path == "/v2/ocpi/2.2.1/locations/sender"
    done, tried = [(t["actor_kind"], t["parameters"]) for t in trail if t["action"] == "refresh_endpoints"
                   and t["parameters"]["platform_id"] == platform_id][:2]  # fmt: skip
    assert done == ("admin", {"platform_id": platform_id, "name": cpo.name, "versions_url": new_url,
                              "version": "2.2.1", "endpoints": len(endpoints)})  # fmt: skip
    assert tried[1]["kept"] == "the endpoints from before" and "HTTP 404" in tried[1]["failed"]
    # Nothing is pending any more: the rotation's refresh is done.
    assert db.run(db.fetchval("SELECT endpoints_refresh_due FROM platform WHERE id = $1", platform_id)) is None


def test_only_a_registered_platform_has_its_credentials_rotated(hub: Hub) -> None:
    invitation = hub.invite("Not yet here", ("CPO", "NL", unique_party_id()))
    invited = _rotate(hub, invitation["platform_id"])
    assert invited.status_code == 409 and "not registered yet" in invited.json()["error"]
    unknown = _rotate(hub, 999999999)
    assert unknown.status_code == 404 and "no platform 999999999" in unknown.json()["error"]
    assert httpx.get(hub.versions_url, headers=token_header(invitation["token_a"])).status_code == 200


def test_an_auditor_cannot_rotate_a_platforms_credentials(hub: Hub, connect_party) -> None:
    cpo = connect_party(_roles("CPO"))
    platform_id = _platform_id(hub, party_key(cpo))
    old_hub_token = cpo.hub_token
    token = json.loads(_cli(hub, "auditor", "add", f"auditor-{unique_party_id()}").stdout)["token"]
    answer = httpx.post(f"{hub.base}/admin/api/parties/{platform_id}/credentials",
                        headers={"Authorization": f"Bearer {token}"})  # fmt: skip
    assert answer.status_code == 403
    assert cpo.hub_token == old_hub_token
    assert not [r for r in cpo.received if (r.method, r.path) == ("PUT", "/ocpi/2.2.1/credentials")]
