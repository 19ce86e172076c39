"""Outages of the hub's own servers: PostgreSQL away or hanging, Redis away or restarted. Callers get a clear answer
in time, requests that do not need the server go through, and no accepted routing-log row is lost."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import re
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import httpx
import psutil
import redis

from storage.embedded import EmbeddedPostgres, EmbeddedValkey
from tests.conftest import OUTPUT, Services, hub_env, register_at_hub, start_hub
from tests.parties import token_header
from tests.test_credentials_rotation import console_page
from tests.test_operations import _metric
from tests.test_pull_sync import _wait
from tests.test_routing import LOCATION, _roles, party_key


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
        # status_codes.asciidoc: a request that reached the OCPI layer is not answered with an HTTP error
        assert (infos.status_code, infos.json()["status_code"]) == (200, 3000)
        assert infos.json()["status_message"].startswith("the hub's PostgreSQL is unavailable (")
        assert infos.json()["status_message"].endswith("; try again shortly")
        assert "Traceback" not in hub.log()
        assert postgres._launch(port) is None  # the same server back on the same port
        postgres.owned = True  # so that stop() below stops it again
        _wait(lambda: httpx.get(f"{hub.base}/ready", timeout=10).status_code == 200)
    finally:
        hub.stop()
        postgres.stop()


def _logged_rows(database_url: str, like: str) -> list[asyncpg.Record]:
    """Every routing-log row whose request_id matches a LIKE pattern, in the order they were written."""

    async def fetch() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(database_url)
        try:
            return await conn.fetch("SELECT * FROM routing_log WHERE request_id LIKE $1 ORDER BY id", like)
        finally:
            await conn.close()

    return asyncio.run(fetch())


def _amended(database_url: str) -> dict[int, tuple[int, int, str]]:
    """(HTTP status, OCPI status, message) each amended row's caller was answered instead, by row id."""

    async def fetch() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(database_url)
        try:
            return await conn.fetch("SELECT r.id, a.http_status, a.ocpi_status_code, a.message FROM routing_log AS r "
                                    "JOIN routing_log_amendment AS a USING (chain_id, seq)")  # fmt: skip
        finally:
            await conn.close()

    return {row["id"]: (row["http_status"], row["ocpi_status_code"], row["message"]) for row in asyncio.run(fetch())}


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
                            body=LOCATION | {"id": "L1", "party_id": pid},
                            headers={"X-Request-ID": request_id})  # fmt: skip

        def client_infos() -> httpx.Response:  # a party's request the hub answers from PostgreSQL
            return httpx.get(f"{hub.base}/ocpi/2.2.1/sender/hubclientinfo", headers=token_header(emsp.hub_token or ""),
                             timeout=60)  # fmt: skip

        def timed(call: Callable[[], httpx.Response]) -> tuple[httpx.Response, float]:
            started = time.monotonic()
            return call(), time.monotonic() - started

        # The registrations' own messages (the CPO told of the eMSP) written first: the push below is then alone in
        # the batch being committed when PostgreSQL stops, its row chained, not queued behind theirs.
        # So are the hub's pull sync of the new CPO (OCPI_HUB_SYNC_CHECK_S 0.5 s in the tests) and its row.
        _wait(lambda: cpo.client_infos())
        _wait(lambda: cpo.syncs())
        time.sleep(0.5)
        assert push("before-postgres-hangs").json()["status_code"] == 1000
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
            # a readiness probe (Kubernetes: timeoutSeconds 3) is answered within READY_TIMEOUT_S (2 s): it waited
            # 10 s more the first time, for the connection of its cancelled query to be given back (a drill)
            readies = [timed(lambda: httpx.get(f"{hub.base}/ready", timeout=30)) for _ in range(3)]
        finally:
            for process in frozen:
                os.kill(process, signal.SIGCONT)
        assert [answer.status_code for answer, _ in readies] == [503] * 3
        assert all(took < 3.5 for _, took in readies), [took for _, took in readies]
        # hub.runtime.DATABASE_TIMEOUT_S: 10 s
        assert 9 < infos_took < 30 and (infos_answer.status_code, infos_answer.json()["status_code"]) == (200, 3000)
        assert infos_answer.json()["status_message"] == ("the hub's PostgreSQL is unavailable (TimeoutError: no "
                                                         "answer in time); try again shortly")  # fmt: skip
        # the commit timeout is OCPI_HUB_FORWARD_TIMEOUT_S (2 s in the tests)
        assert 1.5 < took < 10
        assert hung.status_code == 200 and hung.json()["status_code"] == 4000
        assert hung.json()["status_message"] == ("the routing log could not commit this exchange in time; "
                                                 "the exchange itself went through")  # fmt: skip
        assert [r.path for r in emsp.functional()] == [f"/ocpi/2.2.1/locations/receiver/{cc}/{pid}/L1"] * 2
        after = push("after-postgres-answers-again")
        assert after.json()["status_code"] == 1000
        assert _metric(hub, "ocpi_hub_routing_log_rows_waiting") == 0  # the rows written meanwhile, the amendment too
        logged = _logged_rows(url, "%postgres%")
        assert [row["request_id"] for row in logged] == ["before-postgres-hangs", "while-postgres-hangs",
                                                         "after-postgres-answers-again"]  # fmt: skip
        # committed as it was chained, the receiver's 1000, and amended with the 4000 its caller got
        assert logged[1]["ocpi_status_code"] == 1000
        assert _amended(url) == {logged[1]["id"]: (200, 4000, hung.json()["status_message"])}
        told = {"http_status": 200, "ocpi_status_code": 4000, "status_message": hung.json()["status_message"]}
        search = {"request_id": "while-postgres-hangs"}
        with hub.admin() as admin:
            assert admin.get("/admin/api/routing-log/verify").json()["ok"] is True
            [item] = admin.get("/admin/api/routing-log", params=search).json()["items"]
            message = admin.get(f"/admin/api/routing-log/{item['id']}").json()
            [exported, _manifest] = [json.loads(line) for line in admin.get("/admin/api/routing-log/export",
                                     params=search).text.splitlines()]  # fmt: skip
        # shown with the row, whose own fields say what the receiver answered
        for shown in (item, message, exported):
            assert shown["ocpi_status_code"] == 1000
            answered, received = shown["answered_instead"], datetime.fromisoformat(shown["received_at"])
            assert received < datetime.fromisoformat(answered.pop("answered_at")) < datetime.now(UTC)
            assert answered == told
        page = console_page(hub, f"/console/log/{item['id']}")
        assert "Answered instead</dt>" in page and "HTTP 200 · OCPI 4000 at" in page
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
        # Parties the hub has nothing of its own to send to (no locations Sender to pull, no ClientInfo Receiver): the
        # three pushes are the only rows when PostgreSQL goes away, the first of them in flight. A ClientInfo push or
        # the CPO's first pull sync still on its way then (answered late on a loaded machine) was the batch in flight,
        # the first push's row queued behind it, and six rows were spooled.
        cpo = register_at_hub(hub, start_party, _roles("CPO"), modules={"tariffs": ["SENDER"]})
        emsp = register_at_hub(hub, start_party, _roles("EMSP"), modules={"locations": ["RECEIVER"]})
        cc, pid = party_key(cpo)
        postgres.stop()

        def push(n: int) -> httpx.Response:
            return cpo.call(hub.base, "PUT", f"receiver/locations/{cc}/{pid}/L{n}", to=party_key(emsp),
                            body=LOCATION | {"id": f"L{n}", "party_id": pid},
                            headers={"X-Request-ID": f"while-away-{n}"})  # fmt: skip

        answers = [push(0)]  # its row is the batch being written, retried until the database is back
        with concurrent.futures.ThreadPoolExecutor() as threads:
            answers += list(threads.map(push, range(1, 3)))  # theirs queued behind it
        assert [a.json()["status_code"] for a in answers] == [4000] * 3  # not committed in time, but relayed
        assert len(emsp.functional()) == 3
        # what an operator is alerted by (deploy/prometheus): /metrics needs no PostgreSQL
        assert _metric(hub, "ocpi_hub_routing_log_write_failures_total", kind="retried") >= 1
        # the rows not committed: the one being written, its amendment (its caller got the 4000), and the two queued
        _wait(lambda: _metric(hub, "ocpi_hub_routing_log_rows_waiting") == 4)
        scraped = httpx.get(f"{hub.base}/metrics", timeout=10).text  # exported at 0 before its first failure
        assert 'ocpi_hub_routing_log_write_failures_total{kind="refused"} 0.0' in scraped
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
        rows = sorted(_logged_rows(url, "while-away-%"), key=lambda row: row["request_id"])
        assert [row["request_id"] for row in rows] == ["while-away-0", "while-away-1", "while-away-2"]
        # An auditor reads what the callers got: the queued rows say 4000 (they said the receiver's 1000); the one
        # whose content its hash had fixed already still says 1000, and its amendment, spooled with it, says 4000.
        assert [row["ocpi_status_code"] for row in rows] == [1000, 4000, 4000]
        # after the commit timeout (2 s), and however long a loaded machine took beyond it
        late = [re.search(r"the caller was answered 4000 after (\d+\.\d) s instead", row["error"]) for row in rows[1:]]
        assert all(found and float(found[1]) >= 2.0 for found in late), rows
        assert '"routing_log_row_not_as_answered"' in hub.log() and '"request_id":"while-away-0"' in hub.log()
        amended = _amended(url)
        assert list(amended) == [rows[0]["id"]]
        assert amended[rows[0]["id"]] == (200, 4000, answers[0].json()["status_message"])
        with again.admin() as admin:
            verdict = admin.get("/admin/api/routing-log/verify").json()
        assert verdict["ok"] is True, verdict
        assert "Traceback" not in again.log()
    finally:
        again.stop()
        postgres.stop()


