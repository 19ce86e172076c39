"""Routing-log query benchmark: the auditor API's queries on millions of generated rows, without and with the
indexes of migration 0005, side by side, in one run.

    python -m bench.routing_log_queries [--rows 10000000] [--database-url postgresql://postgres@127.0.0.1:5432/test]

Creates a database of its own (ocpi_bench_log) on that server, applies the migrations, generates the rows in SQL
(generate_series: 200 parties, every module, method, routing and status in realistic proportions, bodies of a few
hundred bytes, 13 months in monthly partitions), loads them with only the primary key, times every query, builds
the indexes, times them again, prints both columns and drops the database (--keep to keep it). Each time is the
median of --repeat runs after one warm-up, so both columns read from a warm cache.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from hub.admin.export import _CsvLines
from storage.log_row_check import rows_integrity
from storage.log_search import parse_filters
from storage.log_search_sql import page_query
from storage.migrate import migrate
from storage.secrets import TokenBox
from storage.sql import QUERIES

DATABASE = "ocpi_bench_log"
SPAN = timedelta(days=395)
CHUNK = 500_000
COUNTRIES = "ARRAY['NL','DE','BE','FR','GB','AT','CH','DK']"

# One row per g; r1..r8 are independent uniform draws. Parties are skewed (a few big ones), modules and statuses
# in the proportions of a busy hub: mostly location and session pushes, few errors.
GENERATE = f"""
INSERT INTO routing_log (
    received_at, chain_id, seq, request_id, forwarded_request_id, correlation_id, from_country_code, from_party_id,
    to_country_code, to_party_id, caller_platform_id, receiver_platform_id, module, interface, method, path, query,
    routing, http_status, ocpi_status_code, duration_ms, error, request_headers, response_headers, request_body,
    request_body_size, response_body, response_body_size, prev_hash, hash, object_id, receiver_ms)
SELECT $3::timestamptz + ($4::interval * (g::float8 / $5)) + make_interval(secs => r8 * 2),
       md5('chain' || g % 8)::uuid, g / 8 + 1,
       md5(g::text), CASE WHEN routing <> 'rejected' THEN md5('f' || g) END, md5('c' || g / 3),
       ({COUNTRIES})[fp % 8 + 1], lpad(fp::text, 3, '0'), ({COUNTRIES})[tp % 8 + 1], lpad(tp::text, 3, '0'),
       fp, tp, module, interface, method,
       '/ocpi/2.2.1/' || interface || '/' || module ||
           CASE WHEN interface = 'receiver' AND module IN ('locations', 'sessions', 'tariffs', 'tokens')
                THEN '/' || ({COUNTRIES})[fp % 8 + 1] || '/' || lpad(fp::text, 3, '0') || '/' || object_id
                WHEN object_id IS NOT NULL THEN '/' || object_id ELSE '' END,
       '', routing, http_status, ocpi_status, round((-ln(1 - r7) * 40)::numeric, 3)::float8,
       CASE WHEN http_status >= 400 THEN 'receiver answered ' || http_status END,
       jsonb_build_object('content-type', 'application/json', 'x-request-id', md5(g::text)),
       jsonb_build_object('x-total-count', '1'),
       CASE WHEN method <> 'GET' THEN substr(decode(repeat(md5(g::text), 60), 'hex'), 1, 150 + (r5 * 700)::int) END,
       CASE WHEN method <> 'GET' THEN 600 + (r5 * 2800)::int ELSE 0 END,
       substr(decode(repeat(md5('r' || g), 40), 'hex'), 1, 60 + (r6 * 240)::int), 200 + (r6 * 900)::int,
       sha256(int8send(g - 1)), sha256(int8send(g)), object_id,
       -- the receiver's part of the duration, where the request went to one party (migration 0021)
       CASE WHEN routing IN ('direct', 'open') THEN round((-ln(1 - r7) * 36)::numeric, 3)::float8 END
