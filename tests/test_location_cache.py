"""The hub's location cache: kept by relayed pushes, served by GET All via the hub, stable pages, visibility."""

from __future__ import annotations

import asyncio
import json
import secrets
import time

import httpx
import msgspec
import pytest
import redis
import structlog

from hub.runtime import REDIS_TIMEOUT_S, open_redis
from storage.location_cache import LocationCache
from tests.conftest import Hub, Services
from tests.test_routing import _roles, party_key

HUB = ("NL", "HUB")


def _location(owner, location_id: str, updated: str, **extra) -> dict:  # type: ignore[no-untyped-def]
    evse = {"uid": "E1", "status": "AVAILABLE", "last_updated": updated,
            "connectors": [{"id": "1", "standard": "IEC_62196_T2", "last_updated": updated}]}  # fmt: skip
    return {"country_code": owner[0], "party_id": owner[1], "id": location_id, "publish": True,
            "evses": [evse], "last_updated": updated} | extra  # fmt: skip


def _push(cpo, emsp, hub: Hub, method: str, suffix: str, body: dict):  # type: ignore[no-untyped-def]
    cc, pid = party_key(cpo)
    answer = cpo.call(hub.base, method, f"receiver/locations/{cc}/{pid}/{suffix}", to=party_key(emsp), body=body)
    assert answer.json()["status_code"] == 1000, answer.text
    return answer


def _get(party, hub: Hub, path: str, to=HUB):  # type: ignore[no-untyped-def]
    return party.call(hub.base, "GET", path, to=to)


