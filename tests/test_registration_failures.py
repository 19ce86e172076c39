"""A registration the hub cannot complete with what the party's platform answers (unreachable, an HTTP error, versions
or details it cannot use, a wrong token B, no common version, no credentials endpoint): an OCPI 3xxx saying what was
wrong, nothing registered, token A still good."""

from __future__ import annotations

import hashlib

import httpx
import pytest

from tests.conftest import Hub, unique_party_id
from tests.parties import free_port, tcp_forwarder, token_header
from tests.test_registration import _credentials_url, _invited_party


def test_unreachable_party_api_answers_3001(hub: Hub, start_party) -> None:
    party, token_a = _invited_party(hub, start_party, ("CPO", "NL", unique_party_id()))
    credentials = party.credentials(party.token_b) | {"url": f"http://127.0.0.1:{free_port()}/ocpi/versions"}
    answer = httpx.post(_credentials_url(hub), headers=token_header(token_a), json=credentials)
    assert answer.status_code == 200
    assert answer.json()["status_code"] == 3001
    assert "/ocpi/versions" in answer.json()["status_message"]
    # Nothing was registered: token A still works for a second attempt.
    assert httpx.get(hub.versions_url, headers=token_header(token_a)).status_code == 200


def test_party_versions_answering_an_http_error_gives_3001(hub: Hub, start_party) -> None:
    party, token_a = _invited_party(hub, start_party, ("CPO", "NL", unique_party_id()), versions_status=500)
    answer = party.register_at(hub.versions_url, token_a).json()
    assert answer["status_code"] == 3001
    assert "HTTP 500" in answer["status_message"]


@pytest.mark.parametrize(
    ("status", "answer", "content_type", "said"),
    [
        (
            404,
            b"<html>admin console: secret</html>",
            "text/html",
            "HTTP 404: 34 bytes of text/html, not an OCPI answer",
        ),
        (
            503,
            b'{"status_code": 3000, "status_message": "down"}',
            "application/json",
            "HTTP 503: OCPI status 3000 down",
        ),
        (
            503,
            b'{"status_code": true}',
            "application/json",
            "HTTP 503: 21 bytes of application/json, not an OCPI answer",
        ),
    ],
    ids=["any-page", "an-ocpi-refusal", "no-ocpi-status"],
)
def test_a_refusal_at_the_versions_url_is_told_by_its_ocpi_status_alone_not_by_what_the_page_says(
    hub: Hub, start_party, status: int, answer: bytes, content_type: str, said: str
) -> None:
    # The hub calls whatever URL a holder of a token A gives it: quoted, the start of any answer let it read what an
    # address behind the hub answers (found by a CPO developer's walkthrough: a local server's 404 page came back).
    canned = {("GET", "/ocpi/versions"): (status, answer, {"Content-Type": content_type})}
    party, token_a = _invited_party(hub, start_party, ("CPO", "NL", unique_party_id()), canned=canned)
    message = party.register_at(hub.versions_url, token_a).json()["status_message"]
    assert message == f"GET {party.base}/ocpi/versions answered {said}" and "secret" not in message


NESTED_TOO_DEEPLY = b"[" * 5000 + b"]" * 5000
# An endpoint identifier longer than an index row takes (incompressible: random-looking): was an HTTP 500, 3000
LONG_IDENTIFIER = "".join(hashlib.sha256(str(i).encode()).hexdigest() for i in range(125))


@pytest.mark.parametrize(
    ("path", "answer", "said"),
    [
        ("/ocpi/versions", b"<html>down for maintenance</html>", "answered no usable versions"),
        ("/ocpi/versions", b'{"data": {"version": "2.2.1"}}', "answered no usable versions"),
        ("/ocpi/versions", b'{"data": ' + NESTED_TOO_DEEPLY + b"}", "answered no usable versions"),
        ("/ocpi/2.2.1", b'{"data": {"version": "2.2.1", "endpoints": "all"}}', "answered no usable version details"),
        ("/ocpi/2.2.1", NESTED_TOO_DEEPLY, "answered no usable version details"),
        ("/ocpi/2.2.1", b'{"status_code": 3000, "status_message": "down"}', "was refused: OCPI status 3000 down"),
        ("/ocpi/versions", b'{"status_code": true}', "answered no usable versions"),  # was "OCPI status True"
        (
            "/ocpi/2.2.1",
            b'{"data": {"version": "2.2.1", "endpoints": [{"identifier": "credentials", "role": "SENDER", "url": '
            b'"http://127.0.0.1/c"}, {"identifier": "locations", "role": "SENDER", "url": "http://127.0.0.1/l"}, '
            b'{"identifier": "' + LONG_IDENTIFIER.encode() + b'", "role": "SENDER", "url": "http://127.0.0.1/x"}]}}',
            "answered no usable version details",
        ),
    ],
    ids=[
        "not-json",
        "wrong-shape",
        "nested-too-deeply",
        "details-wrong-shape",
        "details-nested-too-deeply",
        "refused",
        "status-code-true",
        "details-identifier-too-long",
    ],
)
def test_party_versions_or_details_the_hub_cannot_use_give_3001_saying_what_was_wrong(
    hub: Hub, start_party, path: str, answer: bytes, said: str
) -> None:
    canned = {("GET", path): (200, answer, {"Content-Type": "application/json"})}
    party, token_a = _invited_party(hub, start_party, ("CPO", "NL", unique_party_id()), canned=canned)
    registration = party.register_at(hub.versions_url, token_a)
    assert registration.status_code == 200
    assert registration.json()["status_code"] == 3001
    assert f"GET {party.base}{path} {said}" in registration.json()["status_message"]
    # Nothing was registered: token A still works for a second attempt.
    assert httpx.get(hub.versions_url, headers=token_header(token_a)).status_code == 200


