"""The hub's location cache: kept by relayed pushes, served by the hub itself, visibility (GET All's snapshots:
tests.test_location_cache_snapshots)."""

from __future__ import annotations

import asyncio
import time

import httpx
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
