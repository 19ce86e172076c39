"""Routing-log rows for the auditor tests, written by the hub's own RoutingLogWriter (a real hash chain), and the rows
of the hub's own messages as the tests of its control-plane flows read them back."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from storage.log_body import body_of
from storage.log_row import COLUMNS, LogEntry, legacy_hash
from storage.log_verify import verify
from storage.migrate import migrate, migration_files
from storage.routing_log import RoutingLogWriter
from tests.conftest import LOG_KEY, SECRET_KEY

MODULES = ("locations", "sessions", "tokens", "cdrs", "commands", "tariffs")
METHODS = ("GET", "PUT", "PATCH", "POST", "DELETE")
ROUTINGS = ("direct", "broadcast", "open", "hub", "rejected")


def varied_entries(start: datetime, count: int, parties: Sequence[tuple[str, str]], tag: str) -> list[LogEntry]:
    """count rows a few seconds apart (every fifth pair at the same instant, to test ties in pagination), with
    every module, method, routing, status and party combination cycling at different rates."""
    entries = []
    for n in range(count):
        sender, receiver = parties[n % len(parties)], parties[(n // 2 + 1) % len(parties)]
        module = MODULES[n % len(MODULES)]
        if module in ("locations", "sessions", "tariffs"):
            path = f"/ocpi/2.2.1/receiver/{module}/{sender[0]}/{sender[1]}/{tag}-OBJ{n % 9}"
        elif module == "tokens":
            path = f"/ocpi/2.2.1/sender/tokens/{tag}-OBJ{n % 9}/authorize"
        else:
            path = f"/ocpi/2.2.1/receiver/{module}"
        entries.append(
            LogEntry(
                received_at=start + timedelta(seconds=n - (n % 5 == 1)),
                request_id=f"{tag}-req-{n}",
                forwarded_request_id=f"{tag}-fwd-{n}" if n % 3 else None,
                correlation_id=f"{tag}-corr-{n % 4}",
                module=module,
                interface="sender" if module == "tokens" else "receiver",
                method=METHODS[n % len(METHODS)],
                path=path,
                routing=ROUTINGS[n % 7 % len(ROUTINGS)],
                http_status=(200, 200, 404, 200, 500)[n % 5],
                ocpi_status_code=(1000, 2001, None, 1000, 3000, 1000)[n % 6],
                duration_ms=float(n % 17) + 0.5,
                from_country_code=sender[0],
                from_party_id=sender[1],
                to_country_code=receiver[0],
                to_party_id=receiver[1],
                request_headers={"content-type": "application/json"},
                request_body=b'{"id": "%d", "n": %d}' % (n, n) if n % 2 else b"not json <%d>" % n,
                response_body=b'{"status_code": 1000}',
            )
        )
    return entries


def object_of(entry: LogEntry) -> str | None:
    """The object id the test put in the path (independent of storage.log_object_ids.object_id_of)."""
    marker = entry.path.split("/")
    found = [part for part in marker if "-OBJ" in part]
    return found[0] if found else None


def write(database_url: str, entries: Sequence[LogEntry], body_cap: int = 4096) -> RoutingLogWriter:
    """The entries written by a RoutingLogWriter of their own, all in flight at once (group commit)."""

    async def run() -> RoutingLogWriter:
        conn = await asyncpg.connect(database_url)
        await migrate(conn, SECRET_KEY)
        await conn.close()
        pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
        writer = RoutingLogWriter(pool, key=LOG_KEY, body_cap=body_cap)
        async with writer.running():
            # queued in the order given (gather starts them in order), so the chain follows that order
            await asyncio.gather(*(writer.record(entry) for entry in entries))
        await pool.close()
        return writer

    return asyncio.run(run())


def sql(database_url: str, statement: str, *args: object) -> list[asyncpg.Record]:
    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(database_url)
        try:
            return await conn.fetch(statement, *args)
        finally:
            await conn.close()

    return asyncio.run(run())


def numbered_entry(n: int) -> LogEntry:
    """A pushed location's row, request_id "r{n}"."""
    return LogEntry(received_at=datetime.now(UTC), request_id=f"r{n}", correlation_id="c", module="locations",
                    method="PUT", path=f"/ocpi/2.2.1/receiver/locations/NL/ABC/L{n}", routing="direct",
                    http_status=200, duration_ms=1.5, request_headers={"content-type": "application/json"},
                    request_body=b'{"id": "L%d"}' % n)  # fmt: skip


def numbered_log(database_url: str, rows: int) -> RoutingLogWriter:
    """rows numbered rows (r0, r1, ...) written in that order: r0 is seq 1 of a new chain."""
    return write(database_url, [numbered_entry(n) for n in range(rows)], body_cap=1024)


