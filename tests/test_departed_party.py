"""A platform that leaves the hub leaves no routing entries behind for a later platform of the same party id."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from pathlib import Path

import httpx
import msgspec
import pytest
import redis as redis_sync
import redis.asyncio as redis

from storage.departed_cleanup import Cleanup
from storage.directory import GENERATION_KEY, DirectoryChanged
from storage.location_cache import LocationCache
from storage.routing_state import RoutingState
from tests.conftest import OUTPUT, Hub, Services, hub_env, register_at_hub, start_hub
from tests.hub_storage import hub_storage, registration_after_the_first_chunk
from tests.parties import Party, token_header
from tests.test_location_cache import _eventually, _location, _push
from tests.test_routing import _roles, party_key

CLEANED_WITHIN_S = 30.0  # the test hub starts a cleanup about 4 s after a departure (its forward timeout is 2 s)


@pytest.fixture
def indexes(services: Services):  # type: ignore[no-untyped-def]
    client = redis_sync.Redis.from_url(services.redis_url, decode_responses=True)
    yield client
    client.close()


def _naming(client: redis_sync.Redis, prefix: str, party: tuple[str, str]) -> list[tuple[str, str]]:
    """(hash, field) of every owner and publish_allowed_to index entry that names the party: among an entry's
    owners, or at the start of its field (a session's CPO, a token's owner)."""
    owner, starts = f"{party[0]}-{party[1]}", (f"{party[0]}-{party[1]}\x1f", f"{party[0]}/{party[1]}/")
    found = []
    for pattern in ("owners:*", "publish-to:*"):
        for key in client.scan_iter(match=f"{prefix}{pattern}", _type="HASH"):
            for field, value in client.hscan_iter(key):
                if owner in value.split(",") or field.startswith(starts):
                    found.append((key.removeprefix(prefix), field))
    return sorted(found)


def _owners(client: redis_sync.Redis, prefix: str, pattern: str, field: str) -> list[str]:
    """The owners of a field in the hashes matching the pattern (a period's of sessions: the current one's)."""
    keys = sorted(client.scan_iter(match=f"{prefix}{pattern}", _type="HASH"))
    return sorted(owner for key in keys for owner in (client.hget(key, field) or "").split(",") if owner)


def _cleaned(hub: Hub, party: tuple[str, str], event: str = "departed_party_cleaned") -> dict:
    """The hub's log line saying what the cleanup of the party did."""
    lines = [json.loads(line) for line in hub.log().splitlines() if event in line]
    found = [line for line in lines if line.get("event") == event and line.get("party") == f"{party[0]}-{party[1]}"]
    assert len(found) == 1, found
    return found[0]


def _leave(party: Party, hub: Hub) -> None:
    left = httpx.delete(f"{hub.base}/ocpi/2.2.1/credentials", headers=token_header(party.hub_token or ""))
    assert left.json()["status_code"] == 1000, left.text


def _take_off(hub: Hub, party: tuple[str, str]) -> None:
    with hub.admin() as admin:
        [platform] = [p for p in admin.get("/admin/api/parties").json()["items"] if p["party_id"] == party[1]]
        assert admin.delete(f"/admin/api/parties/{platform['platform_id']}").status_code == 200


def _put(sender: Party, hub: Hub, module: str, owner: tuple[str, str], object_id: str, to: tuple[str, str]) -> None:
    """The owner's location, session or token pushed through the hub to `to`."""
    if module == "locations":
        body = _location(owner, object_id, "2026-11-21T10:00:00Z")
    else:
        body = {"country_code": owner[0], "party_id": owner[1], "id": object_id}
    if module == "tokens":
        body = _token(owner, object_id)
    answer = sender.call(hub.base, "PUT", f"receiver/{module}/{owner[0]}/{owner[1]}/{object_id}", to=to,
                         from_=owner, body=body)  # fmt: skip
    assert answer.json()["status_code"] == 1000, answer.text


def _token(owner: tuple[str, str], uid: str) -> dict:
    return {"country_code": owner[0], "party_id": owner[1], "uid": uid, "type": "RFID", "contract_id": f"C-{uid}",
            "issuer": "Fleet Co", "visual_number": f"VN-{uid}", "group_id": "FLEET", "valid": True,
            "whitelist": "ALLOWED", "last_updated": "2026-11-21T09:00:00Z"}  # fmt: skip


