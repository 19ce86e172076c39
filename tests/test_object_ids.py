"""What an auditor finds a row by besides its request and correlation ids: the object id its path or body names,
and the ids a Sender's list answer held (listed_ids), so that "did the CPO send us CDR X, did the eMSP get it?" is
one search whichever way it went."""

from __future__ import annotations

import csv
import io
import json
import uuid
from datetime import UTC, datetime

import pytest

from storage.log_object_ids import listed_ids_of_entry, object_id_of, object_id_of_entry
from storage.log_row import LogEntry
from tests.conftest import Hub, Services, unique_party_id
from tests.log_rows import write
from tests.test_routing import party_key


@pytest.mark.parametrize(
    ("module", "interface", "path", "expected"),
    [
        ("locations", "receiver", "/ocpi/2.2.1/receiver/locations/NL/ABC/LOC%201/EVSE1/1", "LOC 1"),
        ("locations", "sender", "/ocpi/2.2.1/sender/locations/LOC2/EVSE1", "LOC2"),
        ("locations", "sender", "/ocpi/cpo/2.2.1/locations/LOC3", "LOC3"),  # the hub's pull sync, a party's URL
        ("locations", "sender", "/ocpi/2.2.1/sender/locations", None),
        ("sessions", "sender", "/ocpi/2.2.1/sender/sessions/S1/charging_preferences", "S1"),
        ("tokens", "sender", "/ocpi/2.2.1/sender/tokens/TOK1/authorize", "TOK1"),
        ("tokens", "receiver", "/ocpi/2.2.1/receiver/tokens/NL/ABC/TOK2", "TOK2"),
        ("tariffs", "receiver", "/ocpi/2.2.1/receiver/tariffs/NL/ABC", None),
        ("chargingprofiles", "receiver", "/ocpi/2.2.1/receiver/chargingprofiles/S9", "S9"),
        ("commands", "receiver", "/ocpi/2.2.1/receiver/commands/START_SESSION", None),
        ("hubclientinfo", "receiver", "/ocpi/2.2/hubclientinfo/NL/ABC", None),
    ],
)
def test_the_object_id_is_taken_from_the_path(module: str, interface: str, path: str, expected: str | None) -> None:
    assert object_id_of(module, interface, path) == expected


def test_the_object_id_of_a_request_refused_before_it_was_parsed_is_read_from_its_path() -> None:
    # A bad token: the interface was not known, so the first segment after the module was taken, "NL" (found by a
    # walkthrough); a party saying "the hub refused our X1" could not be checked by id.
    entry = LogEntry(received_at=datetime.now(UTC), request_id="r", correlation_id="c", module="sessions", method="PUT",
                     path="/ocpi/2.2.1/receiver/sessions/NL/ECO/X1", routing="rejected")  # fmt: skip
    assert entry.interface is None and object_id_of_entry(entry) == "X1"


def test_a_pushed_cdr_is_found_by_the_id_in_its_body(hub: Hub, services: Services) -> None:
    cdr_id = f"CDR-{uuid.uuid4().hex[:8]}"
    body = json.dumps({"id": cdr_id, "total_cost": {"excl_vat": 1}}).encode()
    entry = LogEntry(received_at=datetime.now(UTC), request_id=f"{cdr_id}-push", correlation_id=cdr_id,
                     module="cdrs", interface="receiver", method="POST", path="/ocpi/2.2.1/receiver/cdrs",
                     routing="direct", request_body=body)  # fmt: skip
    write(services.database_url, [entry])
    with hub.admin() as admin:
        items = admin.get("/admin/api/routing-log", params={"object_id": cdr_id}).json()["items"]
    assert [item["request_id"] for item in items] == [f"{cdr_id}-push"]