def verified(database_url: str, tamper: str | None = None):  # type: ignore[no-untyped-def]
    """storage.log_verify's verdict on the database, after the statement tamper if one is given."""

    async def run():  # type: ignore[no-untyped-def]
        conn = await asyncpg.connect(database_url)
        try:
            if tamper:
                await conn.execute(tamper)
            return await verify(conn, LOG_KEY)
        finally:
            await conn.close()

    return asyncio.run(run())


def own_conversation(db, correlation_id: str) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    """The routing-log rows of one X-Correlation-ID (db: the tests' Db), oldest first, bodies back as text."""
    sql = ("SELECT request_id, correlation_id, module, method, path, routing, from_country_code, from_party_id, "
           "to_country_code, to_party_id, caller_platform_id, receiver_platform_id, http_status, ocpi_status_code, "
           "error, request_headers, "
           "response_headers, request_body, response_body FROM routing_log WHERE correlation_id = $1 "
           "ORDER BY received_at, id")  # fmt: skip
    rows = db.run(db.fetch(sql, correlation_id))
    return [dict(r) | {"request_body": body_of(r["request_body"]).decode(),
                       "response_body": body_of(r["response_body"]).decode()} for r in rows]  # fmt: skip


def calls_of(rows: Sequence[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """(module, method, path, HTTP status, receiver platform, to) of each row of the hub's own, as tests list them."""
    return [(r["module"], r["method"], r["path"], r["http_status"], r["receiver_platform_id"],
             (r["to_country_code"], r["to_party_id"]) if r["to_party_id"] else None) for r in rows]  # fmt: skip


def own_messages_wrong(rows: Sequence[dict[str, Any]], received: Sequence[Any], *tokens: str | None) -> str:
    """What makes rows not the hub's own messages as the party received them (received: its Received requests): each
    from the hub, routing 'hub', with a request id of its own that the party got with the row's correlation id, no
    headers kept and none of tokens anywhere; "" when nothing does."""
    ids = [r["request_id"] for r in rows]
    if {(r["routing"], r["from_country_code"], r["from_party_id"]) for r in rows} != {("hub", "NL", "HUB")}:
        return "not all from the hub, routing 'hub'"
    if len(set(ids)) != len(ids) or {r["correlation_id"] for r in rows} & set(ids):
        return f"request ids not each a call's own: {ids}"
    got = {(r.headers.get("X-Request-ID"), r.headers.get("X-Correlation-ID")) for r in received}
    if not {(r["request_id"], r["correlation_id"]) for r in rows} <= got:
        return "the party did not receive each row's ids"
    if {(r["request_headers"], r["response_headers"]) for r in rows} != {(None, None)}:
        return "headers kept"
    dump = repr(rows)
    return ", ".join(f"token {t[:4]}... logged" for t in tokens if t and t in dump)


def unkeyed_chain(months: list[datetime]) -> list[tuple[Any, ...]]:
    """A chain as a hub before keyed hashes wrote it, a row in each month given."""
    chain, prev, rows = uuid.uuid4(), bytes(32), []
    for n, month in enumerate(months):
        values = dict.fromkeys(COLUMNS) | {
            "received_at": month + timedelta(minutes=n), "chain_id": chain, "seq": n + 1, "request_id": f"old-{n}",
            "correlation_id": "old", "module": "sessions", "interface": "receiver", "method": "PUT",
            "path": f"/ocpi/2.2.1/receiver/sessions/NL/ABC/S{n}", "query": "", "routing": "direct",
            "http_status": 200, "ocpi_status_code": 1000, "duration_ms": 2.5, "request_body_size": 0,
            "response_body_size": 0, "from_country_code": "NL", "from_party_id": "ABC",
        }  # fmt: skip
        values["prev_hash"], values["hash"] = prev, legacy_hash(prev, values)
        rows.append(tuple(values[c] for c in COLUMNS))
        prev = values["hash"]
    return rows


def previous_version(record: tuple[Any, ...]) -> tuple[Any, ...]:
    """A chained record (storage.log_chain.LogChain.link) as a hub of the version before migration 0021 writes it: a
    routing_log_row, without the times (of an entry that has none, which that version's rows are hashed without)."""
    return record[: len(COLUMNS) + 3]


def run_on(database_url: str, work: Any) -> Any:
    """work(conn) on a connection of its own, run to its end."""

    async def run() -> Any:
        conn = await asyncpg.connect(database_url)
        try:
            return await work(conn)
        finally:
            await conn.close()

    return asyncio.run(run())


async def migrate_up_to(conn: asyncpg.Connection, version: int) -> None:
    """The schema as the migrations up to version left it, as a release before the later ones did."""
    await conn.execute("CREATE TABLE schema_migration (version integer PRIMARY KEY, name text NOT NULL,"
                       " applied_at timestamptz NOT NULL DEFAULT now())")  # fmt: skip
    for number, name, text in migration_files():
        if number <= version:
            await conn.execute(text)
            await conn.execute("INSERT INTO schema_migration (version, name) VALUES ($1, $2)", number, name)
