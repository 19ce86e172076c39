"""A logged body that is not UTF-8 (a binary body, a gzipped one the hub refused, a receiver's binary answer) comes
back byte for byte: from the auditor API and the export as kind bytes in base64, in the console escaped and said to be
binary. Found by an auditor's walkthrough: they came back as text with U+FFFD in place of their bytes, so the bytes the
row's hash covers could not be had, and the gzipped request's row did not keep its Content-Encoding."""

from __future__ import annotations

import base64
import csv
import gzip
import html
import io
import json
import re
import uuid
from datetime import UTC, datetime

import httpx

from tests.conftest import Db, Hub, Services, unique_party_id
from tests.log_rows import varied_entries, write
from tests.parties import Party
from tests.test_routing import party_key

# bytes of every value, a lone continuation byte, a cut character, a backslash and the text "\x41" among them
BINARY = bytes(range(256)) + b"\x80 \xe2\x82 \\x41 \\ caf\xc3\xa9"


def _message(admin: httpx.Client, request_id: str) -> dict:
    [row] = admin.get("/admin/api/routing-log", params={"request_id": request_id}).json()["items"]
    return admin.get(f"/admin/api/routing-log/{row['id']}").json()


def _unescaped(shown: str) -> bytes:
    """The bytes of the console's escaped view: \\xNN one byte, \\\\ a backslash, anything else its UTF-8."""
    parts = re.split(r"(\\x[0-9a-f]{2}|\\\\)", shown)
    return b"".join(bytes([int(part[2:], 16)]) if part.startswith("\\x") else b"\\" if part == "\\\\"
                    else part.encode() for part in parts)  # fmt: skip


def _console_body(hub: Hub, row_id: int, side: str) -> tuple[str, bytes]:
    """The console message page's card of side (request or response), and the bytes its body view shows."""
    with httpx.Client(base_url=hub.base, timeout=30) as console:
        assert console.post("/console/sign-in", data={"token": hub.admin_token}).status_code == 303
        page = console.get(f"/console/log/{row_id}").text
    card = page.split(f'id="{side}"', 1)[1].split('<div class="card"', 1)[0]
    [shown] = re.findall(r'<pre class="body[^"]*">(.*?)</pre>', card, re.S)
    return card, _unescaped(html.unescape(shown))


def _exported(admin: httpx.Client, request_id: str) -> tuple[dict, dict]:
    params = {"request_id": request_id, "bodies": "true"}
    ndjson = admin.get("/admin/api/routing-log/export", params=params)
    as_csv = admin.get("/admin/api/routing-log/export", params=params | {"format": "csv"})
    assert ndjson.status_code == as_csv.status_code == 200, ndjson.text + as_csv.text
    line, _manifest = ndjson.text.splitlines()
    [row] = csv.DictReader(io.StringIO(as_csv.text))
    return json.loads(line), row


def _base64_cell(cell: str) -> bytes:
    # a cell starting with "+" (a base64 character too) has the export's "'" in front, as any text has
    return base64.b64decode(cell[1:] if cell.startswith("'+") else cell, validate=True)


def test_a_binary_and_a_gzipped_request_body_come_back_byte_for_byte_with_their_content_encoding(
    hub: Hub, cpo_and_emsp: tuple[Party, Party]
) -> None:
    cpo, emsp = cpo_and_emsp
    (cc, pid), to = party_key(cpo), party_key(emsp)
    gzipped = gzip.compress(json.dumps({"country_code": cc, "party_id": pid, "id": "LOC1"}).encode())
    sent = [(BINARY, {}, 400), (gzipped, {"Content-Encoding": "gzip"}, 415)]
    for body, headers, status in sent:
        request_id = str(uuid.uuid4())
        headers |= {"X-Request-ID": request_id, "Content-Type": "application/json"}
        answer = cpo.call(hub.base, "PUT", f"receiver/locations/{cc}/{pid}/LOC1", to=to, content=body, headers=headers)
        assert answer.status_code == status, answer.text
        with hub.admin() as admin:
            message = _message(admin, request_id)
            ndjson, as_csv = _exported(admin, request_id)
        request = message["request"]
        assert (request["kind"], request["body"], request["text"]) == ("bytes", None, None), request
        assert base64.b64decode(request["base64"]) == body and request["size"] == len(body)
        assert request["headers"]["content-type"] == "application/json"
        assert request["headers"].get("content-encoding") == headers.get("Content-Encoding"), request["headers"]
        assert message["response"]["kind"] == "json" and message["response"]["base64"] is None  # text as before
        assert ndjson["request_body_kind"] == as_csv["request_body_kind"] == "bytes"
        assert base64.b64decode(ndjson["request_body"]) == _base64_cell(as_csv["request_body"]) == body
        assert ndjson["response_body_kind"] == as_csv["response_body_kind"] == "text"
        assert json.loads(ndjson["response_body"])["status_code"] in (2000, 2001)
        card, shown = _console_body(hub, message["id"], "request")
        assert shown == body and "Binary: not UTF-8 text" in card and "\ufffd" not in card
    assert emsp.functional() == []


