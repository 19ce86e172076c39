"""Parties that take their credentials token raw, as many OCPI 2.1.1 and 2.2 implementations do: the hub finds out by
trial and error at registration and calls them that way from then on (transport_and_format.asciidoc, Authorization
header: "choose the right way to parse and write authorization headers by either trial and error or configuration
flags")."""

from __future__ import annotations

import base64
import json

import httpx

from tests.conftest import Hub, register_at_hub, unique_party_id
from tests.parties import Party
from tests.test_admin_and_cli import _cli
from tests.test_hub_client_info import _pushes_about, _wait_for
from tests.test_routing import _roles, party_key


def _encoding_at_hub(hub: Hub, party: Party) -> str:
    with hub.admin() as admin:
        items = admin.get("/admin/api/parties").json()["items"]
    [encoding] = {i["token_encoding"] for i in items if i["party_id"] == party.roles[0][2]}
    return str(encoding)


def _raw(token: str) -> str:
    return f"Token {token}"


def test_a_party_that_takes_its_token_raw_is_registered_and_called_with_it_raw(hub: Hub, start_party, db) -> None:
    legacy = register_at_hub(hub, start_party, _roles("CPO"), raw_tokens=True)
    # Registration: the versions GET with token B Base64-encoded was refused (401), the same GET raw was not.
    first, second = [r for r in legacy.received if r.path == "/ocpi/versions"][:2]
    assert first.headers["Authorization"] == "Token " + base64.b64encode(legacy.token_b.encode()).decode()
    assert second.headers["Authorization"] == _raw(legacy.token_b)
    assert _encoding_at_hub(hub, legacy) == "raw"
    # A party that registers after it: Base64, and the legacy party hears of it (a ClientInfo push, sent raw).
    emsp = register_at_hub(hub, start_party, _roles("EMSP"))
    assert _encoding_at_hub(hub, emsp) == "base64"
    about_emsp = party_key(emsp)
    _wait_for(lambda: len(_pushes_about(legacy, about_emsp)) >= 2)
    # A request routed to it carries its token raw, and it takes it.
    cc, pid = key = party_key(legacy)
    answer = emsp.call(hub.base, "GET", f"sender/locations/{cc}/{pid}/LOC1", to=key, headers={"X-Request-ID": "raw"})
    assert answer.json()["status_code"] == 1000 and answer.json()["data"]["served_by"] == legacy.name
    [row] = db.run(db.fetch("SELECT http_status, ocpi_status_code FROM routing_log WHERE request_id = 'raw'"))
    assert (row["http_status"], row["ocpi_status_code"]) == (200, 1000)
    # Everything the hub sent it after that first trial carried the token raw: probes, pushes and the forward alike.
    after = legacy.received[legacy.received.index(first) + 1 :]
    sent = [r.headers["Authorization"] for r in after]
    assert len(sent) >= 4 and set(sent) == {_raw(legacy.token_b)}, [(r.method, r.path, r.headers) for r in after]
    pushes = db.run(db.fetch("SELECT http_status FROM routing_log WHERE module = 'hubclientinfo' AND to_party_id = $1",
                             pid))  # fmt: skip
    assert pushes and {p["http_status"] for p in pushes} == {200}


def test_the_hub_connects_to_a_party_that_takes_its_token_raw(hub: Hub, start_party, db) -> None:
    pid = unique_party_id()
    legacy = start_party(("CPO", "DE", pid), raw_tokens=True)
    result = _cli(hub, "connect", "--versions-url", legacy.versions_url, f"--token-a={legacy.token_a}")
    assert result.returncode == 0, result.stderr + result.stdout
    platform_id = json.loads(result.stdout)["platform_id"]
    # Token A was tried Base64-encoded, then raw; the credentials POST and every later call went raw.
    assert legacy.received[0].headers["Authorization"] != _raw(legacy.token_a)
    assert [r.headers["Authorization"] for r in legacy.received if r.method == "POST"] == [_raw(legacy.token_a)]
    encoding = db.run(db.fetchval("SELECT token_encoding FROM platform WHERE id = $1", platform_id))
    assert encoding == "raw"
    emsp = register_at_hub(hub, start_party, _roles("EMSP"))
    answer = emsp.call(hub.base, "GET", f"sender/locations/DE/{pid}/LOC1", to=("DE", pid))
    assert answer.json()["status_code"] == 1000
    assert legacy.received[-1].headers["Authorization"] == _raw(legacy.token_b)


