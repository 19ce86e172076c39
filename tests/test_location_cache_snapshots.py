"""GET All via the hub, answered from the location cache: snapshots a client pages through by their Link, their
offsets, date windows and limits, their expiry, and the party each is taken for."""

from __future__ import annotations

import asyncio
import json
import secrets
import time

import httpx
import msgspec
import redis

from storage.directory import PartyRole
from storage.location_cache import LocationCache
from tests.conftest import Hub, Services
from tests.test_location_cache import HUB, _assert_total, _eventually, _get, _location, _push
from tests.test_location_cache_upgrades import _run
from tests.test_routing import _roles, party_key


def test_get_all_via_the_hub_walks_every_location_once_while_the_cache_changes(hub: Hub, connect_party) -> None:
    stamps = [f"2026-11-20T10:{n:02d}:00Z" for n in range(25)]
    cpo, emsp, _, query = _cached(hub, connect_party, [f"W{n:02d}" for n in range(25)], stamps, limit=10)
    seen, url, pages = [], query, 0
    while url:
        answer = _get(emsp, hub, url)
        assert answer.json()["status_code"] == 1000 and answer.headers["X-Total-Count"] == "25"
        assert answer.headers["X-Limit"] == "10"  # the limit asked, within the hub's maximum
        seen += [loc["id"] for loc in answer.json()["data"]]
        if pages == 0:  # the CPO updates an early location while the eMSP is walking the pages
            _push(cpo, emsp, hub, "PATCH", "W00", {"name": "moved", "last_updated": "2026-11-25T11:00:00Z"})
            time.sleep(0.2)
        link = answer.headers.get("Link")
        url = link.split(">")[0].lstrip("<") if link else None
        pages += 1
    assert seen == [f"W{n:02d}" for n in range(25)] and pages == 3
    far = _get(emsp, hub, query + f"&offset={10**30}")  # past every list: an empty page, not a Redis error
    assert far.json()["status_code"] == 1000 and far.json()["data"] == [] and far.headers["X-Total-Count"] == "25"
    # date_from is inclusive, date_to exclusive
    window = _get(emsp, hub, query + "&date_from=2026-11-20T10:05:00Z&date_to=2026-11-20T10:07:00Z").json()
    assert [loc["id"] for loc in window["data"]] == ["W05", "W06"]
    # RFC 3339, 5.6: "T" and "Z" may be written lower case (a party developer's walkthrough got 2001)
    lower = _get(emsp, hub, query + "&date_from=2026-11-20t10:05:00z&date_to=2026-11-20t10:07:00z").json()
    assert [loc["id"] for loc in lower["data"]] == ["W05", "W06"], lower
    swapped = _get(emsp, hub, query + "&date_from=2026-11-20T10:07:00Z&date_to=2026-11-20T10:05:00Z").json()
    assert swapped["status_code"] == 2001 and swapped["status_message"].startswith(
        "date_to (2026-11-20T10:05:00Z) is before date_from (2026-11-20T10:07:00Z)"
    ), swapped
    empty = _get(emsp, hub, query + "&date_from=2026-11-20T10:05:00Z&date_to=2026-11-20T10:05:00Z").json()
    assert (empty["status_code"], empty["data"]) == (1000, []), empty  # [t, t): well defined, and empty


def test_a_page_reads_on_past_locations_gone_since_the_snapshot_and_the_next_begins_after_them(
    services: Services,
) -> None:
    # The next page began at offset + the locations found: a page whose locations had all gone since the GET All (their
    # CPO left) linked to itself for ever, and a page with a gap had the next one repeat locations.
    owner, prefix = ("NL", "GAP"), f"{services.redis_prefix}gaps-{secrets.token_hex(4)}:"

    async def pages() -> list[tuple[list[str], int, int] | None]:
        client = redis.asyncio.Redis.from_url(services.redis_url)
        try:
            cache = LocationCache(client, prefix)
            locations = [_location(owner, f"G{n}", f"2026-11-20T10:0{n}:00Z") for n in range(6)]
            await cache.put_many(owner, 0, [msgspec.Raw(json.dumps(loc).encode()) for loc in locations])
            snapshot_id, _ = await cache.snapshot(owner, None, None, owner)
            await client.delete(*(f"{prefix}locations:doc:NL/GAP/G{n}" for n in (1, 2, 3, 5)))
            found = [await cache.page(snapshot_id, offset, 2) for offset in (0, 5)]
            return [(sorted(json.loads(d)["id"] for d in p[0]), p[1], p[2]) if p else None for p in found]
        finally:
            await client.aclose()

    assert asyncio.run(pages()) == [(["G0", "G4"], 5, 6), ([], 6, 6)]


