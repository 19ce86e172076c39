"""What earlier hubs left in the location cache is brought up to this version once per cache, by the first hub to start:
locations keyed by their id as sent move to their upper-cased key, the newer of two spellings kept."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import redis.asyncio as redis
import structlog.testing

from storage.location_cache import LocationCache
from storage.location_document import epoch
from storage.location_upgrades import _count_bytes, _upper_case, upgrade
from storage.publish_tokens import publish_entries
from tests.conftest import Services
from tests.test_location_cache import _location

OWNER = ("NL", "CPO")
PASSES = ["publish-entries", "upper-cased-ids", "location-bytes", "get-all-order"]


def _as_an_earlier_hub_cached(
    pipe: Any, prefix: str, location: dict, *indexed_under: str, entries: bool = True
) -> None:
    """Queue the keys of a location as a hub before ids were upper-cased cached it: keyed by its id as sent, in the id
    index under the ids given (that hub's own: the id as sent; the start-up pass of the version after it: upper-cased;
    a hub before the index: none), and if unpublished, with its publish_allowed_to entries or, as a hub before those
    kept it, with the set of its entries' token uids."""
    p, member = f"{prefix}locations:", f"{location['country_code']}/{location['party_id']}/{location['id']}"
    score = epoch(location["last_updated"])
    pipe.set(f"{p}doc:{member}", json.dumps(location))
    pipe.zadd(f"{p}all", {member: score})
    pipe.zadd(f"{p}by-owner:{location['country_code']}/{location['party_id']}", {member: score})
    for location_id in indexed_under:
        pipe.sadd(f"{p}id:{location_id}", member)
    if location.get("publish") is False:
        pipe.sadd(f"{p}hidden", member)
        if entries:
            pipe.set(f"{p}publish-to:{member}", publish_entries(location.get("publish_allowed_to")))
        else:
            pipe.sadd(f"{p}allowed:{member}", *(entry["uid"] for entry in location["publish_allowed_to"]))


async def _cached_as_now(client: redis.Redis, prefix: str, *locations: dict) -> None:
    await LocationCache(client, prefix).put_many(OWNER, 0, [msgspec.Raw(json.dumps(loc).encode()) for loc in locations])


async def _until_upgraded(client: redis.Redis, prefix: str) -> None:
    deadline = time.monotonic() + 5
    while not await client.exists(f"{prefix}locations:upgraded:{PASSES[-1]}"):
        assert time.monotonic() < deadline, "the cache was not upgraded"
        await asyncio.sleep(0.01)


async def _members_and_keys(client: redis.Redis, prefix: str) -> tuple[set[str], list[str]]:
    """Every member of the cache's sets and sorted sets, and the names of its keys after `locations:`."""
    p = f"{prefix}locations:"
    keys = [key.decode()[len(p) :] async for key in client.scan_iter(f"{p}*")]
    members: set[str] = set()
    for key in keys:
        kind = await client.type(p + key)
        if kind == b"zset":
            members.update(m.decode() for m in await client.zrange(p + key, 0, -1))
        elif kind == b"set":
            members.update(m.decode() for m in await client.smembers(p + key))
    return members, keys


@contextlib.asynccontextmanager
async def _may_not_scan(url: str, admin: redis.Redis) -> AsyncIterator[redis.Redis]:
    """A client whose Redis user may run every command but SCAN and KEYS."""
    user, password = f"no-scan-{secrets.token_hex(4)}", secrets.token_hex(16)
    await admin.acl_setuser(user, enabled=True, passwords=[f"+{password}"], keys=["*"], channels=["*"],
                            commands=["+@all", "-scan", "-keys"])  # fmt: skip
    reader = redis.Redis.from_url(url, username=user, password=password)
    try:
        yield reader
    finally:
        await reader.aclose()
        await admin.acl_deluser(user)


def _run(services: Services, test: Any) -> None:
    async def run() -> None:
        client = redis.Redis.from_url(services.redis_url)
        try:
            await test(client, f"{services.redis_prefix}upgrade-{secrets.token_hex(4)}:")
        finally:
            await client.aclose()

    asyncio.run(run())