FROM (
    SELECT g, r5, r6, r7, r8, fp, tp, module,
           CASE WHEN module IN ('tokens', 'chargingprofiles', 'commands') AND r3 < 0.5 THEN 'sender'
                ELSE 'receiver' END AS interface,
           CASE WHEN module IN ('commands', 'cdrs') THEN 'POST'
                WHEN r4 < 0.45 THEN 'PUT' WHEN r4 < 0.80 THEN 'PATCH' WHEN r4 < 0.995 THEN 'GET' ELSE 'DELETE'
           END AS method,
           CASE WHEN module IN ('locations', 'sessions', 'tariffs', 'tokens', 'chargingprofiles')
                THEN 'OBJ' || (r5 * 2000000)::int END AS object_id,
           CASE WHEN r6 < 0.90 THEN 'direct' WHEN r6 < 0.94 THEN 'broadcast' WHEN r6 < 0.97 THEN 'open'
                WHEN r6 < 0.99 THEN 'hub' ELSE 'rejected' END AS routing,
           CASE WHEN r7 < 0.97 THEN 200 WHEN r7 < 0.98 THEN 400 WHEN r7 < 0.995 THEN 404 ELSE 500 END AS http_status,
           CASE WHEN r8 < 0.94 THEN 1000 WHEN r8 < 0.96 THEN 2001 WHEN r8 < 0.97 THEN 2003 WHEN r8 < 0.98 THEN 2004
                WHEN r8 < 0.99 THEN 3000 WHEN r8 < 0.995 THEN 4001 END AS ocpi_status
    FROM (
        SELECT g, r3, r4, r5, r6, r7, r8, (r1 * r1 * 200)::int AS fp, (r2 * r2 * 200)::int AS tp,
               CASE WHEN r3 < 0.40 THEN 'locations' WHEN r3 < 0.60 THEN 'sessions' WHEN r3 < 0.75 THEN 'tokens'
                    WHEN r3 < 0.85 THEN 'cdrs' WHEN r3 < 0.92 THEN 'tariffs' WHEN r3 < 0.98 THEN 'commands'
                    WHEN r3 < 0.995 THEN 'hubclientinfo' ELSE 'chargingprofiles' END AS module
        FROM (SELECT g, random() AS r1, random() AS r2, random() AS r3, random() AS r4, random() AS r5,
                     random() AS r6, random() AS r7, random() AS r8
              FROM generate_series($1::bigint, $2::bigint) AS g) AS draws
    ) AS parties
) AS rows
"""


def _searches(row: asyncpg.Record, since: datetime) -> list[tuple[str, dict[str, str]]]:
    party = f"{row['from_country_code']}-{row['from_party_id']}"
    recent = (since - timedelta(days=7)).isoformat()
    return [
        ("no filter", {}),
        ("from_party (busy party)", {"from_party": "NL-000"}),
        ("from_party (small party)", {"from_party": party}),
        ("to_party", {"to_party": party}),
        ("party (either side)", {"party": party}),
        ("module=locations", {"module": "locations"}),
        ("module=chargingprofiles", {"module": "chargingprofiles"}),
        ("method=DELETE (no index)", {"method": "DELETE"}),
        ("routing=rejected", {"routing": "rejected"}),
        ("http_status=500", {"http_status": "500"}),
        ("ocpi_status=2003", {"ocpi_status": "2003"}),
        ("request_id", {"request_id": row["request_id"]}),
        ("request_id (forwarded id)", {"request_id": row["forwarded_request_id"] or row["request_id"]}),
        ("correlation_id", {"correlation_id": row["correlation_id"]}),
        ("object_id", {"object_id": row["object_id"] or "OBJ1"}),
        ("party+module+since 7d", {"party": party, "module": "sessions", "since": recent}),
        ("http_status=404 + until", {"http_status": "404", "until": recent}),
        # no index of their own (1 row in 200 takes 200 ms or more, 1 in 20,000 400 ms): a filter on the rows of the
        # range the other filters read, here the whole log newest first, the last 7 days or a party's rows
        ("min_receiver_ms=200 (no index)", {"min_receiver_ms": "200"}),
        ("min_receiver_ms=400 (no index, rare)", {"min_receiver_ms": "400"}),
        ("min_receiver_ms=400 + since 7d", {"min_receiver_ms": "400", "since": recent}),
        ("min_receiver_ms=100000 (none) + since 7d", {"min_receiver_ms": "100000", "since": recent}),
        ("party + min_duration_ms=200", {"party": party, "min_duration_ms": "200"}),
    ]


async def _timed(run: Callable[[], Awaitable[Any]], repeat: int, timeout_s: float) -> float | None:
    """Median seconds of repeat runs after a warm-up; None when one run exceeds the timeout."""
    times = []
    for n in range(repeat + 1):
        started = time.perf_counter()
        try:
            await asyncio.wait_for(run(), timeout_s)
        except TimeoutError:
            return None
        if n:
            times.append(time.perf_counter() - started)
    return statistics.median(times)


async def _page(conn: asyncpg.Connection, params: dict[str, str], cursor: tuple[datetime, int] | None = None) -> Any:
    sql, args = page_query(parse_filters(params), cursor, 100)
    async with conn.transaction(readonly=True):
        await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
        await conn.execute("SET LOCAL statement_timeout = '120s'")
        return await conn.fetch(sql, *args)


async def _export(conn: asyncpg.Connection, sql: str, args: list[Any], limit: int) -> int:
    """The export's path (server-side cursor, CSV encoding) for up to limit rows; the number of rows."""
    lines, rows = _CsvLines(), 0
    async with conn.transaction(readonly=True, isolation="repeatable_read"):
        await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
        async for row in conn.cursor(sql, *args, prefetch=2000):
            lines.encode(tuple(row))
            rows += 1
            if rows >= limit:
                break
    return rows


