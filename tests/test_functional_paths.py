"""A functional request on a path with an empty segment before its module ("/ocpi/2.2.1//sender/locations") is
refused by the relay with an OCPI 404 and its routing-log row: Litestar would have routed it as if its slashes were
single and answered a 404 of its own, with no row. Empty segments after the module: tests/test_url_shapes.py."""

from __future__ import annotations

import http.client
import json
import uuid
from urllib.parse import urlsplit

import pytest

from tests.conftest import Db, Hub
from tests.test_routing import _roles, party_key


def _sent(hub: Hub, method: str, path: str, headers: dict[str, str]) -> tuple[int, dict[str, object]]:
    """method path as written (httpx would tidy the slashes); the answer's status and body."""
    base = urlsplit(hub.base)
    connection = http.client.HTTPConnection(base.hostname or "", base.port, timeout=30)
    try:
        connection.request(method, path, body=b"{}" if method != "GET" else None, headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/ocpi/2.2.1//sender/locations"),
        ("GET", "/ocpi/2.2.1/sender//locations"),
        ("GET", "//ocpi/2.2.1/sender/locations"),
        ("GET", "/ocpi//2.2.1/sender/locations/LOC1"),
        ("PUT", "/ocpi/2.2.1//receiver//tokens/{cc}/{pid}/TOK1"),
        ("GET", "/ocpi/2.2.1//pages/0123"),
        ("GET", "/ocpi/2.2.1//snapshots/0123"),
    ],
)
def test_a_path_with_an_empty_segment_before_the_module_answers_404_with_its_row(
    hub: Hub, connect_party, db: Db, method: str, path: str
) -> None:
    emsp = connect_party(_roles("EMSP"))
    cpo = connect_party(_roles("CPO"), modules={"locations": ["SENDER"], "tokens": ["RECEIVER"]})
    cc, pid = party_key(emsp)
    request_id = str(uuid.uuid4())
    headers = emsp.token_header(emsp.hub_token or "") | {
        "OCPI-from-country-code": cc, "OCPI-from-party-id": pid, "OCPI-to-country-code": party_key(cpo)[0],
        "OCPI-to-party-id": party_key(cpo)[1], "X-Request-ID": request_id, "Content-Type": "application/json",
    }  # fmt: skip
    status, answer = _sent(hub, method, path.format(cc=cc, pid=pid), headers)
    assert (status, answer["status_code"]) == (404, 2000), answer
    assert "empty segment before the module" in str(answer["status_message"]), answer
    assert cpo.functional() == []
    rows = db.run(db.fetch("SELECT routing, http_status, ocpi_status_code, from_party_id FROM routing_log "
                           "WHERE request_id = $1", request_id))  # fmt: skip
    assert [tuple(row) for row in rows] == [("rejected", 404, 2000, pid)]


def test_an_unauthenticated_request_on_such_a_path_answers_401_with_its_row(hub: Hub, db: Db) -> None:
    request_id = str(uuid.uuid4())
    status, answer = _sent(hub, "GET", "/ocpi/2.2.1//sender/locations", {"X-Request-ID": request_id})
    assert (status, answer["status_code"]) == (401, 2000), answer
    rows = db.run(db.fetch("SELECT routing, http_status FROM routing_log WHERE request_id = $1", request_id))
    assert [tuple(row) for row in rows] == [("rejected", 401)]