def _two_locations_a_page(hub: Hub, connect_party, ids: tuple[str, str]):  # type: ignore[no-untyped-def]
    """An eMSP, and the query of its GET All of a CPO's two locations (ids), once both are cached, a page each."""
    _, emsp, _, query = _cached(hub, connect_party, ids, limit=1)
    return emsp, query


def _cached(hub: Hub, connect_party, ids, stamps=None, limit: int | None = None):  # type: ignore[no-untyped-def]
    """A CPO and an eMSP once the hub's cache holds the locations the CPO pushed (ids; last_updated: stamps, else one
    time for all): (cpo, emsp, the CPO's party, the query of the eMSP's GET All of them, with limit if given)."""
    cpo, emsp = connect_party(_roles("CPO")), connect_party(_roles("EMSP"))
    owner = party_key(cpo)
    for location_id, stamp in zip(ids, stamps or ["2026-11-21T10:00:00Z"] * len(ids), strict=True):
        _push(cpo, emsp, hub, "PUT", location_id, _location(owner, location_id, stamp))
    query = f"sender/locations?country_code={owner[0]}&party_id={owner[1]}" + (f"&limit={limit}" if limit else "")
    _eventually(lambda: _assert_total(emsp, hub, query, len(ids)))
    return cpo, emsp, owner, query


def test_a_party_starting_get_all_again_and_again_keeps_only_its_latest_snapshots(hub: Hub, connect_party) -> None:
    from storage.location_cache import SNAPSHOTS_PER_VIEWER

    emsp, query = _two_locations_a_page(hub, connect_party, ("S1", "S2"))
    links = [_get(emsp, hub, query).headers["Link"].split(">")[0].lstrip("<")
             for _ in range(SNAPSHOTS_PER_VIEWER + 1)]  # fmt: skip
    expired = _get(emsp, hub, links[0])
    assert expired.status_code == 404 and "expired" in expired.json()["status_message"]
    for link in links[1:]:  # the latest ones still lead to the second page
        assert [loc["id"] for loc in _get(emsp, hub, link).json()["data"]] == ["S2"]


def test_an_expired_snapshot_is_404_at_offset_0_too_never_an_empty_list(hub: Hub, connect_party) -> None:
    # An expired snapshot followed at offset 0 (or with limit=0) answered 1000, data [] and X-Total-Count 0: to a GET
    # All, "the new truth" (mod_locations.asciidoc), that every location was gone.
    from storage.location_cache import SNAPSHOTS_PER_VIEWER

    emsp, query = _two_locations_a_page(hub, connect_party, ("X1", "X2"))
    oldest = _get(emsp, hub, query).headers["Link"].split(">")[0].lstrip("<").split("?")[0]
    for _ in range(SNAPSHOTS_PER_VIEWER):  # each a snapshot of its own: the oldest expires
        _get(emsp, hub, query)
    for window in ("offset=0&limit=1", "offset=0&limit=0", "limit=0", ""):
        expired = _get(emsp, hub, f"{oldest}?{window}" if window else oldest)
        assert expired.status_code == 404 and "expired" in expired.json()["status_message"], (window, expired.text)


def test_get_all_with_limit_0_answers_the_total_alone_and_takes_no_snapshot_while_a_forwarded_one_keeps_its_limit(
    hub: Hub, connect_party
) -> None:
    # transport_and_format.asciidoc, Pagination: limit is "The maximum number of objects to GET", with no lower bound;
    # a client asks for 0 to learn X-Total-Count. X-Limit "SHALL then still show the upper limit, not the number of
    # objects returned"; no Link, which would lead to the same empty page for ever.
    from hub.ocpi.hub_answers import MAX_LIMIT
    from storage.location_cache import SNAPSHOTS_PER_VIEWER

    cpo, emsp, owner, query = _cached(hub, connect_party, ("Z1", "Z2", "Z3"))
    walking = _get(emsp, hub, f"{query}&limit=1").headers["Link"].split(">")[0].lstrip("<")
    for _ in range(SNAPSHOTS_PER_VIEWER + 1):  # counting takes none of the party's snapshots' places
        counted = _get(emsp, hub, f"{query}&limit=0")
        assert (counted.status_code, counted.json()["status_code"], counted.json()["data"]) == (200, 1000, [])
        assert (counted.headers["X-Total-Count"], counted.headers["X-Limit"]) == ("3", str(MAX_LIMIT))
        assert "Link" not in counted.headers
    assert [loc["id"] for loc in _get(emsp, hub, walking).json()["data"]] == ["Z2"]
    # a snapshot's Link followed with limit=0: its total alone too, at any offset (at 0, Redis read the whole list)
    for offset in (0, 1):
        followed = _get(emsp, hub, f"{walking.split('?')[0]}?offset={offset}&limit=0")
        assert (followed.json()["data"], followed.headers["X-Total-Count"], followed.headers.get("Link")) == (
            [],
            "3",
            None,
        )
    # a GET All forwarded to the CPO passes its limit on as it came
    forwarded = emsp.call(hub.base, "GET", "sender/locations?limit=0", to=owner)
    assert forwarded.json()["status_code"] == 1000, forwarded.text
    assert [r.query for r in cpo.functional() if r.method == "GET"] == ["limit=0"]


