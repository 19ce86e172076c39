"""After Redis lost its data (FLUSHALL), the hub reads each eMSP's token list and each CPO's recent sessions again
(routing.owner_pull) and the CPOs' locations (pull sync): open authorizations, commands, session requests and
publish_allowed_to work again for what was there before."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import redis

from hub.envelope import ocpi_timestamp
from hub.settings_variables import VARIABLES
from storage.embedded import EmbeddedValkey
from tests.conftest import OUTPUT, ROOT, Hub, Services, hub_env, register_at_hub, scratch_database, start_hub
from tests.log_rows import sql
from tests.test_location_cache import _location
from tests.test_publish_allowed_to import _push_token, _shown
from tests.test_pull_sync import _wait
from tests.test_routing import _roles, party_key

TOKENS_SENDER = "/ocpi/2.2.1/tokens/sender"
PERIOD_DEFAULT = next(default for name, default, _ in VARIABLES if name == "OCPI_HUB_OWNER_INDEX_PERIOD_S")


@pytest.fixture
def own_hub(services: Services, tmp_path: Path) -> Iterator[tuple[Hub, str, str]]:
    """A hub with a database and a Valkey of its own, which the test may FLUSHALL: (hub, Redis URL, database URL)."""
    valkey = EmbeddedValkey(tmp_path / "valkey")
    redis_url = valkey.start()
    try:
        with scratch_database(services, "owners_rebuilt") as database_url:
            env = hub_env(services, tmp_path / "hub", OCPI_HUB_DATABASE_URL=database_url,
                          OCPI_HUB_REDIS_URL=redis_url, OCPI_HUB_PULL_PAGE_LIMIT="2")  # fmt: skip
            hub = start_hub(env, OUTPUT / "hub-owners-rebuilt.log")
            try:
                yield hub, redis_url, database_url
            finally:
                hub.stop()
    finally:
        valkey.stop()


def _token(owner: tuple[str, str], uid: str, **extra: str) -> dict:
    return {"country_code": owner[0], "party_id": owner[1], "uid": uid, "type": "RFID", "contract_id": f"C-{uid}",
            "issuer": "Fleet Co", "valid": True, "whitelist": "ALLOWED",
            "last_updated": "2026-11-21T09:00:00Z"} | extra  # fmt: skip


def _emsp_listing(hub: Hub, start_party, count: int, **options: object):  # type: ignore[no-untyped-def]
    """An eMSP registered at the hub whose tokens Sender lists `count` tokens of its own (TOK0, ...) and one of
    another party's, two a page."""
    roles = _roles("EMSP")
    emsp = start_party(roles, page_size=2, **options)
    owner = party_key(emsp)
    emsp.objects["tokens"] = [_token(owner, f"TOK{n}-{owner[1]}", group_id="FLEET") for n in range(count)]
    emsp.objects["tokens"].append(_token(("DE", "XYZ"), f"FOREIGN-{owner[1]}"))
    emsp.register_at(hub.versions_url, hub.invite(emsp.name, roles)["token_a"])
    return emsp, owner


def _lines(hub: Hub, event: str, owner: tuple[str, str], module: str = "tokens") -> list[dict]:
    found = [json.loads(line) for line in hub.log().splitlines() if f'"{event}"' in line]
    found = [line for line in found if line.get("module") == module]
    return [line for line in found if f"{owner[0]}-{owner[1]}" in json.dumps(line.get("party", line.get("parties")))]


def _authorize(cpo, hub: Hub, uid: str) -> dict:  # type: ignore[no-untyped-def]
    return cpo.call(hub.base, "POST", f"sender/tokens/{uid}/authorize?type=RFID", body={}).json()


