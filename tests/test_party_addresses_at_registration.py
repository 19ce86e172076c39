"""A party's host names are judged when it registers them, by the addresses they resolve to then (the connect-time
check stays, against DNS rebinding), and what a registering party is told does not say whether a name resolves, to a
refused address, or whether anything answers there (routing.party_addresses.NO_CONNECTION), unless the operator
allowed that network; the hub's log says which."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

import pytest

from hub.errors import UnableToUseClientApi
from hub.party_api import discover
from hub.party_client import PartyClient
from hub.settings import Settings
from routing.party_addresses import ALLOWANCE, NO_CONNECTION, NOT_PUBLIC, PartyAddresses
from tests.conftest import LOOPBACK, Hub, unique_party_id
from tests.parties import Party, envelope, free_port


@dataclass(frozen=True, slots=True)
class _PublicAtOnePort(PartyAddresses):
    """A policy taking loopback at one port for a public address, and refusing any other address as one inside the
    hub's network: the test machine has no public address where nothing answers."""

    port: int = 0

    def why_refused(self, host: str, port: int) -> str | None:
        if port == self.port or not host[:1].isdigit():  # a name: judged once resolved, as PartyAddresses does
            return None
        return f"it is not a public address: {NOT_PUBLIC}"


def _told(
    policy: PartyAddresses | None, monkeypatch: pytest.MonkeyPatch, *versions_urls: str, token: str = "t"
) -> list[str]:
    """What discovery at each versions URL tells the party, each URL written as URL; without a policy, the one of a
    hub whose operator allows loopback."""

    async def run() -> list[str]:
        told = []
        async with PartyClient(Settings.from_env({} if policy else {ALLOWANCE: LOOPBACK})) as client:
            for url in versions_urls:
                with pytest.raises(UnableToUseClientApi) as refused:
                    await discover(client, url, token, party="p", hub_url="https://hub.example.com")
                told.append(refused.value.message.replace(url, "URL"))
        return told

    with monkeypatch.context() as patched:
        if policy is not None:
            patched.setattr("hub.party_client.for_hub", lambda allowed, listen: policy)
        return asyncio.run(run())


def test_a_party_is_told_the_same_whether_its_host_does_not_resolve_is_refused_or_does_not_answer(
    monkeypatch: pytest.MonkeyPatch, start_party
) -> None:
    listening = start_party(("CPO", "NL", unique_party_id()))  # answers, at an address the policy refuses
    silent = free_port()  # nothing listens there
    policy = _PublicAtOnePort(port=silent)
    urls = [f"http://nothing.invalid:{silent}/ocpi/versions", f"http://localhost:{listening.port}/ocpi/versions",
            f"http://localhost:{silent}/ocpi/versions"]  # fmt: skip
    told = _told(policy, monkeypatch, *urls)
    assert told == [f"GET URL failed: {NO_CONNECTION}"] * 3
    assert listening.received == []
    # In a network the operator allows, the hub says what happened.
    [allowed] = _told(None, monkeypatch, f"http://localhost:{silent}/ocpi/versions")
    assert NO_CONNECTION not in allowed and allowed.startswith("GET URL failed: "), allowed


def _with_tariffs_at(start_party, url: str) -> Party:  # type: ignore[no-untyped-def]
    party = start_party(("CPO", "NL", unique_party_id()))
    extra = {"identifier": "tariffs", "role": "SENDER", "url": url}
    details = envelope({"version": "2.2.1", "endpoints": [*party.endpoints(), extra]})
    party.canned[("GET", "/ocpi/2.2.1")] = (200, json.dumps(details).encode(), {"Content-Type": "application/json"})
    return party


def test_an_endpoint_host_name_is_judged_at_registration_and_the_party_told_the_same_either_way(
    monkeypatch: pytest.MonkeyPatch, start_party
) -> None:
    urls = ("http://nothing.invalid/ocpi/2.2.1/tariffs", f"http://localhost:{free_port()}/ocpi/2.2.1/tariffs")
    parties = [_with_tariffs_at(start_party, url) for url in urls]
    told = []
    for party in parties:
        [said] = _told(_PublicAtOnePort(port=party.port), monkeypatch, party.versions_url, token=party.token_b)
        told.append(said.split(" endpoint ", 1)[-1].split(" ", 1)[-1])  # the endpoint's URL left out
        assert [r.path for r in party.received] == ["/ocpi/versions", "/ocpi/2.2.1"]  # the endpoint not called
    assert told == [f"is not usable: {NO_CONNECTION}"] * 2


def test_a_registration_with_an_endpoint_whose_name_does_not_resolve_is_refused_and_the_log_says_why(
    hub: Hub, start_party
) -> None:
    party = _with_tariffs_at(start_party, "http://nothing.invalid/ocpi/2.2.1/tariffs")
    answer = party.register_at(hub.versions_url, hub.invite(party.name, *party.roles)["token_a"])
    body = answer.json()
    assert body["status_code"] == 3001, answer.text
    endpoint = "http://nothing.invalid/ocpi/2.2.1/tariffs"
    assert body["status_message"] == f"the party's tariffs SENDER endpoint {endpoint} is not usable: {NO_CONNECTION}"
    told = [line for line in hub.log().splitlines() if '"party_not_reached"' in line and "nothing.invalid" in line]
    assert told and "does not resolve" in told[-1], told
