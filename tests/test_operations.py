"""Operations: health and readiness, Prometheus metrics, graceful shutdown under load, several hub instances."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import resource
import signal
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import httpx
import psutil
import pytest
import redis.asyncio as redis
from prometheus_client.parser import text_string_to_metric_families

from hub.party_api import PartyClient
from hub.runtime import stop_background_tasks
from hub.settings import Settings
from routing.pull_sync import PullSync, run_scheduled
from routing.still_alive import StillAlive
from storage.directory import Directory
from storage.embedded import EmbeddedPostgres, EmbeddedValkey
from storage.location_cache import LocationCache
from storage.log_row import LogEntry
from tests.conftest import OUTPUT, Hub, Services, hub_env, register_at_hub, start_hub
from tests.parties import token_header
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


def test_while_postgres_is_away_ready_flips_and_routes_that_need_it_answer_503_saying_so(
    services: Services, tmp_path: Path, start_party
) -> None:
    postgres = EmbeddedPostgres(tmp_path / "pg")
    url = postgres.start()
    port = urlsplit(url).port
    assert port is not None
    hub = start_hub(hub_env(services, tmp_path / "hub") | {"OCPI_HUB_DATABASE_URL": url}, OUTPUT / "hub-ready.log")
    try:
        party = register_at_hub(hub, start_party, _roles("CPO"))
        assert httpx.get(f"{hub.base}/ready").status_code == 200
        postgres.stop()
        answer = httpx.get(f"{hub.base}/ready", timeout=10)
        assert answer.status_code == 503 and "PostgreSQL unreachable" in answer.json()["problems"][0]
        assert httpx.get(f"{hub.base}/health").status_code == 200  # the process itself is fine
        with hub.admin() as admin:
            parties = admin.get("/admin/api/parties")
        assert parties.status_code == 503
        assert parties.json()["error"].startswith("the hub's PostgreSQL is unavailable (")
        infos = httpx.get(f"{hub.base}/ocpi/2.2.1/sender/hubclientinfo", headers=token_header(party.hub_token or ""))
        assert (infos.status_code, infos.json()["status_code"]) == (503, 3000)
        assert infos.json()["status_message"].startswith("the hub's PostgreSQL is unavailable (")
        assert infos.json()["status_message"].endswith("; try again shortly")
        assert "Traceback" not in hub.log()
        assert postgres._launch(port) is None  # the same server back on the same port
        postgres.owned = True  # so that stop() below stops it again
        _wait(lambda: httpx.get(f"{hub.base}/ready", timeout=10).status_code == 200)
    finally:
        hub.stop()
        postgres.stop()


def _logged_request_ids(database_url: str, like: str) -> list[str]:
    """The request_id of every routing-log row matching a LIKE pattern, in the order they were written."""

    async def fetch() -> list[str]:
        conn = await asyncpg.connect(database_url)
        try:
            found = await conn.fetch("SELECT request_id FROM routing_log WHERE request_id LIKE $1 ORDER BY id", like)
            return [row["request_id"] for row in found]
        finally:
            await conn.close()

    return asyncio.run(fetch())


def _server_processes(pid: int) -> list[int]:
    """A server's process and every process it started (PostgreSQL: a backend per connection, its workers)."""
    return [pid, *(child.pid for child in psutil.Process(pid).children(recursive=True))]