def test_a_platform_that_leaves_loses_its_index_entries_and_the_parties_sharing_them_keep_theirs(
    hub: Hub, services: Services, connect_party, indexes
) -> None:
    cpo_role, emsp_role = _roles("CPO"), _roles("EMSP")
    leaving = connect_party(cpo_role, emsp_role)  # one platform, a CPO and an eMSP
    gone_cpo, gone_emsp = cpo_role[1:], emsp_role[1:]
    cpo, emsp = connect_party(_roles("CPO")), connect_party(_roles("EMSP"))
    suffix = gone_cpo[1]
    location_id, session_id, other_session, uid, reservation = (f"{kind}-{suffix}" for kind in "LSOTR")
    for sender, owner in ((leaving, gone_cpo), (cpo, party_key(cpo))):  # ids the staying parties use as well
        _put(sender, hub, "locations", owner, location_id, party_key(emsp))
        _put(sender, hub, "sessions", owner, session_id, party_key(emsp))
    _put(cpo, hub, "sessions", party_key(cpo), other_session, gone_emsp)  # pushed to the leaving eMSP
    for sender, owner in ((leaving, gone_emsp), (emsp, party_key(emsp))):
        _put(sender, hub, "tokens", owner, uid, party_key(cpo))
    reserved = emsp.call(hub.base, "POST", "receiver/commands/RESERVE_NOW", to=gone_cpo,
                         body={"response_url": f"{emsp.base}/r/1", "reservation_id": reservation,
                               "location_id": location_id, "expiry_date": "2026-11-21T12:00:00Z",
                               "token": _token(party_key(emsp), uid)})  # fmt: skip
    assert reserved.json()["status_code"] == 1000, reserved.text
    # and one the leaving eMSP made, of the same id: kept by its eMSP (routing.open_routing._reservation_of), it goes
    reserved = leaving.call(hub.base, "POST", "receiver/commands/RESERVE_NOW", to=party_key(cpo), from_=gone_emsp,
                            body={"response_url": f"{leaving.base}/r/1", "reservation_id": reservation,
                                  "location_id": location_id, "expiry_date": "2026-11-21T12:00:00Z",
                                  "token": _token(gone_emsp, uid)})  # fmt: skip
    assert reserved.json()["status_code"] == 1000, reserved.text
    prefix = services.redis_prefix
    _eventually(lambda: _assert_len(_naming(indexes, prefix, gone_cpo), 4))
    _eventually(lambda: _assert_len(_naming(indexes, prefix, gone_emsp), 6))

    _leave(leaving, hub)

    _eventually(lambda: _assert_len(_naming(indexes, prefix, gone_cpo) + _naming(indexes, prefix, gone_emsp), 0),
                CLEANED_WITHIN_S)  # fmt: skip
    assert _owners(indexes, prefix, "owners:locations", location_id) == [f"NL-{party_key(cpo)[1]}"]
    assert _owners(indexes, prefix, "owners:sessions:*", session_id) == [f"NL-{party_key(cpo)[1]}"]
    assert _owners(indexes, prefix, "owners:session-receivers:*", f"NL/{party_key(cpo)[1]}/{session_id}") == [
        f"NL-{party_key(emsp)[1]}"
    ]
    assert _owners(indexes, prefix, "owners:tokens", uid) == [f"NL-{party_key(emsp)[1]}"]
    staying = f"NL-{party_key(emsp)[1]}\x1f"
    assert indexes.hget(f"{prefix}publish-to:tokens", f"{staying}{uid}\x1fRFID") == f"VN-{uid}\x1fFleet Co\x1fFLEET"
    assert indexes.hget(f"{prefix}publish-to:visual-numbers", f"{staying}VN-{uid}") == "RFID\x1fFleet Co\x1fFLEET\x1d1"
    assert indexes.hget(f"{prefix}publish-to:groups", f"{staying}FLEET") == "RFID\x1fFleet Co\x1d1"
    removed = {name: count for name, count in _cleaned(hub, gone_cpo).items() if isinstance(count, int) and count}
    assert removed == {"locations": 1, "sessions": 1, "session_receivers": 1, "reservations": 1}
    removed = {name: count for name, count in _cleaned(hub, gone_emsp).items() if isinstance(count, int) and count}
    assert removed == {"tokens": 1, "session_receivers": 1, "reservations": 1, "publish_tokens": 1,
                       "publish_visual_numbers": 1, "publish_groups": 1}  # fmt: skip


