"""The methods and URL shapes of mod_*.asciidoc (Interfaces and endpoints): any other is refused by the hub and
reaches no party. The shapes the spec defines are relayed: tests/test_routing.py, EVERY_ROUTE."""

from __future__ import annotations

import http.client
import json
import time
import uuid
from urllib.parse import urlsplit

import pytest

from tests.conftest import Hub
from tests.test_routing import _roles, party_key

EVERY_INTERFACE = {m: ["SENDER", "RECEIVER"] for m in ("cdrs", "chargingprofiles", "commands", "locations",
                                                         "sessions", "tariffs", "tokens")}  # fmt: skip


def _refused(hub: Hub, connect_party, db, method: str, path: str, role: str):  # type: ignore[no-untyped-def]
    """Send method path from a party of role to a party of the other role that implements every interface; the
    hub's answer, after checking that the receiver got nothing and the log row says rejected."""
    sender = connect_party(_roles(role))
    receiver = connect_party(_roles("EMSP" if role == "CPO" else "CPO"), modules=EVERY_INTERFACE)
    cc, pid = party_key(sender)
    path = path.format(cc=cc, pid=pid)
    object_id = path.split("?")[0].rstrip("/").rsplit("/", 1)[-1]  # a PUT's body names its URL's id
    body = {"response_url": "https://x.example/r/1", "location_id": "LOC1", "id": object_id, "uid": object_id}
    request_id = str(uuid.uuid4())
    answer = sender.call(hub.base, method, path, to=party_key(receiver), headers={"X-Request-ID": request_id},
                         body=None if method in ("GET", "DELETE", "OPTIONS") else body)  # fmt: skip
    assert receiver.functional() == []
    [row] = db.run(db.fetch("SELECT routing, http_status FROM routing_log WHERE request_id = $1", request_id))
    assert (row["routing"], row["http_status"]) == ("rejected", answer.status_code)
    return answer


@pytest.mark.parametrize(
    ("role", "method", "path"),
    [
        # mod_locations.asciidoc, Receiver: "DELETE | n/a (use PATCH to update the status to REMOVED)"
        ("CPO", "DELETE", "receiver/locations/{cc}/{pid}/LOC1"),
        ("CPO", "POST", "receiver/locations/{cc}/{pid}/LOC1"),
        ("CPO", "POST", "receiver/sessions/{cc}/{pid}/S1"),
        ("CPO", "DELETE", "receiver/sessions/{cc}/{pid}/S1"),
        ("CPO", "PUT", "receiver/cdrs/CDR1"),  # "n/a (CDRs cannot be replaced)"
        ("CPO", "PATCH", "receiver/tariffs/{cc}/{pid}/T1"),
        ("EMSP", "DELETE", "receiver/tokens/{cc}/{pid}/TOK1"),  # "n/a, (Use PUT, Tokens cannot be removed)"
        ("EMSP", "GET", "receiver/commands/START_SESSION"),
        ("EMSP", "PATCH", "receiver/chargingprofiles/S1"),
        ("EMSP", "POST", "sender/locations"),
        ("EMSP", "PATCH", "sender/sessions/S1/charging_preferences"),
        ("EMSP", "DELETE", "sender/tariffs"),
        ("EMSP", "POST", "sender/cdrs"),
        ("CPO", "PUT", "sender/tokens/TOK1/authorize"),
        ("CPO", "GET", "sender/commands/START_SESSION/1"),
        ("CPO", "GET", "sender/chargingprofiles/S1"),
        ("EMSP", "OPTIONS", "sender/locations"),
    ],
)
def test_a_method_the_interface_does_not_define_answers_405_and_is_not_forwarded(
    hub: Hub, connect_party, db, role: str, method: str, path: str
) -> None:
    answer = _refused(hub, connect_party, db, method, path, role)
    assert answer.status_code == 405 and answer.json()["status_code"] == 2000, answer.text
    assert f"{method} is not defined for the" in answer.json()["status_message"]
    allowed = answer.headers["Allow"].split(", ")  # RFC 9110, 15.5.6: a 405 names the methods the resource takes
    assert allowed and method not in allowed and set(allowed) <= {"GET", "POST", "PUT", "PATCH", "DELETE"}


