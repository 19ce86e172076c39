"""Transport rules: 401 without a known token, request ids echoed, bad input answered with a clear OCPI error."""

from __future__ import annotations

import gzip
import http.client
import json
import socket
import time
import uuid
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import Hub, unique_party_id
from tests.parties import token_header


@pytest.fixture
def token_a(hub: Hub) -> str:
    return hub.invite("Bad Input Co", ("CPO", "NL", unique_party_id()))["token_a"]


_CPO = {"role": "CPO", "country_code": "NL", "party_id": "ABC"}
_NAMED = {"name": "x"}
_WITH_ODD_LOGO = {"name": "x", "logo": {"url": "http://x/logo.png", "category": "\x00", "type": "png"}}


def _is_envelope(body: dict) -> bool:
    return {"status_code", "timestamp"} <= set(body) and body["timestamp"].endswith("Z")


@pytest.mark.parametrize("authorization", [None, "Token", "Token nonsense", "Bearer abc", "Token " + "QUJD" * 4])
def test_missing_or_unknown_token_answers_401_with_an_ocpi_body(hub: Hub, authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    answer = httpx.get(hub.versions_url, headers=headers)
    assert answer.status_code == 401
    body = answer.json()
    assert _is_envelope(body) and body["status_code"] == 2000
    assert "token" in body["status_message"].lower() or "authorization" in body["status_message"].lower()


def test_request_and_correlation_ids_are_echoed(hub: Hub, token_a: str) -> None:
    headers = token_header(token_a) | {"X-Request-ID": "req-123", "X-Correlation-ID": "corr-456"}
    answer = httpx.get(hub.versions_url, headers=headers)
    assert (answer.headers["X-Request-ID"], answer.headers["X-Correlation-ID"]) == ("req-123", "corr-456")
    unauthorised = httpx.get(hub.versions_url, headers={"X-Request-ID": "req-789"})
    assert unauthorised.headers["X-Request-ID"] == "req-789"


def test_a_keep_alive_connection_idle_for_six_seconds_still_takes_a_request(hub: Hub) -> None:
    # A party's pooled client, or a proxy, sends on a connection it kept idle. With uvicorn's default the hub would
    # have closed it after 5 s and the request would fail on the reset (a POST or PATCH is not resent).
    where = urlsplit(hub.base)
    connection = http.client.HTTPConnection(where.hostname or "", where.port, timeout=10)
    try:
        connection.request("GET", "/ocpi/versions")
        first = connection.getresponse()
        first.read()
        socket = connection.sock
        time.sleep(6)
        connection.request("GET", "/ocpi/versions")
        second = connection.getresponse()
        second.read()
        assert connection.sock is socket  # the same connection, not a new one
        assert first.status == second.status == 401
    finally:
        connection.close()


@pytest.mark.parametrize(
    ("not_http", "complaint"),
    [
        (b"PUT /ocpi/2.2.1/receiver/locations HTTP/1.1\r\nHost: hub\r\nContent-Length: x\r\n\r\n", "content-length"),
        (b"GET /ocpi/versions HTTP/1.1\r\nHost hub\r\n\r\n", "header"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", "method"),  # a TLS ClientHello sent to plain HTTP
    ],
)
def test_bytes_that_are_not_http_get_a_400_with_an_ocpi_body_saying_so(
    hub: Hub, not_http: bytes, complaint: str
) -> None:
    # Before any of the hub's code runs, uvicorn's parser rejects them; its own answer was a text/plain 400.
    where = urlsplit(hub.base)
    with socket.create_connection((where.hostname, where.port), timeout=10) as client:
        client.sendall(not_http)
        answer = b""
        while chunk := client.recv(65536):  # the hub closes the connection after this answer
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ") and b"content-type: application/json" in head.lower()
    envelope = json.loads(body)
    assert envelope["status_code"] == 2000 and envelope["timestamp"]
    assert envelope["status_message"].startswith("not a valid HTTP/1.1 request: ")
    assert complaint in envelope["status_message"].lower(), envelope["status_message"]
    assert httpx.get(hub.versions_url).status_code == 401  # and the hub goes on answering


def test_a_url_longer_than_the_hub_takes_is_answered_414_in_the_shape_of_the_part_of_the_hub_it_names(
    hub: Hub,
) -> None:
    # httptools refuses a request target over 65,535 bytes: the hub answered 400 "not a valid HTTP/1.1 request: url is
    # too long: ...", and in an OCPI envelope to the admin API too, whose errors are {"error": ...}.
    where = urlsplit(hub.base)
    message = "the request's URL (path and query) is longer than the 65535 bytes the hub takes"
    for path, shape in ((b"/ocpi/versions", "ocpi"), (b"/admin/api/routing-log", "admin"), (b"//admin/api/x", "admin")):
        with socket.create_connection((where.hostname, where.port), timeout=10) as client:
            client.sendall(b"GET %s?q=%s HTTP/1.1\r\nHost: hub\r\n\r\n" % (path, b"a" * 65_536))
            answer = b""
            while chunk := client.recv(65536):  # the hub closes the connection after this answer
                answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 414 ") and b"content-type: application/json" in head.lower(), head
        if shape == "admin":
            assert json.loads(body) == {"error": message}, (path, body)
        else:
            envelope = json.loads(body)
            assert _is_envelope(envelope) and (envelope["status_code"], envelope["status_message"]) == (2000, message)
    assert httpx.get(hub.versions_url).status_code == 401  # and the hub goes on answering


@pytest.mark.parametrize(
    ("request_line", "logged"),
    [
        (b"PUT /ocpi/2.2.1/receiver/locations/NL/ABC/L1 HTTP/1.1", True),  # the relay
        (b"POST /ocpi/2.2.1/credentials HTTP/1.1", False),  # Litestar's routes
    ],
)
def test_a_body_that_stops_coming_is_answered_408_within_the_timeout(
    hub: Hub, db, token_a: str, connect_party, request_line: bytes, logged: bool
) -> None:
    # A client that announces 100 bytes and sends 5 would otherwise hold its request and connection forever.
    # The test hub waits OCPI_HUB_FORWARD_TIMEOUT_S = 2 s for a body, as for a party's answer. The relay reads the
    # body of a registered party's request alone (tests/test_rows_of_refused_requests); credentials, a token A's.
    where = urlsplit(hub.base)
    request_id = f"slow-body-{logged}"
    token = connect_party(("CPO", "NL", unique_party_id())).hub_token if logged else token_a
    with socket.create_connection((where.hostname, where.port), timeout=10) as client:
        headers = token_header(token) | {"X-Request-ID": request_id, "Content-Length": "100"}
        client.sendall(request_line + b"".join(f"\r\n{k}: {v}".encode() for k, v in headers.items())
                       + b"\r\nHost: hub\r\n\r\n{\"id\"")  # fmt: skip
        started, answer = time.monotonic(), b""
        while b"}" not in answer and (chunk := client.recv(65536)):
            answer += chunk
        waited = time.monotonic() - started
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408") and 1.5 < waited < 6
    envelope = json.loads(body)
    assert envelope == envelope | {"status_code": 2000, "status_message": "the request body did not arrive within 2 s"}
    if logged:
        [row] = db.run(db.fetch("SELECT http_status, error FROM routing_log WHERE request_id = $1", request_id))
        assert (row["http_status"], row["error"]) == (408, envelope["status_message"])
    assert httpx.get(hub.versions_url).status_code == 401  # and the hub goes on answering


def test_a_body_the_parser_refuses_is_logged_with_the_400_the_caller_got(hub: Hub, db, connect_party) -> None:
    # The protocol answers a chunk size that is not hex and closes; the relay, reading the body (a registered party's:
    # it reads no other), saw only the disconnect and logged a 404 "the client went away" that nobody was sent.
    where = urlsplit(hub.base)
    authorization = token_header(connect_party(("CPO", "NL", unique_party_id())).hub_token)["Authorization"]
    with socket.create_connection((where.hostname, where.port), timeout=10) as client:
        client.sendall(b"PUT /ocpi/2.2.1/receiver/locations/NL/ABC/L1 HTTP/1.1\r\nHost: hub\r\nX-Request-ID: bad-chunk"
                       b"\r\nAuthorization: " + authorization.encode() +
                       b"\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"id\"\r\nzz\r\n")  # fmt: skip
        answer = b""
        while chunk := client.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400 ")
    message = json.loads(answer.partition(b"\r\n\r\n")[2])["status_message"]
    assert message.startswith("not a valid HTTP/1.1 request: ")
    deadline, rows = time.monotonic() + 5, []
    while not rows and time.monotonic() < deadline:  # written once the relay has seen the connection close
        rows = db.run(db.fetch("SELECT http_status, error FROM routing_log WHERE request_id = 'bad-chunk'"))
        time.sleep(0.05)
    assert [(r["http_status"], r["error"]) for r in rows] == [(400, message)]


def test_request_without_ids_gets_fresh_ones(hub: Hub, token_a: str) -> None:
    answer = httpx.get(hub.versions_url, headers=token_header(token_a))
    assert len(answer.headers["X-Request-ID"]) == 36
    assert answer.headers["X-Correlation-ID"]


def test_malformed_json_answers_400_with_2001(hub: Hub, token_a: str) -> None:
    answer = httpx.post(
        f"{hub.base}/ocpi/2.2.1/credentials",
        headers=token_header(token_a) | {"Content-Type": "application/json"},
        content=b'{"token": "abc", "url": ',
    )
    assert answer.status_code == 400
    assert answer.json()["status_code"] == 2001
    assert "not valid JSON" in answer.json()["status_message"]


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        ({"token": "abc", "url": "http://x/versions", "roles": "CPO"}, "roles"),
        ({"token": "abc", "url": "http://x/versions", "roles": []}, "roles"),
        (
            {
                "url": "http://x/versions",
                "roles": [{"role": "CPO", "country_code": "NL", "party_id": "ABC", "business_details": {"name": "x"}}],
            },
            "token",
        ),
        ({"token": "has space", "url": "http://x/versions", "roles": [{}]}, "token"),
        ({"token": "abc", "url": "ftp://x", "roles": [_CPO | {"business_details": {"name": "x"}}]}, "url"),
        ({"token": "abc", "url": "http://x/\x00", "roles": [_CPO | {"business_details": {"name": "x"}}]}, "url"),
        ({"token": "abc", "url": "http://[::1", "roles": [_CPO | {"business_details": {"name": "x"}}]}, "url"),
        ({"token": "abc", "url": "http://h:port/", "roles": [_CPO | {"business_details": {"name": "x"}}]}, "url"),
        ({"token": "abc", "url": "http://x/v", "roles": [_CPO | {"business_details": {"name": "\x00"}}]}, "name"),
        ({"token": "abc", "url": "http://x/v", "roles": [_CPO | {"business_details": _WITH_ODD_LOGO}]}, "category"),
        (
            {
                "token": "abc",
                "url": "http://x/v",
                "roles": [{"role": "CPO", "country_code": "NLD", "party_id": "ABC", "business_details": {"name": "x"}}],
            },
            "country_code must be 2 letters, got 'NLD'",  # it was msgspec's regex
        ),
        (
            {"token": "abc", "url": "http://x/v", "roles": [_CPO | {"party_id": "A-B", "business_details": _NAMED}]},
            "party_id must be 3 letters or digits, got 'A-B'",
        ),
        (
            {
                "token": "abc",
                "url": "http://x/v",
                "roles": [{"role": "KING", "country_code": "NL", "party_id": "ABC", "business_details": {"name": "x"}}],
            },
            "role",
        ),
        ([1, 2, 3], "object"),
    ],
)
def test_credentials_with_wrong_types_answer_2001_naming_the_field(hub: Hub, token_a: str, body, complaint) -> None:
    answer = httpx.post(f"{hub.base}/ocpi/2.2.1/credentials", headers=token_header(token_a), json=body)
    assert answer.status_code == 200  # status_codes.asciidoc: valid JSON reaches the OCPI layer
    assert answer.json()["status_code"] == 2001
    assert complaint in answer.json()["status_message"]


