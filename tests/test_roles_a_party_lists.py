"""The roles a party's credentials list (credentials.asciidoc: roles, the "List of the roles this party provides"): a
connected role a credentials PUT leaves out is SUSPENDED, pushed and routed to no more, and CONNECTED once listed again;
a PUT listing none of its roles is refused (mod_hub_client_info.asciidoc: PLANNED, a party that "has never been
connected"; SUSPENDED, "Party is now longer active")."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import asyncpg
import httpx

from storage.migrate import migrate
from tests.conftest import SECRET_KEY, Hub
from tests.log_rows import migrate_up_to
from tests.parties import token_header
from tests.test_hub_client_info import _pushes_about, _wait_for
from tests.test_routing import _roles, party_key


def test_a_role_left_out_of_a_credentials_put_is_suspended_pushed_and_no_longer_routed(hub: Hub, connect_party) -> None:
    # credentials.asciidoc: roles is the "List of the roles this party provides", and a PUT updates it.
    # mod_hub_client_info.asciidoc: SUSPENDED, "Party is now longer active"; PLANNED "has never been connected".
    watcher = connect_party(_roles("EMSP"))
    kept, dropped = _roles("CPO"), _roles("CPO")
    platform = connect_party(kept, dropped)
    assert _wait_for(lambda: [p["status"] for p in _pushes_about(watcher, dropped[1:])] == ["PLANNED", "CONNECTED"])

    def put_credentials(*roles: tuple[str, str, str]) -> dict:
        platform.roles = list(roles)
        answer = httpx.put(f"{hub.base}/ocpi/2.2.1/credentials", headers=token_header(platform.hub_token or ""),
                           json=platform.credentials(platform.token_b)).json()  # fmt: skip
        if answer["status_code"] == 1000:
            platform.hub_token = answer["data"]["token"]
        return answer

    since = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert put_credentials(kept)["status_code"] == 1000
    assert _wait_for(lambda: [p["status"] for p in _pushes_about(watcher, dropped[1:])][2:] == ["SUSPENDED"])
    refused = watcher.call(hub.base, "GET", "sender/locations", to=dropped[1:]).json()
    assert refused["status_code"] == 4003, refused
    assert refused["status_message"].endswith(
        "is no longer among the roles of its platform's credentials (status SUSPENDED)"
    ), refused
    assert platform.functional() == []  # not forwarded
    # Nor can the platform send as it any more (it still holds it, from its invitation).
    spoofed = platform.call(hub.base, "GET", "sender/tokens", from_=dropped[1:], to=watcher.roles[0][1:]).json()
    assert spoofed["status_code"] == 2001 and "status SUSPENDED" in spoofed["status_message"], spoofed
    assert watcher.functional() == []
    listed = httpx.get(f"{hub.base}/ocpi/2.2.1/sender/hubclientinfo", params={"date_from": since},
                       headers=token_header(watcher.hub_token or "")).json()["data"]  # fmt: skip
    assert [(i["party_id"], i["status"]) for i in listed if i["party_id"] in (kept[2], dropped[2])] == [
        (dropped[2], "SUSPENDED")
    ]
    assert watcher.call(hub.base, "GET", "sender/locations", to=kept[1:]).json()["status_code"] == 1000
    assert [r.headers["OCPI-to-party-id"] for r in platform.functional()] == [kept[2]]
    # Listed again, the role is CONNECTED again; a role the operator never granted is still refused with 2001.
    assert put_credentials(kept, dropped)["status_code"] == 1000
    assert _wait_for(lambda: [p["status"] for p in _pushes_about(watcher, dropped[1:])][3:] == ["CONNECTED"])
    assert watcher.call(hub.base, "GET", "sender/locations", to=dropped[1:]).json()["status_code"] == 1000
    foreign = _roles("CPO")
    refused = put_credentials(kept, foreign)
    assert refused["status_code"] == 2001 and f"CPO NL-{foreign[2]}" in refused["status_message"], refused


def test_the_upgrade_suspends_the_roles_dropped_before_it_and_pushes_that(empty_database: str) -> None:
    # Migration 0033: before it, a dropped role went back to PLANNED; one that was CONNECTED once (pushed so) becomes
    # SUSPENDED, pushed to the others. A role never connected stays PLANNED, as do the roles of an invited platform.
    platforms = {"P": "REGISTERED", "Q": "INVITED"}
    before = [  # platform, party id, status, the statuses pushed of it (all delivered)
        ("P", "KPT", "CONNECTED", ["PLANNED", "CONNECTED"]),
        ("P", "DRP", "PLANNED", ["PLANNED", "CONNECTED", "PLANNED"]),  # dropped by a credentials PUT
        ("P", "NVR", "PLANNED", ["PLANNED"]),  # never listed
        ("Q", "INV", "PLANNED", ["PLANNED"]),
    ]

    async def run() -> tuple[list[tuple], list[tuple]]:
        conn = await asyncpg.connect(empty_database)
        try:
            await migrate_up_to(conn, 32)
            ids = {name: await conn.fetchval("INSERT INTO platform (name, state) VALUES ($1, $2) RETURNING id",
                                             name, state) for name, state in platforms.items()}  # fmt: skip
            for name, party_id, status, pushed in before:
                await conn.execute("INSERT INTO party_role (platform_id, role, country_code, party_id, status) "
                                   "VALUES ($1, 'CPO', 'NL', $2, $3)", ids[name], party_id, status)  # fmt: skip
                await conn.executemany("INSERT INTO client_info_push (platform_id, role, country_code, party_id, "
                                       "status, last_updated, delivered_at) VALUES ($1, 'CPO', 'NL', $2, $3, now(), "
                                       "now())", [(ids[name], party_id, s) for s in pushed])  # fmt: skip
            await migrate(conn, SECRET_KEY)
            roles = await conn.fetch("SELECT party_id, status FROM party_role ORDER BY id")
            pending = await conn.fetch("SELECT party_id, status FROM client_info_push WHERE delivered_at IS NULL")
            return [tuple(r) for r in roles], [tuple(r) for r in pending]
        finally:
            await conn.close()

    roles, pending = asyncio.run(run())
    assert roles == [("KPT", "CONNECTED"), ("DRP", "SUSPENDED"), ("NVR", "PLANNED"), ("INV", "PLANNED")]
    assert pending == [("DRP", "SUSPENDED")]


def test_a_credentials_put_listing_none_of_its_roles_is_refused_so_the_party_is_still_pushed_every_change(
    hub: Hub, connect_party, db
) -> None:
    # credentials.asciidoc: roles is "+" (one or more), each one the platform holds (match_roles): a PUT cannot leave
    # a party with no CONNECTED role, unpushed, with nothing marking what it missed (drop_unlisted_roles needs no mark).
    watcher = connect_party(_roles("EMSP"))
    held = watcher.credentials(watcher.token_b)["roles"]
    foreign = [held[0] | {"party_id": _roles("EMSP")[2]}]
    for roles, said in (([], "at `$.roles`"), (foreign, "roles not granted to this platform")):
        answer = httpx.put(f"{hub.base}/ocpi/2.2.1/credentials", headers=token_header(watcher.hub_token or ""),
                           json=watcher.credentials(watcher.token_b) | {"roles": roles}).json()  # fmt: skip
        assert answer["status_code"] == 2001 and said in answer["status_message"], answer
    statuses = "SELECT status FROM party_role WHERE party_id = $1"
    assert [r["status"] for r in db.run(db.fetch(statuses, watcher.roles[0][2]))] == ["CONNECTED"]
    key = party_key(connect_party(_roles("CPO")))
    assert _wait_for(lambda: [p["status"] for p in _pushes_about(watcher, key)] == ["PLANNED", "CONNECTED"])
