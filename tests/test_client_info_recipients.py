"""A ClientInfo change reaches every platform registered when it is pushed, one its pushing process has not loaded yet
too (mod_hub_client_info.asciidoc, Push model: "Any changes to ClientInfo in the Hub system are sent to the connected
party"). The round that pushes a change takes its recipients from PostgreSQL: a platform registered through another
hub process a moment ago is one the changes are marked delivered for, and no catch-up (migrations 0027-0029: after a
suspension, OFFLINE or an unanswered push) would push it what it missed."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import OUTPUT, Hub, Services, hub_env, register_at_hub, start_hub
from tests.test_departed_late_writes import _FreezingProxy
from tests.test_hub_client_info import _pushes_about, _wait_for
from tests.test_routing import _roles, party_key


@pytest.fixture
def two_processes(
    services: Services, empty_database: str, tmp_path: Path
) -> Iterator[tuple[Hub, _FreezingProxy, dict[str, str]]]:
    """A hub process whose way to Redis the test can freeze (so that it hears of no directory change), and the env of a
    second process on the same database and Redis, which the test starts once the first is busy pushing."""
    proxy = _FreezingProxy(services.redis_url)
    shared = {"OCPI_HUB_DATABASE_URL": empty_database, "OCPI_HUB_FORWARD_TIMEOUT_S": "10",
              "OCPI_HUB_REDIS_PREFIX": f"{services.redis_prefix}recipients-{tmp_path.name}:"}  # fmt: skip
    env = hub_env(services, tmp_path / "pushing", OCPI_HUB_REDIS_URL=proxy.url, **shared)
    pushing = start_hub(env, OUTPUT / "hub-client-info-recipients.log")
    try:
        yield pushing, proxy, hub_env(services, tmp_path / "registering", **shared)
    finally:
        proxy.thaw()
        pushing.stop()
        proxy.close()


def test_a_change_is_pushed_to_a_platform_registered_through_another_process_the_pushing_one_has_not_loaded(
    two_processes: tuple[Hub, _FreezingProxy, dict[str, str]], start_party
) -> None:
    pushing, proxy, env = two_processes
    held = threading.Event()
    held.set()
    slow = register_at_hub(pushing, start_party, _roles("CPO"), held=held, held_paths=("/ocpi/2.2.1/hubclientinfo",))
    # the pushing process takes the turn, and keeps it while its push to the slow party waits for an answer
    held.clear()
    busy = register_at_hub(pushing, start_party, _roles("EMSP"))
    _wait_for(lambda: _pushes_about(slow, party_key(busy)))
    proxy.freeze()  # from now on it loads no newer directory: it hears of no change
    registering = start_hub(env, OUTPUT / "hub-client-info-recipients-2.log")
    try:
        newcomer = register_at_hub(registering, start_party, _roles("EMSP"))
        later = register_at_hub(registering, start_party, _roles("CPO"))  # the change the newcomer must be pushed
        held.set()  # the turn's round ends; its next one pushes the registrations, the newcomer's and the later one's
        # a round of the frozen process fails once its directory's Redis read times out (5 s), and the other then takes
        # the turn before it looks again
        _wait_for(lambda: _pushes_about(slow, party_key(later)), timeout=20.0)
        time.sleep(1.0)
        proxy.thaw()
        pushed = _wait_for(lambda: _pushes_about(newcomer, party_key(later)), timeout=15.0)
        assert pushed[-1]["status"] == "CONNECTED", pushed
    finally:
        proxy.thaw()
        registering.stop()
