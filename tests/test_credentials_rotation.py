"""The operator renews a platform's credentials both ways (credentials.asciidoc, Updating), and the hub fetches a
platform's endpoints again after a rotation it could not finish: the admin API's side."""

from __future__ import annotations

import base64
import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from storage.log_body import body_of
from tests.conftest import Hub, unique_party_id
from tests.log_rows import calls_of, own_conversation, own_messages_wrong
from tests.parties import Party, envelope, token_header
from tests.test_admin_and_cli import _cli, _platform_id
from tests.test_routing import _roles, party_key


def _rotate(hub: Hub, platform_id: int) -> httpx.Response:
    with hub.admin() as admin:
        return admin.post(f"/admin/api/parties/{platform_id}/credentials")


def _rotations(hub: Hub, platform_id: int) -> list[dict]:
    with hub.admin() as admin:
        trail = admin.get("/admin/api/audit-trail").json()["items"]
    return [t["parameters"] for t in trail if t["action"] == "rotate_credentials"
            and t["parameters"]["platform_id"] == platform_id]  # fmt: skip


def _credentials_messages(db, party_id: str) -> list[dict]:  # type: ignore[no-untyped-def]
    rows = db.run(db.fetch("SELECT routing, module, method, http_status, ocpi_status_code, error, request_body, "
                           "response_body FROM routing_log WHERE module = 'credentials' AND to_party_id = $1",
                           party_id))  # fmt: skip
    return [dict(r) for r in rows]


def _listed(hub: Hub, platform_id: int) -> dict:
    """The platform's first role as GET /admin/api/parties lists it."""
    with hub.admin() as admin:
        items = admin.get("/admin/api/parties").json()["items"]
    return next(i for i in items if i["platform_id"] == platform_id)


def console_page(hub: Hub, path: str, form: dict[str, str] | None = None, status: int = 200) -> str:
    """A console page as the signed-in admin sees it (after posting form to it, if given): its HTML, each run of white
    space one space."""
    with httpx.Client(base_url=hub.base, timeout=30) as console:
        assert console.post("/console/sign-in", data={"token": hub.admin_token}).status_code == 303
        page = console.post(path, data=form) if form else console.get(path)
    assert page.status_code == status, page.text
    return " ".join(page.text.split())


def _tokens_of(db, platform_id: int) -> int:  # type: ignore[no-untyped-def]
    return db.run(db.fetchval("SELECT count(*) FROM credentials_token WHERE platform_id = $1", platform_id))


def _replaced(hub: Hub, token: str, platform: str) -> bool:
    """Whether a call with token is refused saying it is a token C of platform that a credentials update replaced."""
    answer = httpx.get(f"{hub.base}/ocpi/2.2.1/credentials", headers=token_header(token))
    said = answer.json()["status_message"]
    return answer.status_code == 401 and said.startswith(f"this is a token C of platform {platform} that an update")


def test_the_operator_rotates_a_platforms_tokens_and_both_sides_use_only_the_new_ones(
    hub: Hub, connect_party, db
) -> None:
    emsp = connect_party(_roles("EMSP"))
    cpo = connect_party(_roles("CPO"))
    key = party_key(cpo)
    platform_id = _platform_id(hub, key)
    old_hub_token, old_token_b = cpo.hub_token, cpo.token_b
    answer = _rotate(hub, platform_id)
    assert answer.status_code == 200, answer.text
    assert answer.json() | {"version": None, "endpoints": None} == {
        "platform_id": platform_id, "name": cpo.name, "rotated": True, "version": None, "endpoints": None,
        "token_encoding": "base64", "token_b_renewed": True}  # fmt: skip
    # credentials.asciidoc, PUT: the hub sent its credentials with a new token C, authenticated with the old token B,
    # and the party answered with a new token B.
    [put] = [r for r in cpo.received if (r.method, r.path) == ("PUT", "/ocpi/2.2.1/credentials")]
    assert put.headers["Authorization"] == token_header(old_token_b)["Authorization"]
    assert cpo.hub_token not in (None, old_hub_token) and cpo.token_b != old_token_b
    # The party reaches the hub with the new token C only; the old one is refused saying it was replaced.
    for token, status in ((old_hub_token, 401), (cpo.hub_token, 200)):
        assert httpx.get(f"{hub.base}/ocpi/2.2.1/credentials", headers=token_header(token)).status_code == status
    assert _replaced(hub, old_hub_token or "", cpo.name)
    cc, pid = key
    pushed = cpo.call(hub.base, "GET", f"receiver/locations/{cc}/{pid}/LOC1", to=party_key(emsp))
    assert pushed.status_code == 200 and pushed.json()["status_code"] == 1000, pushed.text
    # The hub reaches the party with its new token B (the party takes no other).
    pulled = emsp.call(hub.base, "GET", "sender/locations", to=key)
    assert pulled.status_code == 200 and pulled.json()["status_code"] == 1000, pulled.text
    assert cpo.functional()[-1].headers["Authorization"] == token_header(cpo.token_b)["Authorization"]
    assert _tokens_of(db, platform_id) == 1
    [message] = _credentials_messages(db, pid)
    assert (message["routing"], message["method"], message["http_status"], message["ocpi_status_code"]) == (
        "hub", "PUT", 200, 1000)  # fmt: skip
    assert _rotations(hub, platform_id) == [{"platform_id": platform_id, "name": cpo.name}]
    # No token in the answer, the routing log (auditors read it) or the hub's log.
    logged = (body_of(message["request_body"]) + body_of(message["response_body"])).decode()
    assert logged.count('"token":"(not logged)"') == 2  # the hub's credentials and the party's answer
    seen = answer.text + hub.log() + logged
    assert not [t for t in (old_hub_token, cpo.hub_token, old_token_b, cpo.token_b) if t and t in seen]


