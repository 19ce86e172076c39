"""The auditor API: every filter, keyset pages without gaps or duplicates, one message, a conversation, exports
that parse back to the same rows, stats, and bad filter values answered 400 naming the parameter."""

from __future__ import annotations

import asyncio
import base64
import csv
import io
import json
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest

from hub.admin.api import AdminError
from hub.admin.routing_log import fetch_planned
from storage.log_row import LogEntry
from storage.partitions import drop_before, why_no_row
from tests.conftest import LOG_KEY, Hub, Services, unique_party_id
from tests.log_rows import object_of, run_on, sql, varied_entries, write
from tests.test_credentials_rotation import console_page

# A window of its own, long before any row the session's other tests write, so each search here sees only its rows.
WINDOW = datetime(2001, 3, 10, 12, 0, tzinfo=UTC)
WINDOW_PARAMS = {"since": "2001-03-10T00:00:00Z", "until": "2001-03-11T00:00:00Z"}


class Dataset:
    def __init__(self, entries: list[LogEntry], parties: list[tuple[str, str]], tag: str) -> None:
        self.entries, self.parties, self.tag = entries, parties, tag

    def expected(self, keep: Callable[[LogEntry], bool]) -> list[str]:
        """request ids of the matching rows, newest first (ties: the later written row first, as ids grow)."""
        matching = [(e.received_at, n, e.request_id) for n, e in enumerate(self.entries) if keep(e)]
        return [request_id for *_, request_id in sorted(matching, reverse=True)]


@pytest.fixture(scope="module")
def dataset(services: Services, hub: Hub) -> Dataset:
    parties = [("QX", unique_party_id()), ("QX", unique_party_id()), ("QY", unique_party_id())]
    tag = uuid.uuid4().hex[:8]
    entries = varied_entries(WINDOW, 60, parties, tag)
    write(services.database_url, entries)
    return Dataset(entries, parties, tag)


def _pages(admin: httpx.Client, params: dict[str, str], limit: int = 7) -> Iterator[list[dict]]:
    cursor = None
    while True:
        answer = admin.get("/admin/api/routing-log", params=params | {"limit": str(limit)} | (
            {"cursor": cursor} if cursor else {}))  # fmt: skip
        assert answer.status_code == 200, answer.text
        page = answer.json()
        yield page["items"]
        if not (cursor := page["next_cursor"]):
            return


def _search(admin: httpx.Client, params: dict[str, str], limit: int = 7) -> list[str]:
    found = [item["request_id"] for page in _pages(admin, WINDOW_PARAMS | params, limit) for item in page]
    assert len(found) == len(set(found)), "a row was returned twice"
    return found


def _party(key: tuple[str, str]) -> str:
    return f"{key[0]}-{key[1]}"


def _involves(entry: LogEntry, party: tuple[str, str]) -> bool:
    return party in ((entry.from_country_code, entry.from_party_id), (entry.to_country_code, entry.to_party_id))


