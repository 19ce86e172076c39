"""Each calling platform's share of a hub process's connections to one receiver (routing/fair_share.py): one eMSP's
backlog of slow requests to a CPO does not hold up another eMSP's request to it, nor do two eMSPs' backlogs together
hold up a third's; a request that may take no connection waits at most half the forward timeout, and is then answered
as not forwarded."""

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

from hub.ocpi import broadcast
from hub.ocpi.exchange import Job
from hub.ocpi.relay import Relay
from hub.settings import Settings
from routing.fair_share import CallerShares
from tests.conftest import Hub, Services, hub_env, register_at_hub, start_hub
from tests.parties import Party
from tests.test_hub_client_info import _wait_for
from tests.test_location_cache import HUB
from tests.test_operations import _metric
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


@pytest.fixture
def two_connection_hub(services: Services, empty_database: str, tmp_path: Path) -> Iterator[Hub]:
    """A hub of its own with two connections to a party server (OCPI_HUB_PARTY_CONNECTIONS=2): one per caller."""
    yield from _hub_with(services, empty_database, tmp_path, OCPI_HUB_FORWARD_TIMEOUT_S="8",
                         OCPI_HUB_PARTY_CONNECTIONS="2")  # fmt: skip


@pytest.fixture
def eight_connection_hub(services: Services, empty_database: str, tmp_path: Path) -> Iterator[Hub]:
    """A hub of its own with eight connections to a party server: four at most for one caller, the last two kept for
    callers with fewer than two in flight there."""
    yield from _hub_with(services, empty_database, tmp_path, OCPI_HUB_FORWARD_TIMEOUT_S="20",
                         OCPI_HUB_PARTY_CONNECTIONS="8")  # fmt: skip


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
    # its row says so too: the wait in vain, and no receiver's part (migration 0021)
    assert row["receiver_ms"] is None and row["connection_wait_ms"] >= 3500
    # Its wait is a metric of its own, not a forward of the CPO's (which the first alone was).
    receiver = "-".join(to)
    assert _metric(hub, "ocpi_hub_forward_duration_seconds_count", receiver=receiver) == 1
    waits = {"waited_for": "caller_share", "result": "not_forwarded"}
    assert _metric(hub, "ocpi_hub_connection_wait_seconds_count", **waits) == 1
    assert _metric(hub, "ocpi_hub_connection_wait_seconds_sum", **waits) >= 3.5


def test_a_request_that_waited_for_a_connection_goes_with_the_token_its_receiver_gave_the_hub_meanwhile(
    one_connection_share_hub: Hub, start_party
) -> None:
    # The CPO rotated its credentials (a credentials PUT with a new token B) while the eMSP's request waited for its
    # share of the connections: sent with the token of before, it was refused 401 and taken for the hub's
    # misconfiguration (receiver_refused_hub_token, an operator's alert).
    hub, held = one_connection_share_hub, threading.Event()
    cpo = register_at_hub(hub, start_party, _roles("CPO"), held=held, held_paths=(HELD,))
    emsp = register_at_hub(hub, start_party, _roles("EMSP"))
    to = party_key(cpo)
    with ThreadPoolExecutor(2) as pool:
        try:
            first = pool.submit(emsp.call, hub.base, "GET", "sender/locations/HELD1", to=to)
            _wait_for(lambda: _held_gets(cpo) == 1)
            second = pool.submit(emsp.call, hub.base, "GET", "sender/locations/L2", to=to)
            time.sleep(0.3)  # at the hub, waiting for the connection the first holds
            cpo.token_b = f"rotated-{uuid.uuid4()}"
            put = httpx.put(f"{hub.base}/ocpi/2.2.1/credentials", headers=cpo.token_header(cpo.hub_token or ""),
                            json=cpo.credentials(cpo.token_b), timeout=10)  # fmt: skip
            assert put.json()["status_code"] == 1000, put.text
            cpo.hub_token = put.json()["data"]["token"]
            time.sleep(1)  # every hub process has the new token (within a second)
            assert not second.done()
        finally:
            held.set()
        assert first.result().json()["status_code"] == 1000
        answer = second.result()
    assert answer.json()["status_code"] == 1000, answer.text
    [sent] = [r for r in cpo.functional() if r.path.endswith("/L2")]
    assert sent.headers["Authorization"] == cpo.token_header(cpo.token_b)["Authorization"]
    assert "receiver_refused_hub_token" not in hub.log()