def test_a_rotation_the_party_answered_with_the_token_b_it_had_says_so(hub: Hub, connect_party) -> None:
    # Found by a CPO developer's walkthrough: "rotated": true, and nothing else, though the party's token B, which a
    # rotation after a leak of the hub's database is to end, still worked.
    cpo = connect_party(_roles("CPO"), keeps_token_b=True)
    platform_id = _platform_id(hub, party_key(cpo))
    old_hub_token, token_b = cpo.hub_token, cpo.token_b
    answer = _rotate(hub, platform_id)
    assert answer.status_code == 200, answer.text
    assert (answer.json()["rotated"], answer.json()["token_b_renewed"]) == (True, False)
    assert cpo.token_b == token_b and cpo.hub_token != old_hub_token  # token C was renewed all the same
    assert '"party_kept_its_token_b"' in hub.log()


def test_a_rotation_answered_with_a_token_b_the_hub_issued_keeps_calling_the_party_with_its_old_token_b(
    hub: Hub, connect_party
) -> None:
    # Security review, finding 6: sent raw, "Token base64(C)" is read by the hub as the platform holding token C.
    emsp = connect_party(_roles("EMSP"))
    cpo = connect_party(_roles("CPO"))
    platform_id = _platform_id(hub, party_key(cpo))
    encoded = base64.b64encode((emsp.hub_token or "").encode()).decode()
    theirs = json.dumps(envelope(cpo.credentials(encoded))).encode()
    cpo.canned[("PUT", "/ocpi/2.2.1/credentials")] = (200, theirs, {"Content-Type": "application/json"})
    answer = _rotate(hub, platform_id)
    assert answer.status_code == 502, answer.text
    assert ("keeps calling the party with its old token B; but the token B it answered is one the hub issued"
            in answer.json()["error"])  # fmt: skip
    pulled = emsp.call(hub.base, "GET", "sender/locations", to=party_key(cpo))
    assert pulled.status_code == 200 and pulled.json()["status_code"] == 1000, pulled.text
    assert cpo.functional()[-1].headers["Authorization"] == token_header(cpo.token_b)["Authorization"]


def test_every_call_of_a_rotation_is_a_routing_log_row_in_one_conversation_without_its_tokens(
    hub: Hub, connect_party, db
) -> None:
    cpo = connect_party(_roles("CPO"))
    (cc, pid), old_tokens = party_key(cpo), (cpo.hub_token, cpo.token_b)
    platform_id = _platform_id(hub, (cc, pid))
    assert _rotate(hub, platform_id).status_code == 200
    # the PUT of the hub's credentials, then the versions and details read with the party's new token B
    # (other parties' ClientInfo may reach the party meanwhile: the session hub pushes it as they come and go)
    [put] = [r for r in cpo.received if r.method == "PUT" and r.path.endswith("/credentials")]
    rows = own_conversation(db, put.headers["X-Correlation-ID"])
    assert calls_of(rows) == [
        ("credentials", "PUT", f"{cpo.base}/ocpi/2.2.1/credentials", 200, platform_id, (cc, pid)),
        ("versions", "GET", f"{cpo.base}/ocpi/versions", 200, platform_id, (cc, pid)),
        ("versions", "GET", f"{cpo.base}/ocpi/2.2.1", 200, platform_id, (cc, pid)),
    ]
    assert own_messages_wrong(rows, cpo.received, *old_tokens, cpo.hub_token, cpo.token_b) == ""
    assert json.loads(rows[0]["request_body"])["token"] == json.loads(rows[0]["response_body"])["data"]["token"] == (
        "(not logged)")  # fmt: skip


