"""Bad input on every HTTP surface of the hub, case by case: the relay's modules and methods, the hub's own OCPI routes
(versions, credentials, hubclientinfo), the admin API and the console's pages and forms. Each case is answered within
a few seconds, below 500, in the surface's own error shape (an OCPI envelope, the admin API's {"error": ...}, a
console page), with a message that names what was wrong. tests/test_malformed_requests.py throws made-up requests at
the relay over raw sockets; this one names each case and what its answer must say.
"""

from __future__ import annotations

import contextlib
import html
import json
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import Hub, unique_party_id
from tests.parties import Party, token_header
from tests.test_admin_and_cli import _platform_id
from tests.test_routing import party_key

ANSWERED_WITHIN_S = 5
HUB = ("NL", "HUB")  # the hub's own party (tests.conftest.hub_env)
BIG = 10_000_001  # one byte over the hub's body limit (OCPI_HUB_MAX_BODY_BYTES's default)


@dataclass(frozen=True)
class Case:
    """One request and a piece of what its answer's message must say (case-insensitive). In target, {cc} and {pid}
    are the CPO's, {ecc} and {epid} the eMSP's."""

    method: str
    target: str
    says: str
    body: bytes | None = None
    by: str = "cpo"  # relay: the caller, cpo or emsp
    to: tuple[str, str] | str | None = "emsp"  # relay: the OCPI-to party, "cpo", "emsp", HUB, or None for none


def _bodies(method: str, path: str, by: str = "cpo", to: str = "emsp", wrong: str = "$.id") -> list[Case]:
    """A body the hub reads (an id checked, an owner, a response_url) sent malformed in every way; wrong: what the
    answer to an object of the wrong field types says."""
    return [
        Case(method, path, "not valid JSON", b"{", by, to),
        Case(method, path, "the request body is empty", b"", by, to),  # not "Input data was truncated"
        Case(method, path, "the request body is empty", b" \r\n", by, to),
        Case(method, path, "got `array`", b"[]", by, to),
        Case(method, path, "got `int`", b"5", by, to),
        Case(method, path, "got `str`", b'"LOC1"', by, to),
        Case(method, path, "got `null`", b"null", by, to),
        Case(method, path, "not UTF-8", b"\xff\xfe{}", by, to),
        Case(method, path, wrong, b'{"id": 5, "country_code": [], "party_id": {}}', by, to),
    ]


_PAGING = [
    ("limit=-1", "limit must be a whole number"),
    ("offset=abc", "offset must be a whole number"),
    ("limit=1e9", "limit must be a whole number"),
    ("offset=" + "9" * 5000, "offset must be a whole number"),
    ("limit=%00", "limit must be a whole number"),
    ("limit=%ff", "limit must be a whole number"),
    ("date_from=garbage", "date_from must be an OCPI DateTime"),
    ("date_to=2026-02-30T00:00:00Z", "date_to must be an OCPI DateTime"),
    # the '+' unencoded, a space in a query: the message said "must be an OCPI DateTime" of what the caller sent as one
    ("date_from=2026-01-01T00:00:00+00:00", "got '2026-01-01T00:00:00 00:00' ('+' in a query is a space"),
    ("date_from=2026-02-01T00:00:00Z&date_to=2026-01-01T00:00:00Z", "date_to (2026-01-01T00:00:00Z) is before"),
    # blank or given twice: the hub took a page of a window the caller did not ask for
    ("limit=", "limit must be a whole number"),
    ("date_from=", "date_from must be an OCPI DateTime"),
    ("limit=5&limit=500", "limit came more than once with different values ('5', '500')"),
    ("offset=0&offset=10", "offset came more than once"),
    ("date_from=2026-01-01T00:00:00Z&date_from=2025-01-01T00:00:00Z", "date_from came more than once"),
]