async def _measure(conn: asyncpg.Connection, sample: asyncpg.Record, newest: datetime, repeat: int,
                   timeout_s: float) -> dict[str, str]:  # fmt: skip
    results: dict[str, str] = {}

    def fmt(seconds: float | None) -> str:
        return f">{timeout_s:.0f} s" if seconds is None else f"{seconds * 1000:.1f} ms"

    for name, params in _searches(sample, newest):
        results[f"first page: {name}"] = fmt(await _timed(functools.partial(_page, conn, params), repeat, timeout_s))
    first = await _page(conn, {"party": f"{sample['from_country_code']}-{sample['from_party_id']}"})
    if len(first) > 100:
        cursor = (first[99]["received_at"], first[99]["id"])
        party = {"party": f"{sample['from_country_code']}-{sample['from_party_id']}"}
        results["next page: party (cursor)"] = fmt(await _timed(lambda: _page(conn, party, cursor), repeat, timeout_s))
    correlation = QUERIES["routing_log_correlation"]
    results["correlation lookup"] = fmt(
        await _timed(lambda: conn.fetch(correlation, sample["correlation_id"], 1001), repeat, timeout_s)
    )
    # a conversation of 1,000 rows (the most the view shows), each checked with its neighbours (storage.log_row_check)
    long_one = await conn.fetch("SELECT * FROM routing_log WHERE chain_id = $1 AND seq % 7 = 0 ORDER BY seq LIMIT 1000",
                                sample["chain_id"])  # fmt: skip
    results["conversation of 1,000 rows checked"] = fmt(
        await _timed(lambda: rows_integrity(conn, bytes(32), long_one), repeat, timeout_s)
    )
    message = QUERIES["routing_log_message"]
    results["single id lookup"] = fmt(await _timed(lambda: conn.fetchrow(message, sample["id"]), repeat, timeout_s))
    for name, params, limit in (
        ("export: one small party", {"from_party": f"{sample['from_country_code']}-{sample['from_party_id']}"},
         10**9),
        ("export: 3 days, all parties", {"since": (newest - timedelta(days=3)).isoformat()}, 10**9),
    ):  # fmt: skip
        from storage.log_search_sql import export_query

        sql, args = export_query(parse_filters(params))
        started = time.perf_counter()
        try:
            rows = await asyncio.wait_for(_export(conn, sql, args, limit), timeout_s * 3)
            elapsed = time.perf_counter() - started
            results[name] = f"{rows / elapsed:,.0f} rows/s ({rows:,} rows)"
        except TimeoutError:
            results[name] = f">{timeout_s * 3:.0f} s"
    return results


