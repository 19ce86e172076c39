"""A party's own credentials requests leave their routing-log rows by whatever spelling of the path reaches the
credentials handlers: Litestar routes "//ocpi/2.2.1//credentials/" there too. Found by a security review: a PUT or a
DELETE with a doubled slash rotated or unregistered without a row."""

from __future__ import annotations

import http.client
import json
import uuid
from typing import Any
from urllib.parse import urlsplit

from tests.conftest import Db, Hub
from tests.parties import token_header
from tests.test_routing import _roles


def _sent(hub: Hub, method: str, path: str, token: str, body: Any = None) -> tuple[int, dict[str, Any], str]:
    """method path with token, the path as written (httpx would tidy it); the answer's status and body, and the
    request id it was sent with."""
    request_id = str(uuid.uuid4())
    headers = token_header(token) | {"X-Request-ID": request_id, "Content-Type": "application/json"}
    base = urlsplit(hub.base)
    connection = http.client.HTTPConnection(base.hostname or "", base.port, timeout=30)
    try:
        connection.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read()), request_id
    finally:
        connection.close()


def test_a_credentials_request_on_a_path_with_doubled_slashes_has_its_row(hub: Hub, connect_party, db: Db) -> None:
    party = connect_party(_roles("CPO"))
    platform_id = db.run(db.fetchval("SELECT platform_id FROM party_role WHERE party_id = $1", party.roles[0][2]))
    paths = ["//ocpi/2.2.1/credentials", "/ocpi//2.2.1/credentials", "/ocpi/2.2.1//credentials",
             "/ocpi/2.2.1/credentials//"]  # fmt: skip
    calls = [("GET", path, None) for path in paths]
    calls += [("PUT", "//ocpi/2.2.1/credentials", party.credentials(party.token_b)),
              ("DELETE", "/ocpi/2.2.1//credentials", None)]  # fmt: skip
    for method, path, body in calls:
        status, answer, request_id = _sent(hub, method, path, party.hub_token or "", body)
        assert (status, answer["status_code"]) == (200, 1000), (method, path, answer)
        if method == "PUT":
            party.hub_token = answer["data"]["token"]
        rows = db.run(db.fetch("SELECT module, method, caller_platform_id FROM routing_log WHERE request_id = $1",
                               request_id))  # fmt: skip
        assert [tuple(row) for row in rows] == [("credentials", method, platform_id)], (method, path)
    assert _sent(hub, "GET", "/ocpi/2.2.1/credentials", party.hub_token or "")[0] == 401  # the DELETE unregistered