RELAY = [
    *_bodies("PUT", "receiver/locations/{cc}/{pid}/LOC1"),
    Case("PATCH", "receiver/locations/{cc}/{pid}/LOC1", "PATCH body", b"[]"),
    Case("PATCH", "receiver/locations/{cc}/{pid}/LOC1", "last_updated", b'{"id": 5}'),
    Case("PATCH", "receiver/tokens/{ecc}/{epid}/TOK1", "the request body is empty", b"", "emsp", "cpo"),
    Case("PUT", "receiver/locations/{cc}/{pid}/LOC1", "the request body is empty", b"", "cpo", HUB),  # broadcast
    *_bodies("PUT", "receiver/sessions/{cc}/{pid}/S1"),
    *_bodies("POST", "receiver/cdrs"),
    *_bodies("PUT", "receiver/tariffs/{cc}/{pid}/T1"),
    *_bodies("PUT", "receiver/tokens/{ecc}/{epid}/TOK1", by="emsp", to="cpo"),
    *_bodies("POST", "receiver/commands/START_SESSION", by="emsp", to="cpo", wrong="response_url is required"),
    Case("POST", "sender/tokens/TOK1/authorize", "not UTF-8", b"\xff{}"),  # relayed bodies too: checked as UTF-8
    Case("PUT", "sender/sessions/S1/charging_preferences", "not UTF-8", b"\xff{}", "emsp", "cpo"),
    Case("PUT", "receiver/locations/{cc}/{pid}/LOC1", "at most 10000000 bytes", b"x" * BIG),
    Case("POST", "receiver/commands/START_SESSION", "JSON", b"{", "emsp", None),  # open routing reads the body
    # URLs: percent-encoded junk and over-long segments where the hub reads them
    Case("POST", "receiver/commands/%00", "a control character (U+0000)", b"{}", "emsp", "cpo"),
    Case("POST", "receiver/commands/%ff%fe", "no URL of the commands Receiver", b"{}", "emsp", "cpo"),
    Case("POST", "receiver/commands/" + "A" * 5000, "no URL of the commands Receiver", b"{}", "emsp", "cpo"),
    Case("GET", "receiver/tokens/%00/{epid}/TOK1", "a control character (U+0000)", None, "emsp", "cpo"),
    Case("GET", "receiver/locations/{cc}/{pid}/LOC%0A1", "a control character (U+000A)"),  # was the receiver's 404
    Case("GET", "receiver/tokens/%2F/{epid}/TOK1", "owner in the URL", None, "emsp", "cpo"),
    Case("GET", "receiver/locations/{cc}/{pid}/..", "no URL of the locations Receiver"),
    Case("GET", "nonsense/%ff", "no URL of the hub"),
    Case("GET", "receiver/chargingprofiles/S1?duration=abc&response_url=x", "duration", None, "emsp", "cpo"),
    # the lists the hub answers itself: the locations it holds (OCPI-to: the hub) and hubclientinfo
    *[Case("GET", f"sender/locations?{query}", says, None, "emsp", HUB) for query, says in _PAGING],
    *[Case("GET", f"sender/hubclientinfo?{query}", says, None, "cpo", None) for query, says in _PAGING],
    Case("GET", "sender/locations?country_code=N&party_id=ABCD", "country_code and party_id", None, "emsp", HUB),
]

OWN_OCPI = [  # (method, path, body, what the message says); the eMSP's token
    ("PUT", "/ocpi/2.2.1/credentials", b"{", "not valid JSON"),
    ("PUT", "/ocpi/2.2.1/credentials", b"", "body is empty"),
    ("PUT", "/ocpi/2.2.1/credentials", b"[]", "invalid Credentials object"),
    ("PUT", "/ocpi/2.2.1/credentials", b"\xff", "not valid JSON"),
    ("PUT", "/ocpi/2.2.1/credentials", b'{"token": 5, "url": [], "roles": {}}', "$.token"),
    ("PUT", "/ocpi/2.2.1/credentials", b'{"token": "x", "url": "nope", "roles": []}', "$.roles"),
    (
        "PUT",
        "/ocpi/2.2.1/credentials",
        b'{"token": "x", "url": "nope", "roles": [{"role": "CPO", "country_code": "NL", '
        b'"party_id": "ABC", "business_details": {"name": "x"}}]}',
        "url is not an http or https URL",
    ),
    ("POST", "/ocpi/2.2.1/credentials", b"{", "already registered"),
    ("PATCH", "/ocpi/2.2.1/credentials", b"{}", "method PATCH is not allowed"),
    ("POST", "/ocpi/versions", b"{", "method POST is not allowed"),
    ("PUT", "/ocpi/2.2.1", b"{", "method PUT is not allowed"),
    ("GET", "/ocpi/9.9/versions", None, "no such endpoint"),
    ("GET", "/ocpi/2.2.1/hubclientinfo", None, "no URL of the hub"),
    ("GET", "/ocpi/2.2.1/sender/hubclientinfo/%ff", None, "hubclientinfo Sender is /ocpi/2.2.1/sender/hubclientinfo"),
    ("POST", "/ocpi/2.2.1/sender/hubclientinfo", b"{", "method POST is not allowed"),
]