@contextlib.contextmanager
def _two_workers_on_their_own_postgres(services: Services, tmp_path: Path, log_name: str):  # type: ignore[no-untyped-def]
    """A hub of two workers on an embedded PostgreSQL of its own, which the test may stop or freeze:
    (hub, postgres, the workers)."""
    postgres = EmbeddedPostgres(tmp_path / "pg")
    url = postgres.start()
    hub = start_hub(hub_env(services, tmp_path / "hub") | {"OCPI_HUB_DATABASE_URL": url}, OUTPUT / log_name,
                    "--workers", "2")  # fmt: skip
    try:
        workers = [child for child in psutil.Process(hub.process.pid).children()
                   if "spawn_main" in " ".join(child.cmdline())]  # fmt: skip
        assert len(workers) == 2
        yield hub, postgres, workers
    finally:
        hub.stop()
        postgres.stop()


def test_a_hub_of_two_workers_exits_1_not_0_when_a_worker_that_died_cannot_start_again_while_postgres_is_away(
    services: Services, tmp_path: Path
) -> None:
    # uvicorn restarts a worker that died; one that then fails to start makes it stop every worker and return as from
    # a SIGTERM. The hub exited 0: a supervisor restarting only on failure left it down (an operator's drill).
    with _two_workers_on_their_own_postgres(services, tmp_path, "hub-worker-died.log") as (hub, postgres, workers):
        postgres.stop()
        workers[0].kill()
        assert hub.process.wait(60) == 1
        assert "a worker could not start" in hub.log()
        assert "<traceback object" not in hub.log()  # asyncpg's pool retrying meanwhile: tests/test_log_lines.py


