"""Updates reach the location cache out of order when different hub processes relay them (above all those held while
Redis was away): one older than the cached object it changes is not applied, so a GET via the hub does not serve an
EVSE status the CPO has since changed."""

from __future__ import annotations

import json

import msgspec
import pytest
import redis.asyncio as redis

from storage.location_cache import LocationCache
from tests.conftest import Services
from tests.test_location_cache import _location
from tests.test_location_cache_upgrades import _run

OWNER = ("NL", "CPO")
T0, T1, T2 = "2026-12-01T10:00:00Z", "2026-12-01T10:05:00Z", "2026-12-01T10:10:00Z"


def _update(method: str, path: list[str], body: dict, owner: tuple[str, str] = OWNER) -> tuple:
    return (owner, 0, method, path, json.dumps(body).encode())


async def _cached(cache: LocationCache) -> dict:
    [(_, location)] = await cache.find("LOC1")
    return location


def _at(location: dict, path: list[str]) -> dict:
    """The object a path of the location names (the test locations have one EVSE with one connector)."""
    return [location, location["evses"][0], location["evses"][0]["connectors"][0]][len(path) - 1]


CHANGES = [(["LOC1"], "name", "newer", "older"), (["LOC1", "E1"], "status", "CHARGING", "AVAILABLE"),
           (["LOC1", "E1", "1"], "max_voltage", 400, 230)]  # fmt: skip


@pytest.mark.parametrize(("path", "field", "newer", "older"), CHANGES, ids=["location", "evse", "connector"])
def test_a_patch_older_than_the_cached_object_arriving_after_a_newer_one_is_not_applied(
    services: Services, path: list[str], field: str, newer: object, older: object
) -> None:
    async def test(client: redis.Redis, prefix: str) -> None:
        cache = LocationCache(client, prefix)
        assert await cache.apply([_update("PUT", ["LOC1"], _location(OWNER, "LOC1", T0))]) == 1
        late = [_update("PATCH", path, {field: newer, "last_updated": T2}),
                _update("PATCH", path, {field: older, "last_updated": T1})]  # fmt: skip
        assert await cache.apply(late) == 1
        location = await _cached(cache)
        assert _at(location, path)[field] == newer
        assert _at(location, path)["last_updated"] == location["last_updated"] == T2
        # the same last_updated is not older: the one applied last wins, as before
        assert await cache.apply([_update("PATCH", path, {field: older, "last_updated": T2})]) == 1
        assert _at(await _cached(cache), path)[field] == older

    _run(services, test)


def test_an_evse_put_older_than_the_cached_evse_is_not_applied_but_a_new_evse_is(services: Services) -> None:
    async def test(client: redis.Redis, prefix: str) -> None:
        cache = LocationCache(client, prefix)
        await cache.apply([_update("PUT", ["LOC1"], _location(OWNER, "LOC1", T2))])
        stale = {"uid": "E1", "status": "OUTOFORDER", "last_updated": T1, "connectors": []}
        added = {"uid": "E2", "status": "AVAILABLE", "last_updated": T1, "connectors": []}
        assert await cache.apply([_update("PUT", ["LOC1", "E1"], stale), _update("PUT", ["LOC1", "E2"], added)]) == 1
        location = await _cached(cache)
        assert [(e["uid"], e["status"]) for e in location["evses"]] == [("E1", "AVAILABLE"), ("E2", "AVAILABLE")]
        assert location["last_updated"] == T2  # the parent keeps its later last_updated

    _run(services, test)


def test_a_whole_location_older_than_the_cached_one_is_kept_out_and_pull_sync_still_counts_it_as_listed(
    services: Services,
) -> None:
    async def test(client: redis.Redis, prefix: str) -> None:
        cache = LocationCache(client, prefix)
        newer = _location(OWNER, "LOC1", T2, name="pushed")
        assert await cache.apply([_update("PUT", ["LOC1"], newer)]) == 1
        older = _location(OWNER, "LOC1", T1, name="late")
        assert await cache.apply([_update("PUT", ["LOC1"], older)]) == 0
        assert await _cached(cache) == newer
        # a pull-sync page read before the push: the location is listed (a full sync must not forget it), not stored
        page = [msgspec.Raw(json.dumps(_location(OWNER, "LOC1", T0, name="page")).encode())]
        assert (await cache.put_many(OWNER, 0, page)).kept == ["LOC1"]
        assert await _cached(cache) == newer
        assert await cache.location_ids(OWNER) == {"LOC1"}
        same_time = _location(OWNER, "LOC1", T2, name="same time")
        assert await cache.apply([_update("PUT", ["LOC1"], same_time)]) == 1
        assert await _cached(cache) == same_time

    _run(services, test)


def test_a_cached_last_updated_far_in_the_future_keeps_no_genuine_update_out(services: Services) -> None:
    # A CPO's local time sent as UTC, or a bug, would otherwise freeze its location in the cache until then.
    async def test(client: redis.Redis, prefix: str) -> None:
        cache = LocationCache(client, prefix)
        ahead = "2099-01-01T00:00:00Z"
        await cache.apply([_update("PUT", ["LOC1"], _location(OWNER, "LOC1", ahead, name="ahead"))])
        assert await cache.apply([_update("PATCH", ["LOC1", "E1"], {"status": "CHARGING", "last_updated": T1})]) == 1
        assert (await _cached(cache))["evses"][0]["status"] == "CHARGING"
        assert await cache.apply([_update("PUT", ["LOC1"], _location(OWNER, "LOC1", T2, name="genuine"))]) == 1
        assert (await _cached(cache))["name"] == "genuine"

    _run(services, test)


def test_an_update_the_cache_cannot_read_costs_its_own_place_not_the_other_updates_of_its_batch(
    services: Services,
) -> None:
    # A numeric last_updated, or evses that are no list, raised past apply: up to 500 updates of every CPO relayed in
    # those 10 ms were lost with it (a security review).
    other = ("NL", "OTH")

    async def test(client: redis.Redis, prefix: str) -> None:
        cache = LocationCache(client, prefix)
        await cache.apply([_update("PUT", ["LOC1"], _location(OWNER, "LOC1", T0)),
                           _update("PUT", ["LOC9"], _location(other, "LOC9", T0), other)])  # fmt: skip
        odd = [_update("PUT", ["LOC1", "E1"], {"uid": "E1", "last_updated": 7}),
               _update("PUT", ["LOC1", "E2", "1"], {"id": "1", "last_updated": T1}),
               _update("PATCH", ["LOC9", "E1"], {"status": "CHARGING", "last_updated": T1}, other)]  # fmt: skip
        assert await cache.apply(odd) == 1
        [(_, location)] = await cache.find("LOC9")
        assert location["evses"][0]["status"] == "CHARGING"
        await client.set(f"{prefix}locations:doc:NL/CPO/LOC1", json.dumps(_location(OWNER, "LOC1", T0) | {"evses": 5}))
        assert await cache.apply([_update("PATCH", ["LOC1", "E1"], {"status": "BLOCKED", "last_updated": T2})]) == 0

    _run(services, test)
