"""A request addressed to one party of a platform with both CPO and eMSP-type parties: its endpoints name no role, so a
module's interface there serves the side the module names (mod_locations: the Receiver "Typically implemented by market
roles like: eMSP and NSP"; mod_tokens: "... CPO"), and a request to its party on the other side is refused as one to a
receiver without that module's interface is (4000), naming the party's role and the parties the interface serves,
rather than forwarded for a party that does not implement it. A platform of one side keeps every request it took."""

from __future__ import annotations

from dataclasses import replace

import pytest

from hub.errors import HubError
from routing.decide import decide
from routing.request import Incoming
from tests.conftest import Db, Hub, unique_party_id
from tests.parties import _default_modules
from tests.test_broadcast_to_mixed_platforms import CPO, EMSP, EVERYONE, HUB, _directory, _platform, _push
from tests.test_pushes_in_their_owners_name import _row
from tests.test_routing import _roles, party_key

LOCATIONS_TO_ITS_CPO = ("receiver NL-MCP is a CPO, which does not implement the locations RECEIVER interface; on its "
                        "platform that interface serves its eMSP-type parties NL-MEM")  # fmt: skip


def _direct(module: str, sender: str, to: str) -> Incoming:
    return replace(_push(module, sender), to=("NL", to))


def _get_location(to: str) -> Incoming:
    return Incoming(method="GET", path="/ocpi/2.2.1/sender/locations/L1", query="", headers={}, body=b"",
                    interface="sender", module="locations", suffix="/L1", to=("NL", to), from_=("NL", "EMA"),
                    segments=["L1"])  # fmt: skip


def _refusal(incoming: Incoming, caller, directory=EVERYONE) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(HubError) as refused:
        decide(incoming, caller, directory, HUB)
    assert refused.value.status_code == 4000
    return refused.value.message


def test_a_location_or_tariff_to_a_mixed_platforms_cpo_is_refused_and_to_its_emsp_forwarded() -> None:
    # the CPO implements the other interface, which the platform lists too: told where it is, as one without it is
    assert _refusal(_direct("locations", "CPA", "MCP"), CPO) == (
        f"{LOCATIONS_TO_ITS_CPO}; NL-MCP implements the SENDER one, which the hub's /ocpi/2.2.1/sender/locations "
        "reaches"
    )
    assert "receiver NL-MCP is a CPO, which does not implement the tariffs RECEIVER" in _refusal(
        _direct("tariffs", "CPA", "MCP"), CPO
    )
    [delivery] = decide(_direct("locations", "CPA", "MEM"), CPO, EVERYONE, HUB).deliveries
    assert (delivery.to.party_id, delivery.url) == ("MEM", "https://p.example/locations/receiver")


def test_a_token_to_a_mixed_platforms_emsp_is_refused_and_to_its_cpo_forwarded() -> None:
    assert _refusal(_direct("tokens", "EMA", "MEM"), EMSP).startswith(
        "receiver NL-MEM is an eMSP, which does not implement the tokens RECEIVER interface; on its platform that "
        "interface serves its CPO parties NL-MCP"
    )
    [delivery] = decide(_direct("tokens", "EMA", "MCP"), EMSP, EVERYONE, HUB).deliveries
    assert delivery.to.party_id == "MCP"


def test_a_location_asked_of_a_mixed_platforms_emsp_is_refused_and_of_its_cpo_forwarded() -> None:
    # the Sender of locations is the CPO's ("Typically implemented by market roles like: CPO")
    assert _refusal(_get_location("MEM"), EMSP).startswith(
        "receiver NL-MEM is an eMSP, which does not implement the locations SENDER interface"
    )
    assert [d.to.party_id for d in decide(_get_location("MCP"), EMSP, EVERYONE, HUB).deliveries] == ["MCP"]


