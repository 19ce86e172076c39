"""A path under /ocpi/2.2.1/ that is no URL of the hub (neither a module it relays nor one it serves itself: versions,
credentials, hubclientinfo) is answered as an unknown module is: HTTP 401 to a caller without a valid token
(transport_and_format.asciidoc), else HTTP 404 with 2000 naming the path; each with its routing-log row. Litestar's
own 404 answered them before the token was looked at, and left no row."""

from __future__ import annotations

import uuid

import httpx

from tests.conftest import Db, Hub
from tests.parties import Party, token_header


def test_a_path_under_the_version_that_is_no_url_of_the_hub_is_answered_as_an_unknown_module_with_its_row(
    hub: Hub, cpo_and_emsp: tuple[Party, Party], db: Db
) -> None:
    _, emsp = cpo_and_emsp
    token = token_header(emsp.hub_token or "")
    paths = ["/ocpi/2.2.1/sender/parkings",  # an unknown module: the answer the others are held to
             "/ocpi/2.2.1/sender/hubclientinfoX", "/ocpi/2.2.1/sender/hubclientinfo/NL/ABC",
             "/ocpi/2.2.1/receiver/hubclientinfo", "/ocpi/2.2.1/credentialsX", "/ocpi/2.2.1/credentials/x",
             "/ocpi/2.2.1/nonsense"]  # fmt: skip
    answered = []
    for path in paths:
        for auth in (token, {}):
            request_id = f"unknown-path-{uuid.uuid4()}"
            answer = httpx.get(f"{hub.base}{path}", headers=auth | {"X-Request-ID": request_id})
            told = str(answer.json()["status_message"])
            rows = db.run(db.fetch("SELECT path, http_status, ocpi_status_code FROM routing_log "
                                   "WHERE request_id = $1", request_id))  # fmt: skip
            answered.append((path, bool(auth), answer.status_code, answer.json()["status_code"],
                             path in told if auth else told, [tuple(r) for r in rows]))  # fmt: skip
    missing = "missing Authorization header: send 'Authorization: Token <base64 of your token>'"
    assert answered == [(path, bool(auth), status, 2000, True if auth else missing, [(path, status, 2000)])
                        for path in paths for auth, status in ((token, 404), ({}, 401))]  # fmt: skip


def test_the_hubs_own_routes_under_the_version_stay_its_own_with_a_slash_more_or_less(
    hub: Hub, cpo_and_emsp: tuple[Party, Party]
) -> None:
    _, emsp = cpo_and_emsp
    token = token_header(emsp.hub_token or "")
    for path in ("/ocpi/2.2.1/sender/hubclientinfo", "/ocpi/2.2.1/sender/hubclientinfo/",
                 "//ocpi/2.2.1//sender/hubclientinfo"):  # fmt: skip
        answer = httpx.get(f"{hub.base}{path}", headers=token)
        assert (answer.status_code, "X-Total-Count" in answer.headers) == (200, True), (path, answer.text)
    for path in ("/ocpi/2.2.1/", "/ocpi/2.2.1/credentials/"):
        answer = httpx.get(f"{hub.base}{path}", headers=token)
        assert (answer.status_code, answer.json()["status_code"]) == (200, 1000), (path, answer.text)


def test_a_module_name_too_long_to_index_leaves_its_row_at_once(
    hub: Hub, cpo_and_emsp: tuple[Party, Party], db: Db
) -> None:
    # the row's module (indexed) was the path's segment as sent: 8,000 characters the index refused, and the routing
    # log's writer retried that row, and those queued behind it, until they went to its spool file
    _, emsp = cpo_and_emsp
    module = "".join(f"{n:04x}" for n in range(2000))  # no run PostgreSQL's compression would shrink below its limit
    for path, auth, status in [(f"/ocpi/2.2.1/sender/{module}", {}, 401), (f"/ocpi/2.2.1/{module}", {}, 401),
                               (f"/ocpi/2.2.1/{module}", token_header(emsp.hub_token or ""), 404)]:  # fmt: skip
        request_id = f"long-module-{uuid.uuid4()}"
        answer = httpx.get(f"{hub.base}{path}", headers=auth | {"X-Request-ID": request_id})
        assert answer.status_code == status and "its row" not in answer.json()["status_message"], answer.text
        rows = db.run(db.fetch("SELECT module FROM routing_log WHERE request_id = $1", request_id))
        assert [row["module"] for row in rows] == [module[:255]]
