"""What a receiver answers, relayed to the caller as it came: OCPI errors, bodies that are no OCPI, odd header
bytes, answers HTTP cannot carry, cookies and redirects, none of which the hub acts on; but for a refusal of the
hub's own token, which is the hub's to answer, and an answer larger than the hub takes."""

from __future__ import annotations

import gzip
import json
import uuid

import pytest

from routing.forward_failures import CHECK_FIRST
from tests.conftest import Hub
from tests.parties import RAW
from tests.test_routing import _roles, party_key


def test_receiver_errors_and_non_ocpi_bodies_are_relayed_unchanged(hub: Hub, cpo_and_emsp, db) -> None:
    cpo, emsp = cpo_and_emsp
    cc, pid = party_key(cpo)
    emsp.canned[("GET", f"/ocpi/2.2.1/locations/receiver/{cc}/{pid}/GONE")] = (
        404,
        b'{"status_code":2003,"status_message":"Unknown location","timestamp":"2026-11-25T10:00:00Z"}',
        {},
    )
    emsp.canned[("GET", f"/ocpi/2.2.1/locations/receiver/{cc}/{pid}/HTML")] = (
        502,
        b"<html>Bad Gateway</html>",
        {"Content-Type": "text/html"},
    )
    unknown = cpo.call(hub.base, "GET", f"receiver/locations/{cc}/{pid}/GONE", to=party_key(emsp))
    assert unknown.status_code == 404 and unknown.json()["status_code"] == 2003
    html = cpo.call(hub.base, "GET", f"receiver/locations/{cc}/{pid}/HTML", to=party_key(emsp),
                    headers={"X-Request-ID": (request_id := str(uuid.uuid4()))})  # fmt: skip
    assert (html.status_code, html.content, html.headers["content-type"]) == (
        502,
        b"<html>Bad Gateway</html>",
        "text/html",
    )
    # the row keeps a type that is not OCPI's JSON: an auditor sees a proxy's page, not a party's answer
    logged = db.run(db.fetchval("SELECT response_headers FROM routing_log WHERE request_id = $1", request_id))
    assert json.loads(logged)["content-type"] == "text/html"


def test_a_receivers_header_bytes_that_are_not_ascii_are_relayed_as_they_came(hub: Hub, cpo_and_emsp) -> None:
    cpo, emsp = cpo_and_emsp
    cc, pid = party_key(cpo)
    ok = json.dumps({"status_code": 1000, "timestamp": "2026-11-25T10:00:00Z"}).encode()
    emsp.canned[("GET", f"/ocpi/2.2.1/locations/receiver/{cc}/{pid}/UTF8")] = (
        200, ok, {"Content-Type": "application/json; title=Grüße"})  # fmt: skip
    answer = cpo.call(hub.base, "GET", f"receiver/locations/{cc}/{pid}/UTF8", to=party_key(emsp))
    assert answer.status_code == 200 and answer.content == ok
    assert (b"content-type", "application/json; title=Grüße".encode()) in answer.headers.raw


def test_a_receivers_answer_that_http_cannot_carry_gets_a_clear_answer_and_its_row(hub: Hub, cpo_and_emsp, db) -> None:
    # Found by sending broken answers through the hub: uvicorn refused to write the first two (the caller's
    # connection dropped with no answer), and the routing log refused the third's row.
    cpo, emsp = cpo_and_emsp
    cc, pid = party_key(cpo)
    ok = json.dumps({"status_code": 1000, "timestamp": "2026-11-25T10:00:00Z"}).encode()
    huge = b'{"status_code": 123456789012345678901234567890, "timestamp": "2026-11-25T10:00:00Z"}'
    canned = {
        "S999": (999, ok, {}),
        "CTRL": (
            RAW,
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nLink: <http://x/\x7f>; rel=next\r\n"
            b"X-Total-Count: 1\x7f\r\nX-Limit: 10\r\nContent-Length: %d\r\n\r\n%s" % (len(ok), ok),
            {},
        ),
        "HUGE": (200, huge, {}),
    }
    answers, logged = {}, {}
    for name, answer in canned.items():
        emsp.canned[("GET", f"/ocpi/2.2.1/locations/receiver/{cc}/{pid}/{name}")] = answer
        request_id = str(uuid.uuid4())
        answers[name] = cpo.call(hub.base, "GET", f"receiver/locations/{cc}/{pid}/{name}", to=party_key(emsp),
                                 headers={"X-Request-ID": request_id})  # fmt: skip
        logged[name] = db.run(db.fetch("SELECT * FROM routing_log WHERE request_id = $1", request_id))
    wrong_status, controls, huge_status = answers["S999"], answers["CTRL"], answers["HUGE"]
    assert (wrong_status.status_code, wrong_status.json()["status_code"]) == (200, 4000)
    assert "answered with HTTP status 999" in wrong_status.json()["status_message"]
    assert controls.status_code == 200 and controls.content == ok
    assert "link" not in controls.headers and "x-total-count" not in controls.headers
    assert controls.headers["x-limit"] == "10"
    assert huge_status.status_code == 200 and huge_status.content == huge
    [row] = logged["S999"]
    assert (row["http_status"], row["ocpi_status_code"]) == (200, 4000) and "HTTP status 999" in row["error"]
    [row] = logged["CTRL"]
    assert row["error"] == (
        "the receiver's x-total-count, link headers held characters HTTP does not allow in a header; relayed without"
    )
    [row] = logged["HUGE"]
    assert (row["http_status"], row["ocpi_status_code"], row["error"]) == (200, None, None)