@pytest.mark.parametrize("url", ["not a url", "ftp://x/versions", "http://x/a b"])
def test_a_credentials_url_that_is_no_http_url_is_said_so_not_as_a_regex(hub: Hub, token_a: str, url: str) -> None:
    # A walkthrough: "not a url" was answered "Expected `str` matching regex '^https?://[^\\\\x00-..." (escaped twice).
    body = {"token": "abc", "url": url, "roles": [_CPO | {"business_details": {"name": "x"}}]}
    answer = httpx.post(f"{hub.base}/ocpi/2.2.1/credentials", headers=token_header(token_a), json=body)
    assert (answer.status_code, answer.json()["status_code"]) == (200, 2001), answer.text
    message = answer.json()["status_message"]
    assert f"url is not an http or https URL free of spaces and control characters, got {url!r}" in message, message
    assert "regex" not in message


@pytest.mark.parametrize("host", ["xn--", "xn--a", "a\u200db"])
def test_a_versions_url_whose_host_is_no_valid_idna_name_answers_2001_naming_the_url(hub: Hub, host: str) -> None:
    # The HTTP client raised idna's error, which is no HTTP error, when the hub fetched the party's versions: a 500.
    role = {"role": "CPO", "country_code": "NL", "party_id": unique_party_id(), "business_details": {"name": "x"}}
    token_a = hub.invite("Odd Host Co", (role["role"], role["country_code"], role["party_id"]))["token_a"]
    body = {"token": "abc", "url": f"http://{host}/versions", "roles": [role]}
    answer = httpx.post(f"{hub.base}/ocpi/2.2.1/credentials", headers=token_header(token_a), json=body)
    assert answer.status_code == 200 and answer.json()["status_code"] == 2001, answer.text
    assert "url" in answer.json()["status_message"]