async def _generate(conn: asyncpg.Connection, rows: int) -> datetime:
    start = datetime.now(UTC) - SPAN
    await conn.execute(
        "SELECT routing_log_add_partition(m) FROM generate_series($1::timestamptz, now(), interval '1 month') AS m",
        start,
    )
    await conn.execute("SELECT setseed(0.42)")
    for low in range(1, rows + 1, CHUNK):
        high = min(low + CHUNK - 1, rows)
        started = time.perf_counter()
        await conn.execute(GENERATE, low, high, start, SPAN, rows)
        print(f"  rows {low:,}..{high:,} in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    return start + SPAN


async def main(args: argparse.Namespace) -> None:
    server = await asyncpg.connect(args.database_url)
    await server.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
    await server.execute(f"CREATE DATABASE {DATABASE}")
    url = args.database_url.rsplit("/", 1)[0] + f"/{DATABASE}"
    conn = await asyncpg.connect(url, command_timeout=None)
    try:
        await migrate(conn, TokenBox.generate_key())  # a database of its own: any key
        await conn.execute("SET maintenance_work_mem = '512MB'")
        indexes = await conn.fetch(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'routing_log' AND indexname <> $1",
            "routing_log_pkey",
        )
        for index in indexes:
            await conn.execute(f"DROP INDEX {index['indexname']}")
        print(f"generating {args.rows:,} rows", file=sys.stderr)
        started = time.perf_counter()
        newest = await _generate(conn, args.rows)
        print(f"generated in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        await conn.execute("VACUUM ANALYZE routing_log")
        sample = await conn.fetchrow(
            "SELECT * FROM routing_log WHERE from_party_id = '150' AND object_id IS NOT NULL"
            " AND received_at > now() - interval '30 days' LIMIT 1"
        )
        print("measuring without the indexes (primary key only)", file=sys.stderr)
        without = await _measure(conn, sample, newest, args.repeat, args.timeout)
        started = time.perf_counter()
        for index in indexes:
            await conn.execute(index["indexdef"].replace(" ON ONLY ", " ON "))  # pg_indexes shows the parent only
        await conn.execute("ANALYZE routing_log")
        built = time.perf_counter() - started
        print(f"indexes built in {built:.0f} s; measuring with them", file=sys.stderr)
        with_indexes = await _measure(conn, sample, newest, args.repeat, args.timeout)
        heap = await conn.fetchval("SELECT pg_size_pretty(sum(pg_table_size(inhrelid))) FROM pg_inherits"
                                   " WHERE inhparent = 'routing_log'::regclass")  # fmt: skip
        index_size = await conn.fetchval("SELECT pg_size_pretty(sum(pg_indexes_size(inhrelid))) FROM pg_inherits"
                                         " WHERE inhparent = 'routing_log'::regclass")  # fmt: skip
        total = await conn.fetchval("SELECT count(*) FROM routing_log")
    finally:
        await conn.close()
        if not args.keep:
            await server.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
        await server.close()
    print(f"\nrouting log: {total:,} rows in monthly partitions, table {heap}, indexes {index_size} "
          f"(built in {built:.0f} s); median of {args.repeat} warm runs\n")  # fmt: skip
    width = max(len(name) for name in without)
    print(f"{'query':<{width}}  {'primary key only':>30}  {'with the indexes of 0005':>30}")
    for name, value in without.items():
        print(f"{name:<{width}}  {value:>30}  {with_indexes[name]:>30}")


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds before a query counts as too slow")
    parser.add_argument("--keep", action="store_true", help="keep the database ocpi_bench_log afterwards")
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(_arguments()))
