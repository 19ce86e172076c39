"""An auditor disputing a session finds everything about it with one search, object_id=<the session>: its pushes, the
STOP_SESSION naming it, the result of that command, the CDR naming it (listed_ids: the ids a row refers to besides its
object). Found by an auditor walkthrough: only the session's PUTs were found, the rest only through a correlation id
the parties reused."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from storage.log_object_ids import ids_of_entry
from storage.log_row import LogEntry
from tests.conftest import Hub
from tests.parties import token_header
from tests.test_credentials_rotation import console_page
from tests.test_routing import _roles, party_key


def _search(admin: httpx.Client, **params: str) -> list[dict[str, Any]]:
    answer = admin.get("/admin/api/routing-log", params=params)
    assert answer.status_code == 200, answer.text
    return list(answer.json()["items"])


def test_a_sessions_pushes_commands_results_and_cdr_are_found_by_its_id(hub: Hub, connect_party) -> None:
    emsp, cpo = connect_party(_roles("EMSP")), connect_party(_roles("CPO"))
    tag = uuid.uuid4().hex[:8]
    session_id, auth, uid = f"sess-{tag}", f"AUTH-{tag}", f"TOK-{tag}"
    ccc, cpid = party_key(cpo)
    token = {"uid": uid, "type": "RFID", "contract_id": f"C-{tag}"}
    session = {"id": session_id, "country_code": ccc, "party_id": cpid, "location_id": f"LOC-{tag}",
               "authorization_reference": auth, "cdr_token": token, "status": "ACTIVE"}  # fmt: skip
    sent = [
        (cpo, "PUT", f"receiver/sessions/{ccc}/{cpid}/{session_id}", emsp, session),
        (cpo, "PATCH", f"receiver/sessions/{ccc}/{cpid}/{session_id}", emsp,
         {"kwh": 3.5, "last_updated": "2026-12-05T10:00:00Z"}),
        (emsp, "POST", "receiver/commands/STOP_SESSION", cpo,
         {"response_url": f"{emsp.base}/ocpi/2.2.1/commands/STOP_SESSION/{tag}", "session_id": session_id}),
        (cpo, "POST", "receiver/cdrs", emsp, {"id": f"CDR-{tag}", "session_id": session_id,
                                              "authorization_reference": auth, "cdr_token": token}),
    ]  # fmt: skip
    for n, (caller, method, path, receiver, body) in enumerate(sent):
        answer = caller.call(hub.base, method, path, to=party_key(receiver), body=body,
                             headers={"X-Request-ID": f"{tag}-{n}", "X-Correlation-ID": f"{tag}-corr-{n}"})  # fmt: skip
        assert answer.json()["status_code"] == 1000, (path, answer.text)
    [command] = [r for r in cpo.functional() if r.path.endswith("/STOP_SESSION")]
    # The CPO posts its result with a correlation id of its own and no routing headers: nothing of it names the session
    result = httpx.post(json.loads(command.body)["response_url"], json={"result": "ACCEPTED"},
                        headers=token_header(cpo.hub_token) | {"X-Request-ID": f"{tag}-result",
                                                              "X-Correlation-ID": f"{tag}-own"})  # fmt: skip
    assert result.json()["status_code"] == 1000, result.text
    with hub.admin() as admin:
        found = _search(admin, object_id=session_id)  # any case: ids are CiStrings
        assert sorted(item["request_id"] for item in found) == [f"{tag}-{n}" for n in range(4)] + [f"{tag}-result"]
        assert len({item["id"] for item in found}) == len(found)  # each row once
        # the authorization the eMSP gave leads to the session and its CDR; the token's uid too
        assert {item["request_id"] for item in _search(admin, object_id=auth)} == {f"{tag}-0", f"{tag}-3"}
        assert {item["request_id"] for item in _search(admin, object_id=uid.lower())} == {f"{tag}-0", f"{tag}-3"}
        # the rows naming it other than as their object: its CDR
        assert [item["request_id"] for item in _search(admin, listed_id=session_id)] == [f"{tag}-3"]
        # an export reads the same rows
        exported = admin.get("/admin/api/routing-log/export", params={"object_id": session_id, "format": "ndjson"})
        *rows, manifest = exported.text.splitlines()  # the last line: the export's signed manifest
        assert len(rows) == 5 and json.loads(manifest)["manifest"]["rows"] == 5, exported.text


def test_a_results_row_leads_to_its_command_and_the_command_to_its_result(hub: Hub, connect_party) -> None:
    # Two START_SESSIONs at one location: the object id of both, and of both results, is the location. Each result's
    # row names its command by the command's X-Request-IDs, the eMSP's and the hub's, and by its authorization.
    emsp, cpo = connect_party(_roles("EMSP")), connect_party(_roles("CPO"))
    tag = uuid.uuid4().hex[:8]
    for n in range(2):
        body = {"response_url": f"{emsp.base}/ocpi/2.2.1/commands/START_SESSION/{tag}-{n}", "location_id": f"L-{tag}",
                "authorization_reference": f"A-{tag}-{n}", "token": {"uid": f"T-{tag}"}}  # fmt: skip
        answer = emsp.call(hub.base, "POST", "receiver/commands/START_SESSION", to=party_key(cpo), body=body,
                           headers={"X-Request-ID": f"{tag}-cmd-{n}", "X-Correlation-ID": f"{tag}-{n}"})  # fmt: skip
        assert answer.json()["status_code"] == 1000, answer.text
    commands = [r for r in cpo.functional() if r.path.endswith("/START_SESSION")]
    for n, command in enumerate(commands):
        result = httpx.post(json.loads(command.body)["response_url"], json={"result": "ACCEPTED"},
                            headers=token_header(cpo.hub_token) | {"X-Request-ID": f"{tag}-result-{n}",
                                                                  "X-Correlation-ID": f"{tag}-own-{n}"})  # fmt: skip
        assert result.json()["status_code"] == 1000, result.text
    with hub.admin() as admin:
        assert len(_search(admin, object_id=f"L-{tag}")) == 4
        for n, command in enumerate(commands):
            forwarded = {name.lower(): value for name, value in command.headers.items()}["x-request-id"]
            [row] = _search(admin, request_id=f"{tag}-result-{n}")
            listed = admin.get(f"/admin/api/routing-log/{row['id']}").json()["listed_ids"]
            assert listed == [f"A-{tag}-{n}".upper(), f"T-{tag}".upper(), f"REQUEST:{tag}-cmd-{n}".upper(),
                              f"REQUEST:{forwarded}".upper()], listed  # fmt: skip
            # either request id of the command finds it and its result, and no other command's
            for request_id in (f"{tag}-cmd-{n}", forwarded):
                found = sorted(item["request_id"] for item in _search(admin, request_id=request_id))
                assert found == [f"{tag}-cmd-{n}", f"{tag}-result-{n}"], (request_id, found)
            found = sorted(item["request_id"] for item in _search(admin, object_id=f"a-{tag}-{n}"))
            assert found == [f"{tag}-cmd-{n}", f"{tag}-result-{n}"], found
            # the console's message page of the result leads to the command's messages, not to a listed-id search
            page = console_page(hub, f"/console/log/{row['id']}")
            assert f'href="/console/log?request_id={forwarded.lower()}"' in page, page


_BODIES = [
    ("cdrs", "POST", "/ocpi/2.2.1/receiver/cdrs",
     {"id": "C1", "session_id": "S1", "authorization_reference": "A1", "cdr_token": {"uid": "T1"},
      "cdr_location": {"id": "L1"}}, ("C1", ["S1", "A1", "T1"])),
    # a field of a type the spec does not give it costs only itself
    ("cdrs", "POST", "/ocpi/2.2.1/receiver/cdrs", {"id": "C1", "session_id": 7, "cdr_token": "T1"}, ("C1", None)),
    ("sessions", "PUT", "/ocpi/2.2.1/receiver/sessions/NL/ABC/S1",
     {"id": "S1", "location_id": "L1", "authorization_reference": "A1", "cdr_token": {"uid": "T1"}},
     ("S1", ["A1", "T1"])),  # not the location: a location's search would list every session at it
    ("sessions", "PATCH", "/ocpi/2.2.1/receiver/sessions/NL/ABC/S1", {"kwh": 1}, ("S1", None)),
    ("sessions", "PUT", "/ocpi/2.2.1/receiver/sessions/NL/ABC/S1", [1], ("S1", None)),
    ("commands", "POST", "/ocpi/2.2.1/receiver/commands/START_SESSION",
     {"location_id": "L1", "authorization_reference": "A1", "token": {"uid": "T1"}}, ("L1", ["A1", "T1"])),
    ("commands", "POST", "/ocpi/2.2.1/receiver/commands/reserve_now",
     {"reservation_id": "R1", "location_id": "L1", "token": {"uid": "T1"}}, ("R1", ["L1", "T1"])),
    ("commands", "POST", "/ocpi/2.2.1/receiver/commands/STOP_SESSION", {"session_id": "S1"}, ("S1", None)),
    ("tokens", "PUT", "/ocpi/2.2.1/receiver/tokens/NL/ABC/T1", {"uid": "T1", "contract_id": "C1"}, ("T1", None)),
]  # fmt: skip
_NAMES = ["cdr", "cdr-bad-fields", "session", "session-patch", "session-not-an-object", "start", "reserve", "stop",
          "token"]  # fmt: skip


@pytest.mark.parametrize(("module", "method", "path", "body", "ids"), _BODIES, ids=_NAMES)
def test_the_ids_a_body_refers_to_are_read_with_its_object_id(
    module: str, method: str, path: str, body: Any, ids: tuple[str | None, list[str] | None]
) -> None:
    entry = LogEntry(received_at=datetime.now(UTC), request_id="r", correlation_id="c", module=module,
                     interface="receiver", method=method, path=path, routing="direct", http_status=200,
                     request_body=json.dumps(body).encode())  # fmt: skip
    assert ids_of_entry(entry) == ids
