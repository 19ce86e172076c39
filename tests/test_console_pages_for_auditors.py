"""Console details an auditor's walkthrough found: list tables show each row's full date (rows are kept 400 days),
one link a row to its message, a skip link to the main content, column headers scoped; the traffic page counts the
codes in requests' headers that name no party together as "not a party", and says "1 message"."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime

from hub.console.charts import Bucket, bar_chart
from storage.log_row import LogEntry
from tests.conftest import Hub, Services, unique_party_id
from tests.log_rows import write
from tests.parties import Party
from tests.test_credentials_rotation import console_page
from tests.test_routing import party_key

WHEN = datetime(2002, 5, 7, 8, 9, 10, 123000, tzinfo=UTC)  # a moment of these tests' own


def _row_at_when(services: Services) -> str:
    request_id = f"full-date-{uuid.uuid4()}"
    write(services.database_url, [LogEntry(received_at=WHEN, request_id=request_id, correlation_id=request_id,
                                           module="locations", method="GET", path="/ocpi/2.2.1/sender/locations",
                                           routing="direct", http_status=200, ocpi_status_code=1000)])  # fmt: skip
    return request_id


def test_the_log_table_shows_each_rows_full_date_and_links_it_once(hub: Hub, services: Services) -> None:
    request_id = _row_at_when(services)
    page = console_page(hub, f"/console/log?request_id={request_id}")
    [row] = re.findall(r'<tr class="[^"]*" data-id="(\d+)">(.*?)</tr>', page)
    row_id, cells = row
    assert ">2002-05-07 08:09:10.123<" in cells
    assert cells.count(f'href="/console/log/{row_id}"') == 1
    message = console_page(hub, f"/console/log/{row_id}")
    assert "2002-05-07 08:09:10.123 UTC" in message


def test_every_console_page_has_a_skip_link_and_scoped_column_headers(hub: Hub, services: Services) -> None:
    _row_at_when(services)
    for path in ("/console/log", "/console/parties", "/console/stats?party=NL-HUB", "/console/audit",
                 "/console/verify"):  # fmt: skip
        page = console_page(hub, path)
        assert '<a class="skip" href="#main">Skip to the main content</a>' in page, path
        assert '<main id="main" tabindex="-1">' in page, path
        headers = re.findall(r"<th\b[^>]*>", page)
        assert all('scope="col"' in th for th in headers), (path, headers)
    assert re.search(r'<th scope="col"[^>]*>Received</th>', console_page(hub, "/console/log"))


def test_the_traffic_page_groups_codes_no_party_holds_as_not_a_party(
    hub: Hub, cpo_and_emsp: tuple[Party, Party]
) -> None:
    cpo, emsp = cpo_and_emsp
    nobody = ("FR", unique_party_id())
    cc, pid = party_key(cpo)
    answer = emsp.call(hub.base, "GET", "sender/locations", to=nobody)
    assert answer.json()["status_code"] == 4001, answer.text
    page = console_page(hub, "/console/stats")
    code = f"{nobody[0]}-{nobody[1]}"
    assert f'data-party="{code}"' not in page  # no chart of its own, as if it were a party
    assert 'data-party="not a party"' in page and "Not a party" in page
    assert f'<a class="mono" href="/console/log?party={code}">{code}</a>' in page  # still counted, and found
    assert f'data-party="{cc}-{pid}"' in page and f'data-party="{"-".join(party_key(emsp))}"' in page
    # asked for by name, it has its chart, as any code searched for
    assert f'data-party="{code}"' in console_page(hub, f"/console/stats?party={code}")


def test_a_traffic_bar_says_1_message_and_1_error() -> None:
    chart = bar_chart([Bucket(WHEN, messages=1, errors=1), Bucket(WHEN, messages=2, errors=0)], 1, "%H", "t")
    assert "UTC: 1 message, 1 error</title>" in chart and "UTC: 2 messages, 0 errors</title>" in chart
