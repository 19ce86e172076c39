"""Link pagination at full speed, for benchmarks: a CPO party serving its locations page by page, and walkers.

    BENCH_CPO=NL-CPO BENCH_CPO_LOCATIONS=10000 granian --interface rsgi bench.paging:app

The party is bench/receiver.py plus a locations Sender. Every location is the spec's example
(examples/location_example.json of ocpi/ocpi v2.2.1-d2) with its own ids, coordinates and last_updated, encoded
once at start. GET on /ocpi/2.2.1/locations/sender pages through them as mod_locations.asciidoc and
transport_and_format.asciidoc (Pagination) say: offset, limit (at most MAX_LIMIT), date_from (incl.), date_to
(excl.), X-Total-Count, X-Limit and a Link to the next page. walk() follows such Links with one client (aiohttp),
run_walkers() with wrk, every connection walking to the last page and starting again.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import os
import re
import subprocess
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import aiohttp
import msgspec

from bench import receiver
from bench.harness import _ms
from routing.link_header import next_url as next_url_of

MAX_LIMIT = 1000
SENDER = "/ocpi/2.2.1/locations/sender"
_FIRST = datetime(2026, 1, 1, tzinfo=UTC)


def _connector(cid: str, fmt: str, tariff: str, updated: str) -> dict[str, Any]:
    return {"id": cid, "standard": "IEC_62196_T2", "format": fmt, "power_type": "AC_3_PHASE", "max_voltage": 220,
            "max_amperage": 16, "tariff_ids": [tariff], "last_updated": updated}  # fmt: skip


# examples/location_example.json, field for field (1,274 bytes as compact JSON)
EXAMPLE: dict[str, Any] = {
    "country_code": "BE", "party_id": "BEC", "id": "LOC1", "publish": True, "name": "Gent Zuid",
    "address": "F.Rooseveltlaan 3A", "city": "Gent", "postal_code": "9000", "country": "BEL",
    "coordinates": {"latitude": "51.047599", "longitude": "3.729944"}, "parking_type": "ON_STREET",
    "evses": [
        {"uid": "3256", "evse_id": "BE*BEC*E041503001", "status": "AVAILABLE", "capabilities": ["RESERVABLE"],
         "connectors": [_connector("1", "CABLE", "11", "2015-03-16T10:10:02Z"),
                        _connector("2", "SOCKET", "13", "2015-03-18T08:12:01Z")],
         "physical_reference": "1", "floor_level": "-1", "last_updated": "2015-06-28T08:12:01Z"},
        {"uid": "3257", "evse_id": "BE*BEC*E041503002", "status": "RESERVED", "capabilities": ["RESERVABLE"],
         "connectors": [_connector("1", "SOCKET", "12", "2015-06-29T20:39:09Z")],
         "physical_reference": "2", "floor_level": "-2", "last_updated": "2015-06-29T20:39:09Z"},
    ],
    "operator": {"name": "BeCharged"}, "time_zone": "Europe/Brussels", "last_updated": "2015-06-29T20:39:09Z",
}  # fmt: skip


def location(n: int, country: str, party: str) -> dict[str, Any]:
    """The example as location n of this CPO: its own ids and coordinates, last_updated n seconds after _FIRST."""
    updated = (_FIRST + timedelta(seconds=n)).strftime("%Y-%m-%dT%H:%M:%SZ")
    doc = json.loads(json.dumps(EXAMPLE))
    doc |= {
        "country_code": country,
        "party_id": party,
        "id": f"LOC{n:06d}",
        "last_updated": updated,
        "coordinates": {"latitude": f"{50.5 + (n % 997) / 1000:.6f}", "longitude": f"{3.5 + n / 10000:.6f}"},
    }
    for i, evse in enumerate(doc["evses"]):
        evse |= {"uid": f"{n}-{i + 1}", "evse_id": f"{country}*{party}*E{n:07d}{i + 1}", "last_updated": updated}
        for connector in evse["connectors"]:
            connector["last_updated"] = updated
    return doc  # fmt: skip


def _build() -> tuple[list[bytes], list[float]]:
    country, party = os.environ.get("BENCH_CPO", "NL-CPO").split("-", 1)
    count = int(os.environ.get("BENCH_CPO_LOCATIONS", "10000"))
    docs = [json.dumps(location(n, country, party), separators=(",", ":")).encode() for n in range(count)]
    return docs, [(_FIRST + timedelta(seconds=n)).timestamp() for n in range(count)]


DOCS, STAMPS = _build()  # ordered by last_updated


def _epoch(text: str) -> float:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _page(base: str, query: str) -> tuple[int, list[tuple[str, str]], bytes]:
    params = dict(parse_qsl(query))
    try:
        offset, limit = int(params.get("offset", 0)), min(int(params.get("limit", MAX_LIMIT)), MAX_LIMIT)
        low = bisect.bisect_left(STAMPS, _epoch(params["date_from"])) if "date_from" in params else 0
        high = bisect.bisect_left(STAMPS, _epoch(params["date_to"])) if "date_to" in params else len(STAMPS)
    except ValueError:
        return 400, receiver.JSON, b'{"status_code":2001,"status_message":"bad paging parameters","timestamp":"x"}'
    high = max(low, high)
    start, end = min(low + max(offset, 0), high), min(low + max(offset, 0) + max(limit, 1), high)
    body = b'{"data":[' + b",".join(DOCS[start:end]) + b'],"status_code":1000,"timestamp":"2026-11-25T10:00:00Z"}'
    headers = [*receiver.JSON, ("x-total-count", str(high - low)), ("x-limit", str(MAX_LIMIT))]
    if end < high:
        headers.append(("link", f'<{base}{SENDER}?{urlencode(params | {"offset": str(end - low)})}>; rel="next"'))
    return 200, headers, body


async def app(scope, protocol) -> None:  # type: ignore[no-untyped-def]
    if scope.proto == "http" and scope.method == "GET" and scope.path.rstrip("/") == SENDER:
        base = f"http://{scope.authority or scope.headers.get('host')}"
        protocol.response_bytes(*_page(base, scope.query_string))
        return
    await receiver.app(scope, protocol)


_WALK_LUA = """
local queue, threads = {}, {}
function setup(thread) table.insert(threads, thread) end
function init(args) bad = 0 end
function request()
  return wrk.format("GET", table.remove(queue, 1) or wrk.path)
