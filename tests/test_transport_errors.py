"""Transport rules: 401 without a known token, request ids echoed, bad input answered with a clear OCPI error."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import http.client
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest
import uvicorn

from hub.http_protocol import HeadWithBody, OcpiHttpToolsProtocol
from tests.conftest import Hub, unique_party_id
from tests.parties import free_port, token_header


@pytest.fixture
def token_a(hub: Hub) -> str:
    return hub.invite("Bad Input Co", ("CPO", "NL", unique_party_id()))["token_a"]


_CPO = {"role": "CPO", "country_code": "NL", "party_id": "ABC"}
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
        # the parser's complaint was "User callback error": uvicorn's URL parsing, in a callback, refused it
        (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: hub\r\n\r\n", "url is too long"),
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


@pytest.mark.parametrize(
    ("request_line", "logged"),
    [
        (b"PUT /ocpi/2.2.1/receiver/locations/NL/ABC/L1 HTTP/1.1", True),  # the relay
        (b"POST /ocpi/2.2.1/credentials HTTP/1.1", False),  # Litestar's routes
    ],
)
def test_a_body_that_stops_coming_is_answered_408_within_the_timeout(
    hub: Hub, db, token_a: str, request_line: bytes, logged: bool
) -> None:
    # A client that announces 100 bytes and sends 5 would otherwise hold its request and connection forever.
    # The test hub waits OCPI_HUB_FORWARD_TIMEOUT_S = 2 s for a body, as for a party's answer.
    where = urlsplit(hub.base)
    request_id = f"slow-body-{logged}"
    with socket.create_connection((where.hostname, where.port), timeout=10) as client:
        headers = token_header(token_a) | {"X-Request-ID": request_id, "Content-Length": "100"}
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


def test_a_body_the_parser_refuses_is_logged_with_the_400_the_caller_got(hub: Hub, db) -> None:
    # The protocol answers a chunk size that is not hex and closes; the relay, reading the body, saw only the
    # disconnect and logged a 404 "the client went away" that nobody was sent.
    where = urlsplit(hub.base)
    with socket.create_connection((where.hostname, where.port), timeout=10) as client:
        client.sendall(b"PUT /ocpi/2.2.1/receiver/locations/NL/ABC/L1 HTTP/1.1\r\nHost: hub\r\nX-Request-ID: bad-chunk"
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
        ({"token": "abc", "url": "ftp://x", "roles": [{}]}, "url"),
        ({"token": "abc", "url": "http://x/\x00", "roles": [{}]}, "url"),
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
            "country_code",
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


@contextlib.contextmanager
def _uvicorn_with_hub_protocol(app, **options) -> Iterator[tuple[str, int]]:  # type: ignore[no-untyped-def]
    """uvicorn with the hub's HTTP protocol (as `ocpi-hub serve` runs it), serving `app` in a thread of its own."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, http=OcpiHttpToolsProtocol, loop="uvloop",
                            lifespan="off", log_config=None, **options)  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.started
        yield "127.0.0.1", port
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _first_read(address: tuple[str, int], request: bytes, then: bytes = b"") -> tuple[bytes, bytes]:
    """What the first recv() gives, and the rest of the answer up to the connection's close."""
    with socket.create_connection(address, timeout=10) as client:
        client.sendall(request)
        first = client.recv(65536)
        if then:
            client.sendall(then)
        rest = b""
        while chunk := client.recv(65536):
            rest += chunk
    return first, rest