def test_empty_body_answers_2001(hub: Hub, token_a: str) -> None:
    answer = httpx.post(f"{hub.base}/ocpi/2.2.1/credentials", headers=token_header(token_a))
    assert answer.json()["status_code"] == 2001
    assert "empty" in answer.json()["status_message"]


def test_oversized_body_answers_413(hub: Hub, token_a: str) -> None:
    # the test hub runs with the default 10 MB limit
    answer = httpx.post(
        f"{hub.base}/ocpi/2.2.1/credentials",
        headers=token_header(token_a),
        content=b'{"token": "' + b"x" * 11_000_000 + b'"}',
        timeout=60,
    )
    assert answer.status_code == 413
    assert _is_envelope(answer.json())
    assert "too large" in answer.json()["status_message"]


def test_a_body_announced_too_large_is_refused_413_before_the_hub_asks_for_it_with_100_continue(
    hub: Hub, cpo_and_emsp, db
) -> None:
    # RFC 9110, 10.1.1: a server that will refuse the request answers with a final status instead of 100 Continue,
    # so the client does not send 11 MB for nothing.
    cpo, emsp = cpo_and_emsp
    (_, cc, pid), (_, to_cc, to_pid) = cpo.roles[0], emsp.roles[0]
    request_id = str(uuid.uuid4())
    head = (f"PUT /ocpi/2.2.1/receiver/locations/{cc}/{pid}/LOC1 HTTP/1.1\r\nHost: hub\r\n"
            f"Authorization: {token_header(cpo.hub_token)['Authorization']}\r\nContent-Type: application/json\r\n"
            f"OCPI-from-country-code: {cc}\r\nOCPI-from-party-id: {pid}\r\nOCPI-to-country-code: {to_cc}\r\n"
            f"OCPI-to-party-id: {to_pid}\r\nX-Request-ID: {request_id}\r\nExpect: 100-continue\r\n"
            "Content-Length: 11000000\r\n\r\n")  # fmt: skip
    parts = urlsplit(hub.base)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as client:
        client.sendall(head.encode())
        answer = client.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    envelope = json.loads(answer.partition(b"\r\n\r\n")[2])
    assert envelope["status_code"] == 2000 and "too large" in envelope["status_message"], envelope
    assert emsp.functional() == []
    [row] = db.run(db.fetch("SELECT http_status FROM routing_log WHERE request_id = $1", request_id))
    assert row["http_status"] == 413


