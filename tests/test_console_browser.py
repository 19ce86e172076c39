"""The web console in headless Chromium (Debian's /usr/bin/chromium, driven by Playwright) against `ocpi-hub demo`:
sign-in, filters, a message, keyset pages, exports, and the audit trail of what the auditor looked at.

Screenshots of the main pages go to test-output/screenshots/.
"""

from __future__ import annotations

import csv
import io
import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.conftest import OUTPUT
from tests.demo_process import RunningDemo, demo_env, start_demo
from tests.parties import token_header

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = OUTPUT / "screenshots"

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="browser tests need Debian's chromium at /usr/bin/chromium (apt-get install chromium)"
)

if CHROMIUM.exists():
    from playwright.sync_api import Browser, Page, sync_playwright
else:  # pragma: no cover - the module is skipped
    Browser = Page = object  # type: ignore[misc,assignment]


@pytest.fixture(scope="module")
def demo(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDemo]:
    """The demo with its opening traffic only (an hour between later messages), so the log holds still once the hub's
    own reads of the new parties' lists (pull sync, owner pulls; at once with OCPI_HUB_SYNC_CHECK_S=1) are in it."""
    data_dir = tmp_path_factory.mktemp("console") / "demo-data"
    env = demo_env(request, data_dir) | {"OCPI_HUB_SYNC_CHECK_S": "1"}
    running = start_demo(env, data_dir, OUTPUT / "demo-console.log", interval_s=3600)
    try:
        _until_the_log_holds_still(running)
        yield running
    finally:
        running.stop()


def _until_the_log_holds_still(demo: RunningDemo) -> None:
    """Until no row came for 3 s: the tests compare what the console shows with the admin API's listing read after."""
    rows, still_since, deadline = -1, time.monotonic(), time.monotonic() + 60
    while time.monotonic() < deadline:
        if (now := len(api_items(demo))) != rows:
            rows, still_since = now, time.monotonic()
        elif time.monotonic() - still_since >= 3:
            return
        time.sleep(0.5)
    raise AssertionError(f"the demo's routing log was still growing after 60 s ({rows} rows)")


@contextmanager
def chromium() -> Iterator[Browser]:
    """Headless Chromium. Start it after the hub or demo a test needs: Playwright's sync API keeps an event loop
    running, and fixtures that use asyncio (services, db) cannot run beside it."""
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def browser(demo: RunningDemo) -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1366, "height": 768}, accept_downloads=True)
    opened = context.new_page()
    yield opened
    context.close()