def test_the_cdrs_and_tokens_a_list_answer_named_are_found_by_their_ids(hub: Hub, connect_party) -> None:
    # "Did the eMSP ever get CDR X?": pulled in a list, it is in the answer of a GET, not in a path.
    tag = uuid.uuid4().hex[:6]
    cdrs = [{"id": f"cdr-{tag}-{n}", "last_updated": "2026-12-01T00:00:00Z"} for n in range(3)]
    tokens = [{"uid": f"tok-{tag}", "last_updated": "2026-12-01T00:00:00Z"}]
    cpo = connect_party(("CPO", "NL", unique_party_id()), objects={"cdrs": cdrs})
    emsp = connect_party(("EMSP", "NL", unique_party_id()), objects={"tokens": tokens})
    pulls = [(emsp, "sender/cdrs", cpo, f"{tag}-cdrs"), (cpo, "sender/tokens", emsp, f"{tag}-tokens")]
    for caller, path, sender, request_id in pulls:
        answer = caller.call(hub.base, "GET", path, to=party_key(sender), headers={"X-Request-ID": request_id})
        assert answer.json()["status_code"] == 1000, answer.text
    with hub.admin() as admin:
        for listed, request_id in ((f"CDR-{tag}-1", f"{tag}-cdrs"), (f"tok-{tag}", f"{tag}-tokens")):
            found = admin.get("/admin/api/routing-log", params={"listed_id": listed}).json()["items"]
            # the hub's own read of the eMSP's token list (routing.owner_pull), when it ran by now, names it too
            theirs = [item["request_id"] for item in found if item["routing"] != "hub"]
            assert theirs == [request_id], (listed, found)
        [row] = admin.get("/admin/api/routing-log", params={"request_id": f"{tag}-cdrs"}).json()["items"]
        message = admin.get(f"/admin/api/routing-log/{row['id']}").json()
        assert message["listed_ids"] == [c["id"].upper() for c in cdrs] and "listed_ids" not in row
        # exports carry them too, and prev_hash, for an answer to "did the eMSP get CDR X" kept outside the hub
        exported = admin.get("/admin/api/routing-log/export", params={"request_id": f"{tag}-cdrs", "format": "csv"})
        [line] = list(csv.DictReader(io.StringIO(exported.text)))
        assert json.loads(line["listed_ids"]) == message["listed_ids"] and line["prev_hash"] == message["prev_hash"]


@pytest.mark.parametrize(
    ("module", "status", "body", "listed"),
    [
        ("cdrs", 200, b'{"data": [{"id": "C1"}, {"id": 7}, null, [], {"id": "C2"}]}', ["C1", "C2"]),
        # a lone surrogate escape stops msgspec reading the whole answer (it says "truncated"): nothing listed
        ("cdrs", 200, b'{"data": [{"id": "C1"}, {"id": "\\ud800"}]}', None),
        ("tokens", 200, b'{"data": [{"uid": "T1", "id": "not-a-token-id"}, {"id": "T2"}]}', ["T1"]),
        ("cdrs", 200, b'{"data": {"id": "C1"}}', None),  # one object: its path names it
        ("cdrs", 200, b'{"data": null}', None),
        ("cdrs", 200, b"<html>", None),
        ("cdrs", 404, b'{"data": [{"id": "C1"}]}', None),
        ("locations", 200, b'{"data": [{"id": "L1"}]}', None),  # not kept: pages large, disputes rare
    ],
    ids=["bad-elements-skipped", "lone-surrogate", "token-uid", "object", "null", "not-json", "error", "locations"],
)
def test_the_ids_a_list_answer_names_are_read_from_each_object_on_its_own(
    module: str, status: int, body: bytes, listed: list[str] | None
) -> None:
    entry = LogEntry(received_at=datetime.now(UTC), request_id="r", correlation_id="c", module=module, method="GET",
                     path=f"/ocpi/2.2.1/sender/{module}", routing="direct", http_status=status,
                     response_body=body)  # fmt: skip
    assert listed_ids_of_entry(entry) == listed
