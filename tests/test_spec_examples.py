"""The spec's own examples (ocpi/ocpi, tag v2.2.1-d2, examples/: copied to tests/spec_examples/) through the hub.

Every example object of a functional module, pushed by its owner to a party of the other role, reaches that party
byte for byte and is kept so in its routing-log row; the location examples are then answered from the hub's cache
as pushed, and mod_locations.asciidoc's update examples (add an EVSE, a status update, a new name, a tariff on a
connector, an EVSE deleted) change the cached location as the spec says a Receiver applies them.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from storage.log_body import body_of
from tests.conftest import Db, Hub
from tests.test_location_cache import _eventually
from tests.test_publish_allowed_to import _assert_hidden, _assert_shown
from tests.test_routing import _roles, party_key

EXAMPLES = Path(__file__).parent / "spec_examples"
HUB = ("NL", "HUB")


def _example(name: str, owner: tuple[str, str] | None = None) -> dict[str, Any]:
    """An example as the spec writes it; of an object with an owner, owned by owner (a party on the test hub)."""
    document: dict[str, Any] = json.loads((EXAMPLES / name).read_text())
    if owner is not None and "country_code" in document:
        document["country_code"], document["party_id"] = owner
    return document


def _sent(document: dict[str, Any]) -> bytes:
    """The bytes pushed: laid out as the spec's files are, with non-ASCII text kept as UTF-8."""
    return json.dumps(document, indent=2, ensure_ascii=False).encode()


def _push(party, hub: Hub, method: str, path: str, to: tuple[str, str], body: bytes, request_id: str = ""):  # type: ignore[no-untyped-def]
    """A push of body's bytes through the hub, as a request of the party's to the party to; its answer."""
    headers = {"Content-Type": "application/json", "X-Request-ID": request_id or str(uuid.uuid4())}
    return party.call(hub.base, method, path, to=to, content=body, headers=headers)


# (example file, the role that pushes it, its module, the method, the path after the receiver's endpoint URL)
PUSHES = [
    *[(name, "CPO", "locations", "PUT", "{cc}/{pid}/{id}")
      for name in ("location_example.json", "location_example_parking_garage_opening_hours.json",
                   "location_example_uc2_destination_charger.json",
                   "location_example_uc3_destination_charger_not_published.json",
                   "location_example_uc4_limited_visibility.json", "location_example_uc5_home_charge_point.json")],
    ("session_example_1_simple_start.json", "CPO", "sessions", "PUT", "{cc}/{pid}/{id}"),
    ("session_example_2_short_finished.json", "CPO", "sessions", "PUT", "{cc}/{pid}/{id}"),
    ("session_patch_example_charging_period.json", "CPO", "sessions", "PATCH", "{cc}/{pid}/101"),
    ("session_patch_example_total_cost.json", "CPO", "sessions", "PATCH", "{cc}/{pid}/101"),
    *[(path.name, "CPO", "tariffs", "PUT", "{cc}/{pid}/{id}")
      for path in sorted(EXAMPLES.glob("tariff*.json"))],
    ("cdr_example.json", "CPO", "cdrs", "POST", ""),
    ("token_example_1_app_user.json", "EMSP", "tokens", "PUT", "{cc}/{pid}/{uid}"),
    ("token_example_2_full_rfid.json", "EMSP", "tokens", "PUT", "{cc}/{pid}/{uid}"),
    ("token_put_example.json", "EMSP", "tokens", "PUT", "{cc}/{pid}/{uid}"),
    ("token_patch_example.json", "EMSP", "tokens", "PATCH", "{cc}/{pid}/012345678"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "role", "module", "method", "path"), PUSHES, ids=[p[0] for p in PUSHES])
