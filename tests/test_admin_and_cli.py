"""The operator's side: the admin API, `ocpi-hub invite` and the settings check (`ocpi-hub connect`:
tests/test_cli_connect.py; taking a platform off the hub: tests/test_party_management.py; renewing a platform's
credentials: tests/test_credentials_rotation.py)."""

from __future__ import annotations

import getpass
import json
import socket
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, Hub, fresh_env, unique_party_id
from tests.parties import free_port, token_header
from tests.test_routing import _roles, party_key


def _cli(
    hub: Hub, *args: str, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hub.cli", *args], env=hub.env if env is None else env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def test_admin_api_requires_the_admin_token(hub: Hub) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Token {hub.admin_token}"}):
        answer = httpx.get(f"{hub.base}/admin/api/parties", headers=headers)
        assert answer.status_code == 401
        assert "admin" in answer.json()["error"]


def test_admin_api_says_whether_the_token_was_missing_of_another_scheme_or_no_ones(hub: Hub) -> None:
    # A walkthrough: a wrong bearer token was answered "send 'Authorization: Bearer <...>'", as if none had been sent.
    cases = (
        ({}, "admin API: send 'Authorization: Bearer"),
        ({"Authorization": f"Token {hub.admin_token}"}, "is not of the Bearer scheme: send 'Authorization: Bearer"),
        ({"Authorization": "Bearer wrong"}, "the bearer token is neither the admin token"),
    )
    for path in ("/admin/api/parties", "/admin/api/nope"):  # a route, and a URL answered 401 before any route
        for headers, said in cases:
            answer = httpx.get(f"{hub.base}{path}", headers=headers)
            assert answer.status_code == 401 and said in answer.json()["error"], (path, headers, answer.text)


def test_admin_api_tells_a_caller_without_a_token_nothing_of_its_urls_and_methods(hub: Hub) -> None:
    # Litestar answered a wrong URL 404 and a wrong method 405 before the guard: the API's shape to anyone.
    cases = (
        ("GET", "/admin/api/nope"),
        ("PUT", "/admin/api/parties"),
        ("POST", "/admin/api/routing-log/1"),
        ("GET", "/admin/api/parties/abc"),
        ("OPTIONS", "/admin/api/parties"),
        ("GET", "//admin/api/nope"),
        ("PUT", "//admin/api/parties"),
    )  # fmt: skip (Litestar routes "//" too)
    for method, path in cases:
        answer = httpx.request(method, f"{hub.base}{path}", headers={"Authorization": "Bearer wrong"}, timeout=30)
        assert answer.status_code == 401 and "allow" not in answer.headers, (method, path, answer.text)
        assert "admin token" in answer.json()["error"]
    with hub.admin() as admin:
        answers = [admin.request(method, path) for method, path in cases]
    # GET /admin/api/parties/{id} shows one platform: "abc" names none (404)
    assert [a.status_code for a in answers] == [404, 405, 405, 404, 204, 404, 404]
    assert answers[1].json() == {"error": "method PUT is not allowed on /admin/api/parties"}
    allowed = [set(a.headers["allow"].split(", ")) if "allow" in a.headers else None for a in answers]  # any order
    assert allowed == [None, {"GET", "OPTIONS"}, {"GET", "OPTIONS"}, None, {"GET", "OPTIONS"}, None, None]


def test_invitation_answers_token_a_and_versions_url(hub: Hub) -> None:
    pid = unique_party_id()
    # typed in lower case, kept in capitals: it was published in the case typed (found by a walkthrough)
    invitation = hub.invite("Fresh CPO", ("CPO", "nl", pid.lower()))
    assert invitation["versions_url"] == hub.versions_url
    # Listed before its token A is used: a call with it is a message from the platform, its last_seen once the hub
    # writes the times it holds, every few seconds (a full CI run under load saw one written in between).
    with hub.admin() as admin:
        items = admin.get("/admin/api/parties").json()["items"]
    [item] = [i for i in items if i["party_id"] == pid]
    assert item == {
        "country_code": "NL",
        "party_id": pid,
        "role": "CPO",
        "platform": "Fresh CPO",
        "platform_id": invitation["platform_id"],
        "status": "PLANNED",
        "status_since": item["status_since"],
        "registered_at": None,
        "last_seen": None,
        "invitation_expires_at": invitation["expires_at"],  # OCPI_HUB_INVITATION_TTL_S (test_invitation_expiry)
        "token_encoding": "base64",
        "endpoints_from_before": None,
        "endpoints_trying_now": False,
        "endpoints_next_try": None,
        "locations_cached": 0,  # a CPO's: its location cache (test_location_cache_cap)
        "location_bytes_cached": 0,
        "location_cache_over_cap": False,
        "locations_refused": 0,
        "locations_synced_at": None,  # not synced yet (test_location_cache_complete)
        "suspended_at": None,  # not suspended (test_party_suspension)
        "suspended_reason": None,
    }
    # The operator's action is in the audit trail: who invited whom with which roles, never the token A.
    with hub.admin() as admin:
        trail = admin.get("/admin/api/audit-trail").json()["items"]
    [entry] = [t for t in trail if t["action"] == "invite" and t["parameters"]["platform_id"] == item["platform_id"]]
    assert entry["parameters"] == {"platform_id": item["platform_id"], "name": "Fresh CPO", "roles": [f"CPO NL-{pid}"]}
    assert entry["actor_kind"] == "admin" and invitation["token_a"] not in json.dumps(trail)
    assert httpx.get(hub.versions_url, headers=token_header(invitation["token_a"])).status_code == 200


