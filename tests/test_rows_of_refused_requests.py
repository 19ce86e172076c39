"""A request refused before the hub routed it still leaves a row an auditor finds under the parties it was between:
the caller its token names (and its OCPI-from party), and the receiver its OCPI-to headers address. Found by a CPO
developer's walkthrough: the rows of a body too large (413) and of an X-Request-ID too long named nobody, though the
caller had sent a valid token C. A caller no token names names nobody."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from storage.log_body import body_of
from tests.conftest import Db, Hub, Services, hub_env, start_hub
from tests.parties import Party
from tests.test_credentials_rotation import console_page
from tests.test_routing import _roles, party_key


def _row(db: Db, correlation_id: str) -> dict[str, object]:
    [row] = db.run(db.fetch("SELECT http_status, routing, caller_platform_id, from_country_code, from_party_id, "
                            "to_country_code, to_party_id FROM routing_log WHERE correlation_id = $1",
                            correlation_id))  # fmt: skip
    return dict(row)


def _put(hub: Hub, token: str | None, cpo: tuple[str, str], emsp: tuple[str, str], correlation_id: str,
         content: bytes, **headers: str) -> httpx.Response:  # fmt: skip
    """A location PUT from cpo to emsp with the token given (None: no Authorization header), as sent: routing headers
    and all."""
    (cc, pid), (to_cc, to_pid) = cpo, emsp
    sent = {
        "Content-Type": "application/json",
        "OCPI-from-country-code": cc,
        "OCPI-from-party-id": pid,
        "OCPI-to-country-code": to_cc,
        "OCPI-to-party-id": to_pid,
        "X-Correlation-ID": correlation_id,
    } | headers
    if token is not None:
        sent["Authorization"] = f"Token {base64.b64encode(token.encode()).decode()}"
    return httpx.put(f"{hub.base}/ocpi/2.2.1/receiver/locations/{cc}/{pid}/LOC1", headers=sent, content=content,
                     timeout=30)  # fmt: skip


def test_a_request_refused_before_it_was_routed_names_its_caller_and_receiver_in_its_row(
    cpo_and_emsp: tuple[Party, Party], hub: Hub, db: Db
) -> None:
    cpo, emsp = cpo_and_emsp
    caller = db.run(db.fetchval("SELECT platform_id FROM party_role WHERE party_id = $1", party_key(cpo)[1]))
    body = b'{"id": "LOC1"}'
    refusals = [
        ("a body too large", b" " * 10_000_001 + body, {}, 413),
        ("an X-Request-ID too long", body, {"X-Request-ID": "r" * 300}, 200),  # OCPI 2001: tests/test_header_errors
    ]
    for _, content, headers, status in refusals:
        correlation_id = str(uuid.uuid4())
        answer = _put(hub, cpo.hub_token, party_key(cpo), party_key(emsp), correlation_id, content, **headers)
        assert answer.status_code == status, answer.text
        assert _row(db, correlation_id) == {
            "http_status": status, "routing": "rejected", "caller_platform_id": caller,
            "from_country_code": "NL", "from_party_id": party_key(cpo)[1],
            "to_country_code": "NL", "to_party_id": party_key(emsp)[1],
        }  # fmt: skip
    # an unknown token names nobody: anyone could have sent it, and made up whom it addresses (a review's point)
    correlation_id = str(uuid.uuid4())
    assert _put(hub, "not-a-token", party_key(cpo), party_key(emsp), correlation_id, body).status_code == 401
    assert _row(db, correlation_id) == {
        "http_status": 401, "routing": "rejected", "caller_platform_id": None, "from_country_code": None,
        "from_party_id": None, "to_country_code": None, "to_party_id": None,
    }  # fmt: skip
    # a token A (invited, not registered): the platform it was given to
    roles = _roles("CPO")
    invited = hub.invite("invited CPO", roles)
    correlation_id = str(uuid.uuid4())
    assert _put(hub, invited["token_a"], roles[1:], party_key(emsp), correlation_id, body).status_code == 401
    row = _row(db, correlation_id)
    assert (row["caller_platform_id"], row["from_party_id"], row["to_party_id"]) == (
        invited["platform_id"], roles[2], party_key(emsp)[1]), row  # fmt: skip
    assert emsp.functional() == []


def _body_kept(db: Db, correlation_id: str) -> tuple[bytes | None, int]:
    [row] = db.run(db.fetch("SELECT request_body, request_body_size FROM routing_log WHERE correlation_id = $1",
                            correlation_id))  # fmt: skip
    return body_of(row["request_body"]) or None, row["request_body_size"]


def test_the_row_of_a_caller_no_registered_partys_token_names_keeps_its_bodys_size_not_the_body(
    cpo_and_emsp: tuple[Party, Party], hub: Hub, db: Db
) -> None:
    # a security review's point: anyone could fill the log's disk, a body up to the log's body cap a request
    cpo, emsp = cpo_and_emsp
    body = b'{"id": "LOC1", "name": "' + b"x" * 50_000 + b'"}'
    token_a = hub.invite("invited CPO", _roles("CPO"))["token_a"]
    long_id = {"X-Request-ID": "r" * 300}  # the token first: 401 (tests/test_header_errors)
    for token, headers, status in [(None, {}, 401), ("not-a-token", {}, 401), (token_a, {}, 401),
                                   ("not-a-token", long_id, 401), (None, long_id, 401)]:  # fmt: skip
        correlation_id = str(uuid.uuid4())
        answer = _put(hub, token, party_key(cpo), party_key(emsp), correlation_id, body, **headers)
        assert answer.status_code == status, answer.text
        assert _body_kept(db, correlation_id) == (None, len(body)), (token, headers)
    # a registered party's is kept, refused or not
    for headers, status in [({}, 200), (long_id, 200)]:
        correlation_id = str(uuid.uuid4())
        answer = _put(hub, cpo.hub_token, party_key(cpo), party_key(emsp), correlation_id, body, **headers)
        assert answer.status_code == status, answer.text
        assert _body_kept(db, correlation_id) == (body, len(body))


def _answer_on(client: socket.socket) -> tuple[bytes, bytes]:
    """The status line and body of the next answer read from the connection (one with a Content-Length)."""
    received = b""
    while b"\r\n\r\n" not in received:
        received += client.recv(65536)
    head, _, body = received.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?im)^content-length: *(\d+)", head)[1])  # type: ignore[index]
    while len(body) < length:
        body += client.recv(65536)
    return head.split(b"\r\n", 1)[0], body


def test_a_request_no_token_names_is_answered_401_without_its_body_being_read_and_its_connection_goes_on(
    cpo_and_emsp: tuple[Party, Party], hub: Hub, db: Db
) -> None:
    # a security review's point: anyone could have the hub read and hold OCPI_HUB_MAX_BODY_BYTES (10 MB) a request
    cpo, emsp = cpo_and_emsp
    (cc, pid), (to_cc, to_pid) = party_key(cpo), party_key(emsp)
    host, port = hub.base.removeprefix("http://").split(":")
    announced = 20_000_000  # over the hub's body cap: a 413 had its body been read, before its token was looked at
    for token in (None, "not-a-token"):
        correlation_id = str(uuid.uuid4())
        head = (f"PUT /ocpi/2.2.1/receiver/locations/{cc}/{pid}/LOC1 HTTP/1.1\r\nHost: hub\r\n"
                f"Content-Type: application/json\r\nContent-Length: {announced}\r\nX-Correlation-ID: {correlation_id}"
                f"\r\nOCPI-to-country-code: {to_cc}\r\nOCPI-to-party-id: {to_pid}\r\n")  # fmt: skip
        if token:
            head += f"Authorization: Token {base64.b64encode(token.encode()).decode()}\r\n"
        with socket.create_connection((host, int(port)), timeout=30) as client:
            client.sendall(head.encode() + b"\r\n" + b" " * 1000)
            # the rest of the body not sent: waited for, it would be a 408 once OCPI_HUB_FORWARD_TIMEOUT_S (2 s) passed
            status, body = _answer_on(client)
            assert (status, json.loads(body)["status_code"]) == (b"HTTP/1.1 401 Unauthorized", 2000), body
            assert _body_kept(db, correlation_id) == (None, announced)
            # the body sent afterwards is dropped as it comes, and the next request on the connection is answered
            client.sendall(b" " * (announced - 1000) + b"GET /ocpi/versions HTTP/1.1\r\nHost: hub\r\n\r\n")
            assert _answer_on(client)[0] == b"HTTP/1.1 401 Unauthorized"
    assert emsp.functional() == []


def test_the_row_of_a_caller_no_registered_partys_token_names_keeps_its_path_query_and_headers_cut_short(
    cpo_and_emsp: tuple[Party, Party], hub: Hub, db: Db
) -> None:
    # a security review's point: with no token, a 60 KB path, query or header filled the log's disk as fast as a body
    # did before its size alone was kept; a row then took up to a request's 64 KiB head
    cpo, _ = cpo_and_emsp
    (cc, pid), long_text = party_key(cpo), "L" * 20_000
    for token, status in ((None, 401), ("not-a-token", 401), (cpo.hub_token, 200)):
        correlation_id = str(uuid.uuid4())
        headers = {"X-Correlation-ID": correlation_id, "OCPI-to-party-id": long_text, "OCPI-to-country-code": "NL"}
        if token is not None:
            headers["Authorization"] = f"Token {base64.b64encode(token.encode()).decode()}"
        path = f"/ocpi/2.2.1/sender/locations/{cc}/{pid}/{long_text}"
        answer = httpx.get(f"{hub.base}{path}?q={long_text}", headers=headers, timeout=30)
        assert answer.status_code == status, answer.text
        [row] = db.run(db.fetch("SELECT path, query, request_headers FROM routing_log WHERE correlation_id = $1",
                                correlation_id))  # fmt: skip
        logged = json.loads(row["request_headers"])
        if status == 401:
            cut = " characters, cut: no registered party sent it)"
            assert logged["ocpi-to-party-id"] == "L" * 512 + "... (20,000" + cut, token
            assert row["path"] == f"{path[:512]}... ({len(path):,}{cut}"
            assert row["query"] == f"q={long_text}"[:512] + "... (20,002" + cut
        else:  # a registered party's is kept whole, refused (an unknown receiver here) or not
            assert (logged["ocpi-to-party-id"], row["query"]) == (long_text, f"q={long_text}")
            assert row["path"] == path


@pytest.fixture
def quiet_hub(services: Services, empty_database: str, tmp_path: Path) -> Iterator[tuple[Hub, Db]]:
    """A hub of its own with no parties, and its database. On the shared hub another row (a pull of another test's
    party, a ClientInfo push) could be the batch in flight when the lock is taken: the test's row, still queued, would
    then be changed before it is written (hub.ocpi.late_answer), not amended, which is right but not this case."""
    env = hub_env(services, tmp_path / "hub", OCPI_HUB_DATABASE_URL=empty_database,
                  OCPI_HUB_REDIS_PREFIX=f"{services.redis_prefix}quiet-{tmp_path.name}:")  # fmt: skip
    hub = start_hub(env, tmp_path / "hub.log")
    db = Db(empty_database)
    try:
        yield hub, db
    finally:
        db.close()
        hub.stop()


def test_a_refused_request_whose_row_commits_late_keeps_its_refusal_and_claims_no_exchange(
    quiet_hub: tuple[Hub, Db],
) -> None:
    # An auditor's walkthrough: an unknown token, its row's commit held up past the commit timeout (2 s in the tests),
    # was answered 200/4000 "the exchange itself went through", and its amendment said the row shows what the receiver
    # answered, though nothing was forwarded.
    hub, db = quiet_hub
    correlation_id = str(uuid.uuid4())
    nobody = (("NL", "AAA"), ("NL", "BBB"))

    async def refused_while_commits_stall() -> httpx.Response:
        async with db.conn.transaction():
            await db.conn.execute("LOCK TABLE routing_log_chain IN ACCESS EXCLUSIVE MODE")
            return await asyncio.to_thread(_put, hub, "not-a-token", *nobody, correlation_id, b'{"id": "LOC1"}')

    answer = db.run(refused_while_commits_stall())
    assert (answer.status_code, answer.json()["status_code"]) == (401, 2000), answer.text
    told = answer.json()["status_message"]
    assert told == ("unknown credentials token: the hub refused this request and forwarded nothing; the routing "
                    "log could not commit its row in time")  # fmt: skip
    for _ in range(100):  # the row and its amendment, committed once the lock is gone
        amended = db.run(db.fetch("SELECT r.http_status, r.ocpi_status_code, a.http_status AS told_status, "
                                  "a.ocpi_status_code AS told_code, a.message FROM routing_log AS r "
                                  "LEFT JOIN routing_log_amendment AS a USING (chain_id, seq) "
                                  "WHERE r.correlation_id = $1", correlation_id))  # fmt: skip
        if amended and amended[0]["message"] is not None:
            break
        time.sleep(0.1)
    assert [tuple(row) for row in amended] == [(401, 2000, 401, 2000, told)]
    with hub.admin() as admin:
        [item] = admin.get("/admin/api/routing-log", params={"correlation_id": correlation_id}).json()["items"]
    page = console_page(hub, f"/console/log?correlation_id={correlation_id}")
    [title] = re.findall(r'title="(Answered instead: [^"]*)"', page)
    assert title.endswith("says what the hub answered.") and "receiver" not in title and "exchange" not in title
    assert item["answered_instead"]["status_message"] == told