def test_a_cache_kept_under_ids_as_sent_is_upper_cased_at_start_and_the_newer_of_two_spellings_kept(
    services: Services,
) -> None:
    only = _location(OWNER, "loc1", "2026-11-01T00:00:00Z", name="only")
    older_legacy, newer_now = (_location(OWNER, "Loc2", "2026-11-01T00:00:00Z", name="older"),
                               _location(OWNER, "LOC2", "2026-11-05T00:00:00Z", name="newer"))  # fmt: skip
    allowed_to = [{"uid": "CARD1", "type": "RFID"}]
    newer_legacy = _location(OWNER, "loc3", "2026-11-05T00:00:00Z", name="newer", publish=False,
                             publish_allowed_to=allowed_to)  # fmt: skip
    older_now = _location(OWNER, "LOC3", "2026-11-01T00:00:00Z", name="older")
    oldest, newest = (_location(OWNER, "lOC4", "2026-11-01T00:00:00Z", name="older"),
                      _location(OWNER, "loc4", "2026-11-05T00:00:00Z", name="newer"))  # fmt: skip

    async def test(client: redis.Redis, prefix: str) -> None:
        p = f"{prefix}locations:"
        async with client.pipeline(transaction=False) as old_hub:
            for location in (only, older_legacy, newer_legacy, oldest, newest):
                _as_an_earlier_hub_cached(old_hub, prefix, location, location["id"], location["id"].upper())
            old_hub.set(f"{p}ids-indexed-upper-cased", "1")  # the marker of the last version's pass: it had run
            await old_hub.execute()
        await _cached_as_now(client, prefix, newer_now, older_now)
        cache = LocationCache(client, prefix)
        async with cache.updating():
            await _until_upgraded(client, prefix)
            expected = {"LOC1": only, "loc1": only, "Loc2": newer_now, "loc3": newer_legacy, "Loc4": newest}
            for asked, location in expected.items():
                assert await cache.find(asked) == [(OWNER, location)], asked
            snapshot_id, total = await cache.snapshot(OWNER, None, None, OWNER)
            page = await cache.page(snapshot_id, 0, 10)
            assert page and total == 4 and page[1:] == (4, 4)
            listed = sorted((loc["id"], loc["name"]) for loc in map(json.loads, page[0]))
            assert listed == [("LOC2", "newer"), ("loc1", "only"), ("loc3", "newer"), ("loc4", "newer")]
            assert (await cache.snapshot(None, None, None, ("NL", "OTH")))[1] == 3  # LOC3 is unpublished now
            assert await client.get(f"{p}publish-to:NL/CPO/LOC3") == publish_entries(allowed_to).encode()
        members, keys = await _members_and_keys(client, prefix)
        assert members == {f"NL/CPO/LOC{n}" for n in range(1, 5)}, members
        named = [key.split(":", 1)[1] for key in keys if key.startswith(("doc:", "publish-to:", "id:"))]
        assert [name for name in named if name != name.upper()] == [], named
        assert "ids-indexed-upper-cased" not in keys  # the last version's marker: no hub reads it any more

    _run(services, test)


def test_locations_a_hub_before_the_id_index_cached_are_found_in_any_case_once_a_hub_has_started(
    services: Services,
) -> None:
    indexed_as_sent, unindexed = (_location(OWNER, "loc1", "2026-11-01T00:00:00Z"),
                                  _location(OWNER, "Loc2", "2026-11-01T00:00:00Z"))  # fmt: skip

    async def test(client: redis.Redis, prefix: str) -> None:
        async with client.pipeline(transaction=False) as old_hub:
            _as_an_earlier_hub_cached(old_hub, prefix, indexed_as_sent, "loc1")
            _as_an_earlier_hub_cached(old_hub, prefix, unindexed)
            await old_hub.execute()
        cache = LocationCache(client, prefix)
        async with cache.updating():
            await _until_upgraded(client, prefix)
            for asked, location in (("LOC1", indexed_as_sent), ("loc1", indexed_as_sent), ("lOC2", unindexed)):
                assert await cache.find(asked) == [(OWNER, location)], asked
            # an id the cache does not hold costs one lookup, not a scan of Redis's keyspace (asked as a user who may
            # not scan: a count of SCANs would count those of the other clients of a shared Redis as well)
            async with _may_not_scan(services.redis_url, client) as reader:
                for n in range(5):
                    assert await LocationCache(reader, prefix).find(f"LOC3-{n}") == []
            assert await cache.location_ids(OWNER) == {"LOC1", "LOC2"}
            assert await cache.forget(OWNER, {"LOC1", "LOC2"}) == 2  # as a full sync forgets them
            assert await cache.find("LOC1") == [] and await cache.find("loc2") == []
        members, keys = await _members_and_keys(client, prefix)
        assert (members, sorted(keys)) == (set(), sorted(f"upgraded:{name}" for name in PASSES))

    _run(services, test)