def test_a_requests_forward_time_leaves_out_its_wait_for_a_connection(
    one_connection_share_hub: Hub, start_party
) -> None:
    hub, held = one_connection_share_hub, threading.Event()
    cpo = register_at_hub(hub, start_party, _roles("CPO"), held=held, held_paths=(HELD,))
    emsp = register_at_hub(hub, start_party, _roles("EMSP"))
    to, sent = party_key(cpo), {"X-Correlation-ID": f"wait-{uuid.uuid4()}"}
    with ThreadPoolExecutor(2) as pool:
        try:
            first = pool.submit(emsp.call, hub.base, "GET", "sender/locations/HELD1", to=to, headers=sent)
            _wait_for(lambda: _held_gets(cpo) == 1)
            second = pool.submit(emsp.call, hub.base, "GET", "sender/locations/L1", to=to, headers=sent)
            time.sleep(2)  # the second waits for the first's connection
        finally:
            held.set()
        assert [request.result().json()["status_code"] for request in (first, second)] == [1000, 1000]
    receiver = "-".join(to)
    # The first took over 2 s, the second a moment once it had its connection: not the 2 s it waited for one.
    assert _metric(hub, "ocpi_hub_forward_duration_seconds_count", receiver=receiver) == 2
    assert _metric(hub, "ocpi_hub_forward_duration_seconds_bucket", receiver=receiver, le="1.0") == 1
    waits = {"waited_for": "caller_share", "result": "forwarded"}
    assert _metric(hub, "ocpi_hub_connection_wait_seconds_count", **waits) == 1
    assert _metric(hub, "ocpi_hub_connection_wait_seconds_sum", **waits) >= 1.5
    # and so do their rows: the first's part was the CPO's, the second's mostly its wait (migration 0021)
    held_row, waiting_row = sorted(_rows(hub, sent["X-Correlation-ID"]), key=lambda row: row["path"])
    assert held_row["receiver_ms"] >= 2000 and held_row["connection_wait_ms"] == 0.0
    assert waiting_row["connection_wait_ms"] >= 1500 and waiting_row["receiver_ms"] < 1000


def test_a_request_that_found_no_connection_free_to_the_receiver_is_answered_as_not_forwarded(
    two_connection_hub: Hub, start_party
) -> None:
    # Two eMSPs each had a slow request in flight to the CPO, all of the two connections there: a third eMSP's request
    # waited for aiohttp's pool and was answered 4002 "the receiver did not answer within 5 s", though the CPO never
    # got it. It is the hub's own wait now, for half the forward timeout, and says that nothing was forwarded.
    hub, held = two_connection_hub, threading.Event()
    cpo = register_at_hub(hub, start_party, _roles("CPO"), held=held, held_paths=(HELD,))
    first, second, third = (register_at_hub(hub, start_party, _roles("EMSP")) for _ in range(3))
    to, correlation = party_key(cpo), f"share-{uuid.uuid4()}"
    sent = {"X-Correlation-ID": correlation}
    with ThreadPoolExecutor(2) as pool:
        try:
            slow = [pool.submit(emsp.call, hub.base, "GET", f"sender/locations/HELD{n}", to=to, headers=sent)
                    for n, emsp in enumerate((first, second))]  # fmt: skip
            _wait_for(lambda: _held_gets(cpo) == 2)
            started = time.monotonic()
            answer = third.call(hub.base, "GET", "sender/locations/L1", to=to, headers=sent)
            waited = time.monotonic() - started
            assert not any(request.done() for request in slow)
        finally:
            held.set()
        assert [request.result().json()["status_code"] for request in slow] == [1000, 1000]
    assert answer.json()["status_code"] == 4000, answer.text
    told = answer.json()["status_message"]
    assert told.startswith("not forwarded: no connection to this receiver's server was free within 4 s"), told
    assert 3.5 < waited < 6, f"answered after {waited:.1f} s"
    assert not any(r.path.endswith("/L1") for r in cpo.functional())  # the CPO never got it
    [row] = [row for row in _rows(hub, correlation) if row["path"].endswith("/L1")]
    assert row["ocpi_status_code"] == 4000 and row["forwarded_request_id"] is None
    assert row["error"].startswith("GET http://127.0.0.1:")
    assert "no connection to this receiver's server was free" in row["error"]
    waits = {"waited_for": "connections", "result": "not_forwarded"}
    assert _metric(hub, "ocpi_hub_connection_wait_seconds_count", **waits) == 1