def test_each_spec_example_reaches_its_receiver_byte_for_byte_and_is_logged_as_sent(
    hub: Hub, connect_party, db: Db, name: str, role: str, module: str, method: str, path: str
) -> None:
    other = "EMSP" if role == "CPO" else "CPO"
    sender = connect_party(_roles(role), modules={module: ["SENDER"]})
    receiver = connect_party(_roles(other), modules={module: ["RECEIVER"]})
    owner = party_key(sender)
    document = _example(name, owner)
    body, request_id = _sent(document), str(uuid.uuid4())
    suffix = path.format(cc=owner[0], pid=owner[1], id=document.get("id"), uid=document.get("uid"))
    answer = _push(
        sender, hub, method, f"receiver/{module}/{suffix}".rstrip("/"), party_key(receiver), body, request_id
    )
    created = 201 if method == "POST" else 200  # the test party's answer to a CDR POST, relayed
    assert (answer.status_code, answer.json()["status_code"]) == (created, 1000), answer.text
    [received] = receiver.functional()
    assert (received.method, received.body) == (method, body)
    assert received.path == f"/ocpi/2.2.1/{module}/receiver/{suffix}".rstrip("/")
    rows = db.run(db.fetch("SELECT routing, module, interface, request_body FROM routing_log WHERE request_id = $1",
                           request_id))  # fmt: skip
    assert [(r["routing"], r["module"], r["interface"], body_of(r["request_body"])) for r in rows] == [
        ("direct", module, "receiver", body)
    ]


def _cached(emsp, hub: Hub, owner: tuple[str, str], location_id: str, check) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """The location as the hub answers it from its cache, once check(location) holds (pushes are cached after the
    answer). Named with its owner: the other tests push the same examples, so other CPOs have a location of its id."""
    deadline = time.monotonic() + 5
    query = f"country_code={owner[0]}&party_id={owner[1]}"
    while True:
        answer = emsp.call(hub.base, "GET", f"sender/locations/{location_id}?{query}", to=HUB)
        location = answer.json().get("data") if answer.status_code == 200 else None
        if location is not None and check(location):
            assert answer.headers["OCPI-from-party-id"] == "HUB"  # answered by the hub, not the CPO
            return location
        assert time.monotonic() < deadline, answer.text
        time.sleep(0.05)


@pytest.mark.parametrize(
    "name",
    ["location_example.json", "location_example_parking_garage_opening_hours.json",
     "location_example_uc2_destination_charger.json"],
)  # fmt: skip
def test_a_spec_location_example_is_answered_from_the_cache_as_it_was_pushed(
    hub: Hub, connect_party, name: str
) -> None:
    cpo = connect_party(_roles("CPO"), modules={"locations": ["SENDER"]})
    emsp = connect_party(_roles("EMSP"), modules={"locations": ["RECEIVER"]})
    location = _example(name, party_key(cpo))
    cc, pid = party_key(cpo)
    answer = _push(cpo, hub, "PUT", f"receiver/locations/{cc}/{pid}/{location['id']}", party_key(emsp), _sent(location))
    assert answer.json()["status_code"] == 1000, answer.text
    assert _cached(emsp, hub, party_key(cpo), location["id"], lambda cached: True) == location
    assert [r for r in cpo.functional() if r.method == "GET"] == []


