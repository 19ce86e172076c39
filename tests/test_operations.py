"""Operations: health and readiness, Prometheus metrics, graceful shutdown under load, several hub instances."""

from __future__ import annotations

import asyncio
import json
import resource
import signal
import socket
import threading
import time
import uuid
from pathlib import Path

import asyncpg
import httpx
import pytest
import redis.asyncio as redis
from prometheus_client.parser import text_string_to_metric_families

from hub.party_client import PartyClient
from hub.runtime import stop_background_tasks
from hub.settings import Settings
from routing.pull_sync import PullSync, run_scheduled
from routing.still_alive import StillAlive
from storage.directory import Directory, DirectoryCache
from storage.location_cache import LocationCache
from storage.log_row import LogEntry
from storage.secrets import TokenBox
from tests.conftest import OUTPUT, Hub, Services, hub_env, register_at_hub, start_hub, two_hub_processes
from tests.parties import envelope, token_header
from tests.test_pull_sync import _locations, _wait
from tests.test_routing import LOCATION, _roles, party_key

HUB = ("NL", "HUB")


def _metric(hub: Hub, name: str, **labels: str) -> float:
    """The sum of the samples called `name` whose labels include `labels`."""
    text = httpx.get(f"{hub.base}/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def test_health_ready_and_metrics_answer_without_a_token(hub: Hub) -> None:
    assert httpx.get(f"{hub.base}/health").json() == {"status": "up"}
    assert httpx.get(f"{hub.base}/ready").json() == {"status": "ready"}
    answer = httpx.get(f"{hub.base}/metrics")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    assert "ocpi_hub_requests_total" in answer.text or "ocpi_hub_requests" in answer.text


def test_metrics_are_served_only_at_the_path_a_proxy_blocks(hub: Hub) -> None:
    # deploy/Caddyfile answers 404 for /metrics on the public port; other spellings of the path must not get round it
    host, port = hub.base.removeprefix("http://").split(":")
    for target in ("//metrics", "/%6detrics", "/metrics/", "/./metrics"):
        with socket.create_connection((host, int(port)), timeout=10) as conn:
            conn.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            status = conn.makefile("rb").readline()
        assert status.split()[1] == b"404", (target, status)
    assert httpx.get(f"{hub.base}/metrics", timeout=10).status_code == 200


def test_metrics_with_a_token_set_answer_only_its_bearer(services: Services, tmp_path: Path) -> None:
    token = "scrape-" + uuid.uuid4().hex
    hub = start_hub(hub_env(services, tmp_path, OCPI_HUB_METRICS_TOKEN=token), OUTPUT / "hub-metrics-token.log")
    try:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Token {token}"}):
            refused = httpx.get(f"{hub.base}/metrics", headers=headers, timeout=10)
            assert refused.status_code == 401 and "OCPI_HUB_METRICS_TOKEN" in refused.text
            assert refused.headers["www-authenticate"] == "Bearer" and "ocpi_hub" not in refused.text
        scraped = httpx.get(f"{hub.base}/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert scraped.status_code == 200 and "ocpi_hub_party_status" in scraped.text
        assert httpx.get(f"{hub.base}/health", timeout=10).status_code == 200  # probes stay open
    finally:
        hub.stop()


def test_serve_raises_its_open_files_limit_to_the_hard_limit(services: Services, tmp_path: Path) -> None:
    # Every kept-alive connection is a file: a soft limit of 1,024 (Docker's default) caps the parties a hub serves.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))  # inherited by the hub started now
    try:
        hub = start_hub(hub_env(services, tmp_path), OUTPUT / "hub-open-files.log")
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        limits = Path(f"/proc/{hub.process.pid}/limits").read_text()
        row = next(line for line in limits.splitlines() if line.startswith("Max open files"))
        expected = hard if hard != resource.RLIM_INFINITY else 1_048_576
        assert row.split()[3] == str(expected), row  # "Max open files  <soft>  <hard>  files"
    finally:
        hub.stop()


def test_metrics_move_with_traffic(hub: Hub, connect_party) -> None:
    cpo, emsp = connect_party(_roles("CPO")), connect_party(_roles("EMSP"))
    (cc, pid), receiver = party_key(cpo), "-".join(party_key(emsp))
    pushed = {"module": "locations", "method": "PUT", "routing": "direct", "ocpi_status": "1000"}
    before = {
        "requests": _metric(hub, "ocpi_hub_requests_total", **pushed),
        "forwards": _metric(hub, "ocpi_hub_forward_duration_seconds_count", receiver=receiver),
        "rows": _metric(hub, "ocpi_hub_routing_log_batch_rows_sum"),
        "commits": _metric(hub, "ocpi_hub_routing_log_commit_seconds_count"),
        "misses": _metric(hub, "ocpi_hub_location_cache_requests_total", result="miss"),
        "hits": _metric(hub, "ocpi_hub_location_cache_requests_total", result="hit"),
    }
    for n in range(3):
        answer = cpo.call(hub.base, "PUT", f"receiver/locations/{cc}/{pid}/M{n}", to=party_key(emsp),
                          body=LOCATION | {"country_code": cc, "party_id": pid, "id": f"M{n}"})  # fmt: skip
        assert answer.json()["status_code"] == 1000
    emsp.call(hub.base, "GET", "sender/locations/NO-SUCH-LOCATION", to=HUB)
    _wait(lambda: emsp.call(hub.base, "GET", "sender/locations/M0", to=HUB).json()["status_code"] == 1000)
    hits = _metric(hub, "ocpi_hub_location_cache_requests_total", result="hit")
    # the total alone, of this CPO's locations: from the cache too
    counted = emsp.call(hub.base, "GET", f"sender/locations?country_code={cc}&party_id={pid}&limit=0", to=HUB)
    assert counted.headers["X-Total-Count"] == "3", counted.headers
    assert _metric(hub, "ocpi_hub_location_cache_requests_total", result="hit") == hits + 1
    assert _metric(hub, "ocpi_hub_requests_total", **pushed) >= before["requests"] + 3
    assert _metric(hub, "ocpi_hub_forward_duration_seconds_count", receiver=receiver) == before["forwards"] + 3
    assert _metric(hub, "ocpi_hub_routing_log_batch_rows_sum") >= before["rows"] + 5
    assert _metric(hub, "ocpi_hub_routing_log_commit_seconds_count") > before["commits"]
    assert _metric(hub, "ocpi_hub_location_cache_requests_total", result="miss") >= before["misses"] + 1
    assert _metric(hub, "ocpi_hub_location_cache_requests_total", result="hit") >= before["hits"] + 1
    assert _metric(hub, "ocpi_hub_party_status", party=f"{cc}-{pid}", role="CPO", status="CONNECTED") == 1


def test_methods_and_modules_callers_make_up_are_counted_as_other(hub: Hub, connect_party) -> None:
    # Label values come from the caller: made-up ones must not grow the metrics without bound.
    cpo = connect_party(_roles("CPO"))
    folded = {"module": "other", "method": "other", "routing": "rejected"}
    before = _metric(hub, "ocpi_hub_requests_total", **folded)
    for n, method in enumerate(("PROPFIND", "MKCOL", "LOCK")):  # methods the HTTP parser knows, OCPI does not
        assert cpo.call(hub.base, method, f"receiver/nosuchmodule{n}/x").status_code == 404
    assert _metric(hub, "ocpi_hub_requests_total", **folded) == before + 3
    text = httpx.get(f"{hub.base}/metrics").text
    assert "PROPFIND" not in text and "nosuchmodule" not in text


def test_ocpi_status_codes_the_spec_does_not_define_are_counted_as_other(hub: Hub, connect_party, db) -> None:
    # status_codes.asciidoc: a receiver's made-up codes must not grow the metrics without bound (a security review's
    # point: 300 codes made 300 series); the codes of its custom ranges count under the range, the row keeps the code
    cpo, emsp = connect_party(_roles("CPO")), connect_party(_roles("EMSP"))
    cc, pid = party_key(cpo)
    relayed = {"module": "tariffs", "method": "GET", "routing": "direct"}
    before = {
        label: _metric(hub, "ocpi_hub_requests_total", **relayed, ocpi_status=label) for label in ("other", "29xx")
    }
    codes = [100_000 + n for n in range(5)] + [0, 4004, 2950]
    for n, code in enumerate(codes):
        emsp.canned[("GET", f"/ocpi/2.2.1/tariffs/receiver/{cc}/{pid}/T{n}")] = (
            200, json.dumps(envelope(None, code)).encode(), {"Content-Type": "application/json"})  # fmt: skip
        request_id = str(uuid.uuid4())
        answer = cpo.call(hub.base, "GET", f"receiver/tariffs/{cc}/{pid}/T{n}", to=party_key(emsp),
                          headers={"X-Request-ID": request_id})  # fmt: skip
        assert answer.json()["status_code"] == code
        assert db.run(db.fetchval("SELECT ocpi_status_code FROM routing_log WHERE request_id = $1", request_id)) == code
    assert _metric(hub, "ocpi_hub_requests_total", **relayed, ocpi_status="other") == before["other"] + 7
    assert _metric(hub, "ocpi_hub_requests_total", **relayed, ocpi_status="29xx") == before["29xx"] + 1
    text = httpx.get(f"{hub.base}/metrics").text
    assert all(f'ocpi_status="{code}"' not in text for code in codes)


@pytest.mark.parametrize("log_mode", ["async", "strict"])
def test_sigterm_under_load_finishes_in_flight_forwards_and_logs_every_answered_request(
    services: Services, tmp_path: Path, start_party, db, log_mode: str
) -> None:
    env = hub_env(services, tmp_path / "hub", OCPI_HUB_LOG_MODE=log_mode)
    hub = start_hub(env, OUTPUT / f"hub-term-{log_mode}.log")
    try:
        cpo = register_at_hub(hub, start_party, _roles("CPO"))
        emsp = register_at_hub(hub, start_party, _roles("EMSP"), delay_s=0.2)  # forwards stay in flight a while
        cc, pid = party_key(cpo)
        answered: list[tuple[str, float]] = []
        stop = threading.Event()

        def load() -> None:
            with httpx.Client(timeout=30) as client:
                while not stop.is_set():
                    request_id = str(uuid.uuid4())
                    try:
                        answer = client.put(
                            f"{hub.base}/ocpi/2.2.1/receiver/locations/{cc}/{pid}/T1",
                            json=LOCATION | {"country_code": cc, "party_id": pid, "id": "T1"},
                            headers={"Authorization": f"Token {cpo.hub_token}", "X-Request-ID": request_id,
                                     "OCPI-to-country-code": party_key(emsp)[0],
                                     "OCPI-to-party-id": party_key(emsp)[1]},
                        )  # fmt: skip
                    except httpx.HTTPError:
                        return  # the hub stopped accepting: this request was never acknowledged
                    if answer.json()["status_code"] == 1000:
                        answered.append((request_id, time.monotonic()))

        workers = [threading.Thread(target=load) for _ in range(12)]
        for worker in workers:
            worker.start()
        _wait(lambda: len(answered) >= 40)
        terminated_at = time.monotonic()
        hub.process.send_signal(signal.SIGTERM)
        assert hub.process.wait(60) == 0
        stop.set()
        for worker in workers:
            worker.join(30)
    finally:
        stop.set()
        hub.stop()
    ids = [request_id for request_id, _ in answered]
    logged = {r["request_id"] for r in db.run(db.fetch(
        "SELECT request_id FROM routing_log WHERE request_id = any($1::text[])", ids))}  # fmt: skip
    assert logged == set(ids)
    # Forwards in flight when SIGTERM came were finished and answered, not cut off.
    assert any(at > terminated_at for _, at in answered)


def test_shutdown_stops_a_background_task_that_swallowed_its_cancel() -> None:
    # As redis-py's asyncio client may do when a cancel lands inside a pipeline (redis/redis-py#2028).
    async def run() -> tuple[asyncio.Task[None], int]:
        cancels = 0

        async def stubborn() -> None:
            nonlocal cancels
            while True:
                try:
                    await asyncio.sleep(10)
                except asyncio.CancelledError:
                    cancels += 1
                    if cancels > 1:
                        raise

        task = asyncio.create_task(stubborn(), name="stubborn")
        await asyncio.sleep(0)
        await asyncio.wait_for(stop_background_tasks([task], recancel_after_s=0.05), 5)
        return task, cancels

    task, cancels = asyncio.run(run())
    assert task.cancelled() and cancels == 2


def test_still_alive_and_location_sync_loops_end_on_the_first_cancel_even_when_woken_at_that_moment(
    hub: Hub, services: Services
) -> None:
    # At shutdown a failed forward (waking the still-alive loop) or a registration (waking the sync loop) can come
    # with the cancel; Python 3.11's asyncio.wait_for then dropped the cancel and the loop went on.
    async def record(entry: LogEntry) -> None:
        raise AssertionError("nothing is probed: the directory is empty")

    async def run() -> list[str]:
        pool = await asyncpg.create_pool(services.database_url, min_size=1, max_size=2)
        client = redis.Redis.from_url(services.redis_url)
        prefix, went_on = services.redis_prefix, []
        try:
            async with PartyClient(Settings.from_env(hub.env)) as http:
                nothing = DirectoryCache(pool, client, prefix, TokenBox(TokenBox.generate_key()))  # never loaded
                still_alive = StillAlive(pool, client, prefix, http, nothing, HUB, record, 300, 30)
                sync = PullSync(http, LocationCache(client, prefix), client, prefix, HUB, record)
                wake = asyncio.Event()
                loops = {
                    "still_alive": (still_alive.run, lambda: still_alive.suspect(1)),
                    "pull_sync": (lambda: run_scheduled(sync, Directory, wake, 3600, 30), wake.set),
                }
                for name, (loop, wake_it) in loops.items():
                    for _ in range(5):
                        task = asyncio.create_task(loop())
                        await asyncio.sleep(0.05)  # waiting for its next round
                        wake_it()
                        task.cancel()
                        done, _ = await asyncio.wait({task}, timeout=2)
                        if not done:
                            went_on.append(name)
                            await stop_background_tasks([task], recancel_after_s=0.1)
        finally:
            await client.aclose()
            await pool.close()
        return went_on

    assert asyncio.run(run()) == []


def test_a_second_instance_follows_paging_links_and_snapshots_of_the_first(
    hub: Hub, services: Services, tmp_path: Path, connect_party, start_party
) -> None:
    other = start_hub(hub_env(services, tmp_path / "other"), OUTPUT / "hub-other.log")
    try:
        reader = connect_party(_roles("EMSP"))
        roles = _roles("CPO")
        cpo = start_party(roles, page_size=4)
        owner = party_key(cpo)
        cpo.objects["locations"] = _locations(owner, 10, "2026-11-01T00:00:00Z")  # there when the hub first pulls
        cpo.register_at(hub.versions_url, hub.invite(cpo.name, roles)["token_a"])
        # Relayed paging: every Link the first instance hands out works on the second.
        first = reader.call(hub.base, "GET", "sender/locations", to=owner)
        ids, url = [loc["id"] for loc in first.json()["data"]], first.headers.get("Link", "")
        while url:
            url = url.split(">")[0].lstrip("<").replace(hub.base, other.base)
            page = reader.call(other.base, "GET", url)
            assert page.json()["status_code"] == 1000, page.text
            ids, url = ids + [loc["id"] for loc in page.json()["data"]], page.headers.get("Link", "")
        assert sorted(ids) == sorted(loc["id"] for loc in cpo.objects["locations"])
        # GET All via the hub: a snapshot taken on one instance is paged on the other.
        _wait(lambda: reader.call(hub.base, "GET", f"sender/locations?country_code={owner[0]}&party_id={owner[1]}",
                                  to=HUB).headers.get("X-Total-Count") == "10")  # fmt: skip
        snapshot = reader.call(hub.base, "GET", f"sender/locations?country_code={owner[0]}&party_id={owner[1]}&limit=3",
                               to=HUB)  # fmt: skip
        cached, url = [loc["id"] for loc in snapshot.json()["data"]], snapshot.headers.get("Link", "")
        while url:
            page = reader.call(other.base, "GET", url.split(">")[0].lstrip("<").replace(hub.base, other.base))
            cached, url = cached + [loc["id"] for loc in page.json()["data"]], page.headers.get("Link", "")
        assert sorted(cached) == sorted(ids)
    finally:
        other.stop()


def test_a_paging_link_is_followed_at_an_instance_that_has_not_loaded_its_partys_registration_yet(
    hub: Hub, services: Services, tmp_path: Path, connect_party, start_party
) -> None:
    # Seen once in a full CI run under load (the test above): the second instance answered the Link of a CPO that had
    # registered at the first a moment before with 4003 "no longer connected", as its directory had not caught up.
    # Here it is paused from before the registration until the request for the page waits at its socket, so that it
    # finds the request before it reloads.
    other = start_hub(hub_env(services, tmp_path / "other"), OUTPUT / "hub-other-behind.log")
    try:
        reader = connect_party(_roles("EMSP"))
        known = httpx.get(f"{other.base}/ocpi/2.2.1/credentials", headers=token_header(reader.hub_token or ""))
        assert known.json()["status_code"] == 1000  # its token: nothing to catch up on for the caller
        roles = _roles("CPO")
        cpo = start_party(roles, page_size=4)
        owner = party_key(cpo)
        cpo.objects["locations"] = _locations(owner, 10, "2026-11-01T00:00:00Z")
        other.process.send_signal(signal.SIGSTOP)
        try:
            cpo.register_at(hub.versions_url, hub.invite(cpo.name, roles)["token_a"])
            link = reader.call(hub.base, "GET", "sender/locations", to=owner).headers["Link"]
            path = link.split(">")[0].lstrip("<").removeprefix(hub.base)
            authorization = token_header(reader.hub_token or "")["Authorization"]
            with socket.create_connection(("127.0.0.1", int(other.base.rsplit(":", 1)[1])), timeout=30) as conn:
                # taken in by the kernel while the process is paused
                conn.sendall(f"GET {path} HTTP/1.1\r\nHost: hub\r\nAuthorization: {authorization}\r\n"
                             "Connection: close\r\n\r\n".encode())  # fmt: skip
                other.process.send_signal(signal.SIGCONT)
                answer = b"".join(iter(lambda: conn.recv(65536), b""))
        finally:
            other.process.send_signal(signal.SIGCONT)
        page = json.loads(answer.partition(b"\r\n\r\n")[2])
        assert page["status_code"] == 1000, page
        assert [loc["id"] for loc in page["data"]] == ["S0004", "S0005", "S0006", "S0007"]
    finally:
        other.stop()


def test_two_instances_pull_a_new_cpo_once(hub: Hub, services: Services, tmp_path: Path, start_party) -> None:
    other = start_hub(hub_env(services, tmp_path / "other"), OUTPUT / "hub-other-sync.log")
    try:
        roles = _roles("CPO")
        cpo = start_party(roles, page_size=10)
        cpo.objects["locations"] = _locations(party_key(cpo), 30, "2026-11-01T00:00:00Z")
        cpo.register_at(other.versions_url, other.invite(cpo.name, roles)["token_a"])
        emsp = register_at_hub(other, start_party, _roles("EMSP"))
        _wait(lambda: len(cpo.syncs()) >= 3 and cpo.owner_pulls("sessions") and emsp.owner_pulls("tokens"))
        time.sleep(3)  # both instances check every 0.5 s: a second sync or pull would have started by now
        assert [r.query for r in cpo.syncs()] == ["", "offset=10&limit=10", "offset=20&limit=10"]
        assert (len(cpo.owner_pulls("sessions")), len(emsp.owner_pulls("tokens"))) == (1, 1)
    finally:
        other.stop()


def test_two_instances_run_one_sync_round_of_every_cpo_each_interval(
    services: Services, empty_database: str, tmp_path: Path, start_party
) -> None:
    env = hub_env(services, tmp_path / "hub", OCPI_HUB_DATABASE_URL=empty_database, OCPI_HUB_SYNC_INTERVAL_S="2",
                  OCPI_HUB_REDIS_PREFIX=f"{services.redis_prefix}sync-rounds:")  # fmt: skip
    with two_hub_processes(env, tmp_path / "hub-2", "hub-sync-rounds") as (first, second):
        cpos = [register_at_hub(hub, start_party, _roles("CPO")) for hub in (first, second)]
        _wait(lambda: all(cpo.syncs() for cpo in cpos))
        time.sleep(9)
        # Each instance checks every 0.5 s. One round every 2 s is four or five in 9 s; a round of each would be nine.
        rounds = [sum("date_from=" in r.query for r in cpo.syncs()) for cpo in cpos]
        assert all(3 <= n <= 5 for n in rounds), rounds


def test_two_instances_probe_a_silent_party_once_per_probe_interval(
    services: Services, tmp_path: Path, start_party
) -> None:
    # Both check for silent parties four times a second; a probe claims the party for 30 s in Redis.
    env = {"OCPI_HUB_STILL_ALIVE_S": "1", "OCPI_HUB_OFFLINE_PROBE_S": "30"}
    first = start_hub(hub_env(services, tmp_path / "first", **env), OUTPUT / "hub-probe-first.log")
    second = start_hub(hub_env(services, tmp_path / "second", **env), OUTPUT / "hub-probe-second.log")
    try:
        party = register_at_hub(first, start_party, _roles("EMSP"))

        def probes() -> int:  # the registration's own versions GET is the first
            return sum(1 for r in party.received if r.method == "GET" and r.path == "/ocpi/versions") - 1

        _wait(lambda: probes() >= 1)
        time.sleep(3)  # a dozen more checks on each instance: none may probe again within the claim
        assert probes() == 1
    finally:
        first.stop()
        second.stop()