def _eventually(check, timeout: float = 5.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_pushes_fill_the_cache_with_patch_semantics_and_the_hub_answers_single_objects(hub: Hub, connect_party) -> None:
    cpo, emsp = connect_party(_roles("CPO")), connect_party(_roles("EMSP"))
    owner = party_key(cpo)
    location_id = f"PATCH-{owner[1]}"
    _push(cpo, emsp, hub, "PUT", location_id, _location(owner, location_id, "2026-11-25T08:00:00Z", name="Old"))
    # a PATCH of one EVSE's status changes that status and last_updated (and the parent's), nothing else
    _push(cpo, emsp, hub, "PATCH", f"{location_id}/E1", {"status": "CHARGING", "last_updated": "2026-11-25T09:00:00Z"})

    def patched() -> dict:
        answer = _get(emsp, hub, f"sender/locations/{location_id}")
        assert answer.status_code == 200 and answer.json()["status_code"] == 1000, answer.text
        data = answer.json()["data"]
        assert data["evses"][0]["status"] == "CHARGING"
        return answer

    answer = _eventually(patched)
    data = answer.json()["data"]
    assert data["name"] == "Old" and data["last_updated"] == "2026-11-25T09:00:00Z"
    assert data["evses"][0]["last_updated"] == "2026-11-25T09:00:00Z"
    assert data["evses"][0]["connectors"] == [{"id": "1", "standard": "IEC_62196_T2",
                                               "last_updated": "2026-11-25T08:00:00Z"}]  # fmt: skip
    assert answer.headers["OCPI-from-party-id"] == "HUB"
    connector = _get(emsp, hub, f"sender/locations/{location_id}/E1/1").json()["data"]
    assert connector["standard"] == "IEC_62196_T2"
    missing = _get(emsp, hub, f"sender/locations/{location_id}/E9")
    assert (missing.status_code, missing.json()["status_code"]) == (404, 2003)
    # the hub answered by itself: nothing reached the CPO
    assert [r for r in cpo.functional() if r.method == "GET"] == []


def test_get_all_via_the_hub_walks_every_location_once_while_the_cache_changes(hub: Hub, connect_party) -> None:
    cpo, emsp = connect_party(_roles("CPO")), connect_party(_roles("EMSP"))
    owner = party_key(cpo)
    for n in range(25):
        _push(cpo, emsp, hub, "PUT", f"W{n:02d}", _location(owner, f"W{n:02d}", f"2026-11-20T10:{n:02d}:00Z"))
    query = f"sender/locations?country_code={owner[0]}&party_id={owner[1]}&limit=10"
    _eventually(lambda: _assert_total(emsp, hub, query, 25))
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


def _assert_total(party, hub: Hub, query: str, total: int) -> None:  # type: ignore[no-untyped-def]
    assert _get(party, hub, query).headers.get("X-Total-Count") == str(total)


def test_unpublished_locations_are_shown_to_their_owner_only(hub: Hub, connect_party) -> None:
    cpo, emsp = connect_party(_roles("CPO")), connect_party(_roles("EMSP"))
    owner = party_key(cpo)
    _push(cpo, emsp, hub, "PUT", "PUB", _location(owner, "PUB", "2026-11-21T10:00:00Z"))
    _push(cpo, emsp, hub, "PUT", "HIDDEN", _location(owner, "HIDDEN", "2026-11-21T10:01:00Z", publish=False))
    query = f"sender/locations?country_code={owner[0]}&party_id={owner[1]}"
    _eventually(lambda: _assert_total(cpo, hub, query, 2))
    assert [loc["id"] for loc in _get(emsp, hub, query).json()["data"]] == ["PUB"]
    assert _get(emsp, hub, "sender/locations/HIDDEN").status_code == 404
    assert _get(cpo, hub, "sender/locations/HIDDEN").json()["data"]["id"] == "HIDDEN"
    # without OCPI-to, a pushed location goes to its CPO, unless the eMSP may not see it: then the cache answers
    assert _get(emsp, hub, "sender/locations/PUB", to=None).json()["status_code"] == 1000
    assert _get(emsp, hub, "sender/locations/HIDDEN", to=None).status_code == 404
    assert [r.path for r in cpo.functional() if r.method == "GET"] == ["/ocpi/2.2.1/locations/sender/PUB"]


def test_unpublished_locations_are_shown_to_the_emsps_of_the_tokens_in_publish_allowed_to(
    hub: Hub, connect_party
) -> None:
    cpo, fleet, other = connect_party(_roles("CPO")), connect_party(_roles("EMSP")), connect_party(_roles("EMSP"))
    owner, (fcc, fpid) = party_key(cpo), party_key(fleet)
    # The fleet operator's token reaches the CPO through the hub: the hub now knows whose token FLEET-1 is.
    token = {
        "country_code": fcc,
        "party_id": fpid,
        "uid": "FLEET-1",
        "type": "RFID",
        "contract_id": "C1",
        "issuer": "Fleet",
        "valid": True,
        "whitelist": "ALLOWED",
        "last_updated": "2026-11-21T09:00:00Z",
    }
    assert fleet.call(hub.base, "PUT", f"receiver/tokens/{fcc}/{fpid}/FLEET-1", to=owner, body=token).json()[
        "status_code"] == 1000  # fmt: skip
    depot = _location(owner, "DEPOT", "2026-11-21T10:00:00Z", publish=False) | {
        "publish_allowed_to": [{"uid": "FLEET-1", "type": "RFID"}]}  # fmt: skip
    _push(cpo, fleet, hub, "PUT", "DEPOT", depot)
    query = f"sender/locations?country_code={owner[0]}&party_id={owner[1]}"
    _eventually(lambda: _assert_total(cpo, hub, query, 1))
    _eventually(lambda: _assert_total(fleet, hub, query, 1))
    assert [loc["id"] for loc in _get(fleet, hub, query).json()["data"]] == ["DEPOT"]
    assert _get(fleet, hub, "sender/locations/DEPOT").json()["data"]["id"] == "DEPOT"
    assert _get(other, hub, query).json()["data"] == []
    assert _get(other, hub, "sender/locations/DEPOT").status_code == 404


@pytest.mark.parametrize(
    ("method", "suffix", "body", "complaint"),
    [
        ("PUT", "{other}/LOC1", {"id": "LOC1"}, "is not the sending party"),
        ("PUT", "{mine}/LOC1", {"id": "LOC2"}, "the id in the URL"),
        # cached as the URL's owner's, it would be served in GET All as the body's (found by a spec review)
        (
            "PUT",
            "{mine}/LOC1",
            {"id": "LOC1", "country_code": "FR", "party_id": "TOT"},
            "the country_code in the body (FR) differs from the URL's",
        ),
        (
            "PATCH",
            "{mine}/LOC1",
            {"party_id": "TOT", "last_updated": "2026-11-25T10:00:00Z"},
            "the party_id in the body (TOT) differs from the URL's",
        ),
    ],
)
def test_client_owned_push_must_name_its_sender_as_owner_and_its_id(  # type: ignore[no-untyped-def]
    hub: Hub, connect_party, method, suffix, body, complaint
) -> None:
    cpo, emsp = connect_party(_roles("CPO")), connect_party(_roles("EMSP"))
    mine = "/".join(party_key(cpo))
    path = "receiver/locations/" + suffix.format(mine=mine, other="NL/ZZZ")
    answer = cpo.call(hub.base, method, path, to=party_key(emsp), body=body)
    assert answer.json()["status_code"] == 2001 and complaint in answer.json()["status_message"]
    assert emsp.functional() == []


def _two_locations_a_page(hub: Hub, connect_party, ids: tuple[str, str]):  # type: ignore[no-untyped-def]
    """An eMSP, and the query of its GET All of a CPO's two locations (ids), once both are cached, a page each."""
    cpo, emsp = connect_party(_roles("CPO")), connect_party(_roles("EMSP"))
    owner = party_key(cpo)
    for location_id in ids:
        _push(cpo, emsp, hub, "PUT", location_id, _location(owner, location_id, "2026-11-21T10:00:00Z"))
    query = f"sender/locations?country_code={owner[0]}&party_id={owner[1]}&limit=1"
    _eventually(lambda: _assert_total(emsp, hub, query, 2))
    return emsp, query


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

    cpo, emsp = connect_party(_roles("CPO")), connect_party(_roles("EMSP"))
    owner = party_key(cpo)
    for location_id in ("Z1", "Z2", "Z3"):
        _push(cpo, emsp, hub, "PUT", location_id, _location(owner, location_id, "2026-11-21T10:00:00Z"))
    query = f"sender/locations?country_code={owner[0]}&party_id={owner[1]}"
    _eventually(lambda: _assert_total(emsp, hub, query, 3))
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
    cpo, emsp = connect_party(_roles("CPO")), connect_party(_roles("EMSP"))
    owner = party_key(cpo)
    _push(cpo, emsp, hub, "PUT", "E1", _location(owner, "E1", "2026-11-21T10:00:00Z"))
    query = f"sender/locations?country_code={owner[0]}&party_id={owner[1]}"
    _eventually(lambda: _assert_total(emsp, hub, query, 1))
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

    cpo, emsp = connect_party(_roles("CPO")), connect_party(_roles("EMSP"))
    owner = party_key(cpo)
    for location_id in ("T1", "T2", "T3"):
        _push(cpo, emsp, hub, "PUT", location_id, _location(owner, location_id, "2026-11-21T10:00:00Z"))
    query = f"sender/locations?country_code={owner[0]}&party_id={owner[1]}&limit=1"
    _eventually(lambda: _assert_total(emsp, hub, query, 3))
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


def test_get_all_serves_a_pushed_location_as_the_cpo_sent_it_and_skips_one_without_a_valid_last_updated(
    hub: Hub, connect_party
) -> None:
    cpo, emsp = connect_party(_roles("CPO")), connect_party(_roles("EMSP"))
    owner = party_key(cpo)
    cc, pid = owner
    headers = {"Content-Type": "application/json"}
    # the CPO's own spelling: key order, spaces, an escaped character; a hub never changes a field
    sent = (f'{{ "id": "RAW1", "party_id": "{pid}", "country_code": "{cc}", "name": "Caf\\u00e9",'
            ' "last_updated": "2026-11-21T10:00:00Z", "publish": true }').encode()  # fmt: skip
    answer = cpo.call(hub.base, "PUT", f"receiver/locations/{cc}/{pid}/RAW1", to=party_key(emsp), content=sent,
                      headers=headers)  # fmt: skip
    assert answer.json()["status_code"] == 1000, answer.text
    for location_id, updated in (("BAD1", "yesterday"), ("BAD2", None)):
        bad = _location(owner, location_id, "2026-11-21T10:00:00Z") | {"last_updated": updated}
        _push(cpo, emsp, hub, "PUT", location_id, bad)  # relayed all the same: the cache is the hub's own business
    # one byte that is not UTF-8 is no JSON (RFC 8259, 8.1): refused, so the receivers and the cache agree
    not_utf8 = sent.replace(b"RAW1", b"BAD3").replace(b"Caf\\u00e9", b"Caf\xe9")
    answer = cpo.call(hub.base, "PUT", f"receiver/locations/{cc}/{pid}/BAD3", to=party_key(emsp), content=not_utf8,
                      headers=headers)  # fmt: skip
    assert (answer.status_code, answer.json()["status_code"]) == (400, 2001), answer.text
    assert not [r for r in emsp.functional() if r.path.endswith("/BAD3")]
    # PUTs of one location in a row: the last one that can be cached is the one kept
    _push(cpo, emsp, hub, "PUT", "RAW2", _location(owner, "RAW2", "2026-11-21T11:00:00Z", name="first"))
    _push(cpo, emsp, hub, "PUT", "RAW2", _location(owner, "RAW2", "2026-11-21T12:00:00Z", name="second"))
    _push(cpo, emsp, hub, "PUT", "RAW2", _location(owner, "RAW2", "never", name="third"))
    _push(cpo, emsp, hub, "PATCH", "RAW1", {"name": "not cached", "last_updated": "soon"})
    _push(cpo, emsp, hub, "PATCH", "RAW2/E1", {"status": "CHARGING", "last_updated": "2026-11-21T13:00:00Z"})
    query = f"sender/locations?country_code={cc}&party_id={pid}"

    def cached() -> httpx.Response:
        page = _get(emsp, hub, query)
        assert [loc["evses"][0]["status"] for loc in page.json()["data"] if loc["id"] == "RAW2"] == ["CHARGING"]
        return page

    page = _eventually(cached)
    assert page.headers["X-Total-Count"] == "2" and sent in page.content
    assert [(loc["id"], loc.get("name")) for loc in page.json()["data"]] == [("RAW1", "Café"), ("RAW2", "second")]


def test_a_redis_that_lost_its_scripts_still_caches_relayed_locations_and_notes_their_owners(
    hub: Hub, connect_party, services: Services
) -> None:
    # The cache's and the owner index's pipelines send their scripts by SHA1 alone; a Redis restarted or failed over
    # has none (SCRIPT FLUSH here): they are loaded again and the batch is written all the same.
    cpo, emsp = connect_party(_roles("CPO")), connect_party(_roles("EMSP"))
    owner = party_key(cpo)
    location_id = f"FLUSHED-{owner[1]}"
    with redis.Redis.from_url(services.redis_url) as client:
        client.script_flush()
    _push(cpo, emsp, hub, "PUT", location_id, _location(owner, location_id, "2026-11-25T08:00:00Z", name="Kept"))

    def cached() -> None:
        answer = _get(emsp, hub, f"sender/locations/{location_id}")
        assert answer.json()["status_code"] == 1000 and answer.json()["data"]["name"] == "Kept", answer.text

    def routed_to_its_owner() -> None:  # the owner index: a command without OCPI-to finds the location's CPO
        answer = emsp.call(hub.base, "POST", "receiver/commands/START_SESSION",
                           body={"response_url": f"{emsp.base}/cmd/1", "location_id": location_id,
                                 "token": {"uid": "T"}})  # fmt: skip
        assert answer.json()["status_code"] == 1000, answer.text

    _eventually(cached)
    _eventually(routed_to_its_owner)
    assert [r.path for r in cpo.functional() if r.method == "POST"] == ["/ocpi/2.2.1/commands/receiver/START_SESSION"]


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


def test_updates_held_for_a_redis_that_does_not_answer_are_given_up_all_at_once_when_the_hub_stops() -> None:
    # Each held batch cost one REDIS_TIMEOUT_S try at shutdown (19.6 s for 2,000 updates, a security review), while
    # the routing log waited to spool its rows behind it.
    async def stop_with_updates_held() -> tuple[float, int]:
        silent = await asyncio.start_server(lambda reader, writer: None, "127.0.0.1", 0)  # takes, never answers
        port = silent.sockets[0].getsockname()[1]
        client = open_redis(f"redis://127.0.0.1:{port}/0")
        cache = LocationCache(client, "held:")
        try:
            async with cache.updating():
                for n in range(2000):
                    cache.submit(("NL", "CPO"), 0, "PATCH", [f"L{n}"], b'{"last_updated": "2026-11-25T10:00:00Z"}')
                await asyncio.sleep(0.5)  # the first batch is being tried
                started = time.monotonic()
            return time.monotonic() - started, cache.dropped
        finally:
            silent.close()
            await client.aclose()

    took, dropped = asyncio.run(asyncio.wait_for(stop_with_updates_held(), 60))
    assert dropped == 2000 and took < 2 * REDIS_TIMEOUT_S + 3, took


def test_past_max_held_updates_the_oldest_go_and_that_is_logged_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # While Redis is away each update past the cap takes the oldest's place; a warning for each filled the log.
    monkeypatch.setattr("storage.location_updates.MAX_HELD_UPDATES", 5)

    async def submit_twelve() -> tuple[int, list[bytes], list[str]]:
        cache = LocationCache(open_redis("redis://127.0.0.1:1/0"), "held:")  # never asked: nothing is applied here
        with structlog.testing.capture_logs() as logs:
            for n in range(12):
                cache.submit(("NL", "CPO"), 0, "PATCH", [f"L{n}"], f"{n}".encode())
        held = [cache._pending.get_nowait()[4] for _ in range(cache._pending.qsize())]
        return cache.dropped, held, [entry["event"] for entry in logs]

    dropped, held, events = asyncio.run(submit_twelve())
    assert (dropped, held) == (7, [b"7", b"8", b"9", b"10", b"11"])
    assert events == ["location_cache_updates_dropped"]


def test_a_location_id_two_cpos_hold_is_refused_naming_both_and_chosen_by_country_code_and_party_id(
    hub: Hub, connect_party
) -> None:
    cpos, emsp = [connect_party(_roles("CPO")) for _ in range(2)], connect_party(_roles("EMSP"))
    location_id = f"TWICE-{party_key(cpos[0])[1]}"
    for cpo in cpos:
        _push(cpo, emsp, hub, "PUT", location_id, _location(party_key(cpo), location_id, "2026-11-25T08:00:00Z"))
    names = ["-".join(party_key(cpo)) for cpo in cpos]

    def refused() -> None:
        for to in (HUB, None):  # without OCPI-to, the same answer as from the cache: both CPOs pushed it
            answer = _get(emsp, hub, f"sender/locations/{location_id}", to=to)
            assert answer.json()["status_code"] == 2001, answer.text
            assert all(name in answer.json()["status_message"] for name in names), answer.text
            assert "?country_code=&party_id=" in answer.json()["status_message"]

    _eventually(refused)
    for cpo in cpos:
        cc, pid = party_key(cpo)
        for to in (HUB, None):  # without OCPI-to too: the hub's filter is answered from the cache, not forwarded
            chosen = _get(emsp, hub, f"sender/locations/{location_id}/E1?country_code={cc}&party_id={pid}", to=to)
            assert chosen.json()["status_code"] == 1000, chosen.text
            assert chosen.json()["data"]["uid"] == "E1" and chosen.headers["OCPI-from-party-id"] == "HUB"
        whole = _get(emsp, hub, f"sender/locations/{location_id}?country_code={cc.lower()}&party_id={pid}").json()
        assert (whole["data"]["country_code"], whole["data"]["party_id"]) == (cc, pid)
    assert [r for cpo in cpos for r in cpo.functional() if r.method == "GET"] == []
