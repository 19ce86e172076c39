"""URLs a party hands the hub to call later (a response_url, a paging Link, a CDR Location): only at a host that
party registered, never the hub's own, and never one the hub cannot call. Found by a party developer's walkthrough:
a Link to the hub's /metrics or to another party's private service was followed and its answer relayed, and a
response_url or Link with port 99999 gave HTTP 500."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
import pytest

from hub.errors import HubUrlsSpent
from hub.ocpi.relay import Relay
from hub.ocpi.relayed_urls import refuse_list_once_spent
from hub.settings import Settings
from storage.routing_state import NoRoomToday, utc_day
from tests.conftest import OUTPUT, Hub, Services, hub_env, register_at_hub, start_hub
from tests.parties import envelope, free_port
from tests.test_routing import _roles, party_key

_ENVELOPE = b'{"data": [], "status_code": 1000, "timestamp": "2026-11-25T10:00:00Z"}'


def _elsewhere(hub: Hub, other_party_base: str, own_base: str) -> dict[str, str]:
    return {
        "the hub's own metrics": f"{hub.base}/metrics",
        "another party's host": f"{other_party_base}/private/state",
        "a host nobody registered": f"http://127.0.0.1:{free_port()}/x",
        "a port out of range": "http://127.0.0.1:99999/x",
        "no URL at all": "not a url",
        "a user name in it": own_base.replace("http://", "http://user:secret@") + "/x",  # aiohttp: HTTP 500
        "a space in it": f"{own_base}/a b",  # sent as written: "GET /a b HTTP/1.1"
        # the party's own host for Python's urlsplit; for aiohttp, none (it refuses a backslash there), for a
        # WHATWG parser the hub's
        "a host two parsers read apart": f"http://{hub.base.removeprefix('http://')}\\@{own_base.removeprefix('http://')}/x",
    }


@pytest.mark.parametrize(
    "where", ["the hub's own metrics", "another party's host", "a host nobody registered", "a port out of range",
              "no URL at all", "a host two parsers read apart", "a user name in it", "a space in it"],
)  # fmt: skip
def test_a_response_url_at_a_host_the_caller_did_not_register_is_refused_with_2001_and_nothing_is_forwarded(
    hub: Hub, connect_party, db, where: str
) -> None:
    emsp, cpo, bystander = connect_party(_roles("EMSP")), connect_party(_roles("CPO")), connect_party(_roles("EMSP"))
    response_url = _elsewhere(hub, bystander.base, emsp.base)[where]
    answer = emsp.call(hub.base, "POST", "receiver/commands/START_SESSION", to=party_key(cpo),
                       body={"response_url": response_url, "location_id": "L1", "token": {"uid": "T1"}})  # fmt: skip
    assert (answer.status_code, answer.json()["status_code"]) == (200, 2001), answer.text
    assert answer.json()["status_message"].startswith("response_url is refused: it ")
    assert cpo.functional() == []
    [row] = db.run(db.fetch("SELECT ocpi_status_code, error FROM routing_log WHERE request_id = $1",
                            answer.headers["x-request-id"]))  # fmt: skip
    assert row["ocpi_status_code"] == 2001 and "response_url is refused" in row["error"]


def test_a_response_url_at_the_callers_own_host_is_relayed_as_before(hub: Hub, connect_party) -> None:
    emsp, cpo = connect_party(_roles("EMSP")), connect_party(_roles("CPO"))
    body = {"response_url": f"{emsp.base}/callbacks/9", "location_id": "L1", "token": {"uid": "T1"}}
    answer = emsp.call(hub.base, "POST", "receiver/commands/START_SESSION", to=party_key(cpo), body=body)
    assert answer.json()["status_code"] == 1000
    [command] = cpo.functional()
    assert json.loads(command.body)["response_url"].startswith(f"{hub.base}/ocpi/2.2.1/results/")


@pytest.mark.parametrize(
    "where", ["the hub's own metrics", "another party's host", "a host nobody registered", "a port out of range",
              "a host two parsers read apart", "a user name in it", "a space in it"],
)  # fmt: skip
def test_a_receivers_link_the_hub_will_not_follow_is_relayed_and_following_it_is_refused_with_4000(
    hub: Hub, connect_party, db, where: str
) -> None:
    # Dropped, it told the caller it had the last page: a GET All taken as complete drops what it did not get
    # (a spec review). Relayed, the caller finds out at the next page, and the routing log says why at each step.
    emsp, cpo, bystander = connect_party(_roles("EMSP")), connect_party(_roles("CPO")), connect_party(_roles("CPO"))
    url = _elsewhere(hub, bystander.base, cpo.base)[where]
    cpo.canned[("GET", "/ocpi/2.2.1/tariffs/sender")] = (200, _ENVELOPE, {"Link": f'<{url}>; rel="next"',
                                                                          "X-Total-Count": "80"})  # fmt: skip
    answer = emsp.call(hub.base, "GET", "sender/tariffs", to=party_key(cpo))
    assert (answer.status_code, answer.json()["status_code"]) == (200, 1000), answer.text
    assert answer.headers["link"].startswith(f"<{hub.base}/ocpi/2.2.1/pages/"), answer.headers
    assert answer.headers["x-total-count"] == "80"
    [row] = db.run(db.fetch("SELECT error FROM routing_log WHERE request_id = $1", answer.headers["x-request-id"]))
    assert row["error"].startswith("the receiver's Link header leads to a URL the hub will not call"), row["error"]
    following = emsp.call(hub.base, "GET", answer.headers["link"][1:].split(">")[0])
    assert (following.status_code, following.json()["status_code"]) == (200, 4000), following.text
    assert "gave a URL for this that the hub does not call" in following.json()["status_message"]
    assert bystander.base not in following.text and cpo.base not in following.text
    [row] = db.run(db.fetch("SELECT ocpi_status_code, error FROM routing_log WHERE request_id = $1",
                            following.headers["x-request-id"]))  # fmt: skip
    assert row["ocpi_status_code"] == 4000 and row["error"].startswith(url[:50]), dict(row)
    assert bystander.functional() == [] and [r.query for r in cpo.functional()] == [""]


def test_a_cdr_location_at_a_host_the_receiver_did_not_register_is_relayed_and_following_it_is_refused(
    hub: Hub, connect_party, db
) -> None:
    cpo, emsp, bystander = connect_party(_roles("CPO")), connect_party(_roles("EMSP")), connect_party(_roles("EMSP"))
    created = b'{"status_code": 1000, "timestamp": "2026-11-25T10:00:00Z"}'
    location = f"{bystander.base}/ocpi/2.2.1/cdrs/receiver/CDR-1"  # a URL of another party
    emsp.canned[("POST", "/ocpi/2.2.1/cdrs/receiver")] = (201, created, {"Location": location})
    answer = cpo.call(hub.base, "POST", "receiver/cdrs", to=party_key(emsp), body={"id": "CDR-1"})
    assert (answer.status_code, answer.json()["status_code"]) == (201, 1000)
    # mod_cdrs.asciidoc: the Location header is required in the answer to a CDR POST
    assert answer.headers["location"].startswith(f"{hub.base}/ocpi/2.2.1/relayed-cdrs/")
    [row] = db.run(db.fetch("SELECT error FROM routing_log WHERE request_id = $1", answer.headers["x-request-id"]))
    assert row["error"].startswith("the receiver's Location header leads to a URL the hub will not call")
    following = cpo.call(hub.base, "GET", answer.headers["location"])
    assert following.json()["status_code"] == 4000 and bystander.functional() == []


def test_a_party_listing_an_endpoint_at_the_hubs_own_host_written_otherwise_is_not_registered(
    hub: Hub, start_party
) -> None:
    # "http://127.0.0.1:0PORT" is the hub's host and port as any client reads it, not as text: listed as an endpoint,
    # it made the hub's own /metrics a URL the party could hand the hub in a Link (a security review).
    party = start_party(_roles("CPO"))
    host, port = hub.base.rsplit(":", 1)
    alias = f"{host}:0{port}"
    extra = {"identifier": "hubclientinfo", "role": "RECEIVER", "url": f"{alias}/anything"}
    details = envelope({"version": "2.2.1", "endpoints": [*party.endpoints(), extra]})
    party.canned[("GET", "/ocpi/2.2.1")] = (200, json.dumps(details).encode(), {"Content-Type": "application/json"})
    answer = party.register_at(hub.versions_url, hub.invite(party.name, party.roles[0])["token_a"])
    assert answer.json()["status_code"] == 3001 and "is the hub's own" in answer.json()["status_message"], answer.text


def test_a_pull_sync_page_that_redirects_is_not_followed(hub: Hub, start_party, connect_party) -> None:
    # Its Link is checked; where a redirect of it leads was not, and the hub went there (a security review).
    bystander = connect_party(_roles("EMSP"))
    roles = _roles("CPO")
    cpo = start_party(roles)
    page = json.dumps({"data": [], "status_code": 1000, "timestamp": "2026-11-25T10:00:00Z"}).encode()
    link = f'<{cpo.base}/ocpi/2.2.1/locations/sender/page2>; rel="next"'
    cpo.canned[("GET", "/ocpi/2.2.1/locations/sender")] = (200, page, {"Link": link})
    cpo.canned[("GET", "/ocpi/2.2.1/locations/sender/page2")] = (302, b"", {"Location": f"{bystander.base}/internal"})
    cpo.register_at(hub.versions_url, hub.invite(cpo.name, roles)["token_a"])
    deadline = time.monotonic() + 10
    while not [r for r in cpo.received if r.path.endswith("/page2")] and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    assert [r.path for r in cpo.received if r.path.endswith("/page2")]
    assert [r.path for r in bystander.received if r.path == "/internal"] == []


def test_a_receivers_relative_link_and_cdr_location_are_taken_relative_to_the_url_the_hub_called(
    hub: Hub, connect_party
) -> None:
    # RFC 8288 3.2 and RFC 9110 10.2.2 allow them; the hub dropped them as no URL it could call
    emsp, cpo = connect_party(_roles("EMSP")), connect_party(_roles("CPO"))
    links = '</ocpi/2.2.1/tariffs/sender?offset=50&limit=50>; rel="next", <?offset=100&limit=50>; rel="last"'
    cpo.canned[("GET", "/ocpi/2.2.1/tariffs/sender")] = (200, _ENVELOPE, {"Link": links})
    answer = emsp.call(hub.base, "GET", "sender/tariffs?limit=50", to=party_key(cpo))
    relayed = answer.headers["link"]
    assert relayed.count(f"{hub.base}/ocpi/2.2.1/pages/") == 2 and 'rel="last"' in relayed, relayed
    for url in [part.split(">")[0].lstrip(" ,<") for part in relayed.split(",")]:
        assert emsp.call(hub.base, "GET", url).json()["status_code"] == 1000
    assert [(r.path, r.query) for r in cpo.functional()] == [
        ("/ocpi/2.2.1/tariffs/sender", "limit=50"),
        ("/ocpi/2.2.1/tariffs/sender", "offset=50&limit=50"),
        ("/ocpi/2.2.1/tariffs/sender", "offset=100&limit=50"),
    ]
    created = b'{"status_code": 1000, "timestamp": "2026-11-25T10:00:00Z"}'
    emsp.canned[("POST", "/ocpi/2.2.1/cdrs/receiver")] = (201, created, {"Location": "receiver/CDR-1"})
    answer = cpo.call(hub.base, "POST", "receiver/cdrs", to=party_key(emsp), body={"id": "CDR-1"})
    assert answer.headers["location"].startswith(f"{hub.base}/ocpi/2.2.1/relayed-cdrs/"), answer.headers
    cpo.call(hub.base, "GET", answer.headers["location"])
    assert [r.path for r in emsp.functional()][-1] == "/ocpi/2.2.1/cdrs/receiver/CDR-1"


def test_a_pull_sync_pages_relative_link_is_followed_at_the_cpos_host(hub: Hub, start_party) -> None:
    assert second_pages_read_by_pull_sync(hub, start_party, '<sender/page2>; rel="next"') == [
        "/ocpi/2.2.1/locations/sender/page2"
    ]


def second_pages_read_by_pull_sync(hub: Hub, start_party, link: str) -> list[str]:  # type: ignore[no-untyped-def]
    """A CPO registers whose locations Sender answers its first page with this Link ({next}: its second page's URL,
    {first}: its first's): the paths of the second page the hub's pull sync asked for, within 10 s."""
    roles = _roles("CPO")
    cpo = start_party(roles)
    sender = f"{cpo.base}/ocpi/2.2.1/locations/sender"
    page = json.dumps({"data": [], "status_code": 1000, "timestamp": "2026-11-25T10:00:00Z"}).encode()
    written = link.format(next=f"{sender}/page2", first=sender)
    cpo.canned[("GET", "/ocpi/2.2.1/locations/sender")] = (200, page, {"Link": written})
    cpo.canned[("GET", "/ocpi/2.2.1/locations/sender/page2")] = (200, page, {})
    cpo.register_at(hub.versions_url, hub.invite(cpo.name, roles)["token_a"])
    deadline = time.monotonic() + 10
    while not [r for r in cpo.received if r.path.endswith("/page2")] and time.monotonic() < deadline:
        time.sleep(0.1)
    return [r.path for r in cpo.received if r.path.endswith("/page2")]


def test_a_next_page_url_longer_than_the_hub_keeps_is_answered_4000_and_a_url_named_twice_is_kept_once(
    hub: Hub, connect_party, db
) -> None:
    # Each URL of a Link is kept in Redis for a day: "<#0>, <#1>, ... <#1315>", each resolved against a call with a
    # 60 KB query, was 79 MB from one answer (a security review). A next page's URL longer than the hub keeps was
    # dropped with the whole Link, and the caller took the page for the last without a word.
    emsp, cpo = connect_party(_roles("EMSP")), connect_party(_roles("CPO"))
    endless = f"{cpo.base}/ocpi/2.2.1/tariffs/sender?cursor={'c' * 70_000}"
    cpo.canned[("GET", "/ocpi/2.2.1/tariffs/sender")] = (200, _ENVELOPE, {"Link": f'<{endless}>; rel="next"'})
    answer = emsp.call(hub.base, "GET", "sender/tariffs", to=party_key(cpo))
    assert (answer.json()["status_code"], "link" in answer.headers) == (4000, False), answer.text
    told = answer.json()["status_message"]
    assert told == (f"the receiver's answer is not relayed: the URL of its next page (Link rel=\"next\") is "
                    f"{len(endless)} characters long, more than the 65536 the hub keeps; without it the caller would "
                    "take this page for the last")  # fmt: skip
    [row] = db.run(db.fetch("SELECT error FROM routing_log WHERE request_id = $1", answer.headers["x-request-id"]))
    assert row["error"] == told
    deadline = time.monotonic() + 5
    while not (logged := _logged(hub, "party_url_refused", answer.headers["x-request-id"])):
        assert time.monotonic() < deadline, "no party_url_refused in the hub's log"
        time.sleep(0.1)
    assert [line["header"] for line in logged] == ["link"] and f": {logged[0]['reason']}; without" in told
    cpo.canned[("GET", "/ocpi/2.2.1/tariffs/sender")] = (200, _ENVELOPE, {"Link": '<#1>, <#2>; rel="next"'})
    answer = emsp.call(hub.base, "GET", "sender/tariffs?offset=0", to=party_key(cpo))
    first, second = [part.split(">")[0].lstrip(" ,<") for part in answer.headers["link"].split(",")]
    assert first == second  # one URL, kept once


def test_a_platform_handed_its_days_bytes_of_hub_urls_is_answered_4000_and_the_others_are_not(
    services: Services, tmp_path: Path, start_party, db
) -> None:
    # Each hub URL is kept in Redis, a page's for a day, a result's for 48 hours: a registered party asking for pages
    # in a loop filled Redis (security review). Past its day's bytes its requests that need one are refused.
    hub = start_hub(hub_env(services, tmp_path, OCPI_HUB_KEPT_URL_BYTES_PER_DAY="4000"), OUTPUT / "hub-url-bytes.log")
    try:
        greedy, other = (register_at_hub(hub, start_party, _roles("EMSP")) for _ in range(2))
        cpo = register_at_hub(hub, start_party, _roles("CPO"))
        cpo.canned[("GET", "/ocpi/2.2.1/tariffs/sender")] = (200, _ENVELOPE, {"Link": '<?offset=1>; rel="next"'})
        pages = []
        while (answer := greedy.call(hub.base, "GET", "sender/tariffs", to=party_key(cpo))).json()[
            "status_code"
        ] == 1000:
            pages.append(answer.headers["link"])
            assert len(pages) < 20, "no cap"
        assert len(pages) >= 4 and all("/ocpi/2.2.1/pages/" in link for link in pages), pages  # ~600 bytes each
        told = answer.json()["status_message"]
        assert answer.json()["status_code"] == 4000 and "link" not in answer.headers, answer.text
        said = (r"the receiver's answer is not relayed: its Link needs hub URLs, and the hub kept [\d,]+ bytes of them "
                r"for this platform's requests today \(UTC\), of 4,000 at most \(OCPI_HUB_KEPT_URL_BYTES_PER_DAY\); "
                r"the hub operator can raise it")  # fmt: skip
        assert re.fullmatch(said, told), told
        [row] = db.run(db.fetch("SELECT error FROM routing_log WHERE request_id = $1", answer.headers["x-request-id"]))
        assert row["error"] == told
        # From then on its list requests are not forwarded: the receiver would read out pages it never gets. Neither
        # a GET of the list nor a hub URL of a page handed out before, whose answer may have a next page too.
        forwarded = len(cpo.functional())  # the pages, the one refused above too
        [handed] = re.findall(r"<([^>]*)>", pages[0])
        lists = [
            greedy.call(hub.base, "GET", "sender/tariffs", to=party_key(cpo)),
            greedy.call(hub.base, "GET", handed),
        ]
        for listed in lists:
            assert listed.json()["status_code"] == 4000, listed.text
            assert listed.json()["status_message"].startswith(
                "not forwarded: the answer to a list request may need hub URLs for its Link, and the hub kept "
            ), listed.text
        assert len(cpo.functional()) == forwarded
        # Its other requests still are: a token pushed, say.
        cc, pid = party_key(greedy)
        token = {"uid": "T1", "country_code": cc, "party_id": pid, "type": "RFID", "contract_id": "C1", "issuer": "I",
                 "valid": True, "whitelist": "ALLOWED", "last_updated": "2026-11-25T10:00:00Z"}  # fmt: skip
        pushed = greedy.call(hub.base, "PUT", f"receiver/tokens/{cc}/{pid}/T1", to=party_key(cpo), body=token)
        assert pushed.json()["status_code"] == 1000 and len(cpo.functional()) == forwarded + 1, pushed.text
        forwarded += 1
        # A command, whose response_url needs a hub URL, is not forwarded at all.
        command = greedy.call(hub.base, "POST", "receiver/commands/START_SESSION", to=party_key(cpo),
                              body={"response_url": f"{greedy.base}/result/1", "location_id": "L1",
                                    "token": {"uid": "T1"}})  # fmt: skip
        assert command.json()["status_code"] == 4000, command.text
        assert command.json()["status_message"].startswith("not forwarded: its response_url needs a hub URL, and the")
        assert len(cpo.functional()) == forwarded
        # The other platform's requests are charged to it alone.
        page = other.call(hub.base, "GET", "sender/tariffs", to=party_key(cpo))
        assert page.json()["status_code"] == 1000 and "/ocpi/2.2.1/pages/" in page.headers["link"], page.text
        # The operator sees whose requests they were: a log line each, and a metric by party and kind.
        party = "{}-{}".format(*party_key(greedy))
        for refused, kind in ((answer, "pages"), (command, "results")):
            [line] = _logged(hub, "hub_urls_spent", refused.headers["x-request-id"])
            assert (line["party"], line["kind"], line["most_bytes"]) == (party, kind, 4000), line
        scraped = httpx.get(f"{hub.base}/metrics", timeout=10).text
        for kind, refused_count in (("pages", 3), ("results", 1)):
            assert f'ocpi_hub_hub_urls_spent_total{{kind="{kind}",party="{party}"}} {refused_count}.0' in scraped, kind
    finally:
        hub.stop()


def test_a_cpos_next_page_urls_of_long_cursors_are_followed_through_the_hub_to_its_last_page(
    hub: Hub, connect_party
) -> None:
    # Cursor tokens of thousands of characters are found in the field. A next page's URL over 8,192 characters (a
    # relative one, resolved) made the hub drop the whole Link: the eMSP took page 1 for the last (transport_and_format
    # .asciidoc, Pagination) and never learnt of the CPO's other tariffs; one written whole (10,000) was a 4000.
    emsp, cpo = connect_party(_roles("EMSP")), connect_party(_roles("CPO"))
    sender = "/ocpi/2.2.1/tariffs/sender"
    links = {"": f'<sender/page2?cursor={"c" * 8150}>; rel="next"',  # within aiohttp's 8,190 bytes of a field
             "/page2": f'<{cpo.base}{sender}/page3?cursor={"c" * 10_000}>; rel="next"', "/page3": None}  # fmt: skip
    for page, link in links.items():
        body = json.dumps(envelope([{"id": f"T{page or '/page1'}"}])).encode()
        cpo.canned[("GET", f"{sender}{page}")] = (200, body, {"Link": link} if link else {})
    answer, listed = emsp.call(hub.base, "GET", "sender/tariffs", to=party_key(cpo)), []
    while True:
        assert answer.json()["status_code"] == 1000, answer.text
        listed += [tariff["id"] for tariff in answer.json()["data"]]
        if "link" not in answer.headers:
            break
        [url] = re.findall(r"<([^>]*)>", answer.headers["link"])
        assert url.startswith(f"{hub.base}/ocpi/2.2.1/pages/") and len(url) < 200, url  # the hub's URL: short
        answer = emsp.call(hub.base, "GET", url)
    assert listed == ["T/page1", "T/page2", "T/page3"]
    assert [(r.path, len(r.query)) for r in cpo.functional()] == [
        (sender, 0), (f"{sender}/page2", 8157), (f"{sender}/page3", 10_007)]  # fmt: skip


def test_a_link_of_more_urls_than_the_hub_keeps_is_relayed_with_its_next_first_prev_and_last_and_drops_the_rest(
    hub: Hub, connect_party, db
) -> None:
    # The whole Link was dropped: the caller, finding no rel="next", took the page for the last (transport_and_format
    # .asciidoc, Pagination), and of a GET All, what it did not get for gone (mod_locations.asciidoc).
    emsp, cpo = connect_party(_roles("EMSP")), connect_party(_roles("CPO"))
    others = [f'<?offset={n}&alt=1>; rel="alternate"' for n in range(6)]
    paging = [
        '<?offset=0>; rel="first"',
        '<?offset=1>; rel="prev"',
        '<?offset=9>; rel="last"',
        '<p3?offset=3>; rel="next"',
    ]
    cpo.canned[("GET", "/ocpi/2.2.1/tariffs/sender")] = (200, _ENVELOPE, {"Link": ", ".join(others + paging)})
    answer = emsp.call(hub.base, "GET", "sender/tariffs", to=party_key(cpo))
    assert answer.json()["status_code"] == 1000, answer.text
    link = answer.headers["link"]
    rels = re.findall(r'rel="([^"]*)"', link)
    assert rels == ["alternate"] * 4 + ["first", "prev", "last", "next"], link
    assert all(url.startswith(f"{hub.base}/ocpi/2.2.1/pages/") for url in re.findall(r"<([^>]*)>", link)), link
    [row] = db.run(db.fetch("SELECT error FROM routing_log WHERE request_id = $1", answer.headers["x-request-id"]))
    assert row["error"] == ("the receiver's Link header was relayed without 2 of its link-values: it names 10 URLs, "
                            "more than the 8 the hub keeps (next, first, prev and last kept first)")  # fmt: skip
    following = re.findall(r"<([^>]*)>", link)[-1]
    assert emsp.call(hub.base, "GET", following).json()["status_code"] == 1000
    assert [r.raw_path for r in cpo.functional()][-1] == "/ocpi/2.2.1/tariffs/p3?offset=3"


def test_a_link_value_of_an_endless_url_is_dropped_alone_when_it_is_not_the_next_page(
    hub: Hub, connect_party, db
) -> None:
    emsp, cpo = connect_party(_roles("EMSP")), connect_party(_roles("CPO"))
    # "#1" is the URL called (20,000 characters and more), "?offset=1" that URL with a query of its own
    link = '<#1>; rel="first", <?offset=1>; rel="next"'
    cpo.canned[("GET", "/ocpi/2.2.1/tariffs/sender")] = (200, _ENVELOPE, {"Link": link})
    answer = emsp.call(hub.base, "GET", "sender/tariffs?pad=" + "x" * 20_000, to=party_key(cpo))
    assert answer.json()["status_code"] == 1000, answer.text
    assert re.fullmatch(rf'<{re.escape(hub.base)}/ocpi/2\.2\.1/pages/[^>]+>; rel="next"', answer.headers["link"])
    [row] = db.run(db.fetch("SELECT error FROM routing_log WHERE request_id = $1", answer.headers["x-request-id"]))
    assert row["error"].startswith("the receiver's Link header was relayed without 1 of its link-values: a URL in "
                                   "it is 2"), row["error"]  # fmt: skip
    following = answer.headers["link"].split(">")[0].lstrip("<")
    assert emsp.call(hub.base, "GET", following).json()["status_code"] == 1000
    assert [r.raw_path for r in cpo.functional()][-1] == "/ocpi/2.2.1/tariffs/sender?offset=1"


def test_a_callers_query_on_a_paging_link_replaces_the_links_own_and_one_that_is_no_uris_is_the_callers_error() -> None:
    # under a server that lets such bytes through (h11, granian) it was a 4000 naming the receiver (a security review)
    from hub.errors import InvalidParameters
    from routing.rewrite import with_query

    assert with_query("http://cpo/p?offset=10&limit=10", "offset=9") == "http://cpo/p?limit=10&offset=9"
    assert with_query("http://cpo/p?offset=10", "") == "http://cpo/p?offset=10"
    with pytest.raises(InvalidParameters, match="must be percent-encoded"):
        with_query("http://cpo/p?offset=10", "offset=9&name=caf\u00e9")


def test_a_cdr_location_over_the_limits_is_said_in_the_row_and_the_hubs_log_as_a_link_is(
    hub: Hub, connect_party, db
) -> None:
    # The Location's row said why it was not relayed, but the hub's log said nothing of it (an operator's complaint):
    # a Link over the limits is said in both.
    cpo, emsp = connect_party(_roles("CPO")), connect_party(_roles("EMSP"))
    created = b'{"status_code": 1000, "timestamp": "2026-11-25T10:00:00Z"}'
    emsp.canned[("POST", "/ocpi/2.2.1/cdrs/receiver")] = (201, created, {"Location": "#1"})
    answer = cpo.call(hub.base, "POST", "receiver/cdrs?pad=" + "x" * 20_000, to=party_key(emsp), body={"id": "C1"})
    cpo.canned[("GET", "/ocpi/2.2.1/tariffs/sender")] = (200, _ENVELOPE, {"Link": '<#1>; rel="first"'})
    paged = emsp.call(hub.base, "GET", "sender/tariffs?pad=" + "x" * 20_000, to=party_key(cpo))
    for header, relayed, receiver in (("location", answer, emsp), ("link", paged, cpo)):
        assert relayed.json()["status_code"] == 1000 and header not in relayed.headers, relayed.headers
        request_id = relayed.headers["x-request-id"]
        [row] = db.run(db.fetch("SELECT error FROM routing_log WHERE request_id = $1", request_id))
        assert row["error"].startswith(f"the receiver's {header.title()} header was not relayed: a URL in it is ")
        deadline = time.monotonic() + 5
        while not (logged := _logged(hub, "party_url_refused", request_id)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [(line["header"], line["party"]) for line in logged] == [(header, "-".join(party_key(receiver)))]
        assert row["error"].endswith(logged[0]["reason"]) and "more than the 8192 the hub keeps" in logged[0]["reason"]


def _logged(hub: Hub, event: str, request_id: str) -> list[dict]:
    lines = (json.loads(line) for line in hub.log().splitlines() if line.startswith("{") and event in line)
    return [line for line in lines if line.get("event") == event and line.get("request_id") == request_id]


def test_a_platform_refused_hub_urls_yesterday_has_its_lists_forwarded_again_today() -> None:
    # A process that refused a platform hub URLs forwards none of its lists for the rest of that UTC day (above); its
    # count in Redis starts again at midnight, and so do its lists.
    relay, today = Relay(Settings.from_env({})), utc_day()
    relay.urls_spent[7] = NoRoomToday(4_100, 4_000, today - 1)
    refuse_list_once_spent(relay, 7, ("NL", "ABC"))  # forwarded
    assert 7 not in relay.urls_spent
    relay.urls_spent[7] = NoRoomToday(4_100, 4_000, today)
    with pytest.raises(HubUrlsSpent, match=r"^not forwarded: .* kept 4,100 bytes of them .* of 4,000 at most"):
        refuse_list_once_spent(relay, 7, ("NL", "ABC"))
