"""Every header the hub refuses a functional request for, and the HTTP status it answers with: one rule
(status_codes.asciidoc), so that a party's client reads each refusal the same way.

HTTP 401 for whatever is wrong with Authorization (transport_and_format.asciidoc: "If the header is missing or the
credentials token doesn't match any known party"); an HTTP error for a body the transport cannot deliver as JSON (415
for a Content-Encoding); HTTP 200 with an OCPI status for every other header: the routing headers and X-Request-ID /
X-Correlation-ID are OCPI's own, and a request that "addresses an existing resource" has reached the OCPI layer, where
"a HTTP error MUST NOT be returned". Each refusal leaves its routing-log row, with the HTTP status it was answered."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import httpx

from hub.request_context import MAX_HUBS_PASSED, MAX_ID_LENGTH
from storage.secrets import hub_instance
from tests.conftest import SECRET_KEY, Db, Hub, unique_party_id
from tests.parties import Party, token_header
from tests.test_routing import party_key

Headers = list[tuple[str, str | bytes]]


def _cases(cpo: Party, emsp: Party) -> list[tuple[str, Callable[[str], Headers], int, int]]:
    """(what is wrong, the request's headers given its X-Request-ID, HTTP status, OCPI status)."""
    (cc, pid), (to_cc, to_pid) = party_key(emsp), party_key(cpo)
    token = next(iter(token_header(emsp.hub_token or "").items()))
    other = next(iter(token_header("not-a-token-of-this-hub").items()))
    routing: Headers = [("OCPI-from-country-code", cc), ("OCPI-from-party-id", pid),
                        ("OCPI-to-country-code", to_cc), ("OCPI-to-party-id", to_pid)]  # fmt: skip

    def sent(
        *changed: tuple[str, str | bytes], drop: tuple[str, ...] = (), auth: bool = True
    ) -> Callable[[str], Headers]:
        def headers(request_id: str) -> Headers:
            kept = [(name, value) for name, value in routing if name not in drop]
            return [*([token] if auth else []), ("X-Request-ID", request_id), *kept, *changed]

        return headers

    return [
        ("no Authorization", sent(auth=False), 401, 2000),
        ("an unknown token", sent(other, auth=False), 401, 2000),
        ("Authorization twice, two tokens", sent(other), 401, 2000),
        ("X-Request-ID twice, two values", sent(("X-Request-ID", f"header-error-{uuid.uuid4()}")), 200, 2001),
        ("X-Correlation-ID longer than 255", sent(("X-Correlation-ID", "c" * 256)), 200, 2001),
        ("X-Correlation-ID not printable ASCII", sent(("X-Correlation-ID", "café".encode())), 200, 2001),
        ("OCPI-to-party-id twice, two values", sent(("OCPI-to-party-id", "ZZZ")), 200, 2001),
        ("OCPI-to-party-id malformed", sent(("OCPI-to-party-id", "TOOLONG"), drop=("OCPI-to-party-id",)), 200, 2001),
        ("OCPI-to-party-id missing", sent(drop=("OCPI-to-party-id",)), 200, 2001),
        ("OCPI-from naming no party of the caller's",
         sent(("OCPI-from-party-id", to_pid), drop=("OCPI-from-party-id",)), 200, 2001),
        ("OCPI-to naming no party of the hub",
         sent(("OCPI-to-party-id", "ZZZ"), drop=("OCPI-to-party-id",)), 200, 4001),
        ("X-OCPI-Hub-Instance holding no hub's mark", sent(("X-OCPI-Hub-Instance", "a mark\tof nothing")), 200, 2001),
    ]  # fmt: skip


def test_a_header_error_answers_http_200_with_its_ocpi_status_but_authorization_401_and_each_has_its_row(
    hub: Hub, cpo_and_emsp: tuple[Party, Party], db: Db
) -> None:
    cpo, emsp = cpo_and_emsp
    url = f"{hub.base}/ocpi/2.2.1/sender/tariffs"
    answered = []
    for what, headers, _, _ in _cases(cpo, emsp):
        request_id = f"header-error-{uuid.uuid4()}"
        sent = headers(request_id)
        answer = httpx.get(url, headers=sent)  # type: ignore[arg-type]
        # the row carries the X-Request-ID the answer echoes (of two, the one the hub took)
        echoed = answer.headers.get("X-Request-ID", request_id)
        row = db.run(db.fetchrow("SELECT http_status, ocpi_status_code FROM routing_log WHERE request_id = $1", echoed))
        answered.append((what, answer.status_code, answer.json()["status_code"], row and tuple(row)))
    expected = [(what, http, ocpi, (http, ocpi)) for what, _, http, ocpi in _cases(cpo, emsp)]
    assert answered == expected
    assert cpo.functional() == []  # nothing forwarded


def test_a_content_encoding_of_the_body_is_a_transport_error_http_415(
    hub: Hub, cpo_and_emsp: tuple[Party, Party]
) -> None:
    cpo, emsp = cpo_and_emsp
    (cc, pid), to = party_key(cpo), party_key(emsp)
    answer = cpo.call(hub.base, "PUT", f"receiver/tariffs/{cc}/{pid}/T1", to=to, content=b"\x1f\x8b not json",
                      headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})  # fmt: skip
    assert (answer.status_code, answer.json()["status_code"]) == (415, 2000), answer.text
    assert emsp.functional() == []