def test_every_filter_finds_exactly_its_rows_newest_first(hub: Hub, dataset: Dataset) -> None:
    a, b, _ = dataset.parties
    first = dataset.entries[4]
    cases: list[tuple[dict[str, str], Callable[[LogEntry], bool]]] = [
        ({}, lambda e: True),
        ({"from_party": _party(a)}, lambda e: (e.from_country_code, e.from_party_id) == a),
        ({"to_party": _party(b).lower()}, lambda e: (e.to_country_code, e.to_party_id) == b),
        ({"party": _party(a)}, lambda e: _involves(e, a)),
        ({"module": "tokens"}, lambda e: e.module == "tokens"),
        ({"method": "patch"}, lambda e: e.method == "PATCH"),
        ({"routing": "rejected"}, lambda e: e.routing == "rejected"),
        ({"routing": "direct"}, lambda e: e.routing == "direct"),
        ({"http_status": "404"}, lambda e: e.http_status == 404),
        ({"http_status": "200"}, lambda e: e.http_status == 200),
        ({"ocpi_status": "2001"}, lambda e: e.ocpi_status_code == 2001),
        ({"ocpi_status": "1000"}, lambda e: e.ocpi_status_code == 1000),
        ({"request_id": first.request_id}, lambda e: e is first),
        ({"request_id": f"{dataset.tag}-fwd-5"}, lambda e: e.forwarded_request_id == f"{dataset.tag}-fwd-5"),
        ({"correlation_id": f"{dataset.tag}-corr-2"}, lambda e: e.correlation_id == f"{dataset.tag}-corr-2"),
        ({"object_id": f"{dataset.tag}-OBJ3"}, lambda e: object_of(e) == f"{dataset.tag}-OBJ3"),
        # a CiString: found in any case, as the hub routes it (it was searched as sent: found by a walkthrough)
        ({"object_id": f"{dataset.tag}-obj3".upper()}, lambda e: object_of(e) == f"{dataset.tag}-OBJ3"),
        ({"since": "2001-03-10T12:00:30Z"}, lambda e: e.received_at >= WINDOW + timedelta(seconds=30)),
        ({"until": "2001-03-10T12:00:30"}, lambda e: e.received_at < WINDOW + timedelta(seconds=30)),
        (
            {"party": _party(b), "module": "locations", "method": "GET"},
            lambda e: _involves(e, b) and e.module == "locations" and e.method == "GET",
        ),
        (
            {"from_party": _party(a), "http_status": "500", "ocpi_status": "3000"},
            lambda e: (
                (e.from_country_code, e.from_party_id) == a and e.http_status == 500 and e.ocpi_status_code == 3000
            ),
        ),
    ]
    with hub.admin() as admin:
        for params, keep in cases:
            expected = dataset.expected(keep)
            assert expected or params.get("http_status") == "500", params  # each case finds something
            assert _search(admin, params) == expected, params


@pytest.mark.parametrize("limit", [1, 4, 7, 500])
def test_cursor_pages_cover_every_row_once_in_order_even_with_equal_times(hub: Hub, dataset: Dataset,
                                                                          limit: int) -> None:  # fmt: skip
    ties = [e.received_at for e in dataset.entries]
    assert len(set(ties)) < len(ties)  # the data has rows received at the same instant
    with hub.admin() as admin:
        assert _search(admin, {}, limit) == dataset.expected(lambda e: True)
        a = dataset.parties[0]
        on_either_side = _search(admin, {"party": _party(a)}, limit)
    assert on_either_side == dataset.expected(lambda e: _involves(e, a))


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"from_party": "NLABC"}, "from_party"),
        ({"to_party": "N1-ABC"}, "to_party"),
        ({"party": "NL-ABCD"}, "party"),
        ({"module": "Loc ations"}, "module"),
        ({"method": "FETCH"}, "method"),
        ({"routing": "sideways"}, "routing"),
        ({"http_status": "abc"}, "http_status"),
        ({"http_status": "999"}, "http_status"),
        ({"http_status": "²"}, "http_status"),  # a digit to str.isdigit(), not to int()
        ({"since": "9999-12-31T23:59:59-01:00"}, "since"),  # past the year 9999 in UTC
        ({"until": "0001-01-01T00:00:00+01:00"}, "until"),
        ({"ocpi_status": "1"}, "ocpi_status"),
        ({"ocpi_status": "1" * 5000}, "ocpi_status"),  # int() raises past 4,300 digits: it was a 500
        ({"http_status": "2" * 5000}, "http_status"),
        ({"since": "yesterday"}, "since"),
        ({"until": "2001-13-01"}, "until"),
        ({"request_id": "x" * 300}, "request_id"),
        ({"limit": "0"}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"limit": "²"}, "limit"),
        ({"limit": "1" * 5000}, "limit"),
        ({"cursor": "%%%"}, "cursor"),
        ({"frm_party": "NL-ABC"}, "frm_party"),
        ({"since": "2026-12-06T00:00:00Z", "until": "2026-12-01T00:00:00Z"}, "is not before until"),  # no 200 of none
    ],
)
def test_a_bad_filter_value_answers_400_naming_the_parameter(hub: Hub, params: dict[str, str], named: str) -> None:
    with hub.admin() as admin:
        answer = admin.get("/admin/api/routing-log", params=params)
        exported = admin.get("/admin/api/routing-log/export", params=params)
        stats = admin.get("/admin/api/stats", params=params)
    assert answer.status_code == 400 and named in answer.json()["error"], answer.text
    if named not in ("limit", "cursor"):
        assert exported.status_code == 400 and named in exported.json()["error"], exported.text
        assert stats.status_code == 400 and named in stats.json()["error"], stats.text


