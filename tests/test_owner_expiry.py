"""The owner index of sessions and reservations expires: kept per period, read over two, taken over on upgrade."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Callable, Iterator

import pytest
import redis as redis_sync
import redis.asyncio as redis

from storage.directory import DirectoryCache, announce_change
from storage.routing_state import RoutingState
from storage.secrets import TokenBox
from tests.conftest import OUTPUT, Hub, Services, hub_env, register_at_hub, start_hub, unique_party_id
from tests.hub_storage import hub_storage, registered_platform
from tests.parties import Party

PERIOD_S = 3.0  # the test hub's OCPI_HUB_OWNER_INDEX_PERIOD_S: long enough for a few requests at a period's start


@pytest.fixture(scope="module")
def short_period_hub(services: Services, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    env = hub_env(services, tmp_path_factory.mktemp("hub-owner-expiry"), OCPI_HUB_OWNER_INDEX_PERIOD_S=str(PERIOD_S))
    running = start_hub(env, OUTPUT / "hub-owner-expiry.log")
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def connect(short_period_hub: Hub, start_party: Callable[..., Party]) -> Callable[[str], Party]:
    return lambda role: register_at_hub(short_period_hub, start_party, (role, "NL", unique_party_id()))


def key_of(party: Party) -> tuple[str, str]:
    return (party.roles[0][1], party.roles[0][2])


def period_start(period_s: float) -> float:
    """Seconds to sleep until a new period has begun, with a margin for the clocks' reading."""
    return period_s - time.time() % period_s + 0.2


async def until_gone(client: redis.Redis, *patterns: str) -> None:
    """A hub takes the old hash over in the background, right after it starts: wait until no key matches."""
    deadline = time.monotonic() + 5
    while left := [key for pattern in patterns async for key in client.scan_iter(pattern)]:
        assert time.monotonic() < deadline, f"still there: {left}"
        await asyncio.sleep(0.01)


def test_an_open_session_patch_finds_its_emsp_in_the_next_period_and_not_once_unseen_for_two(
    short_period_hub: Hub, connect: Callable[[str], Party]
) -> None:
    cpo, emsp = connect("CPO"), connect("EMSP")
    cc, pid = key_of(cpo)
    patched, unseen = f"S-{secrets.token_hex(4)}", f"S-{secrets.token_hex(4)}"

    def patch(session_id: str) -> int:
        answer = cpo.call(
            short_period_hub.base,
            "PATCH",
            f"receiver/sessions/{cc}/{pid}/{session_id}",
            body={"kwh": 1, "last_updated": "2026-11-25T10:00:00Z"},
        )
        return answer.json()["status_code"]

    time.sleep(period_start(PERIOD_S))
    for session_id in (patched, unseen):
        put = cpo.call(short_period_hub.base, "PUT", f"receiver/sessions/{cc}/{pid}/{session_id}", to=key_of(emsp),
                       body={"id": session_id, "country_code": cc, "party_id": pid})  # fmt: skip
        assert put.json()["status_code"] == 1000, put.text
    time.sleep(period_start(PERIOD_S))
    assert patch(patched) == 1000  # its owner is in the previous period's hash; this PATCH notes it again
    time.sleep(period_start(PERIOD_S))
    assert patch(patched) == 1000
    assert patch(unseen) == 4001  # last seen two periods ago: forgotten, not guessed
    assert [(r.method, r.path.rsplit("/", 1)[1]) for r in emsp.functional()] == [
        ("PUT", patched), ("PUT", unseen), ("PATCH", patched), ("PATCH", patched)
    ]  # fmt: skip


def test_a_session_id_two_cpos_pushed_in_consecutive_periods_is_ambiguous_until_the_first_is_forgotten(
    short_period_hub: Hub, connect: Callable[[str], Party]
) -> None:
    first, second, emsp = connect("CPO"), connect("CPO"), connect("EMSP")
    session_id = f"S-{secrets.token_hex(4)}"

    def push(cpo: Party) -> None:
        cc, pid = key_of(cpo)
        put = cpo.call(short_period_hub.base, "PUT", f"receiver/sessions/{cc}/{pid}/{session_id}", to=key_of(emsp),
                       body={"id": session_id, "country_code": cc, "party_id": pid})  # fmt: skip
        assert put.json()["status_code"] == 1000, put.text

    def stop_session() -> dict:
        body = {"response_url": f"{emsp.base}/cmd/1", "session_id": session_id}
        return emsp.call(short_period_hub.base, "POST", "receiver/commands/STOP_SESSION", body=body).json()

    time.sleep(period_start(PERIOD_S))
    push(first)
    time.sleep(period_start(PERIOD_S))
    push(second)
    time.sleep(0.2)  # the owner index is written in batches
    refused = stop_session()
    assert refused["status_code"] == 4001, refused
    assert f"session {session_id} belongs to several parties" in refused["status_message"]
    time.sleep(period_start(PERIOD_S))
    assert stop_session()["status_code"] == 1000  # the first CPO's push is two periods old: the second's alone
    assert [r.path for r in second.functional() if "commands" in r.path] == [
        "/ocpi/2.2.1/commands/receiver/STOP_SESSION"
    ]
    assert [r.path for r in first.functional() if "commands" in r.path] == []