def _assert_len(found: list, expected: int) -> None:
    assert len(found) == expected, found


def test_a_platform_registering_a_departed_party_id_is_not_routed_by_the_old_platforms_entries(
    hub: Hub, services: Services, start_party, connect_party, indexes
) -> None:
    role = _roles("CPO")
    old, emsp = connect_party(role), connect_party(_roles("EMSP"))
    owner = party_key(old)
    location_id, session_id = f"L-{owner[1]}", f"S-{owner[1]}"
    _put(old, hub, "locations", owner, location_id, party_key(emsp))
    _put(old, hub, "sessions", owner, session_id, party_key(emsp))
    _eventually(lambda: _assert_len(_naming(indexes, services.redis_prefix, owner), 3))

    _take_off(hub, owner)
    _eventually(lambda: _assert_len(_naming(indexes, services.redis_prefix, owner), 0), CLEANED_WITHIN_S)

    new = register_at_hub(hub, start_party, role)
    started = emsp.call(hub.base, "POST", "receiver/commands/START_SESSION",
                        body={"response_url": f"{emsp.base}/cmd/1", "location_id": location_id,
                              "token": {"uid": "T"}})  # fmt: skip
    assert started.json()["status_code"] == 4001, started.text
    patched = new.call(
        hub.base,
        "PATCH",
        f"receiver/sessions/{owner[0]}/{owner[1]}/{session_id}",
        body={"kwh": 2, "last_updated": "2026-11-25T10:00:00Z"},
    )
    assert patched.json()["status_code"] == 4001, patched.text
    assert new.functional() == []
    assert [r.method for r in emsp.functional()] == ["PUT", "PUT"]  # the old platform's pushes only


def test_a_party_id_registered_again_before_its_cleanup_ran_keeps_the_new_platforms_entries(
    hub: Hub, services: Services, start_party, connect_party, indexes
) -> None:
    role = _roles("CPO")
    old, emsp = connect_party(role), connect_party(_roles("EMSP"))
    owner = party_key(old)
    location_id, later_id = f"L-{owner[1]}", f"L2-{owner[1]}"
    _push(old, emsp, hub, "PUT", location_id, _location(owner, location_id, "2026-11-21T10:00:00Z"))
    _eventually(lambda: _assert_len(_naming(indexes, services.redis_prefix, owner), 1))
    _leave(old, hub)

    new = register_at_hub(hub, start_party, role)  # well within the few seconds before the cleanup starts
    for pushed in (location_id, later_id):
        _push(new, emsp, hub, "PUT", pushed, _location(owner, pushed, "2026-11-21T11:00:00Z"))
    _eventually(lambda: _cleaned(hub, owner, "departed_party_kept"), CLEANED_WITHIN_S)

    assert _naming(indexes, services.redis_prefix, owner) == [
        ("owners:locations", location_id), ("owners:locations", later_id)
    ]  # fmt: skip
    started = emsp.call(hub.base, "POST", "receiver/commands/START_SESSION",
                        body={"response_url": f"{emsp.base}/cmd/1", "location_id": later_id,
                              "token": {"uid": "T"}})  # fmt: skip
    assert started.json()["status_code"] == 1000, started.text
    assert [r.path for r in new.functional()] == ["/ocpi/2.2.1/commands/receiver/START_SESSION"]


def test_a_location_stored_after_its_cpo_left_is_forgotten_with_its_publish_allowed_to_entries(
    hub: Hub, services: Services, connect_party, indexes
) -> None:
    cpo, emsp = connect_party(_roles("CPO")), connect_party(_roles("EMSP"))
    owner = party_key(cpo)
    location_id = f"L-{owner[1]}"
    member = f"{owner[0]}/{owner[1]}/{location_id}"
    location = _location(owner, location_id, "2026-11-21T10:00:00Z", publish=False,
                         publish_allowed_to=[{"uid": "T1"}])  # fmt: skip
    _push(cpo, emsp, hub, "PUT", location_id, location)
    _leave(cpo, hub)

    async def store_late() -> None:  # as an update relayed just before it left, applied by the hub just after
        client = redis.Redis.from_url(services.redis_url)
        try:
            await LocationCache(client, services.redis_prefix).apply([(owner, 0, "PUT", [location_id],
                                                                       json.dumps(location).encode())])  # fmt: skip
        finally:
            await client.aclose()

    asyncio.run(store_late())
    assert indexes.get(f"{services.redis_prefix}locations:publish-to:{member}") == "T1\x1f\x1f\x1f\x1f"
    # and the mark of a sync that was under way, set just after: a later platform of this party id starts with a full
    # sync, not an incremental one from that date
    synced = f"{services.redis_prefix}locations:synced:{owner[0]}/{owner[1]}"
    indexes.set(synced, "2026-11-21T10:00:00Z")

    def gone() -> None:
        assert not indexes.exists(f"{services.redis_prefix}locations:publish-to:{member}")
        assert not indexes.exists(f"{services.redis_prefix}locations:doc:{member}")
        assert indexes.zscore(f"{services.redis_prefix}locations:all", member) is None
        assert not indexes.exists(synced)

    _eventually(gone, CLEANED_WITHIN_S)
    assert _cleaned(hub, owner)["cached_locations"] == 1