def test_invitation_for_a_party_id_held_by_another_platform_answers_409(hub: Hub) -> None:
    pid = unique_party_id()
    hub.invite("First", ("CPO", "NL", pid))
    with hub.admin() as admin:
        same_role = admin.post(
            "/admin/api/invitations",
            json={"name": "Second", "roles": [{"role": "CPO", "country_code": "nl", "party_id": pid.lower()}]},
        )
        other_role = admin.post(
            "/admin/api/invitations",
            json={"name": "Third", "roles": [{"role": "EMSP", "country_code": "NL", "party_id": pid}]},
        )
        hub_itself = admin.post(
            "/admin/api/invitations",
            json={"name": "Impostor", "roles": [{"role": "CPO", "country_code": "NL", "party_id": "HUB"}]},
        )
    assert same_role.status_code == 409 and f"NL-{pid}" in same_role.json()["error"]
    assert other_role.status_code == 409
    assert hub_itself.status_code == 409 and "the hub itself" in hub_itself.json()["error"]


def _role(role: str = "CPO", country_code: str = "NL", party_id: str = "ABC") -> dict[str, str]:
    return {"role": role, "country_code": country_code, "party_id": party_id}


@pytest.mark.parametrize(
    ("body", "said"),
    [
        ({"name": "x", "roles": []}, "invalid invitation: Expected `array` of length >= 1 - at `$.roles`"),
        ({"name": "", "roles": [_role()]}, "invalid invitation: Expected `str` of length >= 1 - at `$.name`"),
        # these were said as msgspec's regex ("Expected `str` matching regex '^[A-Za-z]{2}$'") or enum
        ({"name": "x", "roles": [_role(country_code="NLD")]}, "country_code must be 2 letters, got 'NLD'"),
        ({"name": "x", "roles": [_role(country_code="NL\n")]}, "country_code must be 2 letters, got 'NL\\n'"),
        ({"name": "x", "roles": [_role(party_id="AB")]}, "party_id must be 3 letters or digits, got 'AB'"),
        ({"name": "x", "roles": [_role("CPX")]}, "role must be one of CPO, EMSP, NAP, NSP, OTHER, SCSP, got 'CPX'"),
        ({"name": "x", "roles": [_role("HUB")]}, "role HUB is the hub's own; a connecting platform cannot hold it"),
        ({"name": "x", "roles": [_role()] * 2}, "the same role is listed twice"),
        ({"name": "a\x00b", "roles": [_role()]}, "name must hold no control characters, got 'a\\x00b'"),  # PostgreSQL
    ],
)
def test_an_invalid_invitation_answers_400_saying_in_words_what_is_wrong(hub: Hub, body: dict, said: str) -> None:
    with hub.admin() as admin:
        answer = admin.post("/admin/api/invitations", json=body)
    assert answer.status_code == 400, answer.text
    assert said in answer.json()["error"], answer.text
    assert "regex" not in answer.text and "enum" not in answer.text


