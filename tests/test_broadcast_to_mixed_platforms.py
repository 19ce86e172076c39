"""Broadcast push to and from a platform with both CPO and eMSP-type parties: its endpoints say SENDER or RECEIVER per
module, not which of its roles implements them, so a module's Receiver is taken for the role the module names
(mod_locations, mod_tariffs: "Typically implemented by market roles like: eMSP and NSP"; mod_tokens: "... CPO"), and a
copy goes only to a role opposite to the sender's (transport_and_format.asciidoc, Broadcast Push). routing.decide is a
pure function of the request and the directory: these run without a network."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from hub.errors import ReceiverNotConnected
from routing.decide import decide
from routing.request import Incoming
from storage.directory import Directory, PartyRole, Platform

HUB = ("NL", "HUB")
EVERY_RECEIVER = {(m, i): f"https://p.example/{m}/{i.lower()}" for m in ("locations", "tariffs", "tokens")
                  for i in ("SENDER", "RECEIVER")}  # fmt: skip


def _platform(platform_id: int, *roles: tuple[str, str]) -> Platform:
    return Platform(id=platform_id, name=f"p{platform_id}", state="REGISTERED", versions_url=None, version_url=None,
                    token_b="b", token_encoding="base64",
                    roles=tuple(PartyRole(role, "NL", party_id, "CONNECTED", None) for role, party_id in roles),
                    endpoints=EVERY_RECEIVER)  # fmt: skip


def _directory(*platforms: Platform) -> Directory:
    return Directory(platforms={p.id: p for p in platforms},
                     parties={role.key: p for p in platforms for role in p.roles})  # fmt: skip


def _push(module: str, sender: str, object_id: str = "X1") -> Incoming:
    body = {"id": object_id, "uid": object_id, "country_code": "NL", "party_id": sender}
    return Incoming(method="PUT", path=f"/ocpi/2.2.1/receiver/{module}/NL/{sender}/{object_id}", query="",
                    headers={}, body=json.dumps(body).encode(), interface="receiver", module=module,
                    suffix=f"/NL/{sender}/{object_id}", to=HUB, from_=("NL", sender),
                    segments=["NL", sender, object_id])  # fmt: skip


def _copies(incoming: Incoming, caller: Platform, directory: Directory) -> list[tuple[str, str]]:
    route = decide(incoming, caller, directory, HUB)
    return sorted((d.to.role, d.to.party_id) for d in route.deliveries)


MIXED = _platform(1, ("CPO", "MCP"), ("EMSP", "MEM"))
CPO = _platform(2, ("CPO", "CPA"))
EMSP = _platform(3, ("EMSP", "EMA"))
OTHER = _platform(4, ("OTHER", "OTA"))
EVERYONE = _directory(MIXED, CPO, EMSP, OTHER)


def test_a_cpos_locations_and_tariffs_reach_the_mixed_platforms_emsp_and_not_its_cpo() -> None:
    for module in ("locations", "tariffs"):
        assert _copies(_push(module, "CPA"), CPO, EVERYONE) == [("EMSP", "EMA"), ("EMSP", "MEM"), ("OTHER", "OTA")]


def test_an_emsps_tokens_reach_the_mixed_platforms_cpo_and_not_its_emsp() -> None:
    assert _copies(_push("tokens", "EMA"), EMSP, EVERYONE) == [("CPO", "CPA"), ("CPO", "MCP")]


def test_an_emsps_or_others_locations_and_tariffs_do_not_reach_the_cpo_of_a_mixed_platform_through_its_emsps_receiver(
) -> None:  # fmt: skip
    # to the CPOs (the sender's opposite role); the mixed platform's Receiver of these is its eMSP's, which is no CPO
    for sender, platform in (("EMA", EMSP), ("OTA", OTHER)):
        for module in ("locations", "tariffs"):
            assert _copies(_push(module, sender), platform, EVERYONE) == [("CPO", "CPA")], (sender, module)


def test_a_cpos_tokens_do_not_reach_the_emsp_of_a_mixed_platform_through_its_cpos_receiver() -> None:
    # to the eMSP-type roles; the mixed platform's tokens Receiver is its CPO's
    assert _copies(_push("tokens", "CPA"), CPO, EVERYONE) == [("EMSP", "EMA"), ("OTHER", "OTA")]


def test_a_mixed_platforms_pushes_go_by_the_sending_partys_role_and_never_back_to_itself() -> None:
    assert _copies(_push("locations", "MCP"), MIXED, EVERYONE) == [("EMSP", "EMA"), ("OTHER", "OTA")]
    assert _copies(_push("tokens", "MEM"), MIXED, EVERYONE) == [("CPO", "CPA")]


def test_two_mixed_platforms_take_one_copy_each_on_the_role_the_module_names() -> None:
    other_mixed = _platform(5, ("CPO", "XCP"), ("EMSP", "XEM"), ("NSP", "XNS"))
    directory = _directory(MIXED, other_mixed)
    assert _copies(_push("locations", "MCP"), MIXED, directory) == [("EMSP", "XEM"), ("NSP", "XNS")]
    assert _copies(_push("tokens", "MEM"), MIXED, directory) == [("CPO", "XCP")]
    # an eMSP's tariffs go to CPOs, and a mixed platform's tariffs Receiver is not its CPO's
    assert _copies(_push("tariffs", "MEM"), MIXED, directory) == []


def test_a_party_id_both_cpo_and_emsp_takes_one_copy_on_the_side_the_module_names() -> None:
    both = _platform(6, ("CPO", "BTH"), ("EMSP", "BTH"))
    directory = _directory(both, CPO, EMSP)
    assert _copies(_push("locations", "CPA"), CPO, directory) == [("EMSP", "BTH"), ("EMSP", "EMA")]
    assert _copies(_push("tokens", "EMA"), EMSP, directory) == [("CPO", "BTH"), ("CPO", "CPA")]
    assert _copies(_push("tokens", "CPA"), CPO, directory) == [("EMSP", "EMA")]
    # a single-role CPO implementing a locations Receiver keeps its copies of an eMSP-type party's (test_routing_modes)
    assert _copies(_push("locations", "EMA"), EMSP, directory) == [("CPO", "CPA")]


@pytest.mark.parametrize(("cpo_status", "emsp_status"), [("PLANNED", "CONNECTED"), ("CONNECTED", "PLANNED")])
@pytest.mark.parametrize(("module", "sender"), [("locations", "CPA"), ("tariffs", "CPA"), ("tokens", "EMA")])
def test_a_party_id_both_cpo_and_emsp_is_sent_to_directly_when_and_only_when_a_broadcast_copy_goes_to_it(
    cpo_status: str, emsp_status: str, module: str, sender: str
) -> None:
    # one of its roles left out of its credentials: the one the module's Receiver is for decides, either way it is sent
    roles = (PartyRole("CPO", "NL", "BTH", cpo_status, None), PartyRole("EMSP", "NL", "BTH", emsp_status, None))
    both = replace(_platform(6, ("CPO", "BTH"), ("EMSP", "BTH")), roles=roles)
    directory = _directory(both, CPO, EMSP)
    caller = CPO if sender == "CPA" else EMSP
    copied = ("NL", "BTH") in {d.to.key for d in decide(_push(module, sender), caller, directory, HUB).deliveries}
    direct = replace(_push(module, sender), to=("NL", "BTH"))
    try:
        [delivery] = decide(direct, caller, directory, HUB).deliveries
    except ReceiverNotConnected as refused:
        assert not copied and refused.message == "receiver NL-BTH is not connected (status PLANNED)"
    else:
        assert copied and delivery.to.role == ("CPO" if module == "tokens" else "EMSP")
    assert copied == ((cpo_status if module == "tokens" else emsp_status) == "CONNECTED")