def test_a_receiver_refusing_the_hubs_token_is_answered_4000_not_passed_on_as_a_401(hub: Hub, cpo_and_emsp, db) -> None:
    # Relayed as it came, the 401 told the caller its own token at the hub was refused (found by a spec review).
    cpo, emsp = cpo_and_emsp
    cc, pid = party_key(cpo)
    emsp.token_b, request_id = "a token the hub does not have", str(uuid.uuid4())
    answer = cpo.call(hub.base, "GET", f"receiver/locations/{cc}/{pid}/L1", to=party_key(emsp),
                      headers={"X-Request-ID": request_id})  # fmt: skip
    assert (answer.status_code, answer.json()["status_code"]) == (200, 4000), answer.text
    assert f"{party_key(emsp)[0]}-{party_key(emsp)[1]} refused the hub's credentials (HTTP 401)" in answer.text
    [row] = db.run(db.fetch("SELECT * FROM routing_log WHERE request_id = $1", request_id))
    assert (row["http_status"], row["ocpi_status_code"]) == (200, 4000) and "HTTP 401" in row["error"]
    assert row["forwarded_request_id"] is not None  # it did reach the receiver
    assert "receiver_refused_hub_token" in hub.log()  # for the operator


def test_a_cookie_a_receiver_sets_is_not_sent_on_later_requests(hub: Hub, cpo_and_emsp, connect_party) -> None:
    # The hub forwards for every caller over one client session: a cookie must not carry over between requests.
    # (Cookie jars ignore cookies of hosts given by IP address, so this receiver is reached by a host name.)
    cpo = cpo_and_emsp[0]
    emsp = connect_party(_roles("EMSP"), name="eMSP by name", host="localhost")
    cc, pid = party_key(cpo)
    path = f"/ocpi/2.2.1/locations/receiver/{cc}/{pid}/COOKIE"
    ok = json.dumps({"status_code": 1000, "timestamp": "2026-11-25T10:00:00Z"}).encode()
    emsp.canned[("GET", path)] = (200, ok, {"Set-Cookie": "session=abc; Path=/", "Content-Type": "application/json"})
    for _ in range(2):
        assert cpo.call(hub.base, "GET", f"receiver/locations/{cc}/{pid}/COOKIE", to=party_key(emsp)).status_code == 200
    received = [r for r in emsp.functional() if r.path == path]
    assert len(received) == 2 and all("Cookie" not in r.headers for r in received)


def test_a_redirect_from_a_receiver_is_relayed_not_followed(hub: Hub, cpo_and_emsp) -> None:
    # aiohttp would turn a POST redirected with 301 into a GET without its body; the hub relays the answer instead.
    cpo, emsp = cpo_and_emsp
    moved = f"{emsp.base}/ocpi/2.2.1/cdrs/receiver/elsewhere"
    emsp.canned[("POST", "/ocpi/2.2.1/cdrs/receiver")] = (301, b"moved", {"Location": moved})
    answer = cpo.call(hub.base, "POST", "receiver/cdrs", to=party_key(emsp), body={"id": "CDR-2"})
    assert (answer.status_code, answer.content) == (301, b"moved")
    assert "Location" not in answer.headers  # a URL at the receiver, not one through the hub: not relayed
    assert [(r.method, r.path) for r in emsp.functional()] == [("POST", "/ocpi/2.2.1/cdrs/receiver")]


