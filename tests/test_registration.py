"""The credentials handshake with the hub as Receiver: a party registers, updates, reads and unregisters."""

from __future__ import annotations

import asyncio
import base64
import threading
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import redis.asyncio as redis

from storage.directory import DirectoryCache, announce_change
from storage.secrets import TokenBox, token_hash
from tests.conftest import OUTPUT, Hub, Services, hub_env, start_hub, unique_party_id
from tests.log_rows import calls_of, own_conversation, own_messages_wrong
from tests.parties import Party, token_header
from tests.test_admin_and_cli import _platform_id


def _invited_party(hub: Hub, start_party, *roles: tuple[str, str, str], **options) -> tuple[Party, str]:
    party = start_party(*roles, **options)
    return party, hub.invite(party.name, *roles)["token_a"]


def _credentials_url(hub: Hub) -> str:
    return f"{hub.base}/ocpi/2.2.1/credentials"


def test_versions_offer_221_and_details_list_every_module_on_both_interfaces(hub: Hub, start_party) -> None:
    _, token_a = _invited_party(hub, start_party, ("CPO", "NL", unique_party_id()))
    versions = httpx.get(hub.versions_url, headers=token_header(token_a)).json()
    assert versions["status_code"] == 1000
    assert versions["data"] == [{"version": "2.2.1", "url": f"{hub.base}/ocpi/2.2.1"}]
    details = httpx.get(versions["data"][0]["url"], headers=token_header(token_a)).json()["data"]
    offered = {(e["identifier"], e["role"]) for e in details["endpoints"]}
    assert ("credentials", "SENDER") in offered
    assert ("hubclientinfo", "SENDER") in offered
    for module in ("cdrs", "chargingprofiles", "commands", "locations", "sessions", "tariffs", "tokens"):
        assert {(module, "SENDER"), (module, "RECEIVER")} <= offered


def test_registration_fetches_party_endpoints_with_token_b_and_answers_hub_credentials(
    hub: Hub, start_party, db
) -> None:
    pid = unique_party_id()
    party, token_a = _invited_party(hub, start_party, ("CPO", "NL", pid))
    answer = party.register_at(hub.versions_url, token_a)

    body = answer.json()
    assert answer.status_code == 200 and body["status_code"] == 1000, body
    assert body["data"]["url"] == hub.versions_url
    assert body["data"]["roles"] == [
        {"role": "HUB", "business_details": {"name": "ocpi-hub"}, "party_id": "HUB", "country_code": "NL"}
    ]
    token_c = body["data"]["token"]
    assert token_c not in (token_a, party.token_b)
    # The hub called the party's versions and details, with token B in base64.
    calls = [(r.method, r.path, r.headers["Authorization"]) for r in party.received]
    expected_auth = "Token " + base64.b64encode(party.token_b.encode()).decode()
    assert ("GET", "/ocpi/versions", expected_auth) in calls
    assert ("GET", "/ocpi/2.2.1", expected_auth) in calls
    # Stored: endpoints, role connected with its business details, token B only encrypted.
    row = db.run(
        db.fetchrow(
            "SELECT p.id, p.state, p.version, p.token_b, r.status, r.business_details FROM platform p "
            "JOIN party_role r ON r.platform_id = p.id WHERE r.party_id = $1",
            pid,
        )
    )
    assert (row["state"], row["version"], row["status"]) == ("REGISTERED", "2.2.1", "CONNECTED")
    assert party.token_b.encode() not in row["token_b"]
    assert "Test Party CPO" in row["business_details"]
    endpoints = db.run(
        db.fetch("SELECT identifier, interface_role FROM platform_endpoint WHERE platform_id = $1", row["id"])
    )
    assert ("locations", "SENDER") in {(e["identifier"], e["interface_role"]) for e in endpoints}
    # No token is stored in the clear.
    for table in ("credentials_token", "platform"):
        dump = str(db.run(db.fetch(f"SELECT * FROM {table}")))
        assert token_c not in dump and token_a not in dump


