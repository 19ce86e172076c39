"""What the console tells a browser about its answers, and the forms it takes from another site (security review,
finding 9): over HTTP; tests/test_console_browser.py shows the pages still work in Chromium with these headers."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from hub.console.headers import foreign_origin
from tests.conftest import Hub, unique_party_id
from tests.test_admin_and_cli import _platform_id

EVERY_ANSWER = {
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
}


@contextmanager
def _signed_in(hub: Hub) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=hub.base, timeout=30) as console:
        assert console.post("/console/sign-in", data={"token": hub.admin_token}).status_code == 303
        yield console


def test_a_signed_out_cookie_opens_nothing_even_sent_again(hub: Hub) -> None:
    # Signing out expired the cookie in the browser only: a copy of it (a shared machine, a proxy's log) kept the
    # admin's console open for the rest of its 12 hours.
    with _signed_in(hub) as console:
        cookie = console.cookies["ocpi_hub_console"]
        assert console.get("/console/log").status_code == 200
        assert console.post("/console/sign-out").status_code == 303
    with httpx.Client(base_url=hub.base, timeout=30, cookies={"ocpi_hub_console": cookie}) as copy:
        again = copy.get("/console/log")
        assert again.status_code == 303 and again.headers["location"].startswith("/console/sign-in"), again.headers
    with _signed_in(hub) as console:  # a new sign-in works as before
        assert console.get("/console/log").status_code == 200


def _assert_console_headers(answer: httpx.Response, cached: bool = False) -> None:
    for name, value in EVERY_ANSWER.items():
        assert answer.headers.get(name) == value, (answer.request.url, name, answer.headers)
    policy = answer.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in policy and "default-src 'none'" in policy and "script-src" not in policy
    assert (answer.headers.get("cache-control") == "no-store") != cached, (answer.request.url, answer.headers)


def test_every_console_answer_forbids_framing_and_sniffing_and_its_pages_are_never_cached(hub: Hub) -> None:
    with httpx.Client(base_url=hub.base, timeout=30) as anonymous:
        for path, status in (("/console/sign-in", 200), ("/console/log", 303), ("/console", 303)):
            answer = anonymous.get(path)
            assert answer.status_code == status, answer.text
            _assert_console_headers(answer)
        _assert_console_headers(anonymous.get("/console/static/console.css"), cached=True)
    with _signed_in(hub) as console:
        pid = unique_party_id()
        invited = console.post("/console/invite", data={"name": "Framed", "role": "CPO", "country_code": "NL",
                                                        "party_id": pid})  # fmt: skip
        assert invited.status_code == 200 and "token" in invited.text.lower()  # the page that shows token A
        _assert_console_headers(invited)
        for path in ("/console/log", "/console/parties", "/console/audit", "/console/log/export?format=csv"):
            answer = console.get(path)
            assert answer.status_code == 200, (path, answer.text[:300])
            _assert_console_headers(answer)
        _assert_console_headers(console.get("/console/no-such-page"))  # an error page too


def test_a_console_form_posted_from_another_site_is_refused_and_does_nothing(hub: Hub) -> None:
    host = hub.base.removeprefix("http://")
    for origin in ("http://evil.example", "https://sibling.example.com", "null", f"https://{host}.evil.example"):
        with httpx.Client(base_url=hub.base, timeout=30) as anonymous:
            answer = anonymous.post("/console/sign-in", data={"token": hub.admin_token}, headers={"Origin": origin})
            assert answer.status_code == 403, (origin, answer.text[:300])
            assert "another site than this console" in answer.text and "set-cookie" not in answer.headers
        with _signed_in(hub) as console:
            pid = unique_party_id()
            form = {"name": "Forged", "role": "CPO", "country_code": "NL", "party_id": pid}
            refused = console.post("/console/invite", headers={"Origin": origin}, data=form)
            assert refused.status_code == 403, (origin, refused.text[:300])
            _assert_console_headers(refused)
            with hub.admin() as admin:
                parties = admin.get("/admin/api/parties").json()["items"]
            assert all(p["party_id"] != pid for p in parties)
    assert '"console_form_from_another_site"' in hub.log()
    # Its own pages' forms: the hub's public URL, or the host the browser addressed (a proxy's name for the hub)
    port = host.rsplit(":", 1)[1]
    for origin, addressed in ((hub.base, host), (f"http://localhost:{port}", f"localhost:{port}")):
        with _signed_in(hub) as console:
            pid = unique_party_id()
            form = {"name": "Own", "role": "CPO", "country_code": "NL", "party_id": pid}
            taken = console.post("/console/invite", headers={"Origin": origin, "Host": addressed}, data=form)
            assert taken.status_code == 200, (origin, taken.text[:300])
            assert _platform_id(hub, ("NL", pid))


def test_an_origin_is_the_consoles_whether_or_not_it_writes_the_default_port() -> None:
    # Browsers leave :443 and :80 out of Origin (RFC 6454); a public URL written with it, behind a proxy that passes
    # another Host, refused every console form, the sign-in included.
    assert not foreign_origin("https://hub.example", "hub-1:8080", "https://hub.example:443")
    assert not foreign_origin("https://hub.example:443", None, "https://hub.example")
    assert not foreign_origin("http://hub.example", "hub.example:80", "http://10.0.0.5:8080")
    assert foreign_origin("https://evil.example", "hub-1:8080", "https://hub.example:443")
    assert foreign_origin("https://hub.example:8443", None, "https://hub.example")


def test_options_on_a_console_page_names_every_method_the_page_takes(hub: Hub) -> None:
    # Litestar 2 answered OPTIONS on a path with a GET and a POST handler with the first one's methods alone.
    pages = {"/console/sign-in": "GET, OPTIONS, POST", "/console/verify": "GET, OPTIONS, POST",
             "/console/invite": "GET, OPTIONS, POST", "/console/parties/1/unregister": "GET, OPTIONS, POST",
             "/console/log": "GET, OPTIONS", "/console/sign-out": "OPTIONS, POST"}  # fmt: skip
    with _signed_in(hub) as console:
        for path, allow in pages.items():
            answer = console.options(path)
            assert (answer.status_code, answer.headers.get("allow")) == (204, allow), (path, answer.headers)
            _assert_console_headers(answer)