_LOG = "/admin/api/routing-log"
ADMIN_GETS = [  # (path and query, what the error says)
    (f"{_LOG}?limit=-1", "limit must be a whole number from 1 to 500"),
    (f"{_LOG}?limit=abc", "limit must be a whole number"),
    (f"{_LOG}?limit=1e9", "limit must be a whole number"),
    (f"{_LOG}?limit=5&limit=6", "limit is given more than once"),
    (f"{_LOG}?cursor=abc", "cursor is not one this API handed out"),
    (f"{_LOG}?cursor=%ff%fe", "cursor is not one this API handed out"),
    (f"{_LOG}?cursor=WyJ4IiwgInkiXQ==", "cursor is not one this API handed out"),  # ["x", "y"] in base64
    (f"{_LOG}?since=garbage", "since must be an ISO 8601 time"),
    (f"{_LOG}?since=2026-02-30", "since must be an ISO 8601 time"),
    (f"{_LOG}?until=99999-01-01", "until must be an ISO 8601 time"),
    (f"{_LOG}?since=2026-01-01&until=2025-01-01", "is not before until"),
    (f"{_LOG}?party=%00", "party must be a country code and party id"),
    (f"{_LOG}?module=%ff", "module must be a module name"),
    (f"{_LOG}?http_status=999999999999999999999", "http_status must be a whole number"),
    (f"{_LOG}?request_id=" + "x" * 300, "request_id must be 1 to 255 characters"),
    (f"{_LOG}?nope=1", "unknown parameter nope"),
    (f"{_LOG}/abc", "no such endpoint"),
    # a number no row can have, as the search filters refuse it (platform=): was a 404 after an audit-trail entry
    (f"{_LOG}/99999999999999999999999", "row_id must be a whole number from 1 to 9223372036854775807"),
    (f"{_LOG}/0", "row_id must be a whole number from 1"),
    (f"{_LOG}/999999999999", "no routing-log row 999999999999"),
    (f"{_LOG}/correlation/x?limit=abc", "unknown parameter limit"),
    (f"{_LOG}/export?format=xml", "format must be ndjson or csv"),
    (f"{_LOG}/export?bodies=maybe", "bodies must be true or false"),
    (f"{_LOG}/export?since=garbage", "since must be an ISO 8601 time"),
    (f"{_LOG}/export/manifests/%00", "export_id must be 32 hexadecimal digits"),
    (f"{_LOG}/export/manifests/%ff", "export_id must be 32 hexadecimal digits"),
    (f"{_LOG}/export/manifests/" + "x" * 5000, "export_id must be 32 hexadecimal digits"),
    (f"{_LOG}/export/manifests/" + "0" * 32, "no export '00000000000000000000000000000000' ended"),
    # an id no row can have, as the search filter refuses it (correlation_id=): was 200 with no items
    (f"{_LOG}/correlation/" + "c" * 5000, "correlation_id must be 1 to 255 characters"),
    (f"{_LOG}/correlation/" + "%C3%A9" * 256, "correlation_id must be 1 to 255 characters"),
    (f"{_LOG}/heads?x=1", "unknown parameter x"),
    (f"{_LOG}/checkpoint?x=1", "unknown parameter x"),
    (f"{_LOG}/verify?since=garbage", "since must be an ISO 8601 time"),
    (f"{_LOG}/verify?checkpoint=x", "POST the checkpoint file as the body"),
    ("/admin/api/stats?bucket=week", "bucket must be hour or day"),
    ("/admin/api/stats?until=garbage", "until must be an ISO 8601 time"),
    ("/admin/api/stats?until=0001-01-01T00:00:00Z", "until leaves no hour before it"),
    ("/admin/api/audit-trail?limit=-1", "limit must be a whole number"),
    ("/admin/api/audit-trail?cursor=abc", "cursor is not one this API handed out"),
    ("/admin/api/audit-trail?since=garbage", "unknown parameter since"),
    ("/admin/api/holds?x=1", "unknown parameter x"),
    ("/admin/api/parties?x=1", "unknown parameter x"),
    ("/admin/api/parties/abc", "no such endpoint"),
    ("/admin/api/parties/99999999999999999999", "platform_id must be a whole number from 1 to 9223372036854775807"),
    ("/admin/api/parties/999999999999", "no platform 999999999999"),
]
ADMIN_POSTS = [  # (path, body, what the error says)
    ("/admin/api/invitations", b"{", "invalid invitation"),
    ("/admin/api/invitations", b"", "invalid invitation"),
    ("/admin/api/invitations", b"[]", "got `array`"),
    ("/admin/api/invitations", b"\xff", "invalid invitation"),
    ("/admin/api/invitations", b'{"name": 5, "roles": "x"}', "$.name"),
    ("/admin/api/invitations", b'{"name": "x", "roles": []}', "$.roles"),
    (
        "/admin/api/invitations",
        b'{"name": "x", "roles": [{"role": "FOO", "country_code": "NL", "party_id": "ABC"}]}',
        "role must be one of CPO, EMSP, NAP, NSP, OTHER, SCSP, got 'FOO'",
    ),
    (
        "/admin/api/invitations",
        b'{"name": "x", "roles": [{"role": "CPO", "country_code": "NLD", "party_id": "ABC"}]}',
        "country_code must be 2 letters, got 'NLD'",
    ),
    (
        "/admin/api/invitations",
        b'{"name": "x", "roles": [{"role": "CPO", "country_code": "NL", "party_id": "ABC"}], "expires_in_s": 1e300}',
        "$.expires_in_s",
    ),
    ("/admin/api/invitations", b'{"name": "x\\u0000", "roles": []}', "$.roles"),  # the name is checked last
    (
        "/admin/api/invitations",
        b'{"name": "x\\u0000", "roles": [{"role": "CPO", "country_code": "NL", "party_id": "ABC"}]}',
        "name must hold no control characters",
    ),
    ("/admin/api/holds", b"{", "invalid hold"),
    ("/admin/api/holds", b"5", "got `int`"),
    ("/admin/api/holds", b'{"party": "x", "reason": "r"}', "$.party"),
    ("/admin/api/holds", b'{"correlation_id": "\\u0000", "reason": "r"}', "$.correlation_id"),
    ("/admin/api/holds/abc/release", b"", "no such endpoint"),
    ("/admin/api/holds/99999999999999999999/release", b"", "hold_id must be a whole number from 1"),
    ("/admin/api/holds/0/release", b"", "hold_id must be a whole number from 1"),
    ("/admin/api/holds/999999999999/release", b"", "no hold 999999999999"),
    ("/admin/api/parties/1/suspend", b"[]", "invalid suspension"),
    ("/admin/api/parties/1/suspend", b'{"reason": 5}', "$.reason"),
    ("/admin/api/parties/99999999999999999999/resume", b"", "platform_id must be a whole number from 1"),
    ("/admin/api/parties/99999999999999999999/suspend", b'{"reason": "r"}', "platform_id must be a whole number"),
    ("/admin/api/parties/abc/credentials", b"", "no such endpoint"),
    (f"{_LOG}/verify", b"{", "the body is not heads"),
    (f"{_LOG}/verify", b"\xff", "the body is not heads"),
    (f"{_LOG}/verify", b'{"heads": 5}', "the body is not heads"),
]