def test_the_hubs_calls_while_a_party_registers_or_updates_are_routing_log_rows_in_the_partys_conversation(
    hub: Hub, start_party, db
) -> None:
    pid = unique_party_id()
    party, token_a = _invited_party(hub, start_party, ("CPO", "NL", pid))
    tokens = [token_a, party.token_b]
    for method, token in (("POST", token_a), ("PUT", None)):
        correlation_id = f"{method.lower()}-{pid}-{uuid.uuid4()}"
        sent = token_header(token or party.hub_token or "") | {"X-Correlation-ID": correlation_id}
        answer = httpx.request(method, _credentials_url(hub), headers=sent, json=party.credentials(party.token_b))
        assert answer.status_code == 200 and answer.json()["status_code"] == 1000, answer.text
        party.hub_token = answer.json()["data"]["token"]
        tokens.append(party.hub_token)
        [own, *rows] = own_conversation(db, correlation_id)
        platform_id = _platform_id(hub, ("NL", pid))
        # the party's own request first, from its party to the hub, its token and the hub's hidden (an auditor asked
        # when a party registered, and when one left on its own DELETE: neither had a row)
        assert (own["module"], own["method"], own["routing"], own["http_status"], own["ocpi_status_code"]) == (
            "credentials", method, "hub", 200, 1000)  # fmt: skip
        assert (own["from_party_id"], own["to_party_id"]) == (pid, "HUB") and own["caller_platform_id"] == platform_id
        assert all(token not in str(own) for token in tokens) and '"token":"(not logged)"' in own["response_body"]
        # the versions and details the hub read with token B before it answered, in the party's conversation
        assert calls_of(rows) == [
            ("versions", "GET", f"{party.base}/ocpi/versions", 200, platform_id, ("NL", pid)),
            ("versions", "GET", f"{party.base}/ocpi/2.2.1", 200, platform_id, ("NL", pid)),
        ]
        assert own_messages_wrong(rows, party.received, *tokens) == ""
    with hub.admin() as admin:
        assert admin.get("/admin/api/routing-log/verify").json()["ok"] is True


def test_a_credentials_body_that_is_empty_or_no_json_is_answered_http_400(hub: Hub, start_party) -> None:
    party, token_a = _invited_party(hub, start_party, ("CPO", "NL", unique_party_id()))
    for body in (b"", b" \n", b"{"):  # an empty one was answered HTTP 200 (found by a spec review)
        answer = httpx.post(_credentials_url(hub), headers=token_header(token_a), content=body)
        assert (answer.status_code, answer.json()["status_code"]) == (400, 2001), answer.text
    assert party.received == []


def test_a_registration_with_a_correlation_id_too_long_for_the_routing_log_is_refused(hub: Hub, start_party) -> None:
    party, token_a = _invited_party(hub, start_party, ("CPO", "NL", unique_party_id()))
    sent = token_header(token_a) | {"X-Correlation-ID": "c" * 256}
    answer = httpx.post(_credentials_url(hub), headers=sent, json=party.credentials(party.token_b))
    assert (answer.status_code, answer.json()["status_code"]) == (200, 2001)  # a header error: HTTP 200
    assert "X-Correlation-ID" in answer.json()["status_message"] and party.received == []


def test_credentials_holding_the_hubs_own_token_or_versions_url_are_refused(hub: Hub, start_party) -> None:
    # The hub took both and registered with itself: a party calling itself, on a token B the hub had just dropped.
    party, token_a = _invited_party(hub, start_party, ("CPO", "NL", unique_party_id()))
    mine = party.credentials(party.token_b)
    hubs_own = {"token": token_a, "url": hub.versions_url}
    for given, named in ((hubs_own, "token"), ({"token": token_a}, "token"), ({"url": hub.versions_url}, "url")):
        answer = httpx.post(_credentials_url(hub), headers=token_header(token_a), json=mine | given)
        assert (answer.status_code, answer.json()["status_code"]) == (200, 2001), answer.text  # as for roles
        assert f"the credentials' {named}" in answer.json()["status_message"]
    assert party.received == []
    assert party.register_at(hub.versions_url, token_a).json()["status_code"] == 1000  # token A is still good