def test_a_store_after_the_upgrade_neither_reads_nor_drops_another_spelling_of_its_id(services: Services) -> None:
    legacy = _location(OWNER, "loc1", "2026-11-01T00:00:00Z", name="legacy")

    async def test(client: redis.Redis, prefix: str) -> None:
        p, cache = f"{prefix}locations:", LocationCache(client, prefix)
        assert await upgrade(client, prefix) == PASSES  # an empty cache: done at once
        # A member spelled as a hub before upper-cased ids did, put there after the upgrade: no hub of this version
        # writes one, so a store goes by the upper-cased key alone, with no forget of the other spelling.
        async with client.pipeline(transaction=False) as old_hub:
            _as_an_earlier_hub_cached(old_hub, prefix, legacy, "loc1")
            await old_hub.execute()
        patch = {"name": "patched", "last_updated": "2026-11-02T00:00:00Z"}
        assert await cache.apply([(OWNER, 0, "PATCH", ["loc1"], json.dumps(patch).encode())]) == 0  # not cached as LOC1
        put = _location(OWNER, "loc1", "2026-11-03T00:00:00Z", name="put")
        assert await cache.apply([(OWNER, 0, "PUT", ["loc1"], json.dumps(put).encode())]) == 1
        assert await client.zrange(f"{p}by-owner:NL/CPO", 0, -1) == [b"NL/CPO/loc1", b"NL/CPO/LOC1"]
        assert json.loads(await client.get(f"{p}doc:NL/CPO/loc1"))["name"] == "legacy"
        assert await cache.find("LOC1") == [(OWNER, put)]

    _run(services, test)


def test_each_upgrade_pass_runs_once_per_cache_and_one_that_failed_runs_again_at_the_next_start(
    services: Services,
) -> None:
    allowed_to = [{"uid": "CARD1", "type": "RFID"}]

    async def as_earlier_hubs_cached(client: redis.Redis, prefix: str, hidden_id: str, lower_id: str) -> None:
        """One unpublished location as a hub before entries kept it (a set of its token uids), one keyed as sent."""
        hidden = _location(OWNER, hidden_id, "2026-11-01T00:00:00Z", publish=False, publish_allowed_to=allowed_to)
        async with client.pipeline(transaction=False) as old_hub:
            _as_an_earlier_hub_cached(old_hub, prefix, hidden, entries=False)
            _as_an_earlier_hub_cached(old_hub, prefix, _location(OWNER, lower_id, "2026-11-01T00:00:00Z"), lower_id)
            await old_hub.execute()

    async def test(client: redis.Redis, prefix: str) -> None:
        p = f"{prefix}locations:"
        await client.set(f"{p}hidden", "not a set")  # the first pass fails: WRONGTYPE
        assert await upgrade(client, prefix) == []
        assert [key async for key in client.scan_iter(f"{p}upgraded:*")] == []  # the second waited for it
        await client.delete(f"{p}hidden")
        await as_earlier_hubs_cached(client, prefix, "L1", "loc2")
        assert await upgrade(client, prefix) == PASSES
        assert await client.get(f"{p}publish-to:NL/CPO/L1") == publish_entries(allowed_to).encode()
        assert not await client.exists(f"{p}allowed:NL/CPO/L1")
        assert await client.zrange(f"{p}all", 0, -1) == [b"NL/CPO/L1", b"NL/CPO/LOC2"]
        # Written since by a hub of an earlier version (a rolling upgrade): a later start leaves them as they are.
        await as_earlier_hubs_cached(client, prefix, "L3", "loc4")
        assert await upgrade(client, prefix) == []
        assert not await client.exists(f"{p}publish-to:NL/CPO/L3")
        assert await client.exists(f"{p}allowed:NL/CPO/L3")
        assert await client.zscore(f"{p}all", "NL/CPO/loc4") is not None

    _run(services, test)