def test_a_parameter_given_twice_or_a_range_the_wrong_way_round_answers_400_not_a_part_of_the_answer(hub: Hub) -> None:
    # module=sessions&module=cdrs answered the sessions alone, as if complete (an auditor's walkthrough)
    twice = [("module", "sessions"), ("module", "cdrs")]
    with hub.admin() as admin:
        for path in ("routing-log", "routing-log/export", "stats", "routing-log/verify"):
            params = twice if path != "routing-log/verify" else [("since", "2026-12-01"), ("since", "2026-12-02")]
            answer = admin.get(f"/admin/api/{path}", params=params)
            assert answer.status_code == 400 and "given more than once" in answer.json()["error"], (path, answer.text)
        inverted = admin.get("/admin/api/routing-log/verify", params={"since": "2026-12-06", "until": "2026-12-01"})
        assert inverted.status_code == 400 and "is not before until" in inverted.json()["error"], inverted.text
        # stats without since: the span before until, not before now
        earlier = admin.get("/admin/api/stats", params={"until": "2026-01-01T00:00:00Z"})
        assert earlier.status_code == 200 and earlier.json()["since"].startswith("2025-12-31T00:00:00"), earlier.text
        first = admin.get("/admin/api/stats", params={"until": "0001-01-02T00:00:00Z", "bucket": "day"})  # was a 500
        assert first.status_code == 400 and "until leaves no day before it" in first.json()["error"], first.text


def test_ids_beyond_a_bigint_or_holding_a_nul_are_answered_not_failed(hub: Hub, dataset: Dataset) -> None:
    with hub.admin() as admin:
        cursor = admin.get("/admin/api/routing-log", params={"limit": "1"}).json()["next_cursor"]
        # base64 decoding skips the NUL, so the cursor works; the audit trail stores it as the routing log would
        assert admin.get("/admin/api/routing-log", params={"limit": "1", "cursor": cursor + "\x00"}).status_code == 200
        assert admin.get(f"/admin/api/routing-log/{2**63}").status_code == 400
        assert admin.get("/admin/api/audit-trail", params={"cursor": str(2**63)}).status_code == 400
        unknown = admin.get("/admin/api/audit-trail", params={"actor": "x"})  # was 200, unfiltered
        assert unknown.status_code == 400 and "unknown parameter actor" in unknown.json()["error"]
        for name, value in (("cursor", "zz"), ("limit", "abc")):  # Litestar's "Validation failed for GET ..."
            bad = admin.get("/admin/api/audit-trail", params={name: value})
            assert bad.status_code == 400 and bad.json()["error"].startswith(name), bad.text
        for path in ("routing-log/1", "routing-log/correlation/c", "routing-log/heads", "parties"):  # were ignored
            ignored = admin.get(f"/admin/api/{path}", params={"module": "cdrs"})
            assert ignored.status_code == 400 and "unknown parameter module" in ignored.json()["error"], path
        conversation = admin.get("/admin/api/routing-log/correlation/a%00b")
        searched = admin.get("/admin/api/routing-log", params={"request_id": "a\x00b"})
        stats = admin.get("/admin/api/stats", params={"object_id": "a\x00b"})
    assert conversation.status_code == 200 and conversation.json()["items"] == []
    assert searched.status_code == 200 and searched.json()["items"] == []
    assert stats.status_code == 200


@pytest.mark.parametrize(
    "inside",
    [
        f"2026-01-01T00:00:00+00:00|{2**63}",  # past a bigint: the driver refused it, a 500
        "9999-12-31T23:59:59-01:00|1",  # past the year 9999 in UTC
        "0001-01-01T00:00:00+01:00|1",  # before the year 1 in UTC
    ],
)
def test_a_cursor_made_up_out_of_range_answers_400_naming_it(hub: Hub, inside: str) -> None:
    cursor = base64.urlsafe_b64encode(inside.encode()).decode().rstrip("=")
    with hub.admin() as admin:
        answer = admin.get("/admin/api/routing-log", params={"cursor": cursor})
    assert answer.status_code == 400 and "cursor" in answer.json()["error"], answer.text