def test_a_response_head_waits_for_its_body_but_streamed_heads_and_100_continue_go_out_at_once() -> None:
    # The app pauses 0.3 s between a response's head and its body. uvicorn writes a head as soon as it has it:
    # two system calls and two segments a response, which the hub's protocol makes one for a Content-Length answer.
    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] != "http":
            return
        request = await receive()
        streamed = scope["path"] == "/streamed"
        body = request.get("body", b"") or b"the body"
        length = [] if streamed else [(b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": [*length, (b"connection", b"close")]})
        await asyncio.sleep(0.3)
        await send({"type": "http.response.body", "body": body})

    with _uvicorn_with_hub_protocol(app) as address, _collector_off():
        first, rest = _first_read(address, b"GET /whole HTTP/1.1\r\nHost: hub\r\n\r\n")
        assert first.startswith(b"HTTP/1.1 200 OK\r\n") and first.endswith(b"\r\n\r\nthe body") and rest == b""

        first, rest = _first_read(address, b"GET /streamed HTTP/1.1\r\nHost: hub\r\n\r\n")  # chunked: head at once
        assert first.startswith(b"HTTP/1.1 200 OK\r\n") and first.endswith(b"\r\n\r\n")
        assert b"transfer-encoding: chunked" in first and rest == b"8\r\nthe body\r\n0\r\n\r\n"

        first, rest = _first_read(address, b"HEAD /whole HTTP/1.1\r\nHost: hub\r\n\r\n")  # no body will follow
        assert first.startswith(b"HTTP/1.1 200 OK\r\n") and first.endswith(b"\r\n\r\n") and rest == b""

        # A client that sends its body only after "100 Continue" gets it before the app has an answer
        first, rest = _first_read(
            address, b"PUT /whole HTTP/1.1\r\nHost: hub\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n", b"hello"
        )
        assert first == b"HTTP/1.1 100 Continue\r\n\r\n"
        assert rest.startswith(b"HTTP/1.1 200 OK\r\n") and rest.endswith(b"\r\n\r\nhello")

        # Answered requests leave nothing behind that only the garbage collector could free (a reference cycle a
        # request costs a collection of several ms every few hundred requests under load).
        assert not [o for o in gc.get_objects() if isinstance(o, HeadWithBody)]


@contextlib.contextmanager
def _collector_off() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def test_an_answer_the_client_stops_reading_is_dropped_after_the_keep_alive_timeout_not_held_for_ever() -> None:
    # uvicorn kept such an answer in the connection's write buffer (here 64 MB) for as long as the client stayed.
    body = b"x" * (64 << 20)

    async def large(scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] == "http":
            await receive()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-length", b"%d" % len(body))]})  # fmt: skip
            await send({"type": "http.response.body", "body": body})

    with _uvicorn_with_hub_protocol(large, timeout_keep_alive=2) as address:
        with socket.socket() as client:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            client.connect(address)
            client.sendall(b"GET / HTTP/1.1\r\nHost: hub\r\n\r\n")
            assert client.recv(1024).startswith(b"HTTP/1.1 200 OK")
            time.sleep(5.5)  # not reading: its writes pause, and end 2 s after the last progress (looked at each s)
            client.settimeout(5)
            received = 0
            with contextlib.suppress(ConnectionResetError):
                while chunk := client.recv(1 << 20):
                    received += len(chunk)
            assert received < len(body) // 2, received  # what was in flight, then the connection ended
        # A client that reads slowly but keeps reading gets all of it, though that takes longer than the 2 s.
        with socket.create_connection(address, timeout=5) as client:
            client.sendall(b"GET / HTTP/1.1\r\nHost: hub\r\nConnection: close\r\n\r\n")
            started, received = time.monotonic(), 0
            while chunk := client.recv(1 << 20):
                received += len(chunk)
                time.sleep(0.04)  # at most 25 MB/s: about 3 s for the 64 MB
            assert received > len(body) and time.monotonic() - started > 2.5


async def _hello(scope, receive, send):  # type: ignore[no-untyped-def]
    if scope["type"] == "http":
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]})
        await send({"type": "http.response.body", "body": b"hello"})