def test_a_pass_logs_what_it_changed_and_a_fresh_cache_logs_no_pass(services: Services) -> None:
    # A fresh start logged location_cache_upgraded four times with locations 0, as if something had been upgraded.
    async def test(client: redis.Redis, prefix: str) -> None:
        with structlog.testing.capture_logs() as fresh:
            assert await upgrade(client, prefix) == PASSES
        assert [line for line in fresh if line["event"] == "location_cache_upgraded"] == []
        await client.delete(*(f"{prefix}locations:upgraded:{name}" for name in PASSES))
        async with client.pipeline(transaction=False) as old_hub:
            _as_an_earlier_hub_cached(old_hub, prefix, _location(OWNER, "loc1", "2026-11-01T00:00:00Z"), "loc1")
            await old_hub.execute()
        with structlog.testing.capture_logs() as upgraded:
            assert await upgrade(client, prefix) == PASSES
        logged = [
            (line["upgrade"], line["locations"]) for line in upgraded if line["event"] == "location_cache_upgraded"
        ]
        assert logged == [("upper-cased-ids", 1), ("location-bytes", 1), ("get-all-order", 1)], logged

    _run(services, test)


def test_hub_processes_starting_at_once_upgrade_one_cache_together(services: Services) -> None:
    n = 1500  # in both spellings: several chunks of the pass, for each process

    def legacy(i: int) -> dict:
        return _location(OWNER, f"loc{i}", f"2026-11-0{1 + 4 * (i % 2)}T00:00:00Z", name="legacy")

    def now(i: int) -> dict:
        return _location(OWNER, f"LOC{i}", "2026-11-03T00:00:00Z", name="now")

    async def test(client: redis.Redis, prefix: str) -> None:
        async with client.pipeline(transaction=False) as old_hub:
            for i in range(n):
                _as_an_earlier_hub_cached(old_hub, prefix, legacy(i), f"loc{i}", f"LOC{i}")
            await old_hub.execute()
        await _cached_as_now(client, prefix, *(now(i) for i in range(n)))
        others = [redis.Redis.from_url(services.redis_url) for _ in range(2)]
        try:
            await asyncio.gather(*(upgrade(each, prefix) for each in (client, *others)))
        finally:
            for other in others:
                await other.aclose()
        members, keys = await _members_and_keys(client, prefix)
        assert members == {f"NL/CPO/LOC{i}" for i in range(n)}
        assert len([key for key in keys if key.startswith("doc:")]) == n
        cache = LocationCache(client, prefix)
        for i in range(0, n, 97):
            assert await cache.find(f"Loc{i}") == [(OWNER, legacy(i) if i % 2 else now(i))], i  # the newer

    _run(services, test)


def test_the_bytes_of_each_cpos_documents_a_hub_before_the_cap_of_bytes_cached_are_counted_once_at_start(
    services: Services,
) -> None:
    other = ("DE", "CPO")
    mine = [_location(OWNER, f"L{n}", "2026-11-01T00:00:00Z", name="x" * (100 * n)) for n in range(3)]
    theirs = _location(other, "L1", "2026-11-01T00:00:00Z")

    async def test(client: redis.Redis, prefix: str) -> None:
        p = f"{prefix}locations:"
        await _cached_as_now(client, prefix, *mine)
        await LocationCache(client, prefix).put_many(other, 0, [msgspec.Raw(json.dumps(theirs).encode())])
        await client.delete(f"{p}bytes")  # as a hub before the cap of bytes left it: no count
        await client.hset(f"{p}bytes", "NL/CPO", 7)  # and what a store since added: replaced by the count
        assert await upgrade(client, prefix) == PASSES
        assert await client.hgetall(f"{p}bytes") == {
            b"NL/CPO": str(sum(len(json.dumps(loc)) for loc in mine)).encode(),
            b"DE/CPO": str(len(json.dumps(theirs))).encode(),
        }
        # kept since by the store and forget scripts, in the same call as the document
        cache = LocationCache(client, prefix)
        await cache.forget(OWNER, {"L0", "L1"})
        sizes = [len(json.dumps(mine[2])), len(json.dumps(theirs))]
        assert await cache.cached_counts([OWNER, other]) == [(1, sizes[0]), (1, sizes[1])]

    _run(services, test)


