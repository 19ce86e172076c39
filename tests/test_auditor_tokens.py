"""Auditor tokens: `ocpi-hub auditor add`, read-only access, 403 on admin actions, every action audit-trailed."""

from __future__ import annotations

import getpass
import json
import subprocess
import sys
import uuid

import httpx

from tests.conftest import ROOT, Hub, Services
from tests.log_rows import numbered_entry, write


def _cli(hub: Hub, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hub.cli", *args], env=hub.env, cwd=ROOT, capture_output=True,
                          text=True, timeout=60)  # fmt: skip


def _auditor(hub: Hub, name: str) -> httpx.Client:
    added = _cli(hub, "auditor", "add", name)
    assert added.returncode == 0, added.stderr
    answer = json.loads(added.stdout)
    assert answer["name"] == name and len(answer["token"]) >= 32
    return httpx.Client(base_url=hub.base, headers={"Authorization": f"Bearer {answer['token']}"}, timeout=30)


def test_an_auditor_reads_the_log_parties_stats_and_verify(hub: Hub) -> None:
    with _auditor(hub, "reader") as auditor:
        for path in ("/admin/api/parties", "/admin/api/routing-log", "/admin/api/routing-log/verify",
                     "/admin/api/stats", "/admin/api/routing-log/correlation/none",
                     "/admin/api/routing-log/export?format=csv"):  # fmt: skip
            answer = auditor.get(path)
            assert answer.status_code == 200, (path, answer.text)


def test_an_auditor_token_is_refused_on_admin_actions_with_403(hub: Hub) -> None:
    with _auditor(hub, "nosy") as auditor:
        roles = [{"role": "CPO", "country_code": "NL", "party_id": "XXX"}]
        invitation = auditor.post("/admin/api/invitations", json={"name": "X", "roles": roles})
    assert invitation.status_code == 403 and invitation.headers["content-type"].startswith("application/json")
    said = invitation.json()["error"]
    assert "auditor 'nosy' may only read" in said and "audit trail" in said and "admin token" in said
    with hub.admin() as admin:
        parties = admin.get("/admin/api/parties").json()["items"]
    assert not any(p["platform"] == "X" for p in parties)  # the refused invitation created nothing


def test_auditor_names_are_unique_and_a_removed_auditor_is_refused_at_once(hub: Hub) -> None:
    with _auditor(hub, "leaver") as auditor:
        assert auditor.get("/admin/api/parties").status_code == 200
        again = _cli(hub, "auditor", "add", "leaver")
        assert again.returncode == 1 and "exists already" in again.stderr
        assert "leaver" in [a["name"] for a in json.loads(_cli(hub, "auditor", "list").stdout)]
        assert _cli(hub, "auditor", "remove", "leaver").returncode == 0
        refused = auditor.get("/admin/api/parties")
    assert refused.status_code == 401 and "nor an auditor's" in refused.json()["error"], refused.text
    assert _cli(hub, "auditor", "remove", "leaver").returncode == 1
    assert _cli(hub, "auditor", "add").returncode == 2


def test_every_auditor_and_admin_action_on_the_log_is_recorded_with_who_did_it(hub: Hub) -> None:
    with _auditor(hub, "tracer") as auditor:
        auditor.get("/admin/api/routing-log", params={"module": "cdrs", "http_status": "500"})
        auditor.get("/admin/api/routing-log/1")
        auditor.get("/admin/api/routing-log/correlation/dispute-42")
        auditor.get("/admin/api/routing-log/export", params={"format": "csv", "party": "NL-ABC"})
        auditor.get("/admin/api/routing-log/verify", params={"since": "2001-01-01T00:00:00Z"})
        auditor.get("/admin/api/stats", params={"bucket": "day"})
    with hub.admin() as admin:
        admin.get("/admin/api/routing-log", params={"object_id": "LOC-9"})
        trail = admin.get("/admin/api/audit-trail", params={"limit": 50}).json()["items"]
    mine = [(t["action"], t["parameters"]) for t in reversed(trail) if t["actor_name"] == "tracer"]
    # an export ends with its signed manifest, which the trail keeps (a CSV export's is downloaded from there)
    [sealed] = [parameters for action, parameters in mine if action == "export_manifest"]
    assert json.loads(sealed["manifest"])["exported_by"] == {"kind": "auditor", "name": "tracer"}
    mine = [(action, parameters) for action, parameters in mine if action != "export_manifest"]
    sent = mine.pop(4)  # the export's end: what it sent (test_audit_trail_tampering)
    assert sent[0] == "export_sent" and sent[1]["complete"] is True and len(sent[1]["sha256"]) == 64
    assert all(t["actor_kind"] == "auditor" for t in trail if t["actor_name"] == "tracer")
    assert mine == [
        ("search", {"module": "cdrs", "http_status": "500"}),
        ("view", {"id": 1}),
        ("correlation", {"correlation_id": "dispute-42"}),
        ("export", {"party": "NL-ABC", "format": "csv", "bodies": False}),
        # with its outcome: a failure put right later by a restore leaves its trace (found by a walkthrough)
        ("verify", {"since": "2001-01-01T00:00:00Z", "ok": True, "rows": mine[4][1]["rows"], "first_bad_id": None}),
        ("stats", {"since": mine[-1][1]["since"], "bucket": "day"}),
    ]
    admin_rows = [t for t in trail if t["actor_kind"] == "admin" and t["action"] == "search"]
    assert admin_rows[0]["actor_name"] == "admin" and admin_rows[0]["parameters"] == {"object_id": "LOC-9"}
    # who may read the log is in the trail too, with the operator's OS user
    added = [t for t in trail if t["action"] == "add_auditor" and t["parameters"]["name"] == "tracer"]
    assert [t["actor_name"] for t in added] == [f"ocpi-hub auditor ({getpass.getuser()})"]