def test_a_token_b_whose_base64_decoding_is_a_hub_token_is_refused_at_registration_and_in_a_put(
    hub: Hub, start_party
) -> None:
    # Security review, finding 6: the party refuses its token B Base64-encoded, so the hub sends it raw, "Token
    # base64(C1)", which the hub reads as another platform's token C1: the hub forwarded to itself in a loop.
    other, other_a = _invited_party(hub, start_party, ("CPO", "NL", unique_party_id()))
    assert other.register_at(hub.versions_url, other_a).json()["status_code"] == 1000
    encoded_c1 = base64.b64encode((other.hub_token or "").encode()).decode()
    party, token_a = _invited_party(hub, start_party, ("EMSP", "NL", unique_party_id()), raw_tokens=True)
    answer = httpx.post(_credentials_url(hub), headers=token_header(token_a), json=party.credentials(encoded_c1))
    assert (answer.status_code, answer.json()["status_code"]) == (200, 2001), answer.text
    assert "the credentials' token is one the hub issued" in answer.json()["status_message"]
    assert party.received == []
    assert party.register_at(hub.versions_url, token_a).json()["status_code"] == 1000  # token A is still good
    answer = httpx.put(_credentials_url(hub), headers=token_header(party.hub_token or ""),
                       json=party.credentials(encoded_c1))  # fmt: skip
    assert (answer.status_code, answer.json()["status_code"]) == (200, 2001), answer.text
    assert "the credentials' token is one the hub issued" in answer.json()["status_message"]


def test_token_a_stops_working_after_registration(hub: Hub, start_party) -> None:
    party, token_a = _invited_party(hub, start_party, ("EMSP", "DE", unique_party_id()))
    assert party.register_at(hub.versions_url, token_a).json()["status_code"] == 1000
    assert httpx.get(hub.versions_url, headers=token_header(token_a)).status_code == 401
    assert httpx.get(hub.versions_url, headers=token_header(party.hub_token)).status_code == 200


def test_a_spent_token_is_refused_saying_whose_it_was_when_it_was_spent_and_which_token_to_send(
    hub: Hub, start_party, db
) -> None:
    # A common integration mistake: the party keeps calling with the token A it registered with; it heard only
    # "unknown credentials token". credentials.asciidoc: token A is spent by the registration, a token C by an update.
    pid = unique_party_id()
    party, token_a = _invited_party(hub, start_party, ("EMSP", "DE", pid))
    assert party.register_at(hub.versions_url, token_a).json()["status_code"] == 1000
    token_c = party.hub_token or ""
    update = httpx.put(_credentials_url(hub), headers=token_header(token_c), json=party.credentials(party.token_b))
    assert update.status_code == 200 and update.json()["status_code"] == 1000, update.text
    platform_id = _platform_id(hub, ("DE", pid))
    # the last spent token of each kind only, its hash only
    kept = db.run(db.fetch("SELECT kind, token_hash, spent_at FROM spent_token WHERE platform_id = $1 ORDER BY kind",
                           platform_id))  # fmt: skip
    assert [(r["kind"], r["token_hash"]) for r in kept] == [("A", token_hash(token_a)), ("C", token_hash(token_c))]
    day = {r["kind"]: f"{r['spent_at']:%Y-%m-%d}" for r in kept}
    said_to = {
        token_a: f"this is the token A platform {party.name} registered with on {day['A']}; it is no longer valid "
        "(credentials.asciidoc): send the token the hub returned in its credentials answer (token C)",
        token_c: f"this is a token C of platform {party.name} that an update of its credentials replaced on "
        f"{day['C']}; it is no longer valid (credentials.asciidoc): send the token C of the latest credentials "
        "exchange (the hub's answer to your PUT, or the hub's own PUT)",
    }
    # on the hub's own modules and on a relayed one alike, the token Base64-encoded or raw
    for token, said in said_to.items():
        for url in (hub.versions_url, _credentials_url(hub), f"{hub.base}/ocpi/2.2.1/sender/locations"):
            for header in (token_header(token), {"Authorization": f"Token {token}"}):
                answer = httpx.get(url, headers=header)
                assert (answer.status_code, answer.json()["status_message"]) == (401, said), answer.text
    # only a token the hub issued is told more: one never issued is still only unknown
    answer = httpx.get(hub.versions_url, headers=token_header(uuid.uuid4().hex))
    assert (answer.status_code, answer.json()["status_message"]) == (401, "unknown credentials token")
    assert httpx.get(hub.versions_url, headers=token_header(update.json()["data"]["token"])).status_code == 200


