"""One hub cleans up after a departed party: hubs starting together do it once, and a stopped hub's claim runs out."""

from __future__ import annotations

import concurrent.futures
import json
import secrets
import time
from datetime import datetime
from pathlib import Path

import redis as redis_sync

from storage.departed import CLAIM_TTL_S
from tests.conftest import OUTPUT, Hub, Services, hub_env, register_at_hub, start_hub
from tests.test_departed_late_writes import _FreezingProxy
from tests.test_departed_party import CLEANED_WITHIN_S, _leave, _put
from tests.test_location_cache import _eventually
from tests.test_routing import _roles, party_key


def _events(hub: Hub, party: tuple[str, str]) -> list[dict]:
    """The hub's log lines on the departed party's cleanup: done there, or found done by another hub."""
    lines = [json.loads(line) for line in hub.log().splitlines() if line.startswith("{") and "departed_party" in line]
    return [line for line in lines if line.get("party") == f"{party[0]}-{party[1]}"]


def _departed(services: Services, start_party, env: dict[str, str], log: str):  # type: ignore[no-untyped-def]
    """A hub on env, a CPO registered there, its location pushed and noted, the CPO's platform left: (hub, CPO key,
    the location's owner entry as a (hash, field)). The entry is looked for in Redis as env's prefix names it."""
    first = start_hub(env, OUTPUT / log)
    try:
        cpo, emsp = (register_at_hub(first, start_party, _roles(role)) for role in ("CPO", "EMSP"))
        owner = party_key(cpo)
        _put(cpo, first, "locations", owner, f"L-{owner[1]}", party_key(emsp))
        entry = (f"{env['OCPI_HUB_REDIS_PREFIX']}owners:locations", f"L-{owner[1]}")
        client = redis_sync.Redis.from_url(services.redis_url)
        try:
            _eventually(lambda: _assert(client.hget(*entry) is not None), 30)
        finally:
            client.close()
        _leave(cpo, first)
        return first, owner, entry
    except BaseException:
        first.stop()
        raise


def _start_at_once(envs: list[tuple[dict[str, str], str]]) -> list[Hub]:
    with concurrent.futures.ThreadPoolExecutor() as threads:
        starting = [threads.submit(start_hub, env, OUTPUT / log) for env, log in envs]
    started = [each.result() for each in starting if each.exception() is None]
    if len(started) < len(starting):
        for hub in started:
            hub.stop()
        raise next(exc for each in starting if (exc := each.exception()) is not None)
    return started


def test_two_hubs_starting_at_once_clean_up_a_departure_a_stopped_hub_left_once(
    services: Services, start_party, tmp_path: Path
) -> None:
    prefix = f"{services.redis_prefix}claim-{secrets.token_hex(3)}:"
    extra = {"OCPI_HUB_REDIS_PREFIX": prefix}
    client = redis_sync.Redis.from_url(services.redis_url)
    # The test holds the claim until both hubs have taken the departure up: the first cannot clean up before it is
    # stopped, nor one of the two before the other has read the list at its start. A time for the cleanup to begin
    # (12 s after the departure) did not do: under load one hub started later than the other had cleaned up.
    client.set(f"{prefix}departed-parties:claim", "held by the test")
    hubs: list[Hub] = []
    try:
        first, owner, entry = _departed(services, start_party, hub_env(services, tmp_path / "first", **extra),
                                        "hub-claim-first.log")  # fmt: skip
        assert first.stop() == 0
        hubs = _start_at_once([(hub_env(services, tmp_path / f"hub-{n}", **extra), f"hub-claim-{n}.log")
                               for n in (1, 2)])  # fmt: skip
        _eventually(lambda: _assert([[event["event"] for event in _events(hub, owner)] for hub in hubs] == [
            ["departed_party_taken_up"]] * 2), 30)  # fmt: skip
        client.delete(f"{prefix}departed-parties:claim")
        _eventually(lambda: _assert(client.hget(*entry) is None), CLEANED_WITHIN_S + 10)
        _eventually(lambda: _assert(client.zscore(f"{prefix}departed-parties", f"{owner[0]}-{owner[1]}") is None))
        # the other hub looks again once the claim would have run out, and finds the cleanup done
        _eventually(lambda: _assert(sorted([event["event"] for event in _events(hub, owner)] for hub in hubs) == [
            ["departed_party_taken_up", "departed_party_cleaned"],
            ["departed_party_taken_up", "departed_party_done_by_another_hub"]]), CLAIM_TTL_S + 10)  # fmt: skip
    finally:
        for hub in hubs:
            hub.stop()
        client.delete(f"{prefix}departed-parties:claim")
        client.close()


def test_the_cleanup_of_a_hub_stopped_while_cleaning_up_is_taken_over_once_its_claim_runs_out(
    services: Services, start_party, tmp_path: Path
) -> None:
    prefix = f"{services.redis_prefix}claim-{secrets.token_hex(3)}:"
    claim, pending = f"{prefix}departed-parties:claim", f"{prefix}departed-parties"
    client = redis_sync.Redis.from_url(services.redis_url)
    # the first hub's way to Redis freezes as soon as it claimed the cleanup: nothing it sends after reaches Redis,
    # so it is stopped with the claim taken and the cleanup begun, however fast the cleanup would have been
    proxy = _FreezingProxy(services.redis_url, freeze_after=b"departed-parties:claim")
    env = hub_env(services, tmp_path / "first", OCPI_HUB_REDIS_PREFIX=prefix, OCPI_HUB_REDIS_URL=proxy.url)
    try:
        first, owner, entry = _departed(services, start_party, env, "hub-claim-stopped.log")
        try:
            client.hset(entry[0], mapping={f"X{n}": "NL-ZZZ" for n in range(1000)})  # other parties' owner entries
            _eventually(lambda: _assert(proxy.frozen and client.exists(claim) == 1), CLEANED_WITHIN_S)
            runs_out = time.time() + client.pttl(claim) / 1000
            first.process.kill()  # as a crash, or a SIGKILL after a grace period, stops it: the claim stays
            first.process.wait()
        finally:
            first.stop()
            proxy.close()
        assert runs_out > time.time() and client.zscore(pending, f"{owner[0]}-{owner[1]}") is not None

        second = start_hub(hub_env(services, tmp_path / "second", OCPI_HUB_REDIS_PREFIX=prefix),
                           OUTPUT / "hub-claim-takes-over.log")  # fmt: skip
        try:
            _eventually(lambda: _assert(client.zscore(pending, f"{owner[0]}-{owner[1]}") is None),
                        CLAIM_TTL_S + CLEANED_WITHIN_S)  # fmt: skip
            [taken_up, cleaned] = _eventually(lambda: _two(_events(second, owner)), 30)
            assert (taken_up["event"], cleaned["event"]) == ("departed_party_taken_up", "departed_party_cleaned")
            assert _moment(cleaned["timestamp"]) > runs_out - 0.1  # not while the stopped hub's claim held
            assert client.hget(*entry) is None and client.hget(entry[0], "X1") == b"NL-ZZZ"
        finally:
            second.stop()
    finally:
        client.delete(f"{prefix}owners:locations")
        client.close()


def _two(events: list[dict]) -> list[dict]:
    assert len(events) == 2, events
    return events


def _moment(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


def _assert(condition: bool) -> None:
    assert condition
