"""Hundreds of malformed requests, made up from a fixed seed, over raw sockets at a hub of their own: every one gets
an answer in time, none a 5xx, every OCPI one an OCPI envelope that says what was wrong, and the hub, its routing
log and its chain go on working. Each bug this found (a NUL in an id that stalled the routing log, bodies that never
came, a receiver's header bytes) has a test of its own as well; this one keeps looking for the next.
"""

from __future__ import annotations

import base64
import json
import random
import re
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import Hub, Services, hub_env, register_at_hub, start_hub
from tests.parties import token_header
from tests.test_routing import LOCATION, _roles, party_key, push_location

REQUESTS = 400
# The URL shapes of mod_*.asciidoc as the hub serves them: /ocpi/2.2.1/{interface}/{module}/...
SHAPES = [
    ("GET", "sender/locations"), ("GET", "sender/locations/{loc}"), ("GET", "sender/locations/{loc}/{evse}/{con}"),
    ("GET", "receiver/locations/{cc}/{pid}/{loc}"), ("PUT", "receiver/locations/{cc}/{pid}/{loc}"),
    ("PATCH", "receiver/locations/{cc}/{pid}/{loc}/{evse}"),
    ("PUT", "receiver/locations/{cc}/{pid}/{loc}/{evse}/{con}"),
    ("GET", "sender/sessions"), ("PUT", "sender/sessions/{id}/charging_preferences"),
    ("PUT", "receiver/sessions/{cc}/{pid}/{id}"), ("PATCH", "receiver/sessions/{cc}/{pid}/{id}"),
    ("GET", "sender/cdrs"), ("POST", "receiver/cdrs"), ("GET", "sender/tariffs"),
    ("PUT", "receiver/tariffs/{cc}/{pid}/{id}"), ("DELETE", "receiver/tariffs/{cc}/{pid}/{id}"),
    ("GET", "sender/tokens"), ("POST", "sender/tokens/{id}/authorize"), ("PUT", "receiver/tokens/{cc}/{pid}/{id}"),
    ("POST", "receiver/commands/{command}"), ("POST", "sender/commands/{command}/{id}"),
    ("PUT", "receiver/chargingprofiles/{id}"), ("POST", "sender/chargingprofiles/{id}"),
    ("GET", "sender/hubclientinfo"), ("GET", "credentials"), ("GET", "nonsense/here"),
    # the hub's own URLs that stand in for a party's: paging Links, response_urls, CDR Locations, location snapshots
    ("GET", "pages/{id}"), ("POST", "results/{id}"), ("GET", "relayed-cdrs/{id}"), ("GET", "snapshots/{id}"),
]  # fmt: skip
ODD_SEGMENTS = ["%00", "%ff", "%2F", "..", "%25", "%zz", "a" * 300, "%C3%A9", "%20", "-1", "", "x" * 37, "FOO"]
# An object whose JSON nests deeper than Python's recursion limit: msgspec refuses it with a RecursionError, not a
# DecodeError (a 500 of the hub before 2026-12-03, wherever the hub looked into a body or an answer).
DEEP = b'{"id": "LOC1", "response_url": "http://127.0.0.1:9/r", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}"
ODD_QUERIES = ["offset=-1", "limit=abc", "date_from=2020-13-45", "offset=" + "9" * 30, "type=%00", "limit=0", "&&"]
ODD_BODIES = [
    b"", b"{", b"null", b"[]", b'"x"', b"1e9999", b"\xff\xfe", b"[" * 100_000, b'{"a":' * 200 + b"1" + b"}" * 200,
    b'{"id": "C\\u0000D", "response_url": "not a url"}', b'{"response_url": 5, "country_code": 5}',
    b'{"x": "\\ud800"}', b'{"x": 1}trailing', json.dumps({"id": "x" * 100_000}).encode(), DEEP,
]  # fmt: skip


@dataclass
class Outcome:
    request: bytes
    answer: bytes | None  # None: nothing within the time a client waits