def test_token_a_is_refused_outside_versions_and_credentials(hub: Hub, start_party) -> None:
    _, token_a = _invited_party(hub, start_party, ("CPO", "NL", unique_party_id()))
    answer = httpx.get(f"{hub.base}/ocpi/2.2.1/sender/locations", headers=token_header(token_a))
    assert answer.status_code == 401
    assert "token A" in answer.json()["status_message"]


def test_post_when_already_registered_answers_405(hub: Hub, start_party) -> None:
    party, token_a = _invited_party(hub, start_party, ("CPO", "NL", unique_party_id()))
    party.register_at(hub.versions_url, token_a)
    again = httpx.post(_credentials_url(hub), headers=token_header(party.hub_token), json=party.credentials("x" * 10))
    assert again.status_code == 405
    assert again.json()["status_code"] == 2000
    assert "already registered" in again.json()["status_message"]
    assert again.headers["Allow"] == "GET, PUT, DELETE"  # RFC 9110, 15.5.6: a 405 names the methods that are allowed


def test_put_and_delete_before_registration_answer_405(hub: Hub, start_party) -> None:
    party, token_a = _invited_party(hub, start_party, ("CPO", "NL", unique_party_id()))
    put = httpx.put(_credentials_url(hub), headers=token_header(token_a), json=party.credentials(party.token_b))
    delete = httpx.delete(_credentials_url(hub), headers=token_header(token_a))
    assert (put.status_code, delete.status_code) == (405, 405)
    assert "not registered" in put.json()["status_message"]
    assert put.headers["Allow"] == delete.headers["Allow"] == "GET, POST"


def test_options_on_credentials_names_the_methods_its_405_names(hub: Hub) -> None:
    # Litestar's OPTIONS answer named those of the path's first handler only: "GET, OPTIONS"
    options, patch = httpx.options(_credentials_url(hub)), httpx.patch(_credentials_url(hub))
    assert (options.status_code, patch.status_code) == (204, 405)
    allowed = [set(answer.headers["Allow"].split(", ")) for answer in (options, patch)]
    assert allowed == [{"GET", "POST", "PUT", "DELETE", "OPTIONS"}] * 2


def test_party_without_any_functional_module_answers_3003(hub: Hub, start_party) -> None:
    party, token_a = _invited_party(
        hub, start_party, ("CPO", "NL", unique_party_id()), modules={"x-custom": ["SENDER"]}
    )
    answer = party.register_at(hub.versions_url, token_a).json()
    assert answer["status_code"] == 3003