def test_one_message_shows_both_bodies_headers_and_timings(hub: Hub, dataset: Dataset) -> None:
    with hub.admin() as admin:
        [json_row] = admin.get("/admin/api/routing-log", params={"request_id": f"{dataset.tag}-req-7"}).json()["items"]
        [text_row] = admin.get("/admin/api/routing-log", params={"request_id": f"{dataset.tag}-req-8"}).json()["items"]
        message = admin.get(f"/admin/api/routing-log/{json_row['id']}").json()
        text = admin.get(f"/admin/api/routing-log/{text_row['id']}").json()
        missing = admin.get("/admin/api/routing-log/999999999999")
        not_a_number = admin.get("/admin/api/routing-log/abc")
    assert message["request"] == {"headers": {"content-type": "application/json"}, "body": {"id": "7", "n": 7},
                                  "text": '{"id": "7", "n": 7}', "base64": None, "kind": "json",
                                  "size": len(b'{"id": "7", "n": 7}'),
                                  "truncated": False}  # fmt: skip
    assert message["response"]["body"] == {"status_code": 1000} and message["response"]["kind"] == "json"
    assert message["duration_ms"] == 7.5 and message["received_at"].startswith("2001-03-10T12:00:07")
    assert len(message["hash"]) == 64 and message["object_id"] == f"{dataset.tag}-OBJ7".upper()
    assert (text["request"]["kind"], text["request"]["body"]) == ("text", "not json <8>")
    assert missing.status_code == 404 and "999999999999" in missing.json()["error"]
    assert not_a_number.status_code in (400, 404)


def test_a_conversation_lists_every_message_of_one_correlation_id_in_order(hub: Hub, dataset: Dataset) -> None:
    correlation = f"{dataset.tag}-corr-1"
    with hub.admin() as admin:
        answer = admin.get(f"/admin/api/routing-log/correlation/{correlation}").json()
    expected = list(reversed(dataset.expected(lambda e: e.correlation_id == correlation)))
    assert [item["request_id"] for item in answer["items"]] == expected and answer["truncated"] is False


def test_a_correlation_id_holding_slashes_is_found_by_its_percent_encoded_form(hub: Hub, services: Services) -> None:
    # Routing would split such an id at each "/" (%2F decoded) and strip one at its end.
    tag = uuid.uuid4().hex[:8]
    entries = varied_entries(WINDOW, 3, [("QX", unique_party_id())], tag)
    for entry in entries:
        entry.correlation_id = f"{tag}/dispute/42/"
    write(services.database_url, entries)
    with hub.admin() as admin:
        answer = admin.get(f"/admin/api/routing-log/correlation/{tag}%2Fdispute%2F42%2F").json()
        stripped = admin.get(f"/admin/api/routing-log/correlation/{tag}/dispute/42").json()
    assert answer["correlation_id"] == f"{tag}/dispute/42/" and len(answer["items"]) == 3
    assert stripped["correlation_id"] == f"{tag}/dispute/42" and stripped["items"] == []


def test_a_correlation_id_no_row_can_hold_is_refused_as_the_search_filter_refuses_it(hub: Hub) -> None:
    # the relay keeps at most 255 characters of an X-Correlation-ID: 5,000 of them were answered 200 with no items,
    # after a search of the log (and an audit-trail entry) for a row that cannot be
    too_long = "c" * 256
    with hub.admin() as admin:
        before = admin.get("/admin/api/audit-trail", params={"limit": "1"}).json()["items"]
        in_path = admin.get(f"/admin/api/routing-log/correlation/{too_long}")
        as_filter = admin.get("/admin/api/routing-log", params={"correlation_id": too_long})
        after = admin.get("/admin/api/audit-trail", params={"limit": "1"}).json()["items"]
        longest = admin.get(f"/admin/api/routing-log/correlation/{too_long[1:]}")
    assert (in_path.status_code, in_path.json()) == (as_filter.status_code, as_filter.json()) == (
        400, {"error": "correlation_id must be 1 to 255 characters"}), in_path.text  # fmt: skip
    assert after == before  # refused before a query: nothing searched, nothing audit-trailed
    assert longest.status_code == 200 and longest.json()["items"] == []


def _export(admin: httpx.Client, params: dict[str, str]) -> httpx.Response:
    answer = admin.get("/admin/api/routing-log/export", params=params)
    assert answer.status_code == 200, answer.text
    return answer


