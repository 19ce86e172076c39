"""Two hub deployments (two real `ocpi-hub serve` processes, each with a database of its own) that are parties of each
other: a request forwarded from one to the other once goes through, and one that would go round between them is
stopped where it comes back (hub.request_context.hubs_passed: the hubs' marks travel with the request, like Via)."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from storage.secrets import hub_instance
from tests.conftest import OUTPUT, SECRET_KEY, Db, Hub, Services, _admin_sql, _with_database, hub_env, start_hub
from tests.conftest import register_at_hub as register
from tests.conftest import unique_party_id as new_id
from tests.parties import Party
from tests.test_forwarding_loops import _PartyLeadingBackToTheHub


@pytest.fixture(scope="module")
def hub_b(services: Services, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    """A second hub deployment: a database and a Redis prefix of its own, and the same OCPI_HUB_SECRET_KEY as the
    first (one key copied from one deployment to another must not make them take each other's forwards for their
    own)."""
    database = f"hub_b_{secrets.token_hex(6)}"
    asyncio.run(_admin_sql(services.database_url, f'CREATE DATABASE "{database}"'))
    try:
        env = hub_env(services, tmp_path_factory.mktemp("hub-b-data"), OCPI_HUB_PARTY_ID="HBB",
                      OCPI_HUB_DATABASE_URL=_with_database(services.database_url, database),
                      OCPI_HUB_REDIS_PREFIX=f"{services.redis_prefix}b:")  # fmt: skip
        running = start_hub(env, OUTPUT / "hub-b.log")
        try:
            yield running
        finally:
            running.stop()
    finally:
        asyncio.run(_admin_sql(services.database_url, f'DROP DATABASE "{database}" WITH (FORCE)'))


@pytest.fixture
def leading_to() -> Iterator[Callable[..., Party]]:
    """Registers a party at a hub whose locations Receiver endpoint is another hub's, and which hands that hub a
    token the other hub issued: to the first hub a party, in fact the other hub (or a proxy to it)."""
    started: list[Party] = []

    def register_leading_to(at: Hub, other: Hub, role: tuple[str, str, str], token_at_other: str) -> Party:
        party = _PartyLeadingBackToTheHub(roles=[role], name="other hub", hub_base=other.base, token_b=token_at_other)
        started.append(party.start())
        answer = party.register_at(at.versions_url, at.invite(party.name, role)["token_a"])
        assert answer.json()["status_code"] == 1000, answer.text
        return party

    yield register_leading_to
    for party in started:
        party.stop()


def _push_location(hub: Hub, cpo: Party, to: tuple[str, str, str], correlation_id: str) -> httpx.Response:
    _, cc, pid = cpo.roles[0]
    location = {"id": "L1", "country_code": cc, "party_id": pid, "publish": True,
                "last_updated": "2026-12-05T00:00:00Z"}  # fmt: skip
    return cpo.call(hub.base, "PUT", f"receiver/locations/{cc}/{pid}/L1", to=(to[1], to[2]), body=location,
                    headers={"X-Correlation-ID": correlation_id})  # fmt: skip


def _rows(database_url: str, correlation_id: str) -> list[Any]:
    db = Db(database_url)
    try:
        return db.run(db.fetch("SELECT receiver_platform_id, http_status, ocpi_status_code, error FROM routing_log "
                               "WHERE correlation_id = $1 ORDER BY received_at", correlation_id))  # fmt: skip
    finally:
        db.close()


def test_the_mark_of_a_hub_depends_on_its_key_and_its_public_url() -> None:
    ours = hub_instance(SECRET_KEY, "https://hub.example.com")
    assert ours == hub_instance(SECRET_KEY, "https://hub.example.com/")  # the same hub, however written
    assert ours != hub_instance(SECRET_KEY, "https://staging.hub.example.com")
    assert len(ours) == 24 and ours != hub_instance(SECRET_KEY[::-1], "https://hub.example.com")


def test_a_request_forwarded_to_another_hub_with_the_same_key_goes_through_once(
    hub: Hub, hub_b: Hub, start_party: Callable[..., Party], leading_to: Callable[..., Party]
) -> None:
    cpo_role, emsp_role = ("CPO", "NL", new_id()), ("EMSP", "DE", new_id())
    cpo = register(hub, start_party, cpo_role)
    hub_a_at_b = register(hub_b, start_party, cpo_role)  # hub A, as hub B knows it: holds the CPO's role there
    emsp = register(hub_b, start_party, emsp_role)
    leading_to(hub, hub_b, emsp_role, hub_a_at_b.hub_token)  # hub B, as hub A knows it: holds the eMSP's role here
    answer = _push_location(hub, cpo, emsp_role, f"once-{uuid.uuid4()}")
    assert (answer.status_code, answer.json()["status_code"]) == (200, 1000), answer.text
    [received] = emsp.functional()
    assert received.method == "PUT" and received.path.endswith(f"/NL/{cpo_role[2]}/L1")