def test_a_credentials_endpoint_listed_with_a_party_role_registers_and_other_such_endpoints_are_left_out(
    hub: Hub, start_party, db
) -> None:
    # version_information_endpoint.asciidoc: "disregard the value of the role property of the Endpoint object for
    # other platforms' credentials modules". A role "CPO" elsewhere says no interface: that endpoint is left out.
    pid = unique_party_id()
    modules = {"locations": ["SENDER"], "tariffs": ["CPO"]}
    party, token_a = _invited_party(
        hub, start_party, ("CPO", "NL", pid), name=f"Older CPO {pid}", credentials_role="CPO", modules=modules
    )
    answer = party.register_at(hub.versions_url, token_a).json()
    assert answer["status_code"] == 1000, answer
    stored = db.run(
        db.fetch(
            "SELECT e.identifier, e.interface_role FROM platform_endpoint e JOIN party_role r "
            "ON r.platform_id = e.platform_id WHERE r.party_id = $1 ORDER BY 1",
            pid,
        )
    )
    assert [(e["identifier"], e["interface_role"]) for e in stored] == [
        ("credentials", "SENDER"),
        ("locations", "SENDER"),
    ]
    ignored = [line for line in hub.log().splitlines() if "party_endpoint_ignored" in line and party.name in line]
    assert ignored and "tariffs" in ignored[-1]


def test_put_refetches_endpoints_and_rotates_token_c(hub: Hub, start_party, db) -> None:
    pid = unique_party_id()
    party, token_a = _invited_party(hub, start_party, ("CPO", "NL", pid))
    party.register_at(hub.versions_url, token_a)
    old_c = party.hub_token
    tariffs = f"{hub.base}/ocpi/2.2.1/sender/tariffs"  # the relay's path, which remembers the headers it recognised
    assert httpx.get(tariffs, headers=token_header(old_c)).status_code != 401
    party.modules = {"locations": ["SENDER"], "tariffs": ["SENDER"]}
    party.token_b = "rotated-token-b-" + pid
    answer = httpx.put(_credentials_url(hub), headers=token_header(old_c), json=party.credentials(party.token_b))
    assert answer.json()["status_code"] == 1000, answer.text
    new_c = answer.json()["data"]["token"]
    assert new_c != old_c
    assert httpx.get(hub.versions_url, headers=token_header(old_c)).status_code == 401
    assert httpx.get(tariffs, headers=token_header(old_c)).status_code == 401
    assert httpx.get(hub.versions_url, headers=token_header(new_c)).status_code == 200
    stored = db.run(
        db.fetch(
            "SELECT e.identifier FROM platform_endpoint e JOIN party_role r ON r.platform_id = e.platform_id "
            "WHERE r.party_id = $1 ORDER BY 1",
            pid,
        )
    )
    assert [r["identifier"] for r in stored] == ["credentials", "locations", "tariffs"]
    # The hub fetched the endpoints again with the new token B (ClientInfo pushes about others may come after).
    last = [r for r in party.received if r.method == "GET" and r.path == "/ocpi/2.2.1"][-1]
    assert last.headers["Authorization"] == "Token " + base64.b64encode(party.token_b.encode()).decode()


class _SlowLink:
    """A TCP relay on 127.0.0.1 that holds each chunk sent to the server for delay_s: a database further away."""

    def __init__(self, url: str, delay_s: float) -> None:
        self.target, self.delay_s = urlsplit(url), delay_s
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        threading.Thread(target=self._run, args=(ready,), daemon=True).start()
        ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        self.server = self.loop.run_until_complete(asyncio.start_server(self._relay, "127.0.0.1", 0))
        ready.set()
        self.loop.run_forever()

    def url(self) -> str:
        port = self.server.sockets[0].getsockname()[1]
        return urlunsplit(self.target._replace(netloc=self.target.netloc.replace(f":{self.target.port}", f":{port}")))

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(self.target.hostname, self.target.port)
        await asyncio.gather(self._pipe(reader, up_writer, self.delay_s), self._pipe(up_reader, writer, 0))

    @staticmethod
    async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter, delay_s: float) -> None:
        try:
            while chunk := await source.read(65536):
                await asyncio.sleep(delay_s)
                sink.write(chunk)
                await sink.drain()
        except ConnectionError:
            pass
        finally:
            sink.close()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)