def test_get_all_of_an_empty_list_at_an_offset_is_an_empty_page_not_an_expired_one(hub: Hub, connect_party) -> None:
    # Redis keeps no empty list: the snapshot of none was taken for one expired, and a GET All at offset 10 of a CPO
    # with no locations (or of a window holding none) was answered 404 "this page list expired: start again with a
    # GET All", to a client that had just done so.
    _, emsp, _, query = _cached(hub, connect_party, ("E1",))
    for window in ("", "&date_from=2099-01-01T00:00:00Z"):
        for offset in (0, 1, 10):
            answer = _get(emsp, hub, f"{query}{window}&offset={offset}")
            assert (answer.status_code, answer.json()["status_code"]) == (200, 1000), (window, offset, answer.text)
            if window or offset:
                assert (answer.json()["data"], answer.headers["X-Total-Count"]) == ([], "1" if not window else "0")
            assert "Link" not in answer.headers


def test_a_get_all_snapshot_lasts_while_its_pages_are_read_not_a_fixed_time_after_it_began(
    hub: Hub, connect_party
) -> None:
    # It expired SNAPSHOT_TTL_S after the GET All however actively it was paged: a slow importer of a large cache was
    # cut off with 404 (a spec review).
    import redis as sync_redis

    from storage.location_cache import SNAPSHOT_TTL_S

    _, emsp, _, query = _cached(hub, connect_party, ("T1", "T2", "T3"), limit=1)
    link = _get(emsp, hub, query).headers["Link"].split(">")[0].lstrip("<")
    viewer, snapshot_id = "/".join(party_key(emsp)), link.split("/snapshots/")[1].split("?")[0]
    keys = [f"{hub.env['OCPI_HUB_REDIS_PREFIX']}locations:{name}"
            for name in (f"snapshot:{viewer}/{snapshot_id[5:]}", f"snapshots-of:{viewer}")]  # fmt: skip
    client = sync_redis.Redis.from_url(hub.env["OCPI_HUB_REDIS_URL"])
    try:
        for key in keys:
            assert client.expire(key, 5)  # as if the GET All began SNAPSHOT_TTL_S - 5 s ago
        page = _get(emsp, hub, link)
        assert [loc["id"] for loc in page.json()["data"]] == ["T2"]
        assert [client.ttl(key) > SNAPSHOT_TTL_S - 60 for key in keys] == [True, True]
    finally:
        client.close()


def test_a_get_all_snapshot_link_pages_for_the_party_it_was_taken_for_only(hub: Hub, connect_party) -> None:
    # A snapshot is filtered for its party (publish_allowed_to); its Link opened to any other platform that had it,
    # unlike the hub's pages and results links (a party developer's walkthrough).
    cpo, emsp, other = connect_party(_roles("CPO")), connect_party(_roles("EMSP")), connect_party(_roles("EMSP"))
    owner = party_key(cpo)
    for n in range(3):
        _push(
            cpo,
            emsp,
            hub,
            "PUT",
            f"SNAP{n}-{owner[1]}",
            _location(owner, f"SNAP{n}-{owner[1]}", "2026-11-25T08:00:00Z"),
        )
    query = f"sender/locations?country_code={owner[0]}&party_id={owner[1]}&limit=1"
    _eventually(lambda: _assert_total(emsp, hub, query, 3))  # the cache is written just after each push is relayed
    first = _get(emsp, hub, query)
    link = first.headers["Link"].split(">")[0].lstrip("<")
    assert link.startswith(f"{hub.base}/ocpi/2.2.1/snapshots/")
    for stranger in (other, cpo):
        refused = stranger.call(hub.base, "GET", link)
        assert refused.status_code == 404 and "not yours" in refused.json()["status_message"], refused.text
    followed = emsp.call(hub.base, "GET", link)
    assert followed.json()["status_code"] == 1000 and len(followed.json()["data"]) == 1


