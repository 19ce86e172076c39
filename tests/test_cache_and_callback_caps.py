"""What one party can make the hub keep or build is capped (security review, finding 3): a cached location's size, a
GET All page's bytes, and a response_url's length."""

from __future__ import annotations

import json

from storage.location_cache import PAGE_BYTES
from storage.location_document import MAX_DOCUMENT_BYTES
from tests.conftest import Hub
from tests.test_location_cache import HUB, _eventually, _get, _location, _push
from tests.test_routing import _roles, party_key


def _padded(owner: tuple[str, str], location_id: str, updated: str, size: int) -> dict:
    """A location of about size bytes as JSON (a long name: what a CPO's bug or a hostile CPO sends)."""
    plain = _location(owner, location_id, updated)
    return plain | {"name": "x" * (size - len(json.dumps(plain)) - 12)}


def test_a_location_larger_than_the_cache_keeps_is_relayed_but_not_cached_and_its_row_says_so(
    hub: Hub, connect_party, db
) -> None:
    cpo, emsp = connect_party(_roles("CPO")), connect_party(_roles("EMSP"))
    owner = party_key(cpo)
    _push(cpo, emsp, hub, "PUT", "BIG", _location(owner, "BIG", "2026-12-01T10:00:00Z", name="small"))
    _eventually(lambda: _assert_name(emsp, hub, "BIG", "small"))
    large = _padded(owner, "BIG", "2026-12-01T11:00:00Z", MAX_DOCUMENT_BYTES + 1000)
    answer = _push(cpo, emsp, hub, "PUT", "BIG", large)  # the receiver's answer, as always
    [received] = [r for r in emsp.functional() if r.method == "PUT" and len(r.body) > MAX_DOCUMENT_BYTES]
    assert json.loads(received.body) == large
    request_id = answer.headers["X-Request-ID"]
    error = db.run(db.fetchval("SELECT error FROM routing_log WHERE request_id = $1", request_id))
    assert "more than the 1,000,000 the hub's cache keeps; relayed, but the cache keeps its version before" in error
    assert '"location_cache_too_large"' in hub.log()
    # A PATCH that would make the cached one that large is not applied either; the next one (in order) still is.
    grow = {"name": "y" * MAX_DOCUMENT_BYTES, "last_updated": "2026-12-01T12:00:00Z"}
    _push(cpo, emsp, hub, "PATCH", "BIG", grow)
    _push(cpo, emsp, hub, "PATCH", "BIG/E1", {"status": "CHARGING", "last_updated": "2026-12-01T13:00:00Z"})
    _eventually(lambda: _assert_name(emsp, hub, "BIG", "small", "CHARGING"))


def _assert_name(party, hub: Hub, location_id: str, name: str, status: str = "AVAILABLE") -> None:  # type: ignore[no-untyped-def]
    answer = _get(party, hub, f"sender/locations/{location_id}")
    assert answer.json()["status_code"] == 1000, answer.text[:200]
    assert answer.json()["data"]["evses"][0]["status"] == status
    assert answer.json()["data"]["name"] == name, answer.text[:200]


def test_a_get_all_page_ends_before_its_bytes_pass_the_budget_and_links_on(hub: Hub, connect_party) -> None:
    cpo, emsp = connect_party(_roles("CPO")), connect_party(_roles("EMSP"))
    owner = party_key(cpo)
    size = MAX_DOCUMENT_BYTES - 100_000  # four fit a page's budget, the fifth would pass it
    assert 4 * size <= PAGE_BYTES < 5 * size
    for n in range(6):
        _push(cpo, emsp, hub, "PUT", f"P{n}", _padded(owner, f"P{n}", f"2026-12-01T10:0{n}:00Z", size))
    query = f"sender/locations?country_code={owner[0]}&party_id={owner[1]}&limit=10"
    _eventually(lambda: _assert_total(emsp, hub, query, 6))
    first = _get(emsp, hub, query)
    assert [loc["id"] for loc in first.json()["data"]] == ["P0", "P1", "P2", "P3"]
    # X-Limit is what this page could hold, so that a client stepping its offset by X-Limit skips none; the Link
    # leads on from where it ended
    assert (first.headers["X-Limit"], first.headers["X-Total-Count"]) == ("4", "6")
    assert "offset=4&limit=10" in first.headers["Link"]
    second = _get(emsp, hub, first.headers["Link"].split(">")[0].lstrip("<"))
    assert [loc["id"] for loc in second.json()["data"]] == ["P4", "P5"] and "Link" not in second.headers