def test_an_open_request_placed_on_a_mixed_platforms_party_of_the_other_side_is_refused_alike() -> None:
    with pytest.raises(HubError) as refused:
        decide(replace(_push("locations", "CPA"), to=None), CPO, EVERYONE, HUB, open_hint=("NL", "MCP"))
    assert refused.value.message.startswith(LOCATIONS_TO_ITS_CPO)


def test_a_platform_of_one_side_and_a_party_id_held_on_both_sides_take_every_interface_they_list() -> None:
    # a single-role CPO implementing a locations Receiver keeps what it took (test_routing_modes)
    assert [d.to.party_id for d in decide(_direct("locations", "EMA", "CPA"), EMSP, EVERYONE, HUB).deliveries] == [
        "CPA"
    ]
    assert [d.to.party_id for d in decide(_direct("tokens", "CPA", "EMA"), CPO, EVERYONE, HUB).deliveries] == ["EMA"]
    both = _platform(6, ("CPO", "BTH"), ("EMSP", "BTH"))
    directory = _directory(both, CPO, EMSP)
    for module, sender, caller, role in (("locations", "CPA", CPO, "EMSP"), ("tokens", "EMA", EMSP, "CPO")):
        [delivery] = decide(_direct(module, sender, "BTH"), caller, directory, HUB).deliveries
        assert delivery.to.role == role


def test_a_location_pushed_to_the_cpo_of_a_platform_with_an_emsp_is_refused_in_its_row_and_never_reaches_it(
    hub: Hub, connect_party, db: Db
) -> None:
    cpo, emsp = connect_party(_roles("CPO")), connect_party(_roles("EMSP"))
    its_cpo, its_emsp = ("NL", unique_party_id()), ("NL", unique_party_id())
    roles = (("CPO", *its_cpo), ("EMSP", *its_emsp))
    mixed = connect_party(*roles, name="Mixed", modules=_default_modules(list(roles)))
    cc, pid = party_key(cpo)
    location = {"country_code": cc, "party_id": pid, "id": "MIX1", "publish": True,
                "last_updated": "2026-12-06T08:00:00Z"}  # fmt: skip
    path = f"receiver/locations/{cc}/{pid}/MIX1"
    # before: forwarded to the platform's locations Receiver, which is its eMSP's, as if its CPO took locations
    refused = cpo.call(hub.base, "PUT", path, to=its_cpo, body=location, headers={"X-Request-ID": f"mix-{pid}"})
    told = (f"receiver NL-{its_cpo[1]} is a CPO, which does not implement the locations RECEIVER interface; on its "
            f"platform that interface serves its eMSP-type parties NL-{its_emsp[1]}")  # fmt: skip
    assert refused.json()["status_code"] == 4000 and refused.json()["status_message"].startswith(told), refused.text
    assert _row(db, f"mix-{pid}") == {"routing": "rejected", "ocpi_status_code": 4000, "from_party_id": pid,
                                      "to_party_id": its_cpo[1]}  # fmt: skip
    error = db.run(db.fetchval("SELECT error FROM routing_log WHERE request_id = $1", f"mix-{pid}"))
    assert error.startswith(told), error
    assert mixed.functional() == []
    # its eMSP takes it, and its CPO a token
    assert cpo.call(hub.base, "PUT", path, to=its_emsp, body=location).json()["status_code"] == 1000
    ecc, epid = party_key(emsp)
    token = {"country_code": ecc, "party_id": epid, "uid": "MIXTOK", "last_updated": "2026-12-06T08:00:00Z"}
    sent = emsp.call(hub.base, "PUT", f"receiver/tokens/{ecc}/{epid}/MIXTOK", to=its_cpo, body=token).json()
    assert sent["status_code"] == 1000, sent
    got = [(r.path, r.headers["OCPI-to-party-id"]) for r in mixed.functional()]
    assert got == [(f"/ocpi/2.2.1/locations/receiver/{cc}/{pid}/MIX1", its_emsp[1]),
                   (f"/ocpi/2.2.1/tokens/receiver/{ecc}/{epid}/MIXTOK", its_cpo[1])]  # fmt: skip