@pytest.mark.parametrize(
    ("role", "method", "path"),
    [
        ("CPO", "PUT", "receiver/locations/{cc}/{pid}"),  # no location_id
        ("CPO", "PATCH", "receiver/locations/{cc}/{pid}/LOC1/EVSE1/1/more"),
        ("CPO", "PUT", "receiver/sessions/{cc}/{pid}/S1/charging_preferences"),
        ("CPO", "GET", "receiver/cdrs"),  # a list GET of a Receiver interface
        ("CPO", "POST", "receiver/cdrs/CDR1"),  # a CDR is POSTed to {cdr_endpoint_url}
        ("CPO", "PUT", "receiver/tariffs/{cc}/{pid}/T1/elements"),
        ("EMSP", "GET", "receiver/tokens/{cc}/{pid}"),
        ("EMSP", "POST", "receiver/commands"),
        ("EMSP", "POST", "receiver/commands/SELF_DESTRUCT"),
        ("EMSP", "POST", "receiver/commands/START_SESSION/1"),
        ("EMSP", "PUT", "receiver/chargingprofiles"),
        ("EMSP", "DELETE", "receiver/chargingprofiles/S1/all?response_url=https://x.example/r/2"),
        ("EMSP", "GET", "sender/locations/LOC1/EVSE1/1/more"),
        ("EMSP", "PUT", "sender/sessions/S1"),
        ("EMSP", "PUT", "sender/sessions/S1/preferences"),
        ("EMSP", "GET", "sender/cdrs/CDR1"),
        ("EMSP", "GET", "sender/tariffs/T1"),
        ("CPO", "GET", "sender/tokens/TOK1"),
        ("CPO", "POST", "sender/tokens/TOK1"),  # "The /authorize is required for the real-time authorize request."
        ("CPO", "POST", "sender/tokens/TOK1/authorise"),
        ("CPO", "PUT", "sender/chargingprofiles/S1/active"),
    ],
)
def test_a_url_the_interface_does_not_define_answers_404_and_is_not_forwarded(
    hub: Hub, connect_party, db, role: str, method: str, path: str
) -> None:
    answer = _refused(hub, connect_party, db, method, path, role)
    assert answer.status_code == 404 and answer.json()["status_code"] == 2000, answer.text
    assert "is no URL of the" in answer.json()["status_message"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "sender/locations/../../credentials"),  # the receiver's credentials, with the hub's token to it
        ("GET", "sender/locations/%2E%2E/%2e%2E/credentials"),
        ("GET", "sender/locations/..%2F..%2Fcredentials"),
        ("GET", "sender/locations/LOC1/./EVSE1"),
        # Tomcat drops a segment's ";" parameters before it resolves dot segments (a security review's point)
        ("GET", "sender/locations/..;/..;/credentials"),
        ("GET", "sender/locations/%2e%2e;/%2E%2E%3B/credentials"),
        ("GET", "sender/locations/..;a/..;b=c/credentials"),
        ("GET", "sender/locations/LOC1/.;x/EVSE1"),
        ("GET", "receiver/tokens/{cc}/{pid}/.."),
        ("POST", "sender/commands/..%5C..%5Ccredentials"),
        ("GET", "receiver/tokens/{cc}/{pid}//TOK1"),
        ("POST", "sender/tokens//TOK1/authorize"),
    ],
)
def test_a_url_with_a_dot_or_empty_segment_answers_404_and_is_not_forwarded(
    hub: Hub, connect_party, db, method: str, path: str
) -> None:
    emsp = connect_party(_roles("EMSP"))
    cpo = connect_party(_roles("CPO"), modules=EVERY_INTERFACE)
    sender, receiver = (cpo, emsp) if path.startswith("sender/tokens") else (emsp, cpo)
    cc, pid = party_key(sender)
    request_id = str(uuid.uuid4())
    headers = sender.token_header(sender.hub_token or "") | {
        "OCPI-from-country-code": cc, "OCPI-from-party-id": pid, "OCPI-to-country-code": party_key(receiver)[0],
        "OCPI-to-party-id": party_key(receiver)[1], "X-Request-ID": request_id, "Content-Type": "application/json",
    }  # fmt: skip
    base = urlsplit(hub.base)
    connection = http.client.HTTPConnection(base.hostname or "", base.port, timeout=30)  # sends the path as written
    try:
        connection.request(method, f"/ocpi/2.2.1/{path.format(cc=cc, pid=pid)}", body=b"{}", headers=headers)
        response = connection.getresponse()
        status, answer = response.status, json.loads(response.read())
    finally:
        connection.close()
    assert status == 404 and answer["status_code"] == 2000, answer
    assert "dot segment" in answer["status_message"]
    assert receiver.functional() == []
    [row] = db.run(db.fetch("SELECT routing, http_status FROM routing_log WHERE request_id = $1", request_id))
    assert (row["routing"], row["http_status"]) == ("rejected", 404)