def test_cli_invite_prints_the_same_json_and_the_running_hub_accepts_the_token(hub: Hub) -> None:
    pid = unique_party_id()
    # Without OCPI_HUB_PUBLIC_URL: the URL the running hub serves at, recorded by `ocpi-hub serve` in its data dir
    # (a walkthrough got http://127.0.0.1:8080 from a hub serving on another port).
    env = {k: v for k, v in hub.env.items() if k != "OCPI_HUB_PUBLIC_URL"}
    result = _cli(hub, "invite", "--name", "CLI Co", "--role", f"CPO:NL:{pid}", "--role", f"EMSP:NL:{pid}", env=env)
    assert result.returncode == 0, result.stderr
    invitation = json.loads(result.stdout)
    assert set(invitation) >= {"token_a", "versions_url"} and invitation["versions_url"] == hub.versions_url
    assert [r["role"] for r in invitation["roles"]] == ["CPO", "EMSP"]
    # The running hub learns of the new token within a second (directory change announced through Redis).
    import time

    deadline = time.monotonic() + 2
    while httpx.get(hub.versions_url, headers=token_header(invitation["token_a"])).status_code != 200:
        assert time.monotonic() < deadline, "the running hub did not accept the new token A"
        time.sleep(0.05)


def test_a_cli_invitation_is_in_the_audit_trail_as_the_command_lines_never_with_its_token_a(hub: Hub) -> None:
    pid = unique_party_id()
    result = _cli(hub, "invite", "--name", "CLI Audited", "--role", f"CPO:NL:{pid}")
    assert result.returncode == 0, result.stderr
    invitation = json.loads(result.stdout)
    with hub.admin() as admin:
        trail = admin.get("/admin/api/audit-trail").json()["items"]
    [entry] = [
        t for t in trail if t["action"] == "invite" and t["parameters"]["platform_id"] == invitation["platform_id"]
    ]
    assert entry["parameters"] == {"platform_id": invitation["platform_id"], "name": "CLI Audited",
                                   "roles": [f"CPO NL-{pid}"], "via": "cli"}  # fmt: skip
    assert (entry["actor_kind"], entry["actor_name"]) == ("admin", f"ocpi-hub invite ({getpass.getuser()})")
    assert invitation["token_a"] not in json.dumps(trail)


def test_a_cli_command_run_where_no_hub_is_says_so_and_starts_no_database(hub: Hub, tmp_path: Path) -> None:
    # It started an embedded PostgreSQL of its own there, and handed out a token A of a hub that was not running.
    env = {k: v for k, v in hub.env.items() if k not in ("OCPI_HUB_DATABASE_URL", "OCPI_HUB_REDIS_URL")}
    result = _cli(hub, "invite", "--name", "x", "--role", "CPO:NL:ABC",
                  env=env | {"OCPI_HUB_DATA_DIR": str(tmp_path / "nothing")})  # fmt: skip
    assert result.returncode == 2 and f"found no hub in {tmp_path / 'nothing'}" in result.stderr, result.stderr
    assert not (tmp_path / "nothing").exists() and result.stdout == ""


@pytest.mark.parametrize(
    "command", [("invite", "--name", "x", "--role", "CPO:NL:ABC"), ("migrate", "--grant-serving-role", "nobody")]
)
def test_a_cli_command_with_no_secret_key_refuses_rather_than_make_one(
    hub: Hub, tmp_path: Path, command: tuple[str, ...]
) -> None:
    # Run from another directory against the hub's database, it made a key of its own there: refused only once a
    # party had registered, and before that (an operator's first invitations) its audit-trail entries were keyed with
    # it, which verify then reported as changed. migrate makes the key of a new hub, but not with a grant, whose
    # audit-trail entry needs the hub's.
    env = {k: v for k, v in hub.env.items() if k != "OCPI_HUB_SECRET_KEY"} | {"OCPI_HUB_DATA_DIR": str(tmp_path)}
    result = _cli(hub, *command, env=env)
    assert result.returncode == 2 and result.stdout == "", result.stderr
    assert f"OCPI_HUB_SECRET_KEY is not set and {tmp_path} holds no secret.key" in result.stderr
    assert not (tmp_path / "secret.key").exists()


def test_cli_invite_rejects_a_malformed_role(hub: Hub) -> None:
    result = _cli(hub, "invite", "--name", "x", "--role", "CPO-NL-ABC")
    assert result.returncode == 2
    assert "ROLE:CC:PARTY" in result.stderr and "'CPO-NL-ABC' has 1 part, not 3" in result.stderr


