"""A party that registered through one hub process a moment ago is a receiver on every other at once: a process that
does not have it in its directory yet catches up before it answers 4001 (hub.ocpi.functional_module), as it does
for a token it does not know (test_registration: a new token C works at once on every hub process).

Two `ocpi-hub serve` processes on one database and one Redis; the test freezes the second one's way to PostgreSQL
(a database further away, or busy) while a party registers through the first, so that the second cannot have loaded
the new directory when the request reaches it, whatever its watcher heard through Redis meanwhile."""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.conftest import OUTPUT, Hub, Services, hub_env, register_at_hub, start_hub
from tests.parties import Party
from tests.test_departed_late_writes import _FreezingProxy
from tests.test_routing import _roles, party_key

THAW_AFTER_S = 1.0  # the other process's view of the database lags this far behind


@pytest.fixture(scope="module")
def other(services: Services, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Hub, _FreezingProxy]]:
    """A second hub process beside the session's hub, on the same database and Redis, reaching PostgreSQL through a
    proxy the test can freeze."""
    proxy = _FreezingProxy(services.database_url)
    target = urlsplit(services.database_url)
    port = urlsplit(proxy.url).port
    database_url = urlunsplit(target._replace(netloc=target.netloc.replace(f":{target.port}", f":{port}")))
    env = hub_env(services, tmp_path_factory.mktemp("other-hub"), OCPI_HUB_DATABASE_URL=database_url)
    running = start_hub(env, OUTPUT / "hub-other-receiver.log")
    try:
        yield running, proxy
    finally:
        proxy.thaw()
        running.stop()
        proxy.close()


def _known_to(other: Hub, caller: Party) -> None:
    """Once the other process authenticated caller (it catches up for an unknown token), which it then keeps knowing."""
    answer = caller.call(other.base, "GET", "sender/tariffs", to=("ZZ", "ZZZ"))
    assert answer.json()["status_code"] == 4001, answer.text


def _registered_while_frozen(
    hub: Hub, proxy: _FreezingProxy, start_party: Callable[..., Party], role: tuple[str, str, str]
) -> threading.Timer:
    """A party registered through the session's hub while the other process cannot reload its directory, which it
    can again THAW_AFTER_S later."""
    proxy.freeze()
    thaw = threading.Timer(THAW_AFTER_S, proxy.thaw)
    try:
        register_at_hub(hub, start_party, role)
    except BaseException:
        proxy.thaw()
        raise
    thaw.start()
    return thaw


@contextlib.contextmanager
def _cpo_and_an_emsp_registered_while_frozen(
    hub: Hub, other: tuple[Hub, _FreezingProxy], connect_party: Callable[..., Party], start_party: Callable[..., Party]
) -> Iterator[tuple[Party, tuple[str, str, str]]]:
    """A CPO the other process knows, and the role of an eMSP registered through the session's hub while the other
    process could not reload its directory: the block runs before it can, and the thaw is waited for after it."""
    other_hub, proxy = other
    cpo = connect_party(_roles("CPO"))
    _known_to(other_hub, cpo)
    emsp_role = _roles("EMSP")
    thaw = _registered_while_frozen(hub, proxy, start_party, emsp_role)
    try:
        yield cpo, emsp_role
    finally:
        thaw.join()


def test_a_direct_request_reaches_a_party_registered_through_another_hub_process_a_moment_ago(
    hub: Hub, other: tuple[Hub, _FreezingProxy], connect_party, start_party
) -> None:
    other_hub = other[0]
    with _cpo_and_an_emsp_registered_while_frozen(hub, other, connect_party, start_party) as (cpo, emsp_role):
        cc, pid = party_key(cpo)
        location = {"id": "L1", "country_code": cc, "party_id": pid, "publish": True,
                    "last_updated": "2026-12-05T00:00:00Z"}  # fmt: skip
        answer = cpo.call(other_hub.base, "PUT", f"receiver/locations/{cc}/{pid}/L1", to=emsp_role[1:], body=location)
        assert (answer.status_code, answer.json()["status_code"]) == (200, 1000), answer.text
    # a receiver that really is unknown is still told so, in the same words
    unknown = ("ZZ", _roles("EMSP")[2])
    answer = cpo.call(other_hub.base, "PUT", f"receiver/locations/{cc}/{pid}/L1", to=unknown, body=location)
    assert answer.json()["status_code"] == 4001, answer.text
    told = answer.json()["status_message"]
    assert told == f"unknown receiver ZZ-{unknown[1]}: no such party is connected to this hub"


def test_an_open_session_push_reaches_the_emsp_of_its_cdr_token_registered_through_another_hub_process(
    hub: Hub, other: tuple[Hub, _FreezingProxy], connect_party, start_party
) -> None:
    other_hub = other[0]
    with _cpo_and_an_emsp_registered_while_frozen(hub, other, connect_party, start_party) as (cpo, emsp_role):
        cc, pid = party_key(cpo)
        session_id = f"S-{uuid.uuid4().hex[:8]}"
        token = {"country_code": emsp_role[1], "party_id": emsp_role[2], "uid": "T1", "type": "RFID",
                 "contract_id": "C1"}  # fmt: skip
        session = {"id": session_id, "country_code": cc, "party_id": pid, "location_id": "L1", "cdr_token": token,
                   "status": "ACTIVE", "last_updated": "2026-12-05T00:00:00Z"}  # fmt: skip
        # no OCPI-to headers: the eMSP of its cdr_token (routing.open_routing)
        answer = cpo.call(other_hub.base, "PUT", f"receiver/sessions/{cc}/{pid}/{session_id}", body=session)
        assert (answer.status_code, answer.json()["status_code"]) == (200, 1000), answer.text