@pytest.mark.parametrize(
    ("role", "method", "path", "named"),
    [
        # forwarded, a newline was the receiver's own "404: Not Found" (aiohttp's, as text), relayed without an envelope
        ("CPO", "GET", "receiver/locations/{cc}/{pid}/LOC%0A1", "U+000A"),
        ("CPO", "PUT", "receiver/locations/{cc}/{pid}/LOC1/EVSE%0D%0A1", "U+000D"),
        ("CPO", "PUT", "receiver/sessions/{cc}/{pid}/S%001", "U+0000"),  # forwarded and answered 1000 before
        ("EMSP", "GET", "receiver/tokens/{cc}/{pid}/TOK%091", "U+0009"),
        ("CPO", "POST", "sender/tokens/TOK%7F1/authorize", "U+007F"),
        ("EMSP", "GET", "sender/locations/LOC%C2%851", "U+0085"),  # a C1 control character, UTF-8 encoded
    ],
)
def test_a_control_character_in_a_path_segment_answers_2001_and_is_not_forwarded(
    hub: Hub, connect_party, db, role: str, method: str, path: str, named: str
) -> None:
    answer = _refused(hub, connect_party, db, method, path, role)
    assert (answer.status_code, answer.json()["status_code"]) == (404, 2001), answer.text
    assert f"a control character ({named})" in answer.json()["status_message"], answer.text


def test_an_encoded_id_a_lower_case_owner_and_a_trailing_slash_reach_the_receiver_at_the_url_the_spec_defines(
    hub: Hub, connect_party
) -> None:
    # types.asciidoc: country_code and party_id are CiStrings; the hub matches them in any case and forwards the URL
    # as the caller wrote it, ids percent-encoded, and the query unchanged, after the receiver's endpoint URL.
    cpo, emsp = connect_party(_roles("CPO")), connect_party(_roles("EMSP"))
    cc, pid = party_key(cpo)[0].lower(), party_key(cpo)[1].lower()
    to = (party_key(emsp)[0].lower(), party_key(emsp)[1].lower())
    put = cpo.call(hub.base, "PUT", f"receiver/locations/{cc}/{pid}/LOC%201/EVSE%2F1/", to=to, from_=(cc, pid),
                   body={"uid": "EVSE/1"})  # fmt: skip
    assert put.json()["status_code"] == 1000, put.text
    token = emsp.call(hub.base, "GET", f"receiver/tokens/{to[0]}/{to[1]}/TOK%2B1?type=APP_USER&x=a%26b", to=(cc, pid))
    assert token.json()["status_code"] == 1000, token.text
    [got] = emsp.functional()
    assert got.raw_path == f"/ocpi/2.2.1/locations/receiver/{cc}/{pid}/LOC%201/EVSE%2F1"
    assert (got.headers["OCPI-to-party-id"], got.headers["OCPI-from-party-id"]) == (to[1].upper(), pid.upper())
    [got] = cpo.functional()
    assert got.raw_path == f"/ocpi/2.2.1/tokens/receiver/{to[0]}/{to[1]}/TOK%2B1?type=APP_USER&x=a%26b"


