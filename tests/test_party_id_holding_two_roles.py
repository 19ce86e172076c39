"""A party id its platform holds as both CPO and eMSP (credentials.asciidoc: a role is unique by role, party_id and
country_code, so one platform may list the same party with two roles): a request addressed to it is for the role that
implements the module's interface (mod_locations: the Receiver "Typically implemented by market roles like: eMSP and
NSP"; mod_tokens: "... CPO"; mod_commands: the Sender "... eMSP"), and is judged by that role's status, whether it is
sent directly, broadcast or posted to a hub URL. Here one of the two roles is left out of its credentials
(SUSPENDED)."""

from __future__ import annotations

import json

import httpx

from routing.decide import DROPPED
from tests.conftest import Hub, unique_party_id
from tests.parties import Party, _default_modules, token_header
from tests.test_hub_client_info import _wait_for
from tests.test_hub_urls_lead_to_one_party import COMMAND, HUB, RESULT_PATH
from tests.test_routing import _roles, party_key


def _both_roles(connect_party) -> tuple[Party, tuple[str, str]]:  # type: ignore[no-untyped-def]
    pid = unique_party_id()
    roles = (("CPO", "NL", pid), ("EMSP", "NL", pid))
    # the endpoints of both sides, whichever roles its credentials list later
    return connect_party(*roles, name="Both", modules=_default_modules(list(roles))), ("NL", pid)


def _list_only(hub: Hub, platform: Party, role: str) -> None:
    """A credentials PUT listing one of its two roles: the other is SUSPENDED (credentials.asciidoc,
    mod_hub_client_info.asciidoc)."""
    platform.roles = [r for r in platform.roles if r[0] == role]
    answer = httpx.put(f"{hub.base}/ocpi/2.2.1/credentials", headers=token_header(platform.hub_token or ""),
                       json=platform.credentials(platform.token_b)).json()  # fmt: skip
    assert answer["status_code"] == 1000, answer
    platform.hub_token = answer["data"]["token"]


def _location(cpo: Party, location_id: str) -> tuple[str, dict]:
    cc, pid = party_key(cpo)
    body = {"country_code": cc, "party_id": pid, "id": location_id, "publish": True,
            "last_updated": "2026-11-25T08:00:00Z"}  # fmt: skip
    return f"receiver/locations/{cc}/{pid}/{location_id}", body


def _command_with_a_result_to_come(hub: Hub, both: Party, key: tuple[str, str], cpo: Party) -> str:
    """A command the eMSP of the party id sends the CPO: the hub's response_url the CPO got for its result."""
    method, path, body = COMMAND
    sent = both.call(hub.base, method, path, from_=key, to=party_key(cpo),
                     body=body | {"response_url": f"{both.base}{RESULT_PATH}"})  # fmt: skip
    assert sent.json()["status_code"] == 1000, sent.text
    return str(json.loads(cpo.functional()[-1].body)["response_url"])