def _answer_while_trickling(
    client: socket.socket, trickle: bytes, every_s: float, give_up_s: float, piece: int = 1
) -> bytes:
    """Send `trickle` a piece (a byte) every every_s until the server answers and closes; what it answered."""
    client.settimeout(every_s)
    answer, ends = b"", time.monotonic() + give_up_s
    for byte in (trickle[i : i + piece] for i in range(0, len(trickle), piece)):
        assert time.monotonic() < ends, f"no answer within {give_up_s} s"
        with contextlib.suppress(OSError):  # the server closed: what it said is read below
            client.sendall(byte)
        with contextlib.suppress(TimeoutError):
            while chunk := client.recv(65536):
                answer += chunk
            return answer  # closed
    raise AssertionError("trickled everything without an answer")


def test_a_request_head_that_does_not_come_is_answered_408_and_its_connection_closed() -> None:
    # uvicorn waits for ever for a request's head: a connection that sends nothing, or a byte now and then, holds
    # its socket and file descriptor. The hub's protocol answers 408 once one has waited timeout_keep_alive (the
    # hub's OCPI_HUB_KEEP_ALIVE_S; 2 s here).
    with _uvicorn_with_hub_protocol(_hello, timeout_keep_alive=2) as address:
        with socket.create_connection(address, timeout=10) as silent:
            started = time.monotonic()
            answer = b""
            while chunk := silent.recv(65536):
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 408") and 1.5 < time.monotonic() - started < 4.5
        with socket.create_connection(address) as trickling:
            started = time.monotonic()
            answer = _answer_while_trickling(trickling, b"GET / HTTP/1.1\r\nHost: hub\r\nX-Slow: " + b"a" * 100, 0.2, 8)
            assert answer.startswith(b"HTTP/1.1 408") and 1.5 < time.monotonic() - started < 4.5
        envelope = json.loads(answer.partition(b"\r\n\r\n")[2])
        assert _is_envelope(envelope) and envelope["status_code"] == 2000
        assert envelope["status_message"] == "no complete request head arrived within 2 s"
        # A kept-alive connection whose requests come, slowly, is left alone: each one gets its answer.
        with socket.create_connection(address, timeout=10) as steady:
            for _ in range(6):
                steady.sendall(b"GET / HTTP/1.1\r\nHost: hub\r\n\r\n")
                assert steady.recv(65536).startswith(b"HTTP/1.1 200 OK")
                time.sleep(1.2)


def test_a_request_head_over_64_kib_is_answered_431_at_once_while_smaller_ones_are_served() -> None:
    # httptools copies a header's value whole for every read that adds to it: one client sending an endless header
    # held the worker's event loop (other requests waited 6 s once it had sent 140 MB) and grew its memory, until the
    # head deadline (OCPI_HUB_KEEP_ALIVE_S, 75 s by default) ended it.
    with _uvicorn_with_hub_protocol(_hello, timeout_keep_alive=30) as address:
        with socket.create_connection(address) as padding:
            started = time.monotonic()
            head = b"GET / HTTP/1.1\r\nHost: hub\r\nX-Padding: " + b"a" * (4 << 20)
            answer = _answer_while_trickling(padding, head, 0.05, 20, piece=64 * 1024)
            assert answer.startswith(b"HTTP/1.1 431 ") and time.monotonic() - started < 2
        envelope = json.loads(answer.partition(b"\r\n\r\n")[2])
        assert _is_envelope(envelope) and envelope["status_code"] == 2000
        assert envelope["status_message"] == "the request line and headers are larger than the 64 KiB the hub takes"
        # A head of 60 KB that comes in many reads, and a small head with a large body in one write, are served.
        with socket.create_connection(address) as client:
            head = b"GET / HTTP/1.1\r\nConnection: close\r\nAuthorization: Token " + b"A" * 60_000 + b"\r\n\r\n"
            assert _answer_while_trickling(client, head, 0.01, 10, piece=4096).startswith(b"HTTP/1.1 200 OK")
        with socket.create_connection(address, timeout=10) as client:
            body = b"x" * (4 << 20)
            client.sendall(b"PUT / HTTP/1.1\r\nHost: hub\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            assert client.recv(65536).startswith(b"HTTP/1.1 200 OK")
