"""`ocpi-hub connect`: the operator registering the hub at a party with the party's token A (credentials.asciidoc,
the hub as the registering side), undone when it fails, each call a routing-log row of one conversation."""

from __future__ import annotations

import json

import httpx

from tests.conftest import Hub, unique_party_id
from tests.log_rows import calls_of, own_conversation, own_messages_wrong
from tests.parties import envelope, token_header
from tests.test_admin_and_cli import _cli


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


def test_connect_to_a_party_answering_a_role_twice_fails_saying_so_and_undoes_the_registration(
    hub: Hub, start_party, db
) -> None:
    # credentials.asciidoc: "Every role needs a unique combination of: role, party_id and country_code". Such an
    # answer was an unhandled unique violation: a traceback, the platform left invited, the party left registered.
    pid = unique_party_id()
    party = start_party(("CPO", "DE", pid))
    role = {"role": "CPO", "country_code": "DE", "party_id": pid, "business_details": {"name": "Twice"}}
    answer = {"token": party.token_b, "url": party.versions_url, "roles": [role, role | {"party_id": pid.lower()}]}
    party.canned[("POST", "/ocpi/2.2.1/credentials")] = (200, json.dumps(envelope(answer)).encode(), {})
    name = f"answers a role twice {pid}"
    result = _cli(hub, "connect", "--versions-url", party.versions_url, f"--token-a={party.token_a}", "--name", name)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"role CPO DE-{pid.lower()} is listed twice" in result.stderr  # as the second listed it
    assert db.run(db.fetchval("SELECT state FROM platform WHERE name = $1", name)) == "UNREGISTERED"
    assert [r.method for r in party.received if r.path == "/ocpi/2.2.1/credentials"] == ["POST", "DELETE"]


def test_every_call_connect_makes_is_a_routing_log_row_in_one_conversation_without_its_tokens(
    hub: Hub, start_party, db
) -> None:
    pid = unique_party_id()
    party = start_party(("CPO", "DE", pid))
    token_a = party.token_a
    result = _cli(hub, "connect", "--versions-url", party.versions_url, f"--token-a={token_a}")
    assert result.returncode == 0, result.stderr + result.stdout
    platform_id, base = json.loads(result.stdout)["platform_id"], f"{party.base}/ocpi"
    rows = own_conversation(db, party.received[0].headers["X-Correlation-ID"])
    # with token A: versions and details before the platform is on the hub, the POST before the party named its roles;
    # then versions and details with the party's token, to its party
    assert calls_of(rows) == [
        ("versions", "GET", f"{base}/versions", 200, None, None), ("versions", "GET", f"{base}/2.2.1", 200, None, None),
        ("credentials", "POST", f"{base}/2.2.1/credentials", 200, platform_id, None),
        ("versions", "GET", f"{base}/versions", 200, platform_id, ("DE", pid)),
        ("versions", "GET", f"{base}/2.2.1", 200, platform_id, ("DE", pid)),
    ]  # fmt: skip
    assert own_messages_wrong(rows, party.received, token_a, party.token_b, party.hub_token) == ""
    posted = rows[2]
    assert json.loads(posted["request_body"])["token"] == json.loads(posted["response_body"])["data"]["token"] == (
        "(not logged)")  # fmt: skip
    with hub.admin() as admin:  # the command's rows are a chain of its own
        assert admin.get("/admin/api/routing-log/verify").json()["ok"] is True


def test_the_delete_undoing_a_failed_connect_is_a_routing_log_row_of_its_conversation(
    hub: Hub, start_party, db
) -> None:
    pid = unique_party_id()
    hub.invite("Owner", ("CPO", "DE", pid))
    party = start_party(("CPO", "DE", pid))
    assert _cli(hub, "connect", "--versions-url", party.versions_url, f"--token-a={party.token_a}").returncode == 1
    rows = own_conversation(db, party.received[0].headers["X-Correlation-ID"])
    assert [(r["module"], r["method"], r["http_status"]) for r in rows] == [
        ("versions", "GET", 200), ("versions", "GET", 200), ("credentials", "POST", 200), ("credentials", "DELETE", 200)
    ]  # fmt: skip
    assert calls_of(rows)[-1][-1] == ("DE", pid)
    assert own_messages_wrong(rows, party.received, party.token_a, party.token_b) == ""
