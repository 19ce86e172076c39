"""One CPO cannot fill the location cache every party shares: its cache holds OCPI_HUB_MAX_LOCATIONS_PER_CPO at most,
its pushes past it are relayed all the same, and GET All is never answered short from a cache over its cap."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest
import redis

from tests.conftest import OUTPUT, ROOT, Hub, Services, hub_env, register_at_hub, scratch_database, start_hub
from tests.test_credentials_rotation import console_page
from tests.test_departed_party import _take_off
from tests.test_location_cache import _get, _location, _push
from tests.test_pull_sync import _wait
from tests.test_routing import _roles, party_key

CAP = 3
BYTE_CAP = 4000  # two locations of some 1,600 bytes, not three
STATE = ("locations_cached", "location_cache_over_cap", "locations_refused")


@pytest.fixture(scope="module")
def capped_hub(services: Services, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    """A hub of its own (database and Redis keys), whose cache holds CAP locations of a CPO, BYTE_CAP bytes of their
    documents: a CPO over it makes
    every GET All of all CPOs an error, which the session's hub must not see."""
    with scratch_database(services, "location_cap") as database_url:
        env = hub_env(services, tmp_path_factory.mktemp("capped-hub"), OCPI_HUB_DATABASE_URL=database_url,
                      OCPI_HUB_REDIS_PREFIX=f"{services.redis_prefix}capped-{secrets.token_hex(4)}:",
                      OCPI_HUB_MAX_LOCATIONS_PER_CPO=str(CAP),
                      OCPI_HUB_MAX_LOCATION_BYTES_PER_CPO=str(BYTE_CAP))  # fmt: skip
        hub = start_hub(env, OUTPUT / "hub-location-cap.log")
        try:
            yield hub
        finally:
            hub.stop()


def _cache_state(hub: Hub, owner: tuple[str, str], state: tuple[str, ...] = STATE) -> dict:
    """The CPO's location cache as the operator's admin API shows it."""
    with hub.admin() as admin:
        items = admin.get("/admin/api/parties").json()["items"]
    [party] = [p for p in items if (p["country_code"], p["party_id"]) == owner]
    return {key: party[key] for key in state}


def _sync_line(hub: Hub, owner: tuple[str, str], event: str) -> dict | None:
    lines = [json.loads(line) for line in hub.log().splitlines() if f'"{event}"' in line]
    return next((line for line in lines if line.get("party") == f"{owner[0]}-{owner[1]}"), None)


def _walk(party, hub: Hub, url: str) -> tuple[list[str], set[str]]:  # type: ignore[no-untyped-def]
    """Every page of a GET All via the hub, its Links followed with OCPI-to the hub: the ids, and who answered."""
    ids, answered_by = [], set()
    while url:
        page = _get(party, hub, url)
        assert page.json()["status_code"] == 1000, page.text
        ids += [location["id"] for location in page.json()["data"]]
        answered_by.add(page.headers["OCPI-from-party-id"])
        link = page.headers.get("Link")
        url = link.split(">")[0].lstrip("<") if link else ""
    return ids, answered_by


def _synced_cpo_and_emsp(hub: Hub, start_party):  # type: ignore[no-untyped-def]
    """A CPO (pages of 2) and an eMSP registered at the hub, once the CPO's first sync (of none) is over."""
    cpo = register_at_hub(hub, start_party, _roles("CPO"), page_size=2)
    emsp = register_at_hub(hub, start_party, _roles("EMSP"))
    owner = party_key(cpo)
    _wait(lambda: _sync_line(hub, owner, "location_sync_done"))
    return cpo, emsp, owner


def _cpo_over_its_cap(hub: Hub, start_party, prefix: str, count: int):  # type: ignore[no-untyped-def]
    """_synced_cpo_and_emsp, once the CPO pushed count locations (more than the cap) and its cache is marked over it;
    its Sender lists them all."""
    cpo, emsp, owner = _synced_cpo_and_emsp(hub, start_party)
    docs = [_location(owner, f"{prefix}{n}", f"2026-12-01T10:0{n}:00Z") for n in range(count)]
    cpo.objects["locations"] = docs
    for doc in docs:
        _push(cpo, emsp, hub, "PUT", doc["id"], doc)
    _wait(lambda: _cache_state(hub, owner)["location_cache_over_cap"])
    return cpo, emsp, owner


