"""A party that answers a byte at a time and never finishes: every call the hub makes on its own (still-alive
probes, location pull sync) ends at OCPI_HUB_FORWARD_TIMEOUT_S, and the hub's work for the other parties goes on.

httpx's timeouts count per read, and each byte of such an answer comes well within one: before 2026-12-03 one such
party held the still-alive round, or the location sync, of its hub process for ever.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Hub, Services, hub_env, register_at_hub, start_hub
from tests.test_hub_client_info import _wait_for
from tests.test_location_cache import HUB, _location
from tests.test_routing import _roles, party_key
from tests.test_still_alive import _status, _versions_probes

TIMEOUT_S = 2


@pytest.fixture
def impatient_hub(services: Services, empty_database: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    """A hub of its own (its probes and syncs see only this test's parties) that probes a party silent for 1 s."""
    env = hub_env(services, tmp_path / "hub", OCPI_HUB_DATABASE_URL=empty_database,
                  OCPI_HUB_REDIS_PREFIX=f"{services.redis_prefix}slow-{tmp_path.name}:",
                  OCPI_HUB_FORWARD_TIMEOUT_S=str(TIMEOUT_S), OCPI_HUB_STILL_ALIVE_S="1",
                  OCPI_HUB_OFFLINE_PROBE_S="0.5")  # fmt: skip
    running = start_hub(env, tmp_path / "hub.log")
    yield running
    running.stop()


def test_a_party_dripping_its_versions_goes_offline_and_the_other_parties_are_still_probed(
    impatient_hub: Hub, start_party
) -> None:
    hub = impatient_hub
    dripping = register_at_hub(hub, start_party, _roles("CPO"))
    other = register_at_hub(hub, start_party, _roles("CPO"))
    dripping.drip.add("/ocpi/versions")
    probed = _versions_probes(dripping)
    _wait_for(lambda: _versions_probes(dripping) > probed)  # a probe is reading the endless answer now
    other.stop()
    # The other party's outage is noticed although a probe of the dripping one is under way ...
    _wait_for(lambda: _status(hub, other) == "OFFLINE", timeout=4 * TIMEOUT_S)
    # ... and the dripping one, which never finished an answer, is OFFLINE too, its probe logged as too slow.
    _wait_for(lambda: _status(hub, dripping) == "OFFLINE", timeout=4 * TIMEOUT_S)
    cc, pid = party_key(dripping)
    with hub.admin() as admin:
        probes = admin.get("/admin/api/routing-log", params={"module": "versions", "to_party": f"{cc}-{pid}"}).json()
    assert any(f"did not answer in full within {TIMEOUT_S} s" in (p["error"] or "") for p in probes["items"])


def test_a_cpo_dripping_its_locations_does_not_hold_up_the_sync_of_the_next(impatient_hub: Hub, start_party) -> None:
    hub = impatient_hub
    emsp = register_at_hub(hub, start_party, _roles("EMSP"))
    dripping = register_at_hub(hub, start_party, _roles("CPO"), drip={"/ocpi/2.2.1/locations/sender"})
    _wait_for(lambda: any(r.path == "/ocpi/2.2.1/locations/sender" for r in dripping.received))  # its sync started
    roles = _roles("CPO")
    owner = (roles[1], roles[2])
    location = _location(owner, f"NEXT-{owner[1]}", "2026-11-25T08:00:00Z")
    register_at_hub(hub, start_party, roles, objects={"locations": [location]})

    def served() -> bool:
        answer = emsp.call(hub.base, "GET", f"sender/locations/{location['id']}", to=HUB)
        return answer.json()["status_code"] == 1000

    # The next CPO registered is synced within the dripping one's timeout and a round of the sync loop.
    _wait_for(served, timeout=4 * TIMEOUT_S)


def test_a_receiver_dripping_the_body_of_its_answer_is_a_4002_timeout_not_a_broken_answer(
    hub: Hub, connect_party
) -> None:
    # Reading a body that never ends raised TimeoutError, an OSError too, which the check for an answer broken off
    # took for that (4000), and the receiver was not suspected of being offline (found by a ClientInfo push test).
    cpo = connect_party(_roles("CPO"))
    cc, pid = party_key(cpo)
    emsp = connect_party(_roles("EMSP"), drip={f"/ocpi/2.2.1/tariffs/receiver/{cc}/{pid}/T1"})
    answer = cpo.call(hub.base, "GET", f"receiver/tariffs/{cc}/{pid}/T1", to=party_key(emsp))
    assert answer.json()["status_code"] == 4002, answer.text
    assert "did not answer within" in answer.json()["status_message"]
