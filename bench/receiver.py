"""A fast OCPI party for benchmarks: an RSGI app on granian answering every functional request at once.

It serves its versions and 2.2.1 details (every module, both interfaces) so it can register at the hub, and
answers anything else with a fixed OCPI success envelope, so the hub, not the party, is what gets measured. Under
/p/{n}/ it plays party n, with its URLs under that path: one process can be hundreds of parties.
"""

from __future__ import annotations

import json

MODULES = ("cdrs", "chargingprofiles", "commands", "hubclientinfo", "locations", "sessions", "tariffs", "tokens")
OK = b'{"data":null,"status_code":1000,"status_message":null,"timestamp":"2026-11-25T10:00:00Z"}'
JSON = [("content-type", "application/json")]


def _envelope(data: object) -> bytes:
    return json.dumps({"data": data, "status_code": 1000, "timestamp": "2026-11-25T10:00:00Z"}).encode()


async def app(scope, protocol) -> None:  # type: ignore[no-untyped-def]
    if scope.proto != "http":
        return
    await protocol()  # read the body, as a real party would
    base, path = f"http://{scope.authority or scope.headers.get('host')}", scope.path
    if path.startswith("/p/"):  # one of many parties this process plays (bench/many_parties.py): /p/{n}/ocpi/...
        prefix, _, rest = path[3:].partition("/")
        base, path = f"{base}/p/{prefix}", f"/{rest}"
    if path == "/ocpi/versions":
        protocol.response_bytes(200, JSON, _envelope([{"version": "2.2.1", "url": f"{base}/ocpi/2.2.1"}]))
    elif path == "/ocpi/2.2.1":
        endpoints = [{"identifier": "credentials", "role": "SENDER", "url": f"{base}/ocpi/2.2.1/credentials"}]
        endpoints += [
            {"identifier": m, "role": r, "url": f"{base}/ocpi/2.2.1/{m}/{r.lower()}"}
            for m in MODULES
            for r in ("SENDER", "RECEIVER")
        ]
        protocol.response_bytes(200, JSON, _envelope({"version": "2.2.1", "endpoints": endpoints}))
    else:
        protocol.response_bytes(200, JSON, OK)