def test_an_unauthenticated_request_is_answered_401_whatever_is_wrong_with_its_ids_and_its_row_keeps_them_cut(
    hub: Hub, db: Db
) -> None:
    # the ids were checked before the token: an anonymous caller got HTTP 200 with 2001 for an id too long
    unknown = next(iter(token_header("not-a-token-of-this-hub").items()))
    cases: list[tuple[str, Headers]] = [
        ("no Authorization, X-Request-ID longer than 255", [("X-Request-ID", "r" * 300)]),
        ("an unknown token, X-Correlation-ID longer than 255",
         [unknown, ("X-Request-ID", "r"), ("X-Correlation-ID", "c" * 300)]),
        ("an unknown token, X-Correlation-ID not printable ASCII",
         [unknown, ("X-Request-ID", "r"), ("X-Correlation-ID", "café".encode())]),
        ("no Authorization, X-Request-ID twice", [("X-Request-ID", "r1"), ("X-Request-ID", "r2")]),
    ]  # fmt: skip
    answered, expected = [], []
    for what, sent in cases:
        prefix = f"anonymous-{uuid.uuid4()}-"
        headers = [(name, prefix + value if name == "X-Request-ID" and isinstance(value, str) else value)
                   for name, value in sent]  # fmt: skip
        answer = httpx.get(f"{hub.base}/ocpi/2.2.1/sender/tariffs", headers=headers)  # type: ignore[arg-type]
        rows = db.run(db.fetch("SELECT request_id, correlation_id, http_status, ocpi_status_code FROM routing_log "
                               "WHERE request_id LIKE $1", f"{prefix}%"))  # fmt: skip
        longest = max(len(r["request_id"]) + len(r["correlation_id"]) for r in rows) if rows else 0
        answered.append((what, answer.status_code, answer.json()["status_code"], [tuple(r)[2:] for r in rows],
                         longest <= 2 * MAX_ID_LENGTH))  # fmt: skip
        expected.append((what, 401, 2000, [(401, 2000)], True))
    assert answered == expected


def test_an_unauthenticated_request_with_a_malformed_hub_mark_is_answered_401_but_one_that_came_back_is_a_loop(
    hub: Hub, db: Db
) -> None:
    # the marks were checked before the token: an anonymous caller got HTTP 200 with 2001 for a malformed one; the
    # loop checks stay first, as a request come back carries a token the hub gave no one
    unknown = next(iter(token_header("not-a-token-of-this-hub").items()))
    ours = hub_instance(SECRET_KEY, hub.base)
    loop = "the request came back to the hub it left"
    cases: list[tuple[str, Headers, int, int, str]] = [
        ("no Authorization, a mark holding a tab", [("X-OCPI-Hub-Instance", "a mark\tof nothing")], 401, 2000,
         "missing Authorization header"),
        ("an unknown token, a mark too long", [unknown, ("X-OCPI-Hub-Instance", "m" * 65)], 401, 2000,
         "unknown credentials token"),
        ("no Authorization, the hub's own mark", [("X-OCPI-Hub-Instance", f"other-hub, {ours}")], 200, 4000, loop),
        ("no Authorization, the hub's own mark and a malformed one",
         [("X-OCPI-Hub-Instance", f"{ours}, a mark\tof nothing")], 200, 4000, loop),
        ("no Authorization, too many hubs",
         [("X-OCPI-Hub-Instance", ", ".join(f"hub-{n}" for n in range(MAX_HUBS_PASSED)))], 200, 4000,
         f"passed {MAX_HUBS_PASSED} hubs already"),
    ]  # fmt: skip
    answered, expected = [], []
    for what, sent, http, ocpi, said in cases:
        request_id = f"anonymous-mark-{uuid.uuid4()}"
        answer = httpx.get(f"{hub.base}/ocpi/2.2.1/sender/tariffs", headers=[*sent, ("X-Request-ID", request_id)])
        rows = db.run(db.fetch("SELECT http_status, ocpi_status_code FROM routing_log WHERE request_id = $1",
                               request_id))  # fmt: skip
        answered.append((what, answer.status_code, answer.json()["status_code"],
                         said in answer.json()["status_message"], [tuple(r) for r in rows]))  # fmt: skip
        expected.append((what, http, ocpi, True, [(http, ocpi)]))
    assert answered == expected