@pytest.mark.parametrize(
    ("status", "body", "said"),
    [
        (200, json.dumps(envelope(None, 2000, "no rotation today")).encode(), "no rotation today"),
        (503, b"<html>down for maintenance</html>", "HTTP 503"),
    ],
)
def test_a_party_refusing_the_rotation_keeps_the_old_tokens_and_the_operator_hears_why(
    hub: Hub, connect_party, db, status: int, body: bytes, said: str
) -> None:
    emsp = connect_party(_roles("EMSP"))
    cpo = connect_party(_roles("CPO"), canned={("PUT", "/ocpi/2.2.1/credentials"): (status, body, {})})
    key = party_key(cpo)
    platform_id = _platform_id(hub, key)
    old_hub_token, old_token_b = cpo.hub_token, cpo.token_b
    answer = _rotate(hub, platform_id)
    assert answer.status_code == 502, answer.text
    error = answer.json()["error"]
    assert said in error and "PUT" in error and "old tokens still work" in error
    # Nothing half-done: the new token C is gone, both old tokens work both ways.
    assert (cpo.hub_token, cpo.token_b) == (old_hub_token, old_token_b)
    assert _tokens_of(db, platform_id) == 1
    cc, pid = key
    pushed = cpo.call(hub.base, "GET", f"receiver/locations/{cc}/{pid}/LOC1", to=party_key(emsp))
    assert pushed.status_code == 200 and pushed.json()["status_code"] == 1000, pushed.text
    pulled = emsp.call(hub.base, "GET", "sender/locations", to=key)
    assert pulled.status_code == 200 and pulled.json()["status_code"] == 1000, pulled.text
    [message] = _credentials_messages(db, pid)
    assert (message["method"], message["http_status"]) == ("PUT", status) and said in message["error"]
    [rotation] = _rotations(hub, platform_id)
    assert said in rotation["failed"]


