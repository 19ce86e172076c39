"""Object ids are CiStrings (types.asciidoc): open routing and the location cache find them in any case.

The ids carry the party id of their test, since the session's hub is shared: `LOC1` alone is pushed by many CPOs.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets

import redis as redis_sync
import redis.asyncio as redis

from storage.routing_state import RoutingState
from tests.conftest import Hub, Services
from tests.test_location_cache import _eventually, _get, _location, _push
from tests.test_routing import _roles, party_key


def _status(answer) -> int:  # type: ignore[no-untyped-def]
    return answer.json()["status_code"]


def _routed(call):  # type: ignore[no-untyped-def]
    """The answer of an open request once the owner index, written in batches, has the owner (4001 until then)."""

    def routed():  # type: ignore[no-untyped-def]
        answer = call()
        assert _status(answer) == 1000, answer.text
        return answer

    return _eventually(routed)


def test_a_token_pushed_in_lower_case_is_found_by_an_open_authorize_in_upper_case(hub: Hub, connect_party) -> None:
    emsp, cpo = connect_party(_roles("EMSP")), connect_party(_roles("CPO"))
    cc, pid = party_key(emsp)
    uid = f"abc123-{pid.lower()}"
    pushed = emsp.call(hub.base, "PUT", f"receiver/tokens/{cc}/{pid}/{uid}", to=party_key(cpo), body={"uid": uid})
    assert _status(pushed) == 1000, pushed.text
    _routed(lambda: cpo.call(hub.base, "POST", f"sender/tokens/{uid.upper()}/authorize?type=RFID", body={}))
    [got] = [r for r in emsp.functional() if r.path.endswith("/authorize")]
    assert got.path.endswith(f"/{uid.upper()}/authorize")  # relayed as the CPO asked


def test_a_put_whose_body_names_its_url_id_in_another_case_goes_through_and_another_id_does_not(
    hub: Hub, connect_party
) -> None:
    cpo, emsp = connect_party(_roles("CPO")), connect_party(_roles("EMSP"))
    owner = party_key(cpo)
    location_id = f"loc1-{owner[1].lower()}"
    url = f"receiver/locations/{owner[0]}/{owner[1]}/{location_id}"
    same = cpo.call(
        hub.base, "PUT", url, to=party_key(emsp), body=_location(owner, location_id.upper(), "2026-11-25T08:00:00Z")
    )
    assert _status(same) == 1000, same.text
    other = cpo.call(hub.base, "PUT", url, to=party_key(emsp), body=_location(owner, "LOC2", "2026-11-25T08:00:00Z"))
    assert _status(other) == 2001 and "differs from the id in the body (LOC2)" in other.text
    assert len([r for r in emsp.functional() if r.method == "PUT"]) == 1  # the second was not forwarded


def test_a_location_pushed_as_loc1_receives_a_start_session_naming_LOC1_without_ocpi_to(
    hub: Hub, connect_party
) -> None:
    cpo, emsp = connect_party(_roles("CPO")), connect_party(_roles("EMSP"))
    owner = party_key(cpo)
    location_id = f"loc1-{owner[1].lower()}"
    _push(cpo, emsp, hub, "PUT", location_id, _location(owner, location_id, "2026-11-25T08:00:00Z"))
    body = {"response_url": f"{emsp.base}/cmd/1", "location_id": location_id.upper(), "token": {"uid": "T"}}
    _routed(lambda: emsp.call(hub.base, "POST", "receiver/commands/START_SESSION", body=body))
    assert [r.path for r in cpo.functional() if "commands" in r.path] == ["/ocpi/2.2.1/commands/receiver/START_SESSION"]


def test_a_session_pushed_as_S1_finds_its_emsp_for_an_open_patch_of_s1(hub: Hub, connect_party) -> None:
    cpo, emsp = connect_party(_roles("CPO")), connect_party(_roles("EMSP"))
    cc, pid = party_key(cpo)
    session_id = f"S1-{pid}"
    put = cpo.call(hub.base, "PUT", f"receiver/sessions/{cc}/{pid}/{session_id}", to=party_key(emsp),
                   body={"id": session_id, "country_code": cc, "party_id": pid})  # fmt: skip
    assert _status(put) == 1000, put.text
    patch = f"receiver/sessions/{cc.lower()}/{pid.lower()}/{session_id.lower()}"
    _routed(lambda: cpo.call(hub.base, "PATCH", patch, body={"kwh": 1, "last_updated": "2026-11-25T10:00:00Z"}))
    assert [r.method for r in emsp.functional() if "sessions" in r.path] == ["PUT", "PATCH"]


def test_a_reservation_made_as_r1_is_cancelled_as_R1_without_ocpi_to(hub: Hub, connect_party) -> None:
    cpo, emsp = connect_party(_roles("CPO")), connect_party(_roles("EMSP"))
    reservation_id = f"r1-{party_key(emsp)[1].lower()}"
    reserve = {"response_url": f"{emsp.base}/cmd/2", "token": {"uid": "T"}, "location_id": "L",
               "expiry_date": "2026-11-25T10:00:00Z", "reservation_id": reservation_id}  # fmt: skip
    made = emsp.call(hub.base, "POST", "receiver/commands/RESERVE_NOW", to=party_key(cpo), body=reserve)
    assert _status(made) == 1000, made.text
    cancel = {"response_url": f"{emsp.base}/cmd/3", "reservation_id": reservation_id.upper()}
    _routed(lambda: emsp.call(hub.base, "POST", "receiver/commands/CANCEL_RESERVATION", body=cancel))
    assert [r.path.rsplit("/", 1)[1] for r in cpo.functional()] == ["RESERVE_NOW", "CANCEL_RESERVATION"]


def test_the_location_cache_merges_a_patch_of_loc1_into_LOC1_lists_it_once_and_finds_Loc1(
    hub: Hub, connect_party
) -> None:
    cpo, emsp = connect_party(_roles("CPO")), connect_party(_roles("EMSP"))
    owner = party_key(cpo)
    location_id = f"LOC1-{owner[1]}"
    query = f"sender/locations?country_code={owner[0]}&party_id={owner[1]}"
    _push(cpo, emsp, hub, "PUT", location_id, _location(owner, location_id, "2026-11-25T08:00:00Z", name="first"))
    _push(cpo, emsp, hub, "PATCH", location_id.lower(), {"name": "patched", "last_updated": "2026-11-25T09:00:00Z"})

    def listed(expected: list[tuple[str, str]]):  # type: ignore[no-untyped-def]
        def check() -> None:
            page = _get(emsp, hub, query)
            assert [(loc["id"], loc["name"]) for loc in page.json()["data"]] == expected, page.text
            assert page.headers["X-Total-Count"] == str(len(expected))

        return check

    _eventually(listed([(location_id, "patched")]))
    single = _get(emsp, hub, f"sender/locations/{location_id.capitalize()}")
    assert (_status(single), single.json()["data"]["name"]) == (1000, "patched"), single.text
    # A PUT in another case replaces it: one location, its document as the CPO sent it this time.
    again = _location(owner, location_id.lower(), "2026-11-25T10:00:00Z", name="again")
    _push(cpo, emsp, hub, "PUT", location_id.lower(), again)
    _eventually(listed([(location_id.lower(), "again")]))


def test_an_evse_and_a_connector_are_changed_and_found_in_any_case_in_the_location_cache(
    hub: Hub, connect_party
) -> None:
    # mod_locations.asciidoc: EVSE.uid and Connector.id are CiString(36) too
    cpo, emsp = connect_party(_roles("CPO")), connect_party(_roles("EMSP"))
    owner = party_key(cpo)
    location_id = f"EV-{owner[1]}"
    _push(cpo, emsp, hub, "PUT", location_id, _location(owner, location_id, "2026-11-25T08:00:00Z"))  # EVSE E1
    _push(cpo, emsp, hub, "PATCH", f"{location_id}/e1", {"status": "CHARGING", "last_updated": "2026-11-25T09:00:00Z"})
    connector = {"id": "1", "standard": "CHADEMO", "last_updated": "2026-11-25T10:00:00Z"}
    _push(cpo, emsp, hub, "PUT", f"{location_id}/e1/1", connector)

    def changed() -> None:
        [evse] = _get(emsp, hub, f"sender/locations/{location_id}").json()["data"]["evses"]
        assert (evse["uid"], evse["status"], evse["connectors"]) == ("E1", "CHARGING", [connector]), evse

    _eventually(changed)
    found = _get(emsp, hub, f"sender/locations/{location_id}/e1/1")
    assert found.json()["data"] == connector, found.text


def test_the_owner_index_matches_ids_in_any_case_and_finds_those_an_earlier_hub_kept_in_their_own(
    services: Services,
) -> None:
    prefix = f"{services.redis_prefix}owners-{secrets.token_hex(4)}:"
    with contextlib.closing(redis_sync.Redis.from_url(services.redis_url)) as old_hub:  # ids as sent, as it kept them
        old_hub.hset(f"{prefix}owners:tokens", "tok-old", "NL-OLD")
        old_hub.hset(f"{prefix}owners:session-receivers", "NL/CPO/s-old", "NL-OLD")

    async def run() -> None:
        client = redis.Redis.from_url(services.redis_url)
        try:
            async with RoutingState(client, prefix, owners_period_s=3600.0).running(interval_s=0.01) as state:
                state.note_owner("tokens", "tok-new", ("NL", "NEW"), ())
                state.note_owner("session-receivers", "NL/CPO/s-new", ("NL", "NEW"), ())
                await asyncio.sleep(0.1)
                for module, object_id in (("tokens", "TOK-NEW"), ("session-receivers", "NL/CPO/S-New")):
                    assert await state.owners(module, object_id) == [("NL", "NEW")]
                assert await state.owners("tokens", "tok-old") == [("NL", "OLD")]
                assert await state.owners("session-receivers", "NL/CPO/s-old") == [("NL", "OLD")]
        finally:
            await client.aclose()

    asyncio.run(run())