def test_authorization_sent_twice_is_refused_401_on_the_hubs_own_endpoints_as_on_the_relay(
    hub: Hub, cpo_and_emsp: tuple[Party, Party], db: Db
) -> None:
    # versions, credentials and hubclientinfo (Litestar) took one of two tokens; the relay refused them
    _, emsp = cpo_and_emsp
    token = next(iter(token_header(emsp.hub_token or "").items()))
    other = next(iter(token_header("not-a-token-of-this-hub").items()))
    said = "Authorization came 2 times with different values: the hub cannot tell which one is meant"
    paths = ["/ocpi/versions", "/ocpi/2.2.1", "/ocpi/2.2.1/credentials", "/ocpi/2.2.1/sender/hubclientinfo",
             "/ocpi/2.2.1/sender/tariffs"]  # fmt: skip
    answered, rows = [], []
    for path in paths:
        for sent in ([other, token], [token, other]):  # either one first
            request_id = f"authorization-twice-{uuid.uuid4()}"
            answer = httpx.get(f"{hub.base}{path}", headers=[*sent, ("X-Request-ID", request_id)])
            answered.append((path, answer.status_code, answer.json()["status_code"], answer.json()["status_message"]))
            rows += db.run(db.fetch("SELECT path, http_status, caller_platform_id FROM routing_log "
                                    "WHERE request_id = $1", request_id))  # fmt: skip
    assert answered == [(path, 401, 2000, said) for path in paths for _ in range(2)]
    # the logged ones name nobody, as no token would
    logged = ["/ocpi/2.2.1/credentials", "/ocpi/2.2.1/sender/tariffs"]
    assert [tuple(row) for row in rows] == [(path, 401, None) for path in logged for _ in range(2)]
    # the same token twice names one caller
    twice = httpx.get(f"{hub.base}/ocpi/2.2.1/sender/hubclientinfo", headers=[token, token])
    assert (twice.status_code, twice.json()["status_code"]) == (200, 1000), twice.text


def test_an_id_sent_twice_with_two_values_is_refused_on_the_hubs_own_endpoints_as_on_the_relay_after_the_token(
    hub: Hub, cpo_and_emsp: tuple[Party, Party]
) -> None:
    # versions, credentials and hubclientinfo (Litestar) took the last of two X-Request-IDs; the relay refused them
    _, emsp = cpo_and_emsp
    token = next(iter(token_header(emsp.hub_token or "").items()))
    paths = ["/ocpi/2.2.1/sender/tariffs",  # the relay: the answer the others are held to
             "/ocpi/versions", "/ocpi/2.2.1", "/ocpi/2.2.1/credentials",
             "/ocpi/2.2.1/sender/hubclientinfo"]  # fmt: skip
    for name in ("X-Request-ID", "X-Correlation-ID"):
        answered = []
        for path in paths:
            for auth in ([token], []):
                answer = httpx.get(f"{hub.base}{path}", headers=[*auth, (name, "id-one"), (name, "id-two")])
                answered.append((path, bool(auth), answer.status_code, answer.json()["status_code"],
                                 answer.json()["status_message"]))  # fmt: skip
        said = f"{name} came 2 times with different values ('id-one', 'id-two'): the hub cannot tell which one is meant"
        missing = "missing Authorization header: send 'Authorization: Token <base64 of your token>'"
        assert answered == [(path, bool(auth), *((200, 2001, said) if auth else (401, 2000, missing)))
                            for path in paths for auth in ([token], [])]  # fmt: skip
    # the same id twice is one id
    twice = httpx.get(f"{hub.base}/ocpi/2.2.1/sender/hubclientinfo",
                      headers=[token, ("X-Request-ID", "id-one"), ("X-Request-ID", "id-one")])  # fmt: skip
    assert (twice.status_code, twice.json()["status_code"], twice.headers["X-Request-ID"]) == (200, 1000, "id-one")