end
function response(status, headers, body)
  local total, link = nil, nil
  for name, value in pairs(headers) do
    local lower = string.lower(name)
    if lower == "x-total-count" then total = value elseif lower == "link" then link = value end
  end
  if status ~= 200 or total == nil then bad = bad + 1 return end
  local url = link and string.match(link, "<([^>]*)>")
  if url then table.insert(queue, string.match(url, "^https?://[^/]+(/.*)$") or url) end
end
function done(summary, latency, requests)
  local b = 0
  for _, t in ipairs(threads) do b = b + t:get("bad") end
  io.write(string.format("walk-bad %d\\n", b))
end
"""


class _Id(msgspec.Struct):
    id: str


class _Page(msgspec.Struct):
    status_code: int
    data: list[_Id] | None = None


_decode_page = msgspec.json.Decoder(_Page).decode


@dataclass
class Run:
    setup: str
    load: str
    pages_per_s: float
    objects_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int = 0
    first_ms: float | None = None  # median first page of a walk: the GET All itself


def walk(url: str, headers: dict[str, str], count: int, duration: int) -> Run:
    """One client following the Link pages to the end, again and again for `duration` seconds; every walk must
    see each of the `count` locations exactly once."""

    async def run() -> Run:
        latencies: list[float] = []
        firsts: list[float] = []
        objects = 0
        async with aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=120)) as session:
            started = time.perf_counter()
            while not latencies or time.perf_counter() - started < duration:
                seen: set[str] = set()
                next_url: str | None = url
                while next_url:
                    sent = time.perf_counter()
                    async with session.get(next_url) as response:
                        body, link = await response.read(), response.headers.get("link", "")
                    latencies.append(time.perf_counter() - sent)
                    if next_url == url:
                        firsts.append(latencies[-1])
                    page = _decode_page(body)
                    if response.status != 200 or page.status_code != 1000:
                        raise RuntimeError(f"GET {next_url}: HTTP {response.status}, {body[:300]!r}")
                    ids = [location.id for location in page.data or []]
                    objects, next_url = objects + len(ids), next_url_of(link)
                    seen.update(ids)
                if len(seen) != count:
                    raise RuntimeError(f"a walk from {url} saw {len(seen)} distinct locations, not {count}")
            elapsed = time.perf_counter() - started
        latencies.sort()
        return Run("", "walk, 1 client", len(latencies) / elapsed, objects / elapsed, _at(latencies, 0.5) * 1000,
                   _at(latencies, 0.99) * 1000, first_ms=_at(sorted(firsts), 0.5) * 1000)  # fmt: skip

    return asyncio.run(run())


def _at(ordered: list[float], quantile: float) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * quantile))]


def run_walkers(url: str, headers: dict[str, str], connections: int, page: int, duration: int, work: Path) -> Run:
    """wrk: each connection walks the pages to the end and starts again; an answer that is not a page (HTTP 200
    with X-Total-Count) is an error. Every page holds `page` objects (--locations is a multiple of --page)."""
    script = work / "walk.lua"
    script.write_text(_WALK_LUA)
    options = [f"--header={k}: {v}" for k, v in headers.items()]
    options += ["-t", str(min(2, connections)), "-c", str(connections), "-d", f"{duration}s", "--timeout", "60s"]
    out = subprocess.run(["wrk", *options, "--latency", "-s", str(script), url],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    errors = int(re.search(r"walk-bad (\d+)", out).group(1))  # type: ignore[union-attr]
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors += sum(int(n) for n in socket_errors.groups()) if socket_errors else 0
    return Run("", f"wrk -c{connections}", rps, rps * page, _ms(*p50.groups()), _ms(*p99.groups()), errors)  # type: ignore[union-attr]