def test_an_owner_unseen_for_two_periods_is_forgotten_and_its_hash_expires(services: Services) -> None:
    period_s = 1.0
    prefix = f"{services.redis_prefix}owners-{secrets.token_hex(4)}:"

    async def run() -> None:
        client = redis.Redis.from_url(services.redis_url)
        try:
            async with RoutingState(client, prefix, owners_period_s=period_s).running(interval_s=0.01) as state:
                await asyncio.sleep(period_start(period_s))
                period = int(time.time() // period_s)
                state.note_owner("reservations", "R1", ("NL", "CPO"), ())
                state.note_owner("locations", "L1", ("NL", "CPO"), ())
                await asyncio.sleep(0.1)
                assert await state.owners("reservations", "R1") == [("NL", "CPO")]
                assert 0 < await client.pttl(f"{prefix}owners:reservations:{period}") <= 3 * period_s * 1000
                assert await client.pttl(f"{prefix}owners:locations") == -1  # locations and tokens are kept
                await asyncio.sleep(period_start(period_s))
                assert await state.owners("reservations", "R1") == [("NL", "CPO")]  # the previous period's
                await asyncio.sleep(period_start(period_s))
                assert await state.owners("reservations", "R1") == []
                assert not await client.exists(f"{prefix}owners:reservations:{period}")  # unlinked, not left to EXPIRE
                assert await state.owner("locations", "L1") == ("NL", "CPO")
        finally:
            await client.aclose()

    asyncio.run(run())


def test_the_owner_hash_of_a_hub_without_periods_is_taken_over_by_one_of_two_hubs_starting_at_once(
    services: Services,
) -> None:
    prefix = f"{services.redis_prefix}owners-{secrets.token_hex(4)}:"
    period_s = 3600.0
    old_hub = redis_sync.Redis.from_url(services.redis_url, decode_responses=True)
    old_hub.hset(f"{prefix}owners:sessions", mapping={"S1": "NL-AAA", "S2": "NL-AAA,DE-BBB"})
    old_hub.hset(f"{prefix}owners:reservations", "R1", "NL-CCC")
    old_hub.hset(f"{prefix}owners:locations", "L1", "NL-AAA")

    async def run() -> None:
        client = redis.Redis.from_url(services.redis_url)
        try:
            async with contextlib.AsyncExitStack() as stack:
                states = [
                    await stack.enter_async_context(RoutingState(client, prefix, period_s).running(interval_s=0.01))
                    for _ in range(2)
                ]
                await until_gone(client, f"{prefix}owners:sessions", f"{prefix}owners:reservations",
                                 f"{prefix}owners:*:taken-over:*")  # fmt: skip
                for state in states:
                    assert await state.owners("sessions", "S1") == [("NL", "AAA")]
                    assert await state.owners("sessions", "S2") == [("DE", "BBB"), ("NL", "AAA")]  # still refused
                    assert await state.owner("reservations", "R1") == ("NL", "CCC")
                period = int(time.time() // period_s)
                assert 0 < await client.ttl(f"{prefix}owners:sessions:{period}") <= 3 * period_s
                assert await client.ttl(f"{prefix}owners:locations") == -1
                # A hub of the old version still running (a rolling upgrade) writes the old hash again: the next hub
                # to start merges it into the current period's.
                old_hub.hset(f"{prefix}owners:sessions", mapping={"S1": "DE-BBB", "S3": "NL-OLD"})
                async with RoutingState(client, prefix, period_s).running(interval_s=0.01) as third:
                    await until_gone(client, f"{prefix}owners:sessions", f"{prefix}owners:sessions:taken-over:*")
                    assert await third.owners("sessions", "S1") == [("DE", "BBB"), ("NL", "AAA")]
                    assert await third.owner("sessions", "S3") == ("NL", "OLD")
            left = sorted(key.removeprefix(prefix) for key in old_hub.scan_iter(match=f"{prefix}*"))
            assert left == ["owners:locations", f"owners:reservations:{period}", f"owners:sessions:{period}"]
        finally:
            await client.aclose()

    try:
        asyncio.run(run())
    finally:
        old_hub.close()


def test_the_take_over_of_a_hub_without_periods_leaves_out_the_owners_that_left_the_hub(
    services: Services, empty_database: str
) -> None:
    # A hub of the old version, still running in a rolling upgrade, neither fences its notes nor cleans up after
    # departed parties: what it noted of a party that left must not reach the hashes this version reads.
    prefix = f"{services.redis_prefix}owners-{secrets.token_hex(4)}:"
    period_s = 3600.0
    old_hub = redis_sync.Redis.from_url(services.redis_url, decode_responses=True)
    old_hub.hset(f"{prefix}owners:sessions", mapping={"S1": "NL-GON", "S2": "NL-STY,NL-GON", "S3": "nl-sty"})

    async def run() -> int:
        async with hub_storage(empty_database, services.redis_url) as storage:
            ids = {party_id: await registered_platform(storage.conn, party_id, ("NL", party_id))
                   for party_id in ("STY", "GON")}  # fmt: skip
            directory = DirectoryCache(storage.pool, storage.redis, prefix, TokenBox(TokenBox.generate_key()))
            await directory.reload()  # NL-GON on the hub
            # NL-GON's platform leaves, and the process takes the hash over before its directory reloaded
            await storage.conn.execute("UPDATE platform SET state = 'UNREGISTERED' WHERE id = $1", ids["GON"])
            await announce_change(storage.redis, prefix)
            async with RoutingState(storage.redis, prefix, period_s, directory).running(interval_s=0.01):
                await until_gone(storage.redis, f"{prefix}owners:sessions", f"{prefix}owners:sessions:taken-over:*")
            return int(time.time() // period_s)

    try:
        period = asyncio.run(asyncio.wait_for(run(), 30))
        assert old_hub.hgetall(f"{prefix}owners:sessions:{period}") == {"S2": "NL-STY", "S3": "nl-sty"}
    finally:
        old_hub.close()
