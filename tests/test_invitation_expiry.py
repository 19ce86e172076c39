"""An invitation's token A expires (OCPI_HUB_INVITATION_TTL_S, or the invitation's own expires_in_s): an expired one
is refused saying when it expired and whom to ask; invitations from before expiry existed never expire."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx

from tests.conftest import Hub, unique_party_id
from tests.parties import token_header
from tests.test_admin_and_cli import _cli
from tests.test_credentials_rotation import console_page


def _expire(hub: Hub, db, platform_id: int, at: datetime | None) -> None:  # type: ignore[no-untyped-def]
    db.run(db.execute("UPDATE credentials_token SET expires_at = $2 WHERE platform_id = $1", platform_id, at))
    hub.invite("Reload", ("EMSP", "NL", unique_party_id()))  # a change every hub process reloads its directory on


def _listed(hub: Hub, platform_id: int) -> dict:
    with hub.admin() as admin:
        items = admin.get("/admin/api/parties").json()["items"]
    [item] = [i for i in items if i["platform_id"] == platform_id]
    return item


def test_an_invitation_expires_after_the_default_fourteen_days_and_is_listed_with_its_expiry(hub: Hub) -> None:
    before = datetime.now(UTC)
    invitation = hub.invite("Soon", ("CPO", "NL", unique_party_id()))
    expires = datetime.fromisoformat(invitation["expires_at"])
    assert before + timedelta(days=14) <= expires <= datetime.now(UTC) + timedelta(days=14)
    assert datetime.fromisoformat(_listed(hub, invitation["platform_id"])["invitation_expires_at"]) == expires
    assert f"invitation expires {expires:%Y-%m-%d %H:%M}" in console_page(hub, "/console/parties")


def test_an_invitation_takes_its_own_expiry_or_none(hub: Hub) -> None:
    with hub.admin() as admin:
        roles = [{"role": "CPO", "country_code": "NL", "party_id": unique_party_id()}]
        answer = admin.post("/admin/api/invitations", json={"name": "Hour", "roles": roles, "expires_in_s": 3600})
        assert answer.status_code == 201, answer.text
        expires = datetime.fromisoformat(answer.json()["expires_at"])
        assert expires <= datetime.now(UTC) + timedelta(hours=1)
        roles = [{"role": "CPO", "country_code": "NL", "party_id": unique_party_id()}]
        answer = admin.post("/admin/api/invitations", json={"name": "Never", "roles": roles, "expires_in_s": 0})
        assert answer.status_code == 201 and answer.json()["expires_at"] is None
        answer = admin.post("/admin/api/invitations", json={"name": "Bad", "roles": roles, "expires_in_s": -1})
        assert answer.status_code == 400 and "expires_in_s" in answer.json()["error"]


def test_an_expired_token_a_is_refused_saying_when_it_expired_and_whom_to_ask(hub: Hub, db) -> None:  # type: ignore[no-untyped-def]
    invitation = hub.invite("Late", ("CPO", "NL", unique_party_id()))
    _expire(hub, db, invitation["platform_id"], datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    for url in (hub.versions_url, f"{hub.base}/ocpi/2.2.1/credentials"):
        answer = httpx.get(url, headers=token_header(invitation["token_a"]))
        assert answer.status_code == 401
        message = answer.json()["status_message"]
        assert "invitation expired on 2026-01-02T03:04:05Z" in message and "hub operator" in message, message
    assert "invitation expired 2026-01-02 03:04" in console_page(hub, "/console/parties")


def test_an_invitation_from_before_expiry_existed_never_expires(hub: Hub, db) -> None:  # type: ignore[no-untyped-def]
    invitation = hub.invite("Old", ("CPO", "NL", unique_party_id()))
    _expire(hub, db, invitation["platform_id"], None)
    assert httpx.get(hub.versions_url, headers=token_header(invitation["token_a"])).status_code == 200
    assert _listed(hub, invitation["platform_id"])["invitation_expires_at"] is None


def test_cli_invite_takes_expires_in(hub: Hub) -> None:
    result = _cli(hub, "invite", "--name", "Cli", "--role", f"CPO:NL:{unique_party_id()}", "--expires-in", "2d")
    assert result.returncode == 0, result.stderr
    import json

    expires = datetime.fromisoformat(json.loads(result.stdout)["expires_at"])
    assert expires <= datetime.now(UTC) + timedelta(days=2)
    result = _cli(hub, "invite", "--name", "Cli", "--role", f"CPO:NL:{unique_party_id()}", "--expires-in", "soon")
    assert result.returncode == 2 and "--expires-in" in result.stderr