@pytest.mark.parametrize("params", [{}, {"party": "first"}, {"module": "sessions", "method": "GET"}])
def test_exports_in_ndjson_and_csv_parse_back_to_the_rows_of_the_search(hub: Hub, dataset: Dataset,
                                                                        params: dict[str, str]) -> None:  # fmt: skip
    if params.get("party"):
        params = {"party": _party(dataset.parties[0])}
    with hub.admin() as admin:
        searched = [item for page in _pages(admin, WINDOW_PARAMS | params, 500) for item in page][::-1]
        ndjson = _export(admin, WINDOW_PARAMS | params | {"format": "ndjson"})
        as_csv = _export(admin, WINDOW_PARAMS | params | {"format": "csv"})
    assert searched and ndjson.headers["content-type"].startswith("application/x-ndjson")
    exported = [json.loads(line) for line in ndjson.text.splitlines()[:-1]]  # the last: the manifest
    assert [item | {"listed_ids": None} for item in searched] == exported  # the dataset has no list answers
    rows = list(csv.DictReader(io.StringIO(as_csv.text)))
    assert as_csv.headers["content-type"] == "text/csv; charset=utf-8" and len(rows) == len(searched)
    for row, item in zip(rows, exported, strict=True):  # times too as the API writes them, "...Z" (not "+00:00")
        assert row == {name: "" if value is None else str(value) for name, value in item.items()}


def test_an_export_with_bodies_carries_headers_and_both_bodies_as_sent(hub: Hub, services: Services) -> None:
    tag = uuid.uuid4().hex[:8]
    entries = varied_entries(datetime(2001, 6, 1, tzinfo=UTC), 6, [("QB", unique_party_id())], tag)
    write(services.database_url, entries)
    params = {"since": "2001-06-01T00:00:00Z", "until": "2001-06-02T00:00:00Z"}
    with hub.admin() as admin:
        ndjson = [json.loads(line) for line in _export(admin, params | {"bodies": "true"}).text.splitlines()[:-1]]
        as_csv = list(csv.DictReader(io.StringIO(_export(admin, params | {"bodies": "true", "format": "csv"}).text)))
        plain = json.loads(_export(admin, params).text.splitlines()[0])
        refused = admin.get("/admin/api/routing-log/export", params=params | {"bodies": "yes"})
    assert [r["request_body"] for r in ndjson] == [e.request_body.decode() for e in entries]
    assert [r["response_body"] for r in as_csv] == [e.response_body.decode() for e in entries]
    assert ndjson[0]["request_headers"] == {"content-type": "application/json"}
    assert json.loads(as_csv[0]["request_headers"]) == {"content-type": "application/json"}
    assert "request_body" not in plain  # bodies only when asked for
    assert refused.status_code == 400 and "bodies" in refused.json()["error"]


def test_a_message_is_shown_as_the_party_sent_it_where_its_json_value_would_differ(
    hub: Hub, services: Services
) -> None:
    # The console showed the decoded value: the first kwh gone, 10.50 as 10.5, 1e2 as 100.0 (an auditor's walkthrough).
    tag, sent = uuid.uuid4().hex[:8], b'{"kwh": 10.50, "kwh": 99, "total_cost": {"excl_vat": 1e2}}'
    [entry] = varied_entries(datetime(2001, 8, 1, tzinfo=UTC), 1, [("QS", unique_party_id())], tag)
    entry.request_body = sent
    write(services.database_url, [entry])
    with hub.admin() as admin:
        [row] = admin.get("/admin/api/routing-log", params={"request_id": entry.request_id}).json()["items"]
        message = admin.get(f"/admin/api/routing-log/{row['id']}").json()
    assert message["request"]["text"] == sent.decode() and message["request"]["kind"] == "json"
    page = console_page(hub, f"/console/log/{row['id']}")
    assert "&#34;kwh&#34;: 10.50, &#34;kwh&#34;: 99, &#34;total_cost&#34;: { &#34;excl_vat&#34;: 1e2 }" in page, page


def test_the_console_keeps_a_versions_filter_and_says_when_a_conversation_is_cut(hub: Hub, services: Services) -> None:
    # Its module list lacked versions, so the next Filter click dropped it; a conversation over 1,000 messages was
    # cut without a word (both found by an auditor's walkthrough).
    tag = uuid.uuid4().hex[:8]
    entries = varied_entries(datetime(2001, 9, 1, tzinfo=UTC), 1001, [("QV", unique_party_id())], tag)
    for entry in entries:
        entry.correlation_id = f"{tag}-long"
    write(services.database_url, entries)
    with hub.admin() as admin:
        [row] = admin.get("/admin/api/routing-log", params={"request_id": entries[0].request_id}).json()["items"]
    assert "Only the first 1000 messages are shown" in console_page(hub, f"/console/log/{row['id']}")
    assert '<option value="versions" selected>versions</option>' in console_page(hub, "/console/log?module=versions")