def test_a_new_token_c_works_at_once_on_every_hub_process(
    hub: Hub, services: Services, tmp_path: Path, start_party
) -> None:
    # Each process authenticates from its own copy of the directory, reloaded when another announces a change. The
    # other process here reaches PostgreSQL over a slower link, so its reload lags the announcement by a few tenths
    # of a second: a token C issued by the first process must not be refused meanwhile.
    link = _SlowLink(services.database_url, delay_s=0.03)
    other = start_hub(hub_env(services, tmp_path / "other", OCPI_HUB_DATABASE_URL=link.url()),
                      OUTPUT / "hub-other-token-c.log")  # fmt: skip
    try:
        refused = []
        for n in range(20):
            party, token_a = _invited_party(hub, start_party, ("CPO", "NL", unique_party_id()))
            assert party.register_at(hub.versions_url, token_a).json()["status_code"] == 1000
            if n % 2:  # Litestar's path (credentials)
                at_once = httpx.get(_credentials_url(other), headers=token_header(party.hub_token or ""))
                refused += [at_once.text] if at_once.status_code != 200 else []
            else:  # the relay's (a functional module): the receiver named is unknown, so 4001, not 401
                at_once = party.call(other.base, "GET", "sender/tariffs", to=("ZZ", "ZZZ"))
                refused += [at_once.text] if at_once.json()["status_code"] != 4001 else []
        assert refused == []
    finally:
        other.stop()
        link.close()


def test_a_flood_of_unknown_tokens_costs_one_generation_check_at_a_time_and_a_reload_only_after_a_change(
    hub: Hub, services: Services, tmp_path: Path
) -> None:
    # hub: the session's hub has migrated the database the directory is loaded from
    async def flood(cache: DirectoryCache) -> None:
        await asyncio.gather(*(cache.catch_up() for _ in range(200)))

    async def run() -> tuple[int, int, int, int]:
        pool = await asyncpg.create_pool(services.database_url, min_size=1, max_size=4)
        client = redis.Redis.from_url(services.redis_url)
        prefix = f"{services.redis_prefix}flood:"  # a generation counter no other test moves
        cache = DirectoryCache(pool, client, prefix, TokenBox(hub_env(services, tmp_path)["OCPI_HUB_SECRET_KEY"]))
        try:
            await cache.reload()
            gets, reloads = 0, 0
            real_get, real_reload = client.get, cache.reload

            async def counted_get(key):  # type: ignore[no-untyped-def]
                nonlocal gets
                gets += 1
                return await real_get(key)

            async def counted_reload(unless_seen: int | None = None) -> None:
                nonlocal reloads
                reloads += 1
                await real_reload(unless_seen)

            client.get, cache.reload = counted_get, counted_reload  # type: ignore[method-assign]
            await flood(cache)
            unchanged = (gets, reloads)
            gets, reloads = 0, 0
            await announce_change(client, prefix)
            await flood(cache)
            return (*unchanged, gets, reloads)
        finally:
            await client.aclose()
            await pool.close()

    gets, reloads, gets_after_change, reloads_after_change = asyncio.run(run())
    # The first caller's check; the 199 that arrived while it ran share the next one. A reload only after a change
    # (it reads the counter once more itself), and the second check finds the directory up to date.
    assert (gets, reloads) == (2, 0)
    assert (gets_after_change, reloads_after_change) == (3, 1)


def test_delete_unregisters_and_token_c_stops_working(hub: Hub, start_party) -> None:
    pid = unique_party_id()
    party, token_a = _invited_party(hub, start_party, ("EMSP", "BE", pid))
    party.register_at(hub.versions_url, token_a)
    answer = httpx.delete(_credentials_url(hub), headers=token_header(party.hub_token) | {"X-Request-ID": f"bye-{pid}"})
    assert (answer.status_code, answer.json()["status_code"]) == (200, 1000)
    assert httpx.get(_credentials_url(hub), headers=token_header(party.hub_token)).status_code == 401
    with hub.admin() as admin:
        items = [i for i in admin.get("/admin/api/parties").json()["items"] if i["party_id"] == pid]
        [row] = admin.get("/admin/api/routing-log", params={"request_id": f"bye-{pid}"}).json()["items"]
    assert [i["status"] for i in items] == ["UNREGISTERED"]
    assert (row["method"], row["from_party_id"], row["caller_platform_id"]) == ("DELETE", pid, items[0]["platform_id"])
    # The party id is free again for a new invitation.
    hub.invite("Successor", ("EMSP", "BE", pid))