def test_two_platforms_flooding_a_slow_receiver_leave_a_connection_for_a_third_that_is_answered_promptly(
    eight_connection_hub: Hub, start_party
) -> None:
    # Each flooding eMSP had half the eight connections: together all of them, and the third eMSP's request waited
    # for aiohttp's pool (4002 after 5 s). Beyond its first two, a platform takes one only while two more stay free.
    hub, held = eight_connection_hub, threading.Event()
    cpo = register_at_hub(hub, start_party, _roles("CPO"), held=held, held_paths=(HELD,))
    flooders = [register_at_hub(hub, start_party, _roles("EMSP")) for _ in range(2)]
    calm = register_at_hub(hub, start_party, _roles("EMSP"))
    to, correlation = party_key(cpo), f"share-{uuid.uuid4()}"
    sent = {"X-Correlation-ID": correlation}
    with ThreadPoolExecutor(12) as pool:
        try:
            flood = [pool.submit(emsp.call, hub.base, "GET", f"sender/locations/HELD{n}", to=to, headers=sent)
                     for n in range(6) for emsp in flooders]  # fmt: skip
            _wait_for(lambda: _held_gets(cpo) >= 6, timeout=10)
            time.sleep(1)  # the others had their time to reach the CPO: they wait at the hub
            assert _held_gets(cpo) == 6  # four of one flooder's, two of the other's: two connections stay free
            for n in range(3):
                started = time.monotonic()
                answer = calm.call(hub.base, "GET", f"sender/locations/L{n}", to=to, headers=sent)
                took = time.monotonic() - started
                assert answer.json()["status_code"] == 1000, answer.text
                assert took < 2, f"the calm eMSP's GET took {took:.1f} s"
            assert not any(request.done() for request in flood)
        finally:
            held.set()
        answers = [request.result() for request in flood]
    assert [a.json()["status_code"] for a in answers] == [1000] * 12  # each flooder's backlog went through in turn
    assert _held_gets(cpo) == 12


def test_a_platforms_broadcasts_beyond_its_copies_in_delivery_are_refused_until_they_are_delivered(
    two_connection_hub: Hub, start_party
) -> None:
    # Each copy of a broadcast was a task of its own, however many the pushing platform had still to deliver: answered
    # at once, a platform could start them faster than a slow receiver took them, without bound. It has 64 times
    # OCPI_HUB_PARTY_CONNECTIONS of them (128 here) in delivery at most in a hub process.
    hub, held = two_connection_hub, threading.Event()
    cpo = register_at_hub(hub, start_party, _roles("CPO"))
    emsp = register_at_hub(hub, start_party, *(_roles("EMSP") for _ in range(8)), held=held,
                           held_paths=("/ocpi/2.2.1/locations/receiver",))  # fmt: skip
    cc, pid = party_key(cpo)

    def push(n: int) -> httpx.Response:
        return cpo.call(hub.base, "PATCH", f"receiver/locations/{cc}/{pid}/LOC{n}", to=HUB,
                        body={"publish": True, "last_updated": "2026-12-05T08:00:00Z"},
                        headers={"X-Correlation-ID": f"bcast-{n}-{pid}"})  # fmt: skip

    try:
        for n in range(16):  # 8 copies each: one goes out, the others wait for the CPO's share of the connection
            assert push(n).json()["status_message"] == "broadcast to 8 parties"
        refused = push(16)
    finally:
        held.set()
    assert refused.json()["status_code"] == 4000, refused.text
    told = refused.json()["status_message"]
    assert told.startswith("not forwarded: the hub is still delivering 128 copies of this platform's broadcasts"), told
    _wait_for(lambda: sum(r.path.startswith("/ocpi/2.2.1/locations/receiver") for r in emsp.functional()) == 128)
    _wait_for(lambda: push(17).json()["status_code"] == 1000)  # once they are delivered
    rows = _rows(hub, f"bcast-16-{pid}")
    assert [(r["routing"], r["ocpi_status_code"], r["from_party_id"]) for r in rows] == [("broadcast", 4000, pid)]
    assert "not forwarded" in rows[0]["error"]