def test_a_csv_export_keeps_a_spreadsheet_from_taking_a_party_value_for_a_formula(hub: Hub, services: Services) -> None:
    # A party's X-Request-ID =HYPERLINK(...) was a live formula in the auditor's spreadsheet (found by a walkthrough).
    tag = uuid.uuid4().hex[:8]
    [entry] = varied_entries(datetime(2001, 7, 1, tzinfo=UTC), 1, [("QF", unique_party_id())], tag)
    entry.request_id, entry.error = f'=HYPERLINK("http://evil.example/","{tag}")', "-1+2"
    write(services.database_url, [entry])
    params = {"since": "2001-07-01T00:00:00Z", "until": "2001-07-02T00:00:00Z", "format": "csv"}
    with hub.admin() as admin:
        [row] = [r for r in csv.DictReader(io.StringIO(_export(admin, params).text)) if tag in r["request_id"]]
    assert row["request_id"] == "'" + entry.request_id and row["error"] == "'-1+2"


def test_an_export_of_thousands_of_rows_is_streamed_in_chunks(hub: Hub, services: Services) -> None:
    tag = uuid.uuid4().hex[:8]
    start = datetime(2001, 5, 1, tzinfo=UTC)
    write(services.database_url, varied_entries(start, 3000, [("QZ", unique_party_id())], tag))
    params = {"since": "2001-05-01T00:00:00Z", "until": "2001-05-02T00:00:00Z", "format": "ndjson"}
    with hub.admin() as admin, admin.stream("GET", "/admin/api/routing-log/export", params=params) as answer:
        assert answer.headers.get("transfer-encoding") == "chunked" and "content-length" not in answer.headers
        chunks = list(answer.iter_raw())
    *lines, manifest = b"".join(chunks).splitlines()
    assert len(lines) == 3000 and len(chunks) > 1 and json.loads(manifest)["manifest"]["rows"] == 3000
    # oldest first; rows 0 and 1 share a received_at, so the id decides
    assert [json.loads(line)["request_id"] for line in lines[:3]] == [f"{tag}-req-{n}" for n in range(3)]


def test_stats_count_messages_errors_and_duration_percentiles_per_party_module_and_hour(
    hub: Hub, services: Services
) -> None:
    sender, receiver = ("QS", unique_party_id()), ("QT", unique_party_id())
    start = datetime(2001, 7, 1, 10, 0, tzinfo=UTC)
    entries = varied_entries(start, 40, [sender], uuid.uuid4().hex[:8])
    for n, entry in enumerate(entries):
        entry.module, entry.to_country_code, entry.to_party_id = "cdrs", *receiver
        entry.received_at = start + timedelta(minutes=n * 2)  # 30 in the first hour, 10 in the second
        entry.duration_ms = float(n + 1)
    write(services.database_url, entries)
    params = {"bucket": "hour", "since": "2001-07-01T00:00:00Z", "until": "2001-07-02T00:00:00Z",
              "party": _party(sender)}  # fmt: skip
    with hub.admin() as admin:
        answer = admin.get("/admin/api/stats", params=params)
        daily = admin.get("/admin/api/stats", params=params | {"bucket": "day"}).json()["items"]
        assert admin.get("/admin/api/stats", params={"bucket": "minute"}).status_code == 400
        assert admin.get("/admin/api/stats", params={"since": "soon"}).status_code == 400
    assert answer.status_code == 200, answer.text
    items = answer.json()["items"]
    assert {(i["party"], i["direction"], i["module"]) for i in items} == {
        (_party(sender), "sent", "cdrs"), (_party(receiver), "received", "cdrs")}  # fmt: skip
    first_hour = [i for i in items if i["direction"] == "sent" and i["bucket"].startswith("2001-07-01T10")]
    [hour] = first_hour
    durations = [e.duration_ms for e in entries[:30]]
    failed = [e for e in entries[:30] if e.http_status >= 400 or not 1000 <= (e.ocpi_status_code or 0) <= 1999]
    assert (hour["messages"], hour["errors"]) == (30, len(failed))
    assert hour["error_rate"] == pytest.approx(len(failed) / 30)
    assert hour["p50_ms"] == pytest.approx(statistics.median(durations))
    assert hour["p95_ms"] == pytest.approx(statistics.quantiles(durations, n=100, method="inclusive")[94])
    assert hour["p99_ms"] == pytest.approx(statistics.quantiles(durations, n=100, method="inclusive")[98])
    assert [i["messages"] for i in daily if i["direction"] == "sent"] == [40]