def test_a_refusal_in_a_successful_answer_is_told_with_the_start_of_its_message(hub: Hub, start_party) -> None:
    # as one with an HTTP error status is: the hub calls whatever URL a party gives it, so it quotes little of it
    refusal = b'{"status_code": 3000, "status_message": "' + b"x" * 300 + b'"}'
    canned = {("GET", "/ocpi/2.2.1"): (200, refusal, {"Content-Type": "application/json"})}
    party, token_a = _invited_party(hub, start_party, ("CPO", "NL", unique_party_id()), canned=canned)
    message = party.register_at(hub.versions_url, token_a).json()["status_message"]
    assert message == f"GET {party.base}/ocpi/2.2.1 was refused: OCPI status 3000 {'x' * 200}"


def test_a_refusal_carrying_an_empty_versions_list_is_told_as_the_refusal_not_as_no_common_version(
    hub: Hub, start_party
) -> None:
    # status_codes.asciidoc: outside 1xxx "the data field is unspecified"; an empty list beside a refusal was read as
    # the party's versions, and the party told 3002, "the party offers none", instead of what it said
    refusal = b'{"status_code": 2000, "status_message": "unknown token", "data": []}'
    canned = {("GET", "/ocpi/versions"): (200, refusal, {"Content-Type": "application/json"})}
    party, token_a = _invited_party(hub, start_party, ("CPO", "NL", unique_party_id()), canned=canned)
    answer = party.register_at(hub.versions_url, token_a).json()
    assert answer["status_code"] == 3001, answer
    assert answer["status_message"] == f"GET {party.base}/ocpi/versions was refused: OCPI status 2000 unknown token"


def test_party_with_a_wrong_token_b_gives_3001(hub: Hub, start_party) -> None:
    party, token_a = _invited_party(hub, start_party, ("CPO", "NL", unique_party_id()))
    credentials = party.credentials("not-the-token-the-party-accepts")
    answer = httpx.post(_credentials_url(hub), headers=token_header(token_a), json=credentials).json()
    assert answer["status_code"] == 3001
    assert "HTTP 401" in answer["status_message"]


def test_no_common_version_answers_3002(hub: Hub, start_party) -> None:
    party, token_a = _invited_party(hub, start_party, ("CPO", "NL", unique_party_id()), versions=["2.1.1", "2.2"])
    answer = party.register_at(hub.versions_url, token_a).json()
    assert answer["status_code"] == 3002
    assert "2.1.1, 2.2" in answer["status_message"]


def test_missing_credentials_endpoint_answers_3003(hub: Hub, start_party) -> None:
    roles = ("CPO", "NL", unique_party_id())
    party, token_a = _invited_party(hub, start_party, roles, omit_credentials_endpoint=True)
    answer = party.register_at(hub.versions_url, token_a).json()
    assert answer["status_code"] == 3003
    assert "credentials" in answer["status_message"]


def test_a_versions_url_naming_the_hub_under_another_host_name_is_refused_as_the_hubs_own(
    hub: Hub, start_party
) -> None:
    # A URL under the hub's public URL is refused before the hub calls it; one naming the hub by another name had the
    # hub call itself with the party's token, answer itself 401 and report that. At the port the hub listens on it is
    # refused before any call (routing.party_addresses); through a load balancer in front of it, by the hub's mark.
    party, token_a = _invited_party(hub, start_party, ("CPO", "NL", unique_party_id()))
    assert "127.0.0.1" in hub.base
    port = int(hub.base.rsplit(":", 1)[1])
    aliased = hub.versions_url.replace("127.0.0.1", "localhost")
    answer = httpx.post(_credentials_url(hub), headers=token_header(token_a),
                        json=party.credentials(party.token_b) | {"url": aliased}).json()  # fmt: skip
    assert answer["status_code"] == 3001, answer
    assert answer["status_message"] == (
        f"GET {aliased} was not called: localhost:{port} is the hub itself: it is the address the hub itself listens on"
    )
    with tcp_forwarder(port) as balancer_port:
        aliased = hub.versions_url.replace(f":{port}", f":{balancer_port}")
        answer = httpx.post(_credentials_url(hub), headers=token_header(token_a),
                            json=party.credentials(party.token_b) | {"url": aliased}).json()  # fmt: skip
    assert answer["status_code"] == 3001, answer
    assert answer["status_message"] == (
        f"{aliased} is the hub's own (the hub answered GET {aliased} itself, under another name than {hub.base}); it "
        "must lead to the party's platform"
    )
    assert httpx.get(hub.versions_url, headers=token_header(token_a)).status_code == 200  # nothing registered