def test_a_platforms_concurrent_broadcasts_are_counted_from_their_admission_and_kept_within_the_bound(
    two_connection_hub: Hub, start_party
) -> None:
    # A copy was counted once its task started, after the caller's row was committed: 64 broadcasts at once all found
    # the count as it was before them, and 17 to 22 of them (8 copies each, against 16 allowed) were accepted.
    hub, held = two_connection_hub, threading.Event()
    cpo = register_at_hub(hub, start_party, _roles("CPO"))
    emsp = register_at_hub(hub, start_party, *(_roles("EMSP") for _ in range(8)), held=held,
                           held_paths=("/ocpi/2.2.1/locations/receiver",))  # fmt: skip
    cc, pid = party_key(cpo)

    def push(n: int) -> httpx.Response:
        return cpo.call(hub.base, "PATCH", f"receiver/locations/{cc}/{pid}/LOC{n}", to=HUB,
                        body={"publish": True, "last_updated": "2026-12-05T08:00:00Z"})  # fmt: skip

    try:
        with ThreadPoolExecutor(64) as pool:
            answers = [answer.json() for answer in pool.map(push, range(64))]
    finally:
        held.set()
    accepted = sum(answer["status_code"] == 1000 for answer in answers)
    assert accepted == 16, [answer["status_message"] for answer in answers]
    refused = {a["status_message"].split(" of this")[0] for a in answers if a["status_code"] != 1000}
    assert refused == {"not forwarded: the hub is still delivering 128 copies"}, refused
    _wait_for(lambda: sum(r.path.startswith("/ocpi/2.2.1/locations/receiver") for r in emsp.functional()) == 128)
    _wait_for(lambda: push(64).json()["status_code"] == 1000)  # every copy given back its place once delivered


def test_a_broadcast_copy_gives_its_place_back_once_whether_it_ran_was_cancelled_before_it_ran_or_never_started() -> (
    None
):
    # Counted from its broadcast's admission (hub.ocpi.broadcast.push), a copy whose task is cancelled before it runs,
    # or that never gets a task (the caller's row not written), must not keep its place; one that ran gives it back too.
    async def run() -> None:
        relay = Relay(Settings.from_env({}))
        counts = relay.broadcast_copies
        counts[7] = 3  # one broadcast of three copies admitted
        ran = asyncio.Event()

        async def deliver() -> None:
            ran.set()

        jobs = [Job(deliver(), broadcast._give_back(counts, 7)) for _ in range(3)]
        relay._spawn(jobs[0])
        relay._spawn(jobs[1])
        [cancelled] = [task for task in relay.tasks if task.get_coro() is jobs[1].work]
        cancelled.cancel()  # before it ran
        jobs[2].abandon()  # never started
        assert counts == {7: 2}
        await relay.drain()
        await asyncio.sleep(0)  # the done callbacks
        assert ran.is_set() and cancelled.cancelled() and counts == {}

    asyncio.run(run())


def test_the_shares_keep_no_entry_of_a_caller_without_requests_in_flight_and_lose_no_slot_to_a_cancelled_wait() -> None:
    # Many parties come and go: the shares hold entries only for requests in flight. A waiting request that gives up
    # (its deadline, or its caller gone) as its slot is handed to it passes the slot on, and one behind it gets it.
    async def run() -> None:
        shares, key = CallerShares(4), (7, ("cpo.example.com", 443))
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
            assert shares.take((caller, ("cpo.example.com", 443)))
            shares.give_back((caller, ("cpo.example.com", 443)))
        assert len(shares) == 0

    asyncio.run(run())


def test_callers_beyond_their_floor_leave_a_quarter_of_the_connections_free_and_are_served_in_turn() -> None:
    async def run() -> None:
        shares, server = CallerShares(8), ("cpo.example.com", 443)  # half: 4; a floor of 2; the last 2 kept
        flooder, other, calm = ((caller, server) for caller in (1, 2, 3))
        assert [shares.take(flooder) for _ in range(5)] == [True] * 4 + [False]  # its share
        assert [shares.take(other) for _ in range(3)] == [True, True, False]  # its floor: 6 leave only 2 free
        assert shares.take(calm) and shares.take(calm) and not shares.take(calm)  # below its floor: the last 2
        waiting = [asyncio.create_task(shares.wait(key, 10)) for key in (flooder, other, other)]
        await asyncio.sleep(0)
        shares.give_back(calm)
        shares.give_back(calm)  # 6 in flight again: none of the waiting may take one
        await asyncio.sleep(0)
        assert not any(wait.done() for wait in waiting)
        assert shares.take(calm)  # a connection for calm at once, though the others wait
        shares.give_back(calm)
        shares.give_back(flooder)  # both may take it: the flooder's waited first
        await asyncio.sleep(0)
        assert [wait.done() for wait in waiting] == [True, False, False]
        shares.give_back(flooder)  # the other's turn, though the flooder gave it back
        await asyncio.sleep(0)
        assert [wait.done() for wait in waiting] == [True, True, False]
        assert shares.in_flight(flooder) == (3, 6) and shares.in_flight(other) == (3, 6)
        waiting[2].cancel()
        for key in (flooder,) * 3 + (other,) * 3:
            shares.give_back(key)
        assert len(shares) == 0 and not shares._waiting and not shares._per_server

    asyncio.run(run())