@pytest.mark.parametrize(
    ("canned", "claims", "token_b", "why"),
    [  # the party takes the PUT, then its versions endpoint fails for its new token B
        ({}, [], "new", "fetching its endpoints with its new token B failed: GET"),
        # it answers HTTP 200, OCPI 1000, but no credentials object: it took the PUT, its token B is unknown
        ({("PUT", "/ocpi/2.2.1/credentials"): (200, json.dumps(envelope("thanks")).encode(), {})}, [], "old",
         "its answer held no credentials the hub can read"),
        # its credentials claim a role the operator never granted it
        ({}, [("EMSP", "NL", "ZZZ")], "new", "the roles it answered do not match: roles not granted to this platform"),
    ],
    ids=["new-token-b-cannot-fetch-the-endpoints", "no-credentials-in-the-answer", "roles-not-granted"],
)  # fmt: skip
def test_a_rotation_the_party_took_but_the_hub_could_not_finish_does_not_lock_the_party_out(
    hub: Hub, connect_party, db, canned: dict, claims: list, token_b: str, why: str
) -> None:
    emsp = connect_party(_roles("EMSP"))
    cpo = connect_party(_roles("CPO"), canned=canned)
    key = party_key(cpo)
    platform_id = _platform_id(hub, key)
    old_hub_token, old_token_b = cpo.hub_token, cpo.token_b
    cpo.versions_status = 500
    cpo.roles += claims  # what its credentials answer to the hub's PUT lists
    answer = _rotate(hub, platform_id)
    assert answer.status_code == 502, answer.text
    switched = {"new": "to the new token C and to the party's new token B",
                "old": "to the new token C and keeps calling the party with its old token B"}[token_b]  # fmt: skip
    assert f"the party took the PUT; the hub switched {switched}; but {why}" in answer.json()["error"]
    # after roles it does not hold, the hub finishes the rotation only once the roles the party lists match
    roles = " and finds the roles the party lists match" if claims else ""
    kept = {"new": f"the hub keeps the endpoints from before, until it fetches them again with the new token B{roles} "
                   "(it tries again on its own)",
            "old": "the endpoints from before are kept"}[token_b]  # fmt: skip
    assert answer.json()["error"].endswith(f"; {kept}; check with the party")
    # credentials.asciidoc, PUT: the party took the new token C and uses it from now on; the old one is dead.
    [put] = [r for r in cpo.received if (r.method, r.path) == ("PUT", "/ocpi/2.2.1/credentials")]
    cpo.hub_token = json.loads(put.body)["token"]
    for token, status in ((old_hub_token, 401), (cpo.hub_token, 200)):
        assert httpx.get(f"{hub.base}/ocpi/2.2.1/credentials", headers=token_header(token)).status_code == status
    assert _replaced(hub, old_hub_token or "", cpo.name) and _tokens_of(db, platform_id) == 1
    cc, pid = key
    pushed = cpo.call(hub.base, "GET", f"receiver/locations/{cc}/{pid}/LOC1", to=party_key(emsp))
    assert pushed.status_code == 200 and pushed.json()["status_code"] == 1000, pushed.text
    # The hub reaches the party at the endpoints from before, with the token B the party expects now.
    assert (cpo.token_b != old_token_b) == (token_b == "new")
    pulled = emsp.call(hub.base, "GET", "sender/locations", to=key)
    assert pulled.status_code == 200 and pulled.json()["status_code"] == 1000, pulled.text
    assert cpo.functional()[-1].headers["Authorization"] == token_header(cpo.token_b)["Authorization"]
    [rotation] = _rotations(hub, platform_id)
    assert rotation["failed"].startswith(f"the party took the PUT, but {why}")
    until = " until the endpoints are fetched again" if token_b == "new" else ""
    until += " and the roles the party lists match" if claims else ""
    kept_in_trail = f"the new token C, the party's {token_b} token B, the endpoints and roles from before{until}"
    assert rotation["kept"] == kept_in_trail


def test_a_second_rotation_while_one_runs_is_refused_and_the_party_is_not_locked_out(hub: Hub, connect_party) -> None:
    # Both used to PUT new credentials to the party; it took them one after the other, and the hub kept the tokens of
    # the one it replaced: the party's token C and the hub's token B were refused both ways.
    emsp = connect_party(_roles("EMSP"))
    cpo = connect_party(_roles("CPO"), credentials_delay_s=1.0)
    platform_id = _platform_id(hub, party_key(cpo))
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(_rotate, hub, platform_id)
        time.sleep(0.3)  # the first is waiting for the party's answer
        second = pool.submit(_rotate, hub, platform_id)
        answers = [first.result(), second.result()]
    assert answers[0].status_code == 200, answers[0].text
    assert answers[1].status_code == 409 and "being rotated already" in answers[1].json()["error"]
    assert len([r for r in cpo.received if (r.method, r.path) == ("PUT", "/ocpi/2.2.1/credentials")]) == 1
    for _ in range(2):  # both ways with the new tokens, and the turn was given back: a rotation after it goes through
        assert httpx.get(f"{hub.base}/ocpi/2.2.1/credentials", headers=token_header(cpo.hub_token or "")).status_code \
            == 200  # fmt: skip
        cc, pid = party_key(cpo)
        relayed = emsp.call(hub.base, "GET", f"sender/locations/{cc}/{pid}/LOC1", to=party_key(cpo))
        assert relayed.json()["status_code"] == 1000, relayed.text
        assert _rotate(hub, platform_id).status_code == 200


def _stored_platform(db, platform_id: int) -> tuple[str, str, list[str]]:  # type: ignore[no-untyped-def]
    """The versions URL, version and endpoint URLs the hub holds for a platform."""
    row = db.run(db.fetchrow("SELECT versions_url, version FROM platform WHERE id = $1", platform_id))
    urls = db.run(db.fetch("SELECT url FROM platform_endpoint WHERE platform_id = $1 ORDER BY url", platform_id))
    return row["versions_url"], row["version"], [u["url"] for u in urls]


def _moves_its_api(party: Party) -> None:
    """The party names its versions at a new URL, under /v2, from its next credentials answer on; that URL answers
    404 until the test lifts it (the new deployment not up yet). The old paths keep working."""
    party.moved_to = "/v2"
    party.canned[("GET", "/v2/ocpi/versions")] = (404, b"<html>not deployed yet</html>", {"Content-Type": "text/html"})