def test_the_spec_location_update_examples_change_the_cached_location_as_a_receiver_applies_them(
    hub: Hub, connect_party
) -> None:
    cpo = connect_party(_roles("CPO"), modules={"locations": ["SENDER"]})
    emsp = connect_party(_roles("EMSP"), modules={"locations": ["RECEIVER"]})
    cc, pid = party_key(cpo)
    location = _example("location_example.json", (cc, pid))
    url = f"receiver/locations/{cc}/{pid}/{location['id']}"

    def push(method: str, suffix: str, name: str) -> None:
        answer = _push(cpo, hub, method, url + suffix, party_key(emsp), _sent(_example(name, (cc, pid))))
        assert answer.json()["status_code"] == 1000, answer.text

    push("PUT", "", "location_example.json")
    _cached(emsp, hub, party_key(cpo), location["id"], lambda cached: True)
    # "Example: add an EVSE": the full EVSE put at its own URL (the example's uid is 3256, which LOC1 has: replaced)
    added = _example("location_put_example_add_evse.json")
    push("PUT", "/3256", "location_put_example_add_evse.json")
    cached = _cached(emsp, hub, party_key(cpo), location["id"], lambda c: c["evses"][0]["evse_id"] == added["evse_id"])
    assert cached["evses"][0] == added and cached["evses"][1] == location["evses"][1]
    assert cached["last_updated"] == added["last_updated"]  # the parent takes the new last_updated
    # "Example: a simple status update" of an EVSE
    push("PATCH", "/3257", "location_patch_example_status.json")
    cached = _cached(emsp, hub, party_key(cpo), location["id"], lambda c: c["evses"][1]["status"] == "CHARGING")
    assert cached["evses"][1] == location["evses"][1] | _example("location_patch_example_status.json")
    # "Example: change the location name"
    push("PATCH", "", "location_patch_example_location.json")
    cached = _cached(emsp, hub, party_key(cpo), location["id"], lambda c: c["name"] == "Interparking Gent Zuid")
    assert cached["address"] == location["address"] and len(cached["evses"]) == 2
    # "Example: set tariff update" of a connector: the EVSE and the location take its last_updated too
    patch = _example("location_patch_example_tariff.json")
    push("PATCH", "/3257/1", "location_patch_example_tariff.json")
    cached = _cached(
        emsp,
        hub,
        party_key(cpo),
        location["id"],
        lambda c: c["evses"][1]["connectors"][0]["tariff_ids"] == patch["tariff_ids"],
    )
    assert cached["evses"][1]["connectors"][0] == location["evses"][1]["connectors"][0] | patch
    assert cached["evses"][1]["last_updated"] == cached["last_updated"] == patch["last_updated"]
    # "Example: delete an EVSE": its status REMOVED; the EVSE stays listed, as the spec's EVSE status says
    push("PATCH", "/3256", "location_patch_example_remove_evse.json")
    cached = _cached(emsp, hub, party_key(cpo), location["id"], lambda c: c["evses"][0]["status"] == "REMOVED")
    assert [evse["uid"] for evse in cached["evses"]] == ["3256", "3257"]


def test_the_spec_limited_visibility_example_is_shown_to_the_emsp_of_the_spec_token_it_names_and_no_other(
    hub: Hub, connect_party
) -> None:
    cpo = connect_party(_roles("CPO"), modules={"locations": ["SENDER"], "tokens": ["RECEIVER"]})
    holder, other = (connect_party(_roles("EMSP"), modules={"locations": ["RECEIVER"], "tokens": ["SENDER"]})
                     for _ in range(2))  # fmt: skip
    owner = party_key(cpo)
    # use case 4: publish false, shown to the tokens in publish_allowed_to, one of them {uid 12345678905880, RFID}
    location = _example("location_example_uc4_limited_visibility.json", owner)
    answer = _push(
        cpo,
        hub,
        "PUT",
        f"receiver/locations/{owner[0]}/{owner[1]}/{location['id']}",
        party_key(holder),
        _sent(location),
    )
    assert answer.json()["status_code"] == 1000, answer.text
    _eventually(lambda: _assert_shown(cpo, hub, owner, location["id"]))  # its owner always sees it
    _assert_hidden(holder, hub, owner, location["id"])
    # the eMSP publishes token_example_2_full_rfid (uid 12345678905880, type RFID) to the CPO through the hub
    token = _example("token_example_2_full_rfid.json", party_key(holder))
    cc, pid = party_key(holder)
    answer = _push(holder, hub, "PUT", f"receiver/tokens/{cc}/{pid}/{token['uid']}", owner, _sent(token))
    assert answer.json()["status_code"] == 1000, answer.text
    _eventually(lambda: _assert_shown(holder, hub, owner, location["id"]))
    _assert_hidden(other, hub, owner, location["id"])