CONSOLE_GETS = [  # (path and query, what the page says)
    ("/console/log?limit=abc", "limit must be a whole number from 1 to 500, got 'abc'"),
    ("/console/log?limit=0", "limit must be a whole number from 1 to 500, got '0'"),  # was 100 rows, quietly
    ("/console/log?limit=9999", "limit must be a whole number from 1 to 500, got '9999'"),
    ("/console/log?limit=" + "9" * 5000, "limit must be a whole number from 1 to 500"),
    ("/console/log?cursor=abc", "cursor is not one this API handed out"),
    ("/console/log?since=garbage", "since must be an ISO 8601 time"),
    ("/console/log?module=%ff", "module must be a module name"),
    ("/console/log?party=NL-ABC&party=NL-DEF", "party"),
    ("/console/log/abc", "no such endpoint"),
    ("/console/log/99999999999999999999", "row_id must be a whole number from 1 to 9223372036854775807"),
    ("/console/log/999999999999", "no row 999999999999"),
    ("/console/parties/99999999999999999999/renew", "platform_id must be a whole number from 1"),
    ("/console/log/export?format=xml", "format must be ndjson or csv"),
    ("/console/log/export?bodies=maybe", "bodies must be true or false, got 'maybe'"),
    ("/console/log/export?since=bad", "since must be an ISO 8601 time"),
    ("/console/log/export/manifests/%00", "export_id must be 32 hexadecimal digits"),
    ("/console/log/export/manifests/" + "x" * 5000, "export_id must be 32 hexadecimal digits"),
    ("/console/log/export/manifests/" + "0" * 32, "No export"),
    ("/console/stats?party=%00", "party must be a country code and party id"),
    ("/console/verify?run=maybe", "run must be true or false, got 'maybe'"),
    ("/console/verify?run=true&since=2026-01-01&until=2020-01-01", "is not before until"),
    ("/console/audit?cursor=abc", "cursor is not one this API handed out, got 'abc'"),
    ("/console/audit?cursor=-5", "cursor is not one this API handed out, got '-5'"),
    ("/console/parties/abc/unregister", "no such endpoint"),
    ("/console/parties/1/nonsense", "no action 'nonsense'"),
]
CONSOLE_POSTS = [  # (path, form, what the page says)
    ("/console/invite", {}, "name"),
    ("/console/invite", {"name": "x", "role": "FOO", "country_code": "NL", "party_id": "ABC"}, "role"),
    ("/console/invite", {"name": "x", "role": "CPO", "country_code": "NLD", "party_id": "A"}, "country_code"),
    ("/console/verify", {"since": "garbage"}, "No heads were pasted"),
    ("/console/verify", {"heads": '{"chains": []}', "since": "garbage"}, "since must be an ISO 8601 time"),
    ("/console/verify", {"heads": "{"}, "heads"),
    ("/console/parties/99999999999999999999/suspend", {}, "platform_id must be a whole number from 1"),
    ("/console/parties/999999999999/suspend", {}, "no platform 999999999999"),
]


