"""The body the hub forwards with a command or charging profile holds one response_url, the hub's own, or the hub
refuses the request (2001) and forwards nothing. Found by a security review: with the key sent twice, the first value
reached the CPO unchecked; with the response_url escaped ("http:\\/\\/...") beside another field holding the plain
URL, the hub rewrote that other field."""

from __future__ import annotations

import json

import pytest
import redis as redis_sync

from tests.conftest import Hub, Services
from tests.test_routing import _roles, party_key


@pytest.mark.parametrize(
    ("body", "said"),
    [
        ('{{"response_url": "http://169.254.169.254/x", "response_url": "{url}", "location_id": "L1"}}', "2 times"),
        ('{{"response\\u005furl": "http://169.254.169.254/x", "response_url": "{url}"}}', "2 times"),
        ('{{"response_url": "{escaped}", "note": "{url}", "location_id": "L1"}}', "in another field too"),
        ('{{"response_url": "{url}", "RESPONSE_URL": "http://169.254.169.254/x", "location_id": "L1"}}', "2 times"),
    ],
    ids=["key-twice", "key-twice-escaped", "escaped-beside-plain", "key-twice-in-another-case"],
)
def test_a_command_whose_forwarded_body_would_hold_a_response_url_not_the_hubs_is_refused(
    hub: Hub, connect_party, services: Services, body: str, said: str
) -> None:
    emsp, cpo = connect_party(_roles("EMSP")), connect_party(_roles("CPO"))
    kept = _results_kept(services)
    url = f"{emsp.base}/ocpi/2.2.1/commands/sender/START_SESSION/1"
    content = body.format(url=url, escaped=url.replace("/", "\\/")).encode()
    answer = emsp.call(hub.base, "POST", "receiver/commands/START_SESSION", to=party_key(cpo), content=content,
                       headers={"Content-Type": "application/json"})  # fmt: skip
    assert (answer.status_code, answer.json()["status_code"]) == (200, 2001), answer.text
    assert said in answer.json()["status_message"]
    assert cpo.functional() == []
    assert _results_kept(services) == kept  # nothing kept for a result that cannot come


def _results_kept(services: Services) -> int:
    client = redis_sync.Redis.from_url(services.redis_url)
    try:
        return sum(1 for _ in client.scan_iter(f"{services.redis_prefix}results:*"))
    finally:
        client.close()


def test_a_command_with_escapes_or_a_response_url_key_elsewhere_goes_on_with_the_hubs_response_url(
    hub: Hub, connect_party
) -> None:
    emsp, cpo = connect_party(_roles("EMSP")), connect_party(_roles("CPO"))
    url = f"{emsp.base}/ocpi/2.2.1/commands/sender/START_SESSION/1"
    escaped = url.replace("/", "\\/")
    for body in [
        f'{{"response_url": "{escaped}", "note": "{escaped}", "location_id": "L1"}}',  # escaped throughout
        f'{{"note": "a \\"quote\\"", "response_url": "{url}", "location_id": "L1"}}',
        f'{{"token": {{"response_url": "nested"}}, "response_url" :\n "{url}", "location_id": "L1"}}',
    ]:
        answer = emsp.call(hub.base, "POST", "receiver/commands/START_SESSION", to=party_key(cpo),
                           content=body.encode(), headers={"Content-Type": "application/json"})  # fmt: skip
        assert answer.json()["status_code"] == 1000, (body, answer.text)
        forwarded = json.loads(cpo.functional()[-1].body, object_pairs_hook=list)
        [ours] = [value for key, value in forwarded if key == "response_url"]
        assert ours.startswith(f"{hub.base}/ocpi/2.2.1/results/"), body
    # The response_url escaped otherwise than the hub writes it: the object is written again, every other value as the
    # eMSP wrote it (a number 10.50 was forwarded as 10.5).
    body = f'{{"response_url": "{escaped}", "price": 10.50, "token": {{"uid": "A", "n": 1.0}}, "location_id": "L1"}}'
    answer = emsp.call(hub.base, "POST", "receiver/commands/START_SESSION", to=party_key(cpo), content=body.encode(),
                       headers={"Content-Type": "application/json"})  # fmt: skip
    assert answer.json()["status_code"] == 1000, answer.text
    forwarded = cpo.functional()[-1].body
    assert b'"price":10.50' in forwarded and b'"token":{"uid": "A", "n": 1.0}' in forwarded, forwarded


def test_a_charging_profile_get_naming_response_url_twice_in_any_case_is_refused_and_not_forwarded(
    hub: Hub, connect_party
) -> None:
    # ASP.NET binds ?RESPONSE_URL=...&response_url=... case-insensitively and takes the first: the one the hub did not
    # replace with its own.
    scsp, cpo = connect_party(_roles("SCSP")), connect_party(_roles("CPO"))
    own = f"{scsp.base}/r"
    query = f"duration=900&RESPONSE_URL=http://169.254.169.254/x&response_url={own}"
    answer = scsp.call(hub.base, "GET", f"receiver/chargingprofiles/S1?{query}", to=party_key(cpo))
    assert answer.json()["status_code"] == 2001, answer.text
    assert "response_url more than once, in any case" in answer.json()["status_message"]
    assert cpo.functional() == []