def test_a_relayed_body_that_is_not_utf8_answers_400_naming_the_byte_and_is_not_forwarded(
    hub: Hub, cpo_and_emsp, db
) -> None:
    # The location cache refused such a location while its receivers got it: RFC 8259, 8.1, JSON is UTF-8.
    cpo, emsp = cpo_and_emsp
    (_, cc, pid), (_, to_cc, to_pid) = cpo.roles[0], emsp.roles[0]
    latin1 = json.dumps(
        {"country_code": cc, "party_id": pid, "id": "LOC1", "name": "Stra\u00dfe"}, ensure_ascii=False
    ).encode("latin-1")
    for method, path, body in [("PUT", f"receiver/locations/{cc}/{pid}/LOC1", latin1),
                               ("PUT", f"receiver/tariffs/{cc}/{pid}/T1", b'{"id": "T1", "x": "\xff"}')]:  # fmt: skip
        answer = cpo.call(hub.base, method, path, to=(to_cc, to_pid), content=body,
                          headers={"X-Request-ID": (request_id := str(uuid.uuid4()))})  # fmt: skip
        assert (answer.status_code, answer.json()["status_code"]) == (400, 2001), answer.text
        assert "is not UTF-8" in answer.json()["status_message"], answer.text
        [row] = db.run(db.fetch("SELECT routing, http_status FROM routing_log WHERE request_id = $1", request_id))
        assert (row["routing"], row["http_status"]) == ("rejected", 400)
    assert emsp.functional() == []