def test_a_real_time_authorization_without_location_references_is_relayed_without_a_body(
    hub: Hub, connect_party
) -> None:
    # mod_tokens.asciidoc, POST {tokens_endpoint_url}{token_uid}/authorize[?type={type}]: "an optional
    # LocationReferences object can be given"
    cpo, emsp = connect_party(_roles("CPO")), connect_party(_roles("EMSP"))
    answer = cpo.call(hub.base, "POST", "sender/tokens/TOK1/authorize", to=party_key(emsp))
    assert answer.json()["status_code"] == 1000, answer.text
    [got] = emsp.functional()
    assert (got.method, got.raw_path, got.body) == ("POST", "/ocpi/2.2.1/tokens/sender/TOK1/authorize", b"")
    assert "Content-Type" not in got.headers


def test_a_wrong_method_on_the_hubs_own_result_page_and_cdr_urls_answers_405_naming_the_one_they_take(
    hub: Hub, connect_party
) -> None:
    party = connect_party(_roles("CPO"))
    for method, path, takes in [("GET", "results/x", "POST"), ("POST", "pages/x", "GET"),
                                ("DELETE", "relayed-cdrs/x", "GET")]:  # fmt: skip
        answer = party.call(hub.base, method, path)
        assert (answer.status_code, answer.headers.get("Allow")) == (405, takes), (method, path, answer.text)


@pytest.mark.parametrize(
    ("path", "role", "to_hub"),
    [
        ("receiver/locations/{cc}/{pid}/LOC1/EVSE1", "CPO", False),
        ("receiver/locations/{cc}/{pid}/LOC1/EVSE1", "CPO", True),  # a broadcast, which the hub itself answers
        ("receiver/sessions/{cc}/{pid}/S1", "CPO", False),
        ("receiver/tokens/{cc}/{pid}/TOK1", "EMSP", False),
    ],
    ids=["location-direct", "location-broadcast", "session", "token"],
)
def test_a_patch_without_last_updated_is_refused_with_2001_and_reaches_nobody(
    hub: Hub, connect_party, db, path: str, role: str, to_hub: bool
) -> None:
    # mod_locations, mod_sessions, mod_tokens: "Any request to the PATCH method SHALL contain the last_updated field."
    # Relayed, the change reached the parties and the hub's cache with the object's last_updated as it was: a party
    # pulling with date_from never saw it (a party developer's walkthrough).
    sender = connect_party(_roles(role))
    receiver = connect_party(_roles("EMSP" if role == "CPO" else "CPO"), modules=EVERY_INTERFACE)
    cc, pid = party_key(sender)
    to = ("NL", "HUB") if to_hub else party_key(receiver)
    for body in ({"status": "OUTOFORDER"}, {"status": "OUTOFORDER", "last_updated": None}):
        answer = sender.call(hub.base, "PATCH", path.format(cc=cc, pid=pid), to=to, body=body)
        assert (answer.status_code, answer.json()["status_code"]) == (200, 2001), answer.text
        assert "SHALL contain the last_updated field" in answer.json()["status_message"]
    assert receiver.functional() == []
    patched = sender.call(hub.base, "PATCH", path.format(cc=cc, pid=pid), to=to,
                          body={"status": "OUTOFORDER", "last_updated": "2026-12-05T10:00:00Z"})  # fmt: skip
    assert patched.json()["status_code"] == 1000, patched.text
    deadline = time.monotonic() + 5  # a broadcast's copies go out after the hub answered
    while not receiver.functional() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [r.method for r in receiver.functional()] == ["PATCH"]