def _problem(answer: httpx.Response | None, took: float, says: str, shape: str) -> str | None:
    """What is wrong with an answer to a bad request, or None."""
    if answer is None:
        return "no answer"
    if took > ANSWERED_WITHIN_S:
        return f"answered after {took:.1f} s"
    if answer.status_code >= 500:
        return f"HTTP {answer.status_code}: {answer.text[:200]}"
    if shape == "console":
        message = html.unescape(answer.text) if "<html" in answer.text else None
    else:
        try:
            body = json.loads(answer.content)
        except ValueError:
            return f"HTTP {answer.status_code} without {shape}'s error shape: {answer.text[:200]!r}"
        if shape == "ocpi" and (not isinstance(body, dict) or {"status_code", "timestamp"} - body.keys()):
            return f"HTTP {answer.status_code} without an OCPI envelope: {answer.text[:200]!r}"
        if shape == "ocpi" and body["status_code"] == 1000:
            return f"accepted: {answer.text[:200]!r}"
        message = body.get("status_message") if shape == "ocpi" else body.get("error")
    if not message or says.lower() not in message.lower():
        return f"HTTP {answer.status_code}, the message does not say {says!r}: {(message or answer.text)[-300:]!r}"
    return None


def _timed(send: Callable[..., httpx.Response], *args: Any, **options: Any) -> tuple[httpx.Response | None, float]:
    """send(*args, **options) and the seconds its answer took; None for none within the client's timeout."""
    started = time.monotonic()
    try:
        return send(*args, **options), time.monotonic() - started
    except httpx.TimeoutException:
        return None, time.monotonic() - started