def test_a_departure_a_hub_stopped_before_cleaning_up_after_is_cleaned_up_by_the_next_hub_to_start(
    services: Services, start_party, indexes, tmp_path: Path
) -> None:
    prefix = f"{services.redis_prefix}stopped-{secrets.token_hex(3)}:"
    env = hub_env(services, tmp_path / "hub-data", OCPI_HUB_REDIS_PREFIX=prefix)
    claim, pending = f"{prefix}departed-parties:claim", f"{prefix}departed-parties"
    # The test holds the cleanup's claim until the first hub has stopped, so that hub cannot clean up first. Counting
    # on its stop to come before its cleanup began (about 4 s after the departure) did not do on a loaded machine.
    # A prefix of the test's own: the session's hub shares the claim of the session's prefix.
    indexes.set(claim, "held by the test")
    try:
        first = start_hub(env, OUTPUT / "hub-departed-first.log")
        try:
            cpo, emsp = (register_at_hub(first, start_party, _roles(role)) for role in ("CPO", "EMSP"))
            owner = party_key(cpo)
            _put(cpo, first, "locations", owner, f"L-{owner[1]}", party_key(emsp))
            _eventually(lambda: _assert_len(_naming(indexes, prefix, owner), 1), 30)
            _leave(cpo, first)
        finally:
            assert first.stop() == 0
        assert _naming(indexes, prefix, owner) == [("owners:locations", f"L-{owner[1]}")]
        assert indexes.zscore(pending, f"{owner[0]}-{owner[1]}") is not None
        indexes.delete(claim)

        second = start_hub(env, OUTPUT / "hub-departed-second.log")
        try:
            _eventually(lambda: _assert_len(_naming(indexes, prefix, owner), 0), CLEANED_WITHIN_S)
            _eventually(lambda: _assert_len([member for member in indexes.zrange(pending, 0, -1)
                                             if member == f"{owner[0]}-{owner[1]}"], 0))  # fmt: skip
            assert _eventually(lambda: _cleaned(second, owner))["locations"] == 1
        finally:
            second.stop()
    finally:
        indexes.delete(claim)


def test_a_departed_cpos_locations_are_not_forgotten_once_the_directory_changed(services: Services) -> None:
    prefix = f"{services.redis_prefix}departed-{time.monotonic_ns()}:"
    owner, generation = ("NL", "ZZ1"), f"{prefix}{GENERATION_KEY}"

    async def run() -> None:
        client = redis.Redis.from_url(services.redis_url)
        cache = LocationCache(client, prefix)
        try:
            body = json.dumps(_location(owner, "L1", "2026-11-21T10:00:00Z")).encode()
            await cache.apply([(owner, 0, "PUT", ["L1"], body)])
            await client.set(generation, "8")  # a platform registered since the cleanup read generation 7
            with pytest.raises(DirectoryChanged):
                await cache.forget(owner, {"L1"}, (generation, "7"))
            assert await cache.location_ids(owner) == {"L1"}
            assert await cache.forget(owner, {"L1"}, (generation, "8")) == 1
        finally:
            await client.aclose()

    asyncio.run(run())