def test_after_redis_lost_its_data_open_authorizations_commands_and_publish_allowed_to_work_again(
    own_hub: tuple[Hub, str, str], start_party
) -> None:
    hub, redis_url, database_url = own_hub
    emsp, owner = _emsp_listing(hub, start_party, 5)
    cpo_roles = _roles("CPO")
    cpo = start_party(cpo_roles)
    cpo_key = party_key(cpo)
    hidden = _location(cpo_key, "HIDDEN", "2026-11-21T10:00:00Z", publish=False,
                       publish_allowed_to=[{"group_id": "fleet"}])  # fmt: skip
    cpo.objects["locations"] = [_location(cpo_key, "L1", "2026-11-21T10:00:00Z"), hidden]
    cpo.register_at(hub.versions_url, hub.invite(cpo.name, cpo_roles)["token_a"])
    pushed = f"PUSHED-{owner[1]}"  # a token the eMSP pushes through the hub and does not list
    _push_token(emsp, cpo, hub, pushed)
    _wait(lambda: _lines(hub, "owner_pull_done", owner))  # a new eMSP's list is read at once
    _wait(lambda: _authorize(cpo, hub, pushed)["status_code"] == 1000)
    with redis.Redis.from_url(redis_url) as client:
        client.flushall()
    _wait(lambda: _lines(hub, "owner_index_lost", owner))
    # each token it lists is noted again; what it pushed and does not list, only when it pushes it again
    for n in (0, 4):
        answer = _wait(lambda n=n: (a := _authorize(cpo, hub, f"tok{n}-{owner[1]}"))["status_code"] == 1000 and a)
        assert answer["status_code"] == 1000
    assert [r.path for r in emsp.functional() if r.path.endswith("/authorize")][-2:] == [
        f"{TOKENS_SENDER}/tok0-{owner[1]}/authorize", f"{TOKENS_SENDER}/tok4-{owner[1]}/authorize"]  # fmt: skip
    assert _authorize(cpo, hub, f"FOREIGN-{owner[1]}")["status_code"] == 4001  # another party's: not noted
    # a location pulled by sync: its owner found again for a command; shown to the eMSP whose token's group it names
    command = emsp.call(hub.base, "POST", "receiver/commands/START_SESSION",
                        body={"response_url": f"{emsp.base}/cmd/1", "location_id": "L1",
                              "token": {"uid": "T"}})  # fmt: skip
    assert command.json()["status_code"] == 1000, command.text
    _wait(lambda: _shown(emsp, hub, cpo_key, "HIDDEN"))
    # every page asked for is a row of the routing log: three pages a pull, and its Link followed with offset/limit
    rows = sql(database_url, "SELECT query, correlation_id, http_status FROM routing_log WHERE module = 'tokens' AND "
               "routing = 'hub' AND to_party_id = $1 ORDER BY id", owner[1])  # fmt: skip
    assert [r["query"] for r in rows] == ["offset=0&limit=2", "offset=2&limit=2", "offset=4&limit=2"] * 2
    assert len({r["correlation_id"] for r in rows}) == 2 and {r["http_status"] for r in rows} == {200}
    [done] = _lines(hub, "owner_pull_done", owner)[-1:]
    assert (done["noted"], done["ignored"], done["pages"]) == (5, 1, 3)
    metrics = httpx.get(f"{hub.base}/metrics").text
    assert 'ocpi_hub_owner_index_lost_total{module="tokens"} 1.0' in metrics
    assert 'ocpi_hub_owner_pull_total{module="tokens",result="ok"} 2.0' in metrics


def test_an_emsp_whose_tokens_sender_fails_is_retried_later_and_the_others_are_pulled_meanwhile(
    own_hub: tuple[Hub, str, str], start_party
) -> None:
    hub, redis_url, _ = own_hub
    failing, failing_owner = _emsp_listing(hub, start_party, 1)  # registered first: its pull comes first
    _, owner = _emsp_listing(hub, start_party, 1)
    cpo = register_at_hub(hub, start_party, _roles("CPO"))
    _wait(lambda: _lines(hub, "owner_pull_done", failing_owner) and _lines(hub, "owner_pull_done", owner))
    failing.canned[("GET", TOKENS_SENDER)] = (500, b"down", {})
    with redis.Redis.from_url(redis_url) as client:
        client.flushall()
    _wait(lambda: _lines(hub, "owner_pull_failed", failing_owner))
    assert _wait(lambda: _authorize(cpo, hub, f"TOK0-{owner[1]}")["status_code"] == 1000)
    refused = _authorize(cpo, hub, f"TOK0-{failing_owner[1]}")
    assert refused["status_code"] == 4001, refused
    [failed] = _lines(hub, "owner_pull_failed", failing_owner)
    assert "HTTP 500" in failed["reason"] and failed["retry_in_s"] == 300
    assert 'ocpi_hub_owner_pull_total{module="tokens",result="failed"} 1.0' in httpx.get(f"{hub.base}/metrics").text


