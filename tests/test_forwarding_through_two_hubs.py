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

from hub.request_context import HUB_INSTANCE_HEADER, MAX_HUBS_PASSED
from storage.secrets import hub_instance
from tests.conftest import OUTPUT, SECRET_KEY, Db, Hub, Services, _admin_sql, _with_database, hub_env, start_hub
from tests.conftest import register_at_hub as register
from tests.conftest import unique_party_id as new_id
from tests.parties import Party
from tests.test_admin_and_cli import _platform_id as platform_id_of
from tests.test_forwarding_loops import _PartyLeadingBackToTheHub
from tests.test_hub_client_info import _wait_for
from tests.test_routing import party_key


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


def _push_location(
    hub: Hub, cpo: Party, to: tuple[str, str, str], correlation_id: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    _, cc, pid = cpo.roles[0]
    location = {"id": "L1", "country_code": cc, "party_id": pid, "publish": True,
                "last_updated": "2026-12-05T00:00:00Z"}  # fmt: skip
    return cpo.call(hub.base, "PUT", f"receiver/locations/{cc}/{pid}/L1", to=(to[1], to[2]), body=location,
                    headers={"X-Correlation-ID": correlation_id} | (headers or {}))  # fmt: skip


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
    marks = {name.lower(): value for name, value in received.headers.items()}["x-ocpi-hub-instance"]
    assert marks == f"{hub_instance(SECRET_KEY, hub.base)}, {hub_instance(SECRET_KEY, hub_b.base)}"


def test_a_request_going_round_between_two_hubs_is_refused_where_it_comes_back_and_logged_on_both(
    hub: Hub, hub_b: Hub, services: Services, start_party: Callable[..., Party], leading_to: Callable[..., Party]
) -> None:
    cpo_role, emsp_role = ("CPO", "NL", new_id()), ("EMSP", "DE", new_id())
    cpo = register(hub, start_party, cpo_role)
    hub_a_at_b = register(hub_b, start_party, cpo_role)
    # Each hub takes the other for the eMSP: hub A forwards to hub B, which forwards back to hub A, and so on. A mark
    # on each hop alone would not stop it: each hub saw only the other's.
    at_a = leading_to(hub, hub_b, emsp_role, hub_a_at_b.hub_token)
    at_b = leading_to(hub_b, hub, emsp_role, cpo.hub_token)
    correlation_id = f"round-{uuid.uuid4()}"
    answer = _push_location(hub, cpo, emsp_role, correlation_id)
    assert (answer.status_code, answer.json()["status_code"]) == (200, 4000), answer.text
    assert "the request came back to the hub it left" in answer.json()["status_message"]
    ids = {hub.base: platform_id_of(hub, party_key(at_a)), hub_b.base: platform_id_of(hub_b, party_key(at_b))}
    on_a, on_b = _rows(services.database_url, correlation_id), _rows(hub_b.env["OCPI_HUB_DATABASE_URL"], correlation_id)
    # Hub A: the CPO's request, forwarded to hub B, and its return, refused; hub B: the one forward back to hub A.
    assert [(r["receiver_platform_id"], r["ocpi_status_code"]) for r in on_a] == [(ids[hub.base], 4000), (None, 4000)]
    assert "the request came back to the hub it left" in on_a[1]["error"]
    assert [(r["receiver_platform_id"], r["ocpi_status_code"]) for r in on_b] == [(ids[hub_b.base], 4000)]


def test_a_request_that_passed_too_many_hubs_is_refused(hub: Hub, start_party: Callable[..., Party]) -> None:
    cpo_role, emsp_role = ("CPO", "NL", new_id()), ("EMSP", "DE", new_id())
    cpo, emsp = register(hub, start_party, cpo_role), register(hub, start_party, emsp_role)
    marks = [secrets.token_hex(12) for _ in range(MAX_HUBS_PASSED)]
    answer = _push_location(hub, cpo, emsp_role, f"far-{uuid.uuid4()}", {HUB_INSTANCE_HEADER: ", ".join(marks)})
    assert (answer.status_code, answer.json()["status_code"]) == (200, 4000), answer.text
    assert f"passed {MAX_HUBS_PASSED} hubs already" in answer.json()["status_message"]
    answer = _push_location(hub, cpo, emsp_role, f"near-{uuid.uuid4()}", {HUB_INSTANCE_HEADER: ", ".join(marks[1:])})
    assert (answer.status_code, answer.json()["status_code"]) == (200, 1000), answer.text
    [received] = emsp.functional()  # the hub's mark added to the list it came with
    sent = {name.lower(): value for name, value in received.headers.items()}["x-ocpi-hub-instance"]
    assert sent == ", ".join((*marks[1:], hub_instance(SECRET_KEY, hub.base)))


def test_a_broadcast_copy_carries_the_marks_the_push_came_with_and_the_hubs_own(
    hub: Hub, start_party: Callable[..., Party]
) -> None:
    # A copy to a party that is another hub, which broadcasts it on, must not come back as a new push.
    cpo = register(hub, start_party, ("CPO", "NL", new_id()))
    emsp = register(hub, start_party, ("EMSP", "DE", new_id()))
    came_with = secrets.token_hex(12)
    answer = _push_location(hub, cpo, ("HUB", "NL", "HUB"), f"copies-{uuid.uuid4()}", {HUB_INSTANCE_HEADER: came_with})
    assert answer.json()["status_code"] == 1000, answer.text
    [copy] = _wait_for(emsp.functional)
    sent = {name.lower(): value for name, value in copy.headers.items()}["x-ocpi-hub-instance"]
    assert sent == f"{came_with}, {hub_instance(SECRET_KEY, hub.base)}"
