"""Open routing (no OCPI-to headers): the owner index the hub keeps of what passed through it, and the receivers it
finds there or refuses to guess."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import secrets
import time

import redis.asyncio as redis

from storage.owner_index import MAX_INDEXED_CHARS
from storage.publish_tokens import Sent, index_keys, record_field
from storage.routing_state import RoutingState
from tests.conftest import Hub, Services, unique_party_id
from tests.test_routing import LOCATION, _roles, party_key
from tests.test_routing_modes import _wait_for


def test_open_routing_sends_a_command_to_the_owner_of_its_location(hub: Hub, connect_party) -> None:
    cpo, other_cpo = connect_party(_roles("CPO")), connect_party(_roles("CPO"))
    emsp = connect_party(_roles("EMSP"))
    cc, pid = party_key(cpo)
    location_id = f"LOC-{unique_party_id()}"
    for _ in range(2):  # its owner seen again: still the one owner
        cpo.call(
            hub.base,
            "PUT",
            f"receiver/locations/{cc}/{pid}/{location_id}",
            to=party_key(emsp),
            body=LOCATION | {"id": location_id, "party_id": pid},
        )
        time.sleep(0.2)  # the owner index is written in batches
    answer = emsp.call(hub.base, "POST", "receiver/commands/START_SESSION",
                       body={"response_url": f"{emsp.base}/cmd/9", "location_id": location_id,
                             "token": {"uid": "T"}})  # fmt: skip
    assert answer.json()["status_code"] == 1000, answer.text
    assert [r.path for r in cpo.functional()] == ["/ocpi/2.2.1/commands/receiver/START_SESSION"]
    assert other_cpo.functional() == []


def test_open_routing_sends_a_command_for_a_location_the_hub_only_pulled_to_its_cpo(
    hub: Hub, start_party, connect_party
) -> None:
    # A CPO that does not push: its locations reach the hub by pull sync alone, and an eMSP that found one by GET All
    # via the hub was told the hub could not tell the receiver of its START_SESSION (an eMSP developer's walkthrough).
    from tests.test_pull_sync import _cached_total, _locations, _registered_cpo, _wait

    emsp, other_cpo = connect_party(_roles("EMSP")), connect_party(_roles("CPO"))

    tag = unique_party_id()  # the hub is shared: another test's CPO may list S0001 too

    def listed(me):  # type: ignore[no-untyped-def]
        found = [loc | {"id": f"{loc['id']}-{tag}"} for loc in _locations(me, 3, "2026-11-01T00:00:00Z")]
        return [*found[:2], found[2] | {"publish": False}]

    cpo, owner = _registered_cpo(hub, start_party, listed)
    _wait(lambda: _cached_total(cpo, hub, owner) == 3)

    def command(name: str, location_id: str):  # type: ignore[no-untyped-def]
        return emsp.call(hub.base, "POST", f"receiver/commands/{name}",
                         body={"response_url": f"{emsp.base}/cmd/9", "location_id": location_id,
                               "token": {"uid": "T"}})  # fmt: skip

    commands = ("START_SESSION", "RESERVE_NOW", "UNLOCK_CONNECTOR")
    for name in commands:
        assert command(name, f"s0001-{tag}").json()["status_code"] == 1000
    assert [r.path for r in cpo.functional()] == [f"/ocpi/2.2.1/commands/receiver/{name}" for name in commands]
    # an unpublished one this eMSP may not see is no owner it learns of (a security review)
    assert command("START_SESSION", f"S0002-{tag}").json()["status_code"] == 4001
    # another CPO pushing the same id makes it ambiguous, not that CPO's (a security review: it got the command)
    oc, op = party_key(other_cpo)
    other_cpo.call(hub.base, "PUT", f"receiver/locations/{oc}/{op}/S0000-{tag}", to=party_key(emsp),
                   body=LOCATION | {"id": f"S0000-{tag}", "country_code": oc, "party_id": op})  # fmt: skip
    time.sleep(0.3)  # the owner index is written in batches
    refused = command("START_SESSION", f"S0000-{tag}")
    assert refused.json()["status_code"] == 4001 and "belongs to several parties" in refused.json()["status_message"]
    assert other_cpo.functional() == [] and len(cpo.functional()) == 3
    # nor is an unpublished one pushed (the owner index does not know publish; the cache does)
    other_cpo.call(hub.base, "PUT", f"receiver/locations/{oc}/{op}/HIDDEN-{tag}", to=party_key(emsp),
                   body=LOCATION | {"id": f"HIDDEN-{tag}", "country_code": oc, "party_id": op,
                                    "publish": False})  # fmt: skip
    time.sleep(0.3)
    assert command("START_SESSION", f"HIDDEN-{tag}").json()["status_code"] == 4001
    assert other_cpo.functional() == []


def test_open_routing_sends_a_real_time_authorization_to_the_token_owner(hub: Hub, connect_party) -> None:
    emsp, cpo = connect_party(_roles("EMSP")), connect_party(_roles("CPO"))
    cc, pid = party_key(emsp)
    uid = f"TOK{unique_party_id()}"
    emsp.call(hub.base, "PUT", f"receiver/tokens/{cc}/{pid}/{uid}", to=party_key(cpo), body={"uid": uid})
    time.sleep(0.2)
    answer = cpo.call(hub.base, "POST", f"sender/tokens/{uid}/authorize?type=RFID", body={})
    assert answer.json()["status_code"] == 1000, answer.text
    [got] = [r for r in emsp.functional() if r.path.endswith("/authorize")]
    assert got.query == "type=RFID"


def test_an_open_authorization_of_a_token_no_emsp_published_answers_4001_not_2004_and_ocpi_to_reaches_its_emsp(
    hub: Hub, connect_party
) -> None:
    # mod_tokens: "If the token is not known, the response SHALL contain the status code: 2004": the eMSP's answer. An
    # eMSP may authorize tokens in real time without ever pushing them: the hub not knowing one is a routing failure.
    emsp, cpo = connect_party(_roles("EMSP")), connect_party(_roles("CPO"))
    uid = f"TOK{unique_party_id()}"
    answer = cpo.call(hub.base, "POST", f"sender/tokens/{uid}/authorize", body={})
    assert answer.json()["status_code"] == 4001, answer.text
    assert answer.json()["status_message"] == (
        f"no OCPI-to headers, and no eMSP connected to the hub has published token {uid} through it, so the hub cannot "
        "tell whose it is; an eMSP may authorize tokens it never publishes, so this does not mean the token is "
        "unknown: send OCPI-to-country-code and OCPI-to-party-id to ask the eMSP it belongs to"
    )
    assert emsp.functional() == []
    addressed = cpo.call(hub.base, "POST", f"sender/tokens/{uid}/authorize", to=party_key(emsp), body={})
    assert addressed.json()["status_code"] == 1000, addressed.text
    assert [r.path for r in emsp.functional()] == [f"/ocpi/2.2.1/tokens/sender/{uid}/authorize"]


def test_a_token_broadcast_makes_its_emsp_the_receiver_of_open_authorizations(hub: Hub, connect_party) -> None:
    emsp, cpo = connect_party(_roles("EMSP")), connect_party(_roles("CPO"))
    cc, pid = party_key(emsp)
    uid = f"TOK{unique_party_id()}"
    pushed = emsp.call(hub.base, "PUT", f"receiver/tokens/{cc}/{pid}/{uid}", to=("NL", "HUB"), body={"uid": uid})
    assert pushed.json()["status_code"] == 1000, pushed.text
    assert _wait_for(lambda: [r for r in cpo.functional() if r.path.endswith(uid)])  # the copy went out
    answer = _wait_for(lambda: (a := cpo.call(hub.base, "POST", f"sender/tokens/{uid}/authorize", body={})).json()
                       ["status_code"] == 1000 and a)  # fmt: skip
    assert [r.path for r in emsp.functional() if r.path.endswith(f"/{uid}/authorize")], answer.text


def test_an_open_session_patch_goes_to_the_emsp_of_that_cpos_session_though_another_cpo_uses_its_id(
    hub: Hub, connect_party
) -> None:
    # Session ids are unique per CPO only; a PATCH's URL names the CPO, so the hub can tell the two sessions apart.
    pairs, session_id = _two_cpos_sessions_of_one_id(hub, connect_party)
    time.sleep(0.2)  # the owner index is written in batches
    (cpo, emsp), (_, other_emsp) = pairs
    cc, pid = party_key(cpo)
    patched = cpo.call(
        hub.base,
        "PATCH",
        f"receiver/sessions/{cc}/{pid}/{session_id}",
        body={"kwh": 1.5, "last_updated": "2026-11-25T10:00:00Z"},
    )
    assert patched.json()["status_code"] == 1000, patched.text
    assert [r.method for r in emsp.functional()] == ["PUT", "PATCH"]
    assert [r.method for r in other_emsp.functional()] == ["PUT"]


def test_an_open_session_get_goes_to_the_emsp_the_session_was_pushed_to(hub: Hub, connect_party) -> None:
    # transport_and_format.asciidoc: "Open Routing Requests are possible for GET (Not GET ALL), POST, PUT, PATCH and
    # DELETE": the hub knows the receiver of a session it relayed, for a GET as for a PATCH.
    cpo, emsp, other_emsp = connect_party(_roles("CPO")), connect_party(_roles("EMSP")), connect_party(_roles("EMSP"))
    cc, pid = party_key(cpo)
    session_id = f"S-{unique_party_id()}"
    put = cpo.call(hub.base, "PUT", f"receiver/sessions/{cc}/{pid}/{session_id}", to=party_key(emsp),
                   body={"id": session_id, "country_code": cc, "party_id": pid})  # fmt: skip
    assert put.json()["status_code"] == 1000, put.text
    answer = _wait_for(lambda: (a := cpo.call(hub.base, "GET", f"receiver/sessions/{cc}/{pid}/{session_id}")).json()
                       ["status_code"] == 1000 and a)  # fmt: skip
    assert answer.headers["OCPI-from-party-id"] == party_key(emsp)[1]
    assert [r.method for r in emsp.functional()] == ["PUT", "GET"]
    assert other_emsp.functional() == []


def test_open_request_the_hub_cannot_place_answers_a_clear_error(hub: Hub, connect_party) -> None:
    emsp = connect_party(_roles("EMSP"))
    answer = emsp.call(
        hub.base,
        "POST",
        "receiver/commands/START_SESSION",
        body={"response_url": "https://x/y", "location_id": "NEVER-SEEN"},
    )
    assert answer.json()["status_code"] == 4001
    assert "OCPI-to" in answer.json()["status_message"]
    # The hub reads an open request's body to route it: one that is no JSON is HTTP 400 (status_codes.asciidoc).
    broken = emsp.call(hub.base, "POST", "receiver/commands/START_SESSION", content=b'{"location_id": "LOC1", ')
    assert (broken.status_code, broken.json()["status_code"]) == (400, 2001), broken.text
    assert "not valid JSON" in broken.json()["status_message"]


def test_open_routing_refuses_a_location_id_two_cpos_have_and_forwards_nothing(hub: Hub, connect_party, db) -> None:
    # Location.id is unique "within the CPO's platform" only: the hub must not guess which CPO is meant.
    cpos, emsp = [connect_party(_roles("CPO")) for _ in range(2)], connect_party(_roles("EMSP"))
    location_id = f"LOC1-{unique_party_id()}"
    for cpo in cpos:
        cc, pid = party_key(cpo)
        answer = cpo.call(hub.base, "PUT", f"receiver/locations/{cc}/{pid}/{location_id}", to=party_key(emsp),
                          body=LOCATION | {"id": location_id, "party_id": pid})  # fmt: skip
        assert answer.json()["status_code"] == 1000, answer.text
        time.sleep(0.2)  # the owner index is written in batches: the second owner arrives in a batch of its own
    request_id = f"ambiguous-{location_id}"
    answer = emsp.call(hub.base, "POST", "receiver/commands/START_SESSION", headers={"X-Request-ID": request_id},
                       body={"response_url": f"{emsp.base}/cmd/1", "location_id": location_id,
                             "token": {"uid": "T"}})  # fmt: skip
    assert answer.json()["status_code"] == 4001, answer.text
    message = answer.json()["status_message"]
    assert f"location {location_id} belongs to several parties" in message
    assert all(f"{cc}-{pid}" in message for cc, pid in map(party_key, cpos))
    assert "OCPI-to-country-code and OCPI-to-party-id" in message
    assert [cpo.functional() for cpo in cpos] == [[], []]
    query = "SELECT routing, to_party_id, ocpi_status_code FROM routing_log WHERE request_id = $1"
    rows = _wait_for(lambda: db.run(db.fetch(query, request_id)))
    assert [tuple(row) for row in rows] == [("rejected", None, 4001)]


def test_a_location_id_a_cpo_that_left_the_hub_also_had_is_routed_to_the_cpo_still_on_it(
    hub: Hub, connect_party
) -> None:
    # The owner index keeps what it saw; a party taken off the hub owns nothing to route to any more.
    gone, staying = connect_party(_roles("CPO")), connect_party(_roles("CPO"))
    emsp = connect_party(_roles("EMSP"))
    location_id = f"LOC1-{unique_party_id()}"
    for cpo, pushed in ((gone, location_id), (staying, location_id), (gone, f"{location_id}-ONLY")):
        cc, pid = party_key(cpo)
        answer = cpo.call(hub.base, "PUT", f"receiver/locations/{cc}/{pid}/{pushed}", to=party_key(emsp),
                          body=LOCATION | {"id": pushed, "party_id": pid})  # fmt: skip
        assert answer.json()["status_code"] == 1000, answer.text
        time.sleep(0.2)  # each owner in a batch of its own
    with hub.admin() as admin:
        [platform] = [p for p in admin.get("/admin/api/parties").json()["items"] if p["party_id"] == party_key(gone)[1]]
        assert admin.delete(f"/admin/api/parties/{platform['platform_id']}").status_code == 200
    body = {"response_url": f"{emsp.base}/cmd/1", "location_id": location_id, "token": {"uid": "T"}}
    answer = emsp.call(hub.base, "POST", "receiver/commands/START_SESSION", body=body)
    assert answer.json()["status_code"] == 1000, answer.text
    assert [r.path for r in staying.functional() if "commands" in r.path] == [
        "/ocpi/2.2.1/commands/receiver/START_SESSION"
    ]
    assert not [r for r in gone.functional() if "commands" in r.path]
    # an id only the party that left had: the caller is told so, not that the hub cannot tell (an eMSP's walkthrough);
    # 4003, "receiving party is not connected" (status_codes.asciidoc), as that party addressed with OCPI-to is answered
    only_gone = emsp.call(hub.base, "POST", "receiver/commands/START_SESSION",
                          body=body | {"location_id": f"{location_id}-ONLY"})  # fmt: skip
    assert only_gone.json()["status_code"] == 4003, only_gone.text
    addressed = emsp.call(hub.base, "POST", "receiver/commands/START_SESSION", to=party_key(gone), body=body)
    assert addressed.json()["status_code"] == 4003, addressed.text
    assert only_gone.json()["status_message"].endswith(f"belonged to {'-'.join(party_key(gone))}, which is no longer "
                                                       "connected to the hub"), only_gone.text  # fmt: skip


def test_open_routing_refuses_an_authorization_of_a_token_uid_two_emsps_have(hub: Hub, connect_party) -> None:
    emsps, cpo = [connect_party(_roles("EMSP")) for _ in range(2)], connect_party(_roles("CPO"))
    uid = f"TOK{unique_party_id()}"
    for emsp in emsps:
        cc, pid = party_key(emsp)
        emsp.call(hub.base, "PUT", f"receiver/tokens/{cc}/{pid}/{uid}", to=party_key(cpo), body={"uid": uid})
    time.sleep(0.2)  # both owners may also land in one batch of the owner index
    answer = cpo.call(hub.base, "POST", f"sender/tokens/{uid}/authorize?type=RFID", body={})
    assert answer.json()["status_code"] == 4001, answer.text
    assert f"token {uid} belongs to several parties" in answer.json()["status_message"]
    assert [emsp.functional() for emsp in emsps] == [[], []]


def test_an_authorization_of_a_uid_two_emsps_have_goes_by_its_type_and_otherwise_names_them_and_how_to_choose(
    hub: Hub, connect_party
) -> None:
    # mod_tokens.asciidoc: "The combination of uid and type should be unique for every token within the eMSP's
    # system", and an authorization's ?type= defaults to RFID: two eMSPs' tokens of one uid but of other types are
    # told apart by the type asked for, as a location several CPOs have is by ?country_code=&party_id=
    rfid, app, cpo = connect_party(_roles("EMSP")), connect_party(_roles("EMSP")), connect_party(_roles("CPO"))
    uid = f"TOK{unique_party_id()}"
    for emsp, type_ in ((rfid, "RFID"), (app, "APP_USER")):
        cc, pid = party_key(emsp)
        pushed = emsp.call(hub.base, "PUT", f"receiver/tokens/{cc}/{pid}/{uid}?type={type_}", to=party_key(cpo),
                           body={"uid": uid, "type": type_, "country_code": cc, "party_id": pid})  # fmt: skip
        assert pushed.json()["status_code"] == 1000, pushed.text  # a uid another eMSP has is no error of the push
    time.sleep(0.2)  # the owner index is written in batches
    for query, emsp in (("?type=APP_USER", app), ("?type=RFID", rfid), ("", rfid)):
        answer = cpo.call(hub.base, "POST", f"sender/tokens/{uid}/authorize{query}", body={})
        assert answer.json()["status_code"] == 1000, (query, answer.text)
        assert [r.path for r in emsp.functional()][-1:] == [f"/ocpi/2.2.1/tokens/sender/{uid}/authorize"], query
    assert (len(rfid.functional()), len(app.functional())) == (2, 1)
    # the same uid and type at both: refused naming each eMSP with the types the hub saw, and saying how to choose
    cc, pid = party_key(app)
    app.call(hub.base, "PUT", f"receiver/tokens/{cc}/{pid}/{uid}", to=party_key(cpo),
             body={"uid": uid, "type": "RFID", "country_code": cc, "party_id": pid})  # fmt: skip
    time.sleep(0.2)
    refused = cpo.call(hub.base, "POST", f"sender/tokens/{uid}/authorize?type=RFID", body={})
    assert refused.json()["status_code"] == 4001, refused.text
    owners = sorted([("-".join(party_key(rfid)), "RFID"), ("-".join(party_key(app)), "APP_USER, RFID")])
    assert refused.json()["status_message"] == (
        f"no OCPI-to headers, and token {uid} belongs to several parties ({owners[0][0]}: {owners[0][1]}; "
        f"{owners[1][0]}: {owners[1][1]}), so the hub cannot tell whose token of type RFID it is: send "
        "OCPI-to-country-code and OCPI-to-party-id to say which one (?type=, RFID if not given, tells apart only "
        "tokens of different types)"
    )
    assert (len(rfid.functional()), len(app.functional())) == (2, 1)
    # OCPI-to chooses whichever the CPO means
    direct = cpo.call(hub.base, "POST", f"sender/tokens/{uid}/authorize", to=party_key(app), body={})
    assert direct.json()["status_code"] == 1000 and len(app.functional()) == 2, direct.text


def test_an_owner_seen_again_stays_the_one_owner_and_another_makes_the_id_ambiguous(services: Services) -> None:
    async def run() -> None:
        client = redis.Redis.from_url(services.redis_url)
        state = RoutingState(client, f"{services.redis_prefix}owners-{secrets.token_hex(4)}:", owners_period_s=3600)
        try:
            async with state.running(interval_s=0.01):
                state.note_owner("locations", "LOC1", ("NL", "AAA"), ())
                state.note_owner("locations", "LOC1", ("NL", "AAA"), ())
                await asyncio.sleep(0.1)
                state.note_owner("locations", "LOC1", ("NL", "AAA"), ())
                await asyncio.sleep(0.1)
                assert await state.owners("locations", "LOC1") == [("NL", "AAA")]
                assert await state.owner("locations", "LOC1") == ("NL", "AAA")
                state.note_owner("locations", "LOC1", ("DE", "BBB"), ())
                assert await state.owners("locations", "LOC1") == [("DE", "BBB"), ("NL", "AAA")]  # not yet written
                await asyncio.sleep(0.1)
                state.note_owner("locations", "LOC1", ("NL", "AAA"), ())
                await asyncio.sleep(0.1)
                assert await state.owners("locations", "LOC1") == [("DE", "BBB"), ("NL", "AAA")]
                assert await state.owner("locations", "LOC1") is None
        finally:
            await client.aclose()

    asyncio.run(run())


def test_an_id_or_a_token_field_longer_than_any_ocpi_one_is_not_indexed(services: Services) -> None:
    # A security review's point: a party pushing objects with ids, or tokens with fields, of megabytes (a URL up to a
    # request's 64 KiB head, a body up to its cap) filled Redis for good: these hashes keep what they are given.
    async def run() -> None:
        client = redis.Redis.from_url(services.redis_url, decode_responses=True)
        prefix = f"{services.redis_prefix}owners-{secrets.token_hex(4)}:"
        state = RoutingState(client, prefix, owners_period_s=3600)
        longest, too_long = "L" * MAX_INDEXED_CHARS, "L" * (MAX_INDEXED_CHARS + 1)
        try:
            async with state.running(interval_s=0.01):
                for object_id in (longest, too_long):
                    state.note_owner("locations", object_id, ("NL", "AAA"), ())
                    state.note_token(("NL", "EEE"), object_id, "RFID", Sent(), True, ())
                state.note_token(("NL", "EEE"), "TOK1", "RFID", Sent("RFID", "V" * 100_000, "Fleet Co", too_long),
                                 True, ())  # fmt: skip
                await asyncio.sleep(0.2)
                assert await state.owners("locations", longest) == [("NL", "AAA")]
                assert await state.owners("locations", too_long) == []
                records = await client.hgetall(index_keys(prefix)[0])
                assert records == {
                    record_field("NL-EEE", longest, "RFID"): "\x1f\x1f",
                    record_field("NL-EEE", "TOK1", "RFID"): "\x1fFleet Co\x1f",  # the rest as empty: matching none
                }
        finally:
            await client.aclose()

    asyncio.run(run())


def test_an_open_active_charging_profile_update_goes_to_the_party_that_set_a_profile_on_that_cpos_session(
    hub: Hub, connect_party
) -> None:
    # mod_charging_profiles.asciidoc, Sender PUT: the CPO calls it only for a session whose Sender "has at least once
    # successfully called the charging profile Receiver PUT interface", so that Sender is the receiver.
    senders = {"modules": {"chargingprofiles": ["SENDER"]}}
    scsp, emsp = connect_party(_roles("SCSP"), **senders), connect_party(_roles("EMSP"), **senders)
    cpo, other_cpo = connect_party(_roles("CPO")), connect_party(_roles("CPO"))
    session_id = f"S-{unique_party_id()}"
    profile = {"charging_profile": {"charging_rate_unit": "W"}, "response_url": f"{scsp.base}/r/1"}
    put = scsp.call(hub.base, "PUT", f"receiver/chargingprofiles/{session_id}", to=party_key(cpo), body=profile)
    assert put.json()["status_code"] == 1000, put.text
    update = {"start_date_time": "2026-12-04T10:00:00Z", "charging_profile": {"charging_rate_unit": "W"}}
    answer = _wait_for(lambda: (a := cpo.call(hub.base, "PUT", f"sender/chargingprofiles/{session_id}",
                                              body=update)).json()["status_code"] == 1000 and a)  # fmt: skip
    assert answer.headers["OCPI-from-party-id"] == party_key(scsp)[1]
    [got] = scsp.functional()
    assert (got.method, got.path.endswith(f"/{session_id}"), json.loads(got.body)) == ("PUT", True, update)
    # Another CPO's session of the same id had no profile set by anyone: the hub cannot tell, and says so.
    unknown = other_cpo.call(hub.base, "PUT", f"sender/chargingprofiles/{session_id}", body=update)
    assert unknown.json()["status_code"] == 4001 and "OCPI-to" in unknown.json()["status_message"], unknown.text
    # Once a second Sender set a profile on the session, an update could be for either: refused, both named.
    profile["response_url"] = f"{emsp.base}/r/1"
    put = emsp.call(hub.base, "PUT", f"receiver/chargingprofiles/{session_id}", to=party_key(cpo), body=profile)
    assert put.json()["status_code"] == 1000, put.text
    refused = _wait_for(lambda: (a := cpo.call(hub.base, "PUT", f"sender/chargingprofiles/{session_id}",
                                               body=update)).json()["status_code"] == 4001 and a)  # fmt: skip
    assert "several parties" in refused.json()["status_message"] and party_key(emsp)[1] in refused.text
    seen_by_scsp = len(scsp.functional())  # an update sent before the second Sender's note was written reached it
    again = cpo.call(hub.base, "PUT", f"sender/chargingprofiles/{session_id}", body=update)
    assert again.json()["status_code"] == 4001 and len(scsp.functional()) == seen_by_scsp and emsp.functional() == []


def test_stopping_while_owner_notes_are_written_finishes_and_keeps_every_note(services: Services) -> None:
    # redis-py drops a cancel that lands inside a pipeline (redis/redis-py#2028): a flusher stopped by cancelling it
    # could go on sleeping forever and the hub never exit (seen: SIGTERM under load, the lifespan stuck here).
    async def run() -> None:
        client = redis.Redis.from_url(services.redis_url)
        prefix = f"{services.redis_prefix}owners-{secrets.token_hex(4)}:"
        noted = 0
        try:
            for round_ in range(20):
                state = RoutingState(client, prefix, owners_period_s=3600)
                async with contextlib.AsyncExitStack() as stack:
                    await stack.enter_async_context(state.running(interval_s=0.0005))
                    until = time.monotonic() + random.uniform(0.001, 0.02)
                    while time.monotonic() < until:
                        state.note_owner("locations", f"L{noted}", ("NL", f"R{round_}"), ())
                        noted += 1
                        await asyncio.sleep(0)
                    closing = asyncio.ensure_future(stack.aclose())
                    done, _ = await asyncio.wait({closing}, timeout=5)
                    assert done, f"round {round_}: the owner-note flusher did not stop"
            stored = await client.hgetall(f"{prefix}owners:locations")
            assert len(stored) == noted
        finally:
            await client.aclose()

    asyncio.run(run())


def test_an_open_cancel_reservation_goes_to_the_cpo_its_own_emsp_reserved_at_though_another_emsp_uses_its_id(
    hub: Hub, connect_party
) -> None:
    # mod_commands.asciidoc, CancelReservation: "the reservation_id that was given by the Sender to the ReserveNow":
    # the eMSP's id, unique for its reservations only. Another eMSP's reservation of the same id at another CPO is not
    # this one, nor is a reservation the canceller never made.
    first, second = connect_party(_roles("EMSP")), connect_party(_roles("EMSP"))
    first_cpo, second_cpo = connect_party(_roles("CPO")), connect_party(_roles("CPO"))
    reservation_id = f"R-{unique_party_id()}"

    def reserve(emsp, cpo) -> None:  # type: ignore[no-untyped-def]
        reserve = {"response_url": f"{emsp.base}/cmd/1", "token": {"uid": "T"}, "location_id": "L",
                   "expiry_date": "2026-12-31T10:00:00Z", "reservation_id": reservation_id}  # fmt: skip
        made = emsp.call(hub.base, "POST", "receiver/commands/RESERVE_NOW", to=party_key(cpo), body=reserve)
        assert made.json()["status_code"] == 1000, made.text

    def cancel(emsp) -> dict:  # type: ignore[no-untyped-def,type-arg]
        body = {"response_url": f"{emsp.base}/cmd/2", "reservation_id": reservation_id}
        return emsp.call(hub.base, "POST", "receiver/commands/CANCEL_RESERVATION", body=body).json()

    reserve(first, first_cpo)
    _wait_for(lambda: cancel(first)["status_code"] == 1000)  # once its owner is noted
    refused = cancel(second)  # it reserved nothing: the first's reservation is not its to cancel
    assert refused["status_code"] == 4001 and "OCPI-to" in refused["status_message"], refused
    reserve(second, second_cpo)
    _wait_for(lambda: cancel(second)["status_code"] == 1000)
    assert cancel(first)["status_code"] == 1000
    for cpo, emsp in ((first_cpo, first), (second_cpo, second)):  # each cancel reached the CPO of its own eMSP
        cancels = [r for r in cpo.functional() if r.path.endswith("/CANCEL_RESERVATION")]
        assert cancels and {r.headers["OCPI-from-party-id"] for r in cancels} == {party_key(emsp)[1]}


def test_an_open_stop_session_goes_to_the_cpo_that_pushed_that_session_to_the_emsp_though_another_cpo_uses_its_id(
    hub: Hub, connect_party
) -> None:
    # Session ids are unique per CPO only (mod_sessions.asciidoc: the id "uniquely identifies the charging session in
    # the CPO platform"); STOP_SESSION and charging preferences name the id alone, but each eMSP was pushed one of them.
    pairs, session_id = _two_cpos_sessions_of_one_id(hub, connect_party)
    bystander = connect_party(_roles("EMSP"))

    def stop(emsp) -> dict:  # type: ignore[no-untyped-def,type-arg]
        body = {"response_url": f"{emsp.base}/cmd/1", "session_id": session_id}
        return emsp.call(hub.base, "POST", "receiver/commands/STOP_SESSION", body=body).json()

    for cpo, emsp in pairs:
        _wait_for(lambda emsp=emsp: stop(emsp)["status_code"] == 1000)  # once the owner index is written
        preferences = emsp.call(hub.base, "PUT", f"sender/sessions/{session_id}/charging_preferences",
                                body={"profile_type": "FAST"})  # fmt: skip
        assert preferences.json()["status_code"] == 1000, preferences.text
        asked = [r for r in cpo.functional() if r.method != "PUT" or "charging_preferences" in r.path]
        assert {r.headers["OCPI-from-party-id"] for r in asked} == {party_key(emsp)[1]}
        assert [r.path.rsplit("/", 1)[-1] for r in asked][-2:] == ["STOP_SESSION", "charging_preferences"]
    refused = stop(bystander)  # pushed neither: the hub cannot tell which CPO's session it means
    assert refused["status_code"] == 4001 and "OCPI-to" in refused["status_message"], refused
    for cpo, _ in pairs:
        assert party_key(cpo)[1] in refused["status_message"]


def _two_cpos_sessions_of_one_id(hub: Hub, connect_party) -> tuple[list, str]:  # type: ignore[no-untyped-def,type-arg]
    """Two CPOs, each with an eMSP it pushed (OCPI-to) its session of one id to: [(cpo, emsp), ...], and that id."""
    pairs = [(connect_party(_roles("CPO")), connect_party(_roles("EMSP"))) for _ in range(2)]
    session_id = f"S-{unique_party_id()}"
    for cpo, emsp in pairs:
        cc, pid = party_key(cpo)
        put = cpo.call(hub.base, "PUT", f"receiver/sessions/{cc}/{pid}/{session_id}", to=party_key(emsp),
                       body={"id": session_id, "country_code": cc, "party_id": pid})  # fmt: skip
        assert put.json()["status_code"] == 1000, put.text
    return pairs, session_id
