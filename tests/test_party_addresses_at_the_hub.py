"""A party cannot have the hub call into the hub's own network: registration refuses URLs at addresses that are not
public unless OCPI_HUB_PARTY_NETWORKS_ALLOWED allows them, and a forward to one is refused with 4003 (a security
review: a party read a cloud metadata service and the hub's /metrics through the hub)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from routing.forward_failures import NOT_CALLABLE
from routing.party_addresses import ALLOWANCE
from tests.conftest import OUTPUT, Hub, Services, hub_env, register_at_hub, start_hub, unique_party_id
from tests.parties import envelope, free_port, tcp_forwarder
from tests.test_admin_and_cli import _platform_id
from tests.test_forwarding_loops import _announce
from tests.test_routing import party_key


@pytest.fixture
def hub_without_allowance(services: Services, empty_database: str, tmp_path: Path) -> Iterator[Hub]:
    """A hub that calls parties at public addresses only, on storage of its own: the session's hub's parties, which
    it could not probe, must not go OFFLINE for it."""
    env = hub_env(services, tmp_path / "hub", OCPI_HUB_DATABASE_URL=empty_database,
                  OCPI_HUB_REDIS_PREFIX=f"{services.redis_prefix}public-only:")  # fmt: skip
    del env[ALLOWANCE]
    running = start_hub(env, OUTPUT / "hub-without-allowance.log")
    try:
        yield running
    finally:
        running.stop()


def _refusal(answer: httpx.Response) -> str:
    body = answer.json()
    assert body["status_code"] == 3001, answer.text
    message: str = body["status_message"]
    assert "not a public address" in message or "no address the hub calls parties at" in message, message
    assert ALLOWANCE in message
    return message


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_a_party_on_loopback_is_refused_without_the_allowance_and_nothing_reaches_it(
    hub_without_allowance: Hub, start_party, host: str
) -> None:
    hub = hub_without_allowance
    roles = ("CPO", "NL", unique_party_id())
    party = start_party(roles, host=host)
    answer = party.register_at(hub.versions_url, hub.invite(party.name, roles)["token_a"])
    _refusal(answer)
    assert party.received == []


def test_a_versions_url_at_the_cloud_metadata_address_is_refused_without_a_connect_attempt(
    hub_without_allowance: Hub, start_party
) -> None:
    hub = hub_without_allowance
    roles = ("CPO", "NL", unique_party_id())
    party = start_party(roles)
    credentials = party.credentials(party.token_b) | {"url": "http://169.254.169.254/latest/meta-data/"}
    token_a = hub.invite(party.name, roles)["token_a"]
    started = time.monotonic()
    answer = httpx.post(f"{hub.base}/ocpi/2.2.1/credentials", headers=party.token_header(token_a), json=credentials)
    message = _refusal(answer)
    assert "is at 169.254.169.254" in message and time.monotonic() - started < 4  # no connect attempt: 5 s


def test_the_refusal_says_the_same_whether_or_not_anything_listens_at_the_address(
    hub_without_allowance: Hub, start_party
) -> None:
    # Messages that differed by target ("All connection attempts failed", "answered HTTP 404") made registration a
    # port scanner for any holder of a token A.
    hub = hub_without_allowance
    listening = start_party(("CPO", "NL", unique_party_id()))
    said = []
    for port in (listening.port, free_port()):  # a party listens on the first, nothing on the second
        roles = ("CPO", "NL", unique_party_id())
        credentials = listening.credentials(listening.token_b) | {"url": f"http://127.0.0.1:{port}/ocpi/versions"}
        token_a = hub.invite("Scanner", roles)["token_a"]
        credentials["roles"][0] |= {"party_id": roles[2]}
        answer = httpx.post(f"{hub.base}/ocpi/2.2.1/credentials", headers=listening.token_header(token_a),
                            json=credentials)  # fmt: skip
        said.append(_refusal(answer).replace(f":{port}/", ":PORT/"))
    assert said[0] == said[1] and listening.received == []


def test_with_the_allowance_a_party_on_loopback_registers(hub: Hub, start_party) -> None:
    roles = ("CPO", "NL", unique_party_id())
    party = start_party(roles, host="localhost")
    answer = party.register_at(hub.versions_url, hub.invite(party.name, roles)["token_a"])
    assert answer.json()["status_code"] == 1000, answer.text


def test_an_endpoint_at_a_literal_address_outside_the_allowance_is_refused_at_registration(
    hub: Hub, start_party
) -> None:
    roles = ("CPO", "NL", unique_party_id())
    party = start_party(roles)
    extra = {"identifier": "tariffs", "role": "SENDER", "url": "http://10.0.0.1/ocpi/2.2.1/tariffs"}
    details = envelope({"version": "2.2.1", "endpoints": [*party.endpoints(), extra]})
    party.canned[("GET", "/ocpi/2.2.1")] = (200, json.dumps(details).encode(), {"Content-Type": "application/json"})
    answer = party.register_at(hub.versions_url, hub.invite(party.name, roles)["token_a"])
    assert "tariffs SENDER endpoint http://10.0.0.1/ocpi/2.2.1/tariffs is at 10.0.0.1" in _refusal(answer)


def _registered_with_tariffs_at(hub: Hub, start_party, url: str):  # type: ignore[no-untyped-def]
    """A CPO registered at the hub with its tariffs Sender endpoint at url."""
    roles = ("CPO", "NL", unique_party_id())
    cpo = start_party(roles)
    extra = {"identifier": "tariffs", "role": "SENDER", "url": url}
    details = envelope({"version": "2.2.1", "endpoints": [*cpo.endpoints(), extra]})
    cpo.canned[("GET", "/ocpi/2.2.1")] = (200, json.dumps(details).encode(), {"Content-Type": "application/json"})
    registered = cpo.register_at(hub.versions_url, hub.invite(cpo.name, roles)["token_a"])
    assert registered.json()["status_code"] == 1000, registered.text
    return cpo


def test_a_forward_to_an_endpoint_at_the_hubs_own_listening_address_is_refused_with_4003_and_logged(
    hub: Hub, start_party, connect_party, services: Services, db
) -> None:
    # The review's repro: a CPO lists the hub's own /metrics (under another name than the hub's public URL) as its
    # tariffs Sender and addresses a GET to itself. The allowance covers 127.0.0.0/8; the hub's port does not pass.
    # Registration refuses that name now (tests/test_party_addresses_at_registration.py); a name that resolved
    # elsewhere then and leads to the hub later (DNS rebinding) is refused as the hub connects: the URL is changed
    # behind registration's back here.
    cpo = _registered_with_tariffs_at(hub, start_party, f"http://localhost:{free_port()}/metrics")
    at_the_hub = f"http://localhost:{hub.base.rsplit(':', 1)[1]}/metrics"
    db.run(db.execute("UPDATE platform_endpoint SET url = $1 WHERE identifier = 'tariffs' AND platform_id = $2",
                      at_the_hub, _platform_id(hub, party_key(cpo))))  # fmt: skip
    asyncio.run(_announce(services))
    time.sleep(1.5)  # every hub process takes a change within a second
    emsp = connect_party(("EMSP", "NL", unique_party_id()))

    answer = emsp.call(hub.base, "GET", "sender/tariffs", to=party_key(cpo))
    body = answer.json()
    assert (body["status_code"], body["status_message"]) == (4003, NOT_CALLABLE), answer.text  # as a name unresolved
    assert "ocpi_hub_requests_total" not in answer.text
    [row] = db.run(db.fetch("SELECT ocpi_status_code, error FROM routing_log WHERE request_id = $1",
                            answer.headers["x-request-id"]))  # fmt: skip
    assert row["ocpi_status_code"] == 4003 and "did not call" in row["error"] and ALLOWANCE in row["error"]


def test_a_forward_that_reaches_the_hubs_own_pages_another_way_is_refused_and_relays_nothing_of_them(
    hub: Hub, start_party, connect_party
) -> None:
    # An endpoint that leads to the hub by a way the address policy cannot know (a load balancer, a NAT, an
    # interface's address): the hub's mark on the forward refuses it at /metrics as at the OCPI modules.
    with tcp_forwarder(int(hub.base.rsplit(":", 1)[1])) as forwarder_port:
        cpo = _registered_with_tariffs_at(hub, start_party, f"http://127.0.0.1:{forwarder_port}/metrics")
        emsp = connect_party(("EMSP", "NL", unique_party_id()))
        answer = emsp.call(hub.base, "GET", "sender/tariffs", to=party_key(cpo))
    assert answer.json()["status_code"] == 4000, answer.text
    assert "the request came back to the hub it left" in answer.json()["status_message"]
    assert "ocpi_hub_requests_total" not in answer.text


def test_an_instance_without_the_allowance_leaves_the_parties_it_does_not_call_connected_on_every_instance(
    services: Services, empty_database: str, tmp_path: Path, start_party
) -> None:
    # An upgrade walkthrough: one new instance started without OCPI_HUB_PARTY_NETWORKS_ALLOWED beside the old ones
    # marked the parties at 127.0.0.1 OFFLINE for the whole hub within 2 s (its refused forward made them suspects,
    # its refused probe took them for gone), and its own log never said why.
    shared = {"OCPI_HUB_DATABASE_URL": empty_database, "OCPI_HUB_REDIS_PREFIX": f"{services.redis_prefix}upgrade:",
              "OCPI_HUB_STILL_ALIVE_S": "1", "OCPI_HUB_OFFLINE_PROBE_S": "0.5"}  # fmt: skip
    allowing = start_hub(hub_env(services, tmp_path / "allowing", **shared), OUTPUT / "hub-allowing.log")
    strict_env = hub_env(services, tmp_path / "strict", **shared)
    del strict_env[ALLOWANCE]
    strict = None
    try:
        cpo = register_at_hub(allowing, start_party, ("CPO", "NL", unique_party_id()))
        emsp = register_at_hub(allowing, start_party, ("EMSP", "NL", unique_party_id()))
        strict = start_hub(strict_env, OUTPUT / "hub-strict.log")
        refused = emsp.call(strict.base, "GET", "sender/locations", to=party_key(cpo))
        assert refused.json()["status_code"] == 4003 and ALLOWANCE in refused.json()["status_message"], refused.text
        time.sleep(4)  # the strict instance's probes of silent parties, every second here, and of a suspect
        with allowing.admin() as admin:
            statuses = {i["party_id"]: i["status"] for i in admin.get("/admin/api/parties").json()["items"]}
        assert statuses == {cpo.roles[0][2]: "CONNECTED", emsp.roles[0][2]: "CONNECTED"}, statuses
        assert emsp.call(allowing.base, "GET", "sender/locations", to=party_key(cpo)).json()["status_code"] == 1000
        told = (OUTPUT / "hub-strict.log").read_text()
        # at start, for each URL of a registered party it will not call, and again as it is refused
        assert f'"url":"http://127.0.0.1:{cpo.port}/ocpi/versions","why":"it is not a public' in told
        assert told.count("party_address_not_allowed") >= 2
    finally:
        if strict is not None:
            strict.stop()
        allowing.stop()


@pytest.mark.parametrize("allowed", ["0.0.0.0/0", "::/0", "169.254.0.0/16"])
def test_an_allowance_that_reaches_a_metadata_service_is_warned_of_at_start(
    services: Services, tmp_path: Path, allowed: str
) -> None:
    log_path = OUTPUT / "hub-too-broad.log"
    running = start_hub(hub_env(services, tmp_path / "hub", **{ALLOWANCE: f"127.0.0.0/8,{allowed}"}), log_path)
    running.stop()
    assert "party_networks_allowed_too_broad" in log_path.read_text()