def _session(cpo: tuple[str, str], emsp: tuple[str, str], session_id: str, updated: str) -> dict:
    return {"country_code": cpo[0], "party_id": cpo[1], "id": session_id, "status": "ACTIVE", "kwh": 1.5,
            "start_date_time": updated, "location_id": "L1", "evse_uid": "E1", "connector_id": "1", "currency": "EUR",
            "auth_method": "WHITELIST", "cdr_token": {"country_code": emsp[0], "party_id": emsp[1], "uid": "T",
                                                      "type": "RFID", "contract_id": "C"},
            "last_updated": updated}  # fmt: skip


def test_after_redis_lost_its_data_open_requests_about_a_recent_session_reach_its_cpo_and_emsp_again(
    own_hub: tuple[Hub, str, str], start_party
) -> None:
    hub, redis_url, _ = own_hub
    emsp = register_at_hub(hub, start_party, _roles("EMSP"))
    roles = _roles("CPO")
    cpo = start_party(roles, page_size=2)
    owner, emsp_key = party_key(cpo), party_key(emsp)
    recent = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    # The owner index finds a session's owner for one to two periods (OCPI_HUB_OWNER_INDEX_PERIOD_S, 45 days) after it
    # was seen, in this period's notes or the previous one's: the pull reads what changed since that one started, and
    # a session last updated before is not asked for (date_from).
    period_s = float(hub.env.get("OCPI_HUB_OWNER_INDEX_PERIOD_S") or PERIOD_DEFAULT)
    previous_period = datetime.fromtimestamp((time.time() // period_s - 1) * period_s, UTC)
    cpo.objects["sessions"] = [_session(owner, emsp_key, f"S{n}", recent) for n in range(3)]
    early = (previous_period + timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")  # found before Redis lost it
    cpo.objects["sessions"].append(_session(owner, emsp_key, "EARLY", early))
    cpo.objects["sessions"].append(_session(owner, emsp_key, "OLD", "2026-01-01T00:00:00Z"))
    cpo.register_at(hub.versions_url, hub.invite(cpo.name, roles)["token_a"])
    _wait(lambda: _lines(hub, "owner_pull_done", owner, "sessions"))
    with redis.Redis.from_url(redis_url) as client:
        client.flushall()
    _wait(lambda: _lines(hub, "owner_index_lost", owner, "sessions"))
    patch = f"receiver/sessions/{owner[0]}/{owner[1]}/S2"  # the CPO's PATCH, to the eMSP its cdr_token names
    change = {"kwh": 2.0, "last_updated": recent}
    _wait(lambda: cpo.call(hub.base, "PATCH", patch, body=change).json()["status_code"] == 1000)
    assert [r.path for r in emsp.functional()][-1:] == [f"/ocpi/2.2.1/sessions/receiver/{owner[0]}/{owner[1]}/S2"]
    preferences = emsp.call(hub.base, "PUT", "sender/sessions/S0/charging_preferences",
                            body={"profile_type": "FAST"})  # the eMSP's, to the session's CPO  # fmt: skip
    assert preferences.json()["status_code"] == 1000, preferences.text
    assert [r.path for r in cpo.functional()][-1:] == ["/ocpi/2.2.1/sessions/sender/S0/charging_preferences"]
    early_patch = cpo.call(hub.base, "PATCH", f"receiver/sessions/{owner[0]}/{owner[1]}/EARLY", body=change).json()
    assert early_patch["status_code"] == 1000, early_patch
    old = cpo.call(hub.base, "PATCH", f"receiver/sessions/{owner[0]}/{owner[1]}/OLD", body=change).json()
    assert old["status_code"] == 4001, old
    [done] = _lines(hub, "owner_pull_done", owner, "sessions")[-1:]
    assert (done["noted"], done["pages"]) == (4, 2)
    since = ocpi_timestamp(previous_period)
    assert all(r.query.startswith(f"date_from={since}&") for r in cpo.owner_pulls("sessions"))


def test_an_emsp_whose_pages_repeat_without_end_and_without_a_total_is_failed_and_the_others_are_pulled(
    own_hub: tuple[Hub, str, str], start_party
) -> None:
    hub, _, _ = own_hub
    # it ignores offset: the same page each time, a Link to "the next" one, and no X-Total-Count to tell the end by
    endless = json.dumps({"data": [_token(("NL", "LOP"), "LOOPED")], "status_code": 1000,
                          "timestamp": "2026-12-01T00:00:00Z"}).encode()  # fmt: skip
    link = {"Link": f'<{TOKENS_SENDER}?offset=2&limit=2>; rel="next"', "Content-Type": "application/json"}
    looping, looping_owner = _emsp_listing(hub, start_party, 1, canned={("GET", TOKENS_SENDER): (200, endless, link)})
    _wait(lambda: len(looping.owner_pulls("tokens")) >= 2)
    _, owner = _emsp_listing(hub, start_party, 1)
    _wait(lambda: _lines(hub, "owner_pull_done", owner))
    [failed] = _lines(hub, "owner_pull_failed", looping_owner)
    assert "Link chain went on without ending" in failed["reason"], failed


def test_a_pull_during_which_redis_lost_its_data_is_not_marked_done_and_the_list_is_read_again(
    own_hub: tuple[Hub, str, str], start_party
) -> None:
    hub, redis_url, _ = own_hub
    emsp, owner = _emsp_listing(hub, start_party, 5, delay_s=1.0)  # each page a second late
    cpo = register_at_hub(hub, start_party, _roles("CPO"))
    _wait(lambda: len(emsp.owner_pulls("tokens")) >= 2)  # its first page (TOK0, TOK1) noted, the second asked for
    with redis.Redis.from_url(redis_url) as client:
        client.flushall()  # what the first page noted goes; the pages after it are noted after the loss
    answer = _wait(lambda: (a := _authorize(cpo, hub, f"TOK0-{owner[1]}"))["status_code"] == 1000 and a, timeout=20)
    assert answer["status_code"] == 1000
    [stopped] = _lines(hub, "owner_pull_stopped", owner)
    assert "lock" in stopped["reason"], stopped


def test_an_operator_has_an_emsps_token_list_read_again_with_ocpi_hub_sync_tokens(hub: Hub, start_party) -> None:
    emsp, owner = _emsp_listing(hub, start_party, 3)
    cpo = register_at_hub(hub, start_party, _roles("CPO"))
    _wait(lambda: _lines(hub, "owner_pull_done", owner))
    later = f"LATER-{owner[1]}"  # listed after its list was read, and never pushed through the hub: unknown to it
    emsp.objects["tokens"].append(_token(owner, later))
    assert _authorize(cpo, hub, later)["status_code"] == 4001
    pulls_before = len(emsp.owner_pulls("tokens"))
    synced = _cli(hub, "sync", "tokens", "--party", "-".join(owner))
    assert synced.returncode == 0, synced.stderr
    assert json.loads(synced.stdout) == [{"party": "-".join(owner), "tokens": 4, "ignored": 1,
                                          "pages": 3, "error": None}]  # fmt: skip
    assert len(emsp.owner_pulls("tokens")) == pulls_before + 3  # read again, though marked read: two a page
    assert _authorize(cpo, hub, later)["status_code"] == 1000


def test_ocpi_hub_sync_of_tokens_or_sessions_says_what_it_cannot_do(hub: Hub) -> None:
    nobody = ("ZZ", "NOB")
    for args, code, said in [
        (("sync", "tokens", "--full"), 2, "--full is for locations: tokens are read whole each time"),
        (("sync", "tokens", "--party", "-".join(nobody)), 1, "no connected EMSP or OTHER ZZ-NOB with a tokens Sender"),
        (("sync", "sessions", "--party", "-".join(nobody)), 1, "no connected CPO ZZ-NOB with a sessions Sender"),
    ]:
        result = _cli(hub, *args)
        assert (result.returncode, result.stdout) == (code, ""), result.stderr
        assert said in result.stderr and "Traceback" not in result.stderr


def _cli(hub: Hub, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hub.cli", *args], env=hub.env, cwd=ROOT, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
