"""What a browser is told of every console answer: never framed, never sniffed, no referrer to other sites, pages
never cached (they show token A, bodies, the audit trail); and a console form posted from another site is refused."""

from __future__ import annotations

from urllib.parse import urlsplit

from litestar.types import Message, Send

# The templates load one stylesheet of their own and hold no script; their inline style attributes and charts' inline
# SVG need 'unsafe-inline' styles, nothing else. frame-ancestors 'none' and X-Frame-Options (for older browsers) keep a
# console page out of another site's frame (clickjacking a platform's removal, say).
CONTENT_SECURITY_POLICY = ("default-src 'none'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
                           "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")  # fmt: skip
_ALWAYS = [
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),  # no-referrer: browsers send "Origin: null" on its own forms
]
_PAGES = [*_ALWAYS, (b"cache-control", b"no-store")]
_SET = {name for name, _ in _PAGES}


def with_console_headers(path: str, send: Send) -> Send:
    """send, adding the console's headers to the answer's (in place of any of the same name); the stylesheet may be
    cached, nothing else."""
    added = _ALWAYS if path.startswith("/console/static/") else _PAGES

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            kept = [(name, value) for name, value in message.get("headers", []) if name.lower() not in _SET]
            message["headers"] = kept + added
        await send(message)

    return sending


def foreign_origin(origin: str | None, host: str | None, public_url: str) -> bool:
    """Whether a POST's Origin header names another site than the console's: the hub's public URL, or the host the
    browser addressed (a proxy in front may serve it under another name). No Origin (an old browser, a script): not
    foreign; SameSite=Strict keeps the sign-in cookie off other sites' requests, but not off a sibling subdomain's."""
    if not origin:
        return False
    origin = _without_default_port(origin.strip().lower())
    own = urlsplit(public_url)
    if origin == _without_default_port(f"{own.scheme}://{own.netloc}".lower()):
        return False
    return not (host and origin.partition("://")[2] == _without_default_port(f"{own.scheme}://{host.strip().lower()}")
                .partition("://")[2])  # fmt: skip


def _without_default_port(origin: str) -> str:
    """scheme://host as a browser writes an Origin: without :443 for https or :80 for http (RFC 6454, 6.1), which a
    public URL written https://hub.example:443 would otherwise never equal."""
    for scheme, port in (("https://", ":443"), ("http://", ":80")):
        if origin.startswith(scheme) and origin.endswith(port):
            return origin.removesuffix(port)
    return origin