def test_a_party_ids_emsp_connected_beside_its_dropped_cpo_takes_locations_and_results_as_a_broadcast_does(
    hub: Hub, connect_party
) -> None:
    cpo, emsp = connect_party(_roles("CPO")), connect_party(_roles("EMSP"))
    both, key = _both_roles(connect_party)
    response_url = _command_with_a_result_to_come(hub, both, key, cpo)
    _list_only(hub, both, "EMSP")
    # broadcast: its eMSP takes the copy, as before
    path, body = _location(cpo, "BOTH1")
    assert cpo.call(hub.base, "PUT", path, to=HUB, body=body).json()["status_code"] == 1000
    _wait_for(lambda: [r for r in both.functional() if r.path.endswith("/BOTH1")])
    # direct: so does it now (it was refused for the CPO's status: "not connected (status PLANNED)")
    path, body = _location(cpo, "BOTH2")
    direct = cpo.call(hub.base, "PUT", path, to=key, body=body).json()
    assert direct["status_code"] == 1000, direct
    assert [r.headers["OCPI-to-party-id"] for r in both.functional() if r.path.endswith("/BOTH2")] == [key[1]]
    # the command's result goes to its eMSP, which sent the command, not to its CPO
    result = httpx.post(response_url, headers=token_header(cpo.hub_token or ""), json={"result": "ACCEPTED"})
    assert result.json()["status_code"] == 1000, result.text
    assert [r.path for r in both.functional() if r.method == "POST"] == [RESULT_PATH]
    # a token is for its CPO, which is SUSPENDED: refused, as a broadcast leaves it out
    cc, pid = party_key(emsp)
    token = {"country_code": cc, "party_id": pid, "uid": "TOK1", "last_updated": "2026-11-25T08:00:00Z"}
    refused = emsp.call(hub.base, "PUT", f"receiver/tokens/{cc}/{pid}/TOK1", to=key, body=token).json()
    assert refused["status_code"] == 4003, refused
    assert refused["status_message"] == f"receiver NL-{key[1]} {DROPPED}"
    assert not [r for r in both.functional() if "/tokens/" in r.path]


def test_a_party_ids_dropped_emsp_beside_its_connected_cpo_takes_no_locations_nor_results_saying_so_alike(
    hub: Hub, connect_party
) -> None:
    cpo = connect_party(_roles("CPO"))
    both, key = _both_roles(connect_party)
    response_url = _command_with_a_result_to_come(hub, both, key, cpo)
    _list_only(hub, both, "CPO")
    # direct: refused for its eMSP's status (it was forwarded, its CPO being CONNECTED), as a broadcast leaves it out
    path, body = _location(cpo, "BOTH3")
    refused = cpo.call(hub.base, "PUT", path, to=key, body=body).json()
    assert refused["status_code"] == 4003, refused
    assert refused["status_message"] == f"receiver NL-{key[1]} {DROPPED}"
    # the hub URL of the result its eMSP waits for: the same refusal, in the same words
    result = httpx.post(response_url, headers=token_header(cpo.hub_token or ""), json={"result": "ACCEPTED"}).json()
    assert result["status_code"] == 4003, result
    path = response_url.removeprefix(hub.base)
    assert result["status_message"] == f"the party behind {path} {DROPPED}"
    assert [r.path for r in both.functional() if "/BOTH3" in r.path or r.path == RESULT_PATH] == []


def test_a_party_id_sends_in_the_role_of_the_module_so_its_cpo_pushes_locations_while_its_emsp_is_dropped(
    hub: Hub, connect_party
) -> None:
    # OCPI-from names the party, not the role: a location push is its CPO's (mod_locations: the Sender "Typically
    # implemented by market roles like: CPO"), a token push its eMSP's, each judged by that role's status
    cpo, emsp = connect_party(_roles("CPO")), connect_party(_roles("EMSP"))
    both, key = _both_roles(connect_party)
    _list_only(hub, both, "CPO")
    cc, pid = key
    location = {"country_code": cc, "party_id": pid, "id": "BOTH4", "publish": True,
                "last_updated": "2026-11-25T08:00:00Z"}  # fmt: skip
    sent = both.call(hub.base, "PUT", f"receiver/locations/{cc}/{pid}/BOTH4", from_=key, to=party_key(emsp),
                     body=location).json()  # fmt: skip
    assert sent["status_code"] == 1000, sent
    assert [r.path for r in emsp.functional()] == [f"/ocpi/2.2.1/locations/receiver/{cc}/{pid}/BOTH4"]
    token = {"country_code": cc, "party_id": pid, "uid": "TOK2", "last_updated": "2026-11-25T08:00:00Z"}
    refused = both.call(hub.base, "PUT", f"receiver/tokens/{cc}/{pid}/TOK2", from_=key, to=party_key(cpo),
                        body=token).json()  # fmt: skip
    assert refused["status_code"] == 2001 and "(status SUSPENDED)" in refused["status_message"], refused
    assert cpo.functional() == []
