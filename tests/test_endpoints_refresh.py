"""After a rotation the party took but the hub could not finish, the hub fetches the party's endpoints again on its
own, from the versions URL the party named, and routes on the endpoints from before until that works."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import OUTPUT, Hub, Services, hub_env, register_at_hub, start_hub
from tests.parties import Party
from tests.test_admin_and_cli import _platform_id
from tests.test_credentials_rotation import _moves_its_api
from tests.test_hub_client_info import _wait_for
from tests.test_routing import _roles, party_key


@pytest.fixture
def two_hubs(services: Services, empty_database: str, tmp_path: Path) -> Iterator[tuple[Hub, Hub]]:
    """Two hub processes with a database and cache of their own (no other test's hub takes their refreshes), trying
    a failed fetch again after 0.5 s and probing a party silent for a second."""
    env = hub_env(services, tmp_path / "hub", OCPI_HUB_DATABASE_URL=empty_database, OCPI_HUB_OFFLINE_PROBE_S="0.5",
                  OCPI_HUB_STILL_ALIVE_S="1", OCPI_HUB_REDIS_PREFIX=f"{services.redis_prefix}refresh:")  # fmt: skip
    first = start_hub(env, OUTPUT / "hub-endpoints-refresh.log")
    try:
        second = start_hub(env | {"OCPI_HUB_DATA_DIR": str(tmp_path / "hub-2")}, OUTPUT / "hub-endpoints-refresh-2.log")
        try:
            yield first, second
        finally:
            second.stop()
    finally:
        first.stop()


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
    emsp, cpo = register_at_hub(first, start_party, _roles("EMSP")), register_at_hub(first, start_party, _roles("CPO"))
    platform_id = _platform_id(first, party_key(cpo))
    _moves_its_api(cpo)
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
    assert (refreshed["actor_kind"], refreshed["parameters"]) == ("hub", {
        "platform_id": platform_id, "name": cpo.name, "versions_url": cpo.versions_url, "version": "2.2.1",
        "endpoints": len(cpo.endpoints())})  # fmt: skip
    # Every hub process routes on the new endpoints within a second, as after any other directory change.
    for hub in two_hubs:
        _wait_for(lambda hub=hub: _routed_to(hub, emsp, cpo) == "/v2/ocpi/2.2.1/locations/sender", timeout=3)
    assert time.monotonic() - done < 1.5
    # Nothing went to the old versions URL after the rotation: neither the refresh nor the still-alive probes.
    versions = [r for r in cpo.received if r.method == "GET" and r.path.endswith("/ocpi/versions") and r.at > rotated]
    assert [r.path for r in versions if r.path == "/ocpi/versions"] == []
    assert any("X-Request-ID" in r.headers for r in versions), "no still-alive probe came in the test's time"