def test_while_postgres_hangs_callers_are_answered_in_time_and_their_rows_are_written_once_it_answers(
    services: Services, tmp_path: Path, start_party
) -> None:
    # A PostgreSQL that stops answering without closing anything (here: every one of its processes stopped by a
    # signal; in production a stalled disk or a lost network) held every routed request for as long as TCP kept
    # the writer's connection, and every request that reads PostgreSQL for as long as that connection lasted.
    postgres = EmbeddedPostgres(tmp_path / "pg")
    url = postgres.start()
    hub = start_hub(hub_env(services, tmp_path / "hub") | {"OCPI_HUB_DATABASE_URL": url}, OUTPUT / "hub-pg-hung.log")
    try:
        cpo, emsp = register_at_hub(hub, start_party, _roles("CPO")), register_at_hub(hub, start_party, _roles("EMSP"))
        cc, pid = party_key(cpo)

        def push(request_id: str) -> httpx.Response:
            return cpo.call(hub.base, "PUT", f"receiver/locations/{cc}/{pid}/L1", to=party_key(emsp),
                            body=LOCATION | {"id": "L1"}, headers={"X-Request-ID": request_id})  # fmt: skip

        def client_infos() -> httpx.Response:  # a party's request the hub answers from PostgreSQL
            return httpx.get(f"{hub.base}/ocpi/2.2.1/sender/hubclientinfo", headers=token_header(emsp.hub_token or ""),
                             timeout=60)  # fmt: skip

        def timed(call: Callable[[], httpx.Response]) -> tuple[httpx.Response, float]:
            started = time.monotonic()
            return call(), time.monotonic() - started

        postmaster = postgres._live_pid()
        assert postmaster is not None
        frozen = _server_processes(postmaster)
        for process in frozen:
            os.kill(process, signal.SIGSTOP)
        try:
            with concurrent.futures.ThreadPoolExecutor() as threads:
                infos = threads.submit(timed, client_infos)
                hung, took = timed(lambda: push("while-postgres-hangs"))
                infos_answer, infos_took = infos.result()
        finally:
            for process in frozen:
                os.kill(process, signal.SIGCONT)
        # hub.runtime.DATABASE_TIMEOUT_S: 10 s
        assert 9 < infos_took < 30 and (infos_answer.status_code, infos_answer.json()["status_code"]) == (503, 3000)
        assert infos_answer.json()["status_message"] == ("the hub's PostgreSQL is unavailable (TimeoutError: no "
                                                         "answer in time); try again shortly")  # fmt: skip
        # the commit timeout is OCPI_HUB_FORWARD_TIMEOUT_S (2 s in the tests)
        assert 1.5 < took < 10
        assert hung.status_code == 200 and hung.json()["status_code"] == 4000
        assert hung.json()["status_message"] == ("the routing log could not commit this exchange in time; "
                                                 "the exchange itself went through")  # fmt: skip
        assert [r.path for r in emsp.functional()] == [f"/ocpi/2.2.1/locations/receiver/{cc}/{pid}/L1"]
        after = push("after-postgres-answers-again")
        assert after.json()["status_code"] == 1000
        assert _logged_request_ids(url, "%postgres%") == ["while-postgres-hangs", "after-postgres-answers-again"]
        with hub.admin() as admin:
            assert admin.get("/admin/api/routing-log/verify").json()["ok"] is True
        assert "Traceback" not in hub.log()
    finally:
        hub.stop()
        postgres.stop()


def test_a_hub_stopped_while_postgres_is_away_keeps_its_unwritten_rows_and_the_next_start_writes_them(
    services: Services, tmp_path: Path, start_party
) -> None:
    # Shutdown waited for every accepted row to be committed: with PostgreSQL away a SIGTERM never ended, and the
    # SIGKILL that follows (a supervisor's, Kubernetes') lost the rows of exchanges that had gone through.
    postgres = EmbeddedPostgres(tmp_path / "pg")
    url = postgres.start()
    data_dir = tmp_path / "hub"
    hub = start_hub(hub_env(services, data_dir) | {"OCPI_HUB_DATABASE_URL": url}, OUTPUT / "hub-spool.log")
    try:
        cpo, emsp = register_at_hub(hub, start_party, _roles("CPO")), register_at_hub(hub, start_party, _roles("EMSP"))
        cc, pid = party_key(cpo)
        postgres.stop()

        def push(n: int) -> httpx.Response:
            return cpo.call(hub.base, "PUT", f"receiver/locations/{cc}/{pid}/L{n}", to=party_key(emsp),
                            body=LOCATION | {"id": f"L{n}"}, headers={"X-Request-ID": f"while-away-{n}"})  # fmt: skip

        with concurrent.futures.ThreadPoolExecutor() as threads:
            answers = list(threads.map(push, range(3)))
        assert [a.json()["status_code"] for a in answers] == [4000] * 3  # not committed in time, but relayed
        assert len(emsp.functional()) == 3
        started = time.monotonic()
        assert hub.stop() == 0
        assert time.monotonic() - started < 20
        assert '"rows":3' in hub.log() and "routing_log_rows_spooled" in hub.log()
        assert list((data_dir / "routing-log-spool").iterdir()) != []
    finally:
        hub.stop()
    url = postgres.start()
    again = start_hub(hub_env(services, data_dir) | {"OCPI_HUB_DATABASE_URL": url}, OUTPUT / "hub-spool-2.log")
    try:
        assert "routing_log_spool_written" in again.log()
        assert list((data_dir / "routing-log-spool").iterdir()) == []
        assert sorted(_logged_request_ids(url, "while-away-%")) == ["while-away-0", "while-away-1", "while-away-2"]
        with again.admin() as admin:
            verdict = admin.get("/admin/api/routing-log/verify").json()
        assert verdict["ok"] is True, verdict
        assert "Traceback" not in again.log()
    finally:
        again.stop()
        postgres.stop()