def _report(problems: list[str], cases: int) -> None:
    assert not problems, f"{len(problems)} of {cases} cases:\n" + "\n".join(problems)


def test_bad_input_to_every_relayed_module_gets_an_ocpi_error_naming_it(hub: Hub, cpo_and_emsp) -> None:
    cpo, emsp = cpo_and_emsp
    parties: dict[str, Party] = {"cpo": cpo, "emsp": emsp}
    values = dict(zip(("cc", "pid", "ecc", "epid"), (*party_key(cpo), *party_key(emsp)), strict=True))
    problems = []
    for case in RELAY:
        to = party_key(parties[case.to]) if isinstance(case.to, str) else case.to
        target = case.target.format(**values)
        answer, took = _timed(parties[case.by].call, hub.base, case.method, target, to=to, content=case.body)
        if problem := _problem(answer, took, case.says, "ocpi"):
            problems.append(f"{case.method} {target[:100]} {(case.body or b'')[:40]!r}: {problem}")
    _report(problems, len(RELAY))
    # a parameter given twice with the same value says one thing: taken
    for module, party, to in (("locations", emsp, HUB), ("hubclientinfo", cpo, None)):
        again = party.call(hub.base, "GET", f"sender/{module}?limit=5&limit=5", to=to)
        assert again.json()["status_code"] == 1000 and again.headers["X-Limit"] == "5", again.text
    # none of it reached a receiver
    assert cpo.functional() == [] and emsp.functional() == []


def test_bad_input_to_the_hubs_own_ocpi_routes_gets_an_ocpi_error_naming_it(hub: Hub, cpo_and_emsp) -> None:
    _, emsp = cpo_and_emsp
    token, problems = token_header(emsp.hub_token or ""), []
    for method, path, body, says in OWN_OCPI:
        answer, took = _timed(httpx.request, method, hub.base + path, content=body, headers=token, timeout=30)
        if problem := _problem(answer, took, says, "ocpi"):
            problems.append(f"{method} {path} {(body or b'')[:40]!r}: {problem}")
    _report(problems, len(OWN_OCPI))
    # the platform is still registered with the token it had
    assert httpx.get(f"{hub.base}/ocpi/2.2.1/credentials", headers=token).status_code == 200


def test_bad_filters_cursors_limits_and_bodies_get_the_admin_apis_error_naming_them(hub: Hub, cpo_and_emsp) -> None:
    problems = []
    with hub.admin() as admin:
        for path, says in ADMIN_GETS:
            answer, took = _timed(admin.get, path)
            if problem := _problem(answer, took, says, "admin"):
                problems.append(f"GET {path[:100]}: {problem}")
        for path, body, says in ADMIN_POSTS:
            answer, took = _timed(admin.post, path, content=body, headers={"Content-Type": "application/json"})
            if problem := _problem(answer, took, says, "admin"):
                problems.append(f"POST {path} {body[:40]!r}: {problem}")
    _report(problems, len(ADMIN_GETS) + len(ADMIN_POSTS))


def test_an_admin_action_given_a_query_parameter_is_refused_before_it_acts(hub: Hub, cpo_and_emsp) -> None:
    # GET /admin/api/parties?x=1 was refused, DELETE /admin/api/parties/1?dry_run=true unregistered the platform: a
    # parameter the operator meant to apply would look applied, on the calls that change the most
    cpo, _ = cpo_and_emsp
    platform_id = _platform_id(hub, party_key(cpo))
    invitation = {"name": "x", "roles": [{"role": "CPO", "country_code": "NL", "party_id": unique_party_id()}]}
    problems = []
    with hub.admin() as admin:
        for method, path, body in (
            ("DELETE", f"/admin/api/parties/{platform_id}?dry_run=true", None),
            ("POST", f"/admin/api/parties/{platform_id}/suspend?notify=false", {"reason": "maintenance"}),
            ("POST", f"/admin/api/parties/{platform_id}/resume?at=2030-01-01T00:00:00Z", None),
            ("POST", f"/admin/api/parties/{platform_id}/credentials?token_b=keep", None),
            ("POST", f"/admin/api/parties/{platform_id}/endpoints?role=CPO", None),
            ("POST", "/admin/api/invitations?expires_in_s=60", invitation),
        ):
            answer, took = _timed(admin.request, method, path, json=body)
            name = path.split("?")[1].split("=")[0]
            if problem := _problem(answer, took, f"unknown parameter {name}", "admin"):
                problems.append(f"{method} {path}: {problem}")
        _report(problems, 6)
        shown = admin.get(f"/admin/api/parties/{platform_id}").json()
    assert shown["state"] == "REGISTERED", shown
    assert cpo.call(hub.base, "GET", "sender/hubclientinfo").json()["status_code"] == 1000  # its token C works
    assert not [p for p in _parties(hub) if p["party_id"] == invitation["roles"][0]["party_id"]]  # type: ignore[index]


