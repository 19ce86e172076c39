"""A platform back from a suspension is pushed the ClientInfo of the other parties' changes it missed meanwhile (their
status as it is now, once each), once its roles are CONNECTED again, by whichever hub process takes the push turn;
nothing while it is suspended (migration 0027)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx

from tests.conftest import Hub, Services, hub_env, register_at_hub, start_hub, unique_party_id
from tests.log_rows import sql
from tests.parties import RAW, token_header
from tests.test_admin_and_cli import _cli, _platform_id
from tests.test_hub_client_info import _push_rows, _pushes_about, _wait_for
from tests.test_routing import _roles, party_key


def _statuses(party, about) -> list[str]:  # type: ignore[no-untyped-def]
    return [p["status"] for p in _pushes_about(party, about)]


def test_a_resumed_platform_is_pushed_what_changed_while_it_was_suspended_and_nothing_before(
    hub: Hub, connect_party, db
) -> None:  # type: ignore[no-untyped-def]
    suspended = connect_party(_roles("EMSP"), name="Suspended eMSP")
    watcher, unchanged, goes_offline = (connect_party(_roles(role)) for role in ("EMSP", "CPO", "CPO"))
    assert _wait_for(lambda: _statuses(suspended, party_key(goes_offline)) == ["PLANNED", "CONNECTED"])
    # delivered (a round marks its changes once every party answered): one pending would be pushed again on resume
    assert _wait_for(
        lambda: db.run(db.fetchval("SELECT count(*) FROM client_info_push WHERE delivered_at IS NULL")) == 0
    )
    time.sleep(1.1)  # what it misses is taken from a second before its suspension (storage/queries.sql)
    suspended_id = _platform_id(hub, party_key(suspended))
    with hub.admin() as admin:
        assert admin.post(f"/admin/api/parties/{suspended_id}/suspend", json={"reason": "test"}).status_code == 200
    assert _wait_for(lambda: _statuses(watcher, party_key(suspended))[-1:] == ["OFFLINE"])
    before = len(suspended.client_infos())

    # meanwhile another platform is suspended (OFFLINE) and a new one registers (PLANNED, then CONNECTED)
    with hub.admin() as admin:
        offline_id = _platform_id(hub, party_key(goes_offline))
        assert admin.post(f"/admin/api/parties/{offline_id}/suspend", json={"reason": "test"}).status_code == 200
    newcomer = connect_party(_roles("CPO"), name="Newcomer")
    assert _wait_for(lambda: _statuses(watcher, party_key(newcomer)) == ["PLANNED", "CONNECTED"])
    assert _wait_for(lambda: _statuses(watcher, party_key(goes_offline))[-1:] == ["OFFLINE"])
    time.sleep(0.5)  # a push to the suspended party would have come with the watcher's
    assert len(suspended.client_infos()) == before

    with hub.admin() as admin:
        assert admin.post(f"/admin/api/parties/{suspended_id}/resume").status_code == 200
    # once its role is CONNECTED again: each change it missed, as it is now (not the newcomer's PLANNED before it)
    assert _wait_for(lambda: _statuses(suspended, party_key(newcomer)) == ["CONNECTED"], timeout=20)
    assert _wait_for(lambda: _statuses(suspended, party_key(goes_offline)) == ["PLANNED", "CONNECTED", "OFFLINE"])
    assert _wait_for(lambda: _statuses(watcher, party_key(suspended))[-1] == "CONNECTED")
    # not what did not change since it was suspended; each push a routing-log row, as every push is
    assert _statuses(suspended, party_key(unchanged)) == ["PLANNED", "CONNECTED"]
    rows = _wait_for(lambda: _push_rows(db, party_key(newcomer), to=party_key(suspended)))
    assert [(r["routing"], r["method"], r["http_status"]) for r in rows] == [("hub", "PUT", 200)]
    assert _wait_for(lambda: db.run(db.fetchrow(
        "SELECT client_info_missed_since IS NULL AND client_info_missed_after IS NULL AS done FROM platform "
        "WHERE id = $1", suspended_id))["done"])  # fmt: skip
    time.sleep(0.5)  # and none twice
    assert _statuses(suspended, party_key(newcomer)) == ["CONNECTED"]
    with hub.admin() as admin:
        assert admin.post(f"/admin/api/parties/{offline_id}/resume").status_code == 200


def test_a_platform_resumed_from_the_cli_is_pushed_what_it_missed_by_the_running_hub(hub: Hub, connect_party) -> None:  # type: ignore[no-untyped-def]
    suspended = connect_party(_roles("EMSP"), name="Suspended from the CLI")
    platform_id = _platform_id(hub, party_key(suspended))
    assert _cli(hub, "parties", "suspend", str(platform_id), "--reason", "test").returncode == 0
    # the running hub hears of it through Redis
    assert _wait_for(lambda: httpx.get(hub.versions_url, headers=token_header(suspended.hub_token)).status_code == 401)
    newcomer = connect_party(_roles("CPO"), name="Newcomer")
    time.sleep(0.5)
    assert _statuses(suspended, party_key(newcomer)) == []
    resumed = _cli(hub, "parties", "resume", str(platform_id))  # a process of its own, gone before anything is pushed
    assert resumed.returncode == 0, resumed.stderr
    assert _wait_for(lambda: _statuses(suspended, party_key(newcomer)) == ["CONNECTED"], timeout=40)


def test_hundreds_of_changes_missed_are_pushed_in_batches_each_once(
    services: Services, empty_database: str, tmp_path: Path, start_party
) -> None:
    env = hub_env(services, tmp_path / "hub", OCPI_HUB_DATABASE_URL=empty_database,
                  OCPI_HUB_REDIS_PREFIX=f"{services.redis_prefix}missed-{tmp_path.name}:")  # fmt: skip
    hub = start_hub(env, tmp_path / "hub.log")
    try:
        suspended = register_at_hub(hub, start_party, _roles("EMSP"))
        platform_id = _platform_id(hub, party_key(suspended))
        with hub.admin() as admin:
            assert admin.post(f"/admin/api/parties/{platform_id}/suspend", json={"reason": "x"}).status_code == 200
        invited = [("CPO", "DE", unique_party_id()) for _ in range(120)]  # 50 a round: three rounds
        hub.invite("Many roles", *invited)
        time.sleep(0.5)
        assert suspended.client_infos() == []
        with hub.admin() as admin:
            assert admin.post(f"/admin/api/parties/{platform_id}/resume").status_code == 200
        assert _wait_for(lambda: len(suspended.client_infos()) >= len(invited), timeout=30)
        time.sleep(1.0)  # none more, none twice
        pushed = sorted(r.path.rsplit("/", 1)[1] for r in suspended.client_infos())
        assert pushed == sorted(pid for _, _, pid in invited)
        missed = sql(empty_database, "SELECT client_info_missed_since FROM platform WHERE id = $1", platform_id)
        assert missed[0][0] is None
    finally:
        hub.stop()
    assert "client_info_push_failed" not in hub.log()


def test_a_platform_with_no_client_info_receiver_keeps_no_mark_of_what_it_missed(hub: Hub, connect_party, db) -> None:  # type: ignore[no-untyped-def]
    deaf = connect_party(_roles("CPO"), name="No hubclientinfo", modules={"locations": ["SENDER"]})
    deaf_id = _platform_id(hub, party_key(deaf))
    with hub.admin() as admin:
        assert admin.post(f"/admin/api/parties/{deaf_id}/suspend", json={"reason": "test"}).status_code == 200
        assert admin.post(f"/admin/api/parties/{deaf_id}/resume").status_code == 200
    # nowhere to push what it missed: the mark goes at the next round, not read again every round for good
    connect_party(_roles("EMSP"), name="A change that makes a round")
    missed = "SELECT client_info_missed_since IS NULL FROM platform WHERE id = $1"
    assert _wait_for(lambda: db.run(db.fetchval(missed, deaf_id)))
    assert deaf.client_infos() == []


def test_a_role_that_changes_during_a_catch_up_is_pushed_once_with_its_newest_status(
    services: Services, empty_database: str, tmp_path: Path, start_party
) -> None:
    # mod_hub_client_info.asciidoc, Push model: "Any changes to ClientInfo" are PUT: a change once, and the last PUT
    # of a role its status now. A role that changes while a party is being caught up is pushed that change as every
    # change is; its batch of the catch-up, later, must not push it again.
    env = hub_env(services, tmp_path / "hub", OCPI_HUB_DATABASE_URL=empty_database, OCPI_HUB_FORWARD_TIMEOUT_S="20",
                  OCPI_HUB_REDIS_PREFIX=f"{services.redis_prefix}during-{tmp_path.name}:")  # fmt: skip
    hub = start_hub(env, tmp_path / "hub.log")
    invited = [("CPO", "DE", unique_party_id()) for _ in range(60)]  # 50 a round: the later role is in a later batch
    first_batch = threading.Event()  # the catch-up's first push waits for it: the change comes meanwhile
    try:
        behind = register_at_hub(hub, start_party, _roles("EMSP"), held=first_batch,
                                 held_paths=(f"/ocpi/2.2.1/hubclientinfo/receiver/DE/{invited[0][2]}",))  # fmt: skip
        behind_id = _platform_id(hub, party_key(behind))
        with hub.admin() as admin:
            assert admin.post(f"/admin/api/parties/{behind_id}/suspend", json={"reason": "x"}).status_code == 200
        hub.invite("Many roles", *invited)
        changes = register_at_hub(hub, start_party, _roles("CPO"))  # its role comes after them all
        pending = "SELECT count(*) FROM client_info_push WHERE delivered_at IS NULL"
        _wait_for(lambda: sql(empty_database, pending)[0][0] == 0)  # missed: pushed to no one, it being suspended
        with hub.admin() as admin:
            assert admin.post(f"/admin/api/parties/{behind_id}/resume").status_code == 200
        _wait_for(lambda: behind.client_infos(), timeout=30)  # the catch-up has begun, held at its first push
        with hub.admin() as admin:
            assert admin.post(f"/admin/api/parties/{_platform_id(hub, party_key(changes))}/suspend",
                              json={"reason": "x"}).status_code == 200  # fmt: skip
        first_batch.set()
        missed = "SELECT client_info_missed_since IS NULL FROM platform WHERE id = $1"
        _wait_for(lambda: sql(empty_database, missed, behind_id)[0][0], timeout=30)
        time.sleep(1.0)  # none more
        assert _statuses(behind, party_key(changes)) == ["OFFLINE"]
        assert sorted(r.path.rsplit("/", 1)[1] for r in behind.client_infos()) == sorted(
            [pid for _, _, pid in invited] + [party_key(changes)[1]])  # fmt: skip
    finally:
        first_batch.set()
        hub.stop()


def test_a_change_a_party_did_not_take_during_its_catch_up_is_pushed_to_it_though_its_role_was_caught_up_on_already(
    services: Services, empty_database: str, tmp_path: Path, start_party
) -> None:
    # The catch-up goes by role id. A change it did not answer, of a role before those it is at, was left out: the
    # catch-up went on from where it was, and the role was never pushed to it again.
    env = hub_env(services, tmp_path / "hub", OCPI_HUB_DATABASE_URL=empty_database, OCPI_HUB_FORWARD_TIMEOUT_S="20",
                  OCPI_HUB_REDIS_PREFIX=f"{services.redis_prefix}refused-{tmp_path.name}:")  # fmt: skip
    hub = start_hub(env, tmp_path / "hub.log")
    invited = [("CPO", "DE", unique_party_id()) for _ in range(110)]  # 50 a round: three batches
    second_batch = threading.Event()  # the catch-up's second batch waits for it: the change comes meanwhile
    try:
        early = register_at_hub(hub, start_party, _roles("CPO"))  # a role before every role of the catch-up
        early_path = f"/ocpi/2.2.1/hubclientinfo/receiver/{party_key(early)[0]}/{party_key(early)[1]}"
        behind = register_at_hub(hub, start_party, _roles("EMSP"), held=second_batch,
                                 held_paths=(f"/ocpi/2.2.1/hubclientinfo/receiver/DE/{invited[50][2]}",),
                                 canned={("PUT", early_path): (RAW, b"", {})})  # fmt: skip  # the push not taken
        behind_id = _platform_id(hub, party_key(behind))
        pending = "SELECT count(*) FROM client_info_push WHERE delivered_at IS NULL"
        _wait_for(lambda: sql(empty_database, pending)[0][0] == 0)
        time.sleep(1.1)  # what it misses is taken from a second before its suspension: not the early role's changes
        with hub.admin() as admin:
            assert admin.post(f"/admin/api/parties/{behind_id}/suspend", json={"reason": "x"}).status_code == 200
        hub.invite("Many roles", *invited)
        _wait_for(lambda: sql(empty_database, pending)[0][0] == 0)  # missed: pushed to no one, it being suspended
        with hub.admin() as admin:
            assert admin.post(f"/admin/api/parties/{behind_id}/resume").status_code == 200
        _wait_for(lambda: len(behind.client_infos()) > 50, timeout=30)  # held at the second batch's first push
        with hub.admin() as admin:
            assert admin.post(f"/admin/api/parties/{_platform_id(hub, party_key(early))}/suspend",
                              json={"reason": "x"}).status_code == 200  # fmt: skip
        second_batch.set()
        _wait_for(lambda: any(r.path == early_path for r in behind.client_infos()), timeout=30)  # not answered
        del behind.canned[("PUT", early_path)]  # it answers again
        refused = len(_statuses(behind, party_key(early)))
        register_at_hub(hub, start_party, _roles("CPO"))  # changes that make rounds
        assert _wait_for(lambda: _statuses(behind, party_key(early))[refused:] == ["OFFLINE"], timeout=20)
        missed = "SELECT client_info_missed_since IS NULL FROM platform WHERE id = $1"
        _wait_for(lambda: sql(empty_database, missed, behind_id)[0][0], timeout=30)
        assert {r.path.rsplit("/", 1)[1] for r in behind.client_infos()} >= {pid for _, _, pid in invited}
    finally:
        second_batch.set()
        hub.stop()
