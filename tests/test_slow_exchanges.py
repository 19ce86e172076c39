"""Finding slow exchanges, and telling the hub's slowness from a party's: min_duration_ms and min_receiver_ms in the
auditor API's search, exports and stats and in the console's search form; the receivers' part in the traffic page; a
bad minimum answered 400 naming it."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from storage.log_row import LogEntry
from tests.conftest import Hub, Services, unique_party_id
from tests.log_rows import varied_entries, write
from tests.test_credentials_rotation import console_page

START = datetime(2003, 4, 1, 12, 0, tzinfo=UTC)  # a window of these tests' own
WINDOW = {"since": "2003-04-01T00:00:00Z", "until": "2003-04-02T00:00:00Z"}
# (duration_ms, receiver_ms, connection_wait_ms) of each row, oldest first
TIMES = [
    (2500.0, 2400.0, 0.0),  # the party was slow
    (2500.0, 100.0, 0.0),  # the hub was slow
    (300.0, 250.0, 0.0),  # nobody was
    (3000.0, None, None),  # slow, and nothing went to a party (a refusal): never found by min_receiver_ms
    (2000.0, 2000.0, 0.0),  # at the minimum: found
    (2600.0, 200.0, 2300.0),  # waited for a connection to the receiver
]


@pytest.fixture(scope="module")
def timed(services: Services, hub: Hub) -> list[LogEntry]:
    parties = [("QT", unique_party_id()), ("QU", unique_party_id())]
    entries = varied_entries(START, len(TIMES), parties, uuid.uuid4().hex[:8])
    for n, (entry, (duration, receiver, wait)) in enumerate(zip(entries, TIMES, strict=True)):
        entry.received_at = START + timedelta(seconds=n)  # no ties: newest first is the reverse of this order
        entry.duration_ms, entry.receiver_ms, entry.connection_wait_ms = duration, receiver, wait
    write(services.database_url, entries)
    return entries


def _newest_first(entries: list[LogEntry], keep) -> list[str]:  # type: ignore[no-untyped-def]
    return [e.request_id for e in reversed(entries) if keep(e)]


def test_min_duration_and_min_receiver_ms_find_the_slow_exchanges_and_tell_the_party_from_the_hub(
    hub: Hub, timed: list[LogEntry]
) -> None:
    sender = (timed[0].from_country_code, timed[0].from_party_id)
    cases = [
        ({"min_duration_ms": "2000"}, lambda e: e.duration_ms >= 2000),
        ({"min_receiver_ms": "2000"}, lambda e: e.receiver_ms is not None and e.receiver_ms >= 2000),
        ({"min_receiver_ms": "2000.5"}, lambda e: e.receiver_ms is not None and e.receiver_ms >= 2000.5),
        ({"min_duration_ms": "0"}, lambda e: True),
        ({"min_receiver_ms": "0"}, lambda e: e.receiver_ms is not None),
        # slow, and not because of the party: the rows the hub (or the wait for a connection) made slow
        ({"min_duration_ms": "2400", "min_receiver_ms": "2400"}, lambda e: e is timed[0]),
        # with the filters that search apart (either side, either answer): each branch has the minimum
        ({"party": f"{sender[0]}-{sender[1]}", "min_receiver_ms": "2000"},
         lambda e: (e.receiver_ms or 0) >= 2000 and sender in ((e.from_country_code, e.from_party_id),
                                                               (e.to_country_code, e.to_party_id))),
        ({"http_status": "200", "min_duration_ms": "2500"},
         lambda e: e.http_status == 200 and e.duration_ms >= 2500),
    ]  # fmt: skip
    with hub.admin() as admin:
        for params, keep in cases:
            answer = admin.get("/admin/api/routing-log", params=WINDOW | params | {"limit": "2"})
            assert answer.status_code == 200, answer.text
            found, cursor = [], answer.json()["next_cursor"]
            found += [item["request_id"] for item in answer.json()["items"]]
            while cursor:  # the minimum holds on every page
                page = admin.get("/admin/api/routing-log", params=WINDOW | params | {"limit": "2", "cursor": cursor})
                found += [item["request_id"] for item in page.json()["items"]]
                cursor = page.json()["next_cursor"]
            assert found == _newest_first(timed, keep), params
        exported = admin.get("/admin/api/routing-log/export", params=WINDOW | {"min_receiver_ms": "2000"})
        stats = admin.get("/admin/api/stats", params=WINDOW | {"min_receiver_ms": "2000", "bucket": "day"}).json()
        trail = admin.get("/admin/api/audit-trail", params={"limit": "20"}).json()["items"]
    rows = [json.loads(line) for line in exported.text.splitlines()[:-1]]  # the last: the manifest
    assert [r["request_id"] for r in rows] == _newest_first(timed, lambda e: (e.receiver_ms or 0) >= 2000)[::-1]
    assert sum(i["messages"] for i in stats["items"] if i["direction"] == "received") == 2
    assert {"min_receiver_ms": "2000", "bucket": "day"}.items() <= trail[0]["parameters"].items(), trail[0]


@pytest.mark.parametrize("name", ["min_duration_ms", "min_receiver_ms"])
@pytest.mark.parametrize("value", ["-1", "abc", "1e3", "NaN", "inf", "²", "1" * 5000, "1.2345", "1000000000", "2 s"])
def test_a_bad_minimum_answers_400_naming_it_in_search_export_and_stats(hub: Hub, name: str, value: str) -> None:
    with hub.admin() as admin:
        answers = [admin.get(f"/admin/api/{path}", params={name: value})
                   for path in ("routing-log", "routing-log/export", "stats")]  # fmt: skip
    for answer in answers:
        assert answer.status_code == 400 and answer.json()["error"].startswith(f"{name} must be milliseconds"), (
            answer.url, answer.text)  # fmt: skip


def test_the_console_searches_by_the_minimums_and_shows_each_rows_receiver_time(
    hub: Hub, timed: list[LogEntry]
) -> None:
    query = "&".join(f"{k}={v}" for k, v in WINDOW.items())
    page = console_page(hub, f"/console/log?{query}&min_duration_ms=2000&min_receiver_ms=")  # a blank field: no filter
    assert 'name="min_duration_ms" value="2000"' in page and 'id="f-min_receiver_ms"' in page
    rows = re.findall(r'<tr class="[^"]*" data-id="\d+">(.*?)</tr>', page)
    assert len(rows) == len(_newest_first(timed, lambda e: e.duration_ms >= 2000))
    receiver_cells = [re.findall(r'class="num mono receiver-ms">([^<]*)<', row)[0] for row in rows]
    assert receiver_cells == ["200.0", "2000.0", "—", "100.0", "2400.0"]  # the hub's slowness, and the party's
    slow = console_page(hub, f"/console/log?{query}&min_receiver_ms=2400")
    assert len(re.findall(r'data-id="\d+"', slow)) == 1 and "2400.0" in slow
    bad = console_page(hub, f"/console/log?{query}&min_receiver_ms=fast", status=400)
    assert "min_receiver_ms must be milliseconds" in bad


def test_the_traffic_page_shows_the_receivers_part_beside_the_duration(hub: Hub, services: Services) -> None:
    caller, receiver = ("QV", unique_party_id()), ("QW", unique_party_id())
    [entry] = varied_entries(datetime.now(UTC), 1, [caller, receiver], uuid.uuid4().hex[:8])
    entry.from_country_code, entry.from_party_id = caller
    entry.to_country_code, entry.to_party_id = receiver
    entry.module, entry.duration_ms, entry.receiver_ms, entry.connection_wait_ms = "locations", 900.0, 812.4, 0.0
    write(services.database_url, [entry])
    as_receiver = console_page(hub, f"/console/stats?party={receiver[0]}-{receiver[1]}")
    assert ">Worst hourly receiver p95</th>" in as_receiver and ">Worst hourly receiver p99</th>" in as_receiver
    [row] = re.findall(r"<tr><td>locations \(received\)</td>(.*?)</tr>", as_receiver)
    assert re.findall(r'class="num mono receiver">([^<]*)<', row) == ["812.4 ms", "812.4 ms"], row
    assert "as receiver p95 ≤ 812 ms" in as_receiver  # its own part, on its chart
    as_caller = console_page(hub, f"/console/stats?party={caller[0]}-{caller[1]}")
    [row] = re.findall(r"<tr><td>locations \(sent\)</td>(.*?)</tr>", as_caller)
    assert re.findall(r'class="num mono receiver">([^<]*)<', row) == ["812.4 ms", "812.4 ms"], row  # its counterpart's
    assert "as receiver p95" not in as_caller  # it received nothing
