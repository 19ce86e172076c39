"""Each calling platform's share of a hub process's connections to one receiver (routing/fair_share.py): one eMSP's
backlog of slow requests to a CPO does not hold up another eMSP's request to it, and the requests beyond its share
wait for its own, at most half the forward timeout."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from routing.fair_share import CallerShares
from tests.conftest import Hub, Services, hub_env, register_at_hub, start_hub
from tests.parties import Party
from tests.test_hub_client_info import _wait_for
from tests.test_routing import _roles, party_key

HELD = "/ocpi/2.2.1/locations/sender/HELD"


def _hub_with(services: Services, database: str, data_dir: Path, **settings: str) -> Iterator[Hub]:
    env = hub_env(services, data_dir / "hub", OCPI_HUB_DATABASE_URL=database,
                  OCPI_HUB_REDIS_PREFIX=f"{services.redis_prefix}share-{data_dir.name}:", **settings)  # fmt: skip
    running = start_hub(env, data_dir / "hub.log")
    yield running
    running.stop()


@pytest.fixture
def default_pool_hub(services: Services, empty_database: str, tmp_path: Path) -> Iterator[Hub]:
    """A hub of its own with the default 64 connections per party server, and time to wait for a held CPO."""
    yield from _hub_with(services, empty_database, tmp_path, OCPI_HUB_FORWARD_TIMEOUT_S="20")


@pytest.fixture
def one_connection_share_hub(services: Services, empty_database: str, tmp_path: Path) -> Iterator[Hub]:
    """A hub of its own whose callers have one connection each to a party server (OCPI_HUB_PARTY_CONNECTIONS=2)."""
    yield from _hub_with(services, empty_database, tmp_path, OCPI_HUB_FORWARD_TIMEOUT_S="8",
                         OCPI_HUB_PARTY_CONNECTIONS="2")  # fmt: skip


def _held_gets(cpo: Party) -> int:
    return sum(1 for r in cpo.functional() if r.path.startswith(HELD))


def _rows(hub: Hub, correlation_id: str) -> list[dict]:
    with hub.admin() as admin:
        return admin.get("/admin/api/routing-log", params={"correlation_id": correlation_id, "limit": 200}).json()[
            "items"
        ]


def test_an_emsps_backlog_to_a_cpo_does_not_hold_up_another_emsps_request_and_is_answered_in_turn(
    default_pool_hub: Hub, start_party
) -> None:
    # The security review's case: 70 slow requests of one eMSP took all 64 connections to the CPO, and another
    # eMSP's GET waited for one (4.35 s there; 4002 once aiohttp's 5 s for a connection ran out).
    hub, held = default_pool_hub, threading.Event()
    cpo = register_at_hub(hub, start_party, _roles("CPO"), held=held, held_paths=(HELD,))
    busy, other = register_at_hub(hub, start_party, _roles("EMSP")), register_at_hub(hub, start_party, _roles("EMSP"))
    to, correlation = party_key(cpo), f"share-{uuid.uuid4()}"
    sent = {"X-Correlation-ID": correlation}
    with ThreadPoolExecutor(70) as pool:
        try:
            backlog: list[Future[httpx.Response]] = [
                pool.submit(busy.call, hub.base, "GET", f"sender/locations/HELD{n}", to=to, headers=sent)
                for n in range(70)
            ]
            _wait_for(lambda: _held_gets(cpo) >= 32, timeout=20)
            time.sleep(1)  # the other 38 had their time to reach the CPO: they wait at the hub, for the busy eMSP's own
            assert _held_gets(cpo) == 32
            started = time.monotonic()
            answer = other.call(hub.base, "GET", "sender/locations/L1", to=to, headers=sent)
            took = time.monotonic() - started
            assert answer.json()["status_code"] == 1000, answer.text
            assert answer.json()["data"]["id"] == "L1"
            assert took < 3, f"the other eMSP's GET took {took:.1f} s"
            assert not any(request.done() for request in backlog)  # it went past a backlog still there
        finally:
            held.set()
        answers = [request.result() for request in backlog]
    # Every request of the backlog went to the CPO in turn and was answered, each with its row in the routing log.
    assert [a.json()["status_code"] for a in answers] == [1000] * 70
    assert sorted(a.json()["data"]["id"] for a in answers) == sorted(f"HELD{n}" for n in range(70))
    assert _held_gets(cpo) == 70
    rows = _rows(hub, correlation)
    assert len(rows) == 71
    assert all(row["ocpi_status_code"] == 1000 and row["forwarded_request_id"] for row in rows)


def test_a_request_beyond_the_callers_share_waits_half_the_timeout_and_is_not_forwarded(
    one_connection_share_hub: Hub, start_party
) -> None:
    hub, held = one_connection_share_hub, threading.Event()
    cpo = register_at_hub(hub, start_party, _roles("CPO"), held=held, held_paths=(HELD,))
    emsp = register_at_hub(hub, start_party, _roles("EMSP"))
    to, correlation = party_key(cpo), f"share-{uuid.uuid4()}"
    sent = {"X-Correlation-ID": correlation}
    with ThreadPoolExecutor(1) as pool:
        try:
            first = pool.submit(emsp.call, hub.base, "GET", "sender/locations/HELD1", to=to, headers=sent)
            _wait_for(lambda: _held_gets(cpo) == 1)
            started = time.monotonic()
            second = emsp.call(hub.base, "GET", "sender/locations/HELD2", to=to, headers=sent)
            waited = time.monotonic() - started
            assert second.json()["status_code"] == 4000, second.text
            # Answered while the first, its share, is still in flight, after half of the 8 s forward timeout.
            assert not first.done()
        finally:
            held.set()
        assert first.result().json()["status_code"] == 1000
    told = second.json()["status_message"]
    assert told.startswith("not forwarded: for 4 s (half the hub's forward timeout) the calling platform had 1 request")
    assert waited > 3.5, f"answered after {waited:.1f} s"
    assert _held_gets(cpo) == 1  # the CPO never got the second
    [row] = [row for row in _rows(hub, correlation) if row["path"].endswith("HELD2")]
    assert row["ocpi_status_code"] == 4000 and row["forwarded_request_id"] is None
    assert row["error"].startswith("GET http://127.0.0.1:") and "not forwarded" in row["error"]


def test_the_shares_keep_no_entry_of_a_caller_without_requests_in_flight_and_lose_no_slot_to_a_cancelled_wait() -> None:
    # Many parties come and go: the shares hold entries only for requests in flight. A waiting request that gives up
    # (its deadline, or its caller gone) as its slot is handed to it passes the slot on, and one behind it gets it.
    async def run() -> None:
        shares, key = CallerShares(4), (7, "cpo.example.com", 443)
        assert shares.share == 2
        assert shares.take(key) and shares.take(key) and not shares.take(key)
        with pytest.raises(TimeoutError):
            await shares.wait(key, 0.01)
        gives_up = asyncio.create_task(shares.wait(key, 10))
        behind = asyncio.create_task(shares.wait(key, 10))
        await asyncio.sleep(0)
        shares.give_back(key)  # handed to gives_up, which is cancelled before it runs
        gives_up.cancel()
        await behind  # passed on by gives_up
        assert gives_up.cancelled()
        gone, next_one = asyncio.create_task(shares.wait(key, 10)), asyncio.create_task(shares.wait(key, 10))
        await asyncio.sleep(0)
        gone.cancel()  # its slot is cancelled before one is handed to it, but still queued until it runs
        shares.give_back(key)
        await next_one
        with pytest.raises(asyncio.CancelledError):
            await gone
        for _ in range(2):
            shares.give_back(key)
        assert len(shares) == 0 and not shares._waiting
        for caller in range(1000):
            assert shares.take((caller, "cpo.example.com", 443))
            shares.give_back((caller, "cpo.example.com", 443))
        assert len(shares) == 0

    asyncio.run(run())
