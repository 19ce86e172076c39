"""A party's paging Link as RFC 8288 lets it write one (transport_and_format.asciidoc, Pagination): several link-values,
in one field or several, parameters before rel, quoted values holding "<" or ","; each relayed page's rel="next" leads
back through the hub, and the hub's own reads of a party's list (pull sync, owner pull) find it too."""

from __future__ import annotations

import re

import pytest

from tests.conftest import Hub
from tests.parties import RAW
from tests.test_party_urls import second_pages_read_by_pull_sync
from tests.test_routing import _roles, party_key

_PAGE = b'{"data": [{"id": "S1"}], "status_code": 1000, "timestamp": "2026-11-25T10:00:00Z"}'


def _answer(*headers: str) -> bytes:
    """A whole HTTP answer as it goes on the wire: the test party's server writes no header twice."""
    head = [b"HTTP/1.1 200 OK", b"Content-Type: application/json", b"Content-Length: %d" % len(_PAGE)]
    return b"\r\n".join([*head, *(h.encode() for h in headers), b"", _PAGE])


def _urls(link: str) -> list[str]:
    return re.findall(r"<([^>]*)>", link)


def test_a_link_sent_as_several_fields_is_relayed_whole_and_its_next_page_leads_back_through_the_hub(
    hub: Hub, connect_party
) -> None:
    # RFC 9110, 5.3: one list header may come as several fields. The hub relayed the first alone, rel="first": the
    # caller, finding no rel="next", took the first page of a CPO's sessions for the last.
    emsp, cpo = connect_party(_roles("EMSP")), connect_party(_roles("CPO"))
    sender = f"{cpo.base}/ocpi/2.2.1/sessions/sender"
    cpo.canned[("GET", "/ocpi/2.2.1/sessions/sender")] = (RAW, _answer(
        f'Link: <{sender}?offset=0&limit=1>; rel="first"', f'Link: <{sender}/p2?offset=1&limit=1>; rel="next"',
        "X-Total-Count: 2", "X-Limit: 1"), {})  # fmt: skip
    answer = emsp.call(hub.base, "GET", "sender/sessions?limit=1", to=party_key(cpo))
    assert answer.json()["status_code"] == 1000, answer.text
    link = answer.headers["link"]
    assert 'rel="first"' in link and 'rel="next"' in link and cpo.base not in link, link
    first, following = _urls(link)
    assert all(url.startswith(f"{hub.base}/ocpi/2.2.1/pages/") for url in (first, following)), link
    assert emsp.call(hub.base, "GET", following).json()["data"] == {"id": "p2", "served_by": cpo.name}
    assert [r.raw_path for r in cpo.functional()][-1] == "/ocpi/2.2.1/sessions/sender/p2?offset=1&limit=1"


def test_a_quoted_parameter_holding_angle_brackets_or_commas_is_relayed_as_written_and_names_no_page(
    hub: Hub, connect_party
) -> None:
    # Every "<...>" of the header was taken for a URL: the title's "<b>" became a hub page URL, kept a day in Redis
    # (RFC 8288, 3: a link-param's value may be a quoted-string, which names no link).
    emsp, cpo = connect_party(_roles("EMSP")), connect_party(_roles("CPO"))
    link = f'<{cpo.base}/ocpi/2.2.1/tariffs/sender?offset=1>; title="tariffs <b>, page 2"; rel="next"'
    cpo.canned[("GET", "/ocpi/2.2.1/tariffs/sender")] = (200, _PAGE, {"Link": link})
    relayed = emsp.call(hub.base, "GET", "sender/tariffs", to=party_key(cpo)).headers["link"]
    [url] = _urls(relayed.partition(";")[0])
    assert relayed == f'<{url}>; title="tariffs <b>, page 2"; rel="next"', relayed
    assert url.startswith(f"{hub.base}/ocpi/2.2.1/pages/")


@pytest.mark.parametrize(
    "link",
    ['<{next}>; type="application/json"; rel="next"', '<{next}>; REL=Next',
     '<{first}>; rel="first", <{next}>; rel="prev next"'],
)  # fmt: skip
def test_the_hubs_own_read_of_a_cpos_locations_follows_its_next_page_however_the_link_writes_it(
    hub: Hub, start_party, link: str
) -> None:
    # Only '<url>; rel="next"' with rel first was read: past any other parameter, in another case or among other
    # relation types, the pull sync took the first page for the last and the cache missed the CPO's other locations.
    assert second_pages_read_by_pull_sync(hub, start_party, link) == ["/ocpi/2.2.1/locations/sender/page2"]