def made_up_request(rng: random.Random, token: str, cpo: tuple[str, str], emsp: tuple[str, str]) -> bytes:
    method, shape = rng.choice(SHAPES)
    values = {"cc": cpo[0], "pid": cpo[1], "loc": "LOC1", "evse": "3256", "con": "1", "id": "X1",
              "command": rng.choice(["START_SESSION", "STOP_SESSION", "RESERVE_NOW", "FOO"])}  # fmt: skip
    values = {k: rng.choice(ODD_SEGMENTS) if rng.random() < 0.08 else v for k, v in values.items()}
    target = "/ocpi/2.2.1/" + shape.format(**values)
    if rng.random() < 0.25:
        target += "?" + "&".join(rng.sample(ODD_QUERIES, rng.randint(1, 3)))
    if rng.random() < 0.15 and shape != "credentials":  # a DELETE of credentials would unregister the caller
        method = rng.choice(["GET", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD", "TRACE"])
    headers = {"Host": "hub", "Connection": "close"}
    odd_tokens = ["Token ", "Bearer x", "Token %%%", "Token " + "A" * 5000, f"Token {token}"]  # the last: not base64
    good_token = "Token " + base64.b64encode(token.encode()).decode()
    headers["Authorization"] = good_token if rng.random() < 0.8 else rng.choice(odd_tokens)
    for name, value in (("country-code", cpo[0]), ("party-id", cpo[1])):
        headers[f"OCPI-from-{name}"] = value if rng.random() < 0.9 else rng.choice(["", "XX", "nl", "TOOLONG", "HUB"])
    for name, value in (("country-code", emsp[0]), ("party-id", emsp[1])):
        if rng.random() < 0.85:
            headers[f"OCPI-to-{name}"] = value if rng.random() < 0.9 else rng.choice(["", "N", "HUB", "ZZZ", "1"])
    if rng.random() < 0.2:
        headers["X-Request-ID"] = rng.choice(["", "x" * 1000, "é"])
    if rng.random() < 0.2:
        headers["Content-Type"] = rng.choice(["text/plain", "application/json; charset=latin-1", ""])
    if rng.random() < 0.05:
        headers["Content-Encoding"] = rng.choice(["gzip", "br"])
    body = rng.choice(ODD_BODIES) if rng.random() < 0.4 else json.dumps(LOCATION).encode()
    body = b"" if method in ("GET", "HEAD") and rng.random() < 0.8 else body
    framing = rng.random()
    if framing < 0.05:  # announced, never sent in full: answered once the body deadline passes
        headers["Content-Length"] = str(len(body) + 10)
    elif framing < 0.1:
        headers["Transfer-Encoding"] = "chunked"
        body = (b"%x\r\n%s\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n"
    elif body or method in ("POST", "PUT", "PATCH"):
        headers["Content-Length"] = str(len(body))
    head = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    return head.encode("latin-1", "replace") + body


def exchange(port: int, request: bytes) -> Outcome:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        try:
            client.sendall(request)
            answer = b""
            while chunk := client.recv(65536):
                answer += chunk
        except TimeoutError:
            return Outcome(request, answer or None)
        except ConnectionResetError:  # the server gave up on a request it could not parse
            return Outcome(request, answer or b"")
    return Outcome(request, answer)


def problem_with(outcome: Outcome) -> str | None:
    """What is wrong with an answer, or None: an OCPI request must get an answer, no 5xx, and an OCPI envelope."""
    if outcome.answer is None:
        return "no answer within 10 s"
    if not outcome.answer:
        return "closed without an answer"
    head, _, body = outcome.answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if status >= 500:
        return f"HTTP {status}"
    if outcome.request.startswith(b"HEAD "):
        return None  # a HEAD answer has no body
    if outcome.request.startswith(b"OPTIONS ") and status == 204:
        return None  # what the hub's routes allow, in the Allow header
    if b"transfer-encoding: chunked" in head.lower():
        body = body.split(b"\r\n", 1)[1].rsplit(b"\r\n0\r\n", 1)[0]
    try:
        envelope = json.loads(body)
    except ValueError:
        return f"HTTP {status} without an OCPI envelope: {body[:120]!r}"
    if not isinstance(envelope, dict) or "status_code" not in envelope or "timestamp" not in envelope:
        return f"HTTP {status} without an OCPI envelope: {body[:120]!r}"
    if envelope["status_code"] != 1000 and not envelope.get("status_message"):
        return f"OCPI {envelope['status_code']} without a message"
    return None


@pytest.fixture
def own_hub(services: Services, empty_database: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    """A hub with a database and cache of its own: what the made-up requests push stays out of the other tests."""
    env = hub_env(services, tmp_path / "hub", OCPI_HUB_DATABASE_URL=empty_database,
                  OCPI_HUB_REDIS_PREFIX=f"{services.redis_prefix}malformed:")  # fmt: skip
    running = start_hub(env, tmp_path / "hub.log")
    try:
        yield running
    finally:
        running.stop()


def test_hundreds_of_malformed_requests_each_get_a_clear_answer_and_the_hub_goes_on(own_hub: Hub, start_party) -> None:
    cpo = register_at_hub(own_hub, start_party, _roles("CPO"))
    emsp = register_at_hub(own_hub, start_party, _roles("EMSP"))
    rng = random.Random(20261202)
    requests = [made_up_request(rng, cpo.hub_token or "", party_key(cpo), party_key(emsp)) for _ in range(REQUESTS)]
    port = urlsplit(own_hub.base).port or 0
    with ThreadPoolExecutor(16) as pool:  # concurrent, as parties are
        outcomes = list(pool.map(lambda request: exchange(port, request), requests))
    problems = [f"{p}: {o.request[:300]!r}" for o in outcomes if (p := problem_with(o))]
    assert not problems, "\n".join(problems[:20])
    relayed = sum(o.answer is not None and re.search(rb'"status_code": ?1000', o.answer) is not None for o in outcomes)
    assert relayed > REQUESTS // 20, relayed  # the made-up requests also reach the receiver, not only the hub's checks
    good = push_location(cpo, own_hub.base, party_key(emsp))
    assert good.json()["status_code"] == 1000, good.text
    with own_hub.admin() as admin:
        assert admin.get("/admin/api/routing-log/verify").json()["ok"] is True
    for sign_of_trouble in ("Traceback", "relay_failed", "routing_log_write_failed", "routing_log_row"):
        assert sign_of_trouble not in own_hub.log()
    with httpx.Client() as client:  # and it still answers plainly
        assert client.get(own_hub.versions_url).status_code == 401


def test_json_nested_too_deeply_gets_a_clear_answer_and_its_row_wherever_it_arrives(hub: Hub, start_party, db) -> None:
    cpo = register_at_hub(hub, start_party, _roles("CPO"))
    emsp = register_at_hub(hub, start_party, _roles("EMSP"))
    (cc, pid), to_emsp, to_cpo = party_key(cpo), party_key(emsp), party_key(cpo)

    def sent(party, method: str, path: str, request_id: str, **options) -> httpx.Response:  # type: ignore[no-untyped-def]
        answer = party.call(hub.base, method, path, content=DEEP, headers={"X-Request-ID": request_id,
                            "Content-Type": "application/json"}, **options)  # fmt: skip
        assert answer.status_code < 500, answer.text
        rows = db.run(db.fetch("SELECT ocpi_status_code FROM routing_log WHERE request_id = $1", request_id))
        assert len(rows) == 1, request_id  # logged like any other exchange
        return answer

    # Where the hub reads the body itself, the caller is told what is wrong with it, and nothing is forwarded.
    for method, path, request_id, to in (
        ("PUT", f"receiver/locations/{cc}/{pid}/LOC1", "deep-location", to_emsp),  # the id in the body is checked
        ("POST", "receiver/commands/START_SESSION", "deep-command", to_cpo),  # its response_url is replaced
        ("POST", "receiver/cdrs", "deep-cdr", to_emsp),  # its owner is checked
    ):
        party = cpo if to == to_emsp else emsp
        answer = sent(party, method, path, request_id, to=to)
        assert answer.json()["status_code"] == 2001 and "nested too deeply" in answer.json()["status_message"]
    # Open routing (no OCPI-to): the body cannot tell the hub where to go, and the hub says so.
    answer = sent(emsp, "POST", "receiver/commands/START_SESSION", "deep-open-command")
    assert answer.json()["status_code"] != 1000 and answer.json()["status_message"]
    assert not [r for r in cpo.functional() if r.body == DEEP]
    # A body the hub only relays reaches the receiver, whose own answer comes back; its row holds the body.
    answer = sent(emsp, "PUT", "sender/sessions/S1/charging_preferences", "deep-preferences", to=to_cpo)
    assert "nested too deeply" not in answer.text  # the test party's own answer
    assert [r.body for r in cpo.functional()][-1] == DEEP
    # A receiver's answer nested too deeply is relayed as it came; the log has no OCPI status for it.
    emsp.canned[("GET", "/ocpi/2.2.1/tokens/sender")] = (200, DEEP, {"Content-Type": "application/json"})
    answer = cpo.call(hub.base, "GET", "sender/tokens", to=to_emsp, headers={"X-Request-ID": "deep-answer"})
    assert answer.status_code == 200 and answer.content == DEEP
    [row] = db.run(db.fetch("SELECT id, ocpi_status_code FROM routing_log WHERE request_id = 'deep-answer'"))
    assert row["ocpi_status_code"] is None
    # The auditor can open both messages (the body shown as text).
    with hub.admin() as admin:
        message = admin.get(f"/admin/api/routing-log/{row['id']}")
        assert message.status_code == 200 and message.json()["response"]["kind"] == "text"
    # A credentials update nested too deeply: HTTP 400, and the platform keeps its token.
    answer = httpx.put(f"{hub.base}/ocpi/2.2.1/credentials", headers=token_header(emsp.hub_token or ""), content=DEEP)
    assert answer.status_code == 400 and "nested too deeply" in answer.json()["status_message"]
    assert emsp.call(hub.base, "GET", f"sender/locations/{cc}/{pid}/LOC1", to=to_cpo).json()["status_code"] == 1000
    assert "relay_failed" not in hub.log() and "Traceback" not in hub.log()


def test_ids_other_than_printable_ascii_are_refused_on_a_relayed_request_and_a_registration(
    hub: Hub, start_party, db
) -> None:
    cpo = register_at_hub(hub, start_party, _roles("CPO"))
    emsp = register_at_hub(hub, start_party, _roles("EMSP"))
    cc, pid = party_key(cpo)
    url = f"{hub.base}/ocpi/2.2.1/receiver/locations/{cc}/{pid}/LOC1"
    routing = {"OCPI-from-country-code": cc, "OCPI-from-party-id": pid, "OCPI-to-country-code": party_key(emsp)[0],
               "OCPI-to-party-id": party_key(emsp)[1], "Content-Type": "application/json"}  # fmt: skip
    body = json.dumps(LOCATION | {"party_id": pid}).encode()
    # aiohttp would have sent the receiver other bytes than the caller's; a tab is no part of an id either
    for request_id, correlation_id in (("accented", "café".encode()), ("tabbed", b"a\tb")):
        ids = {"X-Request-ID": request_id, "X-Correlation-ID": correlation_id}
        answer = httpx.put(url, headers=token_header(cpo.hub_token or "") | routing | ids, content=body)
        assert (answer.status_code, answer.json()["status_code"]) == (200, 2001), answer.text
        assert "X-Correlation-ID" in answer.json()["status_message"] and "printable ASCII" in answer.text
        [row] = db.run(db.fetch("SELECT routing FROM routing_log WHERE request_id = $1", request_id))
        assert row["routing"] == "rejected"
    assert emsp.functional() == []
    # A registration: httpx refused to send such an id on to the party, and the hub answered HTTP 500.
    roles = _roles("EMSP")
    party = start_party(roles)
    token_a = hub.invite(party.name, roles)["token_a"]
    answer = httpx.post(
        f"{hub.base}/ocpi/2.2.1/credentials",
        json=party.credentials(party.token_b),
        headers=token_header(token_a) | {"X-Correlation-ID": "café".encode()},
    )  # type: ignore[operator]
    assert (answer.status_code, answer.json()["status_code"]) == (200, 2001), answer.text
    assert "X-Correlation-ID 'café'" in answer.json()["status_message"]
    assert party.register_at(hub.versions_url, token_a).json()["status_code"] == 1000  # token A is still good
    assert "Traceback" not in hub.log()


def test_a_header_value_sent_in_iso_8859_1_is_quoted_as_sent_not_with_replacement_characters(
    hub: Hub, start_party
) -> None:
    # Python's http.client and requests send a str header in ISO-8859-1: the hub's message quoted "café" as "caf\ufffd",
    # read as UTF-8 alone. UTF-8 is still read as UTF-8.
    cpo = register_at_hub(hub, start_party, _roles("CPO"))
    emsp = register_at_hub(hub, start_party, _roles("EMSP"))
    (cc, pid), (to_cc, to_pid) = party_key(cpo), party_key(emsp)
    url = f"{hub.base}/ocpi/2.2.1/receiver/locations/{cc}/{pid}/LOC1"
    routing = {"OCPI-from-country-code": cc, "OCPI-from-party-id": pid, "OCPI-to-country-code": to_cc}
    body = json.dumps(LOCATION | {"party_id": pid}).encode()

    def refusal(*headers: tuple[str, str | bytes]) -> str:
        sent = [*token_header(cpo.hub_token or "").items(), *routing.items(), *headers]
        answer = httpx.put(url, headers=sent, content=body)  # type: ignore[arg-type]
        assert answer.json()["status_code"] == 2001 and "\ufffd" not in answer.text, answer.text
        return str(answer.json()["status_message"])

    for encoding in ("latin-1", "utf-8"):
        to_party, correlation_id = ("OCPI-to-party-id", to_pid), "café".encode(encoding)
        assert refusal(to_party, ("X-Correlation-ID", correlation_id)).startswith("X-Correlation-ID 'café' holds ")
        assert refusal(("OCPI-to-party-id", "çé1".encode(encoding))).endswith(f"got '{to_cc}' and 'çé1'")
        twice = refusal(to_party, ("X-Correlation-ID", correlation_id), ("X-Correlation-ID", "cafe"))
        assert twice.startswith("X-Correlation-ID came 2 times with different values ('café', 'cafe')"), twice
    assert emsp.functional() == []


def test_an_authorization_header_sent_twice_is_refused_without_quoting_either_token(hub: Hub, start_party, db) -> None:
    # a security review's point: the refusal quoted the first 16 characters of each, "Token " and some of the token,
    # in the answer and the routing log's error column
    cpo = register_at_hub(hub, start_party, _roles("CPO"))
    sent = [*token_header(cpo.hub_token or "").items(), *token_header("another-token-of-some-length").items(),
            ("X-Request-ID", "authorization-twice")]  # fmt: skip
    answer = httpx.get(f"{hub.base}/ocpi/2.2.1/sender/locations", headers=sent)
    said = "Authorization came 2 times with different values: the hub cannot tell which one is meant"
    assert (answer.status_code, answer.json()["status_code"], answer.json()["status_message"]) == (401, 2000, said)
    error = db.run(db.fetchval("SELECT error FROM routing_log WHERE request_id = 'authorization-twice'"))
    assert error == said