def test_a_rotation_answered_with_a_new_versions_url_keeps_that_url_when_its_endpoints_cannot_be_fetched(
    hub: Hub, connect_party, db
) -> None:
    emsp, cpo = connect_party(_roles("EMSP")), connect_party(_roles("CPO"))
    key = party_key(cpo)
    platform_id = _platform_id(hub, key)
    old_url, version, endpoints = _stored_platform(db, platform_id)
    _moves_its_api(cpo)
    answer = _rotate(hub, platform_id)
    assert answer.status_code == 502, answer.text
    new_url = cpo.versions_url
    assert new_url != old_url and "answered HTTP 404" in answer.json()["error"]
    assert answer.json()["error"].endswith(
        f"; the hub keeps the new versions URL the party named ({new_url}) and the endpoints from before, until it "
        "fetches them again with the new token B (it tries again on its own); check with the party")  # fmt: skip
    [rotation] = _rotations(hub, platform_id)
    assert rotation["kept"] == (f"the new token C, the party's new token B, the new versions URL it named "
                                f"({new_url}), the endpoints and roles from before until the endpoints are fetched "
                                "again")  # fmt: skip
    # The party's versions are where it said; the hub routes on the endpoints from before meanwhile.
    assert _stored_platform(db, platform_id) == (new_url, version, endpoints)
    # and the operator's API says so, as the console does, with when the hub fetches them again
    with hub.admin() as admin:
        items = admin.get("/admin/api/parties").json()["items"]
    [listed] = [i for i in items if i["platform_id"] == platform_id]
    assert "answered HTTP 404" in listed["endpoints_from_before"] and listed["endpoints_next_try"], listed
    [other] = [i for i in items if (i["country_code"], i["party_id"]) == party_key(emsp)]
    assert (other["endpoints_from_before"], other["endpoints_next_try"]) == (None, None), other
    pulled = emsp.call(hub.base, "GET", "sender/locations", to=key)
    assert pulled.status_code == 200 and pulled.json()["status_code"] == 1000, pulled.text
    assert cpo.functional()[-1].path == "/ocpi/2.2.1/locations/sender"
    assert cpo.functional()[-1].headers["Authorization"] == token_header(cpo.token_b)["Authorization"]


def test_the_operator_has_the_hub_fetch_the_endpoints_again_from_the_versions_url_a_rotation_kept(
    hub: Hub, connect_party, db
) -> None:
    emsp, cpo = connect_party(_roles("EMSP")), connect_party(_roles("CPO"))
    key = party_key(cpo)
    platform_id = _platform_id(hub, key)
    _moves_its_api(cpo)
    assert _rotate(hub, platform_id).status_code == 502
    new_url, _, endpoints = _stored_platform(db, platform_id)
    with hub.admin() as admin:
        failed = admin.post(f"/admin/api/parties/{platform_id}/endpoints")
        assert failed.status_code == 502, failed.text
        assert failed.json()["error"].startswith(f"fetching the endpoints of platform {platform_id} from {new_url} "
                                                 f"failed: GET {new_url} answered HTTP 404")  # fmt: skip
        assert "; the hub keeps the endpoints from before; it tries again on its own, as scheduled before: at " in (
            failed.json()["error"])  # fmt: skip
        assert _stored_platform(db, platform_id)[2] == endpoints
        del cpo.canned[("GET", "/v2/ocpi/versions")]  # the party's new deployment is up
        refreshed = admin.post(f"/admin/api/parties/{platform_id}/endpoints")
        assert refreshed.status_code == 200, refreshed.text
        assert refreshed.json() == {"platform_id": platform_id, "name": cpo.name, "versions_url": new_url,
                                    "version": "2.2.1", "endpoints": len(endpoints),
                                    "token_encoding": "base64"}  # fmt: skip
        trail = admin.get("/admin/api/audit-trail").json()["items"]
    assert all(url.startswith(f"{cpo.base}/v2/") for url in _stored_platform(db, platform_id)[2])
    pulled = emsp.call(hub.base, "GET", "sender/locations", to=key)
    assert pulled.status_code == 200 and pulled.json()["status_code"] == 1000, pulled.text
    assert cpo.functional()[-1].path == "/v2/ocpi/2.2.1/locations/sender"
    done, tried = [(t["actor_kind"], t["parameters"]) for t in trail if t["action"] == "refresh_endpoints"
                   and t["parameters"]["platform_id"] == platform_id][:2]  # fmt: skip
    assert done == ("admin", {"platform_id": platform_id, "name": cpo.name, "versions_url": new_url,
                              "version": "2.2.1", "endpoints": len(endpoints),
                              "roles": [f"CPO {key[0]}-{key[1]}"]})  # fmt: skip
    assert tried[1]["kept"] == "the endpoints from before" and "HTTP 404" in tried[1]["failed"]
    # Nothing is pending any more: the rotation's refresh is done.
    assert db.run(db.fetchval("SELECT endpoints_refresh_due FROM platform WHERE id = $1", platform_id)) is None


