"""A CDR or a location pushed through the hub is its sender's by what its body says too: a CDR naming another CPO
as its owner, or a location naming no owner (which the hub's cache would serve as it came), is refused with 2001 and
nothing is forwarded. Found by a CPO developer's walkthrough: the hub forwarded a CDR of 'BE-BEC' from NL-CPW."""

from __future__ import annotations

import uuid

from tests.conftest import Db, Hub
from tests.parties import Party
from tests.test_routing import LOCATION, party_key


def _row(db: Db, request_id: str) -> dict[str, object]:
    [row] = db.run(db.fetch("SELECT routing, ocpi_status_code, from_party_id, to_party_id FROM routing_log "
                            "WHERE request_id = $1", request_id))  # fmt: skip
    return dict(row)


def test_a_cdr_naming_another_cpo_as_its_owner_is_refused_and_not_forwarded(
    cpo_and_emsp: tuple[Party, Party], hub: Hub, db: Db
) -> None:
    cpo, emsp = cpo_and_emsp
    cc, pid = party_key(cpo)
    refusals = [
        (("BE", "BEC"), "the country_code in the body (BE) differs from the sending party's (NL)"),
        ((cc, "XYZ"), f"the party_id in the body (XYZ) differs from the sending party's ({pid})"),
    ]
    for owner, said in refusals:
        request_id = str(uuid.uuid4())
        cdr = {"id": "CDR-OTHER", "country_code": owner[0], "party_id": owner[1]}
        answer = cpo.call(hub.base, "POST", "receiver/cdrs", to=party_key(emsp), body=cdr,
                          headers={"X-Request-ID": request_id})  # fmt: skip
        assert (answer.status_code, answer.json()["status_code"]) == (200, 2001), answer.text
        assert answer.json()["status_message"] == said
        assert _row(db, request_id) == {"routing": "rejected", "ocpi_status_code": 2001, "from_party_id": pid,
                                        "to_party_id": party_key(emsp)[1]}  # fmt: skip
    answer = cpo.call(hub.base, "POST", "receiver/cdrs", to=party_key(emsp), content=b"not json")
    assert (answer.status_code, answer.json()["status_code"]) == (400, 2001), answer.text
    assert emsp.functional() == []
    # its own, in any case (CiString), or naming none (relayed for the receiver to judge, as before)
    for cdr in ({"id": "CDR-OWN", "country_code": cc.lower(), "party_id": pid.lower()}, {"id": "CDR-BARE"}):
        assert cpo.call(hub.base, "POST", "receiver/cdrs", to=party_key(emsp), body=cdr).status_code == 201
    assert [r.body for r in emsp.functional()] == [r.body for r in emsp.functional()[:2]] and len(
        emsp.functional()
    ) == 2


def test_a_location_put_naming_no_owner_is_refused_as_the_cache_would_serve_it_without_one(
    cpo_and_emsp: tuple[Party, Party], hub: Hub
) -> None:
    cpo, emsp = cpo_and_emsp
    cc, pid = party_key(cpo)
    for missing in ("country_code", "party_id"):
        location = {k: v for k, v in (LOCATION | {"party_id": pid, "id": "LOC-BARE"}).items() if k != missing}
        answer = cpo.call(hub.base, "PUT", f"receiver/locations/{cc}/{pid}/LOC-BARE", to=party_key(emsp),
                          body=location)  # fmt: skip
        assert answer.json()["status_code"] == 2001, answer.text
        expected = cc if missing == "country_code" else pid
        assert answer.json()["status_message"] == f"the body names no {missing}: the object's owner, the URL's " \
                                                  f"{expected}, is required"  # fmt: skip
    patch = {"last_updated": "2026-12-05T10:00:00Z", "name": "renamed"}  # a PATCH carries only what changed
    pushed = cpo.call(hub.base, "PUT", f"receiver/locations/{cc}/{pid}/LOC-BARE", to=party_key(emsp),
                      body=LOCATION | {"party_id": pid, "id": "LOC-BARE"})  # fmt: skip
    assert pushed.json()["status_code"] == 1000
    patched = cpo.call(hub.base, "PATCH", f"receiver/locations/{cc}/{pid}/LOC-BARE", to=party_key(emsp), body=patch)
    assert patched.json()["status_code"] == 1000, patched.text
    assert [r.method for r in emsp.functional()] == ["PUT", "PATCH"]