def test_a_snapshot_page_names_the_party_it_was_taken_for_in_ocpi_to_on_a_platform_of_several(
    hub: Hub, connect_party
) -> None:
    # A followed Link's page named the platform's first party in OCPI-to, whichever party the GET All was for
    # (transport_and_format.asciidoc, OCPI-to: "the receiving party" of the answer).
    cpo = connect_party(_roles("CPO"))
    emsp = connect_party(_roles("EMSP"), _roles("EMSP"))
    owner = party_key(cpo)
    for n in range(2):
        location_id = f"TO{n}-{owner[1]}"
        _push(cpo, emsp, hub, "PUT", location_id, _location(owner, location_id, "2026-11-25T08:00:00Z"))
    query = f"sender/locations?country_code={owner[0]}&party_id={owner[1]}&limit=1"
    _eventually(lambda: _assert_total(emsp, hub, query, 2))
    for _, country, party in emsp.roles:
        first = emsp.call(hub.base, "GET", query, to=HUB, from_=(country, party))
        link = first.headers["Link"].split(">")[0].lstrip("<")
        followed = emsp.call(hub.base, "GET", link, from_=(country, party))
        assert followed.json()["status_code"] == 1000, followed.text
        # followed without routing headers, as parties often do: its row names that party too
        correlation = f"to-{secrets.token_hex(6)}"
        bare = httpx.get(link, headers=emsp.token_header(emsp.hub_token or "") | {"X-Correlation-ID": correlation})
        for page in (first, followed, bare):
            named = (page.headers["OCPI-to-country-code"], page.headers["OCPI-to-party-id"])
            assert named == (country, party), (link, page.headers)

        def row(correlation: str = correlation) -> dict:
            with hub.admin() as admin:
                rows = admin.get("/admin/api/routing-log", params={"correlation_id": correlation}).json()["items"]
            assert len(rows) == 1, rows
            return rows[0]

        found = _eventually(row, timeout=15)
        assert (found["from_country_code"], found["from_party_id"]) == (country, party), found
        assert (found["to_country_code"], found["to_party_id"]) == HUB, found


def test_a_client_paging_get_all_by_offset_sees_every_location_once_though_one_on_a_page_read_is_updated(
    hub: Hub, connect_party
) -> None:
    # Each GET All at an offset takes a snapshot of its own, which listed the locations by last_updated: one on a page
    # read already that was updated moved to the end, every one behind it one place forward, and the client stepping
    # its offset skipped one and read the updated one twice (an eMSP's sync lost a location without a word).
    ids = [f"O{n}" for n in range(6)]
    cpo, emsp, owner, query = _cached(hub, connect_party, ids, [f"2026-11-20T10:0{n}:00Z" for n in range(6)])

    def patched() -> None:
        assert _get(emsp, hub, "sender/locations/O0").json()["data"]["name"] == "moved"

    seen = []
    for offset in (0, 2, 4):
        seen += [loc["id"] for loc in _get(emsp, hub, f"{query}&offset={offset}&limit=2").json()["data"]]
        if offset == 0:
            _push(cpo, emsp, hub, "PATCH", "O0", {"name": "moved", "last_updated": "2026-11-25T11:00:00Z"})
            _eventually(patched)
    assert seen == ids
    # a new location goes last, however early its last_updated; the updated one kept its place
    _push(cpo, emsp, hub, "PUT", "O6", _location(owner, "O6", "2026-11-01T00:00:00Z"))
    _eventually(lambda: _assert_total(emsp, hub, query, 7))
    assert [loc["id"] for loc in _get(emsp, hub, query).json()["data"]] == [*ids, "O6"]
    # date_from (inclusive) and date_to (exclusive) still choose by last_updated, listed in that same order
    for window, chosen in (("date_from=2026-11-20T10:01:00Z&date_to=2026-11-20T10:03:00Z", ["O1", "O2"]),
                           ("date_to=2026-11-20T10:02:00Z", ["O1", "O6"]),
                           ("date_from=2026-11-25T11:00:00Z", ["O0"])):  # fmt: skip
        answer = _get(emsp, hub, f"{query}&{window}&limit=1")
        listed, url = [], None
        while True:
            listed += [loc["id"] for loc in answer.json()["data"]]
            if not (link := answer.headers.get("Link")):
                break
            url = link.split(">")[0].lstrip("<")
            answer = _get(emsp, hub, url)
        assert (listed, answer.headers["X-Total-Count"]) == (chosen, str(len(chosen))), window