def test_a_receivers_binary_answer_is_relayed_and_logged_byte_for_byte(
    hub: Hub, cpo_and_emsp: tuple[Party, Party]
) -> None:
    cpo, emsp = cpo_and_emsp
    (cc, pid), to = party_key(cpo), party_key(emsp)
    emsp.canned[("GET", f"/ocpi/2.2.1/locations/receiver/{cc}/{pid}/BIN")] = (
        200, BINARY, {"Content-Type": "application/octet-stream"})  # fmt: skip
    request_id = str(uuid.uuid4())
    answer = cpo.call(hub.base, "GET", f"receiver/locations/{cc}/{pid}/BIN", to=to,
                      headers={"X-Request-ID": request_id})  # fmt: skip
    assert answer.content == BINARY
    with hub.admin() as admin:
        message = _message(admin, request_id)
        ndjson, as_csv = _exported(admin, request_id)
    response = message["response"]
    assert response["kind"] == "bytes" and base64.b64decode(response["base64"]) == BINARY, response
    assert base64.b64decode(ndjson["response_body"]) == _base64_cell(as_csv["response_body"]) == BINARY
    assert message["request"]["kind"] == "empty" and ndjson["request_body_kind"] is None
    assert _console_body(hub, message["id"], "response")[1] == BINARY


def test_the_row_of_a_gzipped_request_keeps_its_content_encoding_and_content_type(
    hub: Hub, cpo_and_emsp: tuple[Party, Party], db: Db
) -> None:
    # Only the row's error named the coding: the headers an auditor reads the refused bytes by were not kept.
    cpo, emsp = cpo_and_emsp
    (cc, pid), to = party_key(cpo), party_key(emsp)
    request_id = str(uuid.uuid4())
    answer = cpo.call(hub.base, "PUT", f"receiver/locations/{cc}/{pid}/LOC1", to=to, content=gzip.compress(b"{}"),
                      headers={"Content-Encoding": "gzip", "Content-Type": "application/json",
                               "X-Request-ID": request_id})  # fmt: skip
    assert answer.status_code == 415, answer.text
    kept = db.run(db.fetchval("SELECT request_headers FROM routing_log WHERE request_id = $1", request_id))
    assert json.loads(kept).items() >= {"content-encoding": "gzip", "content-type": "application/json"}.items(), kept


def test_a_body_cut_inside_a_character_is_cut_before_it_and_stays_text(hub: Hub, services: Services) -> None:
    # Cut at the cap, a body's last character lost some of its bytes: the rest was no UTF-8 and came back garbled.
    tag = uuid.uuid4().hex[:8]
    [entry] = varied_entries(datetime(2001, 9, 1, tzinfo=UTC), 1, [("QU", unique_party_id())], tag)
    entry.request_body = '{"name": "Zürich €"}'.encode()  # the cap, 19 bytes, falls inside the €
    entry.response_body = b'{"x": "\xff"}' + b" " * 20  # no UTF-8 before the cap either: bytes, as kept
    write(services.database_url, [entry], body_cap=19)
    with hub.admin() as admin:
        message = _message(admin, entry.request_id)
        ndjson, _ = _exported(admin, entry.request_id)
    request, response = message["request"], message["response"]
    assert (request["kind"], request["text"], request["truncated"]) == ("text", '{"name": "Zürich ', True), request
    assert request["size"] == len(entry.request_body)
    assert (ndjson["request_body_kind"], ndjson["request_body"]) == ("text", '{"name": "Zürich ')
    assert (response["kind"], base64.b64decode(response["base64"])) == ("bytes", entry.response_body[:19])
    assert _console_body(hub, message["id"], "request")[1] == '{"name": "Zürich '.encode()