def test_cli_invite_names_the_option_that_is_wrong(hub: Hub) -> None:
    result = _cli(hub, "invite", "--name", "", "--role", "CPO:NL:ABC")
    assert result.returncode == 2
    assert "invalid --name" in result.stderr and "--role" not in result.stderr, result.stderr
    result = _cli(hub, "invite", "--name", "x", "--role", "CPO:NL:ABCD")
    assert result.returncode == 2
    assert "invalid --role" in result.stderr and "party_id" in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("OCPI_HUB_COUNTRY_CODE", "NLD", "two letters"),
        ("OCPI_HUB_PARTY_ID", "TOOLONG", "three letters"),
        ("OCPI_HUB_PUBLIC_URL", "hub.example.com", "OCPI_HUB_PUBLIC_URL"),
        ("OCPI_HUB_DATABASE_URL", "mysql://x", "OCPI_HUB_DATABASE_URL"),
        ("OCPI_HUB_OWNER_DATABASE_URL", "mysql://x", "OCPI_HUB_OWNER_DATABASE_URL"),
        ("OCPI_HUB_LOG_PARTITIONS_AHEAD", "121", "OCPI_HUB_LOG_PARTITIONS_AHEAD must be at most 120"),
        ("OCPI_HUB_FORWARD_TIMEOUT_S", "soon", "positive number"),
        ("OCPI_HUB_KEEP_ALIVE_S", "1.5", "OCPI_HUB_KEEP_ALIVE_S must be a positive whole number"),
        ("OCPI_HUB_SECRET_KEY", "short", "Fernet key"),
        ("OCPI_HUB_REDIS_PREFIX", "hub*:", "OCPI_HUB_REDIS_PREFIX must not contain"),
        ("OCPI_HUB_PARTY_NETWORKS_ALLOWED", "10.0.0.0/33", "OCPI_HUB_PARTY_NETWORKS_ALLOWED: '10.0.0.0/33' is no"),
        ("OCPI_HUB_ADMIN_TOKEN", "x" * 31, "OCPI_HUB_ADMIN_TOKEN has 31 characters; it must have at least 32"),
        ("OCPI_HUB_ADMIN_TOKEN", "CHANGE-ME", "OCPI_HUB_ADMIN_TOKEN is still deploy/'s placeholder"),
        ("OCPI_HUB_ADMIN_TOKEN", "CHANGE-ME-" + "x" * 32, "OCPI_HUB_ADMIN_TOKEN is still deploy/'s placeholder"),
    ],
)
def test_bad_settings_are_reported_without_a_traceback(hub: Hub, variable: str, value: str, message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "hub.cli", "migrate"],
        env=hub.env | {variable: value},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_a_weak_admin_token_stops_serve_at_start_naming_the_variable(hub: Hub) -> None:
    # Security review, finding 10: `x` and deploy/kubernetes/secret.yaml's CHANGE-ME opened the admin API.
    for token in ("x", "CHANGE-ME"):
        env = hub.env | {"OCPI_HUB_ADMIN_TOKEN": token}
        result = subprocess.run([sys.executable, "-m", "hub.cli", "serve", "--port", "0"], cwd=ROOT, timeout=60,
                                env=env, capture_output=True, text=True)  # fmt: skip
        assert result.returncode == 2 and "OCPI_HUB_ADMIN_TOKEN" in result.stderr, result.stderr


def test_help_documents_every_command_and_variable() -> None:
    from hub.settings_variables import VARIABLES

    result = subprocess.run([sys.executable, "-m", "hub.cli", "--help"], capture_output=True, text=True, cwd=ROOT)
    for word in ("serve", "migrate", "invite", "connect", *(name for name, _, _ in VARIABLES)):
        assert word in result.stdout


@pytest.mark.parametrize(
    ("variable", "url", "message"),
    [
        ("OCPI_HUB_DATABASE_URL", "postgresql://postgres@127.0.0.1:{port}/x", "cannot use the database"),
        ("OCPI_HUB_REDIS_URL", "redis://127.0.0.1:{port}/0", "cannot use Redis"),
    ],
)
def test_unreachable_database_or_redis_stops_serve_with_a_clear_message(
    hub: Hub, variable: str, url: str, message: str
) -> None:
    closed = free_port()  # nothing listens here
    result = subprocess.run([sys.executable, "-m", "hub.cli", "serve", "--port", str(free_port())],
                            env=hub.env | {variable: url.format(port=closed)}, cwd=ROOT, capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    assert result.returncode == 1
    assert message in result.stderr and variable in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("given", [["--port", "99999"], ["--port", "-1"], ["--workers", "0"]])
def test_serve_refuses_a_port_or_worker_count_out_of_range_saying_so(hub: Hub, given: list[str]) -> None:
    # a traceback of bind()'s for the port; "with 0 worker(s)" and one worker for --workers 0
    result = _cli(hub, "serve", *given, timeout=30)
    assert result.returncode == 2 and f"argument {given[0]}: '{given[1]}' is no" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["serve", "demo"])