def test_an_id_too_long_or_not_printable_ascii_is_refused_on_every_own_route_as_on_the_relay_with_its_rows(
    hub: Hub, cpo_and_emsp: tuple[Party, Party], start_party: Callable[..., Party], db: Db
) -> None:
    # versions, version details, hubclientinfo and the credentials GET and DELETE (Litestar) took such ids, and echoed
    # them; only the credentials POST and PUT refused them, as the relay does
    _, emsp = cpo_and_emsp
    invited = start_party(("CPO", "NL", unique_party_id()), name="invited")
    token_a = hub.invite(invited.name, *invited.roles)["token_a"]
    token_c = emsp.hub_token or ""
    routes: list[tuple[str, str, str, object]] = [
        ("GET", "/ocpi/2.2.1/sender/tariffs", token_c, None),  # the relay: the answer the others are held to
        ("GET", "/ocpi/versions", token_c, None),
        ("GET", "/ocpi/2.2.1", token_c, None),
        ("GET", "/ocpi/2.2.1/credentials", token_c, None),
        ("POST", "/ocpi/2.2.1/credentials", token_a, invited.credentials(invited.token_b)),
        ("PUT", "/ocpi/2.2.1/credentials", token_c, emsp.credentials(emsp.token_b)),
        ("DELETE", "/ocpi/2.2.1/credentials", token_c, None),
        ("GET", "/ocpi/2.2.1/sender/hubclientinfo", token_c, None),
    ]  # fmt: skip
    # transport_and_format.asciidoc: "It is advised to used GUID/UUID as values for X-Request-ID and X-Correlation-ID"
    bad_ids: list[tuple[str, Callable[[str], Headers]]] = [
        ("X-Request-ID longer than 255", lambda rid: [("X-Request-ID", rid + "r" * MAX_ID_LENGTH)]),
        ("X-Request-ID not printable ASCII", lambda rid: [("X-Request-ID", f"café{'-' * 40}{rid}".encode())]),
        ("X-Correlation-ID longer than 255",
         lambda rid: [("X-Request-ID", rid), ("X-Correlation-ID", "c" * (MAX_ID_LENGTH + 1))]),
        ("X-Correlation-ID not printable ASCII",
         lambda rid: [("X-Request-ID", rid), ("X-Correlation-ID", "café".encode())]),
    ]  # fmt: skip
    platform_id = db.run(db.fetchval("SELECT platform_id FROM party_role WHERE party_id = $1", emsp.roles[0][2]))
    invited_id = db.run(db.fetchval("SELECT id FROM platform WHERE name = $1", invited.name))
    answered, logged = {}, {}
    for what, ids in bad_ids:
        for method, path, token, body in routes:
            request_id = str(uuid.uuid4())  # as long as the relay's, and never quoted: the messages match
            sent = [*token_header(token).items(), *ids(request_id)]
            answer = httpx.request(method, f"{hub.base}{path}", json=body, headers=sent)  # type: ignore[arg-type]
            answered[what, method, path] = (answer.status_code, answer.json()["status_code"],
                                            answer.json()["status_message"])  # fmt: skip
            rows = db.run(db.fetch("SELECT http_status, ocpi_status_code, caller_platform_id FROM routing_log "
                                   "WHERE request_id LIKE $1", f"%{request_id}%"))  # fmt: skip
            logged[what, method, path] = [tuple(row) for row in rows]
    relayed = {what: answered[what, "GET", "/ocpi/2.2.1/sender/tariffs"] for what, _ in bad_ids}
    assert {what: said[:2] for what, said in relayed.items()} == {what: (200, 2001) for what, _ in bad_ids}
    assert answered == {(what, method, path): relayed[what] for what, _ in bad_ids for method, path, _, _ in routes}
    # the relay and the credentials endpoint log every request, refused or not (versions, details and hubclientinfo
    # log none): each refusal has its row, naming its caller
    logging = ("/ocpi/2.2.1/sender/tariffs", "/ocpi/2.2.1/credentials")
    assert logged == {
        (what, method, path): [(200, 2001, invited_id if method == "POST" else platform_id)] if path in logging else []
        for what, _ in bad_ids for method, path, _, _ in routes
    }  # fmt: skip
    # nothing was done: the platform is registered with the token it had, the invited one can still register
    still = httpx.get(f"{hub.base}/ocpi/2.2.1/credentials", headers=token_header(token_c))
    assert (still.status_code, still.json()["status_code"]) == (200, 1000), still.text
    assert invited.register_at(hub.versions_url, token_a).json()["status_code"] == 1000
