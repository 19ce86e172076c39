"""Who the hub shows a location with publish false: its owner, and the eMSPs of tokens matching a publish_allowed_to
entry in every field the entry sets (mod_locations.asciidoc, PublishTokenType), in GET All and single reads."""

from __future__ import annotations

import asyncio
import json
import secrets

import redis as redis_sync
import redis.asyncio as redis

from storage.location_cache import LocationCache
from storage.publish_tokens import Sent
from storage.routing_state import RoutingState
from tests.conftest import Hub, Services, unique_party_id
from tests.test_location_cache import _eventually, _get, _location, _push
from tests.test_owner_expiry import until_gone
from tests.test_routing import _roles, party_key

HUB = ("NL", "HUB")


def _push_token(emsp, cpo, hub: Hub, uid: str, method: str = "PUT", query: str = "", to=None, **fields) -> None:  # type: ignore[no-untyped-def]
    """The eMSP's token reaches the CPO through the hub, directly or, with to = the hub, by broadcast; a PATCH sends
    the fields given and last_updated, a PUT a whole Token."""
    cc, pid = party_key(emsp)
    body = {"last_updated": "2026-11-21T09:00:00Z"} | fields
    if method == "PUT":
        body = {"country_code": cc, "party_id": pid, "uid": uid, "type": "RFID", "contract_id": f"C-{uid}",
                "issuer": "Fleet Co", "valid": True, "whitelist": "ALLOWED"} | body  # fmt: skip
    answer = emsp.call(hub.base, method, f"receiver/tokens/{cc}/{pid}/{uid}{query}", to=to or party_key(cpo), body=body)
    assert answer.json()["status_code"] == 1000, answer.text


def _shown(party, hub: Hub, owner: tuple[str, str], location_id: str) -> bool:  # type: ignore[no-untyped-def]
    """Whether the party is shown the location, by GET All and by a single read alike."""
    listed = _get(party, hub, f"sender/locations?country_code={owner[0]}&party_id={owner[1]}").json()["data"]
    in_list = location_id in [loc["id"] for loc in listed]
    single = _get(party, hub, f"sender/locations/{location_id}")
    assert (single.status_code == 200) == in_list, single.text
    return in_list


def _hide(cpo, emsp, hub: Hub, location_id: str, allowed_to: list[dict]) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    owner = party_key(cpo)
    location = _location(owner, location_id, "2026-11-21T10:00:00Z", publish=False, publish_allowed_to=allowed_to)
    _push(cpo, emsp, hub, "PUT", location_id, location)
    _eventually(lambda: _assert_shown(cpo, hub, owner, location_id))  # its owner always sees it
    return owner


def _assert_shown(party, hub: Hub, owner: tuple[str, str], location_id: str) -> None:  # type: ignore[no-untyped-def]
    assert _shown(party, hub, owner, location_id)


def _assert_hidden(party, hub: Hub, owner: tuple[str, str], location_id: str) -> None:  # type: ignore[no-untyped-def]
    assert not _shown(party, hub, owner, location_id)


def test_an_emsp_sharing_a_token_uid_with_another_emsp_is_shown_what_its_token_may_see(hub: Hub, connect_party) -> None:
    cpo = connect_party(_roles("CPO"))
    first, second, other = (connect_party(_roles("EMSP")) for _ in range(3))
    uid = f"SHARED{unique_party_id()}"  # uids are unique per eMSP only: two eMSPs own a token with this one
    _push_token(first, cpo, hub, uid)
    _push_token(second, cpo, hub, uid, to=HUB)
    _push_token(other, cpo, hub, f"NOT{uid}")
    location_id = f"SHARE-{party_key(cpo)[1]}"
    owner = _hide(cpo, first, hub, location_id, [{"uid": uid, "type": "RFID"}])
    _eventually(lambda: _assert_shown(first, hub, owner, location_id))
    _eventually(lambda: _assert_shown(second, hub, owner, location_id))
    assert not _shown(other, hub, owner, location_id)


def test_an_emsp_is_shown_a_location_when_its_token_matches_every_field_an_entry_sets_and_not_some(
    hub: Hub, connect_party
) -> None:
    cpo = connect_party(_roles("CPO"))
    by_card, wrong_issuer, by_group, by_app, wrong_type = (connect_party(_roles("EMSP")) for _ in range(5))
    n = unique_party_id()
    visual, group, app_uid = f"NL-FLT-{n}", f"DEPOT{n}", f"APP{n}"
    # the ones that match only some of an entry's fields first: their tokens are indexed before the others'
    _push_token(wrong_issuer, cpo, hub, f"C2{n}", visual_number=visual, issuer="Other Co")
    _push_token(wrong_type, cpo, hub, app_uid)  # an RFID token with the uid of an APP_USER entry
    _push_token(by_card, cpo, hub, f"C1{n}", visual_number=visual)
    _push_token(by_group, cpo, hub, f"G1{n}", to=HUB, group_id=group.lower())  # group_id is a CiString
    _push_token(by_app, cpo, hub, app_uid, query="?type=APP_USER", type="APP_USER")
    location_id = f"DEPOT-{party_key(cpo)[1]}"
    owner = _hide(cpo, by_card, hub, location_id, [
        {"visual_number": visual, "issuer": "Fleet Co"},
        {"group_id": group},
        {"uid": app_uid, "type": "APP_USER"},
        {"type": "RFID"}, {"issuer": "Other Co"}, {"contract_id": f"C-C2{n}"},  # no uid, visual_number or group_id
    ])  # fmt: skip
    for allowed in (by_card, by_group, by_app):
        _eventually(lambda allowed=allowed: _assert_shown(allowed, hub, owner, location_id))  # type: ignore[misc]
    assert not _shown(wrong_issuer, hub, owner, location_id)
    assert not _shown(wrong_type, hub, owner, location_id)