def test_a_departed_cpos_cached_locations_are_all_counted_when_the_directory_changed_midway(
    services: Services, empty_database: str
) -> None:
    # Forgotten a chunk of 1,000 at a time, each only while the directory is as the cleanup read it: a registration
    # between two chunks makes the cleanup read it again and go on with what is still cached.
    prefix = f"{services.redis_prefix}departed-count-{time.monotonic_ns()}:"
    party = ("NL", "CNT")

    async def clean_while_the_directory_changes() -> tuple[int, set[str], list[int]]:
        async with hub_storage(empty_database, services.redis_url) as storage:
            routing, locations = RoutingState(storage.redis, prefix, 3600.0), LocationCache(storage.redis, prefix)
            cached = [json.dumps(_location(party, f"L{n}", "2026-11-21T10:00:00Z")).encode() for n in range(2500)]
            assert len((await locations.put_many(party, 0, [msgspec.Raw(doc) for doc in cached])).kept) == 2500
            chunks = registration_after_the_first_chunk(locations, storage.redis, prefix)

            async def keep() -> None:
                pass

            counts = await Cleanup(storage.pool, storage.redis, prefix, routing, locations).clean([party], keep)
            return (counts[party] or {})["cached_locations"], await locations.location_ids(party), chunks

    counted, left, chunks = asyncio.run(asyncio.wait_for(clean_while_the_directory_changes(), 30))
    assert left == set() and chunks == [4]  # the first; the second, refused; then the 1,500 left, in two
    assert counted == 2500


def test_an_open_session_request_does_not_reach_a_platform_that_registered_the_departed_emsps_id_before_its_cleanup(
    hub: Hub, services: Services, start_party, connect_party, indexes
) -> None:
    # The session-receivers entry names the eMSP by its party id alone: registered again on another platform before the
    # departure's cleanup ran (which then kept it, the id being held again), it sent the CPO's open GET and PATCH of a
    # session to the new platform, which never had it. The registration cleans the departed id up first.
    cpo, role = connect_party(_roles("CPO")), _roles("EMSP")
    old = connect_party(role)
    session_id = f"S-{role[2]}"
    _put(cpo, hub, "sessions", party_key(cpo), session_id, party_key(old))
    _eventually(lambda: _assert_len(_naming(indexes, services.redis_prefix, party_key(old)), 1))
    _leave(old, hub)

    new = register_at_hub(hub, start_party, role)  # well within the few seconds before the cleanup starts
    cc, pid = party_key(cpo)
    for method, body in (("GET", None), ("PATCH", {"kwh": 2, "last_updated": "2026-11-25T10:00:00Z"})):
        answer = cpo.call(hub.base, method, f"receiver/sessions/{cc}/{pid}/{session_id}", body=body)
        assert answer.json()["status_code"] in (4001, 4003), answer.text
    assert new.functional() == []


@pytest.fixture
def slow_cleanup_hub(services: Services, empty_database: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    """A hub of its own whose departures are cleaned up 22 s after they happen (its forward timeout is 20 s): time
    for `ocpi-hub connect` to register a departed party id before that."""
    env = hub_env(services, tmp_path / "hub", OCPI_HUB_DATABASE_URL=empty_database, OCPI_HUB_FORWARD_TIMEOUT_S="20",
                  OCPI_HUB_REDIS_PREFIX=f"{services.redis_prefix}slow-cleanup-{tmp_path.name}:")  # fmt: skip
    running = start_hub(env, OUTPUT / "hub-slow-cleanup.log")
    yield running
    running.stop()


def test_a_party_id_the_hub_connects_to_again_before_its_cleanup_is_not_routed_by_the_old_platforms_entries(
    slow_cleanup_hub: Hub, start_party, indexes
) -> None:
    from tests.test_admin_and_cli import _cli

    hub, prefix = slow_cleanup_hub, slow_cleanup_hub.env["OCPI_HUB_REDIS_PREFIX"]
    cpo, role = register_at_hub(hub, start_party, _roles("CPO")), _roles("EMSP")
    old = register_at_hub(hub, start_party, role)
    session_id = f"S-{role[2]}"
    _put(cpo, hub, "sessions", party_key(cpo), session_id, party_key(old))
    _eventually(lambda: _assert_len(_naming(indexes, prefix, party_key(old)), 1))
    _leave(old, hub)

    new = start_party(role)
    connected = _cli(hub, "connect", "--versions-url", new.versions_url, f"--token-a={new.token_a}")
    assert connected.returncode == 0, connected.stderr + connected.stdout
    assert "departed_party_cleaned" not in hub.log()  # the hub's own pass is not due yet
    assert _naming(indexes, prefix, party_key(old)) == []
    cc, pid = party_key(cpo)
    answer = cpo.call(hub.base, "GET", f"receiver/sessions/{cc}/{pid}/{session_id}")
    assert answer.json()["status_code"] in (4001, 4003), answer.text
    assert new.functional() == []