def test_bytes_counted_by_one_hub_stay_right_as_another_starting_with_it_moves_a_location_to_its_upper_cased_id(
    services: Services,
) -> None:
    """Processes starting at once: one counted the bytes (location-bytes) while another still moves locations keyed as
    sent (upper-cased-ids), dropping the older of two spellings."""
    older, newer = (_location(OWNER, "loc1", "2026-11-01T00:00:00Z", name="o" * 300),
                    _location(OWNER, "LOC1", "2026-11-02T00:00:00Z", name="n" * 100))  # fmt: skip
    moved = _location(OWNER, "loc2", "2026-11-02T00:00:00Z", name="m" * 200)

    async def test(client: redis.Redis, prefix: str) -> None:
        p = f"{prefix}locations:"
        async with client.pipeline(transaction=False) as old_hub:
            for location in (older, newer, moved):
                _as_an_earlier_hub_cached(old_hub, prefix, location, location["id"])
            await old_hub.execute()
        await _count_bytes(client, p)  # the one ahead
        await _upper_case(client, p)  # the one behind
        assert await client.hget(f"{p}bytes", "NL/CPO") == str(len(json.dumps(newer)) + len(json.dumps(moved))).encode()

    _run(services, test)


def test_get_all_lists_a_cache_a_hub_before_its_order_kept_by_last_updated_until_the_upgrade_places_each(
    services: Services,
) -> None:
    # A hub before GET All's order (storage.location_writer.order_key) kept none: until the upgrade places its
    # locations, GET All lists them all by last_updated, as it did, never short of those without a place.
    t = [f"2026-11-0{n}T00:00:00Z" for n in range(1, 7)]
    earlier = [_location(OWNER, "A", t[2]), _location(OWNER, "B", t[0]), _location(OWNER, "C", t[1])]

    async def test(client: redis.Redis, prefix: str) -> None:
        cache = LocationCache(client, prefix)

        async def listed(owner: tuple[str, str] | None = OWNER, date_from: str | None = None) -> list[str]:
            snapshot_id, total = await cache.snapshot(owner, date_from and epoch(date_from), None, OWNER)
            found = await cache.page(snapshot_id, 0, 10)
            ids = [json.loads(doc)["id"] for doc in found[0]] if found else []
            assert len(ids) == total
            return ids

        async with client.pipeline(transaction=False) as old_hub:
            for location in earlier:
                _as_an_earlier_hub_cached(old_hub, prefix, location, location["id"])
            await old_hub.execute()
        assert await listed() == ["B", "C", "A"]
        patch = json.dumps({"name": "patched", "last_updated": t[3]}).encode()
        assert await cache.apply([(OWNER, 0, "PATCH", ["B"], patch)]) == 1  # B has a place now, the others none yet
        assert await listed() == ["C", "A", "B"] and await listed(None) == ["C", "A", "B"]
        assert await upgrade(client, prefix) == PASSES
        assert await listed() == ["B", "C", "A"]  # the others after B, by last_updated
        await _cached_as_now(client, prefix, _location(OWNER, "C", t[4]), _location(OWNER, "D", t[0]))
        assert await listed() == ["B", "C", "A", "D"] and await listed(None) == ["B", "C", "A", "D"]
        assert await listed(date_from=t[2]) == ["B", "C", "A"]  # date_from still by last_updated (inclusive)
        async with client.pipeline(transaction=False) as old_hub:  # one of the earlier version still running
            _as_an_earlier_hub_cached(old_hub, prefix, _location(OWNER, "E", t[5]), "E")
            await old_hub.execute()
        assert await listed() == ["D", "A", "B", "C", "E"]  # E has no place: by last_updated meanwhile, none left out
        await _cached_as_now(client, prefix, _location(OWNER, "E", t[5]))
        assert await listed() == ["B", "C", "A", "D", "E"]

    _run(services, test)
