"""The console's sign-in cookie: the bearer token, encrypted and signed (Fernet), HttpOnly, SameSite=Strict.

The cookie holds the token itself rather than who it belonged to, so each page resolves the actor again with the
API's own function: a removed auditor is signed out on their next click, on every hub process. Signing out ends the
cookie itself too, not only in the browser that signed out: its digest is kept in Redis for as long as the cookie
would have worked (signed_out_key), so a copy of it (a shared machine, a proxy's log) opens nothing afterwards.
"""

from __future__ import annotations

import base64
import hashlib

from cryptography.fernet import Fernet, InvalidToken
from litestar.datastructures import Cookie

COOKIE = "ocpi_hub_console"
LIFETIME_S = 12 * 3600


def _fernet(secret_key: str) -> Fernet:
    # A key of its own, derived from the hub's secret key: a console cookie never opens a stored party token.
    derived = hashlib.sha256(b"ocpi-hub console session\0" + secret_key.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(derived))


def session_cookie(secret_key: str, token: str, secure: bool) -> Cookie:
    value = _fernet(secret_key).encrypt(token.encode()).decode()
    return Cookie(key=COOKIE, value=value, path="/console", httponly=True, samesite="strict", secure=secure,
                  max_age=LIFETIME_S)  # fmt: skip


def expired_cookie(secure: bool) -> Cookie:
    return Cookie(key=COOKIE, value="", path="/console", httponly=True, samesite="strict", secure=secure, max_age=0)


def signed_out_key(redis_prefix: str, value: str) -> str:
    """The Redis key that marks a cookie signed out: its digest, never the cookie (which holds a token)."""
    return f"{redis_prefix}console:signed-out:{hashlib.sha256(value.encode()).hexdigest()}"


def token_of(secret_key: str, value: str | None) -> str | None:
    """The token in a cookie this hub set less than LIFETIME_S ago, or None."""
    if not value:
        return None
    try:
        return _fernet(secret_key).decrypt(value.encode(), ttl=LIFETIME_S).decode()
    except (InvalidToken, UnicodeDecodeError):
        return None