def test_an_auditor_keeps_the_heads_and_posts_them_to_verify_later(hub: Hub, services: Services) -> None:
    write(services.database_url, [numbered_entry(1)])  # a chain at least, whatever ran before
    with _auditor(hub, "keeper") as auditor:
        heads = auditor.get("/admin/api/routing-log/heads").json()
        assert heads["chains"] and all(len(c["last_hash"]) == 64 for c in heads["chains"])
        checked = auditor.post("/admin/api/routing-log/verify", json=heads)
        assert checked.status_code == 200 and checked.json()["heads_checked"] == len(heads["chains"]), checked.text
        made_up = str(uuid.uuid4())
        heads["chains"].append({"chain_id": made_up, "last_seq": 7, "last_hash": "ab" * 32})
        gone = auditor.post("/admin/api/routing-log/verify", json=heads).json()
        problems = " ".join(gone["problems"])
        assert gone["ok"] is False and f"chain {made_up}: seqs 1 to 7 are gone (every row, and its head;" in problems
        for body, said in ((b"[]", "the body is not heads"), (b'{"taken_at": "x", "chains": []}', "taken_at")):
            wrong = auditor.post("/admin/api/routing-log/verify", content=body)
            assert wrong.status_code == 400 and said in wrong.json()["error"], wrong.text


def test_an_auditor_sets_a_legal_hold_only_the_admin_releases_it_and_the_audit_trail_says_who(hub: Hub) -> None:
    correlation_id = f"disputed-{uuid.uuid4()}"
    with _auditor(hub, "holder") as auditor, hub.admin() as admin:
        for wrong, why in [({"reason": "x"}, "given: none"),
                           ({"reason": "x", "correlation_id": "c", "object_id": "o"}, "given: correlation_id, object_"),
                           ({"reason": "x", "party": "NL-ABC"}, "needs since and until"),
                           ({"reason": "x", "party": "NL-ABC", "since": "2026-02-01", "until": "2026-01-01"},
                            "since must be before until"),
                           ({"correlation_id": "c"}, "missing required field `reason`")]:  # fmt: skip
            answer = auditor.post("/admin/api/holds", json=wrong)
            assert answer.status_code == 400 and why in answer.json()["error"], (wrong, answer.text)
        held = auditor.post("/admin/api/holds", json={"correlation_id": correlation_id, "reason": "dispute 7"})
        assert held.status_code == 201, held.text
        hold = held.json()
        assert (hold["correlation_id"], hold["set_by"], hold["released_at"]) == (correlation_id, "holder", None)
        assert hold in auditor.get("/admin/api/holds").json()["items"]
        refused = auditor.post(f"/admin/api/holds/{hold['id']}/release")
        assert refused.status_code == 403 and "admin token" in refused.json()["error"]
        released = admin.post(f"/admin/api/holds/{hold['id']}/release")
        assert released.status_code == 200 and released.json()["released_by"] == "admin", released.text
        assert admin.post(f"/admin/api/holds/{hold['id']}/release").status_code == 409
        assert admin.post("/admin/api/holds/99999999999999999999/release").status_code == 400
        trail = admin.get("/admin/api/audit-trail", params={"limit": 50}).json()["items"]
    mine = [(t["actor_name"], t["action"]) for t in trail if t["parameters"].get("id") == hold["id"]
            and t["action"].endswith("_hold")]  # fmt: skip
    assert mine == [("admin", "release_hold"), ("holder", "set_hold")]
