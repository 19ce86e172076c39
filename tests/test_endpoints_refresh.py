"""After a rotation the party took but the hub could not finish, the hub fetches the party's endpoints again on its
own, from the versions URL the party named, and routes on the endpoints from before until that works."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx
import pytest

from storage.log_body import body_of
from tests.conftest import OUTPUT, Hub, Services, hub_env, register_at_hub, start_hub, two_hub_processes
from tests.parties import Party, Received, token_header
from tests.test_admin_and_cli import _platform_id
from tests.test_credentials_rotation import _listed, _moves_its_api, _rotate, console_page
from tests.test_hub_client_info import _wait_for
from tests.test_routing import _roles, party_key


@pytest.fixture
def two_hubs(services: Services, empty_database: str, tmp_path: Path) -> Iterator[tuple[Hub, Hub]]:
    """Two hub processes with a database and cache of their own (no other test's hub takes their refreshes), trying
    a failed fetch again after 0.5 s and probing a party silent for a second."""
    env = hub_env(services, tmp_path / "hub", OCPI_HUB_DATABASE_URL=empty_database, OCPI_HUB_OFFLINE_PROBE_S="0.5",
                  OCPI_HUB_STILL_ALIVE_S="1", OCPI_HUB_REDIS_PREFIX=f"{services.redis_prefix}refresh:")  # fmt: skip
    with two_hub_processes(env, tmp_path / "hub-2", "hub-endpoints-refresh") as hubs:
        yield hubs


def _registered(
    hub: Hub, start_party: Callable[..., Party], *roles: tuple[str, str, str], moving_its_api: bool = False
) -> tuple[Party, int]:
    """A party holding roles, invited and registered at hub through the real handshake, and its platform id; with
    moving_its_api, one that names a new versions URL in its next credentials answer (_moves_its_api)."""
    party = register_at_hub(hub, start_party, *roles)
    if moving_its_api:
        _moves_its_api(party)
    return party, _platform_id(hub, party_key(party))


def _rotation_pending(registered_on: Hub, rotated_on: Hub, start_party: Callable[..., Party]) -> tuple[Party, int]:
    """A CPO registered at one hub process, rotated on another (or the same): it names a new versions URL that answers
    404 (_moves_its_api), so the rotation ends 502 and a refresh of its endpoints is pending; the CPO and its
    platform id."""
    cpo, platform_id = _registered(registered_on, start_party, _roles("CPO"), moving_its_api=True)
    assert _rotate(rotated_on, platform_id).status_code == 502
    return cpo, platform_id


def _events(hubs: tuple[Hub, ...], event: str, platform_id: int) -> list[dict]:
    lines = (json.loads(line) for hub in hubs for line in hub.log().splitlines() if line.startswith("{"))
    return [e for e in lines if e.get("event") == event and e.get("platform_id") == platform_id]


def _refreshes(hub: Hub, platform_id: int) -> list[dict]:
    with hub.admin() as admin:
        trail = admin.get("/admin/api/audit-trail").json()["items"]
    return [t for t in trail if t["action"] == "refresh_endpoints" and t["parameters"]["platform_id"] == platform_id]


def _routed_to(hub: Hub, emsp: Party, cpo: Party) -> str:
    """The path at the CPO of an eMSP's GET of its locations through this hub process."""
    pulled = emsp.call(hub.base, "GET", "sender/locations", to=party_key(cpo))
    assert pulled.status_code == 200 and pulled.json()["status_code"] == 1000, pulled.text
    return cpo.functional()[-1].path


def test_a_rotation_whose_new_versions_url_fails_at_first_ends_with_its_endpoints_without_the_operator(
    two_hubs: tuple[Hub, Hub], start_party
) -> None:
    first, second = two_hubs
    emsp = register_at_hub(first, start_party, _roles("EMSP"))
    cpo, platform_id = _registered(first, start_party, _roles("CPO"), moving_its_api=True)
    rotated = time.monotonic()
    with second.admin() as admin:  # registered on one process, rotated on the other
        assert admin.post(f"/admin/api/parties/{platform_id}/credentials").status_code == 502
    # The hub tries again on its own, and says so when that fails too; it routes on the endpoints from before.
    [failed, *_] = _wait_for(lambda: _events(two_hubs, "platform_endpoints_refresh_failed", platform_id))
    assert failed["versions_url"] == cpo.versions_url and "answered HTTP 404" in failed["reason"], failed
    assert failed["next_try_in_s"] >= 1.0 and failed["level"] == "warning"
    for hub in two_hubs:
        assert _routed_to(hub, emsp, cpo) == "/ocpi/2.2.1/locations/sender"
    del cpo.canned[("GET", "/v2/ocpi/versions")]  # the party's new deployment is up
    [refreshed] = _wait_for(lambda: _refreshes(first, platform_id), timeout=15)
    done = time.monotonic()
    (role, cc, pid), *_ = cpo.roles
    assert (refreshed["actor_kind"], refreshed["parameters"]) == ("hub", {
        "platform_id": platform_id, "name": cpo.name, "versions_url": cpo.versions_url, "version": "2.2.1",
        "endpoints": len(cpo.endpoints()), "roles": [f"{role} {cc}-{pid}"]})  # fmt: skip
    # Every hub process routes on the new endpoints within a second, as after any other directory change.
    for hub in two_hubs:
        _wait_for(lambda hub=hub: _routed_to(hub, emsp, cpo) == "/v2/ocpi/2.2.1/locations/sender", timeout=3)
    assert time.monotonic() - done < 1.5
    # Nothing went to the old versions URL after the rotation: neither the refresh nor the still-alive probes.
    versions = [r for r in cpo.received if r.method == "GET" and r.path.endswith("/ocpi/versions") and r.at > rotated]
    assert [r.path for r in versions if r.path == "/ocpi/versions"] == []
    assert any(_probe(r) for r in versions), "no still-alive probe came in the test's time"


def _probe(received: Received) -> bool:
    """A still-alive probe is a conversation of one message; the calls of a refresh are one conversation together."""
    request_id = received.headers.get("X-Request-ID")
    return request_id is not None and request_id == received.headers.get("X-Correlation-ID")


def _versions_fetched_at(party: Party, path: str, since: float) -> list[float]:
    """When the hub fetched the party's versions at path to refresh its endpoints (not to probe it)."""
    return [r.at for r in party.received
            if (r.method, r.path) == ("GET", path) and r.at > since and not _probe(r)]  # fmt: skip


def _own_messages(database_url: str, platform_id: int) -> list[dict]:
    """The routing-log rows of the hub's own calls to the platform's versions and credentials endpoints in
    conversations of more than one message: its registration, rotations and endpoints refreshes (a still-alive probe
    is one of its own)."""
    sql = ("SELECT request_id, correlation_id, module, method, path, routing, from_country_code, from_party_id, "
           "to_country_code, to_party_id, http_status, ocpi_status_code, duration_ms, error, request_headers, "
           "response_headers, response_body FROM routing_log WHERE receiver_platform_id = $1 AND routing = 'hub' "
           "AND module IN ('versions', 'credentials') AND request_id <> correlation_id "
           "ORDER BY received_at, id")  # fmt: skip
    return [dict(r) | {"response_body": body_of(r["response_body"]).decode()}
            for r in asyncio.run(_fetch(database_url, sql, platform_id))]  # fmt: skip


def test_every_call_of_a_refresh_is_a_routing_log_row_of_the_hubs_own_without_its_tokens(
    two_hubs: tuple[Hub, Hub], start_party, empty_database: str
) -> None:
    first, _ = two_hubs
    cpo, platform_id = _rotation_pending(first, first, start_party)

    def refresh_failures() -> list[dict]:  # not the rotation's own failed fetch, in the conversation of its PUT
        rows = _own_messages(empty_database, platform_id)
        rotation = {r["correlation_id"] for r in rows if r["method"] == "PUT"}
        return [r for r in rows if r["error"] and r["correlation_id"] not in rotation]

    [failed, *_] = _wait_for(refresh_failures)
    del cpo.canned[("GET", "/v2/ocpi/versions")]
    _wait_for(lambda: _refreshes(first, platform_id), timeout=15)
    # issue 4, rule 9: each message the hub sends on its own is a row, routing 'hub', from the hub to the party
    (_, cc, pid), base = cpo.roles[0], f"{cpo.base}/v2/ocpi"
    rows = _own_messages(empty_database, platform_id)
    assert {(r["routing"], r["from_country_code"], r["from_party_id"], r["to_country_code"], r["to_party_id"])
            for r in rows} == {("hub", "NL", "HUB", cc, pid)}  # fmt: skip
    assert (failed["module"], failed["method"], failed["path"], failed["http_status"]) == (
        "versions", "GET", f"{base}/versions", 404)  # fmt: skip
    assert failed["error"].startswith(f"GET {base}/versions answered HTTP 404"), failed
    # The refresh that worked: its versions, its 2.2.1 details and its credentials, one conversation.
    done = [r for r in rows if r["correlation_id"] == rows[-1]["correlation_id"]]
    assert [(r["module"], r["path"], r["http_status"], r["ocpi_status_code"], r["error"]) for r in done] == [
        ("versions", f"{base}/versions", 200, 1000, None), ("versions", f"{base}/2.2.1", 200, 1000, None),
        ("credentials", f"{base}/2.2.1/credentials", 200, 1000, None)]  # fmt: skip
    assert all(r["duration_ms"] > 0 for r in rows)
    # The party got each with the row's X-Request-ID, and the refresh's X-Correlation-ID.
    sent = {(r.headers.get("X-Request-ID"), r.headers.get("X-Correlation-ID")) for r in cpo.received}
    assert {(r["request_id"], r["correlation_id"]) for r in rows} <= sent
    # No token: no headers in the rows, the party's token B hidden in its credentials.
    assert {(r["request_headers"], r["response_headers"]) for r in rows} == {(None, None)}
    assert json.loads(done[-1]["response_body"])["data"]["token"] == "(not logged)"
    assert not [r for r in rows if cpo.token_b in json.dumps(r, default=str)]


def test_while_the_hub_tries_a_refresh_the_api_and_the_console_say_it_is_trying_now(
    two_hubs: tuple[Hub, Hub], start_party
) -> None:
    first, _ = two_hubs
    cpo, platform_id = _rotation_pending(first, first, start_party)
    # The new deployment answers a byte now and then and never finishes: each try takes the hub's 2 s timeout.
    dripping = time.monotonic()
    cpo.drip.add("/v2/ocpi/versions")
    _wait_for(lambda: _versions_fetched_at(cpo, "/v2/ocpi/versions", dripping))
    during = _listed(first, platform_id)
    page = console_page(first, f"/console/parties/{platform_id}/endpoints")
    assert (during["endpoints_next_try"], during.get("endpoints_trying_now")) == (None, True), during
    assert '<span id="endpoints-next-try">trying now</span>' in page
    # Once it failed, the next try is the backoff's (1 s after the second failure), not the time a try may take.
    events = lambda: _events(two_hubs, "platform_endpoints_refresh_failed", platform_id)  # noqa: E731
    [failed] = _wait_for(lambda: [e for e in events() if e["reason"].endswith("timed out")])
    after = _listed(first, platform_id)
    assert (failed["next_try_in_s"], after["endpoints_trying_now"]) == (1.0, False), (failed, after)
    next_try = datetime.fromisoformat(after["endpoints_next_try"])
    assert (next_try - datetime.now(UTC)).total_seconds() <= 1.0, after


def test_a_rotation_answered_with_roles_not_granted_ends_only_once_the_roles_the_party_lists_match(
    two_hubs: tuple[Hub, Hub], start_party, empty_database: str
) -> None:
    first, second = two_hubs
    cpo, platform_id = _registered(first, start_party, _roles("CPO"))
    granted, (cc, pid) = list(cpo.roles), party_key(cpo)
    cpo.roles += [("EMSP", "NL", "ZZZ")]  # what its credentials list, in its answer to the PUT and on a GET
    answer = _rotate(second, platform_id)
    assert answer.status_code == 502 and "the roles it answered do not match" in answer.json()["error"], answer.text
    # The hub fetches the endpoints again on its own with the new token B, and reads the party's credentials
    # (credentials.asciidoc, GET): the roles they list still do not match, so nothing is finished.
    [failed, *_] = _wait_for(lambda: _events(two_hubs, "platform_endpoints_refresh_failed", platform_id))
    credentials_url = f"{cpo.base}/ocpi/2.2.1/credentials"
    assert failed["reason"] == (
        f"its endpoints were fetched, but the roles its credentials list (GET {credentials_url}) do not match: roles "
        f"not granted to this platform by the hub operator: EMSP NL-ZZZ (granted: CPO {cc}-{pid})")  # fmt: skip
    [read] = [r for r in cpo.received if (r.method, r.path) == ("GET", "/ocpi/2.2.1/credentials")][:1]
    assert read.headers["Authorization"] == token_header(cpo.token_b)["Authorization"]
    listed = _listed(first, platform_id)
    assert "the roles its credentials list" in listed["endpoints_from_before"], listed
    assert listed["endpoints_next_try"] or listed["endpoints_trying_now"], listed
    page = console_page(second, f"/console/parties/{platform_id}/endpoints")
    assert "the roles the party lists must match too" in page and "roles not granted to this platform" in page
    assert _refreshes(first, platform_id) == []
    # The party lists the roles it holds, and names itself anew: the next try stores both, as the rotation would have.
    cpo.name, cpo.roles = "Renamed Party", granted
    [refreshed] = _wait_for(lambda: _refreshes(first, platform_id), timeout=15)
    assert (refreshed["actor_kind"], refreshed["parameters"]) == ("hub", {
        "platform_id": platform_id, "name": "Test Party", "versions_url": cpo.versions_url, "version": "2.2.1",
        "endpoints": len(cpo.endpoints()), "roles": [f"CPO {cc}-{pid}"]})  # fmt: skip
    listed = _listed(first, platform_id)
    assert (listed["endpoints_from_before"], listed["endpoints_next_try"], listed["endpoints_trying_now"]) == (
        None, None, False)  # fmt: skip
    details = asyncio.run(_fetchval(empty_database, "SELECT business_details FROM party_role WHERE platform_id = $1",
                                    platform_id))  # fmt: skip
    assert json.loads(details) == {"name": "Renamed Party CPO"}


def _roles_stored(database_url: str, platform_id: int) -> list[tuple[str, str, object]]:
    """(party id, status, business details) of each of the platform's roles, in the order they were granted."""
    sql = "SELECT party_id, status, business_details FROM party_role WHERE platform_id = $1 ORDER BY id"
    rows = asyncio.run(_fetch(database_url, sql, platform_id))
    return [(r["party_id"], r["status"], r["business_details"] and json.loads(r["business_details"])) for r in rows]


def test_a_refresh_after_a_failed_endpoints_fetch_stores_the_roles_and_business_details_the_party_lists_now(
    two_hubs: tuple[Hub, Hub], start_party, empty_database: str
) -> None:
    first, _ = two_hubs
    kept, given_up = _roles("CPO"), _roles("CPO")
    cpo, platform_id = _registered(first, start_party, kept, given_up, moving_its_api=True)
    answer = _rotate(first, platform_id)  # its answer lists the roles it holds: only the endpoints fail
    assert answer.status_code == 502 and "fetching its endpoints" in answer.json()["error"], answer.text
    # Since then the party renamed itself, gave up one of its party ids and lists one the operator never granted:
    # the hub reads that in its credentials (credentials.asciidoc, GET) and stores nothing of the refresh.
    cpo.name, cpo.roles = "Renamed Party", [kept, ("EMSP", "NL", "ZZZ")]
    del cpo.canned[("GET", "/v2/ocpi/versions")]
    not_granted = "roles not granted to this platform by the hub operator: EMSP NL-ZZZ"
    _wait_for(lambda: [e for e in _events(two_hubs, "platform_endpoints_refresh_failed", platform_id)
                       if not_granted in e["reason"]])  # fmt: skip
    before = {"name": "Test Party CPO"}
    assert _roles_stored(empty_database, platform_id) == [(kept[2], "CONNECTED", before),
                                                          (given_up[2], "CONNECTED", before)]  # fmt: skip
    assert _refreshes(first, platform_id) == [] and _listed(first, platform_id)["endpoints_from_before"]
    # Once it lists only roles it holds, the refresh stores them as a credentials exchange would: the one it lists
    # with its new business details, the one it gave up SUSPENDED.
    cpo.roles = [kept]
    [refreshed] = _wait_for(lambda: _refreshes(first, platform_id), timeout=15)
    assert refreshed["parameters"]["roles"] == [f"CPO {kept[1]}-{kept[2]}"], refreshed
    assert _roles_stored(empty_database, platform_id) == [(kept[2], "CONNECTED", {"name": "Renamed Party CPO"}),
                                                          (given_up[2], "SUSPENDED", before)]  # fmt: skip


async def _fetch(database_url: str, sql: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def _fetchval(database_url: str, sql: str, *args: object) -> object:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


def _claim_set(database_url: str, platform_id: int, until: str) -> datetime | None:
    """The platform's refresh held until the SQL expression until; what it holds now."""
    column = "endpoints_refresh_claimed_until"
    sql = f"UPDATE platform SET {column} = {until} WHERE id = $1 RETURNING {column}"
    return asyncio.run(_fetchval(database_url, sql, platform_id))  # type: ignore[return-value]


def _refresh(hub: Hub, platform_id: int) -> httpx.Response:
    with hub.admin() as admin:
        return admin.post(f"/admin/api/parties/{platform_id}/endpoints")


def test_the_operator_hears_a_refresh_is_under_way_while_a_hub_process_holds_it_and_nothing_is_fetched(
    two_hubs: tuple[Hub, Hub], start_party, empty_database: str
) -> None:
    first, _ = two_hubs
    cpo, platform_id = _registered(first, start_party, _roles("CPO"))
    # A hub process holds the platform's refresh (a try of its own, say) for the next 30 s.
    until = _claim_set(empty_database, platform_id, "now() + interval '30 seconds'")
    asked = time.monotonic()
    answer = _refresh(first, platform_id)
    assert answer.status_code == 409, answer.text
    assert answer.json()["error"] == (
        f"a refresh of the endpoints of platform {platform_id} is under way (one of the hub's own tries, or another "
        "operator's, on one of the hub's processes); nothing was done. It holds the refresh until "
        f"{until:%Y-%m-%d %H:%M:%S} UTC at the latest; its outcome shows on the platform's Endpoints page: ask again "
        "after that if you still need to")  # fmt: skip
    page = console_page(first, f"/console/parties/{platform_id}/endpoints", form={"confirm": "yes"}, status=409)
    assert "is under way" in page and f"{until:%Y-%m-%d %H:%M:%S} UTC at the latest" in page
    assert _versions_fetched_at(cpo, "/ocpi/versions", asked) == [] and _refreshes(first, platform_id) == []
    # Once the claim is gone the operator's refresh goes through, and lets go of the claim it took.
    _claim_set(empty_database, platform_id, "NULL")
    assert _refresh(first, platform_id).status_code == 200
    assert _claim_set(empty_database, platform_id, "endpoints_refresh_claimed_until") is None


def test_an_operators_refresh_on_one_hub_process_holds_off_another_until_it_ends(
    two_hubs: tuple[Hub, Hub], start_party
) -> None:
    first, second = two_hubs
    cpo, platform_id = _registered(first, start_party, _roles("CPO"))
    # The party's versions answer a byte now and then and never finish: the refresh takes the hub's 2 s timeout.
    cpo.drip.add("/ocpi/versions")
    asked = time.monotonic()
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(_refresh, first, platform_id)
        _wait_for(lambda: _versions_fetched_at(cpo, "/ocpi/versions", asked))
        meanwhile = _refresh(second, platform_id)  # another operator, on the other process
        assert meanwhile.status_code == 409 and "is under way" in meanwhile.json()["error"], meanwhile.text
        assert len(_versions_fetched_at(cpo, "/ocpi/versions", asked)) == 1  # the second one fetched nothing
        failed = slow.result()
    assert failed.status_code == 502 and "timed out" in failed.json()["error"], failed.text
    # The failed refresh let go of its claim: the next one goes through at once.
    cpo.drip.discard("/ocpi/versions")
    again = _refresh(second, platform_id)
    assert again.status_code == 200, again.text


def test_a_refresh_one_process_schedules_is_tried_within_a_second_by_hubs_that_were_idle(
    two_hubs: tuple[Hub, Hub], start_party
) -> None:
    first, second = two_hubs
    cpo, platform_id = _registered(first, start_party, _roles("CPO"), moving_its_api=True)
    time.sleep(1)  # nothing pending: both processes sleep until the directory changes, or for a minute
    assert _rotate(second, platform_id).status_code == 502
    rotated = time.monotonic()
    # The first try is due OCPI_HUB_OFFLINE_PROBE_S (0.5 s) after the rotation, which woke every process's loop.
    [tried, *_] = _wait_for(lambda: _versions_fetched_at(cpo, "/v2/ocpi/versions", rotated), timeout=5)
    assert tried - rotated < 1.5


def _platform_scans(database_url: str) -> int:
    sql = "SELECT seq_scan + coalesce(idx_scan, 0) FROM pg_stat_user_tables WHERE relname = 'platform'"
    return int(asyncio.run(_fetchval(database_url, sql)))  # type: ignore[call-overload]


def test_an_idle_hub_does_not_ask_the_database_for_due_refreshes_every_second(
    services: Services, empty_database: str, tmp_path: Path, start_party
) -> None:
    env = hub_env(services, tmp_path / "hub", OCPI_HUB_DATABASE_URL=empty_database,
                  OCPI_HUB_REDIS_PREFIX=f"{services.redis_prefix}idle:")  # fmt: skip
    hub = start_hub(env, OUTPUT / "hub-idle.log")
    try:
        register_at_hub(hub, start_party, _roles("CPO"))  # a platform on the hub, no refresh of it pending
        time.sleep(2)  # what the registration read is counted (PostgreSQL counts a backend's reads within a second)
        before = _platform_scans(empty_database)
        time.sleep(6)
        # Each read of the platform table counts: once a second by the refresh loop would be 6 or more; the
        # still-alive check reads it when the next platform will have been silent for 5 minutes, or once a minute.
        assert _platform_scans(empty_database) - before <= 2
    finally:
        hub.stop()


def test_a_refresh_that_came_due_while_an_operators_failing_try_held_it_is_tried_as_soon_as_that_try_fails(
    two_hubs: tuple[Hub, Hub], start_party
) -> None:
    first, second = two_hubs
    cpo, platform_id = _rotation_pending(first, second, start_party)
    [failed, *_] = _wait_for(lambda: _events(two_hubs, "platform_endpoints_refresh_failed", platform_id))
    assert failed["next_try_in_s"] < 2  # due again while the operator's try below holds the refresh
    # The new deployment answers its versions, but its version details drip: the operator's try takes the hub's 2 s
    # forward timeout, and holds the refresh for the whole of it.
    del cpo.canned[("GET", "/v2/ocpi/versions")]
    cpo.drip.add("/v2/ocpi/2.2.1")
    asked = time.monotonic()
    answer = _refresh(first, platform_id)
    answered = time.monotonic()
    assert answer.status_code == 502 and "it tries again on its own" in answer.json()["error"], answer.text
    # The hub's own try follows at once on one of the processes, not once the operator's claim would have run out.
    [operators, ours, *_] = _wait_for(lambda: _versions_fetched_at(cpo, "/v2/ocpi/versions", asked)[1:] and
                                      _versions_fetched_at(cpo, "/v2/ocpi/versions", asked), timeout=15)  # fmt: skip
    assert operators < answered and ours - answered < 1.0, (operators - asked, ours - answered)


def test_endpoints_under_the_hubs_own_url_are_refused_at_registration_and_at_a_refresh(hub: Hub, start_party) -> None:
    # Taken, the hub would forward requests for the party to itself, in the party's name and with its token B.
    def listing_the_hubs_locations(party: Party) -> None:
        endpoints = [e for e in party.endpoints() if e["identifier"] != "locations"]
        endpoints.append(
            {"identifier": "locations", "role": "SENDER", "url": f"{hub.base}/ocpi/2.2.1/sender/locations"}
        )
        details = json.dumps({"data": {"version": "2.2.1", "endpoints": endpoints}, "status_code": 1000,
                              "timestamp": "2026-12-04T10:00:00Z"}).encode()  # fmt: skip
        party.canned[("GET", "/ocpi/2.2.1")] = (200, details, {"Content-Type": "application/json"})

    newcomer = start_party(_roles("CPO"))
    listing_the_hubs_locations(newcomer)
    answer = newcomer.register_at(hub.versions_url, hub.invite(newcomer.name, newcomer.roles[0])["token_a"]).json()
    assert answer["status_code"] == 3001, answer
    assert (
        f"locations SENDER endpoint {hub.base}/ocpi/2.2.1/sender/locations is the hub's own" in answer["status_message"]
    )
    # A registered CPO whose details list one later: the refresh fails saying why, and its own endpoints stay.
    emsp = register_at_hub(hub, start_party, _roles("EMSP"))
    cpo, platform_id = _registered(hub, start_party, _roles("CPO"))
    listing_the_hubs_locations(cpo)
    with hub.admin() as admin:
        refreshed = admin.post(f"/admin/api/parties/{platform_id}/endpoints")
    assert refreshed.status_code == 502 and "is the hub's own" in refreshed.json()["error"], refreshed.text
    assert _routed_to(hub, emsp, cpo) == "/ocpi/2.2.1/locations/sender"