def test_a_request_whose_connection_drops_before_the_answer_is_not_sent_again(hub: Hub, cpo_and_emsp, db) -> None:
    # aiohttp resends a GET, PUT or DELETE over a new connection when the first drops before its answer: the party
    # got two requests where the routing log has one. transport_and_format.asciidoc, Offline behaviour: no retry.
    cpo, emsp = cpo_and_emsp
    cc, pid = party_key(cpo)
    tariff = f"tariffs/{cc}/{pid}/DROP"
    for method, path, body in [("PUT", tariff, {"id": "DROP"}), ("GET", tariff, None), ("DELETE", tariff, None),
                               ("POST", "cdrs", {"id": "DROP"})]:  # fmt: skip
        at_party = f"/ocpi/2.2.1/{path.replace('/', '/receiver/', 1) if '/' in path else path + '/receiver'}"
        emsp.canned[(method, at_party)] = (RAW, b"", {})  # read, then the connection closed with no answer
        request_id = str(uuid.uuid4())
        answer = cpo.call(hub.base, method, f"receiver/{path}", to=party_key(emsp), body=body,
                          headers={"X-Request-ID": request_id})  # fmt: skip
        assert answer.json()["status_code"] == 4003, (method, answer.text)
        # not "could not reach the receiver": it may have the request, which a GET does not change
        told = "the connection to the receiver's server was closed before it answered"
        assert answer.json()["status_message"] == (told if method == "GET" else f"{told}: {CHECK_FIRST}"), answer.text
        assert [(r.method, r.path) for r in emsp.functional()].count((method, at_party)) == 1, method
        [row] = db.run(db.fetch("SELECT ocpi_status_code, error FROM routing_log WHERE request_id = $1", request_id))
        assert row["ocpi_status_code"] == 4003 and row["error"], (method, dict(row))


def test_a_receivers_answer_the_hub_cannot_parse_is_a_4000_that_says_the_receiver_got_the_request(
    hub: Hub, cpo_and_emsp, db
) -> None:
    # Not 4003 ("unable to reach the receiving party"): a sender told that would send the CDR or the command again.
    cpo, emsp = cpo_and_emsp
    cc, pid = party_key(cpo)
    ok = b'{"status_code": 1000, "timestamp": "2026-11-25T10:00:00Z"}'
    broken = {
        "LONGHEAD": b"HTTP/1.1 201 Created\r\nLocation: http://emsp.example/%s\r\nContent-Length: %d\r\n\r\n%s"
        % (b"x" * 100_000, len(ok), ok),
        "BADSTATUS": b"HTTP/1.1 2x0 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(ok), ok),
        # the connection closed before the end of its body: it was 4003, "could not reach the receiver" (a walkthrough)
        "CUTSHORT": b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + ok[:20],
        "CHUNKSCUT": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n14\r\n" + ok[:20] + b"\r\n",
    }
    for name, raw in broken.items():
        emsp.canned[("PUT", f"/ocpi/2.2.1/tariffs/receiver/{cc}/{pid}/{name}")] = (RAW, raw, {})
        request_id = str(uuid.uuid4())
        answer = cpo.call(hub.base, "PUT", f"receiver/tariffs/{cc}/{pid}/{name}", to=party_key(emsp),
                          body={"id": name}, headers={"X-Request-ID": request_id})  # fmt: skip
        assert answer.json()["status_code"] == 4000, (name, answer.text)
        message = answer.json()["status_message"]
        assert "the receiver got the request" in message and "could not read" in message, (name, message)
        assert [r.path for r in emsp.functional()].count(f"/ocpi/2.2.1/tariffs/receiver/{cc}/{pid}/{name}") == 1
        [row] = db.run(db.fetch("SELECT ocpi_status_code, error FROM routing_log WHERE request_id = $1", request_id))
        # the routing log says which URL, and what the parser saw; the caller, not the receiver's own address
        assert emsp.base not in answer.text and row["error"].startswith(f"PUT {emsp.base}/"), (name, answer.text)
        assert row["ocpi_status_code"] == 4000 and message in row["error"], (name, dict(row))


@pytest.mark.parametrize("encoding", ["identity", "gzip"])
def test_an_answer_larger_than_the_hub_relays_is_a_clear_4000_not_a_hub_out_of_memory(
    hub: Hub, cpo_and_emsp, encoding: str
) -> None:
    # The test hub takes bodies of 10,000,000 bytes at most (OCPI_HUB_MAX_BODY_BYTES), its parties' answers too.
    # gzip: 10 kB on the wire that aiohttp would inflate to 10 MB; it is counted as it is inflated.
    cpo, emsp = cpo_and_emsp
    cc, pid = party_key(cpo)
    huge = b'{"data": "' + b"x" * 10_000_000 + b'", "status_code": 1000, "timestamp": "2026-11-25T10:00:00Z"}'
    raw, headers = (gzip.compress(huge), {"Content-Encoding": "gzip"}) if encoding == "gzip" else (huge, {})
    emsp.canned[("GET", f"/ocpi/2.2.1/locations/receiver/{cc}/{pid}/HUGE")] = (200, raw, headers)
    answer = cpo.call(hub.base, "GET", f"receiver/locations/{cc}/{pid}/HUGE", to=party_key(emsp))
    assert answer.status_code == 200 and answer.json()["status_code"] == 4000
    assert "larger than 10000000 bytes" in answer.json()["status_message"] and emsp.base not in answer.text
    assert "OCPI_HUB_MAX_BODY_BYTES" in answer.json()["status_message"]
    fine = cpo.call(hub.base, "GET", f"receiver/locations/{cc}/{pid}/LOC1", to=party_key(emsp))
    assert fine.json()["status_code"] == 1000  # the receiver is not marked unreachable for it