def _assert_total(party, hub: Hub, query: str, total: int) -> None:  # type: ignore[no-untyped-def]
    assert _get(party, hub, query).headers.get("X-Total-Count") == str(total)


def test_a_response_url_longer_than_an_ocpi_url_is_refused_with_2001_and_nothing_is_forwarded(
    hub: Hub, connect_party
) -> None:
    emsp, cpo = connect_party(_roles("EMSP")), connect_party(_roles("CPO"))
    base = f"{emsp.base}/cb/"
    for length, status in ((255, 1000), (256, 2001)):
        body = {"response_url": base + "a" * (length - len(base)), "location_id": "L1", "token": {"uid": "T1"},
                "reservation_id": "R1", "expiry_date": "2099-01-01T00:00:00Z"}  # fmt: skip
        answer = emsp.call(hub.base, "POST", "receiver/commands/RESERVE_NOW", to=party_key(cpo), body=body)
        assert answer.json()["status_code"] == status, answer.text
    assert "response_url has 256 characters; an OCPI URL has at most 255" in answer.json()["status_message"]
    assert len(cpo.functional()) == 1  # the one of 255 characters
    query = f"duration=900&response_url={base}{'b' * (256 - len(base))}"
    answer = emsp.call(hub.base, "GET", f"receiver/chargingprofiles/S1?{query}", to=party_key(cpo))
    assert (answer.status_code, answer.json()["status_code"]) == (200, 2001), answer.text
    assert len(cpo.functional()) == 1


def test_a_location_id_of_two_cpos_one_too_large_to_cache_is_refused_naming_both_not_answered_with_the_other(
    hub: Hub, connect_party
) -> None:
    # The cache held one CPO's copy, and a GET of the id alone was answered with it, 1000: the eMSP could not tell that
    # another CPO has a location of that id, whose copy (too large) the hub does not keep. It names both, as when both
    # copies are cached, and one chosen by ?country_code=&party_id= is still answered.
    small_cpo, large_cpo, emsp = (
        connect_party(_roles("CPO")),
        connect_party(_roles("CPO")),
        connect_party(_roles("EMSP")),
    )
    small, large = party_key(small_cpo), party_key(large_cpo)
    _push(small_cpo, emsp, hub, "PUT", "TWICE", _location(small, "TWICE", "2026-12-01T10:00:00Z", name="small"))
    too_large = _padded(large, "TWICE", "2026-12-01T10:00:00Z", MAX_DOCUMENT_BYTES + 1000)
    _push(large_cpo, emsp, hub, "PUT", "TWICE", too_large)

    def refused(to: tuple[str, str] | None) -> None:
        answer = emsp.call(hub.base, "GET", "sender/locations/TWICE", to=to).json()
        assert answer["status_code"] == 2001, answer
        assert answer["status_message"].startswith("several CPOs have a location TWICE ("), answer
        assert all(f"{cc}-{pid}" in answer["status_message"] for cc, pid in (small, large)), answer

    _eventually(lambda: refused(HUB))  # the owner index is written in batches
    refused(None)  # no OCPI-to: the hub answers from its cache as well
    chosen = _get(emsp, hub, f"sender/locations/TWICE?country_code={small[0]}&party_id={small[1]}")
    assert (chosen.json()["status_code"], chosen.json()["data"]["name"]) == (1000, "small"), chosen.text[:200]
