"""Signed manifests of routing-log exports: what the hub signs, and the check of an export that needs only the file.

A manifest says what an export is (format, filters, when, for whom, row count, the SHA-256 of every byte of the export
before it, the chain heads then) and is signed with the hub's Ed25519 key (storage.secrets.export_signing_key). The
signature covers canonical(manifest): the manifest without "signature" as JSON with sorted keys, no spaces, ASCII only,
as Python's json.dumps(manifest, sort_keys=True, separators=(",", ":")) writes it. NDJSON carries it as its last line,
{"manifest": {...}}; a CSV export's manifest is a download of its own (GET /admin/api/routing-log/export/manifests/ID).
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

MANIFEST_VERSION = 1
READ_BYTES = 1 << 20


def canonical(manifest: dict[str, Any]) -> bytes:
    """The bytes the signature covers."""
    unsigned = {name: value for name, value in manifest.items() if name != "signature"}
    return json.dumps(unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def raw_public_key(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def fingerprint(public_key: bytes) -> str:
    """SHA256: and the hex SHA-256 of the 32 bytes of the raw public key."""
    return "SHA256:" + hashlib.sha256(public_key).hexdigest()


def public_key_info(key: Ed25519PrivateKey) -> dict[str, str]:
    """The signing key's public half as the admin API publishes it."""
    public = key.public_key()
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    raw = raw_public_key(public)
    return {"algorithm": "Ed25519", "public_key": base64.b64encode(raw).decode(), "public_key_pem": pem.decode(),
            "fingerprint": fingerprint(raw)}  # fmt: skip


def signed(manifest: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    raw = raw_public_key(key.public_key())
    manifest = manifest | {"public_key": base64.b64encode(raw).decode(), "key_fingerprint": fingerprint(raw)}
    return manifest | {"signature": base64.b64encode(key.sign(canonical(manifest))).decode()}


def trailer(manifest: dict[str, Any]) -> bytes:
    """The manifest as an NDJSON export's last line (and as the separate download of a CSV export's)."""
    return json.dumps({"manifest": manifest}, sort_keys=True, separators=(",", ":")).encode("ascii") + b"\n"


class Unreadable(Exception):
    """The file, its manifest or the public key cannot be read: nothing was checked."""


def _lines_before_last(handle: IO[bytes], digest: Any) -> bytes:
    """Feed digest every byte before the last line, read in blocks; the last line."""
    held = b""
    for block in iter(lambda: handle.read(READ_BYTES), b""):
        held += block
        cut = held.rfind(b"\n", 0, len(held) - 1)  # the newline before the last line (held ends with one at the end)
        if cut >= 0:
            digest.update(held[: cut + 1])
            held = held[cut + 1 :]
    return held


def _manifest_of(line: bytes, where: str) -> dict[str, Any]:
    try:
        manifest = json.loads(line)["manifest"]
    except (ValueError, TypeError, KeyError):
        raise Unreadable(f'{where} is no manifest line {{"manifest": {{...}}}}') from None
    if not isinstance(manifest, dict):
        raise Unreadable(f"{where}: the manifest is not a JSON object")
    return manifest


def read_export(path: Path, manifest_path: Path | None) -> tuple[dict[str, Any], str]:
    """The manifest (the export's last line, or the separate file of a CSV export) and the SHA-256 of the export."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            if manifest_path is None:
                manifest = _manifest_of(_lines_before_last(handle, digest), f"the last line of {path}")
            else:
                for block in iter(lambda: handle.read(READ_BYTES), b""):
                    digest.update(block)
                manifest = _manifest_of(manifest_path.read_bytes().strip(), str(manifest_path))
    except OSError as exc:
        raise Unreadable(f"cannot read {exc.filename}: {exc.strerror or exc}") from None
    return manifest, digest.hexdigest()


def read_public_key(given: str) -> bytes:
    """The raw 32 bytes of a public key given as a file (PEM, or the base64 the admin API shows) or as base64."""
    text = given
    if Path(given).is_file():
        text = Path(given).read_text(encoding="utf-8", errors="replace")
    if "BEGIN PUBLIC KEY" in text:
        try:
            key = serialization.load_pem_public_key(text.encode())
        except ValueError as exc:
            raise Unreadable(f"--public-key: not a PEM public key: {exc}") from None
        if not isinstance(key, Ed25519PublicKey):
            raise Unreadable("--public-key: not an Ed25519 public key")
        return raw_public_key(key)
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise Unreadable("--public-key: neither a PEM file nor the base64 of a 32-byte Ed25519 public key")
    return raw


def problems(manifest: dict[str, Any], sha256: str, public_key: bytes | None) -> Iterator[str]:
    """What makes the export not what the hub signed: nothing when it is."""
    if manifest.get("sha256") != sha256:
        yield (f"digest: the export's bytes before the manifest have SHA-256 {sha256}, the manifest says"
               f" {manifest.get('sha256')}: the rows were changed after the hub exported them")  # fmt: skip
    try:
        signer = base64.b64decode(str(manifest.get("public_key")), validate=True)
        signature = base64.b64decode(str(manifest.get("signature")), validate=True)
    except ValueError:
        yield "signature: the manifest's public_key or signature is not base64"
        return
    if public_key is not None and signer != public_key:
        yield (f"key: the manifest was signed by the key {fingerprint(signer)}, not by the key given"
               f" ({fingerprint(public_key)})")  # fmt: skip
        return
    try:
        Ed25519PublicKey.from_public_bytes(public_key or signer).verify(signature, canonical(manifest))
    except (InvalidSignature, ValueError):
        yield "signature: the manifest is not the one the hub signed: it was changed since (or signed by another key)"


def verify_export(path: Path, manifest_path: Path | None, public_key: str | None) -> int:
    """ocpi-hub verify-export: 0 the export is what the hub signed, 1 it is not (each problem on stderr), 2 nothing
    was checked (the file, its manifest or the key cannot be read). The manifest on stdout, as JSON."""
    try:
        key = read_public_key(public_key) if public_key else None
        manifest, sha256 = read_export(path, manifest_path)
    except Unreadable as exc:
        print(f"ocpi-hub: verify-export: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(manifest, indent=2, sort_keys=True))
    found = list(problems(manifest, sha256, key))
    for problem in found:
        print(f"ocpi-hub: verify-export: FAILED: {problem}", file=sys.stderr)
    if found:
        return 1
    print(f"ocpi-hub: verify-export: OK: {manifest.get('rows')} rows, SHA-256 {sha256}, signed by"
          f" {manifest.get('key_fingerprint')}", file=sys.stderr)  # fmt: skip
    if key is None:
        print("ocpi-hub: verify-export: the signer was not checked: compare that fingerprint with the hub's published"
              " one (GET /admin/api/routing-log/export/public-key), or give --public-key", file=sys.stderr)  # fmt: skip
    return 0
