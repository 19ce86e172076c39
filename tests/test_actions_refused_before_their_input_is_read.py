"""Who calls is settled before what they sent is read: authentication, then authorization, then the path, query and
body. An auditor (read-only) is refused every action of the console and of the admin API with 403, whatever id, action
or form it sent; the admin sending the same gets what is wrong with it (400, 404)."""

from __future__ import annotations

import html
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import ROOT, Hub
from tests.parties import Party
from tests.test_admin_and_cli import _platform_id
from tests.test_routing import party_key

# a platform id no platform can have (past a bigint, 0), one that is no number, one no platform has
IDS = ("99999999999999999999", "0", "abc", "999999999999")
ACTIONS = ("take-off", "renew", "endpoints", "suspend", "resume", "nonsense")
FORMS = (b"confirm=yes", b"confirm=yes&confirm=no", b"reason=%00&reason=x")  # the last two no dict[str, str]


def _auditor_token(hub: Hub, name: str) -> str:
    added = subprocess.run([sys.executable, "-m", "hub.cli", "auditor", "add", name], env=hub.env, cwd=ROOT,
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert added.returncode == 0, added.stderr
    return str(json.loads(added.stdout)["token"])


@pytest.fixture
def auditor_console(hub: Hub) -> Iterator[httpx.Client]:
    token = _auditor_token(hub, f"console-{uuid.uuid4().hex[:8]}")
    with httpx.Client(base_url=hub.base, timeout=30) as client:
        assert client.post("/console/sign-in", data={"token": token}).status_code == 303
        yield client


def _refused(answer: httpx.Response) -> str | None:
    """What is wrong with an answer that should be the console's 403 page for auditors, or None."""
    if answer.status_code != 403 or "Not for auditors" not in html.unescape(answer.text):
        return f"HTTP {answer.status_code}: {' '.join(answer.text.split())[-200:]!r}"
    return None


def test_an_auditor_is_refused_an_action_before_its_id_is_looked_at(
    hub: Hub, auditor_console: httpx.Client, cpo_and_emsp: tuple[Party, Party]
) -> None:
    # /console/parties/99999999999999999999/renew answered an auditor 400 (the id checked), abc 404: the auditor
    # learnt what the id was wrong with before learning it may not act at all
    cpo, _ = cpo_and_emsp
    platform_id = _platform_id(hub, party_key(cpo))
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    problems = []
    for platform in (*IDS, str(platform_id)):
        for action in ACTIONS:
            path = f"/console/parties/{platform}/{action}"
            if problem := _refused(auditor_console.get(path)):
                problems.append(f"GET {path}: {problem}")
            for body in FORMS:
                if problem := _refused(auditor_console.post(path, content=body, headers=form)):
                    problems.append(f"POST {path} {body!r}: {problem}")
    assert not problems, "\n".join(problems)
    with hub.admin() as admin:
        assert admin.get(f"/admin/api/parties/{platform_id}").json()["state"] == "REGISTERED"


def test_an_auditor_is_refused_the_invitation_form_before_it_is_read(hub: Hub, auditor_console: httpx.Client) -> None:
    # the form was parsed first: a name given twice answered an auditor 400, not 403
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    for body in (b"name=x&role=CPO&country_code=NL&party_id=AUD", b"name=x&name=y", b"role=%ff&role=CPO"):
        assert _refused(auditor_console.post("/console/invite", content=body, headers=form)) is None, body
    assert _refused(auditor_console.get("/console/invite")) is None
    with hub.admin() as admin:
        assert not [p for p in admin.get("/admin/api/parties").json()["items"] if p["party_id"] == "AUD"]


def test_the_admin_is_still_told_what_is_wrong_with_an_actions_id_or_form(hub: Hub) -> None:
    with httpx.Client(base_url=hub.base, timeout=30) as console:
        assert console.post("/console/sign-in", data={"token": hub.admin_token}).status_code == 303
        for path, status, says in (
            ("/console/parties/99999999999999999999/renew", 400, "platform_id must be a whole number from 1"),
            ("/console/parties/abc/renew", 404, "no such endpoint"),
            ("/console/parties/1/nonsense", 404, "no action 'nonsense'"),
        ):
            for answer in (console.get(path), console.post(path, data={"confirm": "yes"})):
                assert answer.status_code == status and says in html.unescape(answer.text), (path, answer.text)
        doubled = console.post("/console/invite", content=b"name=x&name=y",
                               headers={"Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
        assert doubled.status_code == 400, doubled.text


def test_an_auditor_is_refused_every_admin_api_action_before_its_id_query_or_body_is_read(
    hub: Hub, cpo_and_emsp: tuple[Party, Party]
) -> None:
    cpo, _ = cpo_and_emsp
    platform_id = _platform_id(hub, party_key(cpo))
    token = _auditor_token(hub, f"api-{uuid.uuid4().hex[:8]}")
    routes = [("DELETE", "/admin/api/parties/{}"), ("POST", "/admin/api/parties/{}/suspend"),
              ("POST", "/admin/api/parties/{}/resume"), ("POST", "/admin/api/parties/{}/credentials"),
              ("POST", "/admin/api/parties/{}/endpoints"), ("POST", "/admin/api/holds/{}/release")]  # fmt: skip
    problems = []
    with httpx.Client(base_url=hub.base, headers={"Authorization": f"Bearer {token}"}, timeout=30) as auditor:
        for method, route in routes:
            for number in (*IDS, str(platform_id)):
                for query, body in (("", b""), ("?x=1", b"{"), ("", b'{"reason": 5}')):
                    answer = auditor.request(method, route.format(number) + query, content=body or None)
                    if answer.status_code != 403 or "may only read" not in answer.json().get("error", ""):
                        problems.append(f"{method} {route.format(number)}{query} {body!r}: HTTP {answer.status_code}"
                                        f" {answer.text[:200]}")  # fmt: skip
        for body in (b"{", b'{"name": 5}', b""):
            answer = auditor.post("/admin/api/invitations?x=1", content=body)
            if answer.status_code != 403:
                problems.append(f"POST /admin/api/invitations {body!r}: HTTP {answer.status_code} {answer.text[:200]}")
    assert not problems, "\n".join(problems)
    with hub.admin() as admin:
        assert admin.get(f"/admin/api/parties/{platform_id}").json()["state"] == "REGISTERED"
