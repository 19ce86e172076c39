"""The routing log: a row per exchange, committed before the answer, group-committed, hash-chained, searchable."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
import uuid
import zlib
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest
import structlog

from storage.log_row import RAW_BODY, SMALL_BODY_BYTES, LogEntry, content_hash
from storage.log_verify import verify
from storage.routing_log import LogUnavailable, RoutingLogWriter
from tests.conftest import ROOT, Hub, Services, hub_env
from tests.log_rows import sql, write
from tests.test_routing import LOCATION, _roles, party_key


def test_each_relayed_request_leaves_one_row_with_its_bodies_and_no_tokens(hub: Hub, connect_party, db) -> None:
    cpo, emsp = connect_party(_roles("CPO")), connect_party(_roles("EMSP"))
    cc, pid = party_key(cpo)
    location = LOCATION | {"name": "Parking garage at the central station, level -2, bays 14 to 20"}
    answer = cpo.call(hub.base, "PUT", f"receiver/locations/{cc}/{pid}/LOC1", to=party_key(emsp), body=location,
                      headers={"X-Request-ID": "row-1", "X-Correlation-ID": "row-corr"})  # fmt: skip
    # Strict mode: the row is committed before the answer, so it is there the moment the answer is.
    [row] = db.run(db.fetch("SELECT * FROM routing_log WHERE request_id = 'row-1'"))
    assert row["correlation_id"] == "row-corr"
    assert row["forwarded_request_id"] == emsp.functional()[0].headers["X-Request-ID"]
    assert (row["from_country_code"], row["from_party_id"], row["to_party_id"]) == (cc, pid, party_key(emsp)[1])
    assert (row["module"], row["interface"], row["method"], row["routing"]) == ("locations", "receiver", "PUT",
                                                                                "direct")  # fmt: skip
    assert (row["http_status"], row["ocpi_status_code"]) == (200, 1000) and row["duration_ms"] > 0
    sent = emsp.functional()[0].body
    assert len(sent) >= SMALL_BODY_BYTES and zlib.decompress(row["request_body"]) == sent
    # the receiver's short envelope is kept as it came: compressing it would save a few bytes for 5 us
    assert len(answer.content) < SMALL_BODY_BYTES and row["response_body"] == RAW_BODY + answer.content
    assert len(row["hash"]) == 32 and len(row["prev_hash"]) == 32
    everything = str(dict(row))
    for secret in (cpo.hub_token, emsp.token_b, "Authorization", "authorization"):
        assert secret not in everything


def test_rejected_requests_leave_a_row_too(hub: Hub, connect_party, db) -> None:
    cpo = connect_party(_roles("CPO"))
    for n, (path, to) in enumerate([("sender/locations", ("ZZ", "ZZZ")), ("sender/nothing", None)]):
        cpo.call(hub.base, "GET", path, to=to, headers={"X-Request-ID": f"rejected-{n}"})
    rows = db.run(db.fetch("SELECT request_id, routing, ocpi_status_code, http_status, error FROM routing_log "
                           "WHERE request_id LIKE 'rejected-%' ORDER BY request_id"))  # fmt: skip
    assert [(r["routing"], r["ocpi_status_code"], r["http_status"]) for r in rows] == [
        ("rejected", 4001, 200),
        ("rejected", 2000, 404),
    ]
    assert all(r["error"] for r in rows)


def test_a_nul_character_in_an_id_is_logged_without_holding_up_the_log(hub: Hub, connect_party, db) -> None:
    # PostgreSQL text holds no NUL: an id "%00" in a path, or "\\u0000" in a CDR's JSON id, once made the writer retry
    # its batch forever, and every later caller waited for a commit that never came.
    cpo, emsp = connect_party(_roles("CPO")), connect_party(_roles("EMSP"))
    cc, pid = party_key(cpo)
    pushed = cpo.call(hub.base, "PUT", f"receiver/locations/{cc}/{pid}/A%00B", to=party_key(emsp),
                      body=LOCATION | {"id": "A\x00B"}, headers={"X-Request-ID": "nul-1"})  # fmt: skip
    cdr = cpo.call(hub.base, "POST", "receiver/cdrs", to=party_key(emsp), content=b'{"id": "C\\u0000D"}',
                   headers={"X-Request-ID": "nul-2", "Content-Type": "application/json"})  # fmt: skip
    after = cpo.call(hub.base, "PUT", f"receiver/locations/{cc}/{pid}/LOC1", to=party_key(emsp), body=LOCATION,
                     headers={"X-Request-ID": "nul-3"})  # fmt: skip
    assert [a.json()["status_code"] for a in (pushed, cdr, after)] == [1000, 1000, 1000]
    rows = db.run(db.fetch("SELECT request_id, path, object_id FROM routing_log WHERE request_id LIKE 'nul-%' "
                           "ORDER BY request_id"))  # fmt: skip
    assert [(r["request_id"], r["object_id"]) for r in rows] == [("nul-1", "A\ufffdB"), ("nul-2", "C\ufffdD"),
                                                                 ("nul-3", "LOC1")]  # fmt: skip
    assert rows[0]["path"].endswith("/A%00B")  # the path as it came, percent-encoded
    with hub.admin() as admin:  # an auditor searching for the id as the party spelt it finds the row
        found = admin.get("/admin/api/routing-log", params={"object_id": "A\x00B"}).json()["items"]
    assert [row["request_id"] for row in found] == ["nul-1"]


def test_admin_search_by_correlation_id_pages_with_a_cursor_without_gaps(hub: Hub, connect_party) -> None:
    cpo, emsp = connect_party(_roles("CPO")), connect_party(_roles("EMSP"))
    cc, pid = party_key(cpo)
    correlation = str(uuid.uuid4())
    for n in range(7):
        cpo.call(
            hub.base,
            "GET",
            f"receiver/locations/{cc}/{pid}/L{n}",
            to=party_key(emsp),
            headers={"X-Correlation-ID": correlation, "X-Request-ID": f"{correlation}-{n}"},
        )
    found, cursor = [], None
    with hub.admin() as admin:
        while True:
            page = admin.get("/admin/api/routing-log", params={"correlation_id": correlation, "limit": 3}
                             | ({"cursor": cursor} if cursor else {})).json()  # fmt: skip
            found += [item["request_id"] for item in page["items"]]
            if not (cursor := page["next_cursor"]):
                break
        assert sorted(found) == [f"{correlation}-{n}" for n in range(7)] and len(set(found)) == 7
        by_request = admin.get("/admin/api/routing-log", params={"request_id": f"{correlation}-3"}).json()
        assert [i["path"] for i in by_request["items"]] == [f"/ocpi/2.2.1/receiver/locations/{cc}/{pid}/L3"]
        assert admin.get("/admin/api/routing-log", params={"cursor": "%%%"}).status_code == 400
        assert httpx.get(f"{hub.base}/admin/api/routing-log").status_code == 401
        verdict = admin.get("/admin/api/routing-log/verify").json()
    assert verdict["ok"] is True and verdict["rows"] > 7 and verdict["first_bad_id"] is None


def _entry(n: int) -> LogEntry:
    return LogEntry(received_at=datetime.now(UTC), request_id=f"r{n}", correlation_id="c", module="locations",
                    method="PUT", path=f"/ocpi/2.2.1/receiver/locations/NL/ABC/L{n}", routing="direct",
                    http_status=200, duration_ms=1.5, request_headers={"content-type": "application/json"},
                    request_body=b'{"id": "L%d"}' % n)  # fmt: skip


def _written_log(database_url: str, rows: int) -> RoutingLogWriter:
    return write(database_url, [_entry(n) for n in range(rows)], body_cap=1024)


def _verify(database_url: str, tamper: str | None = None):  # type: ignore[no-untyped-def]
    async def check():  # type: ignore[no-untyped-def]
        conn = await asyncpg.connect(database_url)
        try:
            if tamper:
                await conn.execute(tamper)
            return await verify(conn)
        finally:
            await conn.close()

    return asyncio.run(check())


def test_the_hash_of_a_row_is_the_one_its_chain_was_written_with() -> None:
    # Rows written by earlier releases must go on verifying: the canonical form a row is hashed in may not change.
    row = dict(
        received_at=datetime(2026, 12, 1, 4, 30, 0, 123456, tzinfo=UTC), chain_id=uuid.UUID(
        "6a1e3f0c-2b9d-4c7e-8f00-1d2e3f405162"), seq=7, request_id="req-1", forwarded_request_id="fwd-1",
        correlation_id="cor-1", from_country_code="NL", from_party_id="CPO", to_country_code="DE", to_party_id="EMS",
        caller_platform_id=1, receiver_platform_id=2, module="locations", interface="receiver", method="PUT",
        path="/ocpi/2.2.1/receiver/locations/NL/CPO/LOC1", query="", routing="direct", http_status=200,
        ocpi_status_code=1000, duration_ms=1.25, error=None, request_headers='{"x-request-id": "req-1"}',
        response_headers=None, request_body=zlib.compress(b"{}"), request_body_size=2, response_body=None,
        response_body_size=0,
    )  # fmt: skip
    expected = "ff87fb1eb8543deb53cf25f502e5c66efd6138888a0fac58caff39cb1dd3c4be"
    assert content_hash(bytes(32), row).hex() == expected
    assert content_hash(bytes(32), row | {"request_headers": {"x-request-id": "req-1"}}).hex() == expected
    assert content_hash(bytes(32), row | {"seq": 8}).hex() != expected


def test_concurrent_rows_are_group_committed_and_all_written(empty_database: str) -> None:
    writer = _written_log(empty_database, 300)
    assert writer.rows == 300
    assert writer.batches < 300  # rows in flight share a transaction
    result = _verify(empty_database)
    assert (result.ok, result.rows) == (True, 300)


def test_the_writer_reconnects_when_its_connection_is_killed_and_loses_no_row(empty_database: str) -> None:
    # The writer keeps one connection between batches; PostgreSQL may drop it (restart, failover, idle kill).
    _written_log(empty_database, 1)  # migrated, with a first chain

    async def run() -> RoutingLogWriter:
        pool = await asyncpg.create_pool(empty_database, min_size=1, max_size=3)
        admin = await asyncpg.connect(empty_database)
        writer = RoutingLogWriter(pool, body_cap=1024, commit_timeout_s=5)  # a stuck writer fails the test in 5 s
        async with writer.running():
            for n in range(1, 41):
                await writer.record(_entry(n))
                if n % 10 == 0:  # kill every backend of the writer's pool but the admin's own
                    await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                        "WHERE datname = current_database() AND pid <> pg_backend_pid()")  # fmt: skip
                if n % 20 == 0:  # asyncpg sees the connection go and takes it back from the writer on its own
                    await asyncio.sleep(0.3)
        await admin.close()
        await pool.close()
        return writer

    writer = asyncio.run(asyncio.wait_for(run(), 60))  # a writer that died would leave record() waiting forever
    assert writer.rows == 40
    result = _verify(empty_database)
    assert (result.ok, result.rows) == (True, 41)


class _CuttingProxy:
    """A TCP proxy to PostgreSQL that can go silent in one direction on the connections it has open, as a network
    that loses the way back, or a server that stopped reading, does: nothing is closed, nothing arrives. What it
    holds back instead of dropping reaches the server when deliver_held() is called, as from a server that went on
    after a freeze."""

    def __init__(self, database_url: str) -> None:
        self.target = urlsplit(database_url)
        self._open: list[dict[str, str]] = []  # per connection: direction -> "dropped" or "held"
        self._delivered = asyncio.Event()

    async def start(self) -> str:
        server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.server = server
        port = server.sockets[0].getsockname()[1]
        return self.target._replace(netloc=f"{self.target.username}@127.0.0.1:{port}").geturl()

    def silence(self, direction: str, hold: bool = False) -> None:  # "answers" or "requests", on connections open now
        for connection in self._open:
            connection[direction] = "held" if hold else "dropped"

    def deliver_held(self) -> None:
        self._delivered.set()

    async def _relay(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection(self.target.hostname, self.target.port)
        connection: dict[str, str] = {}
        self._open.append(connection)

        async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: str) -> None:
            held = bytearray()
            with contextlib.suppress(OSError):
                while data := await reader.read(65536):
                    if direction not in connection:
                        writer.write(data)
                        await writer.drain()
                    elif connection[direction] == "held":
                        held += data
                if held:
                    await self._delivered.wait()
                    writer.write(held)
                    await writer.drain()
            writer.close()

        await asyncio.gather(pump(client_reader, server_writer, "requests"),
                             pump(server_reader, client_writer, "answers"))  # fmt: skip


def test_a_write_the_server_runs_after_it_was_given_up_and_retried_is_not_written_twice(empty_database: str) -> None:
    # A frozen server runs the statement it had received when it goes on, though the writer gave it up and wrote the
    # batch again on a new connection meanwhile: both committed, and the chain had its rows twice (seen in CI).
    _written_log(empty_database, 1)

    async def run() -> None:
        proxy = _CuttingProxy(empty_database)
        pool = await asyncpg.create_pool(await proxy.start(), min_size=1, max_size=2)
        writer = RoutingLogWriter(pool, body_cap=1024, commit_timeout_s=10, write_timeout_s=1)
        try:
            async with writer.running():
                await writer.record(_entry(1))
                proxy.silence("requests", hold=True)
                await writer.record(_entry(2))  # given up after 1 s, written on a new connection
                proxy.deliver_held()  # the first attempt reaches the server now
                await asyncio.sleep(1)
                await writer.record(_entry(3))
        finally:
            await pool.close()
            proxy.server.close()

    asyncio.run(asyncio.wait_for(run(), 60))
    result = _verify(empty_database)
    assert (result.ok, result.rows) == (True, 4)


@pytest.mark.parametrize("lost", ["answers", "requests"])
def test_a_write_the_database_never_answers_is_given_up_and_its_rows_are_written_once(
    empty_database: str, lost: str
) -> None:
    # A server that stops answering (frozen, its disk stalled, the network gone) held the writer and every caller
    # behind it for as long as TCP kept the connection. Now the write is given up after write_timeout_s and tried
    # on a new connection; when only the answer was lost, the batch is committed already and is not written twice
    # (the retry used to fail on the chain's unique seq for ever).
    _written_log(empty_database, 1)

    async def run() -> tuple[list[float], RoutingLogWriter]:
        proxy = _CuttingProxy(empty_database)
        pool = await asyncpg.create_pool(await proxy.start(), min_size=1, max_size=2)
        writer = RoutingLogWriter(pool, body_cap=1024, commit_timeout_s=10, write_timeout_s=1)
        took = []
        try:
            async with writer.running():
                for n in (1, 2, 3):
                    if n == 2:
                        proxy.silence(lost)
                    started = time.monotonic()
                    await writer.record(_entry(n))
                    took.append(time.monotonic() - started)
        finally:
            await pool.close()
            proxy.server.close()
        return took, writer

    took, writer = asyncio.run(asyncio.wait_for(run(), 60))
    assert took[1] > 1 and took[1] < 5 and took[0] < 1 and took[2] < 1
    assert writer.rows == 3
    result = _verify(empty_database)
    assert (result.ok, result.rows) == (True, 4)


def test_rows_not_committed_when_the_writer_closes_are_spooled_and_written_once_by_the_next_writer(
    empty_database: str, tmp_path: Path
) -> None:
    # The batch in flight at close may have been committed with its answer lost: the next writer must not write it
    # twice, and must write the rows queued behind it, in the chain they were given.
    _written_log(empty_database, 1)
    spool = tmp_path / "spool"

    async def stop_while_answers_are_lost() -> list[object]:
        proxy = _CuttingProxy(empty_database)
        pool = await asyncpg.create_pool(await proxy.start(), min_size=1, max_size=2)
        writer = RoutingLogWriter(pool, body_cap=1024, write_timeout_s=30, spool_dir=spool, drain_timeout_s=1)
        try:
            async with writer.running():
                await writer.record(_entry(1))
                proxy.silence("answers")
                calls = [asyncio.create_task(writer.record(_entry(2)))]
                await asyncio.sleep(0.3)  # entry 2 is in flight, entry 3 queued behind it
                calls.append(asyncio.create_task(writer.record(_entry(3))))
                await asyncio.sleep(0.1)
        finally:
            proxy.server.close()
            pool.terminate()
        return list(await asyncio.gather(*calls, return_exceptions=True))

    async def start_again() -> RoutingLogWriter:
        pool = await asyncpg.create_pool(empty_database, min_size=1, max_size=2)
        writer = RoutingLogWriter(pool, body_cap=1024, spool_dir=spool)
        async with writer.running():
            await writer.record(_entry(4))
        await pool.close()
        return writer

    outcomes = asyncio.run(asyncio.wait_for(stop_while_answers_are_lost(), 60))
    assert all(isinstance(outcome, LogUnavailable) for outcome in outcomes)
    assert [path.suffix for path in spool.iterdir()] == [".routing-log-spool"]
    asyncio.run(asyncio.wait_for(start_again(), 60))
    assert list(spool.iterdir()) == []
    result = _verify(empty_database)
    assert (result.ok, result.rows) == (True, 5)  # the first row, 1, 2 (once), 3 and 4


def test_a_writer_that_cannot_spool_its_rows_still_closes_and_says_how_many_were_lost(
    empty_database: str, tmp_path: Path
) -> None:
    _written_log(empty_database, 1)
    (tmp_path / "file").write_text("")

    async def close_with_rows_left() -> None:
        pool = await asyncpg.create_pool(empty_database, min_size=1, max_size=2)
        blocker = await asyncpg.connect(empty_database)
        spool = tmp_path / "file" / "spool"  # under a file: mkdir fails, as on a full or read-only disk
        writer = RoutingLogWriter(pool, body_cap=1024, strict=False, spool_dir=spool, drain_timeout_s=0.5)
        try:
            async with blocker.transaction():
                await blocker.execute("LOCK TABLE routing_log_chain IN EXCLUSIVE MODE")  # commits stall
                async with writer.running():
                    for n in (1, 2):
                        await writer.record(_entry(n))
        finally:
            await blocker.close()
            pool.terminate()

    with structlog.testing.capture_logs() as logs:
        asyncio.run(asyncio.wait_for(close_with_rows_left(), 30))
    [lost] = [entry for entry in logs if entry["event"] == "routing_log_rows_lost"]
    assert lost["rows"] == 2 and "Not a directory" in lost["error"]


def test_callers_queued_behind_a_batch_that_cannot_commit_are_told_in_time_too(empty_database: str) -> None:
    # Only the waiters of the batch being written had a deadline: a caller whose row queued behind it waited for
    # as long as the database was away.
    _written_log(empty_database, 1)

    async def run() -> tuple[list[object], list[float]]:
        pool = await asyncpg.create_pool(empty_database, min_size=1, max_size=2)
        blocker = await asyncpg.connect(empty_database)
        writer = RoutingLogWriter(pool, body_cap=1024, commit_timeout_s=1, write_timeout_s=30)

        async def call(n: int) -> tuple[object, float]:
            started = time.monotonic()
            try:
                return await writer.record(_entry(n)), time.monotonic() - started
            except LogUnavailable as exc:
                return exc, time.monotonic() - started

        try:
            async with writer.running(), blocker.transaction():
                await blocker.execute("LOCK TABLE routing_log_chain IN EXCLUSIVE MODE")  # commits stall
                first = asyncio.create_task(call(1))
                await asyncio.sleep(0.5)
                behind = [asyncio.create_task(call(n)) for n in (2, 3)]
                await asyncio.sleep(2.5)
                answered = [task.result() for task in (first, *behind) if task.done()]
        finally:
            await blocker.close()
            await pool.close()
        return [outcome for outcome, _ in answered], [took for _, took in answered]

    outcomes, took = asyncio.run(asyncio.wait_for(run(), 60))
    assert len(outcomes) == 3 and all(isinstance(outcome, LogUnavailable) for outcome in outcomes)
    assert all(1 <= t < 2 for t in took), took  # each at its own deadline, while the database still held them
    result = _verify(empty_database)
    assert (result.ok, result.rows) == (True, 4)  # and every row written once it could be


def test_async_mode_holds_callers_back_once_the_writer_falls_behind_and_loses_no_row(empty_database: str) -> None:
    # A database slower than the traffic must not grow the queue without bound; big backlogs go in capped batches.
    _written_log(empty_database, 1)

    async def run() -> tuple[int, RoutingLogWriter]:
        pool = await asyncpg.create_pool(empty_database, min_size=1, max_size=2)
        blocker = await asyncpg.connect(empty_database)
        writer = RoutingLogWriter(pool, body_cap=1024, strict=False, max_queued_rows=5, max_batch_rows=3)
        try:
            async with writer.running():
                async with blocker.transaction():
                    await blocker.execute("LOCK TABLE routing_log_chain IN EXCLUSIVE MODE")  # commits stall
                    calls = [asyncio.create_task(writer.record(_entry(n))) for n in range(1, 13)]
                    await asyncio.sleep(0.5)
                    answered_while_stalled = sum(call.done() for call in calls)
                await asyncio.wait_for(asyncio.gather(*calls), 10)
        finally:
            await blocker.close()
            await pool.close()
        return answered_while_stalled, writer

    answered_while_stalled, writer = asyncio.run(asyncio.wait_for(run(), 60))
    assert answered_while_stalled == 5  # the queue's worth, answered at once; the rest waited for their commits
    assert writer.rows == 12 and writer.batches >= 4
    result = _verify(empty_database)
    assert (result.ok, result.rows) == (True, 13)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("request_headers", {"x-odd": object()}),  # a bug's way of making a row that cannot be chained
        ("http_status", 2**40),  # ... or one the database refuses (out of its integer's range), on every retry
    ],
)
def test_a_row_that_cannot_be_written_fails_its_caller_and_the_log_goes_on(
    empty_database: str, field: str, value: object
) -> None:
    _written_log(empty_database, 1)
    broken = _entry(1)
    setattr(broken, field, value)

    async def run() -> list[object]:
        pool = await asyncpg.create_pool(empty_database, min_size=1, max_size=2)
        writer = RoutingLogWriter(pool, body_cap=1024)
        async with writer.running():
            outcomes = await asyncio.gather(writer.record(broken), writer.record(_entry(2)), return_exceptions=True)
            outcomes.append(await writer.record(_entry(3)))
        await pool.close()
        return outcomes

    outcomes = asyncio.run(asyncio.wait_for(run(), 30))
    assert isinstance(outcomes[0], LogUnavailable) and outcomes[1:] == [None, None]
    result = _verify(empty_database)
    assert (result.ok, result.rows) == (True, 3)


def test_a_row_refused_for_a_value_a_party_chose_is_stored_without_it_saying_why(empty_database: str) -> None:
    _written_log(empty_database, 1)
    refused = _entry(1)
    refused.ocpi_status_code = 2**40  # a bug's way past forward.OcpiStatusCode: out of the column's integer range
    refused.response_body = b'{"status_code": 1099511627776}'

    async def run() -> list[object]:
        pool = await asyncpg.create_pool(empty_database, min_size=1, max_size=2)
        writer = RoutingLogWriter(pool, body_cap=1024)
        async with writer.running():
            outcomes = await asyncio.gather(writer.record(refused), writer.record(_entry(2)), return_exceptions=True)
        await pool.close()
        return outcomes

    assert asyncio.run(asyncio.wait_for(run(), 30)) == [None, None]  # both callers get their answer
    [row] = sql(empty_database, "SELECT * FROM routing_log WHERE request_id = 'r1'")
    assert (row["path"], row["http_status"], row["routing"]) == (
        "/ocpi/2.2.1/receiver/locations/NL/ABC/L1",
        200,
        "direct",
    )
    assert row["ocpi_status_code"] is None and row["request_body"] is None and row["response_body"] is None
    assert row["request_headers"] is None
    assert "stored without its bodies, headers and OCPI status code" in row["error"]
    assert "out of int32 range" in row["error"]
    result = _verify(empty_database)
    assert (result.ok, result.rows) == (True, 3)


@pytest.mark.parametrize(
    ("tamper", "bad_row"),
    [
        ("UPDATE routing_log SET http_status = 500 WHERE request_id = 'r17'", "r17"),
        ("UPDATE routing_log SET request_body = NULL WHERE request_id = 'r5'", "r5"),
        ("DELETE FROM routing_log WHERE request_id = 'r10'", "r11"),
        ("DELETE FROM routing_log WHERE seq = (SELECT max(seq) FROM routing_log)", "r28"),
        ("DELETE FROM routing_log WHERE seq = 1", "r1"),
    ],
)
def test_verify_detects_an_edited_or_deleted_row(empty_database: str, tamper: str, bad_row: str) -> None:
    _written_log(empty_database, 30)
    assert _verify(empty_database).ok
    result = _verify(empty_database, tamper)
    assert result.ok is False and result.problems

    async def bad_request_id() -> str:
        conn = await asyncpg.connect(empty_database)
        try:
            return await conn.fetchval("SELECT request_id FROM routing_log WHERE id = $1", result.first_bad_id)
        finally:
            await conn.close()

    # rows are chained in the order record() was called: r0 is seq 1
    assert asyncio.run(bad_request_id()) == bad_row


def test_ocpi_hub_verify_checks_the_chains_from_the_command_line_and_fails_on_a_changed_row(
    services: Services, empty_database: str, tmp_path: Path
) -> None:
    _written_log(empty_database, 5)

    def verify_command(*args: str) -> subprocess.CompletedProcess[str]:
        env = hub_env(services, tmp_path, OCPI_HUB_DATABASE_URL=empty_database)
        return subprocess.run([sys.executable, "-m", "hub.cli", "verify", *args], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=120)  # fmt: skip

    good = verify_command()
    assert good.returncode == 0, good.stderr
    assert json.loads(good.stdout) | {"problems": []} == {"ok": True, "rows": 5, "first_bad_id": None, "problems": []}
    assert json.loads(verify_command("--since", "2000-01-01T00:00:00Z").stdout)["rows"] == 5

    changed = sql(empty_database, "UPDATE routing_log SET http_status = 500 WHERE seq = 3 RETURNING id")[0]["id"]
    bad = verify_command()
    assert bad.returncode == 1
    answer = json.loads(bad.stdout)
    assert answer["ok"] is False and answer["first_bad_id"] == changed and "was changed" in answer["problems"][0]

    wrong = verify_command("--since", "yesterday")
    assert wrong.returncode == 2 and "--since must be an ISO 8601 time" in wrong.stderr
    trail = sql(empty_database, "SELECT actor_kind, actor_name, action FROM audit_trail")
    assert [tuple(row) for row in trail] == [("admin", "ocpi-hub verify", "verify")] * 3
