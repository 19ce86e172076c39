"""A cache that lost its data, or a CPO not synced yet, is never taken for the whole list: GET All via the hub of that
CPO goes to the CPO, of every CPO is refused with 4000, until pull sync has read the CPO's list again."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest
import redis

from tests.conftest import OUTPUT, ROOT, Hub, Services, hub_env, register_at_hub, scratch_database, start_hub
from tests.test_credentials_rotation import console_page
from tests.test_location_cache import _get, _location
from tests.test_location_cache_cap import _sync_line, _walk
from tests.test_pull_sync import _wait
from tests.test_routing import _roles, party_key

SENDER = "/ocpi/2.2.1/locations/sender"


@pytest.fixture
def own_hub(services: Services, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Hub, str]]:
    """A hub of its own (database and Redis keys), whose cache the test empties: (the hub, its Redis prefix)."""
    prefix = f"{services.redis_prefix}complete-{secrets.token_hex(4)}:"
    with scratch_database(services, "location_complete") as database_url:
        env = hub_env(services, tmp_path_factory.mktemp("complete-hub"), OCPI_HUB_DATABASE_URL=database_url,
                      OCPI_HUB_REDIS_PREFIX=prefix)  # fmt: skip
        hub = start_hub(env, OUTPUT / "hub-location-complete.log")
        try:
            yield hub, prefix
        finally:
            hub.stop()


def _lose_redis_data(services: Services, prefix: str) -> None:
    """What a Redis restart without persistence does to the hub: every key of its gone."""
    client = redis.Redis.from_url(services.redis_url)
    for key in client.scan_iter(match=f"{prefix}*"):
        client.delete(key)
    client.close()


def test_after_redis_lost_its_data_get_all_is_never_an_empty_list_until_the_cpo_is_synced_again(
    services: Services, own_hub: tuple[Hub, str], start_party
) -> None:
    hub, prefix = own_hub
    emsp = register_at_hub(hub, start_party, _roles("EMSP"))
    roles = _roles("CPO")
    cpo = start_party(roles, page_size=2)
    owner = party_key(cpo)
    cpo.objects["locations"] = [_location(owner, f"L{n}", f"2026-12-01T10:0{n}:00Z") for n in range(3)]
    cpo.register_at(hub.versions_url, hub.invite(cpo.name, roles)["token_a"])
    ids = ["L0", "L1", "L2"]
    _wait(lambda: _sync_line(hub, owner, "location_sync_done"))
    _wait(lambda: [x["id"] for x in _get(emsp, hub, "sender/locations").json()["data"]] == ids or None)
    # its Sender fails from now on, so that the hub's own sync after the loss fails and is not tried again at once
    cpo.canned[("GET", SENDER)] = (500, b"down", {})
    _lose_redis_data(services, prefix)
    _wait(lambda: _sync_line(hub, owner, "location_sync_failed"))
    _wait(lambda: '"location_cache_lost"' in hub.log())  # said by the process that saw it synced
    del cpo.canned[("GET", SENDER)]
    every = _get(emsp, hub, "sender/locations").json()
    assert every["status_code"] == 4000, every
    assert f"{owner[0]}-{owner[1]} (not synced yet)" in every["status_message"]
    # its own locations: asked of the CPO, its Links leading on through the hub
    query = f"sender/locations?country_code={owner[0]}&party_id={owner[1]}"
    assert _walk(emsp, hub, query) == (ids, {owner[1]})
    # one location, its owner named: asked of the CPO rather than 2003
    single = _get(emsp, hub, f"sender/locations/L1?country_code={owner[0]}&party_id={owner[1]}")
    assert single.headers["OCPI-from-party-id"] == owner[1]
    assert [r.path for r in cpo.functional() if r.method == "GET"][-1].endswith("/locations/sender/L1")
    # its owner unknown (the hub's record of who pushed it went with the rest): a 2003 that says why
    unknown = _get(emsp, hub, "sender/locations/L1").json()
    assert unknown["status_code"] == 2003 and "not synced yet" in unknown["status_message"], unknown
    with hub.admin() as admin:
        [party] = [p for p in admin.get("/admin/api/parties").json()["items"] if p["party_id"] == owner[1]]
    assert party["locations_synced_at"] is None
    assert ">locations not synced</span>" in console_page(hub, "/console/parties")
    metrics = httpx.get(f"{hub.base}/metrics").text
    assert 'ocpi_hub_location_cache_requests_total{result="not_synced"}' in metrics
    assert "ocpi_hub_location_cache_lost_total 1.0" in metrics
    # the operator's sync (or the next scheduled one) reads its list again: GET All is the cache's again
    command = [sys.executable, "-m", "hub.cli", "sync", "locations", "--party", "-".join(owner)]
    synced = subprocess.run(command, env=hub.env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert synced.returncode == 0, synced.stderr
    every = _get(emsp, hub, "sender/locations")
    assert every.json()["status_code"] == 1000 and [x["id"] for x in every.json()["data"]] == ids
    assert every.headers["OCPI-from-party-id"] == "HUB"
    with hub.admin() as admin:
        [party] = [p for p in admin.get("/admin/api/parties").json()["items"] if p["party_id"] == owner[1]]
    assert party["locations_synced_at"]
    assert ">locations not synced</span>" not in console_page(hub, "/console/parties")


def test_a_new_cpo_before_its_first_sync_makes_get_all_of_every_cpo_an_error_not_a_short_list(
    own_hub: tuple[Hub, str], start_party
) -> None:
    hub, _ = own_hub
    emsp = register_at_hub(hub, start_party, _roles("EMSP"))
    roles = _roles("CPO")
    cpo = start_party(roles)
    owner = party_key(cpo)
    cpo.objects["locations"] = [_location(owner, "N1", "2026-12-01T10:00:00Z")]
    cpo.canned[("GET", SENDER)] = (500, b"not yet", {})  # its first sync fails: it stays unsynced
    cpo.register_at(hub.versions_url, hub.invite(cpo.name, roles)["token_a"])
    _wait(lambda: _sync_line(hub, owner, "location_sync_failed"))
    every = _get(emsp, hub, "sender/locations").json()
    assert every["status_code"] == 4000 and f"{owner[0]}-{owner[1]} (not synced yet)" in every["status_message"]
    assert json.dumps(every).count("retry shortly") == 1
    # a wrong parameter is told first (2001): "retry shortly" had the client retry it as it was
    for wrong, told in (("limit=-1", "limit must be a whole number"), ("offset=x", "offset must be a whole number"),
                        ("date_from=soon", "date_from must be an OCPI DateTime")):  # fmt: skip
        refused = _get(emsp, hub, f"sender/locations?{wrong}").json()
        assert refused["status_code"] == 2001 and told in refused["status_message"], refused