def test_a_token_refused_in_both_encodings_fails_registration_saying_so(hub: Hub, start_party, db) -> None:
    roles = _roles("CPO")
    party = start_party(roles, versions_status=401)
    answer = party.register_at(hub.versions_url, hub.invite(party.name, roles)["token_a"])
    body = answer.json()
    assert body["status_code"] == 3001
    assert "HTTP 401" in body["status_message"] and "raw (not Base64-encoded)" in body["status_message"]
    state = db.run(db.fetchval("SELECT p.state FROM platform p JOIN party_role r ON r.platform_id = p.id "
                               "WHERE r.party_id = $1", roles[2]))  # fmt: skip
    assert state == "INVITED"


def test_connect_refuses_a_token_b_whose_base64_decoding_is_a_token_of_the_hub(hub: Hub, start_party, db) -> None:
    # As at a party's registration (tests/test_registration.py): a party taking its tokens raw would be called with
    # "Token base64(C)", which the hub reads as the other platform's token C: its calls would come back as that one's.
    other = register_at_hub(hub, start_party, _roles("CPO"))
    encoded_c = base64.b64encode((other.hub_token or "").encode()).decode()
    party = start_party(("EMSP", "DE", unique_party_id()), raw_tokens=True, token_b=encoded_c, keeps_token_b=True)
    name = f"hands back a hub token {unique_party_id()}"
    result = _cli(hub, "connect", "--versions-url", party.versions_url, f"--token-a={party.token_a}", "--name", name)
    assert result.returncode == 1, result.stdout
    assert ("the credentials' token is one the hub issued (as it is or Base64-encoded); send the token the hub is to "
            "use when it calls your platform (token B)") in result.stderr  # fmt: skip
    assert db.run(db.fetchval("SELECT state FROM platform WHERE name = $1", name)) == "UNREGISTERED"
    assert [r for r in party.received if r.headers.get("Authorization") == _raw(encoded_c)] == []  # not called with it


def test_a_refused_authorization_header_is_told_what_was_wrong_with_it_without_the_token(
    hub: Hub, connect_party
) -> None:
    emsp = connect_party(_roles("EMSP"))
    token = emsp.hub_token or ""
    functional, versions = f"{hub.base}/ocpi/2.2.1/sender/tariffs", hub.versions_url
    with_newline = "Token " + base64.b64encode(f"{token}\n".encode()).decode()  # `echo TOKEN | base64`
    cases = {
        None: "missing Authorization header: send 'Authorization: Token <base64 of your token>'",
        f"Bearer {token}": "the Authorization header uses the Bearer scheme: send 'Authorization: Token <base64 of",
        "Token": "the Authorization header holds no token",
        token: "the Authorization header uses no Token scheme",
        "Token not-base64!": "unknown credentials token: it is not valid Base64, nor a token of this hub as it is",
        with_newline: "the token the Authorization header encodes ends with a newline (as `echo TOKEN | base64` makes)",
        "Token " + base64.b64encode(b"someone-else\n").decode(): "unknown credentials token",
    }
    for header, told in cases.items():
        for url in (functional, versions):
            answer = httpx.get(url, headers={"Authorization": header} if header else {})
            assert answer.status_code == 401, (header, answer.text)
            message = answer.json()["status_message"]
            assert message.startswith(told) and token not in message, (url, header, message)


def test_a_party_taking_its_token_raw_behind_public_versions_is_tried_raw_at_its_version_details(
    hub: Hub, start_party, db
) -> None:
    # Many platforms answer their versions to anyone: the token's encoding shows first at the version details, and
    # the trial (transport_and_format.asciidoc: "by either trial and error") goes on there (was 3001, HTTP 401).
    roles = _roles("CPO")
    legacy = start_party(roles, raw_tokens=True, public_versions=True)
    answer = legacy.register_at(hub.versions_url, hub.invite(legacy.name, roles)["token_a"]).json()
    assert answer["status_code"] == 1000, answer
    details = [r.headers["Authorization"] for r in legacy.received if r.path == "/ocpi/2.2.1"]
    assert details == ["Token " + base64.b64encode(legacy.token_b.encode()).decode(), _raw(legacy.token_b)]
    assert _encoding_at_hub(hub, legacy) == "raw"