def test_while_redis_is_away_requests_that_need_it_get_a_clear_4000_and_the_rest_go_through(
    services: Services, tmp_path: Path, start_party, db
) -> None:
    valkey = EmbeddedValkey(tmp_path / "valkey")
    port = urlsplit(url := valkey.start()).port
    assert port is not None
    hub = start_hub(hub_env(services, tmp_path / "hub") | {"OCPI_HUB_REDIS_URL": url}, OUTPUT / "hub-no-redis.log")
    try:
        cpo, emsp = register_at_hub(hub, start_party, _roles("CPO")), register_at_hub(hub, start_party, _roles("EMSP"))
        cc, pid = party_key(cpo)
        command = {"response_url": "https://emsp.example/cmd/1", "location_id": "L1", "token": {"uid": "T"}}
        valkey.stop()
        # a command's response_url is replaced by a hub URL kept in Redis: it cannot be relayed now
        refused = emsp.call(hub.base, "POST", "receiver/commands/START_SESSION", to=party_key(cpo), body=command,
                            headers={"X-Request-ID": "cmd-without-redis"})  # fmt: skip
        assert refused.status_code == 200 and refused.json()["status_code"] == 4000
        message = refused.json()["status_message"]
        assert message.startswith("the hub's Redis is unavailable (ConnectionError")
        assert message.endswith("; nothing was forwarded")
        assert cpo.functional() == []
        [row] = db.run(
            db.fetch("SELECT ocpi_status_code, error FROM routing_log WHERE request_id = 'cmd-without-redis'")
        )
        assert (row["ocpi_status_code"], row["error"]) == (4000, message)
        # a push needs no Redis on its way: it goes through
        pushed = cpo.call(hub.base, "PUT", f"receiver/locations/{cc}/{pid}/L1", to=party_key(emsp),
                          body=LOCATION | {"id": "L1"})  # fmt: skip
        assert pushed.json()["status_code"] == 1000
        assert valkey._launch(port) is None  # the same server back on the same port
        valkey.owned = True  # so that stop() below stops it again
        again = emsp.call(hub.base, "POST", "receiver/commands/START_SESSION", to=party_key(cpo), body=command)
        assert again.json()["status_code"] == 1000, again.text
        assert [r.path for r in cpo.functional()] == ["/ocpi/2.2.1/commands/receiver/START_SESSION"]
        # a Redis that hangs (here: stopped by a signal) costs a request REDIS_TIMEOUT_S (5 s), not for ever
        frozen = valkey._live_pid()
        assert frozen is not None
        os.kill(frozen, signal.SIGSTOP)
        try:
            started = time.monotonic()
            hung = emsp.call(hub.base, "POST", "receiver/commands/START_SESSION", to=party_key(cpo), body=command)
            took = time.monotonic() - started
        finally:
            os.kill(frozen, signal.SIGCONT)
        assert hung.json()["status_code"] == 4000 and "(TimeoutError" in hung.json()["status_message"]
        assert 4 < took < 20
        assert "Traceback" not in hub.log()
    finally:
        hub.stop()
        valkey.stop()


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
                still_alive = StillAlive(pool, client, prefix, http, Directory, HUB, record, 300, 30)
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


def test_two_instances_pull_a_new_cpo_once(hub: Hub, services: Services, tmp_path: Path, start_party) -> None:
    other = start_hub(hub_env(services, tmp_path / "other"), OUTPUT / "hub-other-sync.log")
    try:
        roles = _roles("CPO")
        cpo = start_party(roles, page_size=10)
        cpo.objects["locations"] = _locations(party_key(cpo), 30, "2026-11-01T00:00:00Z")
        cpo.register_at(other.versions_url, other.invite(cpo.name, roles)["token_a"])
        _wait(lambda: len(cpo.syncs()) >= 3)
        time.sleep(3)  # both instances check every 0.5 s: a second sync would have started by now
        assert [r.query for r in cpo.syncs()] == ["", "offset=10&limit=10", "offset=20&limit=10"]
    finally:
        other.stop()


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