def shot(page: Page, name: str, full_page: bool = True) -> None:
    """A screenshot; full_page=False shows what a 1366x768 laptop shows without scrolling."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=full_page)


def sign_in(page: Page, demo: RunningDemo, token: str | None = None) -> None:
    page.goto(f"{demo.base}/console/sign-in")
    page.fill("#token", token or demo.auditor_token)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r".*/console/log.*"))


def api_items(demo: RunningDemo, **filters: str) -> list[dict]:
    items, cursor = [], None
    with demo.admin() as admin:
        while True:
            answer = admin.get("/admin/api/routing-log", params=filters | {"limit": "500"}
                               | ({"cursor": cursor} if cursor else {}))  # fmt: skip
            assert answer.status_code == 200, answer.text
            items += answer.json()["items"]
            if not (cursor := answer.json()["next_cursor"]):
                return items


def table_ids(page: Page) -> list[int]:
    ids = page.locator("#log-table tbody tr[data-id]").evaluate_all("rows => rows.map(r => r.dataset.id)")
    return [int(i) for i in ids]


def test_a_wrong_token_is_refused_and_an_auditor_token_signs_in(page: Page, demo: RunningDemo) -> None:
    page.goto(f"{demo.base}/console/parties")
    assert "/console/sign-in" in page.url  # every page needs a sign-in first
    shot(page, "sign-in")
    page.fill("#token", "not-a-token-of-this-hub")
    page.click("button[type=submit]")
    assert page.locator(".errors").inner_text() == "That is not an admin or auditor token of this hub."
    assert not page.context.cookies()
    page.fill("#token", demo.auditor_token)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r".*/console/parties$"))  # back where the visitor wanted to go
    assert page.locator(".who").inner_text().split() == ["demo", "auditor", "Sign", "out"]
    [cookie] = page.context.cookies()
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and demo.auditor_token not in cookie["value"]
    rows = page.locator("#parties-table tbody tr")
    assert rows.count() == 4
    assert page.locator("#parties-table").inner_text().count("CONNECTED") == 4
    shot(page, "parties")
    page.click("text=Sign out")
    page.goto(f"{demo.base}/console/log")
    assert "/console/sign-in" in page.url


def test_an_auditor_cannot_reach_the_admins_invitation_page_but_the_admin_can(page: Page, demo: RunningDemo) -> None:
    sign_in(page, demo)
    assert page.locator("nav >> text=Invite a party").count() == 0
    answer = page.goto(f"{demo.base}/console/invite")
    assert answer is not None and answer.status == 403
    assert "Not for auditors" in page.inner_text("h1")
    # the same with a forged form post, outside the browser's form
    cookie = {c["name"]: c["value"] for c in page.context.cookies()}
    posted = httpx.post(f"{demo.base}/console/invite", cookies=cookie, follow_redirects=False,
                        data={"name": "Sneaky", "role": "CPO", "country_code": "NL", "party_id": "SNK"})  # fmt: skip
    assert posted.status_code == 403
    page.click("text=Sign out")
    sign_in(page, demo, demo.admin_token)
    page.click("nav >> text=Invite a party")
    page.fill("#i-name", "Console Co")
    page.fill("#i-cc", "NL")
    page.fill("#i-pid", "CCO")
    page.click("form >> text=Invite")
    assert "is invited" in page.inner_text("#invitation")
    with demo.admin() as admin:
        assert "CCO" in {p["party_id"] for p in admin.get("/admin/api/parties").json()["items"]}


def test_filtering_by_party_and_module_shows_only_the_matching_rows(page: Page, demo: RunningDemo) -> None:
    sign_in(page, demo)
    shot(page, "log", full_page=False)
    everything = len(table_ids(page))
    page.fill("#f-party", "NL-ECO")
    page.select_option("#f-module", "locations")
    page.click("#filters >> text=Filter")
    page.wait_for_url(re.compile(r".*party=NL-ECO.*module=locations.*|.*module=locations.*party=NL-ECO.*"))
    shown = table_ids(page)
    assert 0 < len(shown) < everything
    expected = [r["id"] for r in api_items(demo, party="NL-ECO", module="locations")][: len(shown)]
    assert shown == expected
    for row in page.locator("#log-table tbody tr").all():
        cells = row.locator("td").all_inner_texts()
        assert "NL-ECO" in (cells[1], cells[2]) and cells[4] == "locations", cells
    shot(page, "log-filtered", full_page=False)
    # a bad filter value is explained on the page, not answered with a crash
    page.goto(f"{demo.base}/console/log?from_party=nonsense")
    assert "from_party must be a country code and party id" in page.inner_text(".errors")
    page.goto(f"{demo.base}/console/log?module=locations&module=cdrs")  # was the first alone, as if complete
    assert "module is given more than once" in page.inner_text(".errors") and table_ids(page) == []


def test_a_message_shows_request_and_response_and_its_conversation(page: Page, demo: RunningDemo) -> None:
    sign_in(page, demo)
    page.goto(f"{demo.base}/console/log?module=commands&method=POST")
    start = page.locator("#log-table tbody tr", has_text="START_SESSION").last
    start.locator("a").first.click()
    page.wait_for_url(re.compile(r".*/console/log/\d+$"))
    request_body = json.loads(page.inner_text("#request pre.body"))
    response_body = json.loads(page.inner_text("#response pre.body"))
    assert "/commands/sender/START_SESSION/" in request_body["response_url"]  # as the eMSP sent it
    assert request_body["token"]["type"] == "RFID"
    assert response_body["data"] == {"result": "ACCEPTED", "timeout": 30}
    assert "x-correlation-id" in page.inner_text("#request table.headers")
    # both hashes whole, to hold against an export or a heads file (the first 32 digits, and a tooltip, were shown)
    assert [len(h) for h in page.locator("dd.hash").all_inner_texts()] == [64, 64]
    shot(page, "message")
    # the CommandResult is part of the same conversation, one click away
    page.locator("#conversation a", has_text=re.compile(r"\d\d-\d\d \d\d:")).first.click()
    assert json.loads(page.inner_text("#request pre.body")) == {"result": "ACCEPTED"}
    assert "results/" in page.inner_text("h1 + p")


def test_pages_follow_the_keyset_cursor_without_gaps_or_repeats(page: Page, demo: RunningDemo) -> None:
    sign_in(page, demo)
    page.goto(f"{demo.base}/console/log?limit=50")
    seen: list[int] = []
    pages = 0
    while True:
        seen += table_ids(page)
        pages += 1
        if page.locator("#older").count() == 0:
            break
        page.click("#older")
    assert pages >= 2, "the demo's opening should fill more than one page of 50"
    assert seen == [r["id"] for r in api_items(demo)][: len(seen)] and len(seen) == len(set(seen))
    page.click("#newest")
    assert table_ids(page) == seen[:50]


@pytest.mark.parametrize("export_format", ["csv", "ndjson", "bodies"])
def test_export_downloads_exactly_the_filtered_rows(page: Page, demo: RunningDemo, export_format: str) -> None:
    sign_in(page, demo)
    page.goto(f"{demo.base}/console/log?module=sessions")
    with page.expect_download() as download:
        page.click(f"#export-{export_format}")
    path = download.value.path()
    assert path is not None
    text = Path(path).read_text()
    if export_format == "csv":
        rows = list(csv.DictReader(io.StringIO(text)))
    else:
        rows = [json.loads(line) for line in text.splitlines()[:-1]]  # the last: the signed manifest
    expected = sorted(r["id"] for r in api_items(demo, module="sessions"))
    assert [int(r["id"]) for r in rows] == expected and expected
    assert {r["module"] for r in rows} == {"sessions"}
    if export_format == "bodies":  # the session objects themselves, as the CPO sent them
        assert any(r["request_body"] and '"kwh"' in r["request_body"] for r in rows)


def test_traffic_charts_and_chain_verification(page: Page, demo: RunningDemo) -> None:
    sign_in(page, demo)
    page.click("nav >> text=Traffic")
    charts = page.locator(".chart")
    parties = set(charts.evaluate_all("cards => cards.map(c => c.dataset.party)"))
    assert {"NL-ECO", "BE-VLT", "DE-MFX", "NL-EVD"} <= parties
    assert page.locator(".chart svg rect").count() >= len(parties)
    shot(page, "traffic")
    page.locator(".chart h2 a", has_text="DE-MFX").click()
    modules = page.locator("table", has_text="Module (direction)")
    assert modules.count() == 1
    # the receiver's part beside the duration (shown upper-cased)
    assert modules.locator("th", has_text="Worst hourly receiver p95").count() == 1
    assert modules.locator("td.receiver", has_text=re.compile(r"^\d+\.\d ms$")).count() >= 1
    assert "as receiver p95 ≤" in page.inner_text(".chart .side-head")
    shot(page, "traffic-party")
    page.click("nav >> text=Verify chain")
    page.click("#verify-run")
    assert "Chain intact" in page.inner_text("#verify-result")
    shot(page, "verify")
    # the heads, downloaded now and pasted in later, are checked too
    with page.expect_download() as download:
        page.click("#heads-download")
    saved = Path(download.value.path() or "").read_text()
    chains = len(json.loads(saved)["chains"])
    page.fill("#v-heads", saved)
    page.click("#verify-heads")
    assert f"Every row up to the {chains} saved head" in page.inner_text("#verify-result")
    page.fill("#v-heads", '{"chains": "no"}')
    page.click("#verify-heads")
    assert "These are not heads as the download gives them" in page.inner_text("[role=alert]")
    page.fill("#v-heads", "")  # a plain verify here said "Chain intact", as if heads had been checked
    page.click("#verify-heads")
    assert "No heads were pasted" in page.inner_text("[role=alert]") and page.locator("#verify-result").count() == 0
    with demo.admin() as admin:  # each verify is in the audit trail with its outcome, as the API's
        trail = admin.get("/admin/api/audit-trail", params={"limit": 50}).json()["items"]
    verified = [e["parameters"] for e in trail if e["action"] == "verify" and e["actor_name"] == "demo"]
    assert {"ok": True, "heads": chains, "via": "console"}.items() <= verified[0].items(), verified


def test_the_slow_exchanges_a_party_made_slow_are_found_from_the_form(page: Page, demo: RunningDemo) -> None:
    times = sorted(item["receiver_ms"] for item in api_items(demo) if item["receiver_ms"] is not None)
    slowest_half = f"{int(times[len(times) // 2] * 1000) / 1000:.3f}"
    sign_in(page, demo)
    page.fill("#f-min_receiver_ms", slowest_half)
    page.click("#filters >> text=Filter")
    page.wait_for_url(re.compile(r".*min_receiver_ms=.*"))
    shown = table_ids(page)
    assert shown and shown == [r["id"] for r in api_items(demo, min_receiver_ms=slowest_half)][: len(shown)]
    cells = page.locator("#log-table tbody td.receiver-ms").all_inner_texts()
    assert len(cells) == len(shown) and all(float(cell) >= float(slowest_half) - 0.05 for cell in cells), cells
    assert page.input_value("#f-min_receiver_ms") == slowest_half  # kept for the next click
    shot(page, "log-slow-receivers", full_page=False)


def test_what_the_auditor_viewed_in_the_console_is_in_the_audit_trail(page: Page, demo: RunningDemo) -> None:
    sign_in(page, demo)
    page.goto(f"{demo.base}/console/log?module=cdrs")
    page.locator("#log-table tbody tr a").first.click()
    viewed = int(page.url.rsplit("/", 1)[1])
    with demo.admin() as admin:
        trail = admin.get("/admin/api/audit-trail", params={"limit": 50}).json()["items"]
    mine = [(e["action"], e["parameters"]) for e in trail if e["actor_name"] == "demo" and e["actor_kind"] == "auditor"]
    assert ("view", {"id": viewed, "via": "console"}) in mine
    assert ("search", {"module": "cdrs", "via": "console"}) in mine
    assert any(action == "console_sign_in" for action, _ in mine)
    # an auditor reads the same trail in the console, what the admin did too
    page.click("nav >> text=Audit trail")
    assert page.locator("#audit-table tbody tr", has_text=f"view #{viewed}").count() >= 1
    page.click("text=Sign out")
    sign_in(page, demo, demo.admin_token)
    page.click("nav >> text=Audit trail")
    viewed_row = page.locator("#audit-table tbody tr", has_text=f"view #{viewed}").first
    assert "demo" in viewed_row.inner_text() and "auditor" in viewed_row.inner_text()
    shot(page, "audit-trail", full_page=False)
    # positions and ids beyond a bigint are a page that says so, not an internal error
    for url, status in ((f"/console/audit?cursor={2**63}", 400), (f"/console/log/{2**63}", 400)):
        answer = page.goto(f"{demo.base}{url}")
        assert answer is not None and answer.status == status


def test_a_removed_auditor_is_signed_out_on_the_next_click_and_a_forged_cookie_is_refused(
    page: Page, demo: RunningDemo
) -> None:
    added = demo.cli("auditor", "add", "carol")
    assert added.returncode == 0, added.stderr
    sign_in(page, demo, json.loads(added.stdout)["token"])
    assert "carol" in page.inner_text(".who")
    removed = demo.cli("auditor", "remove", "carol")
    assert removed.returncode == 0, removed.stderr
    page.goto(f"{demo.base}/console/parties")
    assert "/console/sign-in" in page.url
    assert page.context.cookies() == []  # the dead cookie was cleared
    forged = httpx.get(f"{demo.base}/console/log", cookies={"ocpi_hub_console": demo.auditor_token},
                       follow_redirects=False)  # fmt: skip
    assert forged.status_code == 303 and forged.headers["location"].startswith("/console/sign-in")


def test_a_body_with_markup_is_shown_as_text_never_run(page: Page, demo: RunningDemo) -> None:
    hub_tokens = json.loads((demo.data_dir / "demo-parties.json").read_text())
    markup = "<script>window.pwned = 1</script><b>bold</b>"
    location = {"country_code": "NL", "party_id": "ECO", "id": "XSS-1", "publish": True, "name": markup,
                "last_updated": "2026-11-30T10:00:00Z"}  # fmt: skip
    pushed = httpx.put(
        f"{demo.base}/ocpi/2.2.1/receiver/locations/NL/ECO/XSS-1",
        json=location,
        headers=token_header(hub_tokens["NL-ECO"]) | {"OCPI-from-country-code": "NL", "OCPI-from-party-id": "ECO",
                                                      "OCPI-to-country-code": "DE", "OCPI-to-party-id": "MFX"},
    )  # fmt: skip
    assert pushed.json()["status_code"] == 1000, pushed.text
    sign_in(page, demo)
    page.goto(f"{demo.base}/console/log?object_id=XSS-1")
    page.locator("#log-table tbody tr a").first.click()
    assert markup in page.inner_text("#request pre.body")
    assert page.evaluate("window.pwned") is None
    assert page.locator("#request pre.body b").count() == 0


def _platform_of(demo: RunningDemo, key: str) -> dict:
    with demo.admin() as admin:
        parties = admin.get("/admin/api/parties").json()["items"]
    return next(p for p in parties if f"{p['country_code']}-{p['party_id']}" == key)


def _operator_actions(demo: RunningDemo) -> list[tuple[str, str, dict]]:
    with demo.admin() as admin:
        trail = admin.get("/admin/api/audit-trail", params={"limit": 200}).json()["items"]
    return [(e["actor_kind"], e["action"], e["parameters"]) for e in trail
            if e["action"] in ("unregister_platform", "rotate_credentials")]  # fmt: skip


def test_an_auditors_post_of_a_platform_action_is_refused_and_nothing_happens(demo: RunningDemo) -> None:
    target = _platform_of(demo, "NL-ECO")
    with httpx.Client(base_url=demo.base, follow_redirects=False, timeout=30) as auditor:
        signed_in = auditor.post("/console/sign-in", data={"token": demo.auditor_token, "next": "/console/parties"})
        assert signed_in.status_code == 303
        for action in ("take-off", "renew"):
            url = f"/console/parties/{target['platform_id']}/{action}"
            assert auditor.get(url).status_code == 403
            posted = auditor.post(url, data={"confirm": "yes"})
            assert posted.status_code == 403 and "Not for auditors" in posted.text
    assert _platform_of(demo, "NL-ECO")["status"] == target["status"] != "UNREGISTERED"
    assert _operator_actions(demo) == []


def test_the_admin_renews_a_platforms_tokens_and_takes_another_off_the_hub_from_the_parties_page(
    page: Page, demo: RunningDemo
) -> None:
    old_tokens = json.loads((demo.data_dir / "demo-parties.json").read_text())
    sign_in(page, demo, demo.admin_token)
    page.goto(f"{demo.base}/console/parties")
    page.locator("#parties-table tbody tr", has_text="NL-EVD").locator("text=Renew tokens").click()
    assert "PUTs its credentials to the party" in page.inner_text("#confirm-form")
    page.click("#confirm-form button[type=submit]")  # not ticked: the browser does not send the form
    assert page.url.endswith("/renew") and page.locator("#outcome").count() == 0
    cookie = {c["name"]: c["value"] for c in page.context.cookies()}
    unconfirmed = httpx.post(page.url, cookies=cookie, data={}, follow_redirects=False)  # a form without the box
    assert unconfirmed.status_code == 400 and "nothing was done" in unconfirmed.text
    assert _operator_actions(demo) == []
    page.check("#confirm")
    page.click("#confirm-form button[type=submit]")
    assert "rotated" in page.inner_text("#outcome"), page.inner_text("main")
    shot(page, "renew-tokens", full_page=False)
    # the demo party took the hub's new token C (and keeps it for the demo's next run); the old one is dead
    hub_tokens = json.loads((demo.data_dir / "demo-parties.json").read_text())
    assert hub_tokens["NL-EVD"] != old_tokens["NL-EVD"]
    for token, status in ((hub_tokens["NL-EVD"], 200), (old_tokens["NL-EVD"], 401)):
        assert httpx.get(f"{demo.base}/ocpi/versions", headers=token_header(token)).status_code == status
    assert _platform_of(demo, "NL-EVD")["status"] == "CONNECTED"

    page.goto(f"{demo.base}/console/parties")
    page.locator("#parties-table tbody tr", has_text="BE-VLT").locator("text=Take off the hub").click()
    assert "party ids become free" in page.inner_text("#confirm-form")
    page.check("#confirm")
    page.click("#confirm-form button[type=submit]")
    assert "The party was told and took it" in page.inner_text("#outcome"), page.inner_text("main")
    page.goto(f"{demo.base}/console/parties")
    gone = page.locator("#parties-table tbody tr", has_text="BE-VLT")
    assert "UNREGISTERED" in gone.inner_text() and gone.locator("a.action").count() == 0
    assert _platform_of(demo, "BE-VLT")["status"] == "UNREGISTERED"

    actions = [(action, parameters) for kind, action, parameters in _operator_actions(demo) if kind == "admin"]
    assert ("rotate_credentials", {"platform_id": _platform_of(demo, "NL-EVD")["platform_id"],
                                   "name": "EV Drive", "via": "console"}) in actions  # fmt: skip
    assert ("unregister_platform", {"platform_id": _platform_of(demo, "BE-VLT")["platform_id"],
                                    "name": "Voltera Belgium", "via": "console"}) in actions  # fmt: skip
    page.click("nav >> text=Audit trail")
    for action in ("rotate_credentials", "unregister_platform"):
        assert "via=console" in page.locator("#audit-table tbody tr", has_text=action).first.inner_text()

    page.click("text=Sign out")
    sign_in(page, demo)
    page.goto(f"{demo.base}/console/parties")
    assert page.locator("#parties-table a.action").count() == 0
    assert page.locator("text=Renew tokens").count() == 0 and page.locator("text=Take off the hub").count() == 0