def test_a_hub_of_two_workers_told_to_stop_while_a_worker_is_starting_exits_0(
    services: Services, tmp_path: Path
) -> None:
    # The worker still starting (here: waiting for a frozen PostgreSQL) then exits as one that failed to start; the
    # hub took that for a failed start and exited 1, which a supervisor restarting on failure would act on.
    log_name = "hub-stopped-while-starting.log"
    with _two_workers_on_their_own_postgres(services, tmp_path, log_name) as (hub, postgres, workers):
        postmaster = postgres._live_pid()
        assert postmaster is not None
        frozen = _server_processes(postmaster)
        try:
            for process in frozen:
                os.kill(process, signal.SIGSTOP)
            workers[0].kill()
            supervisor, deadline = psutil.Process(hub.process.pid), time.monotonic() + 10
            while workers[0].pid in [child.pid for child in supervisor.children()] or len(supervisor.children()) < 2:
                assert time.monotonic() < deadline, "the worker was not started again"
                time.sleep(0.1)
            time.sleep(1)  # its start waits for PostgreSQL
            hub.process.send_signal(signal.SIGTERM)
            assert hub.process.wait(60) == 0, hub.log()[-2000:]
            assert "a worker could not start" not in hub.log()
        finally:
            for process in frozen:
                os.kill(process, signal.SIGCONT)