def test_an_admin_action_given_a_body_it_does_not_read_is_refused_before_it_acts(hub: Hub, cpo_and_emsp) -> None:
    # POST .../credentials with {"keep_token_b": true} rotated both tokens, DELETE with {"dry_run": true} unregistered:
    # a body the operator meant to say something was dropped unread
    cpo, _ = cpo_and_emsp
    platform_id = _platform_id(hub, party_key(cpo))
    problems = []
    with hub.admin() as admin:
        hold = admin.post("/admin/api/holds", json={"correlation_id": "no-body-test", "reason": "r"}).json()
        for method, path in (
            ("DELETE", f"/admin/api/parties/{platform_id}"),
            ("POST", f"/admin/api/parties/{platform_id}/resume"),
            ("POST", f"/admin/api/parties/{platform_id}/credentials"),
            ("POST", f"/admin/api/parties/{platform_id}/endpoints"),
            ("POST", f"/admin/api/holds/{hold['id']}/release"),
        ):
            for body, content_type in (
                (b'{"dry_run": true}', "application/json"),
                (b"{}", "application/json"),
                (b"reason=maintenance", "application/x-www-form-urlencoded"),
                (b" ", "text/plain"),
            ):
                answer, took = _timed(admin.request, method, path, content=body, headers={"Content-Type": content_type})
                if problem := _problem(answer, took, f"{method} {path} takes no body", "admin"):
                    problems.append(f"{method} {path} {body!r}: {problem}")
                elif answer is not None and answer.status_code != 400:
                    problems.append(f"{method} {path} {body!r}: HTTP {answer.status_code}")
        _report(problems, 20)
        shown = admin.get(f"/admin/api/parties/{platform_id}").json()
        [held] = [h for h in admin.get("/admin/api/holds").json()["items"] if h["id"] == hold["id"]]
    assert shown["state"] == "REGISTERED", shown
    assert cpo.call(hub.base, "GET", "sender/hubclientinfo").json()["status_code"] == 1000  # its token C works
    assert held["released_at"] is None, held


def _parties(hub: Hub) -> list[dict[str, Any]]:
    with hub.admin() as admin:
        return list(admin.get("/admin/api/parties").json()["items"])


@pytest.fixture
def console(hub: Hub) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=hub.base, timeout=30) as client:
        assert client.post("/console/sign-in", data={"token": hub.admin_token}).status_code == 303
        yield client


def test_bad_queries_and_forms_on_the_console_get_a_page_naming_them(hub: Hub, console: httpx.Client) -> None:
    problems = []
    for path, says in CONSOLE_GETS:
        answer, took = _timed(console.get, path)
        if problem := _problem(answer, took, says, "console"):
            problems.append(f"GET {path[:100]}: {problem}")
    for path, form, says in CONSOLE_POSTS:
        answer, took = _timed(console.post, path, data=form)
        if problem := _problem(answer, took, says, "console"):
            problems.append(f"POST {path} {form}: {problem}")
    _report(problems, len(CONSOLE_GETS) + len(CONSOLE_POSTS))