def test_a_port_in_use_is_said_at_once_and_nothing_starts(tmp_path: Path, command: str) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    data_dir = tmp_path / "demo-data"
    env = fresh_env(data_dir)
    try:
        result = subprocess.run([sys.executable, "-m", "hub.cli", command, "--port", str(port)], env=env, cwd=ROOT,
                                capture_output=True, text=True, timeout=60)  # fmt: skip
    finally:
        taken.close()
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in result.stderr
    assert "Traceback" not in result.stderr
    assert not data_dir.exists()  # no embedded server started, no secret written


def _platform_id(hub: Hub, party: tuple[str, str]) -> int:
    with hub.admin() as admin:
        items = admin.get("/admin/api/parties").json()["items"]
    return next(i["platform_id"] for i in items if (i["country_code"], i["party_id"]) == party)


def test_a_platform_id_past_a_bigint_is_answered_400_naming_it_by_the_admin_api_and_the_console(hub: Hub) -> None:
    # The driver refused the id when the query ran (DataError: value out of int64 range): an internal error. Then a
    # 404, after a query; now refused as the search filter platform= refuses it.
    huge = 2**63
    with hub.admin() as admin:
        answers = [
            admin.post(f"/admin/api/parties/{huge}/endpoints"),
            admin.post(f"/admin/api/parties/{huge}/credentials"),
            admin.delete(f"/admin/api/parties/{huge}"),
        ]
    for answer in answers:
        assert answer.status_code == 400 and answer.json()["error"].startswith("platform_id must be"), answer.text
    with httpx.Client(base_url=hub.base) as console:
        console.post("/console/sign-in", data={"token": hub.admin_token})
        for action in ("take-off", "renew", "endpoints"):
            page = console.get(f"/console/parties/{huge}/{action}")
            acted = console.post(f"/console/parties/{huge}/{action}", data={"confirm": "yes"})
            assert page.status_code == acted.status_code == 400, (page.text, acted.text)
            assert "platform_id must be a whole number" in page.text, page.text


def test_a_wrong_url_or_method_is_answered_in_the_shape_of_the_part_of_the_hub_it_was_meant_for(hub: Hub) -> None:
    # Litestar raises these before a router is chosen: the console and the admin API answered with OCPI envelopes.
    with hub.admin() as admin:
        missing, wrong_method = admin.get("/admin/api/nope"), admin.put("/admin/api/parties")
    assert (missing.status_code, missing.json()) == (404, {"error": "no such endpoint: GET /admin/api/nope"})
    assert (wrong_method.status_code, wrong_method.json()) == (
        405, {"error": "method PUT is not allowed on /admin/api/parties"})  # fmt: skip
    with httpx.Client(base_url=hub.base, timeout=30) as console:
        assert console.post("/console/sign-in", data={"token": hub.admin_token}).status_code == 303
        for method, path, status in (("GET", "/console/nope", 404), ("GET", "/console/log/abc", 404),
                                     ("GET", "/console/sign-out", 405)):  # fmt: skip
            page = console.request(method, path)
            assert page.status_code == status and page.headers["content-type"].startswith("text/html"), page.text
            assert "Cannot show this page" in page.text and path in page.text
    # an OCPI envelope: without a token, 401 as for any OCPI request (tests/test_unknown_ocpi_paths.py: 404 with one)
    ocpi = httpx.get(f"{hub.base}/ocpi/2.2.1/nope", timeout=30)
    assert (ocpi.status_code, ocpi.json()["status_code"]) == (401, 2000)


def test_a_party_id_registered_again_is_listed_once_as_it_is_now(hub: Hub, connect_party) -> None:
    # The list held the SUSPENDED ClientInfo of the platform that left beside the new one's CONNECTED (found by a
    # walkthrough): a party reading it could not tell which holds.
    since = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    reader, role = connect_party(_roles("EMSP")), _roles("CPO")
    first = connect_party(role)
    with hub.admin() as admin:
        assert admin.delete(f"/admin/api/parties/{_platform_id(hub, party_key(first))}").status_code == 200
    connect_party(role)  # the same party id, on a platform of its own
    listed = httpx.get(f"{hub.base}/ocpi/2.2.1/sender/hubclientinfo", params={"date_from": since},
                       headers=token_header(reader.hub_token))  # fmt: skip
    about = [i for i in listed.json()["data"] if i["party_id"] == role[2]]
    assert [i["status"] for i in about] == ["CONNECTED"], about
    assert listed.headers["X-Total-Count"] == str(len(listed.json()["data"]))