def test_get_credentials_returns_the_hubs_credentials_for_the_caller(hub: Hub, start_party) -> None:
    party, token_a = _invited_party(hub, start_party, ("CPO", "NL", unique_party_id()))
    party.register_at(hub.versions_url, token_a)
    answer = httpx.get(_credentials_url(hub), headers=token_header(party.hub_token)).json()
    assert answer["status_code"] == 1000
    assert answer["data"]["token"] == party.hub_token
    assert answer["data"]["roles"][0]["role"] == "HUB"


def test_platform_with_several_roles_registers_once(hub: Hub, start_party) -> None:
    pid = unique_party_id()
    roles = [("CPO", "NL", pid), ("EMSP", "NL", pid), ("CPO", "NL", unique_party_id())]
    party, token_a = _invited_party(hub, start_party, *roles)
    assert party.register_at(hub.versions_url, token_a).json()["status_code"] == 1000
    with hub.admin() as admin:
        items = admin.get("/admin/api/parties").json()["items"]
    mine = {(i["role"], i["party_id"]): i for i in items if i["platform"] == party.name and i["status"] == "CONNECTED"}
    assert {(r, p) for r, _, p in roles} <= set(mine)
    assert len({mine[(r, p)]["platform_id"] for r, _, p in roles}) == 1


def test_registration_refuses_roles_the_invitation_did_not_grant(hub: Hub, start_party) -> None:
    mine, someone_elses = unique_party_id(), unique_party_id()
    party = start_party(("CPO", "NL", mine), ("CPO", "NL", someone_elses))
    token_a = hub.invite(party.name, ("CPO", "NL", mine))["token_a"]
    answer = party.register_at(hub.versions_url, token_a).json()
    assert answer["status_code"] == 2001
    assert f"CPO NL-{someone_elses}" in answer["status_message"]
    assert party.received == []  # refused before the hub called the party


def test_party_ids_are_matched_case_insensitively(hub: Hub, start_party) -> None:
    pid = unique_party_id()
    party = start_party(("CPO", "nl", pid.lower()))
    token_a = hub.invite(party.name, ("CPO", "NL", pid))["token_a"]
    assert party.register_at(hub.versions_url, token_a).json()["status_code"] == 1000


def test_raw_token_header_of_older_parties_is_accepted(hub: Hub, start_party) -> None:
    _, token_a = _invited_party(hub, start_party, ("CPO", "NL", unique_party_id()))
    assert httpx.get(hub.versions_url, headers={"Authorization": f"Token {token_a}"}).status_code == 200


def test_the_hub_does_not_follow_a_redirect_of_a_credentials_call_it_makes(hub: Hub, start_party) -> None:
    # httpx, like browsers, would send a DELETE redirected with 301 on to the new URL (and turn a POST into a GET):
    # a call the party never asked for. The hub says what the party answered instead.
    pid = unique_party_id()
    party, token_a = _invited_party(hub, start_party, ("CPO", "NL", pid))
    assert party.register_at(hub.versions_url, token_a).json()["status_code"] == 1000
    moved = f"{party.base}/ocpi/2.2.1/elsewhere"
    party.canned[("DELETE", "/ocpi/2.2.1/credentials")] = (301, b"moved", {"Location": moved})
    with hub.admin() as admin:
        items = admin.get("/admin/api/parties").json()["items"]
        platform_id = next(i["platform_id"] for i in items if i["party_id"] == pid)
        answer = admin.delete(f"/admin/api/parties/{platform_id}").json()
    assert answer["party_told"] is False and "answered HTTP 301" in answer["party_answer"], answer
    assert [r.path for r in party.received if r.path.endswith("/elsewhere")] == []