def test_a_location_leaves_get_all_order_with_the_cache_and_comes_back_last(services: Services) -> None:
    # Removed (no longer listed by its CPO's Sender, its CPO gone, grown past the cap of bytes), a location leaves the
    # order too: none is left there to grow Redis, and one cached again is a new one, listed last.
    owner = ("NL", "ORD")

    async def test(client: redis.asyncio.Redis, prefix: str) -> None:
        cache = LocationCache(client, prefix, max_bytes_per_cpo=5000)
        order = f"{prefix}locations:order"

        async def listed() -> list[str]:
            snapshot_id, _ = await cache.snapshot(None, None, None, owner)
            found = await cache.page(snapshot_id, 0, 10)
            return [json.loads(doc)["id"] for doc in found[0]] if found else []

        def raw(location_id: str, updated: str, **extra: object) -> msgspec.Raw:
            return msgspec.Raw(json.dumps(_location(owner, location_id, updated, **extra)).encode())

        await cache.put_many(owner, 0, [raw(f"R{n}", f"2026-11-20T10:0{5 - n}:00Z") for n in range(4)])
        assert await listed() == ["R0", "R1", "R2", "R3"]  # as listed, not by last_updated
        assert await cache.forget(owner, {"R1"}) == 1
        await cache.put_many(owner, 0, [raw("R2", "2026-11-20T11:00:00Z", name="x" * 6000)])  # past the cap: dropped
        assert await listed() == ["R0", "R3"]
        assert [m.decode() for m in await client.zrange(order, 0, -1)] == ["NL/ORD/R0", "NL/ORD/R3"]
        await cache.put_many(owner, 0, [raw("R1", "2026-11-20T09:00:00Z"), raw("R0", "2026-11-20T12:00:00Z")])
        assert await listed() == ["R0", "R3", "R1"]
        pushed = [(owner, 0, "PUT", [f"R{n}"], bytes(raw(f"R{n}", "2026-11-20T10:00:00Z"))) for n in (5, 4)]
        assert await cache.apply(pushed) == 2  # relayed PUTs applied in one batch: in the order pushed
        assert await listed() == ["R0", "R3", "R1", "R5", "R4"]
        await cache.forget_platform([PartyRole("CPO", *owner, "CONNECTED", None)])
        assert await client.exists(order) == 0

    _run(services, test)


def test_a_filter_added_to_a_snapshot_link_is_refused_not_ignored_but_the_get_alls_own_sent_again_is_taken(
    hub: Hub, connect_party
) -> None:
    # A date_from or date_to a client added to the Link of a GET All via the hub was ignored without a word: the
    # pages were of the list the GET All chose, and the client took them for the window it asked. A client that
    # passes its GET All's own parameters with every request (requests' params= on each Link) is served.
    emsp, query = _two_locations_a_page(hub, connect_party, ("F1", "F2"))
    owner = query.split("?")[1].rsplit("&limit", 1)[0]  # country_code=..&party_id=..
    link = _get(emsp, hub, query).headers["Link"].split(">")[0].lstrip("<")
    for added in ("date_from=2026-11-22T00:00:00Z", "date_to=2026-11-22T00:00:00Z", "party_id=ZZZ&country_code=NL",
                  f"{owner}&date_from=2026-11-20T00:00:00Z", "date_from="):  # fmt: skip
        refused = _get(emsp, hub, f"{link}&{added}")
        assert (refused.status_code, refused.json()["status_code"]) == (200, 2001), (added, refused.text)
        message = refused.json()["status_message"]
        assert "date_from" in message or "party_id" in message, message
    assert "chosen by the GET All that began it" in _get(emsp, hub, f"{link}&date_to=2026-11-22T00:00:00Z").text
    for same in ("", f"&{owner}"):
        assert [loc["id"] for loc in _get(emsp, hub, f"{link}{same}").json()["data"]] == ["F2"], same
    dated = f"{query}&date_from=2026-11-20T00:00:00%2B00:00"  # the same instant written otherwise on the Link
    dated_link = _get(emsp, hub, dated).headers["Link"].split(">")[0].lstrip("<")
    again = _get(emsp, hub, f"{dated_link}&{owner}&date_from=2026-11-20T00:00:00Z")
    assert [loc["id"] for loc in again.json()["data"]] == ["F2"], again.text