def test_an_operators_failed_refresh_shows_why_and_leaves_the_hubs_own_schedule_as_it_was(
    hub: Hub, connect_party, db
) -> None:
    cpo = connect_party(_roles("CPO"))
    platform_id = _platform_id(hub, party_key(cpo))
    _moves_its_api(cpo)
    assert _rotate(hub, platform_id).status_code == 502
    scheduled = _listed(hub, platform_id)
    assert "HTTP 404" in scheduled["endpoints_from_before"] and scheduled["endpoints_next_try"], scheduled
    cpo.canned[("GET", "/v2/ocpi/versions")] = (503, b'{"status_code": 3000, "status_message": "still deploying"}', {})
    with hub.admin() as admin:
        failed = admin.post(f"/admin/api/parties/{platform_id}/endpoints")
        assert failed.status_code == 502, failed.text
        trail = admin.get("/admin/api/audit-trail").json()["items"]
    # Why it failed is the operator's try's reason now; when the hub tries on its own, and its backoff, stay.
    next_try = scheduled["endpoints_next_try"]
    listed = _listed(hub, platform_id)
    assert (listed["endpoints_next_try"], listed.get("endpoints_trying_now")) == (next_try, False), listed
    failures = db.run(db.fetchval("SELECT endpoints_refresh_failures FROM platform WHERE id = $1", platform_id))
    assert failures == 1  # the rotation's
    assert "HTTP 503: OCPI status 3000 still deploying" in listed["endpoints_from_before"], listed
    at = next_try[:19].replace("T", " ") + " UTC"
    assert failed.json()["error"].endswith(f"; it tries again on its own, as scheduled before: at {at}")
    page = console_page(hub, f"/console/parties/{platform_id}/endpoints")
    assert (
        "(1 try of its own failed). The last try said: GET" in page
        and "HTTP 503: OCPI status 3000 still deploying" in page
    )
    assert f'<span id="endpoints-next-try">next try at {next_try[:19].replace("T", " ")}.' in page
    [tried] = [t for t in trail if t["action"] == "refresh_endpoints" and t["parameters"]["platform_id"] == platform_id]
    assert (tried["actor_kind"], tried["parameters"]["kept"], tried["parameters"]["next_try"]) == (
        "admin", "the endpoints from before", at)  # fmt: skip
    assert "HTTP 503" in tried["parameters"]["failed"]


def test_only_a_registered_platform_has_its_credentials_rotated(hub: Hub) -> None:
    invitation = hub.invite("Not yet here", ("CPO", "NL", unique_party_id()))
    invited = _rotate(hub, invitation["platform_id"])
    assert invited.status_code == 409 and "not registered yet" in invited.json()["error"]
    unknown = _rotate(hub, 999999999)
    assert unknown.status_code == 404 and "no platform 999999999" in unknown.json()["error"]
    assert httpx.get(hub.versions_url, headers=token_header(invitation["token_a"])).status_code == 200


def test_an_auditor_cannot_rotate_a_platforms_credentials(hub: Hub, connect_party) -> None:
    cpo = connect_party(_roles("CPO"))
    platform_id = _platform_id(hub, party_key(cpo))
    old_hub_token = cpo.hub_token
    token = json.loads(_cli(hub, "auditor", "add", f"auditor-{unique_party_id()}").stdout)["token"]
    answer = httpx.post(f"{hub.base}/admin/api/parties/{platform_id}/credentials",
                        headers={"Authorization": f"Bearer {token}"})  # fmt: skip
    assert answer.status_code == 403
    assert cpo.hub_token == old_hub_token
    assert not [r for r in cpo.received if (r.method, r.path) == ("PUT", "/ocpi/2.2.1/credentials")]