def test_the_console_refuses_a_page_size_or_position_in_the_words_and_status_of_the_admin_api(
    hub: Hub, console: httpx.Client
) -> None:
    # "limit=abc" read Litestar's "Expected `int`, got `str`", and limit=0 or 9999 gave a page of 100 as if asked for.
    with hub.admin() as admin:
        for path, query in [("/console/log", "limit=abc"), ("/console/log", "limit=0"), ("/console/log", "limit=9999"),
                            ("/console/audit", "cursor=abc"), ("/console/audit", "cursor=0")]:  # fmt: skip
            api = "/admin/api/routing-log" if path == "/console/log" else "/admin/api/audit-trail"
            refused, page = admin.get(f"{api}?{query}"), console.get(f"{path}?{query}")
            assert (refused.status_code, page.status_code) == (400, 400), (query, page.text[-300:])
            assert refused.json()["error"] in html.unescape(page.text), (refused.text, page.text[-500:])
    page = console.get("/console/log?limit=7")  # a size the form does not offer, as the API takes it
    assert page.status_code == 200 and '<option value="7" selected>7</option>' in page.text, page.text[-500:]


def test_the_consoles_yes_or_no_parameters_say_they_take_true_or_false(hub: Hub, console: httpx.Client) -> None:
    # bodies=maybe and run=maybe read Litestar's "the query parameter bodies: Expected `bool`, got `str`"
    with hub.admin() as admin:
        refused = admin.get(f"{_LOG}/export?bodies=maybe")
    page = console.get("/console/log/export?bodies=maybe")
    assert (refused.status_code, page.status_code) == (400, 400), page.text[-300:]
    assert refused.json()["error"] == "bodies must be true or false, got 'maybe'"
    assert refused.json()["error"] in html.unescape(page.text), page.text[-500:]
    page = console.get("/console/verify?run=" + "maybe" * 1000)  # the value cut, as the admin API cuts a cursor
    assert page.status_code == 400 and "run must be true or false, got 'maybemaybe" in html.unescape(page.text)
    assert "maybe" * 9 not in page.text
    # what the console's own links and forms send is taken, and no value is none
    assert console.get("/console/verify?run=false").status_code == 200
    assert 'id="verify-result"' in console.get("/console/verify?run=true").text
    assert 'id="verify-result"' not in console.get("/console/verify").text
    exported = console.get("/console/log/export?format=ndjson&bodies=true&since=2099-01-01T00:00:00Z")
    assert exported.status_code == 200, exported.text[-300:]


def _answer_head_and_body(port: int, request: bytes, ends_with: bytes) -> tuple[bytes, float]:
    """What a raw request is answered, read until its body ends (the connection stays open), and the seconds it took."""
    started, answer = time.monotonic(), b""
    with socket.create_connection(("127.0.0.1", port), timeout=ANSWERED_WITHIN_S * 2) as client:
        client.sendall(request)
        with contextlib.suppress(TimeoutError):
            while not answer.rstrip().endswith(ends_with) and (chunk := client.recv(65536)):
                answer += chunk
    return answer, time.monotonic() - started


def test_a_form_or_body_that_never_arrives_is_answered_in_time_in_its_surfaces_shape(
    hub: Hub, console: httpx.Client
) -> None:
    # the console answered a form whose body stopped short "Something went wrong", HTTP 500, once the body deadline
    # passed (hub.request_body.BodyTooSlow, an OCPI error its page did not know); the admin API said what it was
    port = urlsplit(hub.base).port or 0
    cookie = f"Cookie: ocpi_hub_console={console.cookies['ocpi_hub_console']}"
    form = "Content-Type: application/x-www-form-urlencoded"
    problems = []
    for path, headers, ends_with in (
        ("/console/invite", cookie, b"</html>"),
        ("/console/sign-in", "", b"</html>"),
        ("/console/verify", cookie, b"</html>"),
        ("/admin/api/invitations", f"Authorization: Bearer {hub.admin_token}", b"}"),
    ):
        lines = [f"POST {path} HTTP/1.1", "Host: hub", *([headers] if headers else []), form, "Content-Length: 100"]
        head = "\r\n".join(lines) + "\r\n\r\nname=x"
        answer, took = _answer_head_and_body(port, head.encode(), ends_with)
        status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0
        if status != 408 or took > ANSWERED_WITHIN_S or b"did not arrive within" not in answer:
            problems.append(f"POST {path}: HTTP {status} after {took:.1f} s: {answer[-300:]!r}")
    _report(problems, 4)
