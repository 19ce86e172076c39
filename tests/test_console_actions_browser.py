"""The admin's platform actions in the console, in headless Chromium, against the session's hub and test parties
that answer as the test needs: what the admin sees when a party refuses."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import Hub
from tests.parties import envelope, token_header
from tests.test_console_browser import Browser, Page, chromium, shot
from tests.test_console_browser import pytestmark as needs_chromium
from tests.test_credentials_rotation import _moves_its_api
from tests.test_routing import _roles, party_key

pytestmark = needs_chromium


@pytest.fixture(scope="module")
def browser(hub: Hub) -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1366, "height": 768})
    yield context.new_page()
    context.close()


def _sign_in_as_admin(page: Page, hub: Hub) -> None:
    page.goto(f"{hub.base}/console/sign-in")
    page.fill("#token", hub.admin_token)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r".*/console/log.*"))


def test_the_admin_sees_on_the_page_that_the_party_refused_the_renewal_and_what_it_said(
    page: Page, hub: Hub, connect_party
) -> None:
    refusal = json.dumps(envelope(None, 2000, "no rotation today")).encode()
    cpo = connect_party(_roles("CPO"), name="Refuses Renewal",
                        canned={("PUT", "/ocpi/2.2.1/credentials"): (200, refusal, {})})  # fmt: skip
    key = "-".join(party_key(cpo))
    old_hub_token = cpo.hub_token
    _sign_in_as_admin(page, hub)
    page.goto(f"{hub.base}/console/parties")
    page.locator("#parties-table tbody tr", has_text=key).locator("text=Renew tokens").click()
    page.check("#confirm")
    page.click("#confirm-form button[type=submit]")
    outcome = page.locator("#outcome")
    assert outcome.get_attribute("class") == "errors" and outcome.get_attribute("role") == "alert"
    said = outcome.inner_text()
    assert "PUT" in said and 'OCPI status 2000: "no rotation today"' in said, said
    assert "nothing was rotated, the old tokens still work" in said
    shot(page, "renew-tokens-refused", full_page=False)
    # as the page says: the party's token still works, and it was asked exactly once
    assert httpx.get(f"{hub.base}/ocpi/2.2.1/credentials", headers=token_header(old_hub_token)).status_code == 200
    assert len([r for r in cpo.received if (r.method, r.path) == ("PUT", "/ocpi/2.2.1/credentials")]) == 1
    page.click("nav >> text=Audit trail")
    attempt = page.locator("#audit-table tbody tr", has_text="Refuses Renewal").first.inner_text()
    assert "rotate_credentials" in attempt and "no rotation today" in attempt, attempt
    assert "kept=the old tokens" in attempt and "via=console" in attempt
    page.goto(f"{hub.base}/console/parties/999999999/take-off")  # said "no such endpoint" (an auditor's walkthrough)
    assert "no platform 999999999 was ever invited to this hub" in page.inner_text("main")


def test_the_admin_sees_the_endpoints_a_rotation_left_from_before_with_the_reason_and_has_them_fetched_again(
    page: Page, hub: Hub, connect_party
) -> None:
    emsp, cpo = connect_party(_roles("EMSP")), connect_party(_roles("CPO"), name="Moves Its API")
    key = "-".join(party_key(cpo))
    _moves_its_api(cpo)
    _sign_in_as_admin(page, hub)
    page.goto(f"{hub.base}/console/parties")
    row = page.locator("#parties-table tbody tr", has_text=key)
    row.locator("text=Renew tokens").click()
    page.check("#confirm")
    page.click("#confirm-form button[type=submit]")
    said = page.locator("#outcome").inner_text()
    assert f"the hub keeps the new versions URL the party named ({cpo.versions_url})" in said, said
    # The Parties page flags the platform; its endpoints page lists the endpoints the hub routes on, and why.
    page.goto(f"{hub.base}/console/parties")
    flag = row.locator(".endpoints-from-before")
    assert flag.inner_text() == "endpoints from before" and "HTTP 404" in (flag.get_attribute("title") or "")
    row.locator("a.action", has_text="Endpoints").click()
    why = page.locator("#endpoints-from-before").inner_text()
    assert (
        f"from {cpo.versions_url} with the party's token B" in why
        and "HTTP 404: 29 bytes of text/html, not an OCPI answer" in why
    ), why
    urls = page.locator("#endpoints-table td.mono").all_inner_texts()
    assert urls and all(url.startswith(f"{cpo.base}/ocpi/2.2.1/") for url in urls), urls
    shot(page, "endpoints-from-before", full_page=False)
    del cpo.canned[("GET", "/v2/ocpi/versions")]  # the party's new deployment is up
    page.check("#confirm")
    page.click("#confirm-form button[type=submit]")
    done = page.locator("#outcome").inner_text()
    assert f"again from {cpo.versions_url} (OCPI 2.2.1)" in done, done
    assert page.locator("#endpoints-from-before").count() == 0
    urls = page.locator("#endpoints-table td.mono").all_inner_texts()
    assert urls and all(url.startswith(f"{cpo.base}/v2/ocpi/2.2.1/") for url in urls), urls
    pulled = emsp.call(hub.base, "GET", "sender/locations", to=party_key(cpo))
    assert pulled.json()["status_code"] == 1000 and cpo.functional()[-1].path == "/v2/ocpi/2.2.1/locations/sender"
    page.goto(f"{hub.base}/console/parties")
    assert row.locator(".endpoints-from-before").count() == 0
    page.click("nav >> text=Audit trail")
    refreshed = page.locator("#audit-table tbody tr", has_text="refresh_endpoints").first.inner_text()
    assert "Moves Its API" in refreshed and "via=console" in refreshed, refreshed


def test_the_admin_suspends_a_platform_with_a_reason_and_resumes_it_from_the_parties_page(
    page: Page, hub: Hub, connect_party
) -> None:
    emsp = connect_party(_roles("EMSP"), name="Paused eMSP")
    key = "-".join(party_key(emsp))
    _sign_in_as_admin(page, hub)
    page.goto(f"{hub.base}/console/parties")
    page.locator("#parties-table tbody tr", has_text=key).locator("a.action", has_text="Suspend").click()
    assert "nothing is routed or broadcast to it" in page.inner_text("#confirm-form")
    page.check("#confirm")
    page.click("#confirm-form button[type=submit]")  # no reason: the browser does not send the form
    assert page.locator("#outcome").count() == 0
    page.fill("#reason", "contract under review")
    page.click("#confirm-form button[type=submit]")
    assert "is suspended" in page.inner_text("#outcome"), page.inner_text("main")
    refused = httpx.get(f"{hub.base}/ocpi/2.2.1/credentials", headers=token_header(emsp.hub_token))
    assert refused.status_code == 401 and "(contract under review)" in refused.json()["status_message"]
    page.goto(f"{hub.base}/console/parties")
    row = page.locator("#parties-table tbody tr", has_text=key)
    assert row.locator(".suspended").count() == 1 and row.locator("text=Renew tokens").count() == 0
    shot(page, "party-suspended", full_page=False)
    row.locator("a.action", has_text="Resume").click()
    assert "contract under review" in page.inner_text("#confirm-form")
    page.check("#confirm")
    page.click("#confirm-form button[type=submit]")
    assert "is registered again" in page.inner_text("#outcome"), page.inner_text("main")
    assert httpx.get(f"{hub.base}/ocpi/2.2.1/credentials", headers=token_header(emsp.hub_token)).status_code == 200
    page.click("nav >> text=Audit trail")
    trail = page.inner_text("#audit-table")
    assert "suspend_platform" in trail and "resume_platform" in trail and "via=console" in trail
