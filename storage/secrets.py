"""Credentials tokens at rest: SHA-256 for tokens the hub only recognises, Fernet for tokens it must send."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Callable
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


def new_token() -> str:
    # credentials.asciidoc: string(64) of printable non-whitespace ASCII; urlsafe base64 of 32 bytes is 43 such chars.
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def routing_log_key(secret_key: str) -> bytes:
    """The key of the routing log's hash chains (storage.log_row.row_hash), derived from OCPI_HUB_SECRET_KEY: every
    hub process sharing a database has it, and nothing else needs it."""
    return hmac.digest(secret_key.encode("utf-8"), b"ocpi-hub routing log chain", "sha256")


def audit_trail_key(log_key: bytes) -> bytes:
    """The key of the audit trail's hash chain (storage.audit_trail), derived from the routing log's (so from
    OCPI_HUB_SECRET_KEY): whoever verifies the log verifies the trail."""
    return hmac.digest(log_key, b"ocpi-hub audit trail chain", "sha256")


def key_check_value(secret_key: str) -> bytes:
    """What the database keeps of OCPI_HUB_SECRET_KEY to tell another key at start (storage.secret_key_check): an HMAC
    of a fixed label under a key derived from it, telling nothing of the key nor of the keys derived from it for the
    routing log, the audit trail or signing."""
    check_key = hmac.digest(secret_key.encode("utf-8"), b"ocpi-hub secret key check", "sha256")
    return hmac.digest(check_key, b"ocpi-hub: the key this database was set up with", "sha256")


def export_signing_key(secret_key: str) -> Ed25519PrivateKey:
    """The Ed25519 key that signs the manifests of routing-log exports (hub.export_manifest), derived from
    OCPI_HUB_SECRET_KEY with HKDF-SHA256 under a label of its own: the same on every process of one hub, nothing new to
    configure, and telling nothing of the secret key or of the chain key. Another secret key is another signing key."""
    seed = HKDF(hashes.SHA256(), length=32, salt=None, info=b"ocpi-hub routing log export signing key (Ed25519)")
    return Ed25519PrivateKey.from_private_bytes(seed.derive(secret_key.encode("utf-8")))


def hub_instance(secret_key: str, public_url: str) -> str:
    """The hub's mark on the requests it sends and on its own answers (hub.request_context.HUB_INSTANCE_HEADER),
    derived from OCPI_HUB_SECRET_KEY and OCPI_HUB_PUBLIC_URL, which every process of one hub shares: the same on all
    of them, and another on a hub with another key or another public URL (two deployments started from one key, say a
    staging copy of production, must not take each other's forwards for their own), telling nothing of the key. A
    restart with another public URL gives the hub another mark; nothing keeps one longer than a request is in flight."""
    message = b"ocpi-hub instance\0" + public_url.rstrip("/").encode("utf-8")
    return hmac.digest(secret_key.encode("utf-8"), message, "sha256")[:12].hex()


def read_or_create(path: Path, make: Callable[[], str]) -> str:
    """The secret stored at path, created (mode 0600, atomically) on first use."""
    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = make()
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(value + "\n")
    try:
        os.link(tmp, path)  # fails if another process won the race; then its value is the one
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_text(encoding="utf-8").strip()


class TokenBox:
    """Encrypts the tokens the hub uses to call parties (token B), so a database dump does not leak them."""

    def __init__(self, key: str) -> None:
        try:
            self._fernet = Fernet(key.encode())
        except ValueError:
            raise ValueError("OCPI_HUB_SECRET_KEY must be a Fernet key (32 url-safe base64-encoded bytes)") from None

    @classmethod
    def generate_key(cls) -> str:
        return Fernet.generate_key().decode()

    def seal(self, token: str) -> bytes:
        return self._fernet.encrypt(token.encode("utf-8"))

    def open(self, sealed: bytes) -> str:
        try:
            return self._fernet.decrypt(sealed).decode("utf-8")
        except InvalidToken:
            raise ValueError("a stored party token cannot be decrypted: was OCPI_HUB_SECRET_KEY changed?") from None
