"""The hub's log lines as an operator reads them: JSON, one line each, what a library logs included."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT, Hub

_LOGGED = """
import logging
from hub.logs import configure_logging
configure_logging("info")
try:
    raise ConnectionRefusedError(111, "Connection refused")
except ConnectionRefusedError:
    logging.getLogger("asyncpg.pool").warning("Failed to restore the pool connection floor; retrying", exc_info=True)
    logging.getLogger("uvicorn.error").error("Exception in ASGI application", exc_info=True)
    import traceback
    told = traceback.format_exc().replace("Traceback", "  + Exception Group Traceback")
    logging.getLogger("uvicorn.error").error(told.replace("<string>", "litestar/_asgi/asgi_router.py, in lifespan"))
"""


def test_a_librarys_warning_names_its_exception_in_one_line_and_an_error_keeps_its_traceback() -> None:
    # asyncpg's pool, retrying while PostgreSQL was away, logged exc_info as a tuple of reprs, "<traceback object at
    # 0x...>" included (an operator's drill); a bug's error (uvicorn's) must keep what locates it.
    done = subprocess.run([sys.executable, "-c", _LOGGED], cwd=ROOT, capture_output=True, text=True, timeout=60)
    warning, error, lifespan = (json.loads(line) for line in done.stdout.splitlines())
    assert warning["error"] == "ConnectionRefusedError: [Errno 111] Connection refused" and "exc_info" not in warning
    assert error["exception"].startswith("Traceback (most recent call last):") and "exc_info" not in error
    assert "<traceback object" not in done.stdout
    # a worker that failed to start: uvicorn logs the lifespan's traceback as its message (an operator's drill)
    assert lifespan["event"] == "lifespan_failed" and lifespan["exception"].lstrip(" +").startswith("Exception Group")
    assert lifespan["error"] == "ConnectionRefusedError: [Errno 111] Connection refused", lifespan


def test_serve_says_where_it_serves_in_a_json_line(hub: Hub) -> None:
    # It was the one plain-text line among serve's JSON lines ("ocpi-hub: serving ... with 1 worker(s)").
    lines = hub.log().splitlines()
    [serving] = [json.loads(line) for line in lines if '"hub_serving"' in line]
    assert not [line for line in lines if line.startswith("ocpi-hub: serving")]
    del serving["timestamp"]
    assert serving == {"event": "hub_serving", "level": "info", "versions_url": hub.versions_url, "host": "127.0.0.1",
                       "port": int(hub.base.rsplit(":", 1)[1]), "workers": 1, "server": "uvicorn"}  # fmt: skip