@contextlib.contextmanager
def _hub_on_its_own_redis(services: Services, tmp_path: Path, start_party, log_name: str):  # type: ignore[no-untyped-def]
    """A hub on a Valkey of its own, which the test may stop and start, with a CPO and an eMSP registered:
    (hub, valkey, its URL, cpo, emsp)."""
    valkey = EmbeddedValkey(tmp_path / "valkey")
    url = valkey.start()
    hub = start_hub(hub_env(services, tmp_path / "hub") | {"OCPI_HUB_REDIS_URL": url}, OUTPUT / log_name)
    try:
        cpo, emsp = register_at_hub(hub, start_party, _roles("CPO")), register_at_hub(hub, start_party, _roles("EMSP"))
        yield hub, valkey, url, cpo, emsp
    finally:
        hub.stop()
        valkey.stop()


def _start_again(valkey: EmbeddedValkey, url: str) -> None:
    """The same server back on the same port, its data kept."""
    port = urlsplit(url).port
    assert port is not None and valkey._launch(port) is None
    valkey.owned = True  # so that stop() stops it again


def test_while_redis_is_away_requests_that_need_it_get_a_clear_4000_and_the_rest_go_through(
    services: Services, tmp_path: Path, start_party, db
) -> None:
    with _hub_on_its_own_redis(services, tmp_path, start_party, "hub-no-redis.log") as (hub, valkey, url, cpo, emsp):
        cc, pid = party_key(cpo)
        command = {"response_url": f"{emsp.base}/cmd/1", "location_id": "L1", "token": {"uid": "T"}}
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
                          body=LOCATION | {"id": "L1", "party_id": pid})  # fmt: skip
        assert pushed.json()["status_code"] == 1000
        _wait(lambda: '"location_cache_updates_held"' in hub.log())  # its cache update: tried, kept for later
        _start_again(valkey, url)
        # held, not dropped: the hub's cache has it once Redis is back (it was lost until the next pull sync)
        _wait(lambda: '"location_cache_updates_resumed"' in hub.log())
        got = emsp.call(hub.base, "GET", "sender/locations/L1", to=("NL", "HUB"))
        assert got.json()["status_code"] == 1000 and got.json()["data"]["id"] == "L1", got.text
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


def _hub_redis_connections(redis_url: str) -> int:
    """How many connections the hub's Redis pool holds: every client of that Redis but the hub's pub/sub watcher
    and the one asking."""
    client = redis.Redis.from_url(redis_url)
    try:
        return sum(1 for c in client.client_list() if "P" not in c["flags"]) - 1
    finally:
        client.close()


def _subscribers(redis_url: str, channel: str) -> int:
    client = redis.Redis.from_url(redis_url)
    try:
        [(_, count)] = client.pubsub_numsub(channel)
        return int(count)
    finally:
        client.close()


