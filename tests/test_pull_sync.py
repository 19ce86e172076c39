"""Pull sync: the hub fills its location cache from each CPO's Sender, page by page, then incrementally."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import secrets
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import msgspec
import pytest
import redis
import redis.asyncio as aioredis

from hub.ocpi.relayed_urls import MAX_NEXT_URL_CHARS
from hub.party_client import PartyClient
from hub.settings import Settings
from routing.pull_sync import LEFT_THE_HUB, PullSync, SyncResult
from storage.directory import DirectoryCache
from storage.location_cache import LocationCache
from storage.secrets import TokenBox
from tests.conftest import ROOT, Hub, Services
from tests.hub_storage import hub_storage, registered_platform, registration_after_the_first_chunk
from tests.parties import token_header
from tests.test_departed_party import CLEANED_WITHIN_S, _cleaned, _leave, _take_off
from tests.test_location_cache import _eventually
from tests.test_routing import _roles, party_key

HUB = ("NL", "HUB")


def _locations(owner, count: int, updated: str) -> list[dict]:  # type: ignore[no-untyped-def]
    return [{"country_code": owner[0], "party_id": owner[1], "id": f"S{n:04d}", "publish": True,
             "last_updated": updated} for n in range(count)]  # fmt: skip


def _cached_total(reader, hub: Hub, owner) -> int:  # type: ignore[no-untyped-def]
    """How many of the CPO's locations the hub's cache holds, as the admin API counts them: a GET All via the hub of a
    CPO not synced yet is the CPO's own answer (hub.ocpi.hub_answers), not the cache's."""
    with hub.admin() as admin:
        items = admin.get("/admin/api/parties").json()["items"]
    return next((p["locations_cached"] or 0 for p in items if (p["country_code"], p["party_id"]) == owner
                 and p["role"] == "CPO"), 0)  # fmt: skip


def _registered_cpo(hub: Hub, start_party, locations, **options):  # type: ignore[no-untyped-def]
    """A CPO party whose Sender lists locations(its own party), invited and registered at the hub, which then pulls
    them; (the party, its country code and party id)."""
    roles = _roles("CPO")
    cpo = start_party(roles, **options)
    owner = party_key(cpo)
    cpo.objects["locations"] = locations(owner)
    cpo.register_at(hub.versions_url, hub.invite(cpo.name, roles)["token_a"])
    return cpo, owner


def _wait(condition, timeout: float = 15.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)
    return found


def test_a_new_cpo_is_pulled_across_every_page_then_synced_incrementally(
    hub: Hub, start_party, connect_party, db
) -> None:
    reader = connect_party(_roles("EMSP"))
    cpo, owner = _registered_cpo(hub, start_party, lambda me: _locations(me, 300, "2026-11-01T00:00:00Z"),
                                 page_size=50)  # fmt: skip
    _wait(lambda: _cached_total(reader, hub, owner) == 300)
    first = cpo.syncs()
    assert len(first) == 6 and [r.query for r in first][1:] == [f"offset={n}&limit=50" for n in range(50, 300, 50)]
    assert all(r.headers["OCPI-to-party-id"] == owner[1] for r in first)
    rows = db.run(db.fetch("SELECT path, query, object_id, correlation_id FROM routing_log WHERE to_party_id = $1 "
                           "AND routing = 'hub' AND module = 'locations' ORDER BY id", owner[1]))  # fmt: skip
    assert [r["query"] for r in rows] == [r.query for r in first]  # one row per page, the party's URL as called
    assert {r["path"] for r in rows} == {f"{cpo.base}/ocpi/2.2.1/locations/sender"}
    assert {r["object_id"] for r in rows} == {None} and len({r["correlation_id"] for r in rows}) == 1
    # Incremental: only what changed since the last sync is asked for, and it lands in the cache.
    fresh = (datetime.now(UTC) + timedelta(seconds=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    cpo.objects["locations"].append(_locations(owner, 301, fresh)[-1])
    result = subprocess.run([sys.executable, "-m", "hub.cli", "sync", "locations", "--party", "-".join(owner)],
                            env=hub.env, cwd=ROOT, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    [summary] = json.loads(result.stdout)
    assert summary == {"party": "-".join(owner), "locations": 1, "pages": 1, "full": False, "removed": 0,
                       "refused": 0, "error": None}  # fmt: skip
    assert "locations" in result.stderr  # the progress line
    for line in result.stderr.splitlines():  # each on a line of its own, never in front of a JSON log line
        assert (line.startswith("{") and json.loads(line)) or line == f"{'-'.join(owner)}: 1/1 locations", line
    assert cpo.syncs()[-1].query.startswith("date_from=")
    assert _cached_total(reader, hub, owner) == 301


def test_pulled_locations_are_cached_as_the_cpo_listed_them_without_foreign_or_undated_ones(
    hub: Hub, start_party, connect_party
) -> None:
    reader = connect_party(_roles("EMSP"))
    roles = _roles("CPO")
    cpo = start_party(roles)
    owner = party_key(cpo)
    listed = _locations(owner, 2, "2026-11-01T00:00:00Z")
    foreign = _locations(("DE", "ZZZ"), 1, "2026-11-01T00:00:00Z")[0] | {"id": "FOREIGN"}
    undated = {k: v for k, v in listed[0].items() if k != "last_updated"} | {"id": "UNDATED"}
    cpo.objects["locations"] = [*listed, foreign, undated]
    cpo.register_at(hub.versions_url, hub.invite(cpo.name, roles)["token_a"])
    _wait(lambda: _cached_total(reader, hub, owner) == 2)
    page = reader.call(hub.base, "GET", f"sender/locations?country_code={owner[0]}&party_id={owner[1]}", to=HUB)
    assert [loc["id"] for loc in page.json()["data"]] == ["S0000", "S0001"]
    # the test party writes JSON with spaces (json.dumps): the hub serves those bytes, not its own encoding
    assert json.dumps(listed[0]).encode() in page.content


def test_a_full_sync_drops_the_cached_locations_the_cpo_no_longer_lists(
    hub: Hub, services: Services, start_party, connect_party
) -> None:
    # mod_locations.asciidoc: all the pages together are "the new truth"; what is not in them is no longer valid
    reader = connect_party(_roles("EMSP"))

    def listed(me: tuple[str, str]) -> list[dict]:
        locations = _locations(me, 5, "2026-11-01T00:00:00Z")
        for location in locations:  # ids of its own: a GET by id alone is refused when several CPOs have it
            location["id"] = f"{me[1]}-{location['id']}"
        locations[3]["publish"] = False  # in the unpublished index too
        return locations

    cpo, owner = _registered_cpo(hub, start_party, listed)
    _wait(lambda: _cached_total(reader, hub, owner) == 5)  # S0003 too, which is not shown to the reader
    gone = (f"{owner[1]}-S0001", f"{owner[1]}-S0003")
    cpo.objects["locations"] = [loc for loc in cpo.objects["locations"] if loc["id"] not in gone]
    # An incremental sync cannot tell what went: it keeps everything.
    sync = [sys.executable, "-m", "hub.cli", "sync", "locations", "--party", "-".join(owner)]
    result = subprocess.run(sync, env=hub.env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and json.loads(result.stdout)[0]["removed"] == 0, result.stderr
    assert _cached_total(reader, hub, owner) == 5
    result = subprocess.run([*sync, "--full"], env=hub.env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)[0] | {"pages": 0} == {"party": "-".join(owner), "locations": 3, "pages": 0,
                                                          "full": True, "removed": 2, "refused": 0,
                                                          "error": None}  # fmt: skip
    page = reader.call(hub.base, "GET", f"sender/locations?country_code={owner[0]}&party_id={owner[1]}", to=HUB)
    assert [loc["id"] for loc in page.json()["data"]] == [f"{owner[1]}-S000{n}" for n in (0, 2, 4)]
    assert int(page.headers["X-Total-Count"]) == 3
    lost = reader.call(hub.base, "GET", f"sender/locations/{gone[0]}", to=HUB)
    assert lost.json()["status_code"] != 1000 and lost.json().get("data") is None, lost.text
    kept = reader.call(hub.base, "GET", f"sender/locations/{owner[1]}-S0002", to=HUB)
    assert kept.json()["status_code"] == 1000 and kept.json()["data"]["id"] == f"{owner[1]}-S0002"
    with contextlib.closing(redis.Redis.from_url(services.redis_url)) as client:  # no index entry is left behind
        members = [f"{owner[0]}/{owner[1]}/{location_id}" for location_id in gone]
        keys = [key.decode() for key in client.scan_iter(match=f"{services.redis_prefix}locations:*")]
        assert not [key for key in keys if any(location_id in key for location_id in gone)]
        sets = [key for key in keys if client.type(key) == b"set"]
        assert not [key for key in sets for member in members if client.sismember(key, member)]
        sorted_sets = [key for key in keys if client.type(key) == b"zset"]
        assert not [key for key in sorted_sets for member in members if client.zscore(key, member) is not None]


def test_a_cpo_that_leaves_the_hub_is_no_longer_offered_and_comes_back_with_a_full_sync(
    hub: Hub, start_party, connect_party
) -> None:
    reader = connect_party(_roles("EMSP"))
    cpo, owner = _registered_cpo(hub, start_party, lambda me: _locations(me, 3, "2026-11-01T00:00:00Z"))
    _wait(lambda: _cached_total(reader, hub, owner) == 3)
    left = httpx.delete(f"{hub.base}/ocpi/2.2.1/credentials", headers=token_header(cpo.hub_token or ""))
    assert left.json()["status_code"] == 1000, left.text
    assert _cached_total(reader, hub, owner) == 0
    # Invited again (its party id is free), it registers anew: its first sync is a full one, not "since" its last.
    syncs_before = len(cpo.syncs())
    cpo.register_at(hub.versions_url, hub.invite(cpo.name, *cpo.roles)["token_a"])
    _wait(lambda: _cached_total(reader, hub, owner) == 3)
    assert [r.query for r in cpo.syncs()[syncs_before:]][:1] == [""]


def _sync_ended(hub: Hub, owner) -> dict | None:  # type: ignore[no-untyped-def]
    """The hub's log line saying the owner's sync ended, done or stopped; None while it runs."""
    events = ("location_sync_done", "location_sync_stopped")
    lines = [json.loads(line) for line in hub.log().splitlines() if any(event in line for event in events)]
    return next((line for line in lines if line.get("party") == f"{owner[0]}-{owner[1]}"), None)


def _cached_entries(client: redis.Redis, prefix: str, owner) -> list[str]:  # type: ignore[no-untyped-def]
    """Every key of the location cache, and every member of its sets and sorted sets, naming one of the owner's
    locations (members are "CC/PID/id")."""
    member = f"{owner[0]}/{owner[1]}/"
    found = []
    for key in (k.decode() for k in client.scan_iter(match=f"{prefix}locations:*")):
        kind = client.type(key)
        if member in key:
            found.append(key)
        elif kind == b"set":
            found += [f"{key} {m.decode()}" for m in client.sscan_iter(key, match=f"{member}*")]
        elif kind == b"zset":
            found += [f"{key} {m.decode()}" for m, _ in client.zscan_iter(key, match=f"{member}*")]
    return found


@pytest.mark.parametrize(
    "leave",
    [lambda cpo, hub: _leave(cpo, hub), lambda cpo, hub: _take_off(hub, party_key(cpo))],
    ids=["credentials_delete", "operator_takes_it_off"],
)
def test_a_cpo_that_leaves_during_its_sync_has_nothing_more_cached_and_is_not_marked_synced(
    hub: Hub, services: Services, start_party, connect_party, leave
) -> None:
    reader = connect_party(_roles("EMSP"))
    # 12 pages of 2, each answered 0.5 s late: a sync of 6 s, longer than the departed party's cleanup takes to begin
    # (about 4 s after the departure at the test hub), so a page stored after it would stay for ever.
    cpo, owner = _registered_cpo(hub, start_party, lambda me: _locations(me, 24, "2026-11-01T00:00:00Z"),
                                 page_size=2, delay_s=0.5)  # fmt: skip
    _wait(lambda: len(cpo.syncs()) >= 2 and _cached_total(reader, hub, owner) == 2, 30)  # page 2 asked for
    leave(cpo, hub)
    ended = _wait(lambda: _sync_ended(hub, owner), 30)
    assert _cached_total(reader, hub, owner) == 0
    with contextlib.closing(redis.Redis.from_url(services.redis_url)) as client:
        assert _cached_entries(client, services.redis_prefix, owner) == []
        assert client.get(f"{services.redis_prefix}locations:synced:{owner[0]}/{owner[1]}") is None
    assert len(cpo.syncs()) < 12  # it stopped asking, too
    assert ended["event"] == "location_sync_stopped" and ended["reason"] == "the party left the hub", ended


def test_a_cli_sync_of_a_cpo_that_left_meanwhile_brings_nothing_back_after_its_cleanup(
    hub: Hub, services: Services, start_party, connect_party
) -> None:
    reader = connect_party(_roles("EMSP"))
    answering = threading.Event()
    answering.set()
    cpo, owner = _registered_cpo(hub, start_party, lambda me: _locations(me, 4, "2026-11-01T00:00:00Z"), page_size=2,
                                 held=answering)  # fmt: skip
    _wait(lambda: _cached_total(reader, hub, owner) == 4 and _sync_ended(hub, owner), 30)  # the hub's own sync
    answering.clear()  # the CPO's Sender holds its next answers
    syncs_before = len(cpo.syncs())
    # a forward timeout of 60 s: the CLI waits for the held page as long as the test needs
    command = [sys.executable, "-m", "hub.cli", "sync", "locations", "--party", "-".join(owner), "--full"]
    sync = subprocess.Popen(command, env=hub.env | {"OCPI_HUB_FORWARD_TIMEOUT_S": "60"}, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        _wait(lambda: len(cpo.syncs()) > syncs_before, 30)  # the CLI asked for the first page
        _leave(cpo, hub)
        _eventually(lambda: _cleaned(hub, owner), CLEANED_WITHIN_S)  # and the departed CPO's cleanup ran
    finally:
        answering.set()
        out, err = sync.communicate(timeout=60)
    assert sync.returncode == 1, err
    [summary] = json.loads(out)
    assert summary["error"] == LEFT_THE_HUB and summary["locations"] == 0, summary
    with contextlib.closing(redis.Redis.from_url(services.redis_url)) as client:
        assert _cached_entries(client, services.redis_prefix, owner) == []
        assert client.get(f"{services.redis_prefix}locations:synced:{owner[0]}/{owner[1]}") is None


def test_a_full_sync_ending_after_its_cpo_left_keeps_the_locations_of_the_platform_holding_its_party_id_now(
    hub: Hub, services: Services, start_party, connect_party
) -> None:
    reader = connect_party(_roles("EMSP"))
    roles = _roles("CPO")
    old = start_party(roles)
    owner = party_key(old)
    old.objects["locations"] = _locations(owner, 1, "2026-11-01T00:00:00Z")
    old.register_at(hub.versions_url, hub.invite(old.name, roles)["token_a"])
    _wait(lambda: _cached_total(reader, hub, owner) == 1)
    settings = Settings.from_env(hub.env)

    async def run() -> SyncResult:
        pool = await asyncpg.create_pool(services.database_url, min_size=1, max_size=2)
        client = aioredis.Redis.from_url(services.redis_url)
        try:
            # a sync process whose directory is the one from before the CPO left: one that has not reloaded yet (up to
            # PROPAGATION_S after a change), or whose check that the CPO is still there came just before it left
            directory = DirectoryCache(pool, client, services.redis_prefix, TokenBox(settings.secret_key or ""))
            await directory.reload()
            platform = directory.current.parties[owner]
            [role] = [each for each in platform.roles if each.key == owner]
            old.objects["locations"] = []  # the old platform no longer lists its location
            await asyncio.to_thread(_leave, old, hub)
            new = start_party(roles)  # a new platform registers the party id and has a location of that id
            new.objects["locations"] = _locations(owner, 1, "2026-11-02T00:00:00Z")
            await asyncio.to_thread(new.register_at, hub.versions_url, hub.invite(new.name, roles)["token_a"])
            await asyncio.to_thread(_wait, lambda: new.syncs() and _cached_total(reader, hub, owner) == 1)
            async with PartyClient(settings) as http:
                sync = PullSync(http, LocationCache(client, services.redis_prefix, directory), client,
                                services.redis_prefix, HUB, directory=lambda: directory.current)  # fmt: skip
                return await sync.sync_party(platform, role, full=True)
        finally:
            await client.aclose()
            await pool.close()

    result = asyncio.run(asyncio.wait_for(run(), 60))
    assert result.error == LEFT_THE_HUB and result.removed == 0, result
    page = reader.call(hub.base, "GET", f"sender/locations?country_code={owner[0]}&party_id={owner[1]}", to=HUB)
    assert [loc["last_updated"] for loc in page.json()["data"]] == ["2026-11-02T00:00:00Z"]  # the new platform's


def test_a_round_set_further_away_than_the_interval_is_due_one_interval_from_now(services: Services) -> None:
    # An operator shortens OCPI_HUB_SYNC_INTERVAL_S from an hour to a second: the round the old interval set an hour
    # away is due a second from now, not in an hour; so is one Redis holds as no time the hub could have set.
    prefix = f"{services.redis_prefix}interval-{secrets.token_hex(4)}:"

    async def run() -> list[tuple[str, list[bool]]]:
        client = aioredis.Redis.from_url(services.redis_url)
        key, seen = f"{prefix}locations:next-round", []
        try:
            sync = PullSync(None, LocationCache(client, prefix), client, prefix, HUB)  # type: ignore[arg-type]
            for case, stored in [("an hour away", repr(time.time() + 3600)), ("NaN", "nan"), ("none", None)]:
                if stored is not None:
                    await client.set(key, stored)
                else:
                    await client.delete(key)
                checks = [await sync.round_due(1.0), await sync.round_due(1.0)]
                await asyncio.sleep(1.1)
                seen.append((case, [*checks, await sync.round_due(1.0)]))
        finally:
            await client.delete(key)
            await client.aclose()
        return seen

    assert asyncio.run(run()) == [(case, [False, False, True]) for case in ("an hour away", "NaN", "none")]


def test_the_cache_is_rebuilt_after_redis_lost_it(hub: Hub, services: Services, start_party, connect_party) -> None:
    reader = connect_party(_roles("EMSP"))
    cpo, owner = _registered_cpo(hub, start_party, lambda me: _locations(me, 12, "2026-11-02T00:00:00Z"))
    _wait(lambda: _cached_total(reader, hub, owner) == 12)
    syncs_before = len(cpo.syncs())
    client = redis.Redis.from_url(services.redis_url)
    for key in client.scan_iter(match=f"{services.redis_prefix}locations:*"):
        client.delete(key)
    client.close()
    # Not "the cache is empty now": a sync check (every 0.5 s here) may rebuild it before a GET could look.
    _wait(lambda: len(cpo.syncs()) > syncs_before and _cached_total(reader, hub, owner) == 12)
    assert "location_sync_needed" in hub.log()


def test_a_failing_cpo_sender_is_logged_and_not_hammered(hub: Hub, start_party, connect_party, db) -> None:
    roles = _roles("CPO")
    cpo = start_party(roles)
    owner = party_key(cpo)
    cpo.canned[("GET", "/ocpi/2.2.1/locations/sender")] = (500, b"<html>down</html>", {})
    cpo.register_at(hub.versions_url, hub.invite(cpo.name, roles)["token_a"])
    _wait(lambda: cpo.syncs())
    time.sleep(2)  # several sync checks later
    assert len(cpo.syncs()) == 1
    rows = db.run(db.fetch("SELECT routing, http_status, module FROM routing_log WHERE to_party_id = $1 "
                           "AND routing = 'hub' AND module = 'locations'", owner[1]))  # fmt: skip
    assert [(r["routing"], r["http_status"]) for r in rows] == [("hub", 500)]
    # The operator's log line says why, as the routing-log row does: not only that it failed.
    [failed] = [json.loads(line) for line in hub.log().splitlines()
                if "location_sync_failed" in line and f'"{owner[0]}-{owner[1]}"' in line]  # fmt: skip
    assert failed["reason"].startswith("HTTP 500, DecodeError: "), failed


def test_a_cpo_page_larger_than_the_hub_reads_is_logged_not_held(hub: Hub, start_party, db) -> None:
    # 10 kB of gzip that httpx would inflate to 10 MB, more than the test hub reads (OCPI_HUB_MAX_BODY_BYTES).
    roles = _roles("CPO")
    cpo = start_party(roles)
    owner = party_key(cpo)
    page = b'{"data": [], "status_code": 1000, "note": "' + b"x" * 10_000_000 + b'"}'
    cpo.canned[("GET", "/ocpi/2.2.1/locations/sender")] = (200, gzip.compress(page), {"Content-Encoding": "gzip"})
    cpo.register_at(hub.versions_url, hub.invite(cpo.name, roles)["token_a"])
    _wait(lambda: cpo.syncs())
    query = "SELECT error FROM routing_log WHERE to_party_id = $1 AND routing = 'hub' AND module = 'locations'"
    _wait(lambda: db.run(db.fetch(query, owner[1])))
    [row] = db.run(db.fetch(query, owner[1]))
    assert "AnswerTooLarge" in row["error"] and "larger than 10000000 bytes" in row["error"]


def test_a_cpo_page_whose_link_leads_off_the_cpos_hosts_ends_the_sync_as_failed_not_followed(
    hub: Hub, start_party, db
) -> None:
    # Followed, it had the hub fetch any URL with the CPO's token B (its own /metrics, a service behind it) and cache
    # what came back; taken as the last page instead, a full sync would drop every location past it.
    roles = _roles("CPO")
    cpo = start_party(roles)
    owner = party_key(cpo)
    page = json.dumps({"data": _locations(owner, 2, "2026-11-25T10:00:00Z"), "status_code": 1000}).encode()
    link = f'<{hub.base}/metrics>; rel="next"'
    cpo.canned[("GET", "/ocpi/2.2.1/locations/sender")] = (200, page, {"Link": link, "X-Total-Count": "5"})
    cpo.register_at(hub.versions_url, hub.invite(cpo.name, roles)["token_a"])
    query = "SELECT error FROM routing_log WHERE to_party_id = $1 AND routing = 'hub' AND module = 'locations'"
    [row] = _wait(lambda: db.run(db.fetch(query, owner[1])))
    assert (
        row["error"] == f"its Link to the next page is not followed: '{hub.base}/metrics': it is at the hub's own host"
    )
    assert len(cpo.syncs()) == 1  # no second page asked of anyone


def test_a_cpo_page_with_a_total_count_too_long_for_a_number_is_still_cached(
    hub: Hub, start_party, connect_party
) -> None:
    # X-Total-Count only feeds the progress line; int() of 5,000 digits raised and ended the CPO's sync
    reader = connect_party(_roles("EMSP"))
    roles = _roles("CPO")
    cpo = start_party(roles)
    owner = party_key(cpo)
    page = json.dumps({"data": _locations(owner, 2, "2026-11-01T00:00:00Z"), "status_code": 1000,
                       "timestamp": "2026-11-01T00:00:00Z"}).encode()  # fmt: skip
    total = {"Content-Type": "application/json", "X-Total-Count": "9" * 5000}
    cpo.canned[("GET", "/ocpi/2.2.1/locations/sender")] = (200, page, total)
    cpo.register_at(hub.versions_url, hub.invite(cpo.name, roles)["token_a"])
    _wait(lambda: _cached_total(reader, hub, owner) == 2)
    assert "Traceback" not in hub.log()


def test_a_full_syncs_removal_counts_every_location_it_removed_when_the_directory_changed_midway(
    services: Services, empty_database: str
) -> None:
    # The removal goes a chunk of 1,000 at a time, each only while the directory is as read; a change between two
    # chunks (any platform registering) makes it read the directory again and go on with what is still cached.
    prefix = f"{services.redis_prefix}removed-{secrets.token_hex(3)}:"
    owner = ("NL", "RMV")

    async def remove_while_the_directory_changes() -> tuple[int | None, set[str]]:
        async with hub_storage(empty_database, services.redis_url) as storage:
            platform = await registered_platform(storage.conn, "cpo", owner)
            directory = DirectoryCache(storage.pool, storage.redis, prefix, TokenBox(TokenBox.generate_key()))
            await directory.reload()
            cache = LocationCache(storage.redis, prefix, directory)
            listed = [msgspec.Raw(json.dumps(loc).encode()) for loc in _locations(owner, 2500, "2026-11-01T00:00:00Z")]
            stored = (await cache.put_many(owner, platform, listed)).kept
            assert len(stored) == 2500
            chunks = registration_after_the_first_chunk(cache, storage.redis, prefix)
            removed = await cache.forget_unlisted(owner, platform, set(stored))
            assert chunks == [5]  # the first; the second, refused; then all three again, the first of them empty now
            return removed, await cache.location_ids(owner)

    removed, left = asyncio.run(asyncio.wait_for(remove_while_the_directory_changes(), 30))
    assert left == set() and removed == 2500


def test_a_cpos_next_page_url_as_long_as_the_hub_relays_is_followed_by_the_pull_sync_to_its_last_page(
    hub: Hub, start_party, connect_party
) -> None:
    # The hub relays a next page's URL of up to 65,536 characters (hub.ocpi.relayed_urls.MAX_NEXT_URL_CHARS) to an eMSP
    # paging the CPO; its own pull sync must follow one as long. The control plane's httpx reads an answer's head with
    # h11, whose own limit is 16 KiB: under it, a head longer than one 64 KiB read ended the sync as failed. httpcore
    # gives h11 100 KiB (encode/httpcore#647); this fails if an upgrade goes back to h11's.
    reader = connect_party(_roles("EMSP"))
    roles = _roles("CPO")
    cpo = start_party(roles)
    owner = party_key(cpo)
    sender, listed = "/ocpi/2.2.1/locations/sender", _locations(owner, 3, "2026-11-01T00:00:00Z")
    page2 = f"{cpo.base}{sender}/page2?cursor="
    page2 += "c" * (MAX_NEXT_URL_CHARS - len(page2))
    for n, (page, link) in enumerate({"": f'<{page2}>; rel="next"', "/page2": None}.items()):
        body = json.dumps({"data": listed[n * 2 : n * 2 + 2], "status_code": 1000}).encode()
        cpo.canned[("GET", f"{sender}{page}")] = (200, body, {"Link": link} if link else {})
    cpo.register_at(hub.versions_url, hub.invite(cpo.name, roles)["token_a"])
    _wait(lambda: _cached_total(reader, hub, owner) == 3)
    assert [(r.path, len(r.query)) for r in cpo.received if r.path.startswith(sender)] == [
        (sender, 0), (f"{sender}/page2", len(page2.partition("?")[2]))]  # fmt: skip