def test_a_search_that_runs_too_long_is_stopped_and_answers_503_with_what_to_do(services: Services) -> None:
    # A search that no index serves would hold a database connection for minutes: it is cancelled at the timeout.
    async def run() -> AdminError:
        conn = await asyncpg.connect(services.database_url)
        try:
            started = time.monotonic()
            with pytest.raises(AdminError) as stopped:
                await fetch_planned(conn, "SELECT pg_sleep(10)", [], timeout_s=0.2)
            assert time.monotonic() - started < 5
            assert await conn.fetchval("SELECT 1") == 1  # the connection is fit for the next search
            return stopped.value
        finally:
            await conn.close()

    error = asyncio.run(run())
    assert error.status == 503 and "took longer than 0.2 s: narrow it with since/until" in error.message


def test_a_row_retention_dropped_is_said_dropped_and_when_by_the_api_and_the_console(
    hub: Hub, services: Services
) -> None:
    # An auditor's walkthrough: a row retention dropped was answered {"error": "no routing-log row 64"}, as if the log
    # never had it.
    month = datetime(1987, 3, 10, tzinfo=UTC)
    sql(services.database_url, "SELECT routing_log_add_partition($1)", month)
    write(services.database_url, varied_entries(month, 3, [("QD", "ROP")], uuid.uuid4().hex[:8]))
    ids = [r["id"] for r in sql(services.database_url, "SELECT id FROM routing_log_1987m03 ORDER BY id")]
    cut = datetime(1987, 4, 1, tzinfo=UTC)  # the session database's other partitions are later
    dropped = run_on(services.database_url, lambda conn: drop_before(conn, cut, key=LOG_KEY))
    assert [p.name for p in dropped.dropped] == ["routing_log_1987m03"]
    with hub.admin() as admin:
        answer = admin.get(f"/admin/api/routing-log/{ids[1]}")
        unknown = admin.get("/admin/api/routing-log/999999999999")
    assert answer.status_code == 410, answer.text
    said = answer.json()["error"]
    assert said.startswith(f"routing-log row {ids[1]} is no longer in the log: retention dropped it at ")
    month_and_ids = f"rows received from 1987-03-01 until 1987-04-01, ids {ids[0]} to {ids[2]}"
    assert f"partition routing_log_1987m03 ({month_and_ids})" in said
    assert (unknown.status_code, unknown.json()["error"]) == (404, "no routing-log row 999999999999")
    # the console's message page says the same (it said "No such message")
    page = console_page(hub, f"/console/log/{ids[1]}", status=410)
    assert "Dropped by retention" in page
    assert f"Routing-log row {ids[1]} is no longer in the log: retention dropped it at " in page
    assert f"partition routing_log_1987m03 ({month_and_ids})" in page
    assert "No such message" in console_page(hub, "/console/log/999999999999", status=404)


def test_a_row_a_retention_of_before_0018_dropped_is_said_dropped_when_its_id_is_below_every_row_kept(
    empty_database: str,
) -> None:
    old, recent = datetime(2001, 3, 10, tzinfo=UTC), datetime.now(UTC)
    write(empty_database, [])  # the schema
    sql(empty_database, "SELECT routing_log_add_partition($1)", old)
    write(
        empty_database,
        varied_entries(old, 3, [("QD", "ROP")], "old") + varied_entries(recent, 2, [("QD", "ROP")], "new"),
    )
    first = sql(empty_database, "SELECT min(id) FROM routing_log")[0][0]
    run_on(empty_database, lambda conn: drop_before(conn, datetime(2001, 4, 1, tzinfo=UTC), key=LOG_KEY))
    sql(empty_database, "DELETE FROM routing_log_dropped_partition")  # as a retention before 0018 left it
    said = run_on(empty_database, lambda conn: why_no_row(conn, first))
    assert said.startswith(
        "retention dropped it: its id is below every row the log keeps, and retention dropped rows at "
    )
    assert run_on(empty_database, lambda conn: why_no_row(conn, 10**12)) is None
