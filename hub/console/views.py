"""How the console shows values: times, parties, statuses, bodies; registered as Jinja filters and globals."""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime
from typing import Any

import msgspec
from litestar.plugins.jinja import JinjaTemplateEngine
from markupsafe import Markup, escape

_ROWS_NAMED = re.compile(r"\b(rows? )(\d+)(?: and (\d+))?")  # "row 12", "rows 12 and 13" in a verify report

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # not shown by a browser as it is


def when(moment: datetime | None) -> str:
    """UTC with milliseconds: the routing log's times are compared across parties, never in local time."""
    if moment is None:
        return "—"
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def short_path(path: str) -> str:
    """A path under the hub's 2.2.1 prefix without it; a URL the hub called by itself stays whole."""
    return path.removeprefix("/ocpi/2.2.1/")


def ago(moment: datetime | None) -> str:
    if moment is None:
        return "never"
    seconds = int((datetime.now(UTC) - moment).total_seconds())
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{max(seconds, 0)} s ago"


def party(country_code: str | None, party_id: str | None) -> str:
    return f"{country_code}-{party_id}" if country_code and party_id else "—"


def outcome(http_status: int | None, ocpi_status: int | None) -> str:
    """CSS class of a row's result: ok, bad (an HTTP or OCPI error) or plain (no OCPI status to judge by)."""
    if (http_status or 0) >= 400 or (ocpi_status is not None and not 1000 <= ocpi_status < 2000):
        return "bad"
    return "ok" if ocpi_status is not None else ""


def pretty(side: dict[str, Any]) -> str:
    """A body as it was sent, JSON indented: msgspec.json.format changes only the whitespace between tokens, so a key
    sent twice, 10.50 and 1e2 are shown as the party wrote them (a decoded value would not)."""
    if side["kind"] == "bytes":
        return escaped(base64.b64decode(side["base64"]))
    if side["kind"] != "json":
        return str(side["text"])
    return msgspec.json.format(side["text"].encode(), indent=2).decode()


def escaped(body: bytes) -> str:
    """A body that is not UTF-8, shown so that its bytes can be read back exactly: its UTF-8 characters as they are,
    every other byte and a control character as \\xNN, a backslash as \\\\ (line ends and tabs kept)."""
    shown = body.replace(b"\\", b"\\\\").decode("utf-8", errors="backslashreplace")
    return _CONTROL.sub(lambda m: f"\\x{ord(m[0]):02x}", shown)


def size(n: int | None) -> str:
    if not n:
        return "0 B"
    for unit, scale in (("MB", 1 << 20), ("kB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def row_links(problem: str) -> Markup:
    """A verify report's problem with every row it names linked to that row's message page."""

    def link(row_id: str) -> str:
        return f'<a class="mono" href="/console/log/{row_id}">{row_id}</a>'

    def named(match: re.Match[str]) -> str:
        second = f" and {link(match[3])}" if match[3] else ""
        return f"{match[1]}{link(match[2])}{second}"

    return Markup(_ROWS_NAMED.sub(named, str(escape(problem))))


def intact(integrity: dict[str, Any]) -> bool:
    """Whether a row's checks where it is shown (storage.log_row_check) found nothing: no check false (null: none to
    make, a chain's first or last row, a row without amendment)."""
    checks = ("hash_ok", "linked_to_previous", "linked_to_next", "amendment_ok")
    return all(integrity[name] is not False for name in checks)


def party_status(status: str) -> str:
    return {"CONNECTED": "ok", "OFFLINE": "warn", "SUSPENDED": "warn", "UNREGISTERED": "bad"}.get(status, "")


def register(engine: JinjaTemplateEngine) -> None:
    env = engine.engine
    env.filters.update(when=when, short_path=short_path, ago=ago, pretty=pretty, size=size, row_links=row_links)
    env.globals.update(party=party, outcome=outcome, party_status=party_status, intact=intact)