def test_a_token_patch_is_matched_together_with_the_fields_its_token_had(hub: Hub, connect_party) -> None:
    cpo, fleet = connect_party(_roles("CPO")), connect_party(_roles("EMSP"))
    n = unique_party_id()
    uid, group = f"P{n}", f"TEAM{n}"
    _push_token(fleet, cpo, hub, uid, visual_number=f"V{n}", issuer="Fleet Co")
    # mod_tokens.asciidoc, PATCH: "other fields/objects that are not specified are considered unchanged"
    _push_token(fleet, cpo, hub, uid, method="PATCH", group_id=group)
    _push_token(fleet, cpo, hub, uid, method="PATCH", valid=False)
    location_id = f"TEAM-{party_key(cpo)[1]}"
    owner = _hide(cpo, fleet, hub, location_id, [{"visual_number": f"V{n}", "issuer": "Fleet Co", "group_id": group}])
    _eventually(lambda: _assert_shown(fleet, hub, owner, location_id))


def test_a_token_moved_to_another_group_sees_its_new_groups_location_and_no_longer_its_old_ones(
    hub: Hub, connect_party
) -> None:
    cpo, fleet = connect_party(_roles("CPO")), connect_party(_roles("EMSP"))
    n = unique_party_id()
    uid, old_group, new_group = f"M{n}", f"OLD{n}", f"NEW{n}"
    _push_token(fleet, cpo, hub, uid, group_id=old_group)
    old_depot, new_depot = f"OLD-{party_key(cpo)[1]}", f"NEW-{party_key(cpo)[1]}"
    owner = _hide(cpo, fleet, hub, old_depot, [{"group_id": old_group}])
    _hide(cpo, fleet, hub, new_depot, [{"group_id": new_group, "issuer": "Fleet Co"}])
    _eventually(lambda: _assert_shown(fleet, hub, owner, old_depot))
    assert not _shown(fleet, hub, owner, new_depot)
    _push_token(fleet, cpo, hub, uid, method="PATCH", group_id=new_group)
    _eventually(lambda: _assert_shown(fleet, hub, owner, new_depot))
    _eventually(lambda: _assert_hidden(fleet, hub, owner, old_depot))


def test_the_unpublished_locations_a_hub_before_this_index_cached_get_their_entries_at_start(
    services: Services,
) -> None:
    prefix = f"{services.redis_prefix}publish-{secrets.token_hex(4)}:"
    old_hub = redis_sync.Redis.from_url(services.redis_url, decode_responses=True)
    document = {"id": "L1", "country_code": "NL", "party_id": "CPO", "publish": False, "last_updated":
                "2026-12-01T10:00:00Z", "publish_allowed_to": [{"uid": "CARD1", "type": "RFID"}]}  # fmt: skip
    # as the hub before this index cached it: the document, and a set of its entries' token uids
    old_hub.set(f"{prefix}locations:doc:NL/CPO/L1", json.dumps(document))
    old_hub.zadd(f"{prefix}locations:all", {"NL/CPO/L1": 1764583200})
    old_hub.sadd(f"{prefix}locations:hidden", "NL/CPO/L1")
    old_hub.sadd(f"{prefix}locations:allowed:NL/CPO/L1", "CARD1")

    async def run() -> None:
        client = redis.Redis.from_url(services.redis_url)
        try:
            state = RoutingState(client, prefix, 3600.0)
            async with state.running(interval_s=0.01):
                state.note_token(("NL", "FLT"), "CARD1", "RFID", Sent(issuer="Fleet Co"), whole=True, seen=())
            cache = LocationCache(client, prefix)
            async with cache.updating():
                await until_gone(client, f"{prefix}locations:allowed:*")
                for viewer, shown in ((("NL", "FLT"), 1), (("NL", "OTH"), 0)):
                    assert (await cache.snapshot(None, None, None, viewer))[1] == shown, viewer
                    assert await cache.visible_to(document, ("NL", "CPO"), viewer) == bool(shown), viewer
        finally:
            await client.aclose()

    try:
        asyncio.run(run())
    finally:
        old_hub.close()