def test_a_compressed_request_body_is_answered_415_saying_so_and_is_not_forwarded(hub: Hub, cpo_and_emsp, db) -> None:
    # Found by a CPO developer's walkthrough: a gzipped PUT was refused as "not UTF-8 (byte 1 is 0x8b)".
    cpo, emsp = cpo_and_emsp
    (_, cc, pid), (_, to_cc, to_pid) = cpo.roles[0], emsp.roles[0]
    body = gzip.compress(json.dumps({"country_code": cc, "party_id": pid, "id": "LOC1"}).encode())
    request_id = str(uuid.uuid4())
    answer = cpo.call(hub.base, "PUT", f"receiver/locations/{cc}/{pid}/LOC1", to=(to_cc, to_pid), content=body,
                      headers={"Content-Encoding": "gzip", "X-Request-ID": request_id})  # fmt: skip
    assert (answer.status_code, answer.json()["status_code"]) == (415, 2000), answer.text
    said = "the request body is sent with Content-Encoding 'gzip': the hub takes request bodies uncompressed"
    assert answer.json()["status_message"] == said
    [row] = db.run(db.fetch("SELECT routing, http_status, from_party_id FROM routing_log WHERE request_id = $1",
                            request_id))  # fmt: skip
    assert (row["routing"], row["http_status"], row["from_party_id"]) == ("rejected", 415, pid)
    identity = cpo.call(hub.base, "PUT", f"receiver/locations/{cc}/{pid}/LOC1", to=(to_cc, to_pid),
                        content=gzip.decompress(body), headers={"Content-Encoding": "identity"})  # fmt: skip
    assert identity.json()["status_code"] == 1000, identity.text
    assert len(emsp.functional()) == 1


def test_unknown_path_answers_404_with_an_ocpi_body(hub: Hub) -> None:
    answer = httpx.get(f"{hub.base}/ocpi/2.2.1/nonsense/here")
    assert answer.status_code in (401, 404)
    answer = httpx.get(f"{hub.base}/no/such/thing")
    assert answer.status_code == 404
    assert _is_envelope(answer.json()) and "no such endpoint" in answer.json()["status_message"]


def test_unknown_module_answers_404_for_a_registered_party(hub: Hub, start_party) -> None:
    party = start_party(("CPO", "NL", pid := unique_party_id()))
    party.register_at(hub.versions_url, hub.invite(party.name, ("CPO", "NL", pid))["token_a"])
    answer = httpx.get(f"{hub.base}/ocpi/2.2.1/sender/parking", headers=token_header(party.hub_token))
    assert answer.status_code == 404
    assert "parking" in answer.json()["status_message"]


def test_wrong_method_answers_405_with_an_ocpi_body(hub: Hub, token_a: str) -> None:
    answer = httpx.patch(f"{hub.base}/ocpi/2.2.1/credentials", headers=token_header(token_a), json={})
    assert answer.status_code == 405
    assert _is_envelope(answer.json())
    assert set(answer.headers["Allow"].split(", ")) >= {"GET", "POST", "PUT", "DELETE"}


def test_log_lines_are_json_with_the_request_id(hub: Hub, token_a: str) -> None:
    import json

    httpx.get(hub.versions_url, headers=token_header(token_a) | {"X-Request-ID": "log-me-42"})
    where = urlsplit(hub.base)
    with socket.create_connection((where.hostname, where.port), timeout=10) as client:
        client.sendall(b"NOT HTTP\r\n\r\n")  # uvicorn logs a warning of its own about it
        client.recv(65536)
    time.sleep(0.2)
    # Every line but the two the hub prints for whoever starts it is JSON, uvicorn's own and this session's alike.
    text = [line for line in hub.log().splitlines() if not line.startswith("ocpi-hub: ")]
    lines = [json.loads(line) for line in text]
    mine = [line for line in lines if line.get("request_id") == "log-me-42"]
    assert mine and mine[0]["event"] == "http_request" and mine[0]["path"] == "/ocpi/versions"
    assert any(line.get("logger") == "uvicorn.error" and line["level"] == "warning" for line in lines)