def test_after_redis_restarts_every_request_goes_through_though_the_pool_held_connections_to_the_old_server(
    services: Services, tmp_path: Path, start_party, db
) -> None:
    # After Redis restarted (or failed over), every connection idle in the hub's pool was a socket to the old server,
    # and each request that took one failed with 4000 (ConnectionError: Connection closed by server) though Redis
    # was back. Requests that read Redis: a GET All the hub answers from its location cache (a script and a
    # pipeline), and an open command (its owner looked up, its response_url kept under a new key).
    with _hub_on_its_own_redis(services, tmp_path, start_party, "hub-redis-restart.log") as (
        hub,
        valkey,
        url,
        cpo,
        emsp,
    ):
        cc, pid = party_key(cpo)
        locations = [LOCATION | {"country_code": cc, "party_id": pid, "id": f"R{n}",
                                 "last_updated": f"2026-11-25T09:0{n}:00Z"} for n in range(4)]  # fmt: skip
        cpo.objects["locations"] = locations[:3]  # the hub's pull sync of the CPO finds what it pushes

        def push(location: dict) -> None:
            answer = cpo.call(hub.base, "PUT", f"receiver/locations/{cc}/{pid}/{location['id']}", to=party_key(emsp),
                              body=location)  # fmt: skip
            assert answer.json()["status_code"] == 1000, answer.text

        def get_all(request_id: str) -> list[str]:
            answer = emsp.call(hub.base, "GET", f"sender/locations?country_code={cc}&party_id={pid}",
                               to=("NL", "HUB"), headers={"X-Request-ID": request_id})  # fmt: skip
            assert (answer.status_code, answer.json()["status_code"]) == (200, 1000), (request_id, answer.text)
            return [location["id"] for location in answer.json()["data"]]

        def open_command(request_id: str, location_id: str = "R1") -> None:
            body = {"response_url": f"{emsp.base}/{request_id}", "location_id": location_id,
                    "token": {"uid": "T"}}  # fmt: skip
            answer = emsp.call(hub.base, "POST", "receiver/commands/START_SESSION", body=body,
                               headers={"X-Request-ID": request_id})  # fmt: skip
            assert (answer.status_code, answer.json()["status_code"]) == (200, 1000), (request_id, answer.text)
            assert answer.json()["data"] == {"result": "ACCEPTED", "timeout": 30}

        def goes_through(request_id: str) -> None:
            if request_id.endswith("all"):
                assert get_all(request_id) == ["R0", "R1", "R2"]
            else:
                open_command(request_id)

        for location in locations[:3]:
            push(location)
        _wait(lambda: get_all("warm-up") == ["R0", "R1", "R2"])
        time.sleep(0.2)  # the owner index is written in batches
        with concurrent.futures.ThreadPoolExecutor(16) as threads:
            list(threads.map(goes_through, [f"warm-up-{n}-{kind}" for n in range(16) for kind in ("all", "cmd")]))
        held = _hub_redis_connections(url)
        assert held >= 3
        valkey.stop()
        _start_again(valkey, url)
        at_once = [f"after-restart-{n}-{kind}" for n in range(held + 2) for kind in ("all", "cmd")]
        with concurrent.futures.ThreadPoolExecutor(len(at_once)) as threads:
            list(threads.map(goes_through, at_once))
        one_by_one = [f"after-restart-then-{n}-{kind}" for n in range(held + 2) for kind in ("all", "cmd")]
        for request_id in one_by_one:
            goes_through(request_id)
        rows = db.run(db.fetch("SELECT request_id, ocpi_status_code FROM routing_log "
                               "WHERE request_id LIKE 'after-restart-%'"))  # fmt: skip
        assert sorted((r["request_id"], r["ocpi_status_code"]) for r in rows) == sorted(
            (request_id, 1000) for request_id in at_once + one_by_one
        )
        # each command reached the CPO once, with a response_url of the hub's
        forwarded = [r for r in cpo.functional() if r.headers["X-Correlation-ID"].startswith("after-restart-")]
        assert sorted(r.headers["X-Correlation-ID"] for r in forwarded) == sorted(
            request_id for request_id in at_once + one_by_one if request_id.endswith("cmd")
        )
        assert all(json.loads(r.body)["response_url"].startswith(f"{hub.base}/ocpi/2.2.1/results/") for r in forwarded)
        # what runs beside the requests came through too: the directory's watcher listens again, and a push now
        # reaches the location cache and the owner index
        _wait(lambda: _subscribers(url, f"{services.redis_prefix}directory:changed") == 1)
        cpo.objects["locations"] = locations
        push(locations[3])
        _wait(lambda: get_all("pushed-after-restart") == ["R0", "R1", "R2", "R3"])
        time.sleep(0.2)  # the owner index is written in batches
        open_command("command-after-restart", "R3")
        assert "Traceback" not in hub.log()