def test_pushes_past_a_cpos_cap_are_relayed_and_its_get_all_goes_to_it_until_a_full_sync_caches_its_whole_list(
    capped_hub: Hub, start_party
) -> None:
    hub = capped_hub
    cpo, emsp, owner = _synced_cpo_and_emsp(hub, start_party)
    docs = [_location(owner, f"L{n}", f"2026-12-01T10:0{n}:00Z") for n in range(5)]
    cpo.objects["locations"] = docs
    for doc in docs:
        _push(cpo, emsp, hub, "PUT", doc["id"], doc)  # each answered 1000 by the eMSP
    ids = [doc["id"] for doc in docs]
    assert [json.loads(r.body)["id"] for r in emsp.functional() if r.method == "PUT"] == ids  # every one relayed
    _wait(lambda: _cache_state(hub, owner)["locations_refused"] == 2)
    assert _cache_state(hub, owner) == {"locations_cached": CAP, "location_cache_over_cap": True,
                                        "locations_refused": 2}  # fmt: skip
    assert hub.log().count('"location_cache_over_cap"') == 1  # said once, as it went over
    parties = console_page(hub, "/console/parties")
    assert parties.count(">locations over cap</span>") == 1 and f"holds {CAP} of this CPO's locations" in parties
    metrics = httpx.get(f"{hub.base}/metrics").text
    assert f'ocpi_hub_location_cache_over_cap_total{{cap="locations",party="{owner[0]}-{owner[1]}"}} 2.0' in metrics
    # GET All of its locations goes to the CPO, whose Links lead on through the hub, OCPI-to the hub and all
    query = f"sender/locations?country_code={owner[0]}&party_id={owner[1]}"
    assert _walk(emsp, hub, query) == (ids, {owner[1]})
    forwarded = [r for r in cpo.functional() if r.method == "GET"]
    assert len(forwarded) == 3 and "country_code" not in forwarded[0].query
    # a page of a GET All addressed to the CPO itself is the CPO's: followed with OCPI-to the hub, refused as before
    direct = _get(emsp, hub, "sender/locations", to=owner).headers["Link"].split(">")[0].lstrip("<")
    assert _get(emsp, hub, direct).json()["status_code"] == 2001
    # of every CPO's: refused, naming it, rather than answered without some of its locations
    every = _get(emsp, hub, "sender/locations").json()
    assert every["status_code"] == 4000 and f"every location of {owner[0]}-{owner[1]} " in every["status_message"]
    # The CPO fixed its bug: it lists its first and last two. The operator's full sync drops the two it no longer
    # lists, which makes room for those refused, and caches its whole list: GET All is the cache's again.
    cpo.objects["locations"] = [docs[0], docs[3], docs[4]]
    command = [sys.executable, "-m", "hub.cli", "sync", "locations", "--party", "-".join(owner), "--full"]
    synced = subprocess.run(command, env=hub.env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert synced.returncode == 0, synced.stderr
    [summary] = json.loads(synced.stdout)
    assert (summary["locations"], summary["removed"], summary["refused"], summary["error"]) == (3, 2, 0, None)
    assert _cache_state(hub, owner) == {"locations_cached": 3, "location_cache_over_cap": False, "locations_refused": 0}
    assert _walk(emsp, hub, query) == (["L0", "L3", "L4"], {"HUB"})
    assert ">locations over cap</span>" not in console_page(hub, "/console/parties")
    assert _get(emsp, hub, "sender/locations").json()["status_code"] == 1000


def test_a_pull_sync_stops_at_the_cap_drops_nothing_and_the_mark_goes_with_its_cpo(
    capped_hub: Hub, start_party
) -> None:
    hub = capped_hub
    emsp = register_at_hub(hub, start_party, _roles("EMSP"))
    roles = _roles("CPO")
    cpo = start_party(roles, page_size=2)
    owner = party_key(cpo)
    cpo.objects["locations"] = [_location(owner, f"S{n}", "2026-12-01T10:00:00Z") for n in range(8)]
    cpo.register_at(hub.versions_url, hub.invite(cpo.name, roles)["token_a"])
    stopped = _wait(lambda: _sync_line(hub, owner, "location_sync_over_cap"))
    assert (stopped["pages"], stopped["listed"], stopped["refused"], stopped["cap"]) == (2, 4, 1, CAP)
    assert len(cpo.syncs()) == 2  # no page past the cap asked for
    assert _cache_state(hub, owner) == {"locations_cached": CAP, "location_cache_over_cap": True,
                                        "locations_refused": 1}  # fmt: skip
    assert _get(emsp, hub, "sender/locations").json()["status_code"] == 4000
    _take_off(hub, owner)  # its locations leave the cache, and its mark with them
    assert _get(emsp, hub, "sender/locations").json()["status_code"] == 1000


def test_a_pull_sync_stops_on_an_endless_chain_of_links(capped_hub: Hub, start_party) -> None:
    hub = capped_hub
    roles = _roles("CPO")
    cpo = start_party(roles)
    owner = party_key(cpo)
    page = json.dumps({"data": [_location(owner, f"E{n}", "2026-12-01T10:00:00Z") for n in range(2)],
                       "status_code": 1000}).encode()  # fmt: skip
    # every page the same two locations, and a Link to the next
    link = f'<{cpo.base}/ocpi/2.2.1/locations/sender?offset=2>; rel="next"'
    cpo.canned[("GET", "/ocpi/2.2.1/locations/sender")] = (200, page, {"Link": link})
    cpo.register_at(hub.versions_url, hub.invite(cpo.name, roles)["token_a"])
    stopped = _wait(lambda: _sync_line(hub, owner, "location_sync_over_cap"))
    assert (stopped["pages"], stopped["listed"]) == (4, 2), stopped
    assert "Link chain went on past 6 locations" in stopped["reason"]
    assert len(cpo.syncs()) == 4
    assert _cache_state(hub, owner) == {"locations_cached": 2, "location_cache_over_cap": False,
                                        "locations_refused": 0}  # fmt: skip
    _take_off(hub, owner)


def test_a_get_of_one_location_found_in_the_cache_does_not_read_the_cap_marks(
    capped_hub: Hub, services: Services, start_party
) -> None:
    """The marks of CPOs over their cap (one HGETALL) matter to a GET of one location only when it names its CPO or
    misses: a hit of an open GET /locations/{id} costs no round trip more for the cap."""
    hub = capped_hub
    cpo = register_at_hub(hub, start_party, _roles("CPO"))
    emsp = register_at_hub(hub, start_party, _roles("EMSP"))
    owner = party_key(cpo)
    doc = _location(owner, "H1", "2026-12-01T10:00:00Z")
    _push(cpo, emsp, hub, "PUT", doc["id"], doc)
    _wait(lambda: _get(emsp, hub, "sender/locations/H1").json()["status_code"] == 1000)
    client = redis.Redis.from_url(services.redis_url)
    try:
        before = client.info("commandstats").get("cmdstat_hgetall", {}).get("calls", 0)
        assert _get(emsp, hub, "sender/locations/H1").json()["data"]["id"] == "H1"
        assert client.info("commandstats").get("cmdstat_hgetall", {}).get("calls", 0) == before
        missed = _get(emsp, hub, "sender/locations/NOPE").json()  # a miss reads them, to say which CPOs are over
        assert missed["status_code"] == 2003, missed
    finally:
        client.close()
    _take_off(hub, owner)


def test_a_cpos_cache_holds_its_cap_of_bytes_and_a_location_grown_past_it_is_not_served_stale(
    capped_hub: Hub, start_party
) -> None:
    hub = capped_hub
    cpo, emsp, owner = _synced_cpo_and_emsp(hub, start_party)
    docs = [_location(owner, f"B{n}", f"2026-12-01T10:0{n}:00Z", name="x" * 1400) for n in range(4)]
    state = (*STATE, "location_bytes_cached")
    for doc in docs[:2]:
        _push(cpo, emsp, hub, "PUT", doc["id"], doc)
    pushed = [r.body for r in emsp.functional() if r.method == "PUT"]
    sizes = [len(body) for body in pushed] + [len(pushed[0])] * 2  # as the CPO sent them: the cache keeps them so
    _wait(lambda: _cache_state(hub, owner, state)["location_bytes_cached"] == sizes[0] + sizes[1])
    # An update grows B0 past the cap of bytes: its cached copy would be stale, so it leaves the cache.
    grown = {"name": "y" * 2500, "last_updated": "2026-12-01T11:00:00Z"}
    _push(cpo, emsp, hub, "PATCH", "B0", grown)
    assert [json.loads(r.body) for r in emsp.functional() if r.method == "PATCH"] == [grown]  # relayed
    _wait(lambda: _cache_state(hub, owner)["location_cache_over_cap"])
    assert _cache_state(hub, owner, state) == {"locations_cached": 1, "location_cache_over_cap": True,
                                               "locations_refused": 1, "location_bytes_cached": sizes[1]}  # fmt: skip
    [said] = [json.loads(line) for line in hub.log().splitlines() if '"location_cache_over_cap"' in line
              and f"{owner[0]}-{owner[1]}" in line]  # fmt: skip
    assert said["cap_bytes"] == BYTE_CAP and "grew a location past its cap of bytes" in said["reason"]
    single = _get(emsp, hub, "sender/locations/B0").json()  # not the copy from before the update: its owner's
    assert single["data"] == {"id": "B0", "served_by": cpo.name}, single  # asked of the CPO, the one owner seen
    of_its_cpo = _get(emsp, hub, f"sender/locations/B0?country_code={owner[0]}&party_id={owner[1]}")
    assert of_its_cpo.json()["data"] == {"id": "B0", "served_by": cpo.name}  # asked of the CPO
    # B2 fits beside B1; B3 does not: refused, relayed all the same
    for doc in docs[2:]:
        _push(cpo, emsp, hub, "PUT", doc["id"], doc)
    assert [json.loads(r.body)["id"] for r in emsp.functional() if r.method == "PUT"] == ["B0", "B1", "B2", "B3"]
    _wait(lambda: _cache_state(hub, owner)["locations_refused"] == 2)
    assert _cache_state(hub, owner, state) == {"locations_cached": 2, "location_cache_over_cap": True,
                                               "locations_refused": 2,
                                               "location_bytes_cached": sizes[1] + sizes[2]}  # fmt: skip
    metrics = httpx.get(f"{hub.base}/metrics").text
    assert f'ocpi_hub_location_cache_over_cap_total{{cap="bytes",party="{owner[0]}-{owner[1]}"}} 2.0' in metrics
    assert f"holds 2 of this CPO's locations ({sizes[1] + sizes[2]} bytes)" in console_page(hub, "/console/parties")
    # GET All is not answered short: of its locations, by the CPO; of every CPO's, refused naming it
    cpo.objects["locations"] = docs
    query = f"sender/locations?country_code={owner[0]}&party_id={owner[1]}"
    assert _walk(emsp, hub, query) == ([doc["id"] for doc in docs], {owner[1]})
    every = _get(emsp, hub, "sender/locations").json()
    assert every["status_code"] == 4000 and f"{CAP} locations, {BYTE_CAP:,} bytes of them" in every["status_message"]
    # The CPO lists what fits: a full sync caches all of it, and the mark goes.
    cpo.objects["locations"] = docs[1:3]
    command = [sys.executable, "-m", "hub.cli", "sync", "locations", "--party", "-".join(owner), "--full"]
    synced = subprocess.run(command, env=hub.env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert synced.returncode == 0, synced.stderr
    listed = sum(len(json.dumps(doc)) for doc in docs[1:3])  # as its Sender's pages have them
    assert _cache_state(hub, owner, state) == {"locations_cached": 2, "location_cache_over_cap": False,
                                               "locations_refused": 0, "location_bytes_cached": listed}  # fmt: skip
    assert _walk(emsp, hub, query) == (["B1", "B2"], {"HUB"})
    assert _get(emsp, hub, "sender/locations").json()["status_code"] == 1000
    _take_off(hub, owner)


def test_a_get_all_forwarded_to_a_cpo_over_its_cap_keeps_the_callers_query_as_written_but_the_hubs_own_filter(
    capped_hub: Hub, start_party
) -> None:
    # Decoded and encoded again, its DateTimes went as 2026-12-01T00%3A00%3A00Z: not what the caller sent, and not
    # what a CPO reading its query undecoded takes (transport_and_format.asciidoc: the filters reach the Sender).
    hub = capped_hub
    cpo, emsp, owner = _cpo_over_its_cap(hub, start_party, "Q", CAP + 1)
    query = "date_from=2026-12-01T00:00:00Z&date_to=2026-12-02T00:00:00%2B00:00&limit=2"
    answer = _get(emsp, hub, f"sender/locations?country_code={owner[0]}&{query}&party_id={owner[1]}")
    assert answer.json()["status_code"] == 1000 and answer.headers["OCPI-from-party-id"] == owner[1], answer.text
    assert [r.raw_path for r in cpo.functional() if r.method == "GET"] == [f"/ocpi/2.2.1/locations/sender?{query}"]


def test_a_forwarded_get_all_via_the_hub_followed_without_ocpi_to_hands_out_pages_still_followed_with_ocpi_to_the_hub(
    capped_hub: Hub, start_party
) -> None:
    # Page 2 followed without OCPI-to headers handed out a page-3 URL remembered as of a GET All addressed to the CPO,
    # which OCPI-to the hub, as the GET All began, was then refused with 2001: the flag goes from page to page.
    hub = capped_hub
    _, emsp, owner = _cpo_over_its_cap(hub, start_party, "F", CAP + 2)
    first = _get(emsp, hub, f"sender/locations?country_code={owner[0]}&party_id={owner[1]}")
    assert first.json()["status_code"] == 1000 and first.headers["OCPI-from-party-id"] == owner[1], first.text
    second = _get(emsp, hub, first.headers["Link"].split(">")[0].lstrip("<"), to=None)
    assert second.json()["status_code"] == 1000, second.text
    third = _get(emsp, hub, second.headers["Link"].split(">")[0].lstrip("<"))  # OCPI-to the hub again
    assert third.json()["status_code"] == 1000, third.text
    assert [location["id"] for location in third.json()["data"]] == ["F4"]
